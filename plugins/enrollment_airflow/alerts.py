"""Where monitor alerts go: always the task log, and the configured callback if any."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)


def on_failure(context) -> None:
    """Task failure callback of the monitor DAGs: logs the alert, then calls ``alerts.on_failure``."""
    from enrollment.config import load_config

    ti = context.get("ti") or context.get("task_instance")
    message = str(context.get("exception") or "")
    log.error("ALERT %s.%s: %s", getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?"), message)
    target = load_config().alert_callback
    if target:
        module, _, name = target.partition(":")
        getattr(importlib.import_module(module), name)(context)
