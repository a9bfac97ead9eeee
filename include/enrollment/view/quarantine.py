"""The page's quarantine: reasons by region over the window, with masked examples and what the
recovery brought back."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from enrollment.clients.bigquery import sql_timestamp as ts
from enrollment.config import PipelineConfig
from enrollment.view.masking import EXAMPLE_BYTES, mask_partner_id, masked_example
from enrollment.view.reader import (
    EXAMPLE_REASONS,
    EXAMPLES_PER_REASON,
    Reader,
    iso,
    section,
    window_bounds,
)

if TYPE_CHECKING:
    from enrollment.clients.bigquery import QueryParameter


def quarantine_overview(
    reader: Reader,
    config: PipelineConfig,
    window_hours: float = 24,
    now: datetime | None = None,
    region: str | None = None,
    examples: int = EXAMPLES_PER_REASON,
) -> dict[str, Any]:
    """Quarantined messages that reached Kafka in the window, by region and reason code (a message
    with two reasons counts under each; ``messages`` counts each once), up to ``examples`` masked
    examples per reason, and what recovery brought back (``<ops>.recovered``, when it exists)."""
    since, until = window_bounds(window_hours, now)
    bounds = f"kafka_timestamp >= {ts(since)} AND kafka_timestamp < {ts(until)}"
    where_region = "AND region = @region" if region else ""

    def params() -> list[QueryParameter]:
        from google.cloud import bigquery

        return [bigquery.ScalarQueryParameter("region", "STRING", region)] if region else []

    def counts() -> dict[str, Any]:
        if not reader.exists("quarantine", ops=False):
            return {"by_reason": [], "messages": {}}
        table = reader.w.table("quarantine")
        by_reason = reader.run(
            f"""SELECT region, reason, COUNT(*) AS n FROM {table}, """
            f"""UNNEST(SPLIT(reasons, ',')) AS reason
            WHERE {bounds} {where_region} GROUP BY region, reason """
            "ORDER BY n DESC, region, reason LIMIT 1000",
            params(),
        )
        messages = reader.run(
            f"SELECT region, COUNT(*) AS n FROM {table} WHERE {bounds} {where_region} "
            "GROUP BY region LIMIT 100",
            params(),
        )
        return {
            "by_reason": [
                {"region": r["region"], "reason": r["reason"], "count": r["n"]} for r in by_reason
            ],
            "messages": {r["region"]: r["n"] for r in messages},
        }

    def sample(top: list[str]) -> dict[str, Any]:
        if not reader.exists("quarantine", ops=False) or not top:
            return {"examples": []}
        from google.cloud import bigquery

        rows = reader.run(
            "SELECT reason, region, batch_id, kafka_partition, kafka_offset, kafka_timestamp, "
            """event_type, partner_id,
                raw, reasons
            FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY reason """
            """ORDER BY kafka_timestamp DESC, kafka_offset DESC) AS rn
                  FROM (SELECT Q.*, reason FROM """
            f"""{reader.w.table("quarantine")} Q, UNNEST(SPLIT(Q.reasons, ',')) AS reason
                        WHERE {bounds} {where_region}) WHERE reason IN UNNEST(@top))
            WHERE rn <= {int(examples)} ORDER BY reason, kafka_timestamp DESC """
            f"LIMIT {len(top) * int(examples)}",
            [*params(), bigquery.ArrayQueryParameter("top", "STRING", top)],
        )
        return {
            "examples": [
                {
                    "reason": r["reason"],
                    "reasons": r["reasons"].split(","),
                    "region": r["region"],
                    "batch_id": r["batch_id"],
                    "kafka_partition": r["kafka_partition"],
                    "kafka_offset": r["kafka_offset"],
                    "kafka_timestamp": iso(r["kafka_timestamp"]),
                    "event_type": r["event_type"],
                    "partner_id": mask_partner_id(r["partner_id"]),
                    "message": masked_example(
                        r["raw"][:EXAMPLE_BYTES] if r["raw"] is not None else None
                    ),
                }
                for r in rows
            ]
        }

    def recovered() -> dict[str, Any]:
        if not reader.exists("recovered"):
            return {"by_reason": [], "exists": False}
        rows = reader.run(
            "SELECT region, reason, COUNT(*) AS n "
            f"""FROM {reader.w.table("recovered", ops=True)}, UNNEST(SPLIT(reasons, ',')) AS reason
            WHERE recovered_at >= {ts(since)} AND recovered_at < {ts(until)} {where_region}
            GROUP BY region, reason ORDER BY n DESC LIMIT 1000""",
            params(),
        )
        return {
            "by_reason": [
                {"region": r["region"], "reason": r["reason"], "count": r["n"]} for r in rows
            ],
            "exists": True,
        }

    counted = section(
        reader.source("quarantine", ops=False), counts, {"by_reason": [], "messages": {}}
    )
    totals: dict[str, int] = defaultdict(int)
    for r in counted["by_reason"]:
        totals[r["reason"]] += r["count"]
    top = [
        reason
        for reason, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:EXAMPLE_REASONS]
    ]
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "region": region,
        "counts": counted,
        "examples": section(
            reader.source("quarantine", ops=False), lambda: sample(top), {"examples": []}
        ),
        "recovered": section(
            reader.source("recovered"), recovered, {"by_reason": [], "exists": False}
        ),
    }
