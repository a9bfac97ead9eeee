"""Marketing consent, carried and enforced, on the real services: EMEA partners who declined at
enrollment or withdrew later never stay in the Marketing Cloud data extension nor enter the welcome
journey; the consent (value, version, captured-at) is read back from ``enrollment.partners``; a
``partners`` table from before the consent columns is migrated; reconciliation names a partner
who is not contactable yet held by the data extension. Every assertion reads a service back."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import Endpoints, bigquery_client, storage_client
from enrollment.core.partners import PARTNER_SCHEMA
from enrollment.sinks import build_sink
from enrollment.sync.run import SyncRun
from enrollment.warehouse.tables import ddl
from tests.integration.conftest import ingest_events, pipeline_warehouse
from tests.integration.sync.test_sinks import Scenario, journey_events, mc_rows

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

REGION = "EMEA"


class ConsentScenario(Scenario):
    """EMEA partners and their marketing consent: ``ana`` consents (with a consent version of her
    own), ``decliner`` declines (the agreement's version is the consent's), ``withdrawer``
    consents then withdraws, ``granter`` declines then grants."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.ids = {
            name: "EM" + uuid.uuid4().hex[:10].upper()
            for name in ("ana", "decliner", "withdrawer", "granter")
        }
        self.agreement = self.template["payload"]["agreement"]["version"]

    def enrolled(self, who: str, consent: bool, **consents) -> dict:
        e = self.event("partner.enrolled", who, 1, first_name=who.title(), last_name="Muster")
        e["payload"]["consents"] = {
            "data_processing": True,
            "marketing_email": consent,
            "captured_at": "2026-11-02T09:00:00+01:00",
        } | consents
        return e

    def changed(self, who: str, version: int, consent: bool) -> dict:
        return self.event(
            "partner.updated",
            who,
            version,
            changes={
                "consents": {
                    "marketing_email": consent,
                    "captured_at": "2026-11-20T10:30:00Z",
                    "version": "2026.4",
                }
            },
        )

    def batches(self) -> list[list[dict]]:
        first = [
            self.enrolled("ana", True, version="2026.3"),
            self.enrolled("decliner", False),
            self.enrolled("withdrawer", True),
            self.enrolled("granter", False),
        ]
        second = [
            self.changed("withdrawer", 2, False),
            self.changed("granter", 2, True),
            # The decliner changes a phone number: a newer version that says nothing about consent.
            self.event("partner.updated", "decliner", 2, changes={"phone": "+49301112223"}),
        ]
        return [first, second]


@pytest.fixture
def marketing_cloud(stack, pipeline_config):
    run = uuid.uuid4().hex[:8]
    options = dict(pipeline_config.sinks["marketing_cloud"]) | {
        "data_extension": f"partners-{run}",
        "welcome_event": f"welcome-{run}",
    }
    sink = build_sink("marketing_cloud", options, Endpoints.from_env())
    yield sink
    sink.close()


def partner_consents(warehouse, ids: dict) -> dict:
    rows = warehouse.run(
        "SELECT partner_id, marketing_consent, consent_version, consent_captured_at, "
        f"partner_version FROM {warehouse.table('partners')}"
    )
    by_id = {r["partner_id"]: r for r in rows}
    return {
        who: (
            by_id[pid]["marketing_consent"],
            by_id[pid]["consent_version"],
            by_id[pid]["consent_captured_at"],
            by_id[pid]["partner_version"],
        )
        for who, pid in ids.items()
    }


def test_declined_and_withdrawn_partners_never_stay_in_marketing_cloud(
    stack, pipeline_config, region_topic, warehouse, marketing_cloud
):
    scenario = ConsentScenario(seed=31)
    ids, mc = scenario.ids, marketing_cloud
    group = f"test-consent-{uuid.uuid4().hex[:6]}"
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    first, second = scenario.batches()

    ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, first)
    assert sync.run(mc, REGION)["batches"] == 1
    at = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    assert partner_consents(warehouse, ids) == {
        "ana": (True, "2026.3", at, 1),
        "decliner": (False, scenario.agreement, at, 1),
        "withdrawer": (True, scenario.agreement, at, 1),
        "granter": (False, scenario.agreement, at, 1),
    }
    assert sorted(mc_rows(stack, mc.data_extension)) == sorted([ids["ana"], ids["withdrawer"]]), (
        "only who consented is in the data extension"
    )
    assert journey_events(stack, mc.welcome_event) == sorted([ids["ana"], ids["withdrawer"]]), (
        "no welcome for who declined"
    )

    ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, second)
    assert sync.run(mc, REGION)["batches"] == 1
    later = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
    assert partner_consents(warehouse, ids) == {
        "ana": (True, "2026.3", at, 1),
        "decliner": (False, scenario.agreement, at, 2),
        "withdrawer": (False, "2026.4", later, 2),
        "granter": (True, "2026.4", later, 2),
    }
    assert sorted(mc_rows(stack, mc.data_extension)) == sorted([ids["ana"], ids["granter"]]), (
        "the withdrawer's row is deleted; the granter's sent"
    )
    assert journey_events(stack, mc.welcome_event) == sorted([ids["ana"], ids["withdrawer"]]), (
        "the journey fires for new enrollments only"
    )
    quarantined = warehouse.run(
        f"SELECT COUNT(*) AS n FROM {warehouse.table('sink_quarantine')} WHERE sink = "
        "'marketing_cloud'"
    )[0]["n"]
    assert quarantined == 0
    ledger = warehouse.run(
        f"SELECT detail FROM {warehouse.table('ledger', ops=True)} WHERE stage = "
        "'sync_marketing_cloud' ORDER BY recorded_at"
    )
    assert [r["detail"] for r in ledger] == [
        "partners 4: synced 4, rejected 0",
        "partners 3: synced 3, rejected 0",
    ], "the withdrawal counts as synced"


def test_a_partners_table_from_before_consent_is_migrated(
    stack, warehouse, pipeline_config, region_topic
):
    before = [(c, t) for c, t in PARTNER_SCHEMA if "consent" not in c]
    warehouse.run(ddl(warehouse.table("partners"), before, "updated_at", "region, partner_id"))
    old = "EM" + uuid.uuid4().hex[:10].upper()
    warehouse.run(
        f"INSERT INTO {warehouse.table('partners')} (partner_id, region, status, partner_version, "
        "updated_at) "
        f"VALUES ('{old}', 'EMEA', 'active', 1, CURRENT_TIMESTAMP())"
    )
    scenario = ConsentScenario(seed=32)
    ingest_events(
        stack,
        pipeline_config,
        warehouse,
        region_topic,
        REGION,
        f"test-migrate-{uuid.uuid4().hex[:6]}",
        scenario.batches()[0],
    )
    client = bigquery_client(stack.project)
    fresh = BigQuery(
        client=client,
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=warehouse.dataset,
        ops_dataset=warehouse.ops_dataset,
    )
    rows = {
        r["partner_id"]: (r["marketing_consent"], r["status"])
        for r in fresh.run(
            f"SELECT partner_id, marketing_consent, status FROM {fresh.table('partners')}"
        )
    }
    assert rows[old] == (None, "active"), "a partner from before: consent never stated"
    assert rows[scenario.ids["decliner"]] == (False, "active") and rows[scenario.ids["ana"]] == (
        True,
        "active",
    )


def test_reconciliation_names_a_non_contactable_partner_held_by_the_data_extension(
    stack, isolated_pipeline
):
    from enrollment.ops.reconciliation import Reconciliation

    config = isolated_pipeline
    region = config.region(REGION)
    w = pipeline_warehouse(stack, config)
    sync = SyncRun(w, storage_client(stack.project).bucket(config.landing_bucket))
    scenario = ConsentScenario(seed=33)
    ingest_events(
        stack, config, w, region.topic, REGION, config.consumer_group, scenario.batches()[0]
    )
    mc = build_sink("marketing_cloud", config.sinks["marketing_cloud"], Endpoints.from_env())
    try:
        assert sync.run(mc, REGION)["batches"] == 1
        reconciliation = Reconciliation(sync, {"marketing_cloud": mc}, stack.kafka, config)
        today = datetime.now(UTC).date()
        clean = {f.comparison: f for f in reconciliation.day(region, today).findings}
        assert (
            clean["partners → marketing_cloud"].ok
            and clean["partners → marketing_cloud"].expected == 2
        ), "only the contactable are expected"
        assert clean["partners → marketing_cloud: not expected"].ok

        # Someone puts the decliner into the data extension behind the pipeline's back.
        decliner = scenario.ids["decliner"]
        request = mc.client.upsert_async(
            mc.data_extension,
            [{"PartnerId": decliner, "EmailAddress": "planted@example.de", "PartnerVersion": 1}],
        )[0]
        mc.client.wait(request)
        assert decliner in mc_rows(stack, mc.data_extension)
        found = {f.comparison: f for f in reconciliation.day(region, today).findings}
        assert found["partners → marketing_cloud"].ok
        assert found["partners → marketing_cloud: not expected"].partner_ids == [decliner]
        recorded = w.run(
            f"SELECT comparison, ok, partner_ids FROM {w.table('reconciliation', ops=True)} WHERE "
            "region = 'EMEA' AND comparison LIKE 'partners → marketing_cloud%'"
        )
        assert sorted((r["comparison"], r["ok"], r["partner_ids"]) for r in recorded) == [
            ("partners → marketing_cloud", True, None),
            ("partners → marketing_cloud: not expected", False, decliner),
        ]

        # The erasure call: rows and contacts deleted, counts only.
        outcome = mc.erase([decliner, scenario.ids["ana"]])
        assert (
            outcome["partners"] == 2
            and outcome["contact_delete_operations"] == 1
            and outcome["journey_claims_deleted"] == 1
        )
        assert outcome["remaining"] == 0, "read back: none of their rows is left"
        assert json.dumps(outcome).find(decliner) == -1, "no ids in what erase returns"
        assert sorted(mc_rows(stack, mc.data_extension)) == [scenario.ids["withdrawer"]]
        deletes = httpx.get(
            f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/contact-deletes",
            headers=stack.stub_headers(),
        ).json()["items"]
        assert any(sorted(d["keys"]) == sorted([decliner, scenario.ids["ana"]]) for d in deletes)
    finally:
        mc.close()


def _rowset_pages(stack) -> dict[str, int]:
    counters = httpx.get(
        f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/counters", headers=stack.stub_headers()
    ).json()
    return {k: counters[k] for k in ("rowset_filtered_pages", "rowset_full_pages")}


def test_the_gate_looks_up_non_contactable_partners_by_key_never_the_whole_extension(
    stack, isolated_pipeline
):
    """30 partners who declined (more than any small-batch shortcut): one lookup by key each,
    concurrently; the data extension, which holds every partner ever synced, is never read whole;
    the one planted behind the pipeline's back is found."""
    config = isolated_pipeline
    mc = build_sink("marketing_cloud", config.sinks["marketing_cloud"], Endpoints.from_env())
    try:
        declined = [
            {"partner_id": "EM" + uuid.uuid4().hex[:10].upper(), "region": REGION}
            | {"marketing_consent": False}
            for _ in range(30)
        ]
        planted = declined[7]["partner_id"]
        request = mc.client.upsert_async(
            mc.data_extension,
            [{"PartnerId": planted, "EmailAddress": "planted@example.de", "PartnerVersion": 1}],
        )[0]
        mc.client.wait(request)
        before = _rowset_pages(stack)
        assert mc.audit(declined) == {planted: "not contactable, yet in the data extension"}
        after = _rowset_pages(stack)
        assert after["rowset_full_pages"] == before["rowset_full_pages"]
        assert after["rowset_filtered_pages"] - before["rowset_filtered_pages"] == len(declined)
        mc.erase([planted])
    finally:
        mc.close()
