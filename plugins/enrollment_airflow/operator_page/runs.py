"""What Airflow's metadata DB says about the pipeline's DAGs, for the operator's page: each DAG's
last finished run (and whether its failure is a stage that broke or a gate that measured
lateness), which ingest and warehouse runs landed which batch (their XCom carries the batch id),
and the last re-processing runs with what they counted.

Read in the API server's process (it holds the metadata DB's session); small, bounded queries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from enrollment.config import PipelineConfig
from enrollment.view.reader import BROKEN, LATE, OK
from enrollment_airflow.alerts import LATE_GATES

MONITOR_DAGS = (
    "lag_monitor",
    "canary",
    "environment_health",
    "reconciliation",
    "requeue_quarantine",
)


def run_url(dag_id: str, run_id: str) -> str:
    """The run in Airflow 3's UI (route ``dags/:dagId/runs/:runId``)."""
    from urllib.parse import quote

    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def pipeline_dag_ids(config: PipelineConfig) -> list[str]:
    return (
        [f"ingest_{r.code.lower()}" for r in config.regions]
        + ["warehouse"]
        + [f"sync_{s}" for s in config.sinks]
        + list(MONITOR_DAGS)
    )


def failure_status(dag_id: str, failed_tasks: list[str]) -> str:
    """A failed run: late when only gates that measure lateness failed (``LATE_GATES``), broken
    otherwise. The run's alert also asks the gate for its verdict; this page has the tasks only."""
    if failed_tasks and all((dag_id, task) in LATE_GATES for task in failed_tasks):
        return LATE
    return BROKEN


def _value(raw: object) -> Any:
    if isinstance(raw, (bytes, str)):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


def _batches(value: Any) -> list[dict[str, Any]]:
    """The batches a ``land`` train or a ``cycle`` returned (``batches``), or the one batch an
    ingest run returned before trains."""
    if not isinstance(value, dict):
        return []
    listed = value.get("batches") if "batches" in value else [value]
    return [b for b in listed or [] if isinstance(b, dict) and b.get("batch_id")]


def dag_runs(config: PipelineConfig, window_hours: float = 24) -> dict[str, Any]:
    """Per DAG: its last finished run in the window with state, failed tasks, status and link."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    ids = pipeline_dag_ids(config)
    since = datetime.now(UTC) - timedelta(hours=window_hours)
    out: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        rows = session.execute(
            select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date)
            .where(
                DagRun.dag_id.in_(ids),
                DagRun.state.in_(["success", "failed"]),
                DagRun.end_date >= since,
            )
            .order_by(DagRun.end_date.desc())
            .limit(2000)
        ).all()
        for r in rows:
            out.setdefault(
                r.dag_id,
                {
                    "dag_id": r.dag_id,
                    "run_id": r.run_id,
                    "state": str(r.state.value if hasattr(r.state, "value") else r.state),
                    "end_date": r.end_date.isoformat() if r.end_date else None,
                    "url": run_url(r.dag_id, r.run_id),
                },
            )
        failed = [(d["dag_id"], d["run_id"]) for d in out.values() if d["state"] == "failed"]
        tasks: dict[tuple[str, str], list[str]] = {}
        if failed:
            for t in session.execute(
                select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id).where(
                    TaskInstance.dag_id.in_({d for d, _ in failed}),
                    TaskInstance.run_id.in_({r for _, r in failed}),
                    TaskInstance.state.in_(["failed", "upstream_failed"]),
                )
            ).all():
                tasks.setdefault((t.dag_id, t.run_id), []).append(t.task_id)
    for d in out.values():
        d["failed_tasks"] = sorted(tasks.get((d["dag_id"], d["run_id"]), []))
        d["status"] = (
            OK if d["state"] == "success" else failure_status(d["dag_id"], d["failed_tasks"])
        )
    return {
        "source": "airflow",
        "dags": [
            out.get(i)
            or {"dag_id": i, "run_id": None, "state": None, "status": None, "failed_tasks": []}
            for i in ids
        ],
    }


def batch_runs(config: PipelineConfig, limit: int = 100) -> dict[str, dict[str, Any]]:
    """batch id → the ingest run that landed it and the warehouse run that wrote it (from their
    return values in XCom: ``land`` and ``cycle`` return their batches; a train carries up to
    ``train_batches``, so ``limit`` trains cover thousands)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    ingest = [f"ingest_{r.code.lower()}" for r in config.regions]
    out: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        land = session.execute(
            select(XComModel.dag_id, XComModel.run_id, XComModel.value)
            .where(
                XComModel.dag_id.in_(ingest),
                XComModel.task_id == "land",
                XComModel.key == "return_value",
            )
            .order_by(XComModel.timestamp.desc())
            .limit(limit)
        ).all()
        cycles = session.execute(
            select(XComModel.dag_id, XComModel.run_id, XComModel.value)
            .where(
                XComModel.dag_id == "warehouse",
                XComModel.task_id == "cycle",
                XComModel.key == "return_value",
            )
            .order_by(XComModel.timestamp.desc())
            .limit(50)
        ).all()
    for r in land:
        for b in _batches(_value(r.value)):
            out.setdefault(b["batch_id"], {})["land"] = {
                "dag_id": r.dag_id,
                "run_id": r.run_id,
                "url": run_url(r.dag_id, r.run_id),
            }
    for r in cycles:
        for b in _batches(_value(r.value)):
            out.setdefault(b["batch_id"], {}).setdefault(
                "warehouse",
                {"dag_id": r.dag_id, "run_id": r.run_id, "url": run_url(r.dag_id, r.run_id)},
            )
    return out


REQUEUE_DAG = "requeue_quarantine"


def requeue_runs(limit: int = 5) -> dict[str, Any]:
    """The last runs of ``requeue_quarantine``, newest first: state, the conf they were started
    with and their result (the ``report`` task's counts by region and reason: no personal data)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.execute(
            select(DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date, DagRun.conf)
            .where(DagRun.dag_id == REQUEUE_DAG)
            .order_by(DagRun.id.desc())
            .limit(limit)
        ).all()
        results = {
            r.run_id: _value(r.value)
            for r in session.execute(
                select(XComModel.run_id, XComModel.value).where(
                    XComModel.dag_id == REQUEUE_DAG,
                    XComModel.task_id == "report",
                    XComModel.key == "return_value",
                    XComModel.run_id.in_([r.run_id for r in runs]),
                )
            ).all()
        }
    out = []
    for r in runs:
        conf = r.conf if isinstance(r.conf, dict) else {}
        result = results.get(r.run_id) if isinstance(results.get(r.run_id), dict) else None
        out.append(
            {
                "run_id": r.run_id,
                "url": run_url(REQUEUE_DAG, r.run_id),
                "state": str(r.state.value if hasattr(r.state, "value") else r.state),
                "started": r.start_date.isoformat() if r.start_date else None,
                "region": conf.get("region", "ALL"),
                "reasons": conf.get("reasons") or [],
                "dry_run": conf.get("dry_run", True) is not False,
                "total": (result or {}).get("total"),
                "by_reason": {
                    region: v.get("by_reason", {})
                    for region, v in ((result or {}).get("regions") or {}).items()
                },
            }
        )
    return {"source": "airflow", "runs": out}
