"""The Celery tier: the same running stack, its Airflow switched to the CeleryExecutor (Redis
broker, the configured workers as processes of their own) for these tests, and switched back
after them. The root conftest runs this tier last, so the rest of the suite runs on the stack's
own executor and pays for the switch once."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from stack import cli as stack_cli
from stack import config as stack_config
from stack.airflow_client import AirflowClient
from stack.services import Airflow, CeleryWorker, Redis, stack_services
from tests.conftest import STOPPED_AT_THE_END


@pytest.fixture(scope="session")
def celery_stack(stack):
    before = stack_config.load().executor
    previous_env = os.environ.get("STACK_EXECUTOR")
    os.environ["STACK_EXECUTOR"] = "celery"
    # A worker killed on purpose: its task retried after 45 s without heartbeat, not 120 (a live
    # task heartbeats every 5 s).
    os.environ["STACK_HEARTBEAT_TIMEOUT_S"] = "45"
    try:
        stack_cli.up(quiet=True)
        cfg = stack_config.load()
        assert cfg.celery
        yield cfg
    finally:
        os.environ["STACK_EXECUTOR"] = before
        os.environ.pop("STACK_HEARTBEAT_TIMEOUT_S", None)
        if before != "celery":
            # As found: the broker and workers stopped, Airflow
            # restarted on its own executor (when it runs).
            cfg = stack_config.load()
            stack_cli.down(
                [
                    s.name
                    for s in stack_services(cfg, every=True)
                    if isinstance(s, (CeleryWorker, Redis))
                ],
                quiet=True,
            )
            # (Not when the session stops it next: a restart would cost a minute for nothing.)
            if stack_cli._pgid(Airflow(cfg)) is not None and Airflow.name not in STOPPED_AT_THE_END:
                stack_cli.up(["airflow"], quiet=True)
            stack_config.load().save()
        if previous_env is None:
            os.environ.pop("STACK_EXECUTOR", None)
        else:
            os.environ["STACK_EXECUTOR"] = previous_env


@pytest.fixture(scope="session")
def airflow(celery_stack):
    return AirflowClient(celery_stack)


@pytest.fixture(scope="session")
def workers(celery_stack) -> dict[str, CeleryWorker]:
    found = {s.worker.name: s for s in stack_services(celery_stack) if isinstance(s, CeleryWorker)}
    assert len(found) >= 2, "the configuration names two Celery workers"
    return found


@pytest.fixture(scope="session")
def carrier_dags(airflow, pipeline_config):
    """The DAGs the tests unpause (triggering a run unpauses its DAG), paused again afterwards."""
    dags = pipeline_config.carrier_dags()
    for dag_id in dags:
        airflow.wait_for_dag(dag_id)
    yield dags
    for dag_id in dags:
        airflow.http.patch(f"/dags/{dag_id}", json={"is_paused": True})


FINISHED = re.compile(r"Workload finished.*workload_id=([0-9a-f-]{36})")


def worker_of(
    workers: dict[str, CeleryWorker], wanted: set[str] = frozenset(), timeout_s: float = 60
) -> dict[str, str]:
    """Task instance id -> the worker that finished it, from each worker's own log (Airflow's
    supervisor logs ``Workload finished ... workload_id=<task instance id>`` where it ran, just
    after the task's state is saved: waits up to ``timeout_s`` for every id in ``wanted``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        out: dict[str, str] = {}
        for name, worker in workers.items():
            log: Path = worker.log_file
            if log.exists():
                for match in FINISHED.finditer(log.read_text(errors="replace")):
                    out[match.group(1)] = name
        if wanted <= set(out) or time.monotonic() > deadline:
            return out
        time.sleep(1)


def runs_since(airflow: AirflowClient, dag_id: str, since: str) -> list[dict]:
    """The runs meant since ``since`` (manual, asset-triggered) and those that started since: an
    unpaused DAG's scheduled run from before may be the one that carries the test's data."""
    runs: dict[str, dict] = {}
    for bound in ("run_after_gte", "start_date_gte"):
        got = (
            airflow.http.get(f"/dags/{dag_id}/dagRuns", params={bound: since, "limit": 100})
            .raise_for_status()
            .json()["dag_runs"]
        )
        runs |= {r["dag_run_id"]: r for r in got}
    return list(runs.values())


def wait_until_done(
    airflow: AirflowClient, dag_id: str, since: str, timeout_s: float = 600
) -> list[dict]:
    """Every run of ``dag_id`` since ``since``, once none is queued or running any more."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = runs_since(airflow, dag_id, since)
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{dag_id}: runs since {since} still {[r['state'] for r in runs]} after "
                f"{timeout_s:.0f} s"
            )
        time.sleep(1)


def land_result(airflow: AirflowClient, dag_id: str, run_id: str) -> list[dict]:
    """The batches the run's ``land`` train landed (its XCom): each batch's id and counts; none
    when nothing was pending."""
    got = airflow.http.get(
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/land/xcomEntries/return_value"
    )
    return (got.json().get("value") or {}).get("batches", []) if got.status_code == 200 else []


def broken_runs(airflow: AirflowClient, dag_id: str, runs: list[dict]) -> dict[str, list[str]]:
    """The runs that failed for another reason than being late: only the warehouse's ``freshness``
    gate failing means the data is in, late (records an earlier test left pending were old)."""
    broken = {}
    for run in runs:
        if run["state"] == "success":
            continue
        failed = [
            ti["task_id"]
            for ti in airflow.task_instances(dag_id, run["dag_run_id"])
            if ti["state"] in ("failed", "upstream_failed")
        ]
        if failed != ["freshness"]:
            broken[run["dag_run_id"]] = failed
    return broken
