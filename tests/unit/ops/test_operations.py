"""The operations tooling without services: replay's days, reconciliation findings, canary
events (valid by the contracts) and batch metrics."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from enrollment.config import load_config
from enrollment.core.partners import canary_id, is_canary
from enrollment.ingest.validation import validate_batch
from enrollment.ops.canary import Canary, canary_event, missing
from enrollment.ops.metrics import batch_metrics
from enrollment.ops.reconciliation import Finding
from enrollment.ops.replay import days


def test_replay_days_from_params_or_the_data_interval():
    assert days("2026-11-20", "2026-11-22", None, None) == (date(2026, 11, 20), date(2026, 11, 22))
    assert days("2026-11-20", None, None, None) == (date(2026, 11, 20), date(2026, 11, 20))
    start, end = (
        datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2026, 11, 21, tzinfo=UTC),
    )
    assert days(None, None, start, end) == (date(2026, 11, 20), date(2026, 11, 20)), (
        "a daily interval is one day, its end excluded"
    )
    with pytest.raises(ValueError, match="before"):
        days("2026-11-22", "2026-11-20", None, None)
    with pytest.raises(ValueError, match="date_from"):
        days(None, None, None, None)


def test_a_finding_is_ok_only_when_the_numbers_agree_and_nobody_is_named():
    assert Finding("ledger → events", 10, 10).ok
    assert not Finding("ledger → events", 10, 9).ok
    assert not Finding("partners → solr", 10, 10, ["EM0000000001"]).ok
    said = Finding(
        "partners → solr", 10, 9, ["EM0000000001"]
    ).describe()  # what logs and alerts carry
    assert "EM0000000001" not in said and "1 partners listed in the reconciliation table" in said


def test_canary_events_are_valid_enrollments_of_one_partner_per_region():
    config = load_config()
    events = [canary_event(config, region, 1_795_000_000) for region in config.regions]
    result = validate_batch([json.dumps(e).encode() for e in events])
    assert result.quarantine.num_rows == 0, result.quarantine.column("reasons").to_pylist()
    assert [e["partner_id"] for e in events] == [canary_id(r) for r in config.regions]
    assert len({e["partner_id"] for e in events}) == len(config.regions)
    assert all(
        e["payload"]["sponsor_id"] != e["partner_id"] and e["event_type"] == "partner.enrolled"
        for e in events
    )
    assert all(is_canary(e["partner_id"]) for e in events) and not is_canary("EM7Q2K9D0ZX1AB"[:12])


def test_missing_names_each_destination_a_canary_has_not_reached():
    c = Canary("EMEA", "EMCANARY0000", 5, "e", 0.0, seen={"bigquery": 3.0, "solr": 9.0})
    assert missing([c], ["firestore", "solr"]) == {"EMEA": ["firestore"]}


def test_batch_metrics():
    m = batch_metrics(
        {"offsets": 1200, "valid": 1100, "quarantined": 60, "duplicates": 40, "seconds": 2.0},
        {
            "seconds": 4.0,
            "oldest_event_age_s": 30.0,
            "p95_event_age_s": 12.0,
            "newest_event_age_s": 5.0,
        },
    )
    assert m == {
        "events": 1200,
        "valid": 1100,
        "quarantined": 100,
        "land_s": 2.0,
        "warehouse_s": 4.0,
        "events_per_min": 12000.0,
        "freshness_oldest_s": 30.0,
        "freshness_p95_s": 12.0,
        "freshness_newest_s": 5.0,
    }
