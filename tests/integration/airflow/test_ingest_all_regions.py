"""All four regions through their ingest DAGs (built by the factory, run by Airflow's
``dag.test()``) on a pipeline configuration of their own (fresh topics, group, datasets, Firestore
collection and Marketing Cloud data extension): the simulator's events with the fault mix end up
exactly as its expected-outcome file says, and the three sink DAGs bring every partner to
Firestore, Solr and Marketing Cloud."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from enrollment.clients.services import bigquery_client, firestore_client
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.sinks.solr import SolrSink
from tests.integration.conftest import ingest_and_warehouse, succeeded

pytestmark = [pytest.mark.integration]


def test_four_regions_with_faults_land_exactly_as_expected(stack, airflow_db, isolated_pipeline):
    config = isolated_pipeline
    messages = Simulator(
        seed=2718, faults=FaultRates.mix(0.05), initial_partners=60, config=config
    ).take(4000)
    # Four regions landed: one warehouse cycle writes them all, each table once.
    run = ingest_and_warehouse(stack, config, messages)
    cycled = run.get_task_instance("cycle").xcom_pull(task_ids="cycle")
    assert sorted(b["region"] for b in cycled["batches"]) == sorted(r.code for r in config.regions)
    assert cycled["statements"] == {"events": 1, "partners": 1, "quarantine": 1, "ledger": 1}, (
        "one writer's statement per table"
    )

    client = bigquery_client(stack.project)

    def rows(sql):
        return list(
            client.query(
                sql.format(
                    w=f"`{stack.project}.{config.warehouse_dataset}`",
                    o=f"`{stack.project}.{config.ops_dataset}`",
                )
            ).result()
        )

    expected_valid = {m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"}
    assert {r["event_id"] for r in rows("SELECT event_id FROM {w}.events")} == expected_valid
    expected_reasons = Counter(
        (m.expected["region"], ",".join(m.expected["reasons"]))
        for m in messages
        if m.expected["outcome"] == "quarantined"
    )
    assert (
        Counter(
            (r["region"], r["reasons"]) for r in rows("SELECT region, reasons FROM {w}.quarantine")
        )
        == expected_reasons
    )

    ledger = rows(
        "SELECT region, stage, offsets_in, valid, quarantined, duplicates FROM {o}.ledger"
    )
    assert {(r["region"], r["stage"]) for r in ledger} == {
        (r.code, s) for r in config.regions for s in ("land", "warehouse")
    }
    assert all(r["offsets_in"] == r["valid"] + r["quarantined"] + r["duplicates"] for r in ledger)
    assert sum(r["offsets_in"] for r in ledger if r["stage"] == "land") == len(messages)

    consumer = Consumer(stack.kafka.consumer({"group.id": config.consumer_group}))
    for region in config.regions:
        parts = [TopicPartition(region.topic, p) for p in range(region.partitions)]
        committed = [tp.offset for tp in consumer.committed(parts, timeout=10)]
        assert committed == [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts], (
            region.code
        )
    consumer.close()

    # The sink DAGs, as the warehouse assets would trigger them: every partner reaches every sink.
    from enrollment_airflow.sync import sync_dag

    for name in config.sinks:
        succeeded(sync_dag(name).test())
    partners = {
        r["partner_id"]: r
        for r in rows(
            "SELECT partner_id, partner_version, status, region, marketing_consent FROM "
            "{w}.partners"
        )
    }
    assert partners, "the simulated events hold partner events"
    docs = {
        d.id: d.get("partner_version")
        for d in firestore_client(stack.project)
        .collection(config.sinks["firestore"]["collection"])
        .stream()
    }
    assert docs == {pid: r["partner_version"] for pid, r in partners.items()}
    solr = SolrSink(stack.url("SOLR_PORT", "/solr"), config.solr_core, auth=stack.solr_auth).get(
        list(partners)
    )
    assert {
        pid: ("removed" if r["status"] == "terminated" else r["partner_version"])
        for pid, r in partners.items()
    } == {
        pid: ("removed" if d["status"] == "removed" else d["partner_version"])
        for pid, d in solr.items()
    }
    mc_rows = httpx.get(
        f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/dataextensions/{config.sinks['marketing_cloud']['data_extension']}/rows",
        headers=stack.stub_headers(),
    ).json()
    # Marketing Cloud holds only those it may contact (EMEA: opt-in), and there are both kinds.
    contactable = {
        pid: r["partner_version"]
        for pid, r in partners.items()
        if config.marketing_consent.contactable(r["region"], r["marketing_consent"])
    }
    assert 0 < len(contactable) < len(partners)
    assert {r["PartnerId"]: r["PartnerVersion"] for r in mc_rows["items"]} == contactable
    marks = rows("SELECT sink, region, batch_id FROM {o}.sink_watermarks")
    warehoused = {(r["region"], r["batch_id"]) for r in ledger_rows(rows)}
    assert {(m["region"], m["batch_id"]) for m in marks} == warehoused and len(marks) == len(
        config.sinks
    ) * len(config.regions)
    synced = rows(
        "SELECT stage, COUNT(*) AS n FROM {o}.ledger WHERE stage LIKE 'sync_%' GROUP BY stage"
    )
    assert {r["stage"]: r["n"] for r in synced} == {
        f"sync_{name}": len(config.regions) for name in config.sinks
    }


def ledger_rows(rows):
    return rows("SELECT region, batch_id FROM {o}.ledger WHERE stage = 'warehouse'")
