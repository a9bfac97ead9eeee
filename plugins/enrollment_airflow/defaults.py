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


DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}
