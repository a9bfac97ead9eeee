"""The contracts, checked field by field: every mandatory field missing gives its exact reason,
for every event type, schema version and region; every format rule passes and fails."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from enrollment.config import markets_in_force
from enrollment.contracts.spec import EVENT_TYPES, PAYLOADS, SCHEMA_VERSIONS, fields
from enrollment.ingest.validation import validate_batch
from enrollment.simulator.faults import _delete, _get, _set
from enrollment.simulator.generator import Simulator

# One market per region, plus every market with a tax id (the field exists only there).
COUNTRIES_PER_REGION = {"AMER": "US", "EMEA": "DE", "APAC": "JP", "LATAM": "BR"}
TAX_MARKETS = markets_in_force().tax_id_countries()


@pytest.fixture(scope="module")
def sim():
    return Simulator(seed=11)


def encode(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()


def fresh(event: dict) -> dict:
    """A deep copy under a new event id (copies of one event would be duplicates)."""
    clone = copy.deepcopy(event)
    clone["event_id"] = str(uuid.uuid4())
    return clone


def reasons_of(*events) -> list[list[str]]:
    messages = [e if isinstance(e, bytes) else encode(e) for e in events]
    result = validate_batch(messages)
    got = {i: [] for i in range(len(messages))}
    for row in result.quarantine.select(["source_index", "reasons"]).to_pylist():
        got[row["source_index"]] = row["reasons"]
    return [got[i] for i in range(len(messages))]


CASES = [
    (t, v, c)
    for t in EVENT_TYPES
    for v in SCHEMA_VERSIONS[t]
    for c in COUNTRIES_PER_REGION.values()
] + [
    ("partner.enrolled", v, c)
    for v in (1, 2)
    for c in TAX_MARKETS
    if c not in COUNTRIES_PER_REGION.values()
]


@pytest.mark.parametrize(("event_type", "version", "country"), CASES)
def test_every_mandatory_field_missing_gives_its_exact_reason(sim, event_type, version, country):
    base = sim.event_for(event_type, country, version)
    assert reasons_of(base) == [[]], "the untouched event must be valid"
    mandatory = [
        s
        for s in fields(event_type, version)
        if sim._required_here(s, base) and _get(base, s.path) is not None
    ]
    assert mandatory, "no mandatory field found"
    events, expected = [], []
    for spec in mandatory:
        for how in ("delete", "null", "blank"):
            if how == "blank" and spec.kind != "string":
                continue
            event = fresh(base)
            if how == "delete":
                _delete(event, spec.path)
            else:
                _set(event, spec.path, None if how == "null" else " ")
            events.append(event)
            expected.append([spec.missing_code])
    assert reasons_of(*events) == expected


def test_market_rules_differ_by_market(sim):
    us = sim.event_for("partner.enrolled", "US", 1)
    de = sim.event_for("partner.enrolled", "DE", 1)
    assert "tax_id" in us["payload"] and "tax_id" not in de["payload"], (
        "tax ids exist where the market requires one"
    )
    no_tax_us = fresh(us)
    del no_tax_us["payload"]["tax_id"]
    no_consent_us = fresh(us)
    no_consent_us["payload"].pop("consents", None)
    no_consent_de = fresh(de)
    del no_consent_de["payload"]["consents"]
    assert reasons_of(no_tax_us, no_consent_us, de, no_consent_de) == [
        ["missing:payload.tax_id"],
        [],
        [],
        ["missing:payload.consents.data_processing", "missing:payload.consents.marketing_email"],
    ]
    # v2: a state is mandatory in the US, not in Germany.
    us2, de2 = (
        sim.event_for("partner.enrolled", "US", 2),
        sim.event_for("partner.enrolled", "DE", 2),
    )
    del us2["payload"]["address"]["state"]
    assert reasons_of(us2, de2) == [["missing:payload.address.state"], []]


FORMAT_FIELDS = sorted(
    {(t, s.path) for t in EVENT_TYPES for s in PAYLOADS[t] if s.checked_format}
    | {
        ("order.placed", s.path)
        for s in fields("order.placed", 1)
        if s.checked_format and s.path not in ("event_type", "schema_version")
    }
)


@pytest.mark.parametrize(("event_type", "path"), FORMAT_FIELDS)
def test_every_format_rule_has_a_passing_and_a_failing_case(sim, event_type, path):
    for version in SCHEMA_VERSIONS[event_type]:
        for _ in range(40):  # optional fields appear in some events only
            event = sim.event_for(event_type, "BR", version)
            if _get(event, path) is None:
                continue
            spec = next(s for s in fields(event_type, version) if s.path == path)
            bad = fresh(event)
            _set(bad, path, -1 if spec.kind in ("number", "integer") else "#n/a#")
            # A field another one's presence depends on (an action but `cancel` wants a next
            # ship date): an event whose changed value would ask for a field it lacks tests that
            # condition, not this format.
            if not any(r.startswith("missing:") for r in reasons_of(bad)[0]):
                break
        else:
            continue
        assert reasons_of(event, bad) == [[], [spec.format_code]], f"{path} v{version}"
        return
    pytest.fail(f"no event carried {path}")


@pytest.mark.parametrize("country", sorted(markets_in_force().rules))
def test_postal_codes_and_tax_ids_follow_each_market(sim, country):
    event = sim.event_for("partner.enrolled", country, 1)
    wrong = fresh(event)
    wrong["payload"]["address"]["postal_code"] = "ABC-DEF-GHI"
    want = ["bad_format:payload.address.postal_code"]
    if markets_in_force().rules[country].tax_id:
        wrong["payload"]["tax_id"] = "X"
        want.append("bad_format:payload.tax_id")
    assert reasons_of(event, wrong) == [[], sorted(want)]


def test_rules_beyond_single_fields(sim):
    base = sim.event_for("partner.enrolled", "JP", 1)  # minimum age 20 in Japan
    at = base["occurred_at"][:10]
    y, m, d = int(at[:4]), at[5:7], at[8:10]

    def variant(i, **payload):
        event = fresh(base)
        event["payload"].update(payload)
        return event

    adult_today = variant(1, date_of_birth=f"{y - 20}-{m}-{d}")
    not_yet = variant(
        2, date_of_birth=f"{y - 20}-{m}-{int(d) + 1:02d}" if int(d) < 28 else f"{y - 19}-{m}-{d}"
    )
    abroad = variant(3, address={**base["payload"]["address"], "country": "DE"})
    self_sponsored = variant(4, sponsor_id=base["partner_id"])
    impossible_date = variant(5, date_of_birth=f"{y - 30}-02-30")
    de = sim.event_for("partner.enrolled", "DE", 1)
    de["payload"]["consents"]["data_processing"] = False
    empty_update = sim.event_for("partner.updated", "US", 1)
    empty_update["payload"]["changes"] = {}
    assert reasons_of(
        adult_today, not_yet, abroad, self_sponsored, impossible_date, de, empty_update
    ) == [
        [],
        ["under_age"],
        ["country_not_in_region"],
        ["sponsor_is_self"],
        ["bad_format:payload.date_of_birth"],
        ["consent_not_granted:payload.consents.data_processing"],
        ["missing:payload.changes"],
    ]


def test_what_cannot_be_parsed_is_quarantined_with_its_reason(sim):
    good = encode(sim.event_for("order.placed", "US", 1))
    wrong_type = sim.event_for("order.placed", "US", 2)
    wrong_type["payload"]["total_amount"] = "12.50"
    wrong_type["payload"]["channel"] = 7
    unknown_version = sim.event_for("order.placed", "US", 1) | {"schema_version": 9}
    unknown_type = sim.event_for("order.placed", "US", 1) | {"event_type": "order.returned"}
    pretty = json.dumps(
        sim.event_for("order.placed", "US", 1), indent=2
    ).encode()  # newlines inside are whitespace
    messages = [
        good,
        b"\xff\xfe{}",
        b'{"event_id": "x"',
        b"[1, 2]",
        b"",
        b"   ",
        b'{"a": NaN}',
        b'{"event_id": "a", "event_id": "b"}',
        good[:-1] + b"} {}",
        good + b" trailing",
        b"x" * 70_000,
        encode(wrong_type),
        encode(unknown_version),
        encode(unknown_type),
        pretty,
        good,
    ]
    assert reasons_of(*messages) == [
        [],
        ["not_utf8"],
        ["unparsable"],
        ["unparsable"],
        ["unparsable"],
        ["unparsable"],
        ["unparsable"],
        ["unparsable"],
        ["unparsable"],
        ["unparsable"],
        ["oversized"],
        ["bad_format:payload.channel", "bad_format:payload.total_amount"],
        ["unknown_schema_version"],
        ["unknown_event_type"],
        [],
        ["duplicate_event_id"],
    ]


def test_every_message_comes_out_once_with_its_raw_bytes_and_readable_fields(sim):
    events = [encode(sim.event_for(t, "DE", 2)) for t in EVENT_TYPES]
    broken = sim.event_for("order.placed", "DE", 1)
    del broken["payload"]["currency"]
    messages = [*events, encode(broken), b"\x00garbage", events[0]]
    result = validate_batch(messages)
    assert result.valid.column("source_index").to_pylist() == [0, 1, 2, 3, 4]
    quarantine = result.quarantine.to_pylist()
    assert [q["source_index"] for q in quarantine] == [5, 6, 7]
    assert [q["raw"] for q in quarantine] == messages[5:]
    assert (
        quarantine[0]["event_type"] == "order.placed"
        and quarantine[0]["partner_id"] == broken["partner_id"]
    )
    assert quarantine[1]["event_id"] is None
    assert result.duplicates == 1
    valid = result.valid
    assert str(valid.schema.field("occurred_at").type) == "timestamp[us, tz=UTC]"
    assert (
        valid.column("partner_version").type == "int64"
        and valid.column("schema_version").to_pylist() == [2] * 5
    )


def test_an_empty_batch_is_fine():
    result = validate_batch([])
    assert result.valid.num_rows == 0 and result.quarantine.num_rows == 0
