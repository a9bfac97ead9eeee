"""BigQuery for the pipeline: the warehouse tables (event history, current partner state,
quarantine), staging, and the ledger every stage reports to. The writer of the warehouse cycle
is ``enrollment.cycle``.

BigQuery's per-table load-job quota (~1,500 a day) would be overrun by loading every batch into
the same table (4 regions x 1,440 one-minute batches = 5,760 loads a day). So each cycle is
loaded into **its own staging tables** (one load job each) and inserted or MERGEd into the
permanent tables: DML does not count against the load quota. The staging tables are dropped
explicitly (the emulator ignores table expiration).

``events`` is partitioned by the day the event *arrived* (its Kafka timestamp), so the cycle's
dedup window is a constant partition filter; ``events_unique`` is the reader's de-duplicated view.

SQL here runs on BigQuery and on the emulator: explicit MERGE column lists, no `destination=`
query jobs, tables created before loads.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from .batches import GateError, Landed
from .partners import FOLLOWS, PARTNER_COLUMNS, PARTNER_SCHEMA, partner_changes  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import google.cloud.storage as gcs
    from google.cloud import bigquery
    from google.cloud.bigquery.table import Row

    from .config import WarehouseSettings
    from .cycle import Window

    QueryParameter: TypeAlias = bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter

_BQ_TYPES = {
    pa.string(): "STRING",
    pa.int16(): "INT64",
    pa.int32(): "INT64",
    pa.int64(): "INT64",
    pa.float64(): "FLOAT64",
    pa.bool_(): "BOOL",
    pa.binary(): "BYTES",
}

log = logging.getLogger(__name__)

# offsets_in = valid + quarantined + duplicates + skipped + recovered on every row. ``skipped``
# (offsets that hold no message) and ``recovered`` (quarantined messages brought back by
# ``enrollment.recovery``: only on an origin batch's ``recovered`` row) came last: ledgers created
# before them get the columns added (``ensure_ledger``) and their rows read them as NULL, i.e. 0.
LEDGER_SCHEMA = [
    ("batch_id", "STRING"),
    ("region", "STRING"),
    ("stage", "STRING"),
    ("offsets_in", "INT64"),
    ("valid", "INT64"),
    ("quarantined", "INT64"),
    ("duplicates", "INT64"),
    ("rows_merged", "INT64"),
    ("seconds", "FLOAT64"),
    ("ok", "BOOL"),
    ("detail", "STRING"),
    ("recorded_at", "TIMESTAMP"),
    ("skipped", "INT64"),
    ("recovered", "INT64"),
]
LEDGER_ADDED_COLUMNS = (
    "skipped",
    "recovered",
)  # added after ledgers were created: ensure_ledger adds them
# Columns of ``events`` added after tables were created: an existing table gets them
# (ensure_tables).
EVENTS_ADDED_COLUMNS = (
    "tax_id_token",
    "marketing_consent",
    "consent_version",
    "consent_captured_at",
)
DEFAULT_JOB_TIMEOUT_S = 600.0  # enrollment.config.WarehouseSettings.job_timeout_s

_Result = TypeVar("_Result", covariant=True)


class _Job(Protocol[_Result]):
    """What ``Warehouse.wait`` needs of a BigQuery job (a query job or a load job)."""

    @property
    def job_id(self) -> str | None: ...

    def result(self, *, timeout: float) -> _Result: ...

    def cancel(self) -> object: ...


def _bq_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP"
    return _BQ_TYPES[arrow_type]


def landed_schema(table_schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, _bq_type(f.type)) for f in table_schema]


def _ddl(name: str, columns: list[tuple[str, str]], partition: str, cluster: str) -> str:
    cols = ", ".join(f"{c} {t}" for c, t in columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ({cols}) "
        f"PARTITION BY DATE({partition}) CLUSTER BY {cluster}"
    )


@dataclass
class Warehouse:
    """The pipeline's BigQuery tables and the objects they are loaded from.

    One unit over 200 lines on purpose: tables, staging, the ledger and DML writes all share one
    client, one job timeout, the per-process migration flags and ``statements`` (which the tests
    count), and callers across DAGs, plugins and tools use it as one handle."""

    client: bigquery.Client
    storage: gcs.Client
    project: str
    dataset: str
    ops_dataset: str
    settings: WarehouseSettings | None = None  # the defaults when None
    statements: list[str] = field(
        default_factory=list, repr=False
    )  # every statement sent, in order (tests count the writers)
    _ledger_ready: bool = field(
        default=False, init=False, repr=False, compare=False
    )  # created and migrated (once per process)
    _events_migrated: bool = field(default=False, init=False, repr=False, compare=False)

    def table(self, name: str, ops: bool = False) -> str:
        return f"`{self.project}.{self.ops_dataset if ops else self.dataset}.{name}`"

    def run(self, sql: str, params: Sequence[QueryParameter] | None = None) -> list[Row]:
        from google.cloud import bigquery

        self.statements.append(sql)
        job = self.client.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params or [])
        )
        return list(self.wait(job))

    def wait(self, job: _Job[_Result]) -> _Result:
        """The job's result, awaited at most ``job_timeout_s``: a job that hangs is cancelled and
        the caller fails (its task is retried) instead of holding the one writer's slot forever."""
        import concurrent.futures

        timeout = getattr(self.settings, "job_timeout_s", None) or DEFAULT_JOB_TIMEOUT_S
        try:
            return job.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            try:
                job.cancel()
            except Exception as cancel_error:
                log.warning("BigQuery job %s not cancelled: %s", job.job_id, cancel_error)
            raise TimeoutError(
                f"BigQuery job {job.job_id} still running after {timeout:.0f} s: cancelled"
            ) from exc

    # -- tables ----------------------------------------------------------------------------------
    def existing_tables(self) -> tuple[set[str], set[str]]:
        """The tables of the warehouse dataset and of the ops dataset (one listing each)."""
        return (
            {t.table_id for t in self.client.list_tables(f"{self.project}.{self.dataset}")},
            {t.table_id for t in self.client.list_tables(f"{self.project}.{self.ops_dataset}")},
        )

    def ensure_tables(
        self, events_schema: list[tuple[str, str]], quarantine_schema: list[tuple[str, str]]
    ) -> None:
        """The tables and the readers' view, created when missing (one listing per dataset when
        not)."""
        have, have_ops = self.existing_tables()
        for leftover in sorted(t for t in have if t.startswith("_cycle_")):
            # The one writer runs one cycle at a time: staging tables here were left by a cycle
            # that died (possibly over another set of batches, so under another name).
            self.client.delete_table(f"{self.project}.{self.dataset}.{leftover}", not_found_ok=True)
        if "events" not in have:
            self.run(
                _ddl(
                    self.table("events"),
                    events_schema,
                    "kafka_timestamp",
                    "region, partner_id, event_type",
                )
            )
        elif not self._events_migrated:
            # Columns the landed rows gained after the table was made (tax_id_token); once per
            # process (the emulator does not list added columns), and idempotent.
            for column in EVENTS_ADDED_COLUMNS:
                if column in dict(events_schema):
                    self.run(
                        f"ALTER TABLE {self.table('events')} "
                        f"ADD COLUMN IF NOT EXISTS {column} {dict(events_schema)[column]}"
                    )
        self._events_migrated = True
        if "events_unique" not in have:
            # Within the dedup window the table holds each event id once; a resend that arrived
            # later than the window is removed here, for readers (no partition pruning through it).
            self.run(
                f"""CREATE VIEW IF NOT EXISTS {self.table("events_unique")} AS """
                f"""SELECT * FROM {self.table("events")}
                WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY event_id """
                "ORDER BY kafka_timestamp, batch_id, kafka_partition, kafka_offset) = 1"
            )
        if "partners" not in have:
            self.run(
                _ddl(self.table("partners"), PARTNER_SCHEMA, "updated_at", "region, partner_id")
            )
        else:
            self.add_missing_columns("partners", PARTNER_SCHEMA)
        if "quarantine" not in have:
            self.run(
                _ddl(
                    self.table("quarantine"),
                    quarantine_schema,
                    "kafka_timestamp",
                    "region, batch_id",
                )
            )
        self.ensure_ledger("ledger" in have_ops)

    def ensure_ledger(self, exists: bool | None = None) -> None:
        """The ledger, created when missing, and migrated: a ledger from before the ``skipped`` or
        ``recovered`` column gets it (``ADD COLUMN IF NOT EXISTS``: running it twice changes
        nothing)."""
        from google.api_core.exceptions import NotFound

        if self._ledger_ready:
            return
        table_id = self.table("ledger", ops=True)
        if exists is None:
            try:
                schema = self.client.get_table(table_id.strip("`")).schema
                exists = True
            except NotFound:
                exists = False
        else:
            schema = self.client.get_table(table_id.strip("`")).schema if exists else []
        if not exists:
            self.run(_ddl(table_id, LEDGER_SCHEMA, "recorded_at", "region, batch_id"))
        else:
            have = {f.name for f in schema}
            for column in LEDGER_ADDED_COLUMNS:
                if column not in have:
                    # BigQuery lists the column once added; the emulator does not, so it asks once
                    # per process.
                    self.run(f"ALTER TABLE {table_id} ADD COLUMN IF NOT EXISTS {column} INT64")
        self._ledger_ready = True

    def add_missing_columns(self, name: str, columns: list[tuple[str, str]]) -> list[str]:
        """A table created by an earlier version gets the columns added since (nullable, null in
        the rows it holds): ``ADD COLUMN IF NOT EXISTS``, so running it twice changes nothing. Once
        per table and process (the emulator does not list added columns)."""
        done: set[str] = self.__dict__.setdefault("_migrated", set())
        if name in done:
            return []
        have = {f.name for f in self.client.get_table(self.table(name).strip("`")).schema}
        missing = [(c, t) for c, t in columns if c not in have]
        for (
            column,
            kind,
        ) in missing:  # one statement each: the emulator takes one ALTER command per statement
            self.run(f"ALTER TABLE {self.table(name)} ADD COLUMN IF NOT EXISTS {column} {kind}")
        done.add(name)
        return [c for c, _ in missing]

    def stage_table(self, name: str, columns: list[tuple[str, str]], table: pa.Table) -> str:
        """A fresh staging table holding ``table``, with one load job (from memory, no object)."""
        return self.stage_uris(name, columns, [], [table])

    def stage_uris(
        self,
        name: str,
        columns: list[tuple[str, str]],
        uris: list[str],
        tables: Sequence[pa.Table] = (),
    ) -> str:
        """A fresh staging table loaded from Parquet objects with one load job (BigQuery reads
        them where they are: nothing passes through this process); ``tables`` (rare: batches
        landed by an older version) are appended from memory."""
        from google.cloud import bigquery

        table_id = f"{self.project}.{self.dataset}.{name}"
        self.client.delete_table(table_id, not_found_ok=True)
        self.client.create_table(
            bigquery.Table(table_id, schema=[bigquery.SchemaField(c, t) for c, t in columns])
        )
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET, write_disposition="WRITE_APPEND"
        )
        if uris:
            self.wait(self.client.load_table_from_uri(list(uris), table_id, job_config=config))
        for table in tables:
            sink = io.BytesIO()
            pq.write_table(table, sink)
            sink.seek(0)
            self.wait(self.client.load_table_from_file(sink, table_id, job_config=config))
        return f"`{table_id}`"

    def warehoused(self, batch_ids: list[str], window: Window) -> list[str]:
        """Which of these batches already have their warehouse ledger row (a cycle wrote them)."""
        from google.cloud import bigquery

        rows = self.run(
            f"""SELECT DISTINCT batch_id FROM {self.table("ledger", ops=True)}
            WHERE {window.sql("recorded_at")} AND stage = 'warehouse' AND ok """
            "AND batch_id IN UNNEST(@ids)",
            [bigquery.ArrayQueryParameter("ids", "STRING", list(batch_ids))],
        )
        return sorted(r["batch_id"] for r in rows)

    def record_cycle(
        self,
        batches: list[Landed],
        info: dict[str, dict[str, Any]],
        window: Window,
        seconds: float,
    ) -> None:
        """The ``land`` and ``warehouse`` ledger rows of a cycle's batches, and a row per gap or
        rewind their claims found (``anomaly_rows``), in one MERGE."""
        from google.cloud import bigquery

        if not batches:
            return
        self.ensure_ledger()
        types = dict(LEDGER_SCHEMA)
        cols = [c for c, _ in LEDGER_SCHEMA if c != "recorded_at"]
        params: list[QueryParameter] = []
        selects: list[str] = []
        for b in batches:
            rows_of_batch: list[dict[str, Any]] = [
                {
                    "batch_id": b.batch_id,
                    "region": b.region,
                    "stage": stage,
                    "offsets_in": b.offsets,
                    "valid": b.valid,
                    "quarantined": b.quarantined,
                    "duplicates": b.duplicates,
                    "skipped": b.skipped,
                    "rows_merged": rows,
                    "seconds": float(secs),
                    "ok": True,
                    "detail": detail,
                }
                for stage, rows, secs, detail in (
                    ("land", b.valid, b.seconds, ""),
                    (
                        "warehouse",
                        info[b.batch_id]["written"],
                        seconds,
                        info[b.batch_id]["detail"],
                    ),
                )
            ]
            if b.requeued:  # set aside by an earlier cycle, repaired: its set_aside row says so now
                rows_of_batch.append(
                    rows_of_batch[0]
                    | {
                        "stage": "set_aside",
                        "rows_merged": 0,
                        "seconds": 0.0,
                        "detail": "set aside, repaired, requeued and warehoused",
                    }
                )
            for values in rows_of_batch + anomaly_rows(b):
                n = len(selects)
                params += [
                    bigquery.ScalarQueryParameter(f"{c}{n}", types[c], values.get(c)) for c in cols
                ]
                selects.append(
                    "SELECT "
                    + ", ".join(f"@{c}{n} AS {c}" for c in cols)
                    + ", CURRENT_TIMESTAMP() AS recorded_at"
                )
        self.run(
            f"""MERGE {self.table("ledger", ops=True)} T USING ({" UNION ALL ".join(selects)}) S
            ON {window.sql("T.recorded_at")} AND T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED THEN UPDATE SET """
            f"""{", ".join(f"{c} = S.{c}" for c in [*cols[3:], "recorded_at"])}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}, recorded_at) """
            f"""VALUES ({", ".join("S." + c for c in cols)}, S.recorded_at)""",
            params,
        )

    def _stage(self, name: str, columns: list[tuple[str, str]], uri: str) -> str:
        """A per-batch staging table with one load job (keeps the per-table load quota
        untouched)."""
        return self.stage_uris(name, columns, [uri])

    def _blob(self, uri: str) -> gcs.Blob:
        bucket, name = uri.removeprefix("gs://").split("/", 1)
        return self.storage.bucket(bucket).blob(name)

    def _read_parquet(self, uri: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self._blob(uri).download_as_bytes()))

    def _write_parquet(self, uri: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self._blob(uri).upload_from_string(
            sink.getvalue(), content_type="application/vnd.apache.parquet"
        )

    # -- one batch ---------------------------------------------------------------------------------
    def merge_batch(self, landed: Landed) -> dict[str, Any]:
        """One batch through a warehouse cycle of its own (replay, tools, tests); the ingest's
        writer is the ``warehouse`` DAG, which takes every pending batch at once."""
        from .config import WarehouseSettings
        from .cycle import raise_failed, run_cycle

        result = run_cycle(self, [landed], self.settings or WarehouseSettings())
        if result.set_aside:
            raise GateError(
                f"batch {landed.batch_id} set aside: {result.set_aside[landed.batch_id]}"
            )
        raise_failed(result)
        if result.already:
            return {
                "events": landed.valid,
                "quarantine": landed.quarantined + landed.duplicates,
                "seconds": result.seconds,
                "oldest_event_age_s": None,
                "newest_event_age_s": None,
                "already": True,
            }
        done = result.batches[0]
        return {
            "events": done["events"],
            "written": done["written"],
            "quarantine": done["quarantine"],
            "seconds": result.seconds,
            "oldest_event_age_s": done["oldest_event_age_s"],
            "newest_event_age_s": done["newest_event_age_s"],
        }

    def _merge_partners_sql(self, stage: str) -> str:
        # Field by field: the value set by the newest event wins, so an older event arriving late
        # only fills a field no newer event has set, and never overwrites one.
        def pick(c: str) -> list[str]:
            lead = FOLLOWS.get(
                c, c
            )  # a follower moves with its leader (both sides' versions are the leader's)
            newer = f"S.{lead}_version > COALESCE(T.{lead}_version, -1)"
            return [
                f"{c} = CASE WHEN {newer} THEN S.{c} ELSE T.{c} END",
                f"{c}_version = NULLIF(GREATEST(COALESCE(S.{c}_version, -1), "
                f"COALESCE(T.{c}_version, -1)), -1)",
            ]

        latest = [
            f"{c} = CASE WHEN S.partner_version > T.partner_version THEN S.{c} ELSE T.{c} END"
            for c in ("last_event_id", "updated_at", "batch_id")
        ]
        updates = ", ".join(
            [u for c in PARTNER_COLUMNS for u in pick(c)]
            + latest
            + ["partner_version = GREATEST(S.partner_version, T.partner_version)"]
        )
        cols = [c for c, _ in PARTNER_SCHEMA]
        return (
            f"MERGE {self.table('partners')} T USING (SELECT * FROM {stage}) S "
            f"""ON T.partner_id = S.partner_id
            WHEN MATCHED THEN UPDATE SET {updates}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}) """
            f"VALUES ({', '.join('S.' + c for c in cols)})"
        )

    def insert_rows(
        self,
        name: str,
        schema: list[tuple[str, str]],
        rows: Sequence[Mapping[str, Any]],
        ops: bool = True,
        partition: str | None = None,
        cluster: str | None = None,
        key: tuple[str, ...] = (),
    ) -> int:
        """Writes a few rows (a measurement, a report) with one DML statement, the table created
        when missing. DML, not a load job or a streaming insert: no load quota, and rows are
        queryable at once on BigQuery and the emulator. With ``key`` the rows are MERGEd on those
        columns, so writing them again replaces them (idempotent); without, they are appended.
        Column names are quoted (``partition`` is reserved)."""
        from google.cloud import bigquery

        table = self.table(name, ops=ops)
        ddl = f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'`{c}` {t}' for c, t in schema)})"
        if partition:
            ddl += f" PARTITION BY DATE({partition})" + (
                f" CLUSTER BY {cluster}" if cluster else ""
            )
        self.run(ddl)
        if not rows:
            return 0
        params: list[QueryParameter] = []
        selects: list[str] = []
        for i, row in enumerate(rows):
            params += [
                bigquery.ScalarQueryParameter(f"c{i}_{j}", kind, row.get(column))
                for j, (column, kind) in enumerate(schema)
            ]
            selects.append(
                "SELECT "
                + ", ".join(f"@c{i}_{j} AS `{column}`" for j, (column, _) in enumerate(schema))
            )
        columns = ", ".join(f"`{c}`" for c, _ in schema)
        if not key:
            self.run(f"INSERT INTO {table} ({columns}) " + " UNION ALL ".join(selects), params)
            return len(rows)
        on = " AND ".join(f"T.`{c}` = S.`{c}`" for c in key)
        updates = ", ".join(f"`{c}` = S.`{c}`" for c, _ in schema if c not in key)
        self.run(
            f"""MERGE {table} T USING ({" UNION ALL ".join(selects)}) S ON {on}
            WHEN MATCHED THEN UPDATE SET {updates}
            WHEN NOT MATCHED THEN INSERT ({columns}) """
            f"""VALUES ({", ".join(f"S.`{c}`" for c, _ in schema)})""",
            params,
        )
        return len(rows)

    # -- ledger -----------------------------------------------------------------------------------
    def record(
        self,
        landed: Landed,
        stage: str,
        rows_merged: int,
        seconds: float,
        ok: bool = True,
        detail: str = "",
    ) -> None:
        """One ledger row per batch and stage; recording again replaces it (idempotent)."""
        from google.cloud import bigquery

        self.ensure_ledger()
        values: dict[str, str | int | float | bool] = {
            "batch_id": landed.batch_id,
            "region": landed.region,
            "stage": stage,
            "offsets_in": landed.offsets,
            "valid": landed.valid,
            "quarantined": landed.quarantined,
            "duplicates": landed.duplicates,
            "skipped": landed.skipped,
            "rows_merged": rows_merged,
            "seconds": float(seconds),
            "ok": ok,
            "detail": detail,
        }
        types = dict(LEDGER_SCHEMA)
        params = [bigquery.ScalarQueryParameter(k, types[k], v) for k, v in values.items()]
        cols = list(values)
        self.run(
            f"""MERGE {self.table("ledger", ops=True)} T
            USING (SELECT {", ".join(f"@{c} AS {c}" for c in cols)}, """
            f"""CURRENT_TIMESTAMP() AS recorded_at) S
            ON T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED THEN UPDATE SET """
            f"""{", ".join(f"{c} = S.{c}" for c in [*cols[3:], "recorded_at"])}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}, recorded_at) """
            f"""VALUES ({", ".join("S." + c for c in cols)}, S.recorded_at)""",
            params,
        )

    def record_stage(
        self,
        batch_id: str,
        stage: str,
        rows_merged: int,
        seconds: float,
        ok: bool = True,
        detail: str = "",
        like: str = "warehouse",
        replace: bool = True,
    ) -> None:
        """A later stage's ledger row (a sync): the batch's numbers copied from its ``like`` row.
        Recording the same outcome again leaves the row as it is (its time included); with
        ``replace=False`` an existing row is never changed (a replay adds only missing rows)."""
        from google.cloud import bigquery

        self.ensure_ledger()
        params = [
            bigquery.ScalarQueryParameter("b", "STRING", batch_id),
            bigquery.ScalarQueryParameter("stage", "STRING", stage),
            bigquery.ScalarQueryParameter("like", "STRING", like),
            bigquery.ScalarQueryParameter("rows", "INT64", rows_merged),
            bigquery.ScalarQueryParameter("seconds", "FLOAT64", float(seconds)),
            bigquery.ScalarQueryParameter("ok", "BOOL", ok),
            bigquery.ScalarQueryParameter("detail", "STRING", detail),
            bigquery.ScalarQueryParameter("replace", "BOOL", replace),
        ]
        cols = [c for c, _ in LEDGER_SCHEMA]
        self.run(
            f"""MERGE {self.table("ledger", ops=True)} T
            USING (SELECT batch_id, region, @stage AS stage, offsets_in, valid, quarantined, """
            """duplicates, @rows AS rows_merged, @seconds AS seconds,
                          @ok AS ok, @detail AS detail, CURRENT_TIMESTAMP() AS recorded_at, """
            f"""skipped, recovered
                   FROM {self.table("ledger", ops=True)} WHERE batch_id = @b AND stage = @like) S
            ON T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED AND @replace AND (T.rows_merged != S.rows_merged OR T.ok != S.ok """
            f"""OR COALESCE(T.detail, '') != COALESCE(S.detail, ''))
              THEN UPDATE SET {", ".join(f"{c} = S.{c}" for c in cols[3:])}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}) """
            f"""VALUES ({", ".join("S." + c for c in cols)})""",
            params,
        )

    def balance(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """Every offset accounted for: valid + quarantined + duplicates + skipped + recovered =
        offsets, at every stage, and no row says otherwise (``ok``: a gap row never is)."""
        from google.cloud import bigquery

        self.ensure_ledger()
        rows = self.run(
            """SELECT stage, offsets_in, valid, quarantined, duplicates, """
            f"""COALESCE(skipped, 0) AS skipped,
            COALESCE(recovered, 0) AS recovered, ok, detail """
            f"""FROM {self.table("ledger", ops=True)} WHERE batch_id = @b""",
            [bigquery.ScalarQueryParameter("b", "STRING", batch_id)],
        )
        if not rows:
            raise GateError(f"ledger: no row for batch {batch_id}")
        for r in rows:
            if not balances(r) or not r["ok"]:
                raise GateError(
                    f"ledger, batch {batch_id}, stage {r['stage']}: offsets {r['offsets_in']} "
                    f"!= valid {r['valid']} + quarantined "
                    f"{r['quarantined']} + duplicates {r['duplicates']} + skipped {r['skipped']} "
                    f"+ recovered {r['recovered']} "
                    f"(ok={r['ok']}; {r['detail'] or ''})"
                )
        return {r["stage"]: dict(r) for r in rows}


def sql_timestamp(at: datetime) -> str:
    """A constant TIMESTAMP literal: BigQuery prunes partitions on it (a query parameter it may
    not)."""
    return f"TIMESTAMP '{at.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}+00:00'"


def balances(row: Row | Mapping[str, Any]) -> bool:
    """offsets_in = valid + quarantined + duplicates + skipped + recovered (NULL: a row from before
    the column, or a stage that recovers nothing)."""
    return bool(
        row["offsets_in"]
        == row["valid"]
        + row["quarantined"]
        + row["duplicates"]
        + (row.get("skipped") or 0)
        + (row.get("recovered") or 0)
    )


def anomaly_rows(landed: Landed) -> list[dict[str, Any]]:
    """One ledger row per kind of anomaly its claim or read found: ``gap`` (offsets deleted before
    they were read: lost, so ``ok`` is false and the ledger never balances quietly) and ``rewind``
    (offsets already landed that the group was rewound to: not read again, counted as
    duplicates)."""
    out = []
    for kind in ("gap", "rewind"):
        found = [a for a in landed.anomalies or [] if a["kind"] == kind]
        if not found:
            continue
        n = sum(max(0, a["end"] - a["start"]) for a in found)
        out.append(
            {
                "batch_id": landed.batch_id,
                "region": landed.region,
                "stage": kind,
                "offsets_in": n,
                "valid": 0,
                "quarantined": 0,
                "duplicates": n if kind == "rewind" else 0,
                "skipped": n if kind == "gap" else 0,
                "rows_merged": 0,
                "seconds": 0.0,
                "ok": kind == "rewind",
                "detail": "; ".join(a["detail"] for a in found),
            }
        )
    return out


def event_ages(valid: pa.Table) -> dict[str, float | None]:
    """How old the batch's oldest and newest events are now (their Kafka timestamps), in
    seconds."""
    if not valid.num_rows:
        return {"oldest_event_age_s": None, "newest_event_age_s": None}
    import pyarrow.compute as pc

    now = time.time()
    stamps = valid.column("kafka_timestamp")
    oldest, newest = pc.min(stamps).as_py(), pc.max(stamps).as_py()
    return {
        "oldest_event_age_s": round(now - oldest.timestamp(), 1),
        "newest_event_age_s": round(now - newest.timestamp(), 1),
    }


def freshness_gate(
    batch_id: str, merged: Mapping[str, Any], sla_s: float
) -> dict[str, float | None]:
    """The batch's events were queryable within the SLA (counted from their Kafka timestamps).

    The data is in and the offsets are committed whatever this says: it fails the run so that
    operators see a pipeline falling behind, it never holds a batch back."""
    age, newest = merged.get("oldest_event_age_s"), merged.get("newest_event_age_s")
    if age is not None and age > sla_s:
        newest_said = "" if newest is None else f" (newest {newest:.0f} s)"
        raise GateError(
            f"freshness gate, batch {batch_id}: its oldest event became queryable {age:.0f} s "
            f"after it reached Kafka{newest_said}; the SLA is {sla_s:.0f} s"
        )
    return {
        "oldest_event_age_s": age,
        "newest_event_age_s": newest,
        "sla_s": sla_s,
    }


def cycle_freshness_gate(
    batches: list[dict[str, Any]], sla_s: float
) -> dict[str, dict[str, float | None]]:
    """The freshness gate over a warehouse cycle's batches: every late batch named at once.

    Recovery batches (``enrollment.recovery``: quarantined messages re-validated, ids starting
    ``recovery-``) carry their messages' original Kafka timestamps on purpose: they are old by
    design, never late, and are left out."""
    from .recovery import is_recovery_batch

    late: list[str] = []
    out: dict[str, dict[str, float | None]] = {}
    for b in batches:
        if is_recovery_batch(b["batch_id"]):
            continue
        try:
            out[b["batch_id"]] = freshness_gate(b["batch_id"], b, sla_s)
        except GateError as exc:
            late.append(f"{b.get('region', '?')}: {exc}")
    if late:
        raise GateError(f"{len(late)} of {len(batches)} batches late: " + " | ".join(late))
    return out
