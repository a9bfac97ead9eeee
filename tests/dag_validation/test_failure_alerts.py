"""Every failure reaches someone: each DAG of the DagBag, one task made to fail, run in-process
(``dag.test()``, no service): the configured alert callback is called exactly once, with the
right kind, DAG and task, and nothing personal. The warehouse's freshness gate alone failing
is a ``late`` alert, anything else ``broken``."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
import yaml

from enrollment import config as pipeline_config
from tests.dag_validation.test_dag_integrity import _dag_ids

ALERTS: list[dict[str, Any]] = []
PARTNER = "USZEPHYRINE9"  # a partner id in a run's conf: never in an alert
ERASURE = {"partner_ids": [PARTNER], "reason": "gdpr_art17", "ticket": "DPO-1", "settle_seconds": 0}
# The task made to fail: a root (no XCom to wait for), or what fails the run when a root cannot
# (the health checks feed a verdict that runs whatever they did: the verdict fails the run).
FAILING = {"environment_health": "verdict"}


def record(payload: dict[str, Any]) -> None:
    """The alert callback under test (``alerts.on_failure``)."""
    ALERTS.append(payload)


def _fail(*args: Any, **kwargs: Any) -> Any:
    """A task that fails, unretried, quoting a partner id as a library's error might (the first
    of a mapped task's instances; the others succeed)."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    if get_current_context()["ti"].map_index > 0:
        return {}
    raise AirflowFailException(f"the service refused partner {PARTNER}")


@pytest.fixture
def alerting(airflow_db, tmp_path, monkeypatch):
    """The pipeline's configuration with the alert callback pointed at ``record``."""
    raw = yaml.safe_load(pipeline_config.DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["alerts"] = {"on_failure": f"{__name__}:record"}
    path = tmp_path / "alerting.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setenv("ENROLLMENT_CONFIG", str(path))
    ALERTS.clear()
    yield ALERTS
    ALERTS.clear()


def _replace_callable(monkeypatch, task, fn) -> None:
    partial = getattr(task, "partial_kwargs", None)
    if partial is not None and "python_callable" in partial:  # a mapped task
        monkeypatch.setitem(partial, "python_callable", fn)
    else:
        monkeypatch.setattr(task, "python_callable", fn)


def _run(dag, failing: str, conf: dict[str, Any] | None = None):
    """The DAG run with ``failing`` run for real and every other task marked successful."""
    return dag.test(run_conf=conf, mark_success_pattern=f"(?!{failing}$).*")


def _assert_one_alert(alerts, caplog, dag_id: str, task_id: str, kind: str) -> dict[str, Any]:
    assert len(alerts) == 1, f"{dag_id}: {len(alerts)} alerts: {alerts}"
    payload = alerts[0]
    assert payload["kind"] == kind, payload
    assert payload["dag_id"] == dag_id and payload["task_ids"] == [task_id], payload
    assert payload["run_id"] and payload["reason"], payload
    assert PARTNER not in json.dumps(payload, default=str), payload
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT ")]
    assert lines == [f"ALERT {dag_id}.{task_id} {kind}: {payload['reason']}"], lines
    assert PARTNER not in caplog.text
    return payload


@pytest.mark.parametrize("dag_id", _dag_ids())
def test_a_failed_task_alerts_once_as_broken(dag_id, dagbag, alerting, monkeypatch, caplog):
    from airflow.utils.state import DagRunState

    dag = dagbag.dags[dag_id]
    failing = FAILING.get(dag_id) or sorted(t.task_id for t in dag.roots)[0]
    _replace_callable(monkeypatch, dag.task_dict[failing], _fail)
    caplog.set_level(logging.INFO)
    run = _run(dag, failing, ERASURE if dag_id == "erase_partners" else None)
    assert run.state == DagRunState.FAILED
    payload = _assert_one_alert(alerting, caplog, dag_id, failing, "broken")
    # A mapped task's instance is named by its label: check_service[kafka].
    assert re.match(
        rf"{failing}(\[\w+\])?: AirflowFailException \(raised outside", payload["reason"]
    )
    if dag_id.startswith("ingest_"):
        assert payload["region"] == dag_id.removeprefix("ingest_").upper()


def test_a_late_freshness_gate_alone_alerts_as_late(dagbag, alerting, monkeypatch, caplog):
    from airflow.utils.state import DagRunState

    dag = dagbag.dags["warehouse"]
    # A day late: later than any SLA, the embedded one or the suite's (the DagBag was parsed with
    # the suite's configuration, this test's alerting one is the embedded file's copy).
    cycled = {
        "batches": [
            {
                "batch_id": "amer-late-batch",
                "region": "AMER",
                "oldest_event_age_s": 86_400.0,
                "p95_event_age_s": 86_000.0,
                "newest_event_age_s": 85_000.0,
            }
        ]
    }
    _replace_callable(monkeypatch, dag.task_dict["cycle"], lambda **_: cycled)
    caplog.set_level(logging.INFO)
    run = dag.test()
    assert run.state == DagRunState.FAILED
    payload = _assert_one_alert(alerting, caplog, "warehouse", "freshness", "late")
    assert payload["batch_ids"] == ["amer-late-batch"], payload
    assert "freshness gate, batch amer-late-batch" in payload["reason"], payload


def test_every_dag_alerts_and_every_task_notes_its_failure(dagbag):
    from enrollment_airflow.alerts import note_failure, on_dag_failure

    for dag in dagbag.dags.values():
        assert dag.on_failure_callback is on_dag_failure, f"{dag.dag_id}: use **DAG_DEFAULTS"
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert callbacks == [note_failure], f"{dag.dag_id}.{task.task_id}: {callbacks}"


def test_the_dag_processor_reads_failed_mapped_instances_from_task_states():
    """In production the callback runs in the DAG processor and reads the run's task states from
    the Task SDK, mapped instances keyed ``<task>_<map index>``."""
    from enrollment_airflow.alerts import failed_in

    states = {"check_service_0": "failed", "check_service_1": "success", "verdict": "failed"}
    assert failed_in(states, {"check_service", "verdict"}) == [
        ("check_service", 0),
        ("verdict", -1),
    ]
    assert failed_in({"land_2": "failed"}, {"land_2"}) == [("land_2", -1)]


def test_a_reason_quotes_the_project_and_withholds_what_a_library_says():
    from enrollment.core.errors import GateError
    from enrollment_airflow.alerts import REASON_MAX, reason_of

    assert reason_of(GateError("batch b1: 3 offsets missing")) == (
        "GateError: batch b1: 3 offsets missing"
    )
    try:
        int(f"partner {PARTNER}")
    except ValueError as exc:
        withheld = reason_of(exc)
    assert withheld.startswith("ValueError (") and PARTNER not in withheld
    assert len(reason_of(GateError("x" * 5000))) == REASON_MAX
