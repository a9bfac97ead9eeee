"""What users see of the pipeline, written down so that a change to it is a reviewed diff.

``python -m tests.snapshot.take`` (``make snapshot``) rewrites the files beside this one; the test
``tests/dag_validation/test_interface_snapshot.py`` takes the snapshot again and compares:

- ``dags.json``: every DAG serialised as the scheduler stores it (ids, tasks, edges, pools,
  params, schedules, ``doc_md``), machine paths left out;
- ``config.txt``: ``python -m enrollment.config`` (the configuration in force, defaults filled in),
  and ``pools.json``: ``python -m enrollment.pools``;
- ``tables.json``: the table schemas and the DDL each ``ensure_*`` sends to an empty dataset;
- ``objects.json``: the names of the objects the pipeline writes (a batch landed from simulated
  events, claims, chains, pending and set-aside records, sync manifests, recovery batches), and
  the landed objects' Parquet schemas;
- ``cli.txt``: the ``--help`` of every command line (simulator, stack, load test);
- ``operator_page.json``: the operator page's routes.

It starts no service: clients are the unit tests' in-memory fakes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FILES = (
    "dags.json",
    "config.txt",
    "pools.json",
    "tables.json",
    "objects.json",
    "cli.txt",
    "operator_page.json",
)


def _dags() -> str:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    out = {}
    for dag_id in sorted(bag.dags):
        data = DagSerialization.to_dict(bag.dags[dag_id])["dag"]
        for machine_path in ("fileloc", "_processor_dags_folder"):
            data.pop(machine_path, None)
        data["relative_fileloc"] = str(Path(data["relative_fileloc"]).relative_to(ROOT))
        out[dag_id] = data
    return json.dumps(out, indent=1, sort_keys=True, default=str) + "\n"


def _run(*argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ENROLLMENT_CONFIG"} | {"COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    return done.stdout


def _ddl() -> dict[str, list[str]]:
    from enrollment.clients.bigquery import BigQuery, landed_schema
    from enrollment.ingest.shape import landed_schemas
    from enrollment.ops.erasure.request import ensure_ledger as ensure_erasure_ledger
    from enrollment.sync.tables import ensure_tables as ensure_sync_tables
    from enrollment.warehouse.tables import ensure_tables
    from tests.unit.fakes import FakeBigQuery, FakeStorage

    def handle() -> BigQuery:
        return BigQuery(FakeBigQuery(), FakeStorage(), "p", "enrollment", "enrollment_ops")

    events, quarantine = (landed_schema(s) for s in landed_schemas())
    out: dict[str, list[str]] = {}
    bq = handle()
    ensure_tables(bq, events, quarantine)
    out["warehouse"] = bq.statements
    bq = handle()
    ensure_sync_tables(bq)
    out["sync"] = bq.statements
    bq = handle()
    ensure_erasure_ledger(bq)
    out["erasure"] = bq.statements
    return out


def _tables() -> str:
    from enrollment.clients.bigquery import landed_schema
    from enrollment.contracts.spec import PARTNER_EVENTS
    from enrollment.core.partners import PARTNER_SCHEMA
    from enrollment.ingest.shape import landed_schemas
    from enrollment.ingest.validation import PARSE_SCHEMA, QUARANTINE_SCHEMA, VALID_COLUMNS
    from enrollment.ops.canary import CANARY_SCHEMA
    from enrollment.ops.erasure.request import ERASURE_SCHEMA
    from enrollment.ops.health import HEALTH_SCHEMA
    from enrollment.ops.lag import LAG_SCHEMA
    from enrollment.ops.metrics import METRICS_SCHEMA
    from enrollment.ops.reconciliation import RECONCILIATION_SCHEMA
    from enrollment.ops.recovery.run import RECOVERED_KEY, RECOVERED_SCHEMA
    from enrollment.sync.tables import SINK_QUARANTINE_SCHEMA, WATERMARK_SCHEMA
    from enrollment.warehouse.tables import (
        EVENTS_ADDED_COLUMNS,
        LEDGER_ADDED_COLUMNS,
        LEDGER_SCHEMA,
    )

    events, quarantine = landed_schemas()
    out: dict[str, Any] = {
        "schemas": {
            "canary": CANARY_SCHEMA,
            "erasures": ERASURE_SCHEMA,
            "health": HEALTH_SCHEMA,
            "lag": LAG_SCHEMA,
            "ledger": LEDGER_SCHEMA,
            "metrics": METRICS_SCHEMA,
            "partners": PARTNER_SCHEMA,
            "reconciliation": RECONCILIATION_SCHEMA,
            "recovered": RECOVERED_SCHEMA,
            "sink_quarantine": SINK_QUARANTINE_SCHEMA,
            "sink_watermarks": WATERMARK_SCHEMA,
            "events (landed valid rows)": landed_schema(events),
            "quarantine (landed rows)": landed_schema(quarantine),
        },
        "added_columns": {"events": EVENTS_ADDED_COLUMNS, "ledger": LEDGER_ADDED_COLUMNS},
        "recovered_key": RECOVERED_KEY,
        "partner_events": list(PARTNER_EVENTS),
        "validation": {
            "parse_schema": str(PARSE_SCHEMA),
            "quarantine_schema": str(QUARANTINE_SCHEMA),
            "valid_columns": list(VALID_COLUMNS),
        },
        "ddl": _ddl(),
    }
    return json.dumps(out, indent=1, default=list) + "\n"


def _objects() -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from enrollment.config import load_config
    from enrollment.core.batch import (
        Landed,
        Manifest,
        PartitionRange,
        cycle_id,
        landing_prefix,
        recovery_batch_id,
    )
    from enrollment.core.layout import (
        INDEX_OBJECT,
        chain_object,
        claim_object,
        pending_object,
        set_aside_object,
    )
    from enrollment.core.pii import Keyring
    from enrollment.ingest.land import write_batch
    from enrollment.ingest.shape import shape_batch
    from enrollment.ingest.validation import validate_batch
    from enrollment.simulator.generator import FaultRates, Simulator
    from enrollment.sync.plan import SyncPlan
    from tests.unit.fakes import FakeBucket

    config = load_config()
    region = config.regions[0]
    manifest = Manifest(
        region=region.code,
        topic=region.topic,
        group="enrollment-pipeline",
        bucket="enrollment-landing",
        ranges=(PartitionRange(0, 100, 350), PartitionRange(1, 7, 9)),
    )
    batch_id = manifest.batch_id
    messages = Simulator(seed=3, faults=FaultRates.mix(0.05), initial_partners=20).take(200)
    values = [m.value for m in messages]
    kafka = pa.table(
        {
            "kafka_partition": pa.array([0] * len(values), pa.int32()),
            "kafka_offset": pa.array(range(len(values)), pa.int64()),
            "kafka_timestamp": pa.array(
                [1_764_400_000_000 + i for i in range(len(values))], pa.timestamp("ms", tz="UTC")
            ),
            "kafka_key": pa.array([m.key for m in messages], pa.binary()),
            "value": pa.array(values, pa.binary()),
        }
    )
    keyring = Keyring.from_secret("k1", "snapshot-key-" + "x" * 32)
    _, valid, quarantine, _ = shape_batch(
        validate_batch(values), kafka, batch_id, region.code, keyring
    )
    bucket = FakeBucket("enrollment-landing")
    write_batch(bucket, landing_prefix(batch_id), batch_id, valid, quarantine, keyring)
    landed_schemas = {
        name: str(pq.read_schema(io.BytesIO(bucket.objects[name]["data"])))
        for name in sorted(bucket.objects)
    }
    landed = Landed(batch_id, region.code, 252, 1, 1, 0, "gs://b/v", "gs://b/q", 0.0)
    plan = SyncPlan("solr", region.code, "enrollment-landing", [{"batch_id": batch_id}])
    out = {
        "batch_id": batch_id,
        "manifest json": manifest.to_json(),
        "manifest": {
            "claim": manifest.claim_record,
            "prefix": manifest.prefix,
            "raw": manifest.raw_object,
            "valid": manifest.valid_object,
            "quarantine": manifest.quarantine_object,
            "partners": manifest.partners_object,
            "uri": manifest.uri(manifest.valid_object),
        },
        "landing_prefix": landing_prefix(batch_id),
        "landed_objects": landed_schemas,
        "claim_object": claim_object(region.code, region.topic, {0: 100, 1: 7}, "g"),
        "claim_object (no group)": claim_object(region.code, region.topic, {0: 100}),
        "chain_object": chain_object(region.code, region.topic, "g"),
        "pending_object": pending_object("g", region.code, batch_id),
        "set_aside_object": set_aside_object("g", region.code, batch_id),
        "erasure index": INDEX_OBJECT,
        "cycle_id": cycle_id([landed]),
        "recovery_batch_id": recovery_batch_id(region.code, "g", region.topic, [(0, 5), (1, 2)]),
        "recovery landing_prefix": landing_prefix(
            recovery_batch_id(region.code, "g", region.topic, [(0, 5)])
        ),
        "sync manifest": plan.manifest_object,
        "sync valid_uri": plan.valid_uri(batch_id),
        "sync partners_uri": plan.partners_uri(batch_id),
    }
    return json.dumps(out, indent=1) + "\n"


def _cli() -> str:
    commands = [
        ("-m", "enrollment.simulator", "--help"),
        ("-m", "enrollment.simulator", "produce", "--help"),
        ("-m", "enrollment.simulator", "check", "--help"),
        ("-m", "stack", "--help"),
        ("-m", "bench.loadtest", "--help"),
    ]
    return "".join(f"$ python {' '.join(c)}\n{_run(*c)}\n" for c in commands)


def _operator_page() -> str:
    sys.path.insert(0, str(ROOT / "plugins"))
    from enrollment_airflow.operator_page.app import app

    routes = sorted(
        (getattr(r, "path", ""), sorted(getattr(r, "methods", None) or []), getattr(r, "name", ""))
        for r in app.routes
    )
    return json.dumps(routes, indent=1) + "\n"


def take() -> dict[str, str]:
    """The snapshot's files, name → text, of the embedded configuration (what users see; not the
    test suite's, whose gates of timeliness are its own)."""
    suite = os.environ.pop("ENROLLMENT_CONFIG", None)
    try:
        return {
            "dags.json": _dags(),
            "config.txt": _run("-m", "enrollment.config"),
            "pools.json": _run("-m", "enrollment.pools"),
            "tables.json": _tables(),
            "objects.json": _objects(),
            "cli.txt": _cli(),
            "operator_page.json": _operator_page(),
        }
    finally:
        if suite is not None:
            os.environ["ENROLLMENT_CONFIG"] = suite


def main() -> None:
    for name, text in take().items():
        (HERE / name).write_text(text)
        print(f"tests/snapshot/{name}: {len(text.splitlines())} lines")


if __name__ == "__main__":
    import tests.conftest  # noqa: F401 (Airflow configured for tests before it is imported)

    main()
