"""The three sinks on the real services: Firestore
emulator, Solr, the Marketing Cloud contract stub.

Partners of one region go through claim → land → warehouse in two batches (enrollments, updates,
an update that arrives before its enrollment, a termination followed by a late stale update, a
row Marketing Cloud refuses), then each sink syncs from the warehouse. Every assertion reads the
service back."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from typing import ClassVar

import httpx
import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from enrollment.clients.services import firestore_client, storage_client
from enrollment.core.layout import handover_object
from enrollment.simulator.generator import Simulator
from enrollment.sinks.solr import search_partners
from enrollment.sync.plan import plan_all, region_plan, watermark
from enrollment.sync.run import SyncRun
from enrollment.sync.tables import ensure_tables as ensure_sync_tables
from enrollment.warehouse.ledger import Ledger
from stack import cli as stack_cli
from tests.integration.conftest import ingest_events

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

REGION = "EMEA"


class Scenario:
    """Hand-made partner histories for one region, with the state each sink must end in."""

    def __init__(self, seed: int):
        self.sim = Simulator(seed=seed)
        self.run = uuid.uuid4().hex[:6]
        template = self.sim.event_for("partner.enrolled", "DE", 2)
        self.sponsor = template["payload"]["sponsor_id"] = "EM" + uuid.uuid4().hex[:10].upper()
        # Contactable: Marketing Cloud holds them
        # (tests/integration/sync/test_consent.py: who it may not).
        template["payload"]["consents"]["marketing_email"] = True
        self.template = template
        self.ids = {
            name: "EM" + uuid.uuid4().hex[:10].upper()
            for name in ("jose", "ana", "leaver", "early", "refused")
        }

    def event(self, kind: str, who: str, version: int, **payload) -> dict:
        e = json.loads(
            json.dumps(
                self.template if kind == "partner.enrolled" else self.sim.event_for(kind, "DE", 2)
            )
        )
        e.update(event_id=str(uuid.uuid4()), partner_id=self.ids[who], partner_version=version)
        if kind == "partner.enrolled":
            e["payload"].update(sponsor_id=self.sponsor, email=f"{who}.{self.run}@example.de")
        e["payload"].update(payload)
        return e

    def batches(self) -> list[list[dict]]:
        first = [
            self.event("partner.enrolled", "jose", 1, first_name="José", last_name="Müller"),
            self.event("partner.updated", "jose", 2, changes={"phone": "+49301234567"}),
            self.event("partner.enrolled", "ana", 1, first_name="Ana", last_name="Gonçalves"),
            self.event("partner.enrolled", "leaver", 1, first_name="Lea", last_name="Verlasser"),
            self.event("partner.terminated", "leaver", 3),
            self.event(
                "partner.updated", "early", 2, changes={"phone": "+49309876543"}
            ),  # before its enrollment
            self.event(
                "partner.enrolled",
                "refused",
                1,
                first_name="Maximiliane",
                last_name="Oberhausen-Wolkenstein-Trostburg",
            ),
        ]
        second = [
            self.event(
                "partner.updated", "leaver", 2, changes={"phone": "+49300000000"}
            ),  # late and stale: terminated at 3
            self.event("partner.enrolled", "early", 1, first_name="Frühling", last_name="Öztürk"),
            self.event(
                "partner.updated", "ana", 2, changes={"email": f"ana.new.{self.run}@example.de"}
            ),
        ]
        return [first, second]

    expected_versions: ClassVar[dict[str, int]] = {
        "jose": 2,
        "ana": 2,
        "leaver": 3,
        "early": 2,
        "refused": 1,
    }
    expected_status: ClassVar[dict[str, str]] = {
        "jose": "active",
        "ana": "active",
        "leaver": "terminated",
        "early": "active",
        "refused": "active",
    }


def firestore_state(collection: str, project: str, ids: dict) -> dict:
    db = firestore_client(project)
    docs = {d.id: d.to_dict() for d in db.collection(collection).stream()}
    return {
        who: (docs[pid]["partner_version"], docs[pid]["status"])
        for who, pid in ids.items()
        if pid in docs
    }


def solr_search(stack, scenario, text: str = "") -> list[str]:
    deadline = time.monotonic() + 10
    while True:  # commitWithin makes updates searchable within a second or two
        hits = [
            h["id"]
            for h in search_partners(
                stack.url("SOLR_PORT", "/solr"),
                "partners",
                text,
                sponsor_id=scenario.sponsor,
                auth=stack.solr_auth,
            )
        ]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(0.3)


def mc_rows(stack, data_extension: str) -> dict:
    body = httpx.get(
        f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/dataextensions/{data_extension}/rows",
        headers=stack.stub_headers(),
    ).json()
    return {r["PartnerId"]: r for r in body["items"]}


def journey_events(stack, key: str) -> list[str]:
    body = httpx.get(
        f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/journey-events",
        params={"event_definition_key": key},
        headers=stack.stub_headers(),
    ).json()
    return sorted(e["ContactKey"] for e in body["items"])


def assert_converged(stack, scenario, sinks, warehouse, batch_ids):
    ids = scenario.ids
    fs = sinks["firestore"]
    assert firestore_state(fs.collection.id, stack.project, ids) == {
        w: (scenario.expected_versions[w], scenario.expected_status[w]) for w in ids
    }
    held = sinks["solr"].get(list(ids.values()))
    assert {w: (held[p].get("partner_version"), held[p]["status"]) for w, p in ids.items()} == {
        w: (None, "removed")
        if scenario.expected_status[w] == "terminated"
        else (scenario.expected_versions[w], "active")
        for w in ids
    }, "a tombstone for the leaver"
    assert solr_search(stack, scenario, "jose muller") == [ids["jose"]], "accents and case folded"
    assert solr_search(stack, scenario, "Öztürk") == [ids["early"]]
    assert sorted(solr_search(stack, scenario)) == sorted(
        ids[w] for w in ("jose", "ana", "early", "refused")
    ), "the leaver is not searchable"
    mc = sinks["marketing_cloud"]
    rows = mc_rows(stack, mc.data_extension)
    assert {p: (r["PartnerVersion"], r["Status"]) for p, r in rows.items()} == {
        ids[w]: (scenario.expected_versions[w], scenario.expected_status[w])
        for w in ("jose", "ana", "leaver", "early")
    }
    assert rows[ids["ana"]]["EmailAddress"] == f"ana.new.{scenario.run}@example.de"
    assert journey_events(stack, mc.welcome_event) == sorted(
        ids[w] for w in ("jose", "ana", "early")
    ), "one welcome per new active partner"
    refused = warehouse.run(
        f"SELECT partner_id, message FROM {warehouse.table('sink_quarantine')} WHERE sink = "
        "'marketing_cloud'"
    )
    assert [(r["partner_id"], "LastName" in r["message"]) for r in refused] == [
        (ids["refused"], True)
    ], "the refused row is quarantined with the reason"
    for batch_id in batch_ids:
        stages = Ledger(warehouse).balance(batch_id)
        assert {"sync_firestore", "sync_solr", "sync_marketing_cloud"} <= set(stages), stages.keys()
    ledger = warehouse.run(
        f"SELECT batch_id, stage, detail FROM {warehouse.table('ledger', ops=True)} WHERE stage "
        "LIKE 'sync_%'"
    )
    assert {
        (r["stage"], r["batch_id"]) for r in ledger if not r["detail"].endswith("rejected 0")
    } == {("sync_marketing_cloud", batch_ids[0])}


def test_batches_reach_every_sink_exactly_and_a_rerun_changes_nothing(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = Scenario(seed=11)
    group = f"test-sinks-{uuid.uuid4().hex[:6]}"
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    batch_ids = []
    for events in scenario.batches():
        batch_ids.append(
            ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, events)
        )
        for sink in sinks.values():
            outcome = sync.run(sink, REGION)
            assert outcome["batches"] == 1 and outcome["watermark"] == batch_ids[-1]
    assert_converged(stack, scenario, sinks, warehouse, batch_ids)

    # Nothing pending: a run finds no batch. Writing the
    # same plan again (a retried task) changes nothing.
    assert all(sync.run(sink, REGION) == {"batches": 0} for sink in sinks.values())
    fs = sinks["firestore"]
    before = {
        d.id: d.update_time
        for d in firestore_client(stack.project).collection(fs.collection.id).stream()
    }
    solr_before = {
        d["id"]: d["_version_"] for d in sinks["solr"].get(list(scenario.ids.values())).values()
    }
    mc_before = mc_rows(stack, sinks["marketing_cloud"].data_extension)
    for sink in sinks.values():
        plan = region_plan(sync.warehouse, sync.bucket.name, sink.name, REGION)
        plan.batches = [
            {"batch_id": b, "warehoused_at": "1970-01-01T00:00:00+00:00"} for b in batch_ids
        ]
        written = sync.write(sink, plan)
        assert written["result"]["written"] + written["result"]["unchanged"] + len(
            written["result"]["rejected"]
        ) == len(scenario.ids)
        sync.commit(written | {"gate": sync.gate(sink, written)})
    assert {
        d.id: d.update_time
        for d in firestore_client(stack.project).collection(fs.collection.id).stream()
    } == before
    assert {
        d["id"]: d["_version_"] for d in sinks["solr"].get(list(scenario.ids.values())).values()
    } == solr_before, "Solr ignored every same-version update"
    assert mc_rows(stack, sinks["marketing_cloud"].data_extension) == mc_before
    assert_converged(stack, scenario, sinks, warehouse, batch_ids)


def test_the_sinks_take_the_state_the_cycle_handed_over_without_asking_the_warehouse(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = Scenario(seed=13)
    group = f"test-handover-{uuid.uuid4().hex[:6]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    sync = SyncRun(warehouse, bucket)
    first, second = scenario.batches()
    batch_ids = [
        ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, events)
        for events in (first, second)
    ]
    handed = {
        b: pq.read_table(io.BytesIO(bucket.blob(handover_object(REGION, b)).download_as_bytes()))
        for b in batch_ids
    }
    # What the second batch's cycle committed, read back from the warehouse: its partners, each
    # once, at the version the cycle left, and which of them the batch enrolled.
    touched = sorted({scenario.ids[w] for w in ("leaver", "early", "ana")})
    state = warehouse.run(
        f"SELECT * FROM {warehouse.table('partners')} WHERE partner_id IN UNNEST(@ids) "
        "ORDER BY partner_id",
        [bigquery.ArrayQueryParameter("ids", "STRING", touched)],
    )
    assert handed[batch_ids[1]].drop_columns(["enrolled"]).to_pylist() == [dict(r) for r in state]
    assert dict(
        zip(
            handed[batch_ids[1]].column("partner_id").to_pylist(),
            handed[batch_ids[1]].column("enrolled").to_pylist(),
            strict=True,
        )
    ) == {pid: pid == scenario.ids["early"] for pid in touched}
    assert sorted(handed[batch_ids[0]].column("partner_id").to_pylist()) == sorted(
        scenario.ids.values()
    )

    # Changed in the warehouse after the cycles, by no cycle: the sinks do not see it, they write
    # what the cycles handed over (one query a cycle, none per sink).
    warehouse.run(
        f"UPDATE {warehouse.table('partners')} SET last_name = 'Nachher' WHERE partner_id = @p",
        [bigquery.ScalarQueryParameter("p", "STRING", scenario.ids["jose"])],
    )
    for sink in sinks.values():
        plan = region_plan(warehouse, bucket.name, sink.name, REGION)
        assert [b["batch_id"] for b in plan.batches] == batch_ids
        written = sync.write(sink, plan)
        assert written["source"] == "handover", sink.name
        sync.commit(written | {"gate": sync.gate(sink, written)})
    held = sinks["solr"].get([scenario.ids["jose"]])[scenario.ids["jose"]]
    assert held["last_name"] == "Müller" and held["partner_version"] == 2, held
    assert_converged(stack, scenario, sinks, warehouse, batch_ids)


def test_outages_and_throttling_converge_with_nothing_lost_or_duplicated(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = Scenario(seed=12)
    group = f"test-outage-{uuid.uuid4().hex[:6]}"
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    first, second = scenario.batches()
    batch_ids = [
        ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, first)
    ]
    mc = stack.url("MARKETING_CLOUD_PORT")

    # Solr down: its sync fails, the others go on. Marketing Cloud throttles: the sync waits it out.
    assert stack_cli.down(["solr"], quiet=True)
    httpx.patch(
        f"{mc}/_stub/settings", json={"throttle_for_s": 20}, headers=stack.stub_headers()
    ).raise_for_status()
    throttled_before = httpx.get(f"{mc}/_stub/counters", headers=stack.stub_headers()).json()[
        "throttled"
    ]
    try:
        with pytest.raises(
            httpx.TransportError
        ):  # Solr is down: the task fails, its retry or the next run catches up
            sync.run(sinks["solr"], REGION)
        t0 = time.monotonic()
        assert sync.run(sinks["marketing_cloud"], REGION)["batches"] == 1
        assert time.monotonic() - t0 >= 15, "the sync waited for Retry-After instead of failing"
        assert (
            httpx.get(f"{mc}/_stub/counters", headers=stack.stub_headers()).json()["throttled"]
            > throttled_before
        )
        assert sync.run(sinks["firestore"], REGION)["batches"] == 1
    finally:
        stack_cli.up(["solr"], quiet=True)
    assert watermark(sync.warehouse, "solr", REGION) is None, (
        "the failed sync did not move its watermark"
    )

    # The Firestore emulator restarts (it keeps no data: this test's documents start over).
    assert stack_cli.down(["firestore"], quiet=True)
    stack_cli.up(["firestore"], quiet=True)
    assert watermark(sync.warehouse, "firestore", REGION)["batch_id"] == batch_ids[0]
    ensure_sync_tables(sync.warehouse)
    # The emulator lost them: resync by forgetting that Firestore had the batch (its ledger row).
    warehouse.run(
        f"DELETE FROM {warehouse.table('ledger', ops=True)} WHERE stage = 'sync_firestore'"
    )

    batch_ids.append(
        ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, second)
    )
    assert sync.run(sinks["solr"], REGION)["batches"] == 2, "Solr catches up both batches by itself"
    assert sync.run(sinks["firestore"], REGION)["batches"] == 2
    assert sync.run(sinks["marketing_cloud"], REGION)["batches"] == 1
    assert_converged(stack, scenario, sinks, warehouse, batch_ids)


def test_token_expiring_mid_sync_is_renewed(stack, pipeline_config, region_topic, warehouse, sinks):
    scenario = Scenario(seed=13)
    mc = stack.url("MARKETING_CLOUD_PORT")
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    ingest_events(
        stack,
        pipeline_config,
        warehouse,
        region_topic,
        REGION,
        f"test-token-{uuid.uuid4().hex[:6]}",
        scenario.batches()[0],
    )
    # Tokens live 2 s and every request takes 3 s to
    # process: the token expires while the sync polls.
    httpx.patch(
        f"{mc}/_stub/settings",
        json={"token_ttl_s": 2, "processing_delay_s": 3},
        headers=stack.stub_headers(),
    ).raise_for_status()
    sink = sinks["marketing_cloud"]
    before = sink.client.tokens_fetched
    outcome = sync.run(sink, REGION)
    assert outcome["batches"] == 1 and outcome["rejected"] == 1
    assert sink.client.tokens_fetched >= before + 2, "the token was renewed during the sync"
    # jose, ana, leaver; "early" has no enrollment yet,
    # so no stated consent: EMEA may not contact it.
    assert sorted(mc_rows(stack, sink.data_extension)) == sorted(
        scenario.ids[w] for w in ("jose", "ana", "leaver")
    )


def test_search_helper_escapes_user_input(stack):
    url = stack.url("SOLR_PORT", "/solr")
    for text in ["names:* OR id:*", 'a" OR "b', "(", "*:*", "\\", "AND OR NOT"]:
        assert search_partners(url, "partners", text, auth=stack.solr_auth) == [], (
            text
        )  # literal text, not syntax: nothing matches, nothing fails


def test_concurrent_writers_never_leave_a_stale_firestore_version(stack, sinks):
    """Two writers race on the same partners, one with older versions: the newest always stays."""
    fs = sinks["firestore"]
    ids = [f"EM{uuid.uuid4().hex[:10].upper()}" for _ in range(60)]

    def writer(version):
        fs.write(
            [{"partner_id": p, "partner_version": version, "status": "active"} for p in ids], {}
        )

    threads = [threading.Thread(target=writer, args=(v,)) for v in (5, 4, 5, 3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    versions = {
        d.id: d.get("partner_version")
        for d in firestore_client(stack.project).collection(fs.collection.id).stream()
    }
    assert versions == dict.fromkeys(ids, 5)


def test_a_failing_region_does_not_hold_back_the_others(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    from enrollment.core.errors import SyncError
    from enrollment.sync.plan import SyncPlan

    scenario = Scenario(seed=14)
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    batch_id = ingest_events(
        stack,
        pipeline_config,
        warehouse,
        region_topic,
        REGION,
        f"test-fail-{uuid.uuid4().hex[:6]}",
        scenario.batches()[0],
    )
    sink = sinks["solr"]
    plans = plan_all(sync.warehouse, sync.bucket.name, sink.name, [REGION, "APAC"])
    assert [b["batch_id"] for b in plans[REGION].batches] == [batch_id] and plans[
        "APAC"
    ].batches == []
    plans["APAC"] = SyncPlan(
        sink.name,
        "APAC",
        sync.bucket.name,
        [{"batch_id": "apac-missing", "warehoused_at": "2026-01-01T00:00:00+00:00"}],
    )

    written = sync.write_all(sink, plans)
    assert list(written["failed"]) == ["APAC"] and len(written["written"]) == 1
    with pytest.raises(
        SyncError,
        match=r"APAC: write: GateError: .*neither landed objects nor a warehouse ledger "
        r"row.*committed: EMEA",
    ):
        sync.commit_all(sync.gate_all(sink, written))
    assert watermark(sync.warehouse, sink.name, REGION)["batch_id"] == batch_id, (
        "the healthy region moved on"
    )
    assert watermark(sync.warehouse, sink.name, "APAC") is None
    assert sorted(sink.get(list(scenario.ids.values()))) == sorted(scenario.ids.values())


def test_a_batch_warehoused_late_is_still_synced(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    """A batch whose warehouse ledger row is *older* than the batches a sink already synced (a
    cycle that failed and was redone, a clock behind) is still planned and synced: plans are an
    anti-join on the ledger, not a time watermark."""
    scenario = Scenario(seed=15)
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    group = f"test-late-{uuid.uuid4().hex[:6]}"
    first, second = scenario.batches()
    early = ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, first)
    late = ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, second)
    sink = sinks["solr"]
    # The first batch is synced; the second one's ledger row is made to look an hour older.
    ledger = warehouse.table("ledger", ops=True)
    warehouse.run(
        f"UPDATE {ledger} SET recorded_at = TIMESTAMP_SUB(recorded_at, INTERVAL 1 HOUR) WHERE "
        f"batch_id = '{late}'"
    )
    only_early = region_plan(sync.warehouse, sync.bucket.name, sink.name, REGION)
    assert [b["batch_id"] for b in only_early.batches] == [late, early], "oldest ledger row first"
    only_early.batches = [b for b in only_early.batches if b["batch_id"] == early]
    written = sync.write(sink, only_early)
    assert sync.commit(written | {"gate": sync.gate(sink, written)})["watermark"] == early

    plan = region_plan(sync.warehouse, sync.bucket.name, sink.name, REGION)
    assert [b["batch_id"] for b in plan.batches] == [late], (
        "the late batch is planned although the watermark is past it"
    )
    assert sync.run(sink, REGION)["batches"] == 1
    synced = warehouse.run(
        f"SELECT batch_id FROM {ledger} WHERE stage = 'sync_solr' ORDER BY batch_id"
    )
    assert sorted(r["batch_id"] for r in synced) == sorted([early, late])
    assert sorted(sink.get(list(scenario.ids.values()))) == sorted(scenario.ids.values()), (
        "every partner of both batches is in Solr"
    )
