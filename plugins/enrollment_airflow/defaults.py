"""Defaults every DAG of the project shares, and the tags the UI filters by."""

from __future__ import annotations

from datetime import timedelta
from enum import Enum

OWNER = "enrollment-data"


class Tag(str, Enum):
    """Tag families, so the UI's filters stay consistent across DAGs."""

    INGEST = "ingest"
    SYNC = "sync"
    OPS = "ops"
    SMOKE = "smoke"

    def __str__(self) -> str:
        return self.value


# The one slot every task that writes the warehouse tables runs in (the warehouse cycle, a
# replay's warehouse stage): never two writers of a table at once, whatever runs. Pools live with
# the configuration (`pools:`); the local stack and docker-compose import them (enrollment.pools).
from enrollment.config import WAREHOUSE_POOL, load_config  # noqa: E402,F401

DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


def default_args(pool: str) -> dict:
    """``DEFAULT_ARGS`` for the DAGs whose tasks run in ``pool`` (``pools:`` of the configuration):
    the pool, its priority and its Celery queue, so the line is never starved at peak."""
    return DEFAULT_ARGS | load_config().pools[pool].task_args()
