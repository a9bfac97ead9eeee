"""BigQuery for the pipeline: one handle (the client, the datasets, one job timeout, the
statements sent), staging tables loaded from objects, and small keyed writes.

BigQuery's per-table load-job quota (~1,500 a day) would be overrun by loading every batch into
the same table (4 regions x 1,440 one-minute batches = 5,760 loads a day). So each cycle is
loaded into **its own staging tables** (one load job each) and inserted or MERGEd into the
permanent tables: DML does not count against the load quota. The staging tables are dropped
explicitly (the emulator ignores table expiration).

SQL here runs on BigQuery and on the emulator: explicit MERGE column lists, no `destination=`
query jobs, tables created before loads. Which tables exist is the stages' business
(``warehouse.tables``, ``sync.tables``): this handle knows none of them."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from enrollment.clients.services import bigquery_read_client

if TYPE_CHECKING:
    import google.cloud.storage as gcs
    from google.cloud import bigquery
    from google.cloud.bigquery.table import Row

    from enrollment.config import WarehouseSettings

log = logging.getLogger(__name__)


_BQ_TYPES = {
    pa.string(): "STRING",
    pa.int16(): "INT64",
    pa.int32(): "INT64",
    pa.int64(): "INT64",
    pa.float64(): "FLOAT64",
    pa.bool_(): "BOOL",
    pa.binary(): "BYTES",
}


DEFAULT_JOB_TIMEOUT_S = 600.0  # enrollment.config.WarehouseSettings.job_timeout_s
MAX_LOAD_URIS = 10_000  # source URIs BigQuery takes in one load job


_Result = TypeVar("_Result", covariant=True)


if TYPE_CHECKING:
    QueryParameter: TypeAlias = bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter


class _Job(Protocol[_Result]):
    """What ``BigQuery.wait`` needs of a BigQuery job (a query job or a load job)."""

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


@dataclass
class BigQuery:
    """The pipeline's handle on BigQuery: its datasets, one job timeout, statements sent (the
    tests count the writers), staging tables loaded from objects, and small keyed writes.

    It knows no table of the pipeline: the warehouse's tables and the ledger are
    ``enrollment.warehouse`` (``tables``, ``ledger``), the sinks' ``enrollment.sync.tables``."""

    client: bigquery.Client
    storage: gcs.Client
    project: str
    dataset: str
    ops_dataset: str
    settings: WarehouseSettings | None = None  # the defaults when None
    statements: list[str] = field(
        default_factory=list, repr=False
    )  # every statement sent, in order (tests count the writers)
    # What this process already created or migrated (once each: the emulator does not list
    # added columns, so asking again would repeat the ALTERs).
    migrated: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def table(self, name: str, ops: bool = False) -> str:
        return f"`{self.project}.{self.ops_dataset if ops else self.dataset}.{name}`"

    def run(self, sql: str, params: Sequence[QueryParameter] | None = None) -> list[Row]:
        from google.cloud import bigquery

        self.statements.append(sql)
        job = self.client.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params or [])
        )
        return list(self.wait(job))

    def pages(
        self, sql: str, params: Sequence[QueryParameter] | None = None, size: int = 5_000
    ) -> Iterator[list[Row]]:
        """A query's rows ``size`` at a time: one query, its result read as the pages are used,
        so a caller's memory holds one page whatever the result's size."""
        from google.cloud import bigquery

        self.statements.append(sql)
        job = self.client.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params or [])
        )
        page: list[Row] = []
        for row in self.wait(job):
            page.append(row)
            if len(page) >= size:
                yield page
                page = []
        if page:
            yield page

    def read_arrow(self, table: str) -> pa.Table:
        """A table's rows as Arrow through the Storage Read API: record batches, no JSON and no
        Python object per row (20,000 partners: 0.35 s here, 3.8 s through the REST rows). On an
        emulator without that API (no ``BIGQUERY_STORAGE_EMULATOR_HOST``), the REST rows."""
        rows = self.client.list_rows(table.strip("`"))
        reader = bigquery_read_client()
        with warnings.catch_warnings():
            # google-cloud-bigquery's own read path suggests pandas-gbq for it (pending, no
            # date): nothing to change here, and one line per task log is noise.
            warnings.filterwarnings(
                "ignore", "Retrieving Arrow record batches", PendingDeprecationWarning
            )
            if reader is not None:
                return rows.to_arrow(bqstorage_client=reader)
            return rows.to_arrow(create_bqstorage_client="BIGQUERY_EMULATOR_HOST" not in os.environ)

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

    def add_missing_columns(self, name: str, columns: list[tuple[str, str]]) -> list[str]:
        """A table created by an earlier version gets the columns added since (nullable, null in
        the rows it holds): ``ADD COLUMN IF NOT EXISTS``, so running it twice changes nothing. Once
        per table and process (the emulator does not list added columns)."""
        if name in self.migrated:
            return []
        have = {f.name for f in self.client.get_table(self.table(name).strip("`")).schema}
        missing = [(c, t) for c, t in columns if c not in have]
        for (
            column,
            kind,
        ) in missing:  # one statement each: the emulator takes one ALTER command per statement
            self.run(f"ALTER TABLE {self.table(name)} ADD COLUMN IF NOT EXISTS {column} {kind}")
        self.migrated.add(name)
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
        """A fresh staging table loaded from Parquet objects with one load job per
        ``MAX_LOAD_URIS`` (BigQuery reads them where they are: nothing passes through this
        process); ``tables`` (rare: batches landed by an older version) are appended from
        memory."""
        from google.cloud import bigquery

        table_id = f"{self.project}.{self.dataset}.{name}"
        self.client.delete_table(table_id, not_found_ok=True)
        self.client.create_table(
            bigquery.Table(table_id, schema=[bigquery.SchemaField(c, t) for c, t in columns])
        )
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET, write_disposition="WRITE_APPEND"
        )
        uris = list(uris)
        for start in range(0, len(uris), MAX_LOAD_URIS):
            self.wait(
                self.client.load_table_from_uri(
                    uris[start : start + MAX_LOAD_URIS], table_id, job_config=config
                )
            )
        for table in tables:
            sink = io.BytesIO()
            pq.write_table(table, sink)
            sink.seek(0)
            self.wait(self.client.load_table_from_file(sink, table_id, job_config=config))
        return f"`{table_id}`"

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


def sql_timestamp(at: datetime) -> str:
    """A constant TIMESTAMP literal: BigQuery prunes partitions on it (a query parameter it may
    not)."""
    return f"TIMESTAMP '{at.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}+00:00'"
