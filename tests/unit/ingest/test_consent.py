"""Marketing consent without services: the per-region rule of the configuration, the contract's
fields through validation and ``flatten``, and the partner fold (newest statement wins, whole)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest
import yaml

from enrollment.config import (
    DEFAULT_CONFIG,
    DEFAULT_MARKETING_CONSENT,
    MarketingConsent,
    load_config,
    parse_config,
)
from enrollment.core.partners import fold_partners, partner_changes
from enrollment.ingest.shape import flatten
from enrollment.ingest.validation import validate_batch
from enrollment.simulator.generator import Simulator
from enrollment.simulator.payloads import CONSENT_CHANGE_SHARE


def raw_config(**changes) -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text()) | changes


def test_the_embedded_rule_is_opt_in_for_emea_and_opt_out_elsewhere():
    rule = load_config().marketing_consent
    assert {r: rule.rule(r) for r in ("AMER", "EMEA", "APAC", "LATAM")} == {
        "AMER": "opt_out",
        "EMEA": "opt_in",
        "APAC": "opt_out",
        "LATAM": "opt_out",
    }
    # opt_in: contactable only with consent true; opt_out: unless consent is false.
    assert [rule.contactable("EMEA", c) for c in (True, False, None)] == [True, False, False]
    assert [rule.contactable("AMER", c) for c in (True, False, None)] == [True, False, True]


def test_regions_without_a_rule_follow_the_default_and_a_missing_section_means_the_one_default():
    assert (
        parse_config(raw_config(marketing_consent={"default": "opt_in"})).marketing_consent.rule(
            "APAC"
        )
        == "opt_in"
    )
    configured = parse_config(
        raw_config(marketing_consent={"regions": {"latam": "opt_in"}})
    ).marketing_consent
    assert (configured.rule("LATAM"), configured.rule("AMER")) == (
        "opt_in",
        DEFAULT_MARKETING_CONSENT,
    )
    without = raw_config()
    del without["marketing_consent"]
    assert parse_config(without).marketing_consent == MarketingConsent(required=("EMEA",))
    assert parse_config(without).marketing_consent.rule("EMEA") == "opt_in", (
        "the contract's consent regions are opt_in whatever the configuration says"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"default": "opt-in"}, "default is 'opt-in'; known rules: opt_in, opt_out"),
        ({"regions": {"AMER": "maybe"}}, "AMER is 'maybe'; known rules"),
        ({"regions": {"MARS": "opt_in"}}, r"unknown region\(s\) \['MARS'\]"),
        ({"regions": {"EMEA": "opt_out"}}, r"\['EMEA'\] must be opt_in"),
        ({"regoins": {}}, r"marketing_consent: unknown key\(s\) \['regoins'\]"),
        ("opt_in", "expected"),
    ],
)
def test_unknown_rules_regions_and_keys_are_refused_with_a_clear_message(section, message):
    with pytest.raises(ValueError, match=message):
        parse_config(raw_config(marketing_consent=section))


def _flat(events: list[dict]) -> pa.Table:
    values = [json.dumps(e).encode() for e in events]
    result = validate_batch(values)
    assert result.quarantine.num_rows == 0, result.quarantine.column("reasons").to_pylist()
    n = len(values)
    messages = pa.table(
        {
            "kafka_partition": pa.array([0] * n, pa.int32()),
            "kafka_offset": pa.array(range(n), pa.int64()),
            "kafka_timestamp": pa.array([0] * n, pa.timestamp("ms", tz="UTC")),
            "kafka_key": pa.array([b""] * n),
            "value": pa.array(values, pa.binary()),
        }
    )
    return flatten(result, messages, "batch-1").drop_columns(["event_json"])


def _update(enrolled: dict, version: int, changes: dict, event_id: str) -> dict:
    return enrolled | {
        "event_id": event_id,
        "event_type": "partner.updated",
        "partner_version": version,
        "payload": {"changes": changes, "changed_by": "partner"},
    }


def test_consent_fields_are_validated_where_the_contract_has_them():
    sim = Simulator(seed=5)
    de = sim.event_for("partner.enrolled", "DE", 2)
    bad = [json.loads(json.dumps(de)) for _ in range(3)]
    bad[0]["payload"]["consents"]["version"] = "v2"
    bad[1] = _update(
        de, 2, {"consents": {"marketing_email": "no"}}, "00000000-0000-4000-8000-000000000002"
    )
    bad[2] = _update(
        de,
        2,
        {"consents": {"marketing_email": False, "captured_at": "yesterday"}},
        "00000000-0000-4000-8000-000000000003",
    )
    result = validate_batch([json.dumps(e).encode() for e in bad])
    reasons = sorted(r for rs in result.quarantine.column("reasons").to_pylist() for r in rs)
    assert (
        "bad_format:payload.consents.version" in reasons
        and "bad_format:payload.changes.consents.captured_at" in reasons
    )
    assert any(
        r.startswith(
            ("bad_format:payload.changes.consents.marketing_email", "missing:payload.changes")
        )
        for r in reasons
    )


def test_a_consent_only_update_is_valid_and_the_fold_takes_the_newest_statement_whole():
    sim = Simulator(seed=6)
    enrolled = sim.event_for("partner.enrolled", "DE", 2)
    enrolled["payload"]["consents"] = {
        "data_processing": True,
        "marketing_email": True,
        "captured_at": "2026-11-01T10:00:00Z",
    }
    withdrawn = _update(
        enrolled,
        3,
        {"consents": {"marketing_email": False, "captured_at": "2026-11-05T10:00:00Z"}},
        "00000000-0000-4000-8000-000000000004",
    )
    phone = _update(enrolled, 2, {"phone": "+49301234567"}, "00000000-0000-4000-8000-000000000005")
    flat = _flat([enrolled, phone, withdrawn])
    assert flat.column("consent_version").to_pylist() == [
        enrolled["payload"]["agreement"]["version"],
        None,
        None,
    ], "absent: the agreement's version"

    one = partner_changes(flat).to_pylist()[0]
    assert (one["marketing_consent"], one["consent_version"], one["marketing_consent_version"]) == (
        False,
        None,
        3,
    )
    assert one["consent_captured_at"] == datetime(2026, 11, 5, 10, tzinfo=UTC)
    assert one["phone"] == "+49301234567", "other fields keep their own newest value"

    # Across batches, in any order: the withdrawal (version 3) wins over the enrollment's consent,
    # and its missing version is not filled from the consent it replaced.
    first, second = partner_changes(_flat([enrolled])), partner_changes(_flat([withdrawn]))
    for tables in ([first, second], [second, first]):
        folded = fold_partners(tables).to_pylist()[0]
        assert (
            folded["marketing_consent"],
            folded["consent_version"],
            folded["consent_version_version"],
        ) == (False, None, 3)
    # A batch's partner changes written before the consent columns fold in as never stated.
    legacy = first.drop_columns([c for c in first.column_names if "consent" in c])
    assert fold_partners([legacy, second]).to_pylist()[0]["marketing_consent"] is False
    assert (
        fold_partners(
            [second.drop_columns([c for c in second.column_names if "consent" in c]), first]
        ).to_pylist()[0]["marketing_consent"]
        is True
    )


def test_the_simulator_withdraws_and_grants_consent_deterministically():
    def changes(seed):
        sim = Simulator(seed=seed, initial_partners=50)
        return [
            (
                json.loads(m.value)["partner_id"],
                json.loads(m.value)["payload"]["changes"]["consents"],
            )
            for m in sim.take(6000)
            if json.loads(m.value)["event_type"] == "partner.updated"
            and "consents" in json.loads(m.value)["payload"].get("changes", {})
        ]

    first = changes(9)
    assert first == changes(9), "the same seed, the same consent changes"
    assert {c["marketing_email"] for _, c in first} == {True, False}, "some withdraw, some grant"
    updates = sum(
        1
        for m in Simulator(seed=9, initial_partners=50).take(6000)
        if json.loads(m.value)["event_type"] == "partner.updated"
    )
    assert 0.5 * CONSENT_CHANGE_SHARE < len(first) / updates < 2 * CONSENT_CHANGE_SHARE
