"""Property-based tests: whatever arrives, every input comes out exactly once; and the validator
agrees exactly with the simulator's expected outcomes for any seed and fault mix."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollment.ingest.validation import validate_batch
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accounted(messages) -> None:
    result = validate_batch(messages)
    indices = (
        result.valid.column("source_index").to_pylist()
        + result.quarantine.column("source_index").to_pylist()
    )
    assert sorted(indices) == list(range(len(messages))), "every input exactly once"
    assert all(result.quarantine.column("reasons").to_pylist()), (
        "a quarantined message always says why"
    )
    raws = dict(
        zip(
            result.quarantine.column("source_index").to_pylist(),
            result.quarantine.column("raw").to_pylist(),
            strict=True,
        )
    )
    assert all(raws[i] == (messages[i] or b"") for i in raws), "the raw bytes are kept"


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@SETTINGS
@given(st.lists(st.binary(max_size=80) | st.none(), max_size=30))
def test_arbitrary_bytes_come_out_exactly_once(messages):
    _accounted(messages)


@SETTINGS
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(
                ["event_id", "event_type", "schema_version", "region", "payload", "partner_id", "x"]
            ),
            json_values,
            max_size=6,
        ),
        max_size=25,
    )
)
def test_arbitrary_json_objects_come_out_exactly_once(objects):
    _accounted([json.dumps(o).encode() for o in objects])


@st.composite
def mutated_events(draw):
    """Real events with random fields replaced by arbitrary JSON values, or cut short."""
    sim = Simulator(seed=draw(st.integers(0, 5)), initial_partners=5)
    events = [json.loads(m.value) for m in sim.take(draw(st.integers(1, 15)))]
    out = []
    for event in events:
        if draw(st.booleans()):
            target = (
                event["payload"]
                if draw(st.booleans()) and isinstance(event.get("payload"), dict)
                else event
            )
            key = draw(st.sampled_from([*sorted(target), "extra"]))
            target[key] = draw(json_values)
        text = json.dumps(event, ensure_ascii=False).encode()
        out.append(
            text[: draw(st.integers(0, len(text)))] if draw(st.integers(0, 9)) == 0 else text
        )
    return out


@SETTINGS
@given(mutated_events())
def test_mutated_events_come_out_exactly_once(messages):
    _accounted(messages)


@pytest.mark.slow
@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 400),
    total=st.floats(0, 0.6),
    mix=st.fixed_dictionaries({name: st.floats(0, 1) for name in FaultRates().as_dict()}),
)
def test_the_validator_agrees_with_the_simulator_expected_outcomes(seed, n, total, mix):
    weight = sum(mix.values()) or 1.0
    faults = FaultRates(**{name: total * share / weight for name, share in mix.items()})
    messages = Simulator(seed=seed, faults=faults, initial_partners=20).take(n)
    result = validate_batch([m.value for m in messages])
    got = {i: [] for i in range(len(messages))}
    for row in result.quarantine.select(["source_index", "reasons"]).to_pylist():
        got[row["source_index"]] = row["reasons"]
    assert [got[i] for i in range(len(messages))] == [m.expected["reasons"] for m in messages]
