"""Session fixtures: Airflow configured for tests before it is first imported, and the local
stack started once per session (or reused when it already runs).

Tiers: ``unit/`` (no services), ``dag_validation/`` (the DagBag), ``integration/`` (real services),
``browser/`` (Debian's chromium against the running Airflow UI), ``celery/`` (the running Airflow
switched to the CeleryExecutor and its two workers; collected last).
Only tests that ask for the ``stack`` fixture start anything.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_AIRFLOW_HOME = ROOT / ".stack" / "test-airflow"

# Airflow reads its configuration once, at first import: set it here, before any test module.
os.environ.setdefault("AIRFLOW_HOME", str(TEST_AIRFLOW_HOME))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
TEST_AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
for path in (ROOT, ROOT / "plugins"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import yaml  # noqa: E402

from stack import cli as stack_cli  # noqa: E402
from stack import config as stack_config  # noqa: E402

# The gates of timeliness in the suite. The defaults are the goal (queryable within 60 s, visible
# in every sink within 120 s), and the benchmarks measure it; a test on a busy 2-core CI machine
# must not fail for being slow. So the suite runs the embedded configuration with 15 minutes for
# both (the Airflow it starts too), and the isolated configurations of tests do the same; a test
# of lateness sets its own SLA.
SUITE_FRESHNESS_SLA_S = 900.0
SUITE_CANARY_WITHIN_S = 900.0
SUITE_CONFIG = ROOT / ".stack" / "test-pipeline.yaml"


def with_suite_timeliness(raw: dict) -> dict:
    """A raw pipeline configuration with the suite's gates of timeliness, and sync runs that end
    once nothing waits: in production a train waits up to ``sync.linger_s`` (30 s) for the next
    cycle, which in the suite is 30 s of every sync DAG run a test waits for (the linger has its
    own tests, with their own bounds)."""
    raw["freshness_sla_s"] = SUITE_FRESHNESS_SLA_S
    raw["canary"] = {**(raw.get("canary") or {}), "within_s": SUITE_CANARY_WITHIN_S}
    raw["sync"] = {**(raw.get("sync") or {}), "linger_s": 0}
    return raw


if not os.environ.get("ENROLLMENT_CONFIG"):
    from enrollment.config import DEFAULT_CONFIG

    SUITE_CONFIG.parent.mkdir(mode=0o700, exist_ok=True)
    SUITE_CONFIG.write_text(
        yaml.safe_dump(with_suite_timeliness(yaml.safe_load(DEFAULT_CONFIG.read_text())))
    )
    os.environ["ENROLLMENT_CONFIG"] = str(SUITE_CONFIG)
# The configuration the session runs (the suite's, or the one the caller named), whatever a tier
# does to the environment later (the unit tier drops it for its tests).
SESSION_CONFIG = os.environ["ENROLLMENT_CONFIG"]

TIERS = ("unit", "dag_validation", "integration", "browser", "celery")


def pytest_collection_modifyitems(session, config, items):
    """Each test is marked with its tier, from its folder (``pytest -m unit``); the Celery tier
    runs last: it switches the running Airflow to Celery and back, once."""
    for item in items:
        parts = item.path.relative_to(ROOT / "tests").parts
        if parts[0] in TIERS:
            item.add_marker(parts[0])
    celery = [item for item in items if "/tests/celery/" in str(item.path)]
    items[:] = [item for item in items if item not in celery] + celery


def _pause_carriers(cfg: stack_config.StackConfig) -> None:
    """A pipeline left running on the stack (``make demo``, an interrupted session) would land,
    warehouse and sync the tests' data beside them: the session starts with its carriers paused
    (a test unpauses what it runs). A DAG not parsed yet (a fresh stack) is paused already."""
    from enrollment.config import load_config
    from stack.airflow_client import AirflowClient

    client = AirflowClient(cfg)
    for dag_id in load_config().carrier_dags():
        if client.http.get(f"/dags/{dag_id}").status_code == 200:
            client.asked_again("PATCH", f"/dags/{dag_id}", json={"is_paused": True})


# The services the session stops when it ends: a tier need not restore what is stopped anyway.
STOPPED_AT_THE_END: set[str] = set()


@pytest.fixture(scope="session")
def stack():
    """The whole local stack, up and set up; stops at the end only what this session started.

    ``STACK_KEEP=1`` leaves everything running (handy while iterating on tests)."""
    report = stack_cli.up(quiet=True)
    cfg = stack_config.load()
    os.environ.update(cfg.client_env())
    started = [name for name, row in report.items() if row.get("started")]
    if os.environ.get("STACK_KEEP") != "1":
        STOPPED_AT_THE_END.update(started)
    _pause_carriers(cfg)
    yield cfg
    if STOPPED_AT_THE_END:
        assert stack_cli.down(started, quiet=True), "some service still listens after stopping"


@pytest.fixture(scope="session")
def pipeline_config():
    from enrollment.config import load_config

    return load_config(SESSION_CONFIG)


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata DB for in-process runs (``dag.test()``), in the test home."""
    from airflow.models.asset import AssetActive
    from airflow.utils import db
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    db.initdb()
    from airflow.models.pool import Pool

    from enrollment.pools import pools_file

    # The configuration's pools, as the stack imports them (the warehouse writers' has 1 slot).
    for name, pool in pools_file().items():
        Pool.create_or_update_pool(
            name,
            slots=pool["slots"],
            description=pool["description"],
            include_deferred=pool["include_deferred"],
        )
    # Assets are activated when a DAG using them is first synced; a test DB kept from an older
    # checkout may hold one of the same name with an older URI, which would keep ours inactive.
    with create_session() as session:
        session.execute(delete(AssetActive))
    _forget_undecryptable_triggers()


def _forget_undecryptable_triggers() -> None:
    """Triggers an earlier session saved, encrypted with its own Fernet key (the test home has no
    airflow.cfg: each process makes a key), are forgotten; ``dag.test()`` re-reads them all."""
    from airflow.models.asset import AssetWatcherModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from cryptography.fernet import InvalidToken
    from sqlalchemy import delete, select, update

    with create_session() as session:
        stale = []
        for trigger in session.scalars(select(Trigger)):
            try:
                trigger.kwargs  # noqa: B018 - decrypts
            except InvalidToken:
                stale.append(trigger.id)
        if stale:
            session.execute(
                delete(AssetWatcherModel).where(AssetWatcherModel.trigger_id.in_(stale))
            )
            session.execute(
                update(TaskInstance)
                .where(TaskInstance.trigger_id.in_(stale))
                .values(trigger_id=None)
            )
            session.execute(delete(Trigger).where(Trigger.id.in_(stale)))
