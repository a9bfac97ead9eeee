"""The shape of every DAG against one table: its tasks, the order they run in, the pool each task
takes a slot of, the priority and Celery queue it is scheduled with, and how long it may run
before it is killed as hung. The table below is the intended shape; the DagBag (loaded once per
session, in-process) must match it, so a task added, removed, re-wired or moved to another pool
is a conscious change of this table.

Pools, priorities and queues come from the configuration (``pools:``): a DAG family's tasks run in
its pool with that pool's priority and queue; the tasks that write the warehouse tables take the
one slot of ``warehouse_writer`` instead (and keep their DAG's priority and queue)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from enrollment.config import WAREHOUSE_POOL, PipelineConfig, load_config

CONFIG = load_config()
MAX_TIMEOUT = timedelta(hours=2)
# The sync factory's bound on one run (plugins/enrollment_airflow/sync.py: max_batches per region,
# each write riding out throttling).
SYNC_TIMEOUT = timedelta(minutes=45)


def _setting(section: Any, name: str) -> Any:
    """A setting of a configuration section, whether the section is a mapping or a dataclass."""
    return section[name] if isinstance(section, dict) else getattr(section, name)


@dataclass(frozen=True)
class Shape:
    """One DAG family: the pool its tasks run in (and take priority and queue from), its tasks,
    its edges (upstream, downstream), the tasks that take another pool's slot, and the timeouts
    the configuration or the DAG's factory states (other tasks: any bound up to MAX_TIMEOUT)."""

    pool: str
    tasks: tuple[str, ...]
    edges: tuple[tuple[str, str], ...] = ()
    pools: dict[str, str] = field(default_factory=dict)
    timeouts: dict[str, Callable[[PipelineConfig], timedelta]] = field(default_factory=dict)


def _land_timeout(code: str) -> Callable[[PipelineConfig], timedelta]:
    return lambda config: timedelta(seconds=config.region(code).land_timeout_s)


SHAPES: dict[str, Shape] = {
    **{
        f"ingest_{region.code.lower()}": Shape(
            pool="ingest", tasks=("land",), timeouts={"land": _land_timeout(region.code)}
        )
        for region in CONFIG.regions
    },
    **{
        f"sync_{sink}": Shape(
            pool="sinks", tasks=("sync",), timeouts={"sync": lambda config: SYNC_TIMEOUT}
        )
        for sink in CONFIG.sinks
    },
    "warehouse": Shape(
        pool="ingest",
        tasks=("cycle", "freshness"),
        edges=(("cycle", "freshness"),),
        pools={"cycle": WAREHOUSE_POOL},
        timeouts={"cycle": lambda config: timedelta(seconds=config.warehouse.cycle_timeout_s)},
    ),
    "canary": Shape(
        pool="monitors",
        tasks=("inject", "trace"),
        edges=(("inject", "trace"),),
        # It waits up to within_s by design, then reads back and records for 5 more minutes.
        timeouts={
            "trace": lambda config: timedelta(
                seconds=float(_setting(config.canary, "within_s")) + 300
            )
        },
    ),
    "lag_monitor": Shape(pool="monitors", tasks=("measure",)),
    "environment_health": Shape(
        pool="monitors",
        tasks=("check_service", "verdict"),
        edges=(("check_service", "verdict"),),
    ),
    "stack_smoke": Shape(pool="monitors", tasks=("check_service",)),
    "reconciliation": Shape(
        pool="maintenance",
        tasks=("regions", "reconcile"),
        edges=(("regions", "reconcile"),),
    ),
    "replay": Shape(
        pool="maintenance",
        tasks=("select", "warehouse", "sinks_to_sync", "sync"),
        edges=(
            ("select", "warehouse"),
            ("select", "sinks_to_sync"),
            ("select", "sync"),
            ("warehouse", "sinks_to_sync"),
            ("sinks_to_sync", "sync"),
        ),
        pools={"warehouse": WAREHOUSE_POOL},
    ),
    "reland_batch": Shape(pool="maintenance", tasks=("reland",)),
    "requeue_quarantine": Shape(
        pool="maintenance",
        tasks=("plan", "recover", "ledger", "report"),
        edges=(
            ("plan", "recover"),
            ("plan", "report"),
            ("recover", "ledger"),
            ("ledger", "report"),
        ),
        pools={"ledger": WAREHOUSE_POOL},
    ),
    "erase_partners": Shape(
        pool="maintenance",
        tasks=("suppress", "settle", "landed", "warehouse", "erase_sink", "objects", "verify"),
        edges=(
            ("suppress", "settle"),
            ("settle", "landed"),
            ("landed", "warehouse"),
            ("settle", "erase_sink"),
            ("settle", "verify"),
            ("warehouse", "erase_sink"),
            ("warehouse", "objects"),
            ("warehouse", "verify"),
            ("erase_sink", "verify"),
            ("objects", "verify"),
        ),
        pools={"warehouse": WAREHOUSE_POOL},
    ),
    "housekeeping": Shape(pool="maintenance", tasks=("sweep",)),
}


def _dag(dagbag, dag_id: str):
    if dag_id not in dagbag.dags:
        errors = {path: e.strip().splitlines()[-1] for path, e in dagbag.import_errors.items()}
        pytest.fail(f"{dag_id} is not in the DagBag; import errors: {errors}")
    return dagbag.dags[dag_id]


def test_the_dagbag_holds_exactly_the_dags_of_the_table(dagbag):
    assert set(dagbag.dags) | set(SHAPES) == set(SHAPES), (
        f"DAGs without a row in SHAPES: {sorted(set(dagbag.dags) - set(SHAPES))}"
    )
    assert set(SHAPES) <= set(dagbag.dags), (
        f"missing from the DagBag: {sorted(set(SHAPES) - set(dagbag.dags))}; "
        f"import errors: {sorted(dagbag.import_errors)}"
    )


@pytest.mark.parametrize("dag_id", sorted(SHAPES))
def test_tasks_and_their_order(dagbag, dag_id):
    dag, shape = _dag(dagbag, dag_id), SHAPES[dag_id]
    assert sorted(dag.task_ids) == sorted(shape.tasks), dag_id
    edges = {(t.task_id, down) for t in dag.tasks for down in t.downstream_task_ids}
    assert edges == set(shape.edges), (
        f"{dag_id}: unexpected {sorted(edges - set(shape.edges))}, "
        f"missing {sorted(set(shape.edges) - edges)}"
    )


@pytest.mark.parametrize("dag_id", sorted(SHAPES))
def test_pool_priority_and_queue_come_from_the_configured_pools(dagbag, dag_id):
    dag, shape = _dag(dagbag, dag_id), SHAPES[dag_id]
    family = CONFIG.pools[shape.pool]
    for task in dag.tasks:
        want_pool = shape.pools.get(task.task_id, shape.pool)
        assert want_pool in CONFIG.pools, f"{want_pool}: not a configured pool"
        got = (task.pool, task.priority_weight, str(task.weight_rule), task.queue)
        assert got == (want_pool, family.priority, "absolute", family.queue), (
            f"{dag_id}.{task.task_id}: (pool, priority, weight rule, queue) {got}"
        )


@pytest.mark.parametrize("dag_id", sorted(SHAPES))
def test_every_task_has_a_bounded_execution_timeout(dagbag, dag_id):
    dag = _dag(dagbag, dag_id)
    unbounded = {
        task.task_id: task.execution_timeout
        for task in dag.tasks
        if task.execution_timeout is None
        or not timedelta(0) < task.execution_timeout <= MAX_TIMEOUT
    }
    assert unbounded == {}, (
        f"{dag_id}: tasks without an execution_timeout in (0, {MAX_TIMEOUT}]: {unbounded}"
    )


@pytest.mark.parametrize(
    ("dag_id", "task_id"),
    sorted((dag_id, task_id) for dag_id, shape in SHAPES.items() for task_id in shape.timeouts),
)
def test_the_timeouts_the_configuration_states(dagbag, dag_id, task_id):
    task = _dag(dagbag, dag_id).get_task(task_id)
    assert task.execution_timeout == SHAPES[dag_id].timeouts[task_id](CONFIG), (
        f"{dag_id}.{task_id}: execution_timeout {task.execution_timeout}"
    )


@pytest.mark.parametrize("dag_id", sorted(SHAPES))
def test_a_failed_run_alerts(dagbag, dag_id):
    dag = _dag(dagbag, dag_id)
    assert dag.on_failure_callback, f"{dag_id}: no DAG-level on_failure_callback"
