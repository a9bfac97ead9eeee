"""Adversarial properties of the validator: whatever a hostile producer sends, ``validate_batch``
returns; every message comes out exactly once; a message's outcome depends on its own bytes only
(``duplicate_event_id`` aside); JSON is read strictly and integers exactly; what passes is what
every downstream holds; each event is held to its own contract only.

The hostile classes are generated (hypothesis), mixed with valid neighbours, never hand-picked
only."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollment.contracts.spec import MAX_NESTING, SAFE_INTEGER, TEXT_MAX_CHARS
from enrollment.ingest import validation
from enrollment.ingest.shape import flatten
from enrollment.ingest.validation import screen, validate, validate_batch, validate_guarded
from enrollment.simulator import hostile
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SIM = Simulator(seed=5, initial_partners=30)
EVENTS = [json.loads(m.value) for m in SIM.take(300)]


def outcomes(messages) -> list[list[str]]:
    result = validate_batch(messages)
    indices = (
        result.valid.column("source_index").to_pylist()
        + result.quarantine.column("source_index").to_pylist()
    )
    assert sorted(indices) == list(range(len(messages))), "every message exactly once"
    got = {i: [] for i in range(len(messages))}
    for row in result.quarantine.select(["source_index", "reasons", "raw"]).to_pylist():
        assert row["reasons"], "a quarantined message always says why"
        assert row["raw"] == (messages[row["source_index"]] or b""), "the raw bytes are kept"
        got[row["source_index"]] = row["reasons"]
    return [got[i] for i in range(len(messages))]


def encode(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()


# -- strategies
# -----------------------------------------------------------------------------------------
valid_events = st.sampled_from(EVENTS).map(lambda e: json.loads(json.dumps(e)))


@st.composite
def hostile_messages(draw):
    """A valid event made hostile, with the reasons the contract gives it."""
    event = draw(valid_events)
    value, reasons, _ = hostile.make(random.Random(draw(st.integers(0, 2**32))), event)
    return value, reasons


edge_text = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1 Infinity Loop",
        "nan",
        "null",
        "true",
        "\U0001f600",
        "Ünïcödé",
        "\\",
        '"',
        "\u2028",
        "a" * TEXT_MAX_CHARS,
    ]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 2**63, -(2**63) - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | edge_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
raw_fragments = st.sampled_from(
    [
        b'"\\ud800"',
        b'"\\udfff\\ud800"',
        b'"a\nb"',
        b'"\x00"',
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e400",
        b"9" * 400,
        b"-0",
        b"01",
        b'"\\u0000"',
        b"[" * 10_000 + b"]" * 10_000,
        b"{" * 20,
        b'"\xed\xa0\x80"',
        b"\xef\xbb\xbf",
        b"true",
        b"nul",
        b'"\\x41"',
        b'"2026-02-30T00:00:00Z"',
        b'"0000-01-01T00:00:00Z"',
        b'"9999-12-31T23:59:59-01:00"',
    ]
)


@st.composite
def spliced_events(draw):
    """A valid event whose one field (known, foreign or new) holds an arbitrary raw JSON fragment,
    or whose text is cut anywhere, or with a key repeated."""
    event = draw(valid_events)
    target = (
        event["payload"]
        if draw(st.booleans()) and isinstance(event.get("payload"), dict)
        else event
    )
    key = draw(
        st.sampled_from(
            [*sorted(target), "extra", "reason", "first_name", "email", "channel", "changes"]
        )
    )
    target[key] = "\u2063"
    text = encode(event).replace(
        b'"\xe2\x81\xa3"',
        draw(raw_fragments | st.builds(lambda v: json.dumps(v).encode(), json_values)),
    )
    how = draw(st.integers(0, 9))
    if how == 0:
        text = text[: draw(st.integers(0, len(text)))]
    elif how == 1:
        text = b'{"' + draw(st.sampled_from(sorted(event))).encode() + b'":1,' + text[1:]
    return text


def mixed(draw_list):
    return draw_list


batches = st.lists(
    st.one_of(
        valid_events.map(encode),
        hostile_messages().map(lambda p: p[0]),
        spliced_events(),
        st.binary(max_size=60),
    ),
    min_size=1,
    max_size=25,
)


# -- totality, exactly once, neighbour independence
# ------------------------------------------------------
@SETTINGS
@given(batches)
def test_any_batch_returns_and_every_message_comes_out_once(messages):
    outcomes(messages)


@SETTINGS
@given(batches)
def test_a_message_outcome_does_not_depend_on_its_neighbours(messages):
    together = outcomes(messages)
    for message, got in zip(messages, together, strict=True):
        alone = outcomes([message])[0]
        assert [r for r in got if r != "duplicate_event_id"] == alone


@SETTINGS
@given(st.lists(st.tuples(hostile_messages(), st.booleans()), min_size=1, max_size=20))
def test_hostile_messages_get_exactly_their_reasons_among_valid_neighbours(items):
    messages, expected = [], []
    for (value, reasons), neighbour in items:
        messages.append(value)
        expected.append(reasons)
        if neighbour:
            event = json.loads(json.dumps(EVENTS[len(messages) % len(EVENTS)]))
            event["event_id"] = f"{len(messages):08d}-0000-4000-8000-000000000000"
            messages.append(encode(event))
            expected.append([])
    got = outcomes(messages)
    # A repeated hostile event keeps its id: a later copy is also a duplicate.
    assert [[r for r in g if r != "duplicate_event_id"] for g in got] == expected


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


@SETTINGS
@given(spliced_events())
def test_the_fast_path_decides_as_the_per_record_path(message):
    """Whatever the struct decoder accepts (after the byte
    screening), the slow path keeps the same values."""
    fast = (
        screen.fast(message)
        if screen.screen(message, validation.DEFAULT_MAX_MESSAGE_BYTES) is None
        else None
    )
    if fast is None:
        return
    bad: list[str] = []
    slow = screen.per_record(message, bad)
    assert bad == [] and slow is not None
    assert _without_nulls(fast) == _without_nulls(
        slow
    )  # a null and an absent field are one and the same


def test_the_guard_quarantines_what_makes_validation_raise_and_keeps_the_rest(monkeypatch):
    messages = [encode(e) for e in EVENTS[:40]]
    real = validation.validate_batch
    culprit = messages[17]

    def breaks_on_the_culprit(batch, *args, **kwargs):
        if culprit in batch:
            raise MemoryError("simulated defect")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(validate, "validate_batch", breaks_on_the_culprit)
    result = validate_guarded(messages)
    indices = sorted(
        result.valid.column("source_index").to_pylist()
        + result.quarantine.column("source_index").to_pylist()
    )
    assert indices == list(range(40))
    q = result.quarantine.to_pylist()
    assert [(r["source_index"], r["reasons"], r["raw"]) for r in q] == [
        (17, ["validator_error"], culprit)
    ]
    assert result.valid.num_rows == 39


def test_the_guard_finds_duplicates_across_the_parts_it_validated_apart(monkeypatch):
    event = encode(EVENTS[0])
    messages = [event, encode(EVENTS[1]), b"boom", event]
    real = validation.validate_batch

    def breaks(batch, *args, **kwargs):
        if b"boom" in batch:
            raise RuntimeError("simulated defect")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(validate, "validate_batch", breaks)
    result = validate_guarded(messages)
    reasons = {r["source_index"]: r["reasons"] for r in result.quarantine.to_pylist()}
    assert reasons == {2: ["validator_error"], 3: ["duplicate_event_id"]}


def test_a_validator_that_raises_on_everything_fails_the_batch_instead_of_quarantining(
    monkeypatch,
):
    messages = [encode(e) for e in EVENTS[:20]]

    def broken(batch, *args, **kwargs):
        raise RuntimeError("simulated defect")

    monkeypatch.setattr(validate, "validate_batch", broken)
    with pytest.raises(validate.ValidatorBroken, match=r"reference events .* the validator is"):
        validate_guarded(messages)


def test_every_contract_has_a_reference_event_and_each_is_valid():
    from enrollment.contracts.spec import EVENT_TYPES, SCHEMA_VERSIONS

    references = json.loads(validate.REFERENCES_FILE.read_text())
    assert sorted((e["event_type"], e["schema_version"]) for e in references) == sorted(
        (t, v) for t in EVENT_TYPES for v in SCHEMA_VERSIONS[t]
    )
    result = validate_batch([encode(e) for e in references])
    assert result.quarantine.num_rows == 0, result.quarantine.column("reasons").to_pylist()
    assert result.valid.num_rows == len(references)


# -- strict JSON, exact integers
# ------------------------------------------------------------------------
def _order(**changes) -> dict:
    event = next(json.loads(json.dumps(e)) for e in EVENTS if e["event_type"] == "order.placed")
    event.update(changes)
    return event


@pytest.mark.parametrize(
    ("raw", "reasons"),
    [
        (b'"\\ud800"', ["unparsable"]),
        (b'"a\nb"', ["unparsable"]),
        (b"NaN", ["unparsable"]),
        (b"Infinity", ["unparsable"]),
        (b"[" * 10_000 + b"]" * 10_000, ["too_deep"]),
        (b"[" * (MAX_NESTING - 1) + b"]" * (MAX_NESTING - 1), []),
        (b"[" * MAX_NESTING + b"]" * MAX_NESTING, ["too_deep"]),
        (b'"\\ud83d\\ude00"', []),
        (b'"NaN Infinity"', []),
        (b"1e400", []),
    ],
)
def test_json_is_read_strictly_wherever_it_appears(raw, reasons):
    event = _order()
    event["note"] = "\u2063"
    message = encode(event).replace(b'"\xe2\x81\xa3"', raw)
    assert outcomes([message]) == [reasons]


@pytest.mark.parametrize(
    ("version", "reasons"),
    [
        (SAFE_INTEGER, []),
        (SAFE_INTEGER + 1, ["out_of_range:partner_version"]),
        (2**63, ["out_of_range:partner_version"]),
        (int("9" * 300), ["out_of_range:partner_version"]),
        (7.0, []),
        (7.5, ["bad_format:partner_version"]),
        (True, ["bad_format:partner_version"]),
    ],
)
def test_integers_are_exact_and_within_what_every_downstream_holds(version, reasons):
    message = encode(_order(partner_version=version))
    assert outcomes([message]) == [reasons]
    if not reasons:
        valid = validate_batch([message]).valid
        assert valid.column("partner_version").to_pylist() == [int(version)]


@pytest.mark.parametrize(
    ("at", "reasons"),
    [
        ("2024-02-29T10:00:00Z", []),
        ("2026-02-29T10:00:00Z", ["bad_format:occurred_at"]),
        ("2026-02-30T10:00:00Z", ["bad_format:occurred_at"]),
        ("2026-04-31T10:00:00+02:00", ["bad_format:occurred_at"]),
        ("0000-01-01T00:00:00Z", ["out_of_range:occurred_at"]),
        ("0001-01-01T00:00:00Z", []),
        ("0001-01-01T00:30:00+01:00", ["out_of_range:occurred_at"]),
        ("9999-12-31T23:59:59.999999Z", []),
        ("9999-12-31T23:59:59.999999999Z", []),  # cut to microseconds, not rounded past 9999
        ("9999-12-31T23:30:00-01:00", ["out_of_range:occurred_at"]),
    ],
)
def test_instants_are_calendar_dates_within_the_warehouse_range(at, reasons):
    assert outcomes([encode(_order(occurred_at=at))]) == [reasons]


def test_payload_instants_and_dates_are_calendar_checked():
    enrolled = next(
        json.loads(json.dumps(e)) for e in EVENTS if e["event_type"] == "partner.enrolled"
    )
    bad_accept = json.loads(json.dumps(enrolled))
    bad_accept["payload"]["agreement"]["accepted_at"] = "2025-02-29T10:00:00Z"
    bad_accept["event_id"] = "00000000-0000-4000-8000-000000000001"
    bad_birth = json.loads(json.dumps(enrolled))
    bad_birth["payload"]["date_of_birth"] = "1990-06-31"
    bad_birth["event_id"] = "00000000-0000-4000-8000-000000000002"
    assert outcomes([encode(bad_accept), encode(bad_birth)]) == [
        ["bad_format:payload.agreement.accepted_at"],
        ["bad_format:payload.date_of_birth"],
    ]


def test_the_words_nan_and_infinity_are_text_and_a_later_copy_stays_the_duplicate():
    enrolled = next(
        json.loads(json.dumps(e)) for e in EVENTS if e["event_type"] == "partner.enrolled"
    )
    enrolled["payload"]["last_name"] = "NaN"
    enrolled["payload"]["address"]["line1"] = "1 Infinity Loop"
    message = encode(enrolled)
    assert outcomes([message, message]) == [[], ["duplicate_event_id"]]
    valid = validate_batch([message]).valid
    assert valid.column("payload").to_pylist()[0]["last_name"] == "NaN"


@pytest.mark.parametrize("text", ["Ann\u0000", "Ann\u0007", "\u001bAnn"])
def test_escaped_control_characters_in_text_are_a_bad_format(text):
    enrolled = next(
        json.loads(json.dumps(e)) for e in EVENTS if e["event_type"] == "partner.enrolled"
    )
    enrolled["payload"]["first_name"] = text
    assert outcomes([encode(enrolled)]) == [["bad_format:payload.first_name"]]


def test_text_longer_than_the_sinks_hold_is_too_long():
    enrolled = next(
        json.loads(json.dumps(e)) for e in EVENTS if e["event_type"] == "partner.enrolled"
    )
    enrolled["payload"]["first_name"] = "\U0001f600" * TEXT_MAX_CHARS  # characters, not bytes
    assert outcomes([encode(enrolled)]) == [[]]
    enrolled["payload"]["first_name"] += "x"
    assert outcomes([encode(enrolled)]) == [["too_long:payload.first_name"]]


# -- each event's own contract only
# ----------------------------------------------------------------------
def _landed(message: bytes) -> dict:
    result = validate_batch([message])
    assert result.quarantine.num_rows == 0, result.quarantine.column("reasons").to_pylist()
    messages = pa.table(
        {
            "kafka_partition": pa.array([0], pa.int32()),
            "kafka_offset": pa.array([0], pa.int64()),
            "kafka_timestamp": pa.array([0], pa.timestamp("ms", tz="UTC")),
            "kafka_key": pa.array([b""], pa.binary()),
            "value": pa.array([message], pa.binary()),
        }
    )
    return flatten(result, messages, "b").to_pylist()[0]


def test_fields_of_another_type_are_neither_checked_nor_carried():
    terminated = next(
        json.loads(json.dumps(e)) for e in EVENTS if e["event_type"] == "partner.terminated"
    )
    terminated["payload"] |= {"first_name": "Mallory", "email": 5, "order_id": ["x"]}
    row = _landed(encode(terminated))
    assert row["first_name"] is None and row["email"] is None and row["order_id"] is None


def test_a_stray_payload_email_never_overrides_the_checked_change():
    updated = next(
        json.loads(json.dumps(e))
        for e in EVENTS
        if e["event_type"] == "partner.updated" and "email" in e["payload"]["changes"]
    )
    updated["payload"]["email"] = "mallory@example.com"
    row = _landed(encode(updated))
    assert row["email"] == updated["payload"]["changes"]["email"]


def test_fields_of_another_version_are_not_typed_against_it():
    v1 = next(
        json.loads(json.dumps(e))
        for e in EVENTS
        if e["event_type"] == "order.placed" and e["schema_version"] == 1
    )
    v1["payload"]["channel"] = 7  # a v2 field, of the wrong type: v1 does not define it
    v1["correlation_id"] = {"not": "text"}
    row = _landed(encode(v1))
    assert row["correlation_id"] is None


def test_unknown_fields_of_a_future_version_are_kept_raw_only():
    order = _order()
    order["payload"]["reason"] = 5  # a name another contract types as text
    order["payload"]["loyalty_tier"] = {"v3": True}
    message = encode(order)
    assert outcomes([message]) == [[]]
    assert json.loads(_landed(message)["event_json"])["payload"]["loyalty_tier"] == {"v3": True}


# -- the simulator's hostile fault
# ----------------------------------------------------------------------
@pytest.mark.slow
@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), rate=st.floats(0.05, 0.95))
def test_the_simulator_hostile_fault_agrees_with_the_validator(seed, n, rate):
    messages = Simulator(
        seed=seed, faults=FaultRates(hostile=rate, duplicate=0.05), initial_partners=20
    ).take(n)
    got = outcomes([m.value for m in messages])
    assert got == [m.expected["reasons"] for m in messages]
    assert all(m.expected["reasons"] for m in messages if m.expected["fault"] == "hostile"), (
        "every hostile message is refused"
    )


@pytest.mark.parametrize("offset", ["Z", "+01:00"])
@pytest.mark.parametrize("digits", [1, 3, 6, 7, 9, 12])
def test_instants_with_fractions_of_any_length_are_valid_truncated_to_microseconds(digits, offset):
    """RFC 3339 allows any number of fraction digits (Java's Instant.toString() writes up to 9);
    the warehouse holds microseconds, so the rest is cut, never rounded into the next second."""
    import datetime as dt

    enrolled = next(
        json.loads(json.dumps(e))
        for e in EVENTS
        if e["event_type"] == "partner.enrolled"
        and "captured_at" in e["payload"].get("consents", {})
    )
    fraction = "999999999999"[:digits]
    at = f"2026-03-01T{'09' if offset == 'Z' else '10'}:59:59.{fraction}{offset}"
    enrolled["occurred_at"] = at
    enrolled["payload"]["agreement"]["accepted_at"] = at
    enrolled["payload"]["consents"]["captured_at"] = at
    values = [encode(enrolled)]
    result = validate_batch(values)
    assert result.quarantine.num_rows == 0, result.quarantine.column("reasons").to_pylist()
    expected = dt.datetime(2026, 3, 1, 9, 59, 59, int(fraction[:6].ljust(6, "0")), dt.UTC)
    assert result.valid.column("occurred_at").to_pylist() == [expected]
    messages = pa.table(
        {
            "kafka_partition": pa.array([0], pa.int32()),
            "kafka_offset": pa.array([0], pa.int64()),
            "kafka_timestamp": pa.array([0], pa.timestamp("ms", tz="UTC")),
            "kafka_key": pa.array([b""]),
            "value": pa.array(values, pa.binary()),
        }
    )
    landed = flatten(result, messages, "batch-1")
    assert landed.column("occurred_at").to_pylist() == [expected]
    assert landed.column("consent_captured_at").to_pylist() == [expected]
