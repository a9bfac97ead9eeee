"""The lag monitor's alert rules without services: which measurements alert, what the alert
says, and how the rules are read from the configuration."""

from __future__ import annotations

import pytest

from enrollment.config import LagRules, load_config
from enrollment.ops.lag import LagRow, alerts, findings

RULES = LagRules(grow_minutes=3, max_age_s=300.0, max_sink_batches=30)


def kafka(region: str, partition: int, pending: int, age: float | None = 0.0) -> LagRow:
    return LagRow("kafka", region, partition, None, pending, age)


def test_a_pending_record_older_than_the_limit_alerts_with_its_partition_and_age():
    [alert] = alerts([kafka("EMEA", 2, 10, 301.4), kafka("EMEA", 3, 10, 299.0)], {}, RULES)
    assert alert == "EMEA partition 2: oldest pending record 301 s old (> 300 s)"
    assert alerts([kafka("EMEA", 2, 10, 300.0)], {}, RULES) == [], "the limit itself is fine"
    assert alerts([kafka("EMEA", 2, 0, None)], {}, RULES) == [], "nothing pending: no age"


def test_a_sink_alerts_only_beyond_its_batch_limit():
    at_limit = LagRow("sink", "APAC", None, "solr", 30, 12.0)
    beyond = LagRow("sink", "APAC", None, "solr", 31, 12.0)
    assert alerts([at_limit], {}, RULES) == []
    assert alerts([beyond], {}, RULES) == [
        "sink solr APAC: 31 warehoused batches not synced (> 30)"
    ]


def test_a_sink_whose_oldest_unsynced_batch_waited_too_long_is_late_then_broken():
    """However few batches wait: a sink that synced nothing for a day is broken, not fine."""
    one = LagRow("sink", "EMEA", None, "firestore", 1, 3600.0)
    assert alerts([one], {}, RULES) == [], "an hour itself is fine"
    [(kind, message)] = findings([LagRow("sink", "EMEA", None, "firestore", 1, 3601.0)], {}, RULES)
    assert kind == "late" and message == (
        "sink firestore EMEA: its oldest warehoused batch not synced has waited 3601 s "
        "(> 3600 s; 1 waiting)"
    )
    eight_days = LagRow("sink", "EMEA", None, "firestore", 2, 8 * 86400.0)
    [(kind, message)] = findings([eight_days], {}, RULES)
    assert kind == "broken" and "waited 192.0 h (> 24 h; 2 waiting)" in message
    assert "sync_firestore" in message
    strict = LagRules(sink_late_s=60, sink_broken_s=120)
    assert findings([LagRow("sink", "EMEA", None, "solr", 1, 121.0)], {}, strict)[0][0] == "broken"
    with pytest.raises(ValueError, match="sink_late_s <= sink_broken_s"):
        LagRules(sink_late_s=7200, sink_broken_s=3600)


def test_a_set_aside_batch_always_alerts_and_says_how_to_get_it_back():
    [alert] = alerts([LagRow("set_aside", "LATAM", None, None, 2, None)], {}, RULES)
    assert alert.startswith("LATAM: 2 landed batch(es) set aside") and "requeue" in alert


def test_a_landed_batch_alerts_only_once_older_than_the_limit():
    assert alerts([LagRow("warehouse", "AMER", None, None, 4, 300.0)], {}, RULES) == []
    [alert] = alerts([LagRow("warehouse", "AMER", None, None, 4, 301.0)], {}, RULES)
    assert "AMER" in alert and "301 s" in alert and "4 waiting" in alert


def test_growth_alerts_when_the_regions_total_grew_at_each_of_the_last_measurements():
    # The current total sums the region's partitions: 40 + 50 = 90.
    rows = [kafka("EMEA", 0, 40), kafka("EMEA", 1, 50)]
    [alert] = alerts(rows, {"EMEA": [5, 10, 20, 40]}, RULES)
    assert alert == (
        "EMEA: pending records grew at each of the last 3 measurements (10 → 20 → 40 → 90)"
    ), "only the last grow_minutes measurements before this one"
    assert alerts(rows, {"EMEA": [10, 20, 20]}, RULES) == [], "a flat step is no growth"
    assert alerts(rows, {"EMEA": [100, 20, 40]}, RULES) == [], "a drop in the window"
    assert alerts(rows, {"EMEA": [20, 40]}, RULES) == [], "too few measurements yet"
    assert alerts(rows, {"EMEA": [10, 20, 90]}, RULES) == [], "equal to the last: no growth"
    assert alerts(rows, {"APAC": [10, 20, 40]}, RULES) == [], "another region's history"


def test_the_growth_rule_follows_grow_minutes():
    rows = [kafka("EMEA", 0, 90)]
    assert alerts(rows, {"EMEA": [40]}, LagRules(grow_minutes=1)) != []
    assert alerts(rows, {"EMEA": [40]}, LagRules(grow_minutes=2)) == []


def test_the_rules_are_the_configured_lag_section_typed():
    """``dags/lag_monitor.py`` and the operator view use ``config.lag`` as the rules."""
    import yaml

    from enrollment.config import DEFAULT_CONFIG, parse_config

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {"lag": {"grow_minutes": 1, "max_age_s": 60}}
    rules = parse_config(raw).lag
    assert rules == LagRules(grow_minutes=1, max_age_s=60.0, max_sink_batches=30)
    assert isinstance(rules.max_age_s, float)
    assert load_config().lag == LagRules()
    assert alerts([kafka("EMEA", 0, 90)], {"EMEA": [40]}, rules) != []


@pytest.mark.parametrize("age", [0.0, 299.9])
def test_young_records_never_alert_whatever_their_number(age):
    assert alerts([kafka("EMEA", p, 10**6, age) for p in range(4)], {}, RULES) == []


def test_a_set_aside_batch_or_a_partition_drift_is_broken_and_waiting_data_is_late():
    from enrollment.ops.lag import LagRow, findings

    config = load_config()
    amer = config.region("AMER")
    waiting = [kafka("AMER", p, 10, 400.0) for p in range(amer.partitions)]
    assert {kind for kind, _ in findings(waiting, {}, RULES, config)} == {"late"}
    aside = [*waiting, LagRow("set_aside", "AMER", None, None, 1, None)]
    assert [kind for kind, _ in findings(aside, {}, RULES, config)][-1] == "broken"
    drift = waiting[:1]  # one partition measured where the configuration says four
    kinds = findings(drift, {}, RULES, config)
    assert ("late", kinds[0][1]) == kinds[0]
    assert any(kind == "broken" and message.startswith("AMER: ") for kind, message in kinds)
