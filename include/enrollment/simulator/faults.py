"""The faults the simulator injects, and the outcome each one must have: a missing mandatory
field, a bad format, a broken rule, a duplicate, an out-of-order update, a poison message, an
oversized one, an unknown schema version, hostile bytes. Each message's expected reasons come from
the fault injected, never from calling the validator."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any, ClassVar, cast

import msgspec

from enrollment.config import Markets
from enrollment.contracts.spec import BOOLEAN, INTEGER, STRING, FieldSpec
from enrollment.contracts.spec import fields as contract_fields
from enrollment.simulator import hostile
from enrollment.simulator.payloads import Event, Partner


@dataclass(slots=True)
class Message:
    seq: int
    topic: str
    key: bytes
    value: bytes
    # The expected outcome, a JSON record (see the module's docstring); empty when made by hand.
    expected: dict[str, Any] = field(default_factory=dict)


@dataclass
class FaultRates:
    """Share of messages that carry each fault (0.01 = 1 %)."""

    missing: float = 0.0  # a mandatory field absent, null or blank
    bad_format: float = 0.0  # a field of the wrong format or JSON type
    # Country outside the region, under age, consent refused, self-sponsored.
    rule_violation: float = 0.0
    duplicate: float = 0.0  # an earlier message sent again, later
    out_of_order: float = 0.0  # an event held back and sent after newer versions of its partner
    poison: float = 0.0  # bytes that are not UTF-8 or not JSON
    oversized: float = 0.0  # larger than the message limit
    unknown_version: float = 0.0  # an unknown schema version or event type
    # The edges of JSON and of the contract (simulator.hostile); not in the default mix.
    hostile: float = 0.0

    # The default mix of a total fault rate (`--faults 2%`).
    MIX: ClassVar[dict[str, float]] = {
        "missing": 0.22,
        "bad_format": 0.22,
        "rule_violation": 0.1,
        "duplicate": 0.14,
        "out_of_order": 0.14,
        "poison": 0.06,
        "oversized": 0.04,
        "unknown_version": 0.08,
    }

    @classmethod
    def mix(cls, total: float) -> FaultRates:
        return cls(**{name: total * share for name, share in cls.MIX.items()})

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def total(self) -> float:
        return sum(self.as_dict().values())


class FaultInjector:
    """An event made a message: the fault drawn for it injected, with the outcome the contract
    gives it (derived from the fault, never by calling the validator). Draws from the
    simulator's generator."""

    def __init__(
        self, rng: random.Random, markets: Markets, topics: dict[str, str], max_message_bytes: int
    ) -> None:
        self.rng, self.markets, self.topics = rng, markets, topics
        self.max_message_bytes = max_message_bytes
        self._encode = msgspec.json.Encoder().encode

    def message(
        self, event: Event, partner: Partner, fault: str | None
    ) -> tuple[Message, str | None]:
        reasons: list[str] = []
        if fault == "missing":
            reasons = [self._remove_mandatory(event)]
        elif fault == "bad_format":
            reasons = [self._corrupt_format(event)]
        elif fault == "rule_violation":
            reasons = [self._violate_rule(event)]
        elif fault == "unknown_version":
            if self.rng.random() < 0.5:
                event["schema_version"] = self.rng.choice((3, 4, 99))
                reasons = ["unknown_schema_version"]
            else:
                event["event_type"] = self.rng.choice(
                    ("partner.reactivated", "order.returned", "wallet.credited")
                )
                reasons = ["unknown_event_type"]
        elif fault == "oversized":
            event["payload"]["notes"] = "x" * (self.max_message_bytes + 1)
            reasons = ["oversized"]
        value = None
        if fault == "hostile":
            value, reasons, _ = hostile.make(self.rng, event)
        value = value if value is not None else self._encode(event)
        if fault == "poison":
            value, reason = self._poison(value)
            reasons = [reason]
        given_payload = event.get("payload")
        payload: Event = given_payload if isinstance(given_payload, dict) else {}
        given_consents = payload.get("consents")
        consents: Event = given_consents if isinstance(given_consents, dict) else {}
        expected = {
            "key": partner.partner_id,
            "event_id": event.get("event_id") if fault != "poison" else None,
            "event_type": event.get("event_type") if fault != "poison" else None,
            "partner_id": partner.partner_id,
            "region": partner.region,
            "partner_version": partner.version,
            "occurred_at": event.get("occurred_at")
            if isinstance(event.get("occurred_at"), str)
            else None,
            "fault": fault,
            "reasons": sorted(reasons),
            "duplicate_of": None,
            "out_of_order": fault == "out_of_order",
            # What an enrollment states of marketing consent (None: nothing): whether Marketing
            # Cloud may hold the partner.
            "marketing_email": consents.get("marketing_email")
            if isinstance(consents.get("marketing_email"), bool)
            else None,
            "id_readable": fault not in ("poison", "oversized")
            and not {"unparsable", "too_deep"} & set(reasons)
            and isinstance(event.get("event_id"), str)
            and bool(event["event_id"].strip()),
        }
        return Message(
            0, self.topics[partner.region], partner.partner_id.encode(), value, expected
        ), fault

    def _applicable(self, event: Event) -> list[FieldSpec]:
        return list(contract_fields(event["event_type"], event["schema_version"]))

    def required_here(self, spec: FieldSpec, event: Event) -> bool:
        payload = event["payload"]
        country = (
            payload.get("address", {}).get("country")
            if event["event_type"] == "partner.enrolled"
            else None
        )
        return {
            "always": True,
            "never": False,
            "tax_id_market": country in self.markets.tax_id_countries(),
            "state_market": country in self.markets.state_countries(),
            "consent_region": event["region"] in self.markets.consent_regions,
            "without_first_order": "first_order" not in payload,
            "not_cancelled": payload.get("action") not in (None, "cancelled"),
        }[spec.required]

    def _remove_mandatory(self, event: Event) -> str:
        candidates = [
            s
            for s in self._applicable(event)
            if self.required_here(s, event) and _get(event, s.path) is not None
        ]
        spec = self.rng.choice(candidates)
        how = self.rng.random()
        if spec.kind == STRING and how < 0.3:
            _set(event, spec.path, self.rng.choice(("", "  ")))
        elif how < 0.6:
            _set(event, spec.path, None)
        else:
            _delete(event, spec.path)
        return spec.missing_code

    def _corrupt_format(self, event: Event) -> str:
        def candidate(spec: FieldSpec) -> bool:
            value = _get(event, spec.path)
            if value is None or spec.path in ("event_type", "schema_version"):
                return False
            if spec.path == "payload.action" and value == "cancelled":
                return False  # corrupting it would make next_ship_date mandatory too
            return spec.checked_format or self._may_change_type(spec)

        spec = self.rng.choice([s for s in self._applicable(event) if candidate(s)])
        if spec.kind == BOOLEAN:
            _set(event, spec.path, self.rng.choice(("yes", 1)))
        elif spec.kind in ("number", INTEGER):
            _set(
                event,
                spec.path,
                -1 if spec.minimum is not None and self.rng.random() < 0.5 else "12",
            )
            if spec.kind == INTEGER and self.rng.random() < 0.3:
                _set(event, spec.path, 2.5)
        elif not spec.checked_format or (self._may_change_type(spec) and self.rng.random() < 0.3):
            _set(event, spec.path, self.rng.choice((12345, ["a"], {"value": "x"})))
        elif spec.path == "event_id":
            # Unique: no accidental duplicate.
            _set(event, spec.path, f"bad-{self.rng.getrandbits(64):016x}")
        else:
            _set(
                event,
                spec.path,
                self.rng.choice(("#n/a#", f"31/12/{1990 + self.rng.randrange(20)}", "x@")),
            )
        return spec.format_code

    @staticmethod
    def _may_change_type(spec: FieldSpec) -> bool:
        # A field of the wrong JSON type is dropped while parsing; these fields decide whether
        # others are mandatory, so dropping them would add reasons of their own.
        return not (
            spec.path in ("payload.first_order.order_id", "payload.action")
            or spec.path.startswith("payload.changes.")
        )

    def _violate_rule(self, event: Event) -> str:
        payload, region = event["payload"], event["region"]
        choices = ["country_not_in_region", "under_age", "sponsor_is_self"] + (
            ["consent_not_granted:payload.consents.data_processing"]
            if region in self.markets.consent_regions
            else []
        )
        rule = self.rng.choice(choices)
        if rule == "country_not_in_region":
            other = self.rng.choice([r for r in self.markets.countries if r != region])
            payload["address"]["country"] = self.rng.choice(self.markets.countries[other])
        elif rule == "under_age":
            at = date.fromisoformat(event["occurred_at"][:10])
            min_age = self.markets.rules[payload["address"]["country"]].min_age
            payload["date_of_birth"] = date(
                at.year - min_age + 1, at.month, min(at.day, 28)
            ).isoformat()
        elif rule == "sponsor_is_self":
            payload["sponsor_id"] = event["partner_id"]
        else:
            payload["consents"]["data_processing"] = False
        return rule

    def _poison(self, value: bytes) -> tuple[bytes, str]:
        if self.rng.random() < 0.5:
            return (
                b"\xff\xfe" + self.rng.randbytes(self.rng.randrange(4, 64)) + value[:20],
                "not_utf8",
            )
        text = value.decode()
        return text[: self.rng.randrange(0, len(text) - 1)].encode(), "unparsable"


def _parent(event: Event, path: str) -> tuple[object, str]:
    """The object holding ``path``'s last part (None where the path breaks off), and that part."""
    *parents, leaf = path.split(".")
    node: object = event
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None, leaf
    return node, leaf


def _get(event: Event, path: str) -> object:
    parent, leaf = _parent(event, path)
    return parent.get(leaf) if isinstance(parent, dict) else None


def _set(event: Event, path: str, value: object) -> None:
    parent, leaf = _parent(event, path)
    cast(Event, parent)[leaf] = value  # callers set fields whose parent objects exist


def _delete(event: Event, path: str) -> None:
    parent, leaf = _parent(event, path)
    cast(Event, parent).pop(leaf, None)  # callers delete fields whose parent objects exist
