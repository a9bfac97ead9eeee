"""Hostile messages: the edges of JSON and of the contract a careless or malicious producer can
send, each with the reasons the contract gives it.

The simulator's ``hostile`` fault sends them into Kafka (``--hostile 0.5%``); the property tests
mix them with valid neighbours. Every kind here is refused: the valid edges (the words ``NaN``
and ``Infinity`` as text, foreign fields) are exercised by the property tests, where a valid
outcome is asserted, not by the load test, which counts refusals.
"""

from __future__ import annotations

import json
import random
from typing import Any

from ..contracts.spec import MAX_NESTING, SAFE_INTEGER, TEXT_MAX_CHARS

_MARK = "\u2063hostile\u2063"  # spliced: text json.dumps cannot write (invalid JSON on purpose)

KINDS = (
    "lone_surrogate",
    "deep_nesting",
    "impossible_date",
    "impossible_payload_date",
    "int_beyond_int64",
    "int_beyond_safe",
    "long_int_next_to_missing",
    "raw_line_break",
    "repeated_key",
    "control_character",
    "too_long_text",
    "instant_beyond_range",
    "year_zero",
)
# Where a contract keeps a timestamp in the payload, and free text of each type.
_PAYLOAD_INSTANT = {
    "partner.enrolled": ("agreement", "accepted_at"),
    "partner.terminated": ("effective_at",),
}
_FREE_TEXT = {"partner.enrolled": ("first_name",)}


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def _spliced(event: dict[str, Any], raw: str) -> bytes:
    event["note"] = _MARK
    return _dumps(event).replace(json.dumps(_MARK, ensure_ascii=False), raw).encode()


def make(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, list[str], str]:
    """A hostile version of ``event`` (changed in place): (bytes, expected reasons, kind)."""
    kind = rng.choice(KINDS)
    payload = event.get("payload") or {}
    if kind == "lone_surrogate":
        return (
            _spliced(event, '"' + rng.choice(("\\ud800", "\\udfff", "x\\udc00y")) + '"'),
            ["unparsable"],
            kind,
        )
    if kind == "deep_nesting":
        depth = rng.choice((MAX_NESTING + 1, 10_000))
        return _spliced(event, "[" * depth + "]" * depth), ["too_deep"], kind
    if kind == "raw_line_break":
        return (
            _spliced(event, '"line one' + rng.choice(("\n", "\r", "\t", "\x00")) + 'line two"'),
            ["unparsable"],
            kind,
        )
    if kind == "repeated_key":
        text = _dumps(event)
        return (
            ('{"partner_version":' + str(rng.randrange(1, 100)) + "," + text[1:]).encode(),
            ["unparsable"],
            kind,
        )
    reasons: list[str]
    if kind == "impossible_payload_date" and event["event_type"] in _PAYLOAD_INSTANT:
        *parents, leaf = _PAYLOAD_INSTANT[event["event_type"]]
        node = payload
        for part in parents:
            node = node[part]
        node[leaf] = rng.choice(("2025-02-29", "2025-04-31", "2024-06-31")) + "T10:00:00Z"
        reasons = [f"bad_format:payload.{'.'.join((*parents, leaf))}"]
    elif kind in ("impossible_date", "impossible_payload_date"):
        kind = "impossible_date"
        event["occurred_at"] = rng.choice(("2026-02-30", "2026-02-29", "2025-11-31")) + "T08:00:00Z"
        reasons = ["bad_format:occurred_at"]
    elif kind == "int_beyond_int64":
        event["partner_version"] = rng.choice((2**63, 2**64 + 1, -(2**63) - 1))
        reasons = ["out_of_range:partner_version"]
    elif kind == "int_beyond_safe":
        # A float64 parser rounds these.
        event["partner_version"] = SAFE_INTEGER + rng.choice((1, 2, 3))
        reasons = ["out_of_range:partner_version"]
    elif kind == "long_int_next_to_missing":
        event["partner_version"] = int("9" * rng.randrange(30, 400))
        del event["occurred_at"]
        reasons = ["missing:occurred_at", "out_of_range:partner_version"]
    elif kind == "control_character":
        event["source_system"] = "sap-commerce" + rng.choice(("\x00", "\x07", "\x1b")) + "x"
        reasons = ["bad_format:source_system"]
    elif kind == "too_long_text" and event["event_type"] in _FREE_TEXT:
        field = _FREE_TEXT[event["event_type"]][0]
        payload[field] = "N" * (TEXT_MAX_CHARS + rng.randrange(1, 2000))
        reasons = [f"too_long:payload.{field}"]
    elif kind == "too_long_text" and event.get("schema_version") == 2:
        event["correlation_id"] = "r" * (TEXT_MAX_CHARS + rng.randrange(1, 2000))
        reasons = ["too_long:correlation_id"]
    elif kind == "instant_beyond_range" or kind == "too_long_text":
        kind = "instant_beyond_range"
        event["occurred_at"] = rng.choice(
            ("9999-12-31T23:30:00-01:00", "0001-01-01T00:10:00+05:00")
        )
        reasons = ["out_of_range:occurred_at"]
    else:  # year_zero
        event["occurred_at"] = "0000-06-01T00:00:00Z"
        reasons = ["out_of_range:occurred_at"]
    return _dumps(event).encode(), sorted(reasons), kind
