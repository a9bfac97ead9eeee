"""The backlog trigger's decision and its serialisation (what the triggerer re-creates)."""

import importlib

from enrollment.config import load_config, parse_config
from enrollment.ingest.backlog import Backlog, should_fire
from enrollment_airflow.triggers import BacklogTrigger


def backlog(pending_per_partition, oldest_ms=None):
    return Backlog(
        "t", tuple((p, 100, 100 + n) for p, n in enumerate(pending_per_partition)), oldest_ms
    )


def test_fires_on_enough_records_or_on_age_and_never_on_nothing():
    now = 1_000_000.0
    assert should_fire(backlog([10, 10]), min_records=20, max_age_s=60, now=now)
    assert not should_fire(
        backlog([10, 9], oldest_ms=int((now - 5) * 1000)), min_records=20, max_age_s=60, now=now
    )
    assert should_fire(
        backlog([1, 0], oldest_ms=int((now - 61) * 1000)), min_records=20, max_age_s=60, now=now
    )
    assert not should_fire(backlog([0, 0]), min_records=0, max_age_s=0, now=now)


def test_the_fingerprint_is_the_committed_offsets():
    assert backlog([5, 0]).fingerprint == "0:100,1:100"
    assert (
        Backlog("t", ((0, 105, 105), (1, 100, 100)), None).fingerprint
        != backlog([5, 0]).fingerprint
    )


def test_trigger_serialises_to_an_importable_class_with_json_kwargs():
    trigger = BacklogTrigger(
        region="EMEA",
        topic="commerce.emea.events",
        partitions=4,
        group="g",
        min_records=5,
        max_age_s=2.5,
    )
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (path, kwargs)
    import json

    assert json.loads(json.dumps(kwargs)) == kwargs


def test_thresholds_come_from_config_with_region_overrides():
    raw = {
        "project": "p",
        "consumer_group": "g",
        "landing_bucket": "b",
        "datasets": {"warehouse": "w", "ops": "o"},
        "solr_core": "c",
        "marketing_cloud": {"data_extension": "d"},
        "backlog": {"min_records": 7, "max_age_s": 3, "max_batch": 70},
        "regions": [
            {"code": "AMER", "topic": "a", "partitions": 1, "countries": ["US"]},
            {"code": "EMEA", "topic": "e", "partitions": 1, "max_age_s": 1, "countries": ["DE"]},
        ],
    }
    config = parse_config(raw)
    assert (
        config.region("AMER").min_records,
        config.region("AMER").max_age_s,
        config.region("AMER").max_batch,
    ) == (7, 3.0, 70)
    assert config.region("EMEA").max_age_s == 1.0
    assert load_config().region("AMER").min_records > 0
