"""The warehouse stage: a landed batch into BigQuery's event history, current partner state and
quarantine, with gates, and the ledger every stage reports to.

BigQuery's per-table load-job quota (~1,500 a day) would be overrun by loading every batch into
the same table (4 regions x 1,440 one-minute batches = 5,760 loads a day). So each batch is
loaded into its **own staging table** (one load job per staging table and day) and MERGEd into
the permanent tables: DML does not count against the load quota. The staging tables are dropped
explicitly (the emulator ignores table expiration).

SQL here runs on BigQuery and on the emulator: explicit MERGE column lists, no `destination=`
query jobs, tables created before loads.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .batches import GateError, Landed

_BQ_TYPES = {pa.string(): "STRING", pa.int16(): "INT64", pa.int32(): "INT64", pa.int64(): "INT64", pa.float64(): "FLOAT64",
             pa.bool_(): "BOOL", pa.binary(): "BYTES"}

PARTNER_COLUMNS = ("region", "country", "first_name", "last_name", "email", "phone", "language", "address_line1", "address_city",
                   "address_postal_code", "address_state", "date_of_birth", "sponsor_id", "status", "enrolled_at", "terminated_at")
# Each field keeps the partner version that set it (<field>_version): a field takes a value only
# from an event newer than the one that set it, whatever order events arrive in, within a batch
# or across batches.
PARTNER_SCHEMA = [("partner_id", "STRING"), *((c, "TIMESTAMP" if c.endswith("_at") else "STRING") for c in PARTNER_COLUMNS),
                  ("partner_version", "INT64"), ("last_event_id", "STRING"), ("updated_at", "TIMESTAMP"), ("batch_id", "STRING"),
                  *((f"{c}_version", "INT64") for c in PARTNER_COLUMNS)]
LEDGER_SCHEMA = [("batch_id", "STRING"), ("region", "STRING"), ("stage", "STRING"), ("offsets_in", "INT64"), ("valid", "INT64"),
                 ("quarantined", "INT64"), ("duplicates", "INT64"), ("rows_merged", "INT64"), ("seconds", "FLOAT64"),
                 ("ok", "BOOL"), ("detail", "STRING"), ("recorded_at", "TIMESTAMP")]


def _bq_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP"
    return _BQ_TYPES[arrow_type]


def landed_schema(table_schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, _bq_type(f.type)) for f in table_schema]


def _ddl(name: str, columns: list[tuple[str, str]], partition: str, cluster: str) -> str:
    cols = ", ".join(f"{c} {t}" for c, t in columns)
    return f"CREATE TABLE IF NOT EXISTS {name} ({cols}) PARTITION BY DATE({partition}) CLUSTER BY {cluster}"


@dataclass
class Warehouse:
    client: object  # google.cloud.bigquery.Client
    storage: object  # google.cloud.storage.Client
    project: str
    dataset: str
    ops_dataset: str

    def table(self, name: str, ops: bool = False) -> str:
        return f"`{self.project}.{self.ops_dataset if ops else self.dataset}.{name}`"

    def run(self, sql: str, params: list | None = None) -> list:
        from google.cloud import bigquery

        job = self.client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params or []))
        return list(job.result())

    # -- tables ----------------------------------------------------------------------------------
    def ensure_tables(self, events_schema: list[tuple[str, str]], quarantine_schema: list[tuple[str, str]]) -> None:
        self.run(_ddl(self.table("events"), events_schema, "occurred_at", "region, partner_id"))
        self.run(_ddl(self.table("partners"), PARTNER_SCHEMA, "updated_at", "region, partner_id"))
        self.run(_ddl(self.table("quarantine"), quarantine_schema, "kafka_timestamp", "region, batch_id"))
        self.run(_ddl(self.table("ledger", ops=True), LEDGER_SCHEMA, "recorded_at", "region, batch_id"))

    def _stage(self, name: str, columns: list[tuple[str, str]], uri: str) -> str:
        """A per-batch staging table with one load job (keeps the per-table load quota untouched)."""
        from google.cloud import bigquery

        table_id = f"{self.project}.{self.dataset}.{name}"
        self.client.delete_table(table_id, not_found_ok=True)
        self.client.create_table(bigquery.Table(table_id, schema=[bigquery.SchemaField(c, t) for c, t in columns]))
        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET, write_disposition="WRITE_TRUNCATE")
        self.client.load_table_from_uri(uri, table_id, job_config=config).result()
        return f"`{table_id}`"

    def _blob(self, uri: str):
        bucket, name = uri.removeprefix("gs://").split("/", 1)
        return self.storage.bucket(bucket).blob(name)

    def _read_parquet(self, uri: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self._blob(uri).download_as_bytes()))

    def _write_parquet(self, uri: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self._blob(uri).upload_from_string(sink.getvalue(), content_type="application/vnd.apache.parquet")

    # -- the stage ------------------------------------------------------------------------------
    def merge_batch(self, landed: Landed) -> dict:
        t0 = time.monotonic()
        valid = self._read_parquet(landed.valid_uri)
        quarantine = self._read_parquet(landed.quarantine_uri)
        events_schema, quarantine_schema = landed_schema(valid.schema), landed_schema(quarantine.schema)
        self.ensure_tables(events_schema, quarantine_schema)
        suffix = landed.batch_id.replace("-", "_")
        staged = []
        events_stage = None
        try:
            if valid.num_rows:
                stage = events_stage = self._stage(f"_stage_events_{suffix}", events_schema, landed.valid_uri)
                staged.append(stage)
                cols = [c for c, _ in events_schema]
                self.run(f"""MERGE {self.table('events')} T USING (SELECT * FROM {stage}) S ON T.event_id = S.event_id
                    WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) VALUES ({', '.join('S.' + c for c in cols)})""")
                partners = partner_changes(valid)
                if partners.num_rows:
                    uri = landed.valid_uri.rsplit("/", 1)[0] + "/partners.parquet"
                    self._write_parquet(uri, partners)
                    stage = self._stage(f"_stage_partners_{suffix}", PARTNER_SCHEMA, uri)
                    staged.append(stage)
                    self.run(self._merge_partners_sql(stage))
            if quarantine.num_rows:
                stage = self._stage(f"_stage_quarantine_{suffix}", quarantine_schema, landed.quarantine_uri)
                staged.append(stage)
                cols = [c for c, _ in quarantine_schema]
                self.run(f"""MERGE {self.table('quarantine')} T USING (SELECT * FROM {stage}) S
                    ON T.batch_id = S.batch_id AND T.kafka_partition = S.kafka_partition AND T.kafka_offset = S.kafka_offset
                    WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) VALUES ({', '.join('S.' + c for c in cols)})""")
            counts = self.gate(landed, valid.num_rows, events_stage)
        finally:
            for stage in staged:
                self.client.delete_table(stage.strip("`"), not_found_ok=True)
        return counts | {"seconds": round(time.monotonic() - t0, 3), **event_ages(valid)}

    def _merge_partners_sql(self, stage: str) -> str:
        # Field by field: the value set by the newest event wins, so an older event arriving late
        # only fills a field no newer event has set, and never overwrites one.
        def pick(c: str) -> list[str]:
            newer = f"S.{c}_version > COALESCE(T.{c}_version, -1)"
            return [f"{c} = CASE WHEN {newer} THEN S.{c} ELSE T.{c} END",
                    f"{c}_version = NULLIF(GREATEST(COALESCE(S.{c}_version, -1), COALESCE(T.{c}_version, -1)), -1)"]

        latest = [f"{c} = CASE WHEN S.partner_version > T.partner_version THEN S.{c} ELSE T.{c} END" for c in ("last_event_id", "updated_at", "batch_id")]
        updates = ", ".join([u for c in PARTNER_COLUMNS for u in pick(c)] + latest + ["partner_version = GREATEST(S.partner_version, T.partner_version)"])
        cols = [c for c, _ in PARTNER_SCHEMA]
        return f"""MERGE {self.table('partners')} T USING (SELECT * FROM {stage}) S ON T.partner_id = S.partner_id
            WHEN MATCHED THEN UPDATE SET {updates}
            WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) VALUES ({', '.join('S.' + c for c in cols)})"""

    def gate(self, landed: Landed, valid_rows: int, events_stage: str | None) -> dict:
        """Row counts against the manifest, unique event ids, mandatory columns, quarantine count.

        The batch's event ids are read from its staging table (a join), not sent as a parameter:
        a parameter of 100,000 ids is slow on the emulator and over BigQuery's request limits."""
        from google.cloud import bigquery

        n = distinct_ids = incomplete = 0
        if events_stage is not None:
            row = self.run(f"""SELECT COUNT(*) AS n, COUNT(DISTINCT T.event_id) AS distinct_ids,
                    COUNTIF(T.partner_id IS NULL OR T.occurred_at IS NULL OR T.region IS NULL OR T.event_type IS NULL) AS incomplete
                FROM {events_stage} S JOIN {self.table('events')} T ON T.event_id = S.event_id""")[0]
            n, distinct_ids, incomplete = row["n"], row["distinct_ids"], row["incomplete"]
        quarantined = self.run(f"SELECT COUNT(*) AS n FROM {self.table('quarantine')} WHERE batch_id = @batch",
                               [bigquery.ScalarQueryParameter("batch", "STRING", landed.batch_id)])[0]["n"]
        problems = []
        if distinct_ids != valid_rows:
            problems.append(f"events holds {distinct_ids} of the batch's {valid_rows} valid event ids")
        if n != distinct_ids:
            problems.append(f"{n - distinct_ids} of the batch's event ids appear more than once")
        if incomplete:
            problems.append(f"{incomplete} rows miss a mandatory column")
        if quarantined != landed.quarantined + landed.duplicates:
            problems.append(f"quarantine holds {quarantined} rows, the batch quarantined {landed.quarantined} + {landed.duplicates} duplicates")
        if problems:
            raise GateError(f"warehouse gate, batch {landed.batch_id}: " + "; ".join(problems))
        return {"events": distinct_ids, "quarantine": quarantined}

    def insert_rows(self, name: str, schema: list[tuple[str, str]], rows: list[dict], ops: bool = True, partition: str | None = None,
                    cluster: str | None = None, key: tuple[str, ...] = ()) -> int:
        """Writes a few rows (a measurement, a report) with one DML statement, the table created
        when missing. DML, not a load job or a streaming insert: no load quota, and rows are
        queryable at once on BigQuery and the emulator. With ``key`` the rows are MERGEd on those
        columns, so writing them again replaces them (idempotent); without, they are appended.
        Column names are quoted (``partition`` is reserved)."""
        from google.cloud import bigquery

        table = self.table(name, ops=ops)
        ddl = f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'`{c}` {t}' for c, t in schema)})"
        if partition:
            ddl += f" PARTITION BY DATE({partition})" + (f" CLUSTER BY {cluster}" if cluster else "")
        self.run(ddl)
        if not rows:
            return 0
        params, selects = [], []
        for i, row in enumerate(rows):
            params += [bigquery.ScalarQueryParameter(f"c{i}_{j}", kind, row.get(column)) for j, (column, kind) in enumerate(schema)]
            selects.append("SELECT " + ", ".join(f"@c{i}_{j} AS `{column}`" for j, (column, _) in enumerate(schema)))
        columns = ", ".join(f"`{c}`" for c, _ in schema)
        if not key:
            self.run(f"INSERT INTO {table} ({columns}) " + " UNION ALL ".join(selects), params)
            return len(rows)
        on = " AND ".join(f"T.`{c}` = S.`{c}`" for c in key)
        updates = ", ".join(f"`{c}` = S.`{c}`" for c, _ in schema if c not in key)
        self.run(f"""MERGE {table} T USING ({' UNION ALL '.join(selects)}) S ON {on}
            WHEN MATCHED THEN UPDATE SET {updates}
            WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({', '.join(f'S.`{c}`' for c, _ in schema)})""", params)
        return len(rows)

    # -- ledger -----------------------------------------------------------------------------------
    def record(self, landed: Landed, stage: str, rows_merged: int, seconds: float, ok: bool = True, detail: str = "") -> None:
        """One ledger row per batch and stage; recording again replaces it (idempotent)."""
        from google.cloud import bigquery

        values = {"batch_id": landed.batch_id, "region": landed.region, "stage": stage, "offsets_in": landed.offsets, "valid": landed.valid,
                  "quarantined": landed.quarantined, "duplicates": landed.duplicates, "rows_merged": rows_merged, "seconds": float(seconds),
                  "ok": ok, "detail": detail}
        types = dict(LEDGER_SCHEMA)
        params = [bigquery.ScalarQueryParameter(k, types[k], v) for k, v in values.items()]
        cols = list(values)
        self.run(f"""MERGE {self.table('ledger', ops=True)} T
            USING (SELECT {', '.join(f'@{c} AS {c}' for c in cols)}, CURRENT_TIMESTAMP() AS recorded_at) S
            ON T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED THEN UPDATE SET {', '.join(f'{c} = S.{c}' for c in cols[3:] + ['recorded_at'])}
            WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}, recorded_at) VALUES ({', '.join('S.' + c for c in cols)}, S.recorded_at)""", params)

    def record_stage(self, batch_id: str, stage: str, rows_merged: int, seconds: float, ok: bool = True, detail: str = "",
                     like: str = "warehouse", replace: bool = True) -> None:
        """A later stage's ledger row (a sync): the batch's numbers copied from its ``like`` row.
        Recording the same outcome again leaves the row as it is (its time included); with
        ``replace=False`` an existing row is never changed (a replay adds only missing rows)."""
        from google.cloud import bigquery

        params = [bigquery.ScalarQueryParameter("b", "STRING", batch_id), bigquery.ScalarQueryParameter("stage", "STRING", stage),
                  bigquery.ScalarQueryParameter("like", "STRING", like), bigquery.ScalarQueryParameter("rows", "INT64", rows_merged),
                  bigquery.ScalarQueryParameter("seconds", "FLOAT64", float(seconds)), bigquery.ScalarQueryParameter("ok", "BOOL", ok),
                  bigquery.ScalarQueryParameter("detail", "STRING", detail), bigquery.ScalarQueryParameter("replace", "BOOL", replace)]
        cols = [c for c, _ in LEDGER_SCHEMA]
        self.run(f"""MERGE {self.table('ledger', ops=True)} T
            USING (SELECT batch_id, region, @stage AS stage, offsets_in, valid, quarantined, duplicates, @rows AS rows_merged, @seconds AS seconds,
                          @ok AS ok, @detail AS detail, CURRENT_TIMESTAMP() AS recorded_at
                   FROM {self.table('ledger', ops=True)} WHERE batch_id = @b AND stage = @like) S
            ON T.batch_id = S.batch_id AND T.stage = S.stage
            WHEN MATCHED AND @replace AND (T.rows_merged != S.rows_merged OR T.ok != S.ok OR COALESCE(T.detail, '') != COALESCE(S.detail, ''))
              THEN UPDATE SET {', '.join(f'{c} = S.{c}' for c in cols[3:])}
            WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) VALUES ({', '.join('S.' + c for c in cols)})""", params)

    def balance(self, batch_id: str) -> dict:
        """Every offset accounted for: valid + quarantined + duplicates = offsets, at every stage."""
        from google.cloud import bigquery

        rows = self.run(f"SELECT stage, offsets_in, valid, quarantined, duplicates, ok FROM {self.table('ledger', ops=True)} WHERE batch_id = @b",
                        [bigquery.ScalarQueryParameter("b", "STRING", batch_id)])
        if not rows:
            raise GateError(f"ledger: no row for batch {batch_id}")
        for r in rows:
            if r["offsets_in"] != r["valid"] + r["quarantined"] + r["duplicates"] or not r["ok"]:
                raise GateError(f"ledger, batch {batch_id}, stage {r['stage']}: offsets {r['offsets_in']} != valid {r['valid']} + quarantined "
                                f"{r['quarantined']} + duplicates {r['duplicates']} (ok={r['ok']})")
        return {r["stage"]: dict(r) for r in rows}


def event_ages(valid: pa.Table) -> dict:
    """How old the batch's oldest and newest events are now (their Kafka timestamps), in seconds."""
    if not valid.num_rows:
        return {"oldest_event_age_s": None, "newest_event_age_s": None}
    import pyarrow.compute as pc

    now = time.time()
    stamps = valid.column("kafka_timestamp")
    oldest, newest = pc.min(stamps).as_py(), pc.max(stamps).as_py()
    return {"oldest_event_age_s": round(now - oldest.timestamp(), 1), "newest_event_age_s": round(now - newest.timestamp(), 1)}


def freshness_gate(batch_id: str, merged: dict, sla_s: float) -> dict:
    """The batch's events were queryable within the SLA (counted from their Kafka timestamps).

    The data is in and the offsets are committed whatever this says: it fails the run so that
    operators see a pipeline falling behind, it never holds a batch back."""
    age = merged.get("oldest_event_age_s")
    if age is not None and age > sla_s:
        raise GateError(f"freshness gate, batch {batch_id}: its oldest event became queryable {age:.0f} s after it reached Kafka "
                        f"(newest {merged.get('newest_event_age_s'):.0f} s); the SLA is {sla_s:.0f} s")
    return {"oldest_event_age_s": age, "newest_event_age_s": merged.get("newest_event_age_s"), "sla_s": sla_s}


def partner_changes(valid: pa.Table) -> pa.Table:
    """One row per partner of the batch: what its partner events say, newest version first."""
    frame = valid.select(["partner_id", "event_type", "event_id", "partner_version", "occurred_at", "batch_id", "region", "country", "first_name", "last_name",
                          "email", "phone", "language", "address_line1", "address_city", "address_postal_code", "address_state", "date_of_birth",
                          "sponsor_id"]).to_pandas()
    frame = frame[frame["event_type"].isin(["partner.enrolled", "partner.updated", "partner.terminated"])]
    if frame.empty:
        return pa.table({c: pa.array([], pa.string() if t == "STRING" else pa.int64() if t == "INT64" else pa.timestamp("us", tz="UTC")) for c, t in PARTNER_SCHEMA})
    frame["status"] = frame["event_type"].map({"partner.enrolled": "active", "partner.terminated": "terminated"})
    frame["enrolled_at"] = frame["occurred_at"].where(frame["event_type"] == "partner.enrolled")
    frame["terminated_at"] = frame["occurred_at"].where(frame["event_type"] == "partner.terminated")
    frame["last_event_id"] = frame["event_id"]
    frame["updated_at"] = frame["occurred_at"]
    # Within the batch the same rule as the MERGE: each field's value from the newest event that
    # set it, with that event's version.
    ordered = frame.sort_values(["partner_version", "occurred_at"], ascending=False, kind="stable")
    latest = ordered.groupby("partner_id", sort=True).first().reset_index()
    latest["partner_version"] = frame.groupby("partner_id")["partner_version"].max().reindex(latest["partner_id"]).to_numpy()
    for column in PARTNER_COLUMNS:
        set_at = frame[frame[column].notna()].groupby("partner_id")["partner_version"].max()
        latest[f"{column}_version"] = set_at.reindex(latest["partner_id"]).to_numpy()
    out = {}
    for column, kind in PARTNER_SCHEMA:
        series = latest[column]
        if kind == "TIMESTAMP":
            out[column] = pa.array(pd.to_datetime(series, utc=True), pa.timestamp("us", tz="UTC"))
        elif kind == "INT64":
            out[column] = pa.array(series.astype("Int64"), pa.int64(), from_pandas=True)
        else:
            out[column] = pa.array(series.astype(object).where(series.notna(), None), pa.string())
    return pa.table(out)
