"""Crashes: a land and a warehouse stage killed with SIGKILL at several moments, then retried,
and the broker restarted between claim and land. No row lost, none duplicated, the ledger
balances."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from enrollment.core.pii import Keyring
from enrollment.ingest.land import land
from enrollment.warehouse.cycle import merge_batch
from enrollment.warehouse.ledger import Ledger
from stack import cli as stack_cli
from tests.integration.conftest import claimed_batch, committed_offsets

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

LAND = """
import sys
from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import storage_client
from enrollment.core.batch import Manifest
from enrollment.core.pii import Keyring
from enrollment.ingest.land import land
manifest = Manifest.from_json(sys.argv[1])
land(KafkaSettings.from_env(), manifest, storage_client(sys.argv[2]).bucket(manifest.bucket),
     Keyring.from_env())
"""
MERGE = """
import sys
import json
from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.core.batch import Landed
from enrollment.warehouse.cycle import merge_batch
project, dataset, ops = sys.argv[2:5]
warehouse = BigQuery(bigquery_client(project), storage_client(project), project, dataset, ops)
merge_batch(warehouse, Landed(**json.loads(sys.argv[1])))
"""


def kill_during(script: str, args: list[str], delays: list[float]) -> list[str]:
    """Starts the step in its own process and SIGKILLs it after each delay; says how each ended."""
    outcomes = []
    for delay in delays:
        process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            outcomes.append(f"killed after {delay} s")
        else:
            outcomes.append(f"finished before {delay} s (exit {process.returncode})")
    return outcomes


def test_killed_land_and_warehouse_retried_lose_and_duplicate_nothing(
    stack, pipeline_config, region_topic, warehouse
):
    _, bucket, messages, manifest = claimed_batch(
        stack,
        pipeline_config,
        region_topic,
        "AMER",
        seed=5150,
        events=20_000,
        faults=0.03,
        initial_partners=50,
    )

    outcomes = kill_during(LAND, [manifest.to_json(), stack.project], [0.5, 1.5, 2.5])
    assert any(o.startswith("killed") for o in outcomes), outcomes
    landed = land(stack.kafka, manifest, bucket, Keyring.from_env())  # the retry
    assert landed.offsets == len(messages) == landed.valid + landed.quarantined + landed.duplicates
    listed = [b.name for b in bucket.list_blobs(prefix=manifest.prefix)]
    assert sorted(listed) == sorted(
        [
            manifest.valid_object,
            manifest.quarantine_object,
            manifest.raw_object,
            manifest.partners_object,
        ]
    ), "each object written once"

    outcomes = kill_during(
        MERGE,
        [
            __import__("json").dumps(landed.as_dict()),
            stack.project,
            warehouse.dataset,
            warehouse.ops_dataset,
        ],
        [1.0, 2.0, 3.0],
    )
    assert any(o.startswith("killed") for o in outcomes), outcomes
    counts = merge_batch(warehouse, landed)  # the retry
    Ledger(warehouse).record(landed, "warehouse", counts["events"], counts["seconds"])

    expected_valid = {m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"}
    events = warehouse.run(
        f"SELECT event_id, COUNT(*) AS n FROM {warehouse.table('events')} GROUP BY event_id"
    )
    assert {r["event_id"] for r in events} == expected_valid and all(r["n"] == 1 for r in events)
    assert (
        warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('quarantine')}")[0]["n"]
        == landed.quarantined + landed.duplicates
    )
    Ledger(warehouse).balance(landed.batch_id)
    leftovers = [
        t.table_id
        for t in warehouse.client.list_tables(warehouse.dataset)
        if t.table_id.startswith("_stage")
    ]
    assert leftovers == [], "staging tables of killed runs are dropped by the retry"


def test_broker_restarted_between_claim_and_land(stack, pipeline_config, region_topic):
    group, bucket, messages, manifest = claimed_batch(
        stack,
        pipeline_config,
        region_topic,
        "LATAM",
        seed=6060,
        events=3000,
        faults=0.03,
        initial_partners=30,
    )

    assert stack_cli.down(["kafka"], quiet=True)
    stack_cli.up(["kafka"], quiet=True)

    landed = land(stack.kafka, manifest, bucket, Keyring.from_env())
    assert landed.offsets == len(messages) == landed.valid + landed.quarantined + landed.duplicates
    assert sum(committed_offsets(stack.kafka, group, region_topic, 2)) == len(messages)
