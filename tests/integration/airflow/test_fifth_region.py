"""Adding a region is configuration alone (docs/configuration.md, "Adding a region"): a fifth
region, MEA, with two countries whose market rules the library lacks, declared in a copy of the
embedded configuration and nowhere else. Its simulated events (with the fault mix) go through its
own ingest DAG (the factory's, run by ``dag.test()``), the warehouse and every sink DAG; the lag
monitor measures its topic and the canary makes a valid enrollment for it."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from enrollment.clients.services import bigquery_client, firestore_client
from enrollment.ingest.validation import validate_batch
from enrollment.ops.canary import canary_event
from enrollment.ops.lag import kafka_lag
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.sinks.solr import SolrSink
from tests.integration.conftest import isolated, produce, succeeded

pytestmark = [pytest.mark.integration]

MEA = {
    "code": "MEA",
    "topic": "commerce.mea.events",
    "partitions": 2,
    "share": 0.5,
    "countries": ["AE", "SA"],
}
MARKETS = {
    "AE": {"currency": "AED", "postal_code": r"^\d{5}$", "languages": ["ar-AE", "en-AE"]},
    "SA": {
        "currency": "SAR",
        "postal_code": r"^\d{5}$",
        "tax_id": r"^\d{10}$",
        "min_age": 21,
        "languages": ["ar-SA"],
    },
}


@pytest.fixture
def five_regions(stack, tmp_path, monkeypatch):
    """The embedded configuration plus MEA and its markets, isolated like every such test."""

    def add_mea(raw: dict) -> None:
        raw["regions"].append(dict(MEA))
        raw["markets"] = MARKETS

    with isolated(stack, tmp_path / "pipeline.yaml", monkeypatch, add_mea) as config:
        yield config


def test_a_fifth_region_by_configuration_alone_reaches_the_warehouse_and_every_sink(
    stack, airflow_db, five_regions
):
    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.sync import sync_dag
    from enrollment_airflow.warehouse import warehouse_dag

    config = five_regions
    mea = config.region("MEA")
    messages = [
        m
        for m in Simulator(
            seed=5, faults=FaultRates.mix(0.05), initial_partners=40, config=config
        ).take(3000)
        if m.topic == mea.topic
    ]
    assert len(messages) > 500 and {m.expected["region"] for m in messages} == {"MEA"}
    produce(stack.kafka, messages)
    succeeded(ingest_dag(mea).test())
    succeeded(warehouse_dag().test())
    client = bigquery_client(stack.project)

    def rows(sql: str) -> list:
        w, o = config.warehouse_dataset, config.ops_dataset
        sql = sql.format(w=f"`{stack.project}.{w}`", o=f"`{stack.project}.{o}`")
        return list(client.query(sql).result())

    # Exactly the simulator's expected outcomes: the new markets' rules applied (SA: 21+, tax id).
    valid = {m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"}
    assert {r["event_id"] for r in rows("SELECT event_id FROM {w}.events")} == valid
    expected = Counter(
        ",".join(m.expected["reasons"]) for m in messages if m.expected["outcome"] == "quarantined"
    )
    assert Counter(r["reasons"] for r in rows("SELECT reasons FROM {w}.quarantine")) == expected
    assert not any(
        "bad_format:region" in r or "country_not_in_region" in r
        for m in messages
        if m.expected["outcome"] == "valid"
        for r in m.expected["reasons"]
    )
    ledger = rows(
        "SELECT region, stage, offsets_in, valid, quarantined, duplicates FROM {o}.ledger"
    )
    assert {(r["region"], r["stage"]) for r in ledger} == {("MEA", "land"), ("MEA", "warehouse")}
    assert sum(r["offsets_in"] for r in ledger if r["stage"] == "land") == len(messages)

    # Every sink, through its DAG.
    for name in config.sinks:
        succeeded(sync_dag(name).test())
    partners = {
        r["partner_id"]: r
        for r in rows(
            "SELECT partner_id, partner_version, status, marketing_consent FROM {w}.partners"
        )
    }
    assert partners and all(pid.startswith(mea.partner_prefix) for pid in partners)
    documents = firestore_client(stack.project).collection(config.sinks["firestore"]["collection"])
    assert {d.id: d.get("partner_version") for d in documents.stream()} == {
        pid: r["partner_version"] for pid, r in partners.items()
    }
    solr = SolrSink(stack.url("SOLR_PORT", "/solr"), config.solr_core, auth=stack.solr_auth).get(
        list(partners)
    )
    assert set(solr) == set(partners)
    data_extension = config.sinks["marketing_cloud"]["data_extension"]
    held = httpx.get(
        f"{stack.url('MARKETING_CLOUD_PORT')}/_stub/dataextensions/{data_extension}/rows",
        headers=stack.stub_headers(),
    ).json()["items"]
    contactable = {
        pid for pid, r in partners.items()
        if config.marketing_consent.contactable("MEA", r["marketing_consent"])
    }  # fmt: skip
    assert contactable and {r["PartnerId"] for r in held} == contactable
    synced = rows("SELECT stage, region FROM {o}.ledger WHERE stage LIKE 'sync_%'")
    assert {(r["stage"], r["region"]) for r in synced} == {
        (f"sync_{s}", "MEA") for s in config.sinks
    }

    # The lag monitor measures the new region's partitions; the canary's enrollment is valid.
    lag = [r for r in kafka_lag(stack.kafka, config) if r.region == "MEA"]
    assert sorted(r.partition for r in lag) == [0, 1] and sum(r.pending for r in lag) == 0
    event = canary_event(config, mea, version=1)
    assert event["region"] == "MEA" and event["payload"]["address"]["country"] == "AE"
    assert validate_batch([json.dumps(event).encode()]).valid.num_rows == 1
