"""The typed configuration: every section parsed, each default in one place, unknown keys refused
naming the key and the file, and the region registry that refuses regions without market rules."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from enrollment.config import (
    DEFAULT_CONFIG,
    CanarySettings,
    ConfigError,
    LagRules,
    ReconciliationSettings,
    RetentionSettings,
    SinkSettings,
    as_file,
    load_config,
    markets_in_force,
    parse_config,
)

# The embedded file as a deployment would copy it.
EMBEDDED = yaml.safe_load(DEFAULT_CONFIG.read_text())
# A fifth region, by configuration alone: its countries and their market rules.
FIFTH_REGION = {
    "code": "MEA",
    "topic": "commerce.mea.events",
    "partitions": 2,
    "countries": ["AE", "SA"],
}
FIFTH_MARKETS = {
    "AE": {"currency": "AED", "postal_code": r"^\d{5}$", "languages": ["ar-AE", "en-AE"]},
    "SA": {"currency": "SAR", "postal_code": r"^\d{5}$", "min_age": 21, "languages": ["ar-SA"]},
}


def raw(**changes: object) -> dict:
    return EMBEDDED | changes


def test_embedded_defaults_define_four_regions_with_distinct_topics_and_their_markets():
    config = load_config()
    assert [r.code for r in config.regions] == ["AMER", "EMEA", "APAC", "LATAM"]
    assert len({r.topic for r in config.regions}) == 4
    assert all(r.partitions >= 1 and r.countries for r in config.regions)
    assert config.markets.countries["AMER"] == ("US", "CA")
    assert config.markets.consent_regions == ("EMEA",)
    assert set(config.markets.rules) == {c for r in config.regions for c in r.countries}
    assert markets_in_force() is config.markets


def test_region_lookup_is_case_insensitive_and_unknown_region_names_the_known_ones():
    config = load_config()
    assert config.region("emea").topic == "commerce.emea.events"
    with pytest.raises(KeyError, match="AMER, EMEA, APAC, LATAM"):
        config.region("MARS")


def test_duplicate_region_codes_and_a_country_in_two_regions_are_refused():
    amer = EMBEDDED["regions"][0]
    with pytest.raises(ConfigError, match="unique"):
        parse_config(raw(regions=[amer, amer | {"code": "amer", "topic": "b"}]))
    with pytest.raises(ConfigError, match="CA is in both AMER and NORTH"):
        parse_config(raw(regions=[amer, FIFTH_REGION | {"code": "NORTH", "countries": ["CA"]}]))


def test_a_fifth_region_is_configuration_alone_and_reaches_contracts_and_simulator(tmp_path):
    custom = tmp_path / "pipeline.yaml"
    custom.write_text(
        yaml.safe_dump(raw(regions=[*EMBEDDED["regions"], FIFTH_REGION], markets=FIFTH_MARKETS))
    )
    config = load_config(custom)
    region = config.region("mea")
    assert (region.topic, region.partner_prefix, region.countries) == (
        "commerce.mea.events",
        "ME",
        ("AE", "SA"),
    )
    assert region.max_batch == config.region("AMER").max_batch  # the backlog defaults
    assert config.markets.country_region("SA") == "MEA"
    assert config.markets.rules["SA"].min_age == 21
    assert "ingest_mea" in config.carrier_dags()


def test_a_region_without_countries_or_with_countries_lacking_market_rules_fails_at_load():
    with pytest.raises(ConfigError, match=r"<config>: regions: MEA names no countries"):
        parse_config(raw(regions=[*EMBEDDED["regions"], FIFTH_REGION | {"countries": []}]))
    with pytest.raises(ConfigError, match=r"no market rules for MEA: AE, SA\. Add each under"):
        parse_config(raw(regions=[*EMBEDDED["regions"], FIFTH_REGION]))
    partial = {"AE": FIFTH_MARKETS["AE"]}
    with pytest.raises(ConfigError, match=r"no market rules for MEA: SA\."):
        parse_config(raw(regions=[*EMBEDDED["regions"], FIFTH_REGION], markets=partial))


def test_unknown_keys_are_refused_naming_the_key_and_the_file(tmp_path):
    cases = {
        "canary": {"evry": "* * * * *"},
        "lag": {"max_age": 5},
        "reconciliation": {"start": "2026-01-01"},
        "retention": {"handover_day": 2},
        "warehouse": {"max_rows": 5},
        "backlog": {"min_record": 5},
        "sync": {"max_batch": 5},
        "alerts": {"on_fail": "x:y"},
        "datasets": {"warehouse": "w", "ops": "o", "opz": "p"},
    }
    for section, value in cases.items():
        path = tmp_path / f"{section}.yaml"
        path.write_text(yaml.safe_dump(raw(**{section: value})))
        (key,) = set(value) - {"warehouse", "ops"}
        with pytest.raises(ConfigError, match=rf"{path}: {section}: unknown key\(s\) \['{key}'\]"):
            load_config(path)
    region = EMBEDDED["regions"][0] | {"partition": 3}
    with pytest.raises(ConfigError, match=r"regions\.AMER: unknown key\(s\) \['partition'\]"):
        parse_config(raw(regions=[region]))
    with pytest.raises(ConfigError, match=r"markets\.AE: unknown key\(s\) \['currencies'\]"):
        parse_config(raw(markets={"AE": {"currencies": "AED", "postal_code": "x"}}))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['canaries'\]"):
        parse_config(raw(canaries={}))
    with pytest.raises(ConfigError, match=r"pools\.sinks: unknown key\(s\) \['slot'\]"):
        parse_config(raw(pools=EMBEDDED["pools"] | {"sinks": {"slot": 3, "description": "d"}}))


def test_values_of_the_wrong_type_are_refused_and_numbers_coerced():
    with pytest.raises(ConfigError, match=r"canary\.within_s: expected float, got 'soon'"):
        parse_config(raw(canary={"within_s": "soon"}))
    with pytest.raises(ConfigError, match=r"lag\.grow_minutes: expected int, got 2\.5"):
        parse_config(raw(lag={"grow_minutes": 2.5}))
    with pytest.raises(ConfigError, match=r"warehouse\.transaction: expected bool, got 'yes'"):
        parse_config(raw(warehouse={"transaction": "yes"}))
    assert parse_config(raw(canary={"within_s": 60})).canary.within_s == 60.0
    with pytest.raises(ConfigError, match="alerts: on_failure must be 'module:function'"):
        parse_config(raw(alerts={"on_failure": "notify"}))


def test_a_left_out_section_takes_the_dataclass_defaults_the_one_place():
    config = load_config()
    assert config.canary == CanarySettings()
    assert config.lag == LagRules()
    assert config.reconciliation == ReconciliationSettings()
    assert config.retention == RetentionSettings(
        handover_days=2, claims_days=35, staging_hours=6, at="15 3 * * *"
    )
    stated = {k for k in EMBEDDED if k in ("canary", "lag", "reconciliation", "retention")}
    assert stated == set(), "the embedded file states no default again (one place each)"
    with pytest.raises(ConfigError, match="claims_days >= 2"):
        parse_config(raw(retention={"claims_days": 1}))
    with pytest.raises(ConfigError, match="0 < poke_s <= within_s"):
        parse_config(raw(canary={"within_s": 10, "poke_s": 20}))


def test_the_gates_of_timeliness_default_to_the_goal():
    """Queryable within a minute, visible in every sink within two: "late" means the promise
    was missed (the test suite runs with its own, longer gates; see tests/conftest.py)."""
    config = load_config()
    assert config.freshness_sla_s == 60.0 and config.canary.within_s == 120.0
    assert parse_config(raw(freshness_sla_s=90)).freshness_sla_s == 90.0


def test_sinks_are_typed_and_read_as_their_entry():
    sinks = load_config().sinks
    assert list(sinks) == ["firestore", "solr", "marketing_cloud"]
    firestore = sinks["firestore"]
    assert isinstance(firestore, SinkSettings)
    assert (firestore.module, firestore.needs) == ("enrollment.sinks.firestore", ("firestore",))
    assert firestore["collection"] == "partners" and firestore.options["batch_size"] == 500
    assert dict(firestore)["module"] == "enrollment.sinks.firestore"
    with pytest.raises(ConfigError, match="sinks: 'Bad-Name'"):
        parse_config(raw(sinks={"Bad-Name": {"module": "m"}}))
    with pytest.raises(ConfigError, match="each entry needs a 'module'"):
        parse_config(raw(sinks={"firestore": {"collection": "x"}}))


def test_the_printed_configuration_loads_again_to_the_same_settings(tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "enrollment.config"], capture_output=True, text=True, check=True
    ).stdout
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    again, config = load_config(path), load_config()
    assert as_file(again) == as_file(config)
    assert dataclasses.replace(again, markets=config.markets) == config
