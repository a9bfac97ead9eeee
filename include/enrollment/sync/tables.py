"""The sync's tables: each sink's watermark (``<ops>.sink_watermarks``: the newest batch it synced
per region, for people and the lag monitor) and the sink quarantine (``sink_quarantine``: what a
service refused, with its message)."""

from __future__ import annotations

from enrollment.clients.bigquery import BigQuery

WATERMARK_SCHEMA = [
    ("sink", "STRING"),
    ("region", "STRING"),
    ("batch_id", "STRING"),
    ("warehoused_at", "TIMESTAMP"),
    ("synced_at", "TIMESTAMP"),
]


SINK_QUARANTINE_SCHEMA = [
    ("sink", "STRING"),
    ("batch_id", "STRING"),
    ("region", "STRING"),
    ("partner_id", "STRING"),
    ("partner_version", "INT64"),
    ("message", "STRING"),
    ("recorded_at", "TIMESTAMP"),
]


def ensure_tables(w: BigQuery) -> None:
    """The watermark and sink-quarantine tables, created when missing (a metadata read when
    not)."""
    from google.api_core.exceptions import NotFound

    for name, ops, ddl in (
        ("sink_watermarks", True, f"({', '.join(f'{c} {t}' for c, t in WATERMARK_SCHEMA)})"),
        (
            "sink_quarantine",
            False,
            f"({', '.join(f'{c} {t}' for c, t in SINK_QUARANTINE_SCHEMA)}) "
            "PARTITION BY DATE(recorded_at) CLUSTER BY sink, region",
        ),
    ):
        try:
            w.client.get_table(w.table(name, ops=ops).strip("`"))
        except NotFound:
            w.run(f"CREATE TABLE IF NOT EXISTS {w.table(name, ops=ops)} {ddl}")
