"""The backlog trigger: wakes a region's ingest DAG when enough is pending or it waited too long.

Runs in the triggerer as an ``AssetWatcher`` (event-driven scheduling), so waiting holds no
worker slot. It compares the pipeline group's committed offsets with the partitions' ends and
reads one timestamp per lagging partition; it never consumes the data and never commits (the
land stage does, after the batch is durable). It asks over one ``BacklogWatch`` for its life (two
Kafka clients, made again only after an error), not a client per poll.

It fires once per piece of work (the committed offsets it saw); when those have not moved for
``refire_after_s`` — the run failed and gave up — it fires again, and the new run claims the
same unfinished batch (claims are idempotent), so a restart or a re-fire never makes a second batch.

The partitions watched are the cluster's (``partitions`` is the configured count, only compared).
A connection that is missing or broken never crashes the trigger (a crashed watcher would wake
nothing again): it fires one event saying so — the ingest run it wakes fails on the same
connection, red in the UI — and keeps looking for the connection until it works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

    from enrollment.clients.kafka import KafkaSettings


class BacklogTrigger(BaseEventTrigger):
    def __init__(
        self,
        region: str,
        topic: str,
        partitions: int,
        group: str,
        min_records: int,
        max_age_s: float,
        kafka_conn_id: str = "kafka_default",
        poll_s: float = 1.0,
        refire_after_s: float = 600.0,
    ):
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger is unannotated
        self.region, self.topic, self.partitions, self.group = region, topic, partitions, group
        self.min_records, self.max_age_s = min_records, max_age_s
        self.kafka_conn_id, self.poll_s, self.refire_after_s = kafka_conn_id, poll_s, refire_after_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "enrollment_airflow.triggers.BacklogTrigger",
            {
                "region": self.region,
                "topic": self.topic,
                "partitions": self.partitions,
                "group": self.group,
                "min_records": self.min_records,
                "max_age_s": self.max_age_s,
                "kafka_conn_id": self.kafka_conn_id,
                "poll_s": self.poll_s,
                "refire_after_s": self.refire_after_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from enrollment.ingest.backlog import BacklogWatch, should_fire

        watch: BacklogWatch | None = None  # one pair of Kafka clients for the trigger's life
        fired_for, fired_at = None, 0.0
        try:
            while True:
                if watch is None:
                    kafka, error = await self._kafka()
                    if kafka is None:
                        now = time.time()
                        if error != fired_for or now - fired_at >= self.refire_after_s:
                            fired_for, fired_at = error, now
                            yield TriggerEvent(  # type: ignore[no-untyped-call]  # unannotated
                                {"region": self.region, "error": error, "pending": None}
                            )
                        await asyncio.sleep(max(self.poll_s, 5.0))
                        continue
                    watch = BacklogWatch(kafka, self.group, self.topic, self.partitions)
                try:
                    backlog = await asyncio.to_thread(watch.measure, self.min_records)
                except Exception as exc:
                    self.log.warning("backlog of %s not measured: %s", self.topic, exc)
                    await asyncio.sleep(max(self.poll_s, 5.0))
                    continue
                now = time.time()
                again = backlog.fingerprint != fired_for or now - fired_at >= self.refire_after_s
                if again and should_fire(backlog, self.min_records, self.max_age_s, now):
                    fired_for, fired_at = backlog.fingerprint, now
                    self.log.info(
                        "%s: %d records pending, oldest %.1f s: waking the ingest DAG",
                        self.region,
                        backlog.pending,
                        backlog.oldest_age_s(now),
                    )
                    yield TriggerEvent(  # type: ignore[no-untyped-call]  # unannotated in Airflow
                        {
                            "region": self.region,
                            "pending": backlog.pending,
                            "oldest_age_s": round(backlog.oldest_age_s(now), 3),
                            "from_offsets": backlog.fingerprint,
                        }
                    )
                await asyncio.sleep(self.poll_s)
        finally:
            if watch is not None:
                watch.close()

    async def _kafka(self) -> tuple[KafkaSettings | None, str]:
        """The Kafka connection's settings, or None and why it is unusable (logged)."""
        from airflow.sdk import BaseHook

        from enrollment_airflow.hooks import PipelineKafkaHook

        try:
            # Read asynchronously here: the hook's own (synchronous) read would block the loop.
            conn = await BaseHook.aget_connection(self.kafka_conn_id)
            return PipelineKafkaHook(self.kafka_conn_id, conn).settings(), ""
        except Exception as exc:
            error = f"connection {self.kafka_conn_id!r} unusable: {type(exc).__name__}: {exc}"
        self.log.error(
            "%s: %s; the backlog of %s is not watched until it is fixed",
            self.region,
            error,
            self.topic,
        )
        return None, error


class PendingTrigger(BaseEventTrigger):
    """Wakes the warehouse within about ``poll_s`` of a landed batch's pending record.

    Airflow records a task's asset events only when the task ends (apache/airflow#45924), and a
    land task is a train of batches: its outlet would tell the warehouse of its first batch up to
    ``train_s`` late. The pending records are the warehouse's queue, written by every land (and
    every requeue), so a watcher of that queue wakes the writer for each batch as it lands, from
    the triggerer, holding no worker slot. One listing of ``pending/<group>/`` a poll; it fires
    when a record appears that it has not seen, and again after ``refire_after_s`` while records
    stay (a cycle that failed; the warehouse's cron catches up too)."""

    def __init__(
        self,
        bucket: str,
        group: str,
        gcp_conn_id: str = "google_cloud_default",
        poll_s: float = 1.0,
        refire_after_s: float = 600.0,
    ):
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger is unannotated
        self.bucket, self.group, self.gcp_conn_id = bucket, group, gcp_conn_id
        self.poll_s, self.refire_after_s = poll_s, refire_after_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "enrollment_airflow.triggers.PendingTrigger",
            {
                "bucket": self.bucket,
                "group": self.group,
                "gcp_conn_id": self.gcp_conn_id,
                "poll_s": self.poll_s,
                "refire_after_s": self.refire_after_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from enrollment.clients.services import storage_client
        from enrollment.ingest.pending import pending_names

        bucket = None  # one client for the trigger's life, made again after an error
        seen: frozenset[str] = frozenset()
        fired_at = 0.0
        while True:
            try:
                if bucket is None:
                    credentials, project = await self._google()
                    bucket = storage_client(project, credentials).bucket(self.bucket)
                names = await asyncio.to_thread(pending_names, bucket, self.group)
            except Exception as exc:
                self.log.warning("pending records of %s not listed: %s", self.group, exc)
                bucket = None
                await asyncio.sleep(max(self.poll_s, 5.0))
                continue
            now = time.time()
            new = names - seen
            seen = names
            if names and (new or now - fired_at >= self.refire_after_s):
                fired_at = now
                yield TriggerEvent(  # type: ignore[no-untyped-call]  # unannotated in Airflow
                    {"group": self.group, "pending": len(names), "new": len(new)}
                )
            await asyncio.sleep(self.poll_s)

    async def _google(self) -> tuple[Credentials | None, str]:
        """The Google connection's credentials and project, as the tasks resolve them."""
        from airflow.sdk import BaseHook

        from enrollment_airflow.connections import google_access

        # Read asynchronously here: the hook's own (synchronous) read would block the loop.
        conn = await BaseHook.aget_connection(self.gcp_conn_id)
        return await asyncio.to_thread(google_access, self.gcp_conn_id, conn)
