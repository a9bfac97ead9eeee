"""The freshness gate and the batch's event ages, without services."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from enrollment.core.errors import GateError
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
    ) == {"oldest_event_age_s": None, "newest_event_age_s": None}


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
