"""One handle per task on everything the pipeline talks to, built from the Airflow connections.

A task takes ``Runtime.for_task(config)`` once and reads its clients as properties: each is made
on first use and kept, so a task reads each connection at most once and pays only for the
clients it touches. Secrets stay inside the clients: nothing here is returned to XCom.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from enrollment.config import PipelineConfig, load_config

if TYPE_CHECKING:
    # google-cloud-storage ships no py.typed (googleapis/python-storage#393).
    from google.cloud.storage import Bucket
    from google.cloud.storage import Client as StorageClient

    from enrollment.clients.bigquery import BigQuery
    from enrollment.clients.kafka import KafkaSettings
    from enrollment.clients.services import Endpoints
    from enrollment.core.pii import Keyring
    from enrollment.sinks.base import Sink
    from enrollment.sync.run import SyncRun

# The runtime of the task running in this process, with the task it belongs to: a failed task's
# note (enrollment_airflow.alerts) reads the batches it was working on from it.
_current: tuple[str | None, Runtime] | None = None


class Runtime:
    """The clients of one task: Kafka, Cloud Storage, BigQuery, the sinks, the tokenising key."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.batch_ids: list[str] = []  # what the task works on, for its failure alert
        self._sinks: dict[str, Sink] = {}

    @classmethod
    def for_task(cls, config: PipelineConfig | None = None) -> Runtime:
        """The running task's handle; by default on the configuration in force when it runs."""
        global _current
        rt = cls(config or load_config())
        _current = (_running_task(), rt)
        return rt

    @cached_property
    def endpoints(self) -> Endpoints:
        from enrollment_airflow.connections import endpoints_from_connections

        return endpoints_from_connections()

    @property
    def project(self) -> str:
        return self.endpoints.project

    @property
    def kafka(self) -> KafkaSettings:
        return self.endpoints.kafka

    @cached_property
    def keyring(self) -> Keyring:
        from enrollment_airflow.connections import keyring_from_connections

        return keyring_from_connections()

    @cached_property
    def storage(self) -> StorageClient:
        from enrollment.clients.services import storage_client

        return storage_client(self.project, self.endpoints.credentials)

    @cached_property
    def bucket(self) -> Bucket:
        """The landing bucket."""
        return self.storage.bucket(self.config.landing_bucket)

    @cached_property
    def warehouse(self) -> BigQuery:
        from enrollment.clients.bigquery import BigQuery
        from enrollment.clients.services import bigquery_client

        return BigQuery(
            client=bigquery_client(self.project, self.endpoints.credentials),
            storage=self.storage,
            project=self.project,
            dataset=self.config.warehouse_dataset,
            ops_dataset=self.config.ops_dataset,
            settings=self.config.warehouse,
        )

    @cached_property
    def sync_run(self) -> SyncRun:
        """Sink syncs against the warehouse and the landing bucket."""
        from enrollment.sync.run import SyncRun

        return SyncRun(self.warehouse, self.bucket, keys=lambda: self.keyring)

    def sink(self, name: str) -> Sink:
        """The configured sink ``name`` (made once per task; ``sinks`` closes it)."""
        if name not in self._sinks:
            from enrollment.sinks import build_sink

            self._sinks[name] = build_sink(name, self.config.sinks[name], self.endpoints)
        return self._sinks[name]

    @contextmanager
    def sinks(self, *names: str) -> Iterator[dict[str, Sink]]:
        """The sinks named (every configured sink when none is), closed on the way out."""
        chosen = list(names or self.config.sinks)
        try:
            yield {name: self.sink(name) for name in chosen}
        finally:
            for name in chosen:
                if name in self._sinks:
                    self._sinks.pop(name).close()

    def require(self, services: Iterable[str]) -> None:
        """Fail within seconds naming a service that does not answer, before any work."""
        from enrollment.ops.health import require

        require(list(services), self.endpoints, self.config)

    def working_on(self, batch_ids: Iterable[str]) -> None:
        """The batches this task works on: named in its alert if it fails (ids only)."""
        self.batch_ids.extend(b for b in batch_ids if b not in self.batch_ids)


def batches_of(task: str | None) -> list[str]:
    """The batch ids the runtime of ``task`` (``dag.task.run.map_index``) noted, if it made one."""
    if _current is None or task is None or _current[0] != task:
        return []
    return list(_current[1].batch_ids)


def task_key(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    return f"{dag_id}.{task_id}.{run_id}.{map_index if map_index is not None else -1}"


def _running_task() -> str | None:
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # not inside a task (a tool, a test): nothing to alert about
        return None
    return task_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
