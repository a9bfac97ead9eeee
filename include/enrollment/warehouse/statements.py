"""The warehouse cycle's writes as SQL text: the staged ids the dedup window holds (the window
read once), events appended unless held, quarantine appended guarded by (batch, partition,
offset), partners MERGEd field by field (the newest version wins; an older event arriving late
only fills a field no newer event has set)."""

from __future__ import annotations

import pyarrow as pa

from enrollment.clients.bigquery import BigQuery
from enrollment.core.partners import FOLLOWS, PARTNER_COLUMNS, PARTNER_SCHEMA
from enrollment.core.windows import Window


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A batch landed by an older version, in today's landed schema (its raw JSON column dropped,
    columns added since — ``tax_id_token`` — null)."""
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def held_sql(w: BigQuery, stage: str, held: str, window: Window, own: Window) -> str:
    """The staged event ids the window already holds, each with how many of its rows lie outside
    the cycle's own arrival days (``own``: where the cycle's rows go, the only days it changes).
    The window is read here once, for two columns; the INSERT and the gate read this table."""
    return (
        f"""CREATE TABLE {held} AS SELECT T.event_id, COUNT(*) AS n, """
        f"""COUNTIF(NOT ({own.sql("T.kafka_timestamp")})) AS outside
FROM {w.table("events")} T WHERE {window.sql("T.kafka_timestamp")} """
        f"AND T.event_id IN (SELECT event_id FROM {stage}) GROUP BY T.event_id"
    )


def events_insert_sql(w: BigQuery, stage: str, columns: list[str], held: str) -> str:
    cols = ", ".join(columns)
    return (
        f"""INSERT INTO {w.table("events")} ({cols})
SELECT {", ".join("S." + c for c in columns)} FROM {stage} S
WHERE NOT EXISTS (SELECT 1 FROM {held} H WHERE H.event_id = S.event_id)
QUALIFY ROW_NUMBER() OVER (PARTITION BY S.event_id """
        "ORDER BY S.kafka_timestamp, S.batch_id, S.kafka_partition, S.kafka_offset) = 1"
    )


def quarantine_insert_sql(w: BigQuery, stage: str, columns: list[str], own: Window) -> str:
    # A row already written by an earlier try of its batch has the same Kafka timestamp: it lies
    # in the cycle's own arrival days.
    return (
        f"""INSERT INTO {w.table("quarantine")} ({", ".join(columns)})
SELECT {", ".join("S." + c for c in columns)} FROM {stage} S
WHERE NOT EXISTS (SELECT 1 FROM {w.table("quarantine")} T """
        f"""WHERE {own.sql("T.kafka_timestamp")}
  AND T.batch_id = S.batch_id AND T.kafka_partition = S.kafka_partition """
        "AND T.kafka_offset = S.kafka_offset)"
    )


def merge_partners_sql(bq: BigQuery, stage: str) -> str:
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
        f"MERGE {bq.table('partners')} T USING (SELECT * FROM {stage}) S "
        f"""ON T.partner_id = S.partner_id
        WHEN MATCHED THEN UPDATE SET {updates}
        WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}) """
        f"VALUES ({', '.join('S.' + c for c in cols)})"
    )
