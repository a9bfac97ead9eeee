"""Where monitor alerts go: always the task log, and the configured callback if any."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)


def alert_payload(context) -> dict:
    """What an alert says: where and what failed, in counts and ids of batches — the exception's
    message is the project's own (it never carries personal values or partner ids)."""
    ti = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    return {
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None),
        "map_index": getattr(ti, "map_index", None),
        "try_number": getattr(ti, "try_number", None),
        "error": type(exception).__name__ if exception is not None else None,
        "message": str(exception or "")[:2000],
    }


def on_failure(context) -> None:
    """Task failure callback of the monitor DAGs: logs the alert, then calls ``alerts.on_failure``
    with the context, which carries the curated ``alert_payload`` (send that, not the context)."""
    from enrollment.config import load_config

    payload = alert_payload(context)
    log.error(
        "ALERT %s.%s: %s", payload["dag_id"] or "?", payload["task_id"] or "?", payload["message"]
    )
    target = load_config().alert_callback
    if target:
        module, _, name = target.partition(":")
        getattr(importlib.import_module(module), name)(context | {"alert_payload": payload})
