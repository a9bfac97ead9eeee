"""Trains on the real broker and bucket: one task lands batch after batch, each committed on its
own; a train SIGKILLed between any two steps of its first or second batch, then run again, loses
nothing and duplicates nothing — read back from the landed objects, the committed offsets and the
warehouse."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import uuid

import pyarrow.parquet as pq
import pytest

from enrollment.clients.services import storage_client
from enrollment.config import Region
from enrollment.core.pii import Keyring
from enrollment.ingest.pending import pending_batches
from enrollment.ingest.train import STEPS, TrainBounds, land_train
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.cycle import run_cycle
from enrollment.warehouse.ledger import Ledger
from tests.integration.conftest import committed_offsets, produce

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]

MAX_BATCH = 300  # offsets a batch: 2,400 events make a train of 8 batches or more

TRAIN = """
import os, signal, sys
from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import storage_client
from enrollment.core.pii import Keyring
from enrollment.config import Region
from enrollment.ingest.train import TrainBounds, land_train
project, bucket, group, topic, batch, step = sys.argv[1:7]
region = Region(code="AMER", topic=topic, partitions=2, countries=("US",), min_records=1,
                max_age_s=0.1)

def on_step(index, name, batch_id):
    if (index, name) == (int(batch), step):
        os.kill(os.getpid(), signal.SIGKILL)

land_train(KafkaSettings.from_env(), group, region, storage_client(project).bucket(bucket),
           Keyring.from_env(), TrainBounds(120, 40, 1.0), max_batch=int(sys.argv[7]),
           on_step=on_step)
"""


def region_of(topic: str) -> Region:
    """A region on the test's topic that finds every pending record worth a batch at once (as
    the script above)."""
    return Region(
        code="AMER", topic=topic, partitions=2, countries=("US",), min_records=1, max_age_s=0.1
    )


def _train(stack, bucket, group: str, topic: str, on_step=None):
    """A train on the test's topic, in this process, as the land task runs it."""
    return land_train(
        stack.kafka,
        group,
        region_of(topic),
        bucket,
        Keyring.from_env(),
        TrainBounds(max_s=120, max_batches=40, linger_s=1.0),
        max_batch=MAX_BATCH,
        on_step=on_step,
    )


def _landed_offsets(bucket, group: str) -> list[tuple[int, int]]:
    """(partition, offset) of every message in the pending batches' valid and quarantine
    objects."""
    seen = []
    for landed in pending_batches(bucket, group):
        for uri in (landed.valid_uri, landed.quarantine_uri):
            name = uri.split(f"gs://{bucket.name}/", 1)[1]
            table = pq.read_table(
                io.BytesIO(bucket.blob(name).download_as_bytes()),
                columns=["kafka_partition", "kafka_offset"],
            )
            seen += zip(
                table.column("kafka_partition").to_pylist(),
                table.column("kafka_offset").to_pylist(),
                strict=True,
            )
    return seen


def test_a_train_lands_batch_after_batch_each_committed(stack, pipeline_config, region_topic):
    group = f"test-train-{uuid.uuid4().hex[:8]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    produce(stack.kafka, Simulator(seed=77, initial_partners=30).take(1000), region_topic)
    heard: list[tuple[int, str]] = []
    train = _train(stack, bucket, group, region_topic, lambda i, step, _: heard.append((i, step)))
    assert len(train.landed) >= 4 and train.ended == "drained", train.as_dict() | {"batches": 0}
    assert heard == [(i, s) for i in range(len(train.landed)) for s in STEPS]
    assert sum(b.offsets for b in train.landed) == 1000
    assert committed_offsets(stack.kafka, group, region_topic, 2) == [
        sum(1 for p, _ in _landed_offsets(bucket, group) if p == part) for part in (0, 1)
    ], "every batch committed up to where the landed objects end"
    assert sorted(b.batch_id for b in pending_batches(bucket, group)) == sorted(
        b.batch_id for b in train.landed
    ), "each batch recorded pending on its own"


@pytest.mark.slow  # ten trains, each a fresh interpreter killed at a chosen step
def test_a_train_killed_between_any_two_steps_loses_and_duplicates_nothing(
    stack, pipeline_config, region_topic, warehouse
):
    group = f"test-train-{uuid.uuid4().hex[:8]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    messages = Simulator(seed=4242, faults=FaultRates.mix(0.03), initial_partners=40).take(2400)
    produce(stack.kafka, messages, region_topic)

    for batch in (0, 1):  # the first batch of a train, and one after another landed
        for step in STEPS:
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    TRAIN,
                    stack.project,
                    bucket.name,
                    group,
                    region_topic,
                    str(batch),
                    step,
                    str(MAX_BATCH),
                ],
                env=os.environ.copy(),
                capture_output=True,
                timeout=300,
            )
            assert done.returncode == -signal.SIGKILL, (batch, step, done.stderr[-2000:])

    # The run after the last kill finishes the train and whatever was left.
    _train(stack, bucket, group, region_topic)
    landed = _landed_offsets(bucket, group)
    assert len(landed) == len(set(landed)) == len(messages), "every offset landed exactly once"
    assert committed_offsets(stack.kafka, group, region_topic, 2) == [
        sum(1 for p, _ in landed if p == part) for part in (0, 1)
    ]

    batches = pending_batches(bucket, group)
    result = run_cycle(warehouse, batches, pipeline_config.warehouse)
    assert not result.failed and not result.set_aside, result.as_dict()
    expected_valid = {m.expected["event_id"] for m in messages if m.expected["outcome"] == "valid"}
    events = warehouse.run(
        f"SELECT event_id, COUNT(*) AS n FROM {warehouse.table('events')} GROUP BY event_id"
    )
    assert {r["event_id"] for r in events} == expected_valid and all(r["n"] == 1 for r in events)
    for landed_batch in batches:
        assert {"land", "warehouse"} <= set(Ledger(warehouse).balance(landed_batch.batch_id))
