"""One writer of each warehouse table, from the DAG structure: BigQuery runs at most two mutating
DML statements per table at once and aborts concurrent writes to the same partitions (the emulator
serialises them silently, so only the structure can prove it)."""

from __future__ import annotations

import re

import pytest

from enrollment.config import WAREHOUSE_POOL, load_config
from tests.conftest import ROOT

# What writes events, partners, quarantine or the warehouse ledger rows (a recovery writes ledger
# rows and the recovered table, never events: it queues a batch for the warehouse DAG).
WRITERS = re.compile(
    r"\b(run_cycle|merge_batch|replay_warehouse|record_cycle|scrub_warehouse|record_ledger)\("
)


def test_regions_only_land_and_one_dag_writes_the_warehouse(dagbag):
    config = load_config()
    for region in config.regions:
        dag = dagbag.dags[f"ingest_{region.code.lower()}"]
        assert {t.task_id for t in dag.tasks} == {"land"}, (
            f"{dag.dag_id} lands only; the warehouse DAG writes"
        )
        assert dag.max_active_runs == 1
    warehouse = dagbag.dags["warehouse"]
    # One cycle at a time is the pool's (one slot: test_the_pool_has_one_slot_wherever_airflow_
    # runs); a second run only overlaps the last one's freshness gate with its cycle.
    assert warehouse.max_active_runs == 2
    assert warehouse.get_task("cycle").pool == WAREHOUSE_POOL
    assert [t.task_id for t in warehouse.tasks if t.pool == WAREHOUSE_POOL] == ["cycle"]


def test_every_task_that_writes_the_warehouse_holds_the_one_slot(dagbag):
    """Writers (found in the DAG code by what they call) run only in the 1-slot pool."""
    calls = {
        path.relative_to(ROOT).as_posix()
        for path in [*(ROOT / "dags").glob("*.py"), *(ROOT / "plugins").rglob("*.py")]
        if WRITERS.search(path.read_text(encoding="utf-8"))
    }
    assert calls == {
        "plugins/enrollment_airflow/warehouse.py",
        "dags/replay.py",
        "dags/erase_partners.py",
        "dags/requeue_quarantine.py",
    }, calls
    in_pool = {
        (dag.dag_id, task.task_id)
        for dag in dagbag.dags.values()
        for task in dag.tasks
        if task.pool == WAREHOUSE_POOL
    }
    assert in_pool == {
        ("warehouse", "cycle"),
        ("replay", "warehouse"),
        ("erase_partners", "warehouse"),
        ("requeue_quarantine", "ledger"),
    }


def test_a_recovery_queues_batches_and_never_writes_events_itself():
    """The warehouse DAG stays the only writer of events: a recovery lands and queues a batch."""
    source = "".join(
        p.read_text(encoding="utf-8")
        for p in sorted((ROOT / "include" / "enrollment" / "ops" / "recovery").glob("*.py"))
    )
    assert not re.search(
        r"\b(run_cycle|merge_batch|events_insert_sql|merge_partners_sql)\b", source
    )
    assert "mark_pending(" in source


def test_the_pool_has_one_slot_wherever_airflow_runs():
    """The stack, docker-compose and a deployment import the configuration's pools
    (enrollment.pools), and a configuration cannot give the writers' pool a second slot."""
    import yaml

    from enrollment.config import parse_config
    from enrollment.pools import pools_file

    assert pools_file()[WAREHOUSE_POOL]["slots"] == 1
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))
    init = " ".join(compose["services"]["airflow-init"]["command"])
    assert "python -m enrollment.pools" in init and "airflow pools import" in init
    raw = yaml.safe_load(
        (ROOT / "include" / "enrollment" / "config" / "pipeline.yaml").read_text(encoding="utf-8")
    )
    raw["pools"][WAREHOUSE_POOL]["slots"] = 2
    with pytest.raises(ValueError, match="exactly 1 slot"):
        parse_config(raw)


def test_a_replay_holds_the_writers_slot_in_short_chunks_behind_the_line(dagbag):
    """A replay finds and reads its batches outside the writer's slot, then writes them in chunks
    (one mapped task each) that hold the slot at most 5 minutes; queued beside a live cycle, the
    cycle's higher priority takes the slot first, so it runs between chunks."""
    from datetime import timedelta

    select, cycle = dagbag.dags["replay"].get_task("select"), dagbag.dags["warehouse"]
    chunk = dagbag.dags["replay"].get_task("warehouse")
    assert select.pool != WAREHOUSE_POOL, "planning never holds the slot"
    assert chunk.pool == WAREHOUSE_POOL
    assert type(chunk).__name__.endswith("MappedOperator"), "one task instance per chunk"
    assert chunk.execution_timeout <= timedelta(minutes=5)
    assert chunk.priority_weight < cycle.get_task("cycle").priority_weight


def test_a_recovery_reads_kafka_and_lands_outside_the_writers_slot(dagbag):
    """Only the ledger rows of a re-processing take the slot, for minutes at most."""
    from datetime import timedelta

    dag = dagbag.dags["requeue_quarantine"]
    assert dag.get_task("plan").pool != WAREHOUSE_POOL
    assert dag.get_task("recover").pool != WAREHOUSE_POOL
    ledger = dag.get_task("ledger")
    assert ledger.pool == WAREHOUSE_POOL and ledger.execution_timeout <= timedelta(minutes=5)


def test_an_erasure_rewrites_landed_batches_outside_the_writers_slot(dagbag):
    """The erasure's search and object rewrites (a partner's whole history: minutes) run before the
    slot; its warehouse step holds it for the statements only, for minutes at most; the batches'
    hand-overs, which cycles write, are scrubbed after it."""
    import inspect
    from datetime import timedelta

    dag = dagbag.dags["erase_partners"]
    assert dag.get_task("landed").pool != WAREHOUSE_POOL
    warehouse = dag.get_task("warehouse")
    assert warehouse.pool == WAREHOUSE_POOL and warehouse.execution_timeout <= timedelta(minutes=5)
    assert not re.search(
        r"\b(batches_holding|scrub_landed|scrub_handovers)\(",
        inspect.getsource(warehouse.python_callable),
    )
    assert "warehouse" in dag.get_task("objects").upstream_task_ids
    assert "scrub_handovers(" in inspect.getsource(dag.get_task("objects").python_callable)
