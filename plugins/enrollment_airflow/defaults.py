"""Defaults every DAG of the project shares, and the tags the UI filters by."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Any

# The one slot every task that writes the warehouse tables runs in (the warehouse cycle, a
# replay's warehouse stage): never two writers of a table at once, whatever runs. Pools live with
# the configuration (`pools:`); the local stack and docker-compose import them (enrollment.pools).
from enrollment.config import WAREHOUSE_POOL, load_config
from enrollment_airflow.alerts import LATE_GATES, note_failure, on_dag_failure

__all__ = [
    "DAG_DEFAULTS",
    "DEFAULT_ARGS",
    "LATE_GATES",
    "OWNER",
    "TASK_TIMEOUTS",
    "WAREHOUSE_POOL",
    "Tag",
    "default_args",
    "load_config",
    "markdown_table",
]

OWNER = "enrollment-data"


class Tag(StrEnum):
    """Tag families, so the UI's filters stay consistent across DAGs."""

    INGEST = "ingest"
    SYNC = "sync"
    OPS = "ops"
    SMOKE = "smoke"


# Every DAG's constructor takes these: a failed run always alerts (enrollment_airflow.alerts).
DAG_DEFAULTS: dict[str, Any] = {"on_failure_callback": on_dag_failure}

# How long a task of each pool may run before it is killed as hung (execution_timeout); tasks
# whose work is bounded otherwise say so where they are declared.
TASK_TIMEOUTS: dict[str, timedelta] = {
    # The line's tasks are small and frequent: a quarter of an hour is a hang, not work.
    "ingest": timedelta(minutes=15),
    # A sink run is bounded by max_batches per region; each write rides out throttling.
    "sinks": timedelta(minutes=45),
    # Round trips and reads of offsets: anything past 5 minutes is a service not answering.
    "monitors": timedelta(minutes=5),
    # A day of a region, a replay or an erasure step: an hour, then the slot must come free.
    "maintenance": timedelta(minutes=60),
}

DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    # Leaves the failure's curated facts for the run's alert; it alerts nothing itself.
    "on_failure_callback": note_failure,
}


def default_args(pool: str) -> dict[str, Any]:
    """``DEFAULT_ARGS`` for the DAGs whose tasks run in ``pool`` (``pools:`` of the
    configuration): the pool, its priority and its Celery queue, so the line is never starved at
    peak, and the pool's execution timeout."""
    return (
        DEFAULT_ARGS
        | {"execution_timeout": TASK_TIMEOUTS[pool]}
        | load_config().pools[pool].task_args()
    )


def markdown_table(header: tuple[str, ...], *rows: tuple[str, ...]) -> str:
    """A Markdown table for ``doc_md``: cells stay readable in the source, rows on one line."""
    lines = [header, tuple("---" for _ in header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
