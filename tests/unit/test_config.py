import pytest
import yaml

from enrollment.config import DEFAULT_CONFIG, RetentionSettings, load_config, parse_config


def test_embedded_defaults_define_four_regions_with_distinct_topics():
    config = load_config()
    assert [r.code for r in config.regions] == ["AMER", "EMEA", "APAC", "LATAM"]
    assert len({r.topic for r in config.regions}) == 4
    assert all(r.partitions >= 1 for r in config.regions)


def test_region_lookup_is_case_insensitive_and_unknown_region_names_the_known_ones():
    config = load_config()
    assert config.region("emea").topic == "commerce.emea.events"
    with pytest.raises(KeyError, match="AMER, EMEA, APAC, LATAM"):
        config.region("MARS")


def test_duplicate_region_codes_are_refused():
    raw = {
        "project": "p",
        "consumer_group": "g",
        "landing_bucket": "b",
        "datasets": {"warehouse": "w", "ops": "o"},
        "solr_core": "c",
        "marketing_cloud": {"data_extension": "d"},
        "regions": [
            {"code": "amer", "topic": "a", "partitions": 1},
            {"code": "AMER", "topic": "b", "partitions": 1},
        ],
    }
    with pytest.raises(ValueError, match="unique"):
        parse_config(raw)


def test_adding_a_region_is_one_config_line(tmp_path):
    source = (load_config.__globals__["DEFAULT_CONFIG"]).read_text()
    custom = tmp_path / "pipeline.yaml"
    custom.write_text(source + "  - {code: ANZ, topic: commerce.anz.events, partitions: 2}\n")
    config = load_config(custom)
    assert config.region("ANZ").topic == "commerce.anz.events"
    assert len(config.regions) == 5


def test_retention_settings_have_defaults_and_refuse_unknown_keys_and_nonsense():
    assert load_config().retention == RetentionSettings(
        handover_days=2, claims_days=35, staging_hours=6, at="15 3 * * *"
    )
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    with pytest.raises(ValueError, match="unknown settings \\['handover_day'\\]"):
        parse_config(raw | {"retention": {"handover_day": 2}})
    with pytest.raises(ValueError, match="claims_days >= 2"):
        parse_config(raw | {"retention": {"claims_days": 1}})
