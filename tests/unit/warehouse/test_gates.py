"""The freshness gate and the batch's event ages, without services."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrollment.core.errors import GateError
from enrollment.ingest.shape import p95_timestamp_ms
from enrollment.warehouse.gates import event_ages, freshness_gate


def test_event_ages_come_from_the_kafka_timestamps():
    now = time.time()
    stamps = pa.array(
        [
            datetime.fromtimestamp(now - 90, UTC),
            datetime.fromtimestamp(now - 5, UTC),
        ],
        pa.timestamp("ms", tz="UTC"),
    )
    ages = event_ages(pa.table({"kafka_timestamp": stamps}))
    assert 89 <= ages["oldest_event_age_s"] <= 95 and 4 <= ages["newest_event_age_s"] <= 10
    assert event_ages(
        pa.table({"kafka_timestamp": pa.array([], pa.timestamp("ms", tz="UTC"))})
    ) == {"oldest_event_age_s": None, "p95_event_age_s": None, "newest_event_age_s": None}


def test_the_freshness_gate_names_the_batch_and_the_numbers():
    assert (
        freshness_gate("emea-1", {"oldest_event_age_s": 42.0, "newest_event_age_s": 3.0}, 60)[
            "oldest_event_age_s"
        ]
        == 42.0
    )
    assert (
        freshness_gate("emea-1", {"oldest_event_age_s": None}, 60)["oldest_event_age_s"] is None
    ), "an empty batch is fresh"
    with pytest.raises(GateError, match=r"batch emea-2: .* 400 s .*SLA is 300 s"):
        freshness_gate("emea-2", {"oldest_event_age_s": 400.0, "newest_event_age_s": 10.0}, 300)


def test_the_freshness_gate_names_the_late_batch_even_without_a_newest_age():
    from enrollment.core.errors import GateError
    from enrollment.warehouse.gates import freshness_gate

    with pytest.raises(GateError, match=r"batch b-1: .* 400 s after it reached Kafka; the SLA"):
        freshness_gate("b-1", {"oldest_event_age_s": 400.0, "newest_event_age_s": None}, 300)
    assert freshness_gate("b-1", {"oldest_event_age_s": 20.0}, 300)["oldest_event_age_s"] == 20.0


def _stamps(ages_s: list[float]) -> pa.Array:
    now = time.time()
    return pa.array(
        [datetime.fromtimestamp(now - a, UTC) for a in ages_s], pa.timestamp("ms", tz="UTC")
    )


def test_one_straggler_does_not_make_a_batch_late_but_a_late_p95_does():
    # 99 events 5-10 s old and one produced 300 s before the rest.
    fresh = event_ages(
        pa.table({"kafka_timestamp": _stamps([300] + [5 + i / 20 for i in range(99)])})
    )
    assert fresh["oldest_event_age_s"] >= 299 and fresh["p95_event_age_s"] <= 11
    assert freshness_gate("apac-1", fresh, 60)["p95_event_age_s"] == fresh["p95_event_age_s"]
    # Ten of them old: the p95 event is one of the old ones.
    late = event_ages(pa.table({"kafka_timestamp": _stamps([90] * 10 + [5] * 90)}))
    assert late["p95_event_age_s"] >= 89
    with pytest.raises(
        GateError,
        match=r"batch apac-2: its p95 event became queryable 9\d s after it reached Kafka "
        r"\(oldest 9\d s, newest \d s\); the SLA is 60 s",
    ):
        freshness_gate("apac-2", late, 60)


def test_a_batch_measured_before_the_p95_was_kept_is_judged_on_its_oldest_event():
    with pytest.raises(GateError, match=r"its oldest event became queryable 400 s"):
        freshness_gate("b-1", {"oldest_event_age_s": 400.0, "p95_event_age_s": None}, 60)


def test_the_p95_timestamp_is_the_one_five_percent_of_messages_are_older_than():
    millis = pa.array(list(range(100)), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    assert p95_timestamp_ms(millis) == 4
    assert p95_timestamp_ms(pa.array([None, 7], pa.timestamp("ms", tz="UTC"))) == 7
    assert p95_timestamp_ms(pa.array([], pa.timestamp("ms", tz="UTC"))) is None


@given(st.lists(st.integers(0, 2**41), min_size=1, max_size=300))
def test_at_most_five_percent_of_a_batch_is_older_than_its_p95_message(values):
    p95 = p95_timestamp_ms(pa.array(values, pa.int64()).cast(pa.timestamp("ms", tz="UTC")))
    assert p95 in values and sum(v < p95 for v in values) <= 0.05 * len(values)
