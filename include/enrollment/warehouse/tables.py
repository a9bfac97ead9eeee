"""The warehouse's tables, created when missing and migrated in place: ``events`` (partitioned by
the day an event *arrived*, its Kafka timestamp, so the cycle's dedup window is a constant
partition filter; ``events_unique`` is the readers' de-duplicated view), ``partners`` (one row per
partner, field versions), ``quarantine`` and the ledger. Columns added since a table was created
are added with ``ADD COLUMN IF NOT EXISTS``: running it twice changes nothing."""

from __future__ import annotations

from enrollment.clients.bigquery import BigQuery
from enrollment.core.partners import PARTNER_SCHEMA

# offsets_in = valid + quarantined + duplicates + skipped + recovered on every row. ``skipped``
# (offsets that hold no message) and ``recovered`` (quarantined messages brought back by
# ``enrollment.ops.recovery``: only on an origin batch's ``recovered`` row) came last: ledgers
# created before them get the columns added (``ensure_ledger``) and their rows read them as NULL,
# i.e. 0.
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


def ddl(name: str, columns: list[tuple[str, str]], partition: str, cluster: str) -> str:
    cols = ", ".join(f"{c} {t}" for c, t in columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ({cols}) "
        f"PARTITION BY DATE({partition}) CLUSTER BY {cluster}"
    )


def ensure_tables(
    bq: BigQuery, events_schema: list[tuple[str, str]], quarantine_schema: list[tuple[str, str]]
) -> None:
    """The tables and the readers' view, created when missing (one listing per dataset when
    not)."""
    have, have_ops = bq.existing_tables()
    for leftover in sorted(t for t in have if t.startswith("_cycle_")):
        # The one writer runs one cycle at a time: staging tables here were left by a cycle
        # that died (possibly over another set of batches, so under another name).
        bq.client.delete_table(f"{bq.project}.{bq.dataset}.{leftover}", not_found_ok=True)
    if "events" not in have:
        bq.run(
            ddl(
                bq.table("events"),
                events_schema,
                "kafka_timestamp",
                "region, partner_id, event_type",
            )
        )
    elif "events columns" not in bq.migrated:
        # Columns the landed rows gained after the table was made (tax_id_token); once per
        # process (the emulator does not list added columns), and idempotent.
        for column in EVENTS_ADDED_COLUMNS:
            if column in dict(events_schema):
                bq.run(
                    f"ALTER TABLE {bq.table('events')} "
                    f"ADD COLUMN IF NOT EXISTS {column} {dict(events_schema)[column]}"
                )
    bq.migrated.add("events columns")
    if "events_unique" not in have:
        # Within the dedup window the table holds each event id once; a resend that arrived
        # later than the window is removed here, for readers (no partition pruning through it).
        bq.run(
            f"""CREATE VIEW IF NOT EXISTS {bq.table("events_unique")} AS """
            f"""SELECT * FROM {bq.table("events")}
                WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY event_id """
            "ORDER BY kafka_timestamp, batch_id, kafka_partition, kafka_offset) = 1"
        )
    if "partners" not in have:
        bq.run(ddl(bq.table("partners"), PARTNER_SCHEMA, "updated_at", "region, partner_id"))
    else:
        bq.add_missing_columns("partners", PARTNER_SCHEMA)
    if "quarantine" not in have:
        bq.run(
            ddl(
                bq.table("quarantine"),
                quarantine_schema,
                "kafka_timestamp",
                "region, batch_id",
            )
        )
    ensure_ledger(bq, "ledger" in have_ops)


def ensure_ledger(bq: BigQuery, exists: bool | None = None) -> None:
    """The ledger, created when missing, and migrated: a ledger from before the ``skipped`` or
    ``recovered`` column gets it (``ADD COLUMN IF NOT EXISTS``: running it twice changes
    nothing)."""
    from google.api_core.exceptions import NotFound

    if "ledger" in bq.migrated:
        return
    table_id = bq.table("ledger", ops=True)
    if exists is None:
        try:
            schema = bq.client.get_table(table_id.strip("`")).schema
            exists = True
        except NotFound:
            exists = False
    else:
        schema = bq.client.get_table(table_id.strip("`")).schema if exists else []
    if not exists:
        bq.run(ddl(table_id, LEDGER_SCHEMA, "recorded_at", "region, batch_id"))
    else:
        have = {f.name for f in schema}
        for column in LEDGER_ADDED_COLUMNS:
            if column not in have:
                # BigQuery lists the column once added; the emulator does not, so it asks once
                # per process.
                bq.run(f"ALTER TABLE {table_id} ADD COLUMN IF NOT EXISTS {column} INT64")
    bq.migrated.add("ledger")
