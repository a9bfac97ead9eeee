"""The pending trigger against the real bucket: it wakes the warehouse for a batch's pending
record — a train's batch, not its end — once per record, not for records cleared, and the running
Airflow's triggerer starts the warehouse through it."""

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Producer

from enrollment.clients.services import storage_client
from enrollment.core.layout import pending_object
from enrollment_airflow.triggers import PendingTrigger
from tests.integration.airflow.triggering import new_runs, next_event, run_trigger

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


def test_the_trigger_fires_for_each_new_pending_record_within_seconds(stack, pipeline_config):
    group = f"test-pending-{uuid.uuid4().hex[:8]}"
    bucket = storage_client(stack.project).bucket(pipeline_config.landing_bucket)
    trigger = PendingTrigger(bucket=bucket.name, group=group, poll_s=0.2)
    records = [bucket.blob(pending_object(group, "AMER", f"b{i}")) for i in range(2)]

    async def scenario():
        events: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(run_trigger(trigger, events))
        try:
            assert await next_event(events, 2.0) is None, "nothing pending: nothing fires"
            await asyncio.to_thread(records[0].upload_from_string, "{}")
            first = await next_event(events, 10)  # how soon is the load test's figure, not this
            assert first is not None and first.payload == {"group": group, "pending": 1, "new": 1}
            assert await next_event(events, 1.5) is None, "the same record fires once"
            await asyncio.to_thread(records[1].upload_from_string, "{}")
            second = await next_event(events, 10)
            assert second is not None and second.payload["pending"] == 2
            assert second.payload["new"] == 1
            for r in records:
                await asyncio.to_thread(r.delete)
            assert await next_event(events, 1.5) is None, "cleared records wake nothing"
            assert not pump.done()
        finally:
            pump.cancel()

    try:
        asyncio.run(scenario())
    finally:
        for r in records:
            if r.exists():
                r.delete()


def test_running_airflow_wakes_the_warehouse_through_the_pending_watcher(stack, pipeline_config):
    from stack.airflow_client import AirflowClient

    client = AirflowClient(stack)
    for dag_id in ("ingest_latam", "warehouse"):
        client.wait_for_dag(dag_id, timeout_s=120)
    before = {r["dag_run_id"] for r in new_runs(client, "warehouse", set())}
    for dag_id in ("ingest_latam", "warehouse"):
        client.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    try:
        producer = Producer(stack.kafka.producer())
        topic = pipeline_config.region("LATAM").topic
        for i in range(5):  # not JSON events: quarantined, still a batch to warehouse
            producer.produce(topic, key=f"k{i}".encode(), value=b"x")
        assert producer.flush(10) == 0
        deadline, woken = time.monotonic() + 240, None
        while time.monotonic() < deadline and woken is None:
            for run in new_runs(client, "warehouse", before):
                if run["run_type"] != "asset_triggered" or run["state"] not in (
                    "success",
                    "failed",
                ):
                    continue
                events = client.http.get(
                    f"/dags/warehouse/dagRuns/{run['dag_run_id']}/upstreamAssetEvents"
                ).json()["asset_events"]
                if any(e["name"] == "pending_batches" for e in events):
                    woken = run
            time.sleep(2)
        assert woken is not None, "no warehouse run was woken by the pending watcher"
        assert woken["state"] == "success", woken
    finally:
        for dag_id in ("ingest_latam", "warehouse"):
            client.http.patch(f"/dags/{dag_id}", json={"is_paused": True})
