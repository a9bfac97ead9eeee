"""Fixtures of the integration tier: an isolated topic and warehouse per test."""

from __future__ import annotations

import contextlib
import json
import os
import uuid

import httpx
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from google.cloud import bigquery

from enrollment.clients.bigquery import BigQuery
from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import Endpoints, bigquery_client, storage_client
from enrollment.config import parse as pipeline_config_module
from enrollment.core.batch import Manifest
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.sinks import build_sink
from enrollment.warehouse.cycle import merge_batch
from enrollment.warehouse.ledger import Ledger
from tests.conftest import with_suite_timeliness


@pytest.fixture
def region_topic(stack):
    topic = f"test.ingest.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(stack.kafka.admin())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    yield topic
    admin.delete_topics([topic])


@pytest.fixture
def warehouse(stack, pipeline_config):
    client = bigquery_client(stack.project)
    suffix = uuid.uuid4().hex[:8]
    datasets = (f"test_wh_{suffix}", f"test_ops_{suffix}")
    for name in datasets:
        client.create_dataset(bigquery.Dataset(f"{stack.project}.{name}"))
    yield BigQuery(
        client=client,
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=datasets[0],
        ops_dataset=datasets[1],
    )
    for name in datasets:
        client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def pipeline_warehouse(stack, config) -> BigQuery:
    """The BigQuery handle on a configuration's own warehouse and ops datasets."""
    return BigQuery(
        client=bigquery_client(stack.project),
        storage=storage_client(stack.project),
        project=stack.project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
    )


def produce(kafka: KafkaSettings, messages, topic: str | None = None) -> None:
    """Simulated messages into Kafka as SAP Commerce sends them (keyed, murmur2), to their own
    region topics or all to ``topic``."""
    producer = Producer(
        kafka.producer({"partitioner": "murmur2_random", "enable.idempotence": True})
    )
    for m in messages:
        producer.produce(topic or m.topic, key=m.key, value=m.value)
    assert producer.flush(30) == 0


def committed_offsets(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(kafka.consumer({"group.id": group}))
    try:
        return [
            tp.offset
            for tp in consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=10
            )
        ]
    finally:
        consumer.close()


def claimed_batch(
    stack,
    pipeline_config,
    topic: str,
    region: str,
    seed: int,
    events: int,
    faults: float,
    initial_partners: int,
):
    """Simulated events on a 2-partition test topic, claimed as one batch by a fresh group."""
    group = f"test-{region.lower()}-{uuid.uuid4().hex[:8]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    messages = Simulator(
        seed=seed, faults=FaultRates.mix(faults), initial_partners=initial_partners
    ).take(events)
    produce(stack.kafka, messages, topic)
    manifest: Manifest = claim(stack.kafka, group, region, topic, 2, bucket, max_batch=10_000_000)
    return group, bucket, messages, manifest


def current_raw_config() -> dict:
    """The pipeline configuration in force, as the YAML mapping (to change and ``use_config``)."""
    return yaml.safe_load(
        open(
            os.environ.get("ENROLLMENT_CONFIG") or pipeline_config_module.DEFAULT_CONFIG,
            encoding="utf-8",
        )
    )


def use_config(raw: dict, path, monkeypatch):
    """Points the pipeline at this configuration for the rest of the test; the loaded config."""
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("ENROLLMENT_CONFIG", str(path))
    pipeline_config_module._load.cache_clear()
    return pipeline_config_module.load_config()


@contextlib.contextmanager
def isolated(stack, path, monkeypatch, change=None):
    """A configuration like the embedded one (``change`` may edit its raw mapping first), with
    its own topics, group, datasets, Firestore collection and Marketing Cloud data extension."""
    run = uuid.uuid4().hex[:6]
    raw = with_suite_timeliness(yaml.safe_load(pipeline_config_module.DEFAULT_CONFIG.read_text()))
    if change:
        change(raw)
    raw["consumer_group"] = f"test-pipeline-{run}"
    raw["datasets"] = {"warehouse": f"test_all_{run}", "ops": f"test_all_ops_{run}"}
    raw["sinks"]["firestore"]["collection"] = f"partners_{run}"
    raw["sinks"]["marketing_cloud"].update(
        data_extension=f"partners-{run}", welcome_event=f"welcome-{run}"
    )
    for region in raw["regions"]:
        region["topic"] = f"test.{run}.{region['code'].lower()}.events"
        region["partitions"] = 2
    config = use_config(raw, path, monkeypatch)
    admin = AdminClient(stack.kafka.admin())
    for future in admin.create_topics(
        [NewTopic(r.topic, num_partitions=2, replication_factor=1) for r in config.regions]
    ).values():
        future.result(30)
    client = bigquery_client(stack.project)
    for name in (config.warehouse_dataset, config.ops_dataset):
        client.create_dataset(bigquery.Dataset(f"{stack.project}.{name}"))
    try:
        yield config
    finally:
        admin.delete_topics([r.topic for r in config.regions])
        for name in (config.warehouse_dataset, config.ops_dataset):
            client.delete_dataset(name, delete_contents=True, not_found_ok=True)
        monkeypatch.delenv("ENROLLMENT_CONFIG")
        pipeline_config_module._load.cache_clear()


@pytest.fixture
def isolated_pipeline(stack, tmp_path, monkeypatch):
    with isolated(stack, tmp_path / "pipeline.yaml", monkeypatch) as config:
        yield config


def ingest_events(
    stack, pipeline_config, warehouse, topic: str, region: str, group: str, events: list[dict]
) -> str:
    """Hand-made events (dicts) through claim → land → warehouse as one batch; its id.

    They are produced one at a time, in order, keyed by partner (Kafka keeps order per partner)."""
    producer = Producer(stack.kafka.producer({"partitioner": "murmur2_random"}))
    for e in events:
        producer.produce(topic, key=e["partner_id"].encode(), value=json.dumps(e).encode())
        producer.flush(10)
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    manifest = claim(stack.kafka, group, region, topic, 2, bucket, max_batch=100_000)
    landed = land(stack.kafka, manifest, bucket, Keyring.from_env())
    assert landed.valid + landed.duplicates == len(events), (
        "hand-made events are valid (or in-batch duplicates)"
    )
    counts = merge_batch(warehouse, landed)
    Ledger(warehouse).record(landed, "land", landed.valid, landed.seconds)
    Ledger(warehouse).record(landed, "warehouse", counts["events"], counts["seconds"])
    return landed.batch_id


def succeeded(run):
    """A DAG run of ``dag.test()`` that must have succeeded (else: its tasks' states)."""
    from airflow.utils.state import DagRunState

    assert run.state == DagRunState.SUCCESS, {
        ti.task_id: ti.state for ti in run.get_task_instances()
    }
    return run


def ingest_and_warehouse(stack, config, messages):
    """The messages produced, then every region's ingest DAG and the warehouse DAG run in this
    process (``dag.test()``), each successful; the warehouse run."""
    from enrollment_airflow.ingest import ingest_dag
    from enrollment_airflow.warehouse import warehouse_dag

    produce(stack.kafka, messages)
    for region in config.regions:
        succeeded(ingest_dag(region).test())
    return succeeded(warehouse_dag().test())


@pytest.fixture
def sinks(stack, pipeline_config):
    """The configured sinks, each on its own Firestore collection and Marketing Cloud data
    extension (its name unique to the test)."""
    run = uuid.uuid4().hex[:8]
    mc = stack.url("MARKETING_CLOUD_PORT")
    data_extension = f"partners-{run}"
    # A Text(30) last name, as a real data extension might have: the refused partner is longer.
    httpx.put(
        f"{mc}/_stub/dataextensions/{data_extension}",
        json={"primary_key": ["PartnerId"], "max_length": {"LastName": 30}},
        headers=stack.stub_headers(),
    ).raise_for_status()
    endpoints = Endpoints.from_env()
    options = {name: dict(o) for name, o in pipeline_config.sinks.items()}
    options["firestore"]["collection"] = f"partners_{run}"
    options["solr"]["outage_s"] = 3
    options["marketing_cloud"].update(data_extension=data_extension, welcome_event=f"welcome-{run}")
    built = {name: build_sink(name, o, endpoints) for name, o in options.items()}
    built["marketing_cloud"].client.max_throttle_wait_s = 120
    yield built
    for sink in built.values():
        sink.close()
    httpx.patch(
        f"{mc}/_stub/settings",
        json={"throttle_for_s": 0, "token_ttl_s": 1080, "processing_delay_s": 0.2},
        headers=stack.stub_headers(),
    )
