"""Every failure reaches someone: one alert per failed run of any DAG, with a curated payload.

Two halves, because the exception exists only in the task's process and only the scheduler knows
that the run failed:

1. ``note_failure``, the failure callback of every task (``defaults.default_args``), leaves the
   failure's facts in the task's XCom ``alert``: its kind, its reason, the batches it worked on.
   It alerts nothing.
2. ``on_dag_failure``, the failure callback of every DAG (``defaults.DAG_DEFAULTS``), reads the
   run's failed tasks and their notes, and ``send``s one payload: kind, DAG, run, tasks, region,
   batches, reason, log URL — ids and counts, never personal data.

``send`` logs one line, ``ALERT <dag>.<tasks> <kind>: <reason>``, at ERROR, then calls the
configured ``alerts.on_failure`` ("module:function") with the payload. Kinds: ``late`` when every
failed task is a timeliness gate that gave its verdict (``LATE_GATES``, raising
``Late``): the data is in, but late; ``broken`` for anything else, and for a batch set aside.

In production the DAG callback runs in the DAG processor (Task SDK calls, no database); under
``dag.test()`` in the test's process (the metadata database).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Literal

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

Kind = Literal["late", "broken"]
NOTE_KEY = "alert"  # the XCom a failed task leaves for its run's alert
REASON_MAX = 600  # characters: a pager line, not a log
BATCHES_MAX = 20
OWN_PACKAGES = ("enrollment", "enrollment_airflow")


# The timeliness gates, (DAG id, task id): when they alone fail, raising alerts.Late, the run's
# alert is "late" (the data is in, behind its target); any other failure is "broken".
LATE_GATES: frozenset[tuple[str, str]] = frozenset(
    {
        ("warehouse", "freshness"),  # a cycle's batch queryable later than freshness_sla_s
        ("canary", "trace"),  # a canary not visible everywhere within canary.within_s
        ("lag_monitor", "measure"),  # a backlog growing, too old, or a sink too far behind
    }
)


class Late(AirflowFailException):
    """A timeliness gate's verdict: the data is in, but late. Alerted as ``late``, not retried
    (a retry could only find it later)."""


def note_failure(context: Context) -> None:
    """Task failure callback: the failure's curated facts, in XCom for the DAG's alert."""
    try:
        from enrollment_airflow.runtime import batches_of, task_key

        ti = context["ti"]
        exc = context.get("exception")
        key = task_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        ti.xcom_push(
            key=NOTE_KEY,
            value={
                "kind": _kind_of(ti.dag_id, ti.task_id, exc),
                "reason": reason_of(exc),
                "batch_ids": batches_of(key)[:BATCHES_MAX],
                "label": getattr(ti, "rendered_map_index", None),
            },
        )
    except Exception:  # the run's alert still goes out, with less to say
        log.exception("the failure was not noted for the alert")


def on_dag_failure(context: Context) -> None:
    """DAG failure callback (every DAG): one alert for the failed run."""
    send(failure_payload(context))


def send(payload: dict[str, Any]) -> None:
    """Log the alert line, then hand the payload to the configured ``alerts.on_failure``."""
    from enrollment.config import load_config

    tasks = ",".join(payload["task_ids"]) or "?"
    log.error("ALERT %s.%s %s: %s", payload["dag_id"], tasks, payload["kind"], payload["reason"])
    target = load_config().alert_callback
    if target:
        module, _, name = target.partition(":")
        getattr(importlib.import_module(module), name)(payload)


def set_aside(context: Context, message: str) -> None:
    """A batch set aside while the run goes on (sync): alerted at once, as ``broken`` — someone
    must repair the batch, though nothing failed."""
    ti = context["ti"]
    send(
        {
            "kind": "broken",
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_ids": [ti.task_id],
            "region": None,
            "batch_ids": [],
            "reason": _cap(message),
            "log_url": ti.log_url,
        }
    )


def failure_payload(context: Context) -> dict[str, Any]:
    """What the alert of a failed run says: where, what kind, which batches, why."""
    dag = context.get("dag")
    dag_id = str(getattr(dag, "dag_id", "?"))
    run_id = str(context.get("run_id") or "")
    ti = context.get("ti")
    failed = _failed_tasks(dag_id, run_id, set(getattr(dag, "task_ids", ())))
    if not failed and ti is not None:
        failed = [(ti.task_id, ti.map_index if ti.map_index is not None else -1)]
    notes = [(task, _note(dag_id, run_id, task, index)) for task, index in failed]
    late = bool(notes) and all(n is not None and n.get("kind") == "late" for _, n in notes)
    reasons = [
        f"{task}{_bracket(n.get('label') if n else None)}: "
        + (n["reason"] if n else "failed without a note (killed, or lost by its worker)")
        for task, n in notes
    ] or [f"the run failed: {context.get('reason') or 'no task failed'}"]
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    labels = {str(n["label"]) for _, n in notes if n and n.get("label")}
    batch_ids = sorted({b for _, n in notes if n for b in n.get("batch_ids") or []})
    return {
        "kind": "late" if late else "broken",
        "dag_id": dag_id,
        "run_id": run_id,
        "task_ids": sorted({task for task, _ in failed}),
        "region": _region(dag_id, labels, conf),
        "batch_ids": batch_ids[:BATCHES_MAX],
        "reason": _cap("; ".join(reasons)),
        "log_url": ti.log_url if ti is not None and failed else None,
    }


def reason_of(exc: BaseException | str | None) -> str:
    """``Class: message`` for what the project raised (its messages are ids and counts by
    design); only the class for what a library raised — its message may quote anything."""
    from airflow.sdk.exceptions import AirflowTaskTimeout

    if exc is None:
        return "no exception (killed, or marked failed)"
    if isinstance(exc, str):
        return _cap(exc)
    name = type(exc).__name__
    if isinstance(exc, AirflowTaskTimeout) or _raised_by_project(exc):
        return _cap(f"{name}: {exc}")
    return f"{name} (raised outside the project's code: its message is in the task log only)"


def _kind_of(dag_id: str, task_id: str, exc: BaseException | str | None) -> Kind:
    return "late" if isinstance(exc, Late) and (dag_id, task_id) in LATE_GATES else "broken"


def _raised_by_project(exc: BaseException) -> bool:
    if type(exc).__module__.split(".")[0] in OWN_PACKAGES:
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.split(".")[0] in OWN_PACKAGES or _in_dags_folder(tb.tb_frame.f_code.co_filename)


def _in_dags_folder(filename: str) -> bool:
    from pathlib import Path

    from airflow.configuration import conf

    folder = Path(conf.get("core", "dags_folder")).resolve()
    return folder in Path(filename).resolve().parents


def _failed_tasks(dag_id: str, run_id: str, task_ids: set[str]) -> list[tuple[str, int]]:
    """(task id, map index) of the run's failed task instances."""
    if _in_task_sdk():
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id])
        return failed_in(states.get(run_id) or {}, task_ids)
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.state == "failed",
            )
        ).all()
    return sorted((str(task), int(index)) for task, index in rows)


def failed_in(states: dict[str, Any], task_ids: set[str]) -> list[tuple[str, int]]:
    """(task id, map index) of the failed instances in the Task SDK's task states of a run, where
    a mapped instance is keyed ``<task>_<map index>``."""
    failed = []
    for key, state in states.items():
        if state != "failed":
            continue
        task, _, index = key.rpartition("_")
        mapped = key not in task_ids and task in task_ids and index.isdigit()
        failed.append((task, int(index)) if mapped else (key, -1))
    return sorted(failed)


def _note(dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any] | None:
    # Written by the task process in its failure callback, moments after its state; the DAG
    # processor parses the DAG file before it runs this, far longer than that takes.
    if _in_task_sdk():
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_one(
            key=NOTE_KEY, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index
        )
    else:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = session.scalars(
                XComModel.get_many(
                    run_id=run_id,
                    key=NOTE_KEY,
                    dag_ids=dag_id,
                    task_ids=task_id,
                    map_indexes=map_index,
                )
            ).first()
            value = XComModel.deserialize_value(row) if row is not None else None
    return value if isinstance(value, dict) else None


def _in_task_sdk() -> bool:
    """Whether Airflow's Task SDK serves this process (a task, the DAG processor), or only the
    metadata database does (``dag.test()`` between tasks)."""
    from airflow.sdk.execution_time import task_runner

    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def _region(dag_id: str, labels: set[str], conf: dict[str, Any]) -> str | None:
    """The region(s) concerned: the DAG's own, the failed mapped tasks', or the run's request."""
    from enrollment.config import load_config

    codes = [r.code for r in load_config().regions]
    asked = conf.get("regions") or conf.get("region") or []
    asked = [asked] if isinstance(asked, str) else list(asked)
    for found in (
        [c for c in codes if dag_id == f"ingest_{c.lower()}"],
        [c for c in codes if c in labels],
        [c for c in codes if c in asked],
    ):
        if found:
            return ",".join(found)
    return None


def _bracket(label: object) -> str:
    return f"[{label}]" if label else ""


def _cap(text: str) -> str:
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"
