"""The page's reads, cached: one read per key per period, whatever the number of callers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from enrollment.clients.bigquery import BigQuery
    from enrollment.clients.kafka import KafkaSettings
    from enrollment.config import PipelineConfig

T = TypeVar("T")
CACHE_S = 10.0
CLIENTS_S = 300.0


# -- data, cached ---------------------------------------------------------------------------
_locks_guard = threading.Lock()
_locks: dict[tuple[Any, ...], threading.Lock] = {}
_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}


def cached(key: tuple[Any, ...], seconds: float, make: Callable[[], T]) -> T:
    """``make()`` at most once per ``seconds`` per key, whatever the number of callers: the others
    wait for that one and share its result (one key's slow read never holds another key)."""
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        hit = _cache.get(key)
        if hit and time.monotonic() - hit[0] < seconds:
            return cast("T", hit[1])
        value = make()
        _cache[key] = (time.monotonic(), value)
    if len(_cache) > 100:  # windows are the caller's choice: forget what expired
        with _locks_guard:
            for old in [
                k for k, (at, _) in list(_cache.items()) if time.monotonic() - at > CLIENTS_S
            ]:
                _cache.pop(old, None)
                _locks.pop(old, None)
    return value


def clients() -> tuple[PipelineConfig, BigQuery, KafkaSettings]:
    """The pipeline configuration, its warehouse and Kafka settings, from the Airflow connections
    the DAGs use."""

    def make() -> tuple[PipelineConfig, BigQuery, KafkaSettings]:
        from enrollment.config import load_config
        from enrollment_airflow.runtime import Runtime

        rt = Runtime(load_config())  # the page's own handle, not a task's
        return rt.config, rt.warehouse, rt.kafka

    return cached(("clients",), CLIENTS_S, make)
