"""Quarantine re-processing on the real services: a contract change (Austria joins EMEA's markets)
turns one class of quarantined messages valid; a dry run counts exactly that class and changes
nothing; a recovery brings exactly those events into ``events``, their partners into ``partners``
and every sink (read back), the ledger balances with a ``recovered`` column, and a second recovery
changes nothing. Messages still invalid stay quarantined and are counted so."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import Counter

import httpx
import pytest
from confluent_kafka import Producer

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import Endpoints, bigquery_client, firestore_client, storage_client
from enrollment.config import markets_in_force
from enrollment.config import parse as pipeline_config_module
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.ingest.pending import mark_pending, pending_batches
from enrollment.ops.erasure import scrub
from enrollment.ops.recovery.plan import OUTCOMES, plan
from enrollment.ops.recovery.request import RecoveryRequest
from enrollment.ops.recovery.run import land_recovery, recover
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.sinks import build_sink
from enrollment.sinks.solr import SolrSink
from enrollment.sync.run import SyncRun
from enrollment.warehouse.cycle import raise_failed, run_cycle
from enrollment.warehouse.gates import cycle_freshness_gate
from enrollment.warehouse.ledger import Ledger, balances
from tests.integration.conftest import current_raw_config, produce, use_config

pytestmark = [pytest.mark.integration]

NEW_COUNTRY = "AT"
REASON = "country_not_in_region"


@contextlib.contextmanager
def austria_joins_emea(monkeypatch):
    """Today's configuration change: Austria becomes an EMEA market (its countries in the region
    registry, its rules under ``markets:``), in force until the block ends."""
    import tempfile
    from pathlib import Path

    raw = current_raw_config()
    for region in raw["regions"]:
        if region["code"] == "EMEA":
            region["countries"] = [*region["countries"], NEW_COUNTRY]
    raw["markets"] = (raw.get("markets") or {}) | {
        NEW_COUNTRY: {"currency": "EUR", "postal_code": r"^\d{4}$", "languages": ["de-AT"]}
    }
    before = os.environ.get("ENROLLMENT_CONFIG")
    with tempfile.TemporaryDirectory() as folder:
        use_config(raw, Path(folder) / "pipeline.yaml", monkeypatch)
        assert markets_in_force().country_region(NEW_COUNTRY) == "EMEA"
        try:
            yield
        finally:
            if before is None:
                monkeypatch.delenv("ENROLLMENT_CONFIG")
            else:
                monkeypatch.setenv("ENROLLMENT_CONFIG", before)
            pipeline_config_module._load.cache_clear()


def austrian_enrollments(n: int) -> list[dict]:
    """EMEA enrollments from Austria (contactable: Marketing
    Cloud holds them), valid in every other respect."""
    sim, run = Simulator(seed=77), uuid.uuid4().hex[:6]
    sponsor = "EM" + uuid.uuid4().hex[:10].upper()
    out = []
    for i in range(n):
        e = sim.event_for("partner.enrolled", "DE", 2)
        pid = "EM" + uuid.uuid4().hex[:10].upper()
        e.update(event_id=str(uuid.uuid4()), partner_id=pid, partner_version=1)
        e["payload"].update(sponsor_id=sponsor, email=f"at{i}.{run}@example.at", language="de-AT")
        e["payload"]["address"].update(country=NEW_COUNTRY, postal_code=f"{1010 + i}")
        e["payload"]["consents"]["marketing_email"] = True
        out.append(e)
    return out


@pytest.fixture
def pipeline(stack, isolated_pipeline):
    config = isolated_pipeline
    w = BigQuery(
        client=bigquery_client(stack.project),
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
        settings=config.warehouse,
    )
    sinks = {
        name: build_sink(name, config.sinks[name], Endpoints.from_env()) for name in config.sinks
    }
    yield config, w, w.storage.bucket(config.landing_bucket), sinks
    for sink in sinks.values():
        sink.close()


def warehouse_and_sync(config, w, bucket, sinks) -> dict:
    result = run_cycle(w, pending_batches(bucket, config.consumer_group), config.warehouse)
    raise_failed(result)
    sync = SyncRun(w, bucket)
    for sink in sinks.values():
        for region in config.regions:
            sync.run(sink, region.code, max_batches=100)
    return result.as_dict()


def snapshot(w) -> dict:
    """What a recovery may change, read back."""

    def rows(sql):
        return [tuple(r.values()) for r in w.run(sql)]

    recovered = (
        rows(
            "SELECT region, kafka_partition, kafka_offset, origin_batch_id, recovery_batch_id, "
            "event_id, reasons, recovered_at, dag_run "
            f"FROM {w.table('recovered', ops=True)} ORDER BY 1, 2, 3"
        )
        if _exists(w, "recovered", ops=True)
        else []
    )
    return {
        "events": rows(f"SELECT event_id, batch_id FROM {w.table('events')} ORDER BY 1, 2"),
        "partners": rows(
            f"SELECT partner_id, partner_version FROM {w.table('partners')} ORDER BY 1"
        ),
        "quarantine": rows(
            f"SELECT batch_id, kafka_partition, kafka_offset FROM {w.table('quarantine')} ORDER BY "
            "1, 2, 3"
        ),
        "ledger": rows(f"""SELECT batch_id, stage, offsets_in, valid, quarantined, duplicates,
                              skipped, recovered, recorded_at
                              FROM {w.table("ledger", ops=True)} ORDER BY 1, 2"""),
        "recovered": recovered,
    }


def _exists(w, name: str, ops: bool = False) -> bool:
    return name in {
        t.table_id
        for t in w.client.list_tables(f"{w.project}.{w.ops_dataset if ops else w.dataset}")
    }


def land_emea(kafka: KafkaSettings, config, bucket, keyring, max_batch: int = 1_000) -> None:
    """Claims and lands what EMEA's topic holds for the pipeline's group, as one batch."""
    emea = config.region("EMEA")
    manifest = claim(
        kafka,
        config.consumer_group,
        "EMEA",
        emea.topic,
        emea.partitions,
        bucket,
        max_batch=max_batch,
    )
    land(kafka, manifest, bucket, keyring)


def recovery_objects(bucket) -> list[str]:
    """Every recovery batch's objects in the (shared) landing bucket."""
    return sorted(
        b.name
        for r in ("AMER", "EMEA", "APAC", "LATAM")
        for b in bucket.list_blobs(prefix=f"landing/{r}/recovery-")
    )


def test_a_contract_change_brings_back_exactly_that_class_once(
    stack, pipeline, monkeypatch, airflow_db, dagbag
):
    config, w, bucket, sinks = pipeline
    keyring, kafka = Keyring.from_env(), stack.kafka
    emea = config.region("EMEA")

    # Simulated traffic with ordinary faults in every region, and five Austrian enrollments that
    # today's contract quarantines as country_not_in_region.
    # A seed whose 800 messages put countries outside their region in three regions.
    messages = Simulator(
        seed=4255, faults=FaultRates.mix(0.06), initial_partners=40, config=config
    ).take(800)
    produce(kafka, messages)
    austrians = austrian_enrollments(5)
    producer = Producer(kafka.producer({"partitioner": "murmur2_random"}))
    for e in austrians:
        producer.produce(emea.topic, key=e["partner_id"].encode(), value=json.dumps(e).encode())
    assert producer.flush(30) == 0
    for region in config.regions:
        manifest = claim(
            kafka,
            config.consumer_group,
            region.code,
            region.topic,
            region.partitions,
            bucket,
            max_batch=1_000_000,
        )
        land(kafka, manifest, bucket, keyring)
    # The producer resends one of them in a later batch: quarantined again, one event all the same.
    producer.produce(
        emea.topic, key=austrians[0]["partner_id"].encode(), value=json.dumps(austrians[0]).encode()
    )
    assert producer.flush(30) == 0
    land_emea(kafka, config, bucket, keyring, max_batch=1_000_000)
    warehouse_and_sync(config, w, bucket, sinks)

    at_ids = {e["event_id"] for e in austrians}
    at_partners = {e["partner_id"] for e in austrians}
    quarantined = {
        r["event_id"]: r["reasons"]
        for r in w.run(
            f"SELECT event_id, reasons FROM {w.table('quarantine')} WHERE region = 'EMEA'"
        )
    }
    assert {quarantined.get(i) for i in at_ids} == {REASON}, (
        "today's contract quarantines them for that one reason"
    )
    # Other messages quarantined for the same reason
    # (a country of another region): they stay invalid.
    others = Counter(
        m.expected["region"]
        for m in messages
        if m.expected["outcome"] == "quarantined"
        and REASON in m.expected["reasons"]
        and m.expected["reasons"] != ["duplicate_event_id"]
    )
    assert others, "the fault mix holds countries outside their region"
    before = snapshot(w)
    objects_before = recovery_objects(bucket)
    assert not before["recovered"]

    request = RecoveryRequest.parse(
        {"region": "ALL", "reasons": [REASON], "dry_run": True}, [r.code for r in config.regions]
    )
    with austria_joins_emea(monkeypatch):
        # The dry run: exactly the Austrian class, by region and reason; nothing written.
        planned = plan(w, bucket, keyring, kafka, config, request).counts()
        assert planned["regions"]["EMEA"]["by_reason"][REASON]["recoverable"] == 5
        assert planned["regions"]["EMEA"]["total"]["already_in_events"] == 1, (
            "the resent copy: its event comes back once"
        )
        assert planned["total"]["recoverable"] == 5
        assert {code: r["total"]["still_invalid"] for code, r in planned["regions"].items()} == {
            r.code: others.get(r.code, 0) for r in config.regions
        }
        for counts in [planned["total"], *(r["total"] for r in planned["regions"].values())]:
            assert counts["candidates"] == sum(counts[o] for o in OUTCOMES), counts
        assert set(planned["regions"]["EMEA"]["by_reason"]) <= {r for r in quarantined.values()}, (
            "keys are reason codes, never ids"
        )
        assert not any(p in json.dumps(planned) for p in at_partners)
        assert snapshot(w) == before and recovery_objects(bucket) == objects_before, (
            "a dry run changes nothing"
        )
        assert not pending_batches(bucket, config.consumer_group)

        # The recovery, through its DAG (Kafka read and landed outside the writer's slot, the
        # ledger rows in it): one batch for EMEA, queued for the warehouse writer, carried to
        # every sink.
        run = dagbag.dags["requeue_quarantine"].test(
            run_conf={"region": "ALL", "reasons": [REASON], "dry_run": False}
        )
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert states == dict.fromkeys(("plan", "recover", "ledger", "report"), "success"), states
        done = run.get_task_instance("recover").xcom_pull(task_ids="recover")
    assert (
        done["total"]["recovered"] == 5
        and done["total"]["still_invalid"] == planned["total"]["still_invalid"]
    )
    assert list(done["batches"]) == ["EMEA"] and done["batches"]["EMEA"]["events"] == 5
    batch_id = done["batches"]["EMEA"]["batch_id"]
    assert batch_id.startswith("recovery-emea-")
    assert [b.batch_id for b in pending_batches(bucket, config.consumer_group)] == [batch_id]
    assert sorted(set(recovery_objects(bucket)) - set(objects_before)) == [
        f"landing/EMEA/{batch_id}/{n}.parquet" for n in ("partners", "quarantine", "raw", "valid")
    ]
    cycled = warehouse_and_sync(config, w, bucket, sinks)
    assert [b["batch_id"] for b in cycled["batches"]] == [batch_id]
    assert cycle_freshness_gate(cycled["batches"], sla_s=0.001) == {}, (
        "a recovery batch is never late"
    )

    after = snapshot(w)
    new_events = {e for e, b in after["events"]} - {e for e, b in before["events"]}
    assert new_events == at_ids and {b for e, b in after["events"] if e in at_ids} == {batch_id}
    assert {p for p, v in after["partners"]} - {p for p, v in before["partners"]} == at_partners
    assert after["quarantine"] == before["quarantine"], (
        "the quarantine keeps its history; still invalid ones stay"
    )
    assert {(r[5], r[4], r[6], r[8]) for r in after["recovered"]} == {
        (i, batch_id, REASON, run.run_id) for i in at_ids
    }
    docs = {
        d.id: d.get("partner_version")
        for d in firestore_client(stack.project)
        .collection(config.sinks["firestore"]["collection"])
        .stream()
    }
    assert {p: docs.get(p) for p in at_partners} == {p: 1 for p in at_partners}
    solr = SolrSink(stack.url("SOLR_PORT", "/solr"), config.solr_core, auth=stack.solr_auth).get(
        sorted(at_partners)
    )
    assert {p: d["partner_version"] for p, d in solr.items()} == {p: 1 for p in at_partners}
    mc = httpx.get(
        f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/dataextensions/{config.sinks['marketing_cloud']['data_extension']}/rows",
        headers=stack.stub_headers(),
    ).json()
    assert {r["PartnerId"] for r in mc["items"]} >= at_partners

    # The ledger: every row balances; the origin batches' recovered rows sum to what was recovered.
    ledger = [
        dict(r)
        for r in w.run(f"""SELECT batch_id, stage, offsets_in, valid, quarantined, duplicates,
        COALESCE(skipped, 0) AS skipped, COALESCE(recovered, 0) AS recovered, ok
        FROM {w.table("ledger", ops=True)}""")
    ]
    assert all(balances(r) and r["ok"] for r in ledger), [r for r in ledger if not balances(r)]
    rows_recovered = [r for r in ledger if r["stage"] == "recovered"]
    assert sum(r["recovered"] for r in rows_recovered) == 5 and {
        r["batch_id"] for r in rows_recovered
    } == {r[3] for r in after["recovered"]}
    land_rows = {r["batch_id"]: r for r in ledger if r["stage"] == "land"}
    for r in rows_recovered:
        assert r["quarantined"] == land_rows[r["batch_id"]]["quarantined"] - r["recovered"]
    assert {
        (r["stage"], r["offsets_in"], r["valid"]) for r in ledger if r["batch_id"] == batch_id
    } >= {("land", 5, 5), ("warehouse", 5, 5)}
    for b in {r["batch_id"] for r in ledger}:
        Ledger(w).balance(b)

    # Again: nothing changes, everything counted as already recovered.
    with austria_joins_emea(monkeypatch):
        again = recover(w, bucket, keyring, kafka, config, request, dag_run="test-run-2")
    assert (
        again["total"]["recovered"] == 0
        and again["total"]["already_recovered"] == 5
        and again["batches"] == {}
    )
    assert again["regions"]["EMEA"]["total"]["already_in_events"] == 1
    assert not pending_batches(bucket, config.consumer_group)
    assert snapshot(w) == after

    # Without the contract change the class is invalid again: nothing is recovered twice either way.
    plain = plan(w, bucket, keyring, kafka, config, request).counts()
    assert plain["total"]["recoverable"] == 0 and plain["total"]["already_recovered"] == 5


def test_a_crash_between_landing_and_recording_converges(stack, pipeline, monkeypatch):
    """The recovery batch landed and queued, its messages not recorded: the next run lands the same
    batch (write-once no-ops), records them once, and the warehouse writes the events once. The
    messages reached Kafka three days ago: the recovery batch is old on purpose."""
    config, w, bucket, sinks = pipeline
    keyring, kafka = Keyring.from_env(), stack.kafka
    emea = config.region("EMEA")
    austrians = austrian_enrollments(3)
    producer = Producer(kafka.producer({"partitioner": "murmur2_random"}))
    three_days_ago = int((time.time() - 3 * 86400) * 1000)
    for e in austrians:
        producer.produce(
            emea.topic,
            key=e["partner_id"].encode(),
            value=json.dumps(e).encode(),
            timestamp=three_days_ago,
        )
    assert producer.flush(30) == 0
    land_emea(kafka, config, bucket, keyring)
    warehouse_and_sync(config, w, bucket, sinks)
    request = RecoveryRequest.parse(
        {"region": "EMEA", "reasons": [REASON], "dry_run": False}, [r.code for r in config.regions]
    )

    with austria_joins_emea(monkeypatch):
        crashed = plan(w, bucket, keyring, kafka, config, request)
        first = land_recovery(
            w, bucket, keyring, config, crashed.regions["EMEA"]
        )  # then the worker died
        pending_record = pending_batches(bucket, config.consumer_group)[0]
        cycled = warehouse_and_sync(
            config, w, bucket, sinks
        )  # the warehouse DAG took the batch meanwhile
        assert [b["batch_id"] for b in cycled["batches"]] == [first["batch_id"]] and cycled[
            "batches"
        ][0]["oldest_event_age_s"] > 2 * 86400
        assert cycle_freshness_gate(cycled["batches"], config.freshness_sla_s) == {}, (
            "old by design, never late"
        )
        # A cycle that died after its ledger rows, before clearing the record, takes the batch
        # again: written already.
        mark_pending(bucket, pending_record)
        assert run_cycle(
            w, pending_batches(bucket, config.consumer_group), config.warehouse
        ).already == [first["batch_id"]]
        objects = {
            b.name: b.generation
            for b in bucket.list_blobs(prefix=f"landing/EMEA/{first['batch_id']}/")
        }
        done = recover(w, bucket, keyring, kafka, config, request, dag_run="rerun")
    assert done["batches"]["EMEA"] == {
        "batch_id": first["batch_id"],
        "events": 3,
        "queued": False,
        "origin_batches": sorted({c.origin_batch_id for c in crashed.regions["EMEA"].recoverable}),
    }, "same set, same batch, not queued again"
    assert {
        b.name: b.generation for b in bucket.list_blobs(prefix=f"landing/EMEA/{first['batch_id']}/")
    } == objects, "write-once"
    assert not pending_batches(bucket, config.consumer_group)
    events = w.run(f"SELECT event_id, COUNT(*) AS n FROM {w.table('events')} GROUP BY event_id")
    assert {r["event_id"]: r["n"] for r in events} == {e["event_id"]: 1 for e in austrians}
    assert w.run(f"SELECT COUNT(*) AS n FROM {w.table('recovered', ops=True)}")[0]["n"] == 3
    assert [
        dict(r)
        for r in w.run(
            f"SELECT stage, recovered, quarantined FROM {w.table('ledger', ops=True)} WHERE stage "
            "= 'recovered'"
        )
    ] == [{"stage": "recovered", "recovered": 3, "quarantined": 0}]
    stages = Counter(
        (r["batch_id"], r["stage"])
        for r in w.run(f"SELECT batch_id, stage FROM {w.table('ledger', ops=True)}")
    )
    assert set(stages.values()) == {1}, "one ledger row per batch and stage"
    assert {s for b, s in stages if b == first["batch_id"]} == {
        "land",
        "warehouse",
        *(f"sync_{n}" for n in config.sinks),
    }


def test_a_ledger_step_that_failed_for_good_is_made_good_by_the_next_run(
    stack, pipeline, monkeypatch
):
    """The DAG recovers outside the writer's slot and writes the origins' ledger rows in it, a
    task of its own. When that task fails for good, the next run finds the messages recovered
    already (nothing to land) and must still write the rows the first run left out."""
    config, w, bucket, sinks = pipeline
    keyring, kafka = Keyring.from_env(), stack.kafka
    emea = config.region("EMEA")
    austrians = austrian_enrollments(2)
    producer = Producer(kafka.producer({"partitioner": "murmur2_random"}))
    for e in austrians:
        producer.produce(emea.topic, key=e["partner_id"].encode(), value=json.dumps(e).encode())
    assert producer.flush(30) == 0
    land_emea(kafka, config, bucket, keyring)
    warehouse_and_sync(config, w, bucket, sinks)
    request = RecoveryRequest.parse(
        {"region": "EMEA", "reasons": [REASON], "dry_run": False}, [r.code for r in config.regions]
    )

    def recovered_rows() -> list[dict]:
        return [
            dict(r)
            for r in w.run(
                f"SELECT stage, recovered, quarantined FROM {w.table('ledger', ops=True)} "
                "WHERE stage = 'recovered'"
            )
        ]

    with austria_joins_emea(monkeypatch):
        first = recover(w, bucket, keyring, kafka, config, request, dag_run="run-1", ledger=False)
        assert first["batches"]["EMEA"]["events"] == 2
        assert recovered_rows() == [], "the ledger step died: no row yet"
        again = recover(w, bucket, keyring, kafka, config, request, dag_run="run-2")
    assert again["batches"] == {}, "nothing left to recover"
    assert recovered_rows() == [{"stage": "recovered", "recovered": 2, "quarantined": 0}]


def test_a_recovery_batch_left_behind_by_a_crash_and_an_erasure_keeps_no_one_in_clear(
    stack, pipeline, monkeypatch
):
    """A recovery run dies after writing its batch, before queueing it; an erasure of one of its
    partners runs; the next recovery leaves the erased partner's message out, so it is another
    batch: the first one's objects are queued by nobody. The erasure finds them all the same, and
    neither batch holds the partner."""
    import enrollment.ops.recovery.run as recovery_run
    from tests.integration.ops.test_erasure_races import Killed, erase, personal, values_naming

    config, w, bucket, _ = pipeline
    keyring, kafka = Keyring.from_env(), stack.kafka
    emea = config.region("EMEA")
    austrians = austrian_enrollments(3)
    victim = austrians[0]
    # Produced, landed and warehoused under today's contract: quarantined.
    producer = Producer(kafka.producer({"partitioner": "murmur2_random"}))
    for e in austrians:
        producer.produce(emea.topic, key=e["partner_id"].encode(), value=json.dumps(e).encode())
    assert producer.flush(30) == 0
    land_emea(kafka, config, bucket, keyring)
    raise_failed(run_cycle(w, pending_batches(bucket, config.consumer_group), config.warehouse))
    request = RecoveryRequest.parse(
        {"region": "EMEA", "reasons": [REASON], "dry_run": False}, [r.code for r in config.regions]
    )
    before = set(recovery_objects(bucket))
    armed = True

    def dies_before_queueing(bucket_, landed) -> None:
        if armed:
            raise Killed("before the pending record")
        mark_pending(bucket_, landed)

    monkeypatch.setattr(recovery_run, "mark_pending", dies_before_queueing)
    with austria_joins_emea(monkeypatch), pytest.raises(Killed):
        recover(w, bucket, keyring, kafka, config, request, dag_run="crashed")
    armed = False
    (orphan,) = {name.split("/")[2] for name in set(recovery_objects(bucket)) - before}
    assert values_naming(bucket, f"landing/EMEA/{orphan}", [victim["partner_id"]])
    assert orphan not in {b.batch_id for b in pending_batches(bucket, config.consumer_group)}

    found = erase(w, bucket, config.consumer_group, victim["partner_id"], regions=["EMEA"])
    assert orphan in found["batches"], "the erasure lists the recovery batches"
    assert values_naming(bucket, f"landing/EMEA/{orphan}", personal(victim)) == []

    with austria_joins_emea(monkeypatch):
        done = recover(w, bucket, keyring, kafka, config, request, dag_run="rerun")
    again = done["batches"]["EMEA"]
    assert again["batch_id"] != orphan and again["events"] == 2 and again["queued"]
    assert done["total"]["erased"] == 1, "the erased partner's message is not recovered"
    assert values_naming(bucket, f"landing/EMEA/{again['batch_id']}", personal(victim)) == []
    raise_failed(run_cycle(w, pending_batches(bucket, config.consumer_group), config.warehouse))
    assert scrub.remaining_in_warehouse(w, [victim["partner_id"]]) == {
        "events": 0,
        "partners": 0,
        "quarantine": 0,
        "sink_quarantine": 0,
    }
    assert {
        r["partner_id"]
        for r in w.run(f"SELECT partner_id FROM {w.table('partners')} WHERE partner_id != 'erased'")
    } == {e["partner_id"] for e in austrians[1:]}
