"""One bad message never stops a region, on the sink side: values a service refuses are
quarantined with its message, a batch a sink cannot read (neither its hand-over nor its landed
objects) is set aside and re-synced once repaired, a stale run records nothing for batches that
are gone, and a partner enters the welcome journey once, ever. Every assertion reads the services
back (Firestore, Solr, the Marketing Cloud stub, BigQuery)."""

from __future__ import annotations

import io
import threading
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import Endpoints, bigquery_client, firestore_client, storage_client
from enrollment.core.layout import HANDOVER_PREFIX, handover_object
from enrollment.ops.replay import replay_sync
from enrollment.sinks import build_sink
from enrollment.sync.plan import region_plan, watermark
from enrollment.sync.run import SyncRun
from enrollment.warehouse.ledger import Ledger
from tests.integration.conftest import ingest_events
from tests.integration.sync.test_sinks import REGION, Scenario, journey_events

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def fresh(seed: int) -> Scenario:
    """A scenario with no partner yet: this module's tests make up their own."""
    scenario = Scenario(seed)
    scenario.ids.clear()
    return scenario


def enrollments(scenario: Scenario, *names: str) -> list[dict]:
    """An enrollment per new partner of the scenario (ids made up on the spot)."""
    out = []
    for who in names:
        scenario.ids[who] = "EM" + uuid.uuid4().hex[:10].upper()
        out.append(
            scenario.event("partner.enrolled", who, 1, first_name=who.title(), last_name="Beispiel")
        )
    return out


def ledger(warehouse, stage: str) -> dict[str, dict]:
    rows = warehouse.run(
        f"SELECT batch_id, ok, detail FROM {warehouse.table('ledger', ops=True)} WHERE stage = @s",
        [bigquery.ScalarQueryParameter("s", "STRING", stage)],
    )
    return {r["batch_id"]: dict(r) for r in rows}


def set_value(warehouse, bucket, partner_id: str, column: str, length: int) -> None:
    """A value that got past every check upstream, as long as the test needs, into the partner's
    current state: the warehouse's and the hand-overs the sinks read."""
    warehouse.run(
        f"UPDATE {warehouse.table('partners')} SET {column} = REPEAT('x', {length}) WHERE "
        "partner_id = @p",
        [bigquery.ScalarQueryParameter("p", "STRING", partner_id)],
    )
    for blob in bucket.list_blobs(prefix=f"{HANDOVER_PREFIX}{REGION}/"):
        table = pq.read_table(io.BytesIO(blob.download_as_bytes()))
        hit = pc.equal(table.column("partner_id"), partner_id)
        if pc.any(hit).as_py():
            i = table.column_names.index(column)
            table = table.set_column(
                i, column, pc.if_else(hit, "x" * length, table.column(column).cast(pa.string()))
            )
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            blob.upload_from_string(buffer.getvalue())


def test_values_a_service_refuses_are_quarantined_and_the_run_commits(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = fresh(21)
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    batch_id = ingest_events(
        stack,
        pipeline_config,
        warehouse,
        region_topic,
        REGION,
        f"test-refused-{uuid.uuid4().hex[:6]}",
        enrollments(scenario, "anna", "bert", "long_term", "huge_doc"),
    )
    ids = scenario.ids
    set_value(
        warehouse, sync.bucket, ids["long_term"], "sponsor_id", 40_000
    )  # one indexed term over Solr's 32,766 bytes
    set_value(
        warehouse, sync.bucket, ids["huge_doc"], "first_name", 1_100_000
    )  # a field value over Firestore's 1 MiB

    for name, refused, reason in (
        ("solr", "long_term", "immense term"),
        ("firestore", "huge_doc", "1048"),
    ):
        outcome = sync.run(sinks[name], REGION)
        assert (
            outcome["batches"] == 1
            and outcome["rejected"] == 1
            and outcome["watermark"] == batch_id
        ), (name, outcome)
        quarantined = warehouse.run(
            f"SELECT partner_id, batch_id, message FROM {warehouse.table('sink_quarantine')} WHERE "
            "sink = @s",
            [bigquery.ScalarQueryParameter("s", "STRING", name)],
        )
        assert [(r["partner_id"], r["batch_id"]) for r in quarantined] == [
            (ids[refused], batch_id)
        ], name
        assert reason in quarantined[0]["message"], quarantined[0]["message"]
        assert "120, 120" not in quarantined[0]["message"], "the refused value is not echoed"
        row = ledger(warehouse, f"sync_{name}")[batch_id]
        assert row["ok"] and row["detail"] == "partners 4: synced 3, rejected 1", row
        assert region_plan(sync.warehouse, sync.bucket.name, name, REGION).batches == [], (
            "the batch is synced: nothing left to plan"
        )

    held = sinks["solr"].get(list(ids.values()))
    assert sorted(held) == sorted(ids[w] for w in ("anna", "bert", "huge_doc")), (
        "every partner but the refused one is indexed"
    )
    documents = {
        d.id
        for d in firestore_client(stack.project)
        .collection(sinks["firestore"].collection.id)
        .stream()
    }
    assert documents == {ids[w] for w in ("anna", "bert", "long_term")}, (
        "every partner but the refused one has its document"
    )


def test_a_batch_a_sink_cannot_read_is_set_aside_and_resynced_once_repaired(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = fresh(22)
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    alerts = []
    sync = SyncRun(warehouse, bucket, alert=alerts.append)
    group = f"test-aside-{uuid.uuid4().hex[:6]}"
    gone, garbled, fine = (
        ingest_events(
            stack,
            pipeline_config,
            warehouse,
            region_topic,
            REGION,
            group,
            enrollments(scenario, f"{n}1", f"{n}2"),
        )
        for n in ("gone", "garbled", "fine")
    )
    # A data reset removed one batch's objects (landed and handed over); another's partner changes
    # are not Parquet any more.
    for blob in bucket.list_blobs(prefix=f"landing/{REGION}/{gone}/"):
        blob.delete()
    bucket.blob(handover_object(REGION, gone)).delete()
    bucket.blob(f"landing/{REGION}/{garbled}/partners.parquet").upload_from_string(b"not parquet")
    sink = sinks["solr"]

    outcome = sync.run(sink, REGION)
    assert (
        outcome["batches"] == 1
        and outcome["watermark"] == fine
        and outcome["set_aside"] == sorted([gone, garbled])
    ), outcome
    rows = ledger(warehouse, "sync_solr")
    assert rows[fine]["ok"] and not rows[gone]["ok"] and not rows[garbled]["ok"]
    assert rows[gone]["detail"].startswith("set aside: its landed objects are gone"), rows[gone]
    assert rows[garbled]["detail"].startswith("set aside: its landed rows are unreadable"), rows[
        garbled
    ]
    assert (
        len(alerts) == 2
        and gone in alerts[0] + alerts[1]
        and garbled in alerts[0] + alerts[1]
        and "resync_batches" in alerts[0]
    )
    held = sink.get(list(scenario.ids.values()))
    assert sorted(held) == sorted(scenario.ids[w] for w in ("fine1", "fine2")), (
        "the batch after them was synced"
    )
    assert region_plan(sync.warehouse, sync.bucket.name, sink.name, REGION).batches == [], (
        "set aside: the next runs do not fail on it again"
    )
    with pytest.raises(Exception, match=r"do not balance|ok=False"):
        Ledger(warehouse).balance(gone)  # the ledger says it loudly

    # Repaired (here: the warehouse still holds their events):
    # synced again from the warehouse's current state.
    resynced = sync.resync(sink, [gone, garbled])
    assert resynced == {REGION: {"batches": 2, "partners": 4, "rejected": 0}}, resynced
    assert sorted(sink.get(list(scenario.ids.values()))) == sorted(scenario.ids.values())
    rows = ledger(warehouse, "sync_solr")
    assert all(
        rows[b]["ok"] and rows[b]["detail"] == "partners 2: synced 2, rejected 0"
        for b in (gone, garbled)
    ), rows
    assert {s for s in Ledger(warehouse).balance(gone)} >= {"land", "warehouse", "sync_solr"}
    assert watermark(sync.warehouse, sink.name, REGION)["batch_id"] == fine, (
        "a resync does not move the watermark"
    )


def test_a_stale_commit_records_nothing_for_batches_that_are_gone(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = fresh(23)
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    batch_id = ingest_events(
        stack,
        pipeline_config,
        warehouse,
        region_topic,
        REGION,
        f"test-stale-{uuid.uuid4().hex[:6]}",
        enrollments(scenario, "carla", "dora"),
    )
    sink = sinks["solr"]
    written = sync.write(sink, region_plan(sync.warehouse, sync.bucket.name, sink.name, REGION))
    with pytest.raises(ValueError, match="no gate result"):
        sync.commit(written)
    gated = sync.gate(sink, written)
    # A reset between the gate and the commit (a retry
    # from before it): the batch's ledger rows are gone.
    warehouse.run(
        f"DELETE FROM {warehouse.table('ledger', ops=True)} WHERE batch_id = @b",
        [bigquery.ScalarQueryParameter("b", "STRING", batch_id)],
    )
    outcome = sync.commit(written | {"gate": gated})
    assert (
        outcome["batches"] == 0 and outcome["stale"] == [batch_id] and outcome["watermark"] is None
    )
    assert (
        warehouse.run(
            f"SELECT * FROM {warehouse.table('ledger', ops=True)} WHERE batch_id = @b",
            [bigquery.ScalarQueryParameter("b", "STRING", batch_id)],
        )
        == []
    ), "no row for a batch that does not exist"
    assert watermark(sync.warehouse, sink.name, REGION) is None


def welcome_entries(stack, key: str) -> dict[str, int]:
    ids = journey_events(stack, key)
    return {pid: ids.count(pid) for pid in ids}


def test_an_enrollment_sent_again_in_a_later_batch_enters_the_welcome_journey_once(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = fresh(24)
    sync = SyncRun(warehouse, storage_client(stack.project).bucket(pipeline_config.landing_bucket))
    group = f"test-resent-{uuid.uuid4().hex[:6]}"
    first = enrollments(scenario, "emil", "frida")
    second = [
        dict(first[0]),
        *enrollments(scenario, "gero"),
    ]  # the producer sends emil's enrollment again, same event
    sink = sinks["marketing_cloud"]
    for events in (first, second):
        ingest_events(stack, pipeline_config, warehouse, region_topic, REGION, group, events)
        assert sync.run(sink, REGION)["batches"] == 1
    ids = scenario.ids
    assert welcome_entries(stack, sink.welcome_event) == {
        ids[w]: 1 for w in ("emil", "frida", "gero")
    }
    claim = sync.bucket.blob(
        f"sinks/marketing_cloud/journeys/{sink.welcome_event}/{ids['emil']}.json"
    ).download_as_text()
    assert '"state": "entered"' in claim and "example.de" not in claim, (
        "the claim holds ids and state, no personal data"
    )


def test_a_replay_racing_the_regular_sync_fires_the_welcome_once(
    stack, pipeline_config, region_topic, warehouse, sinks
):
    scenario = fresh(25)
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    batch_id = ingest_events(
        stack,
        pipeline_config,
        warehouse,
        region_topic,
        REGION,
        f"test-race-{uuid.uuid4().hex[:6]}",
        enrollments(scenario, *(f"racer{i}" for i in range(8))),
    )
    regular = sinks["marketing_cloud"]
    options = dict(pipeline_config.sinks["marketing_cloud"]) | {
        "data_extension": regular.data_extension,
        "welcome_event": regular.welcome_event,
    }
    replaying = build_sink(
        "marketing_cloud", options, Endpoints.from_env()
    )  # its own client, as another task has

    def own_sync() -> SyncRun:  # each thread its own clients, as two Airflow tasks have
        w = BigQuery(
            client=warehouse.client,
            storage=storage_client(stack.project),
            project=warehouse.project,
            dataset=warehouse.dataset,
            ops_dataset=warehouse.ops_dataset,
        )
        return SyncRun(w, bucket)

    start, errors = threading.Barrier(2), []

    def race(step):
        try:
            start.wait(30)
            step()
        except Exception as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=race, args=(lambda: own_sync().run(regular, REGION),)),
        threading.Thread(
            target=race, args=(lambda: replay_sync(own_sync(), replaying, REGION, [batch_id]),)
        ),
    ]
    try:
        [t.start() for t in threads]
        [t.join(120) for t in threads]
    finally:
        replaying.close()
    assert errors == []
    assert welcome_entries(stack, regular.welcome_event) == dict.fromkeys(scenario.ids.values(), 1)

    # Tighter: four writers reach the journey step at the same instant.
    accepted = [
        {"partner_id": pid, "status": "active", "first_name": "x"}
        for pid in (f"EM{uuid.uuid4().hex[:10].upper()}" for _ in range(30))
    ]
    barrier, clients = (
        threading.Barrier(4),
        [
            build_sink(
                "marketing_cloud",
                options | {"welcome_event": f"{regular.welcome_event}-tight"},
                Endpoints.from_env(),
            )
            for _ in range(4)
        ],
    )

    def fire(client):
        barrier.wait(30)
        client._welcome(accepted, dict.fromkeys((p["partner_id"] for p in accepted), batch_id))

    threads = [threading.Thread(target=fire, args=(c,)) for c in clients]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    [c.close() for c in clients]
    assert welcome_entries(stack, f"{regular.welcome_event}-tight") == {
        p["partner_id"]: 1 for p in accepted
    }
    ledger_rows = warehouse.run(
        f"SELECT stage FROM {warehouse.table('ledger', ops=True)} WHERE batch_id = @b AND stage = "
        "'sync_marketing_cloud'",
        [bigquery.ScalarQueryParameter("b", "STRING", batch_id)],
    )
    assert len(ledger_rows) == 1, "one ledger row for the batch, whoever committed first"


def test_the_sync_dag_sets_a_batch_aside_and_resyncs_it_on_request(
    stack, airflow_db, isolated_pipeline
):
    """Through the DAG, as after a data reset: a batch's landed objects are deleted; the sync run
    succeeds with the other batches, the ledger names the batch set aside; a run with
    ``resync_batches`` brings it back from the warehouse."""
    from airflow.utils.state import DagRunState

    from enrollment.simulator.generator import Simulator
    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.sync import sync_dag
    from enrollment_airflow.warehouse import warehouse_dag
    from tests.integration.conftest import produce

    config = isolated_pipeline
    region = config.region(REGION)
    simulator = Simulator(
        seed=uuid.uuid4().int % 1_000_000, initial_partners=20, config=config
    )  # partners this run alone has
    for _ in range(2):  # two batches
        produce(stack.kafka, [m for m in simulator.take(300) if m.topic == region.topic])
        assert ingest_dag(region).test().state == DagRunState.SUCCESS
    assert warehouse_dag().test().state == DagRunState.SUCCESS
    w = BigQuery(
        client=bigquery_client(stack.project),
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
    )
    batches = [
        r["batch_id"]
        for r in w.run(
            f"SELECT batch_id FROM {w.table('ledger', ops=True)} WHERE stage = 'warehouse' ORDER "
            "BY recorded_at, batch_id"
        )
    ]
    assert len(batches) == 2, batches
    bucket = storage_client(stack.project).bucket(config.landing_bucket)
    for blob in bucket.list_blobs(prefix=f"landing/{REGION}/{batches[0]}/"):
        blob.delete()
    bucket.blob(handover_object(REGION, batches[0])).delete()

    def partners_of(batch_id: str) -> set[str]:
        return {
            r["partner_id"]
            for r in w.run(
                f"SELECT DISTINCT partner_id FROM {w.table('events')} WHERE batch_id = @b AND "
                "event_type LIKE 'partner.%'",
                [bigquery.ScalarQueryParameter("b", "STRING", batch_id)],
            )
        }

    only_first = sorted(partners_of(batches[0]) - partners_of(batches[1]))
    state = [
        dict(r)
        for r in w.run(
            f"SELECT * FROM {w.table('partners')} WHERE partner_id IN UNNEST(@ids)",
            [bigquery.ArrayQueryParameter("ids", "STRING", only_first)],
        )
    ]
    assert only_first and len(state) == len(only_first)
    solr = build_sink("solr", config.sinks["solr"], Endpoints.from_env())
    try:
        dag = sync_dag("solr")
        assert dag.test().state == DagRunState.SUCCESS, (
            "the run does not fail for a batch it cannot read"
        )
        rows = ledger(w, "sync_solr")
        assert set(rows) == set(batches) and rows[batches[1]]["ok"], rows
        assert not rows[batches[0]]["ok"] and rows[batches[0]]["detail"].startswith(
            "set aside: its landed objects are gone"
        ), rows[batches[0]]
        assert set(solr.audit(state)) == set(only_first), (
            "the set-aside batch's own partners are not in Solr yet"
        )

        assert dag.test(run_conf={"resync_batches": [batches[0]]}).state == DagRunState.SUCCESS
        rows = ledger(w, "sync_solr")
        assert rows[batches[0]]["ok"] and rows[batches[0]]["detail"].startswith("partners "), rows[
            batches[0]
        ]
        assert solr.audit(state) == {}, (
            "resynced from the warehouse: Solr holds them as the warehouse does"
        )
    finally:
        solr.close()
