"""The sink DAGs: bounded tasks and bounded params (a run cannot be asked for unbounded work)."""

from __future__ import annotations

import pytest

from enrollment.config import load_config


@pytest.mark.parametrize("sink", list(load_config().sinks))
def test_sync_tasks_time_out_and_numeric_params_are_bounded(dagbag, sink):
    dag = dagbag.dags[f"sync_{sink}"]
    for task in dag.tasks:
        assert task.execution_timeout is not None, (
            f"{dag.dag_id}.{task.task_id}: set execution_timeout"
        )
    for name in dag.params:
        schema = dag.params.get_param(name).schema
        if schema.get("type") in ("integer", "number"):
            assert "maximum" in schema, f"{dag.dag_id}: param {name} has no maximum"
        if schema.get("type") == "array":
            assert "maxItems" in schema, f"{dag.dag_id}: param {name} has no maxItems"
    assert dag.params.get_param("resync_batches").value == [], "the way back for a batch set aside"
