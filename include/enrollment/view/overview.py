"""What the operator's page shows, read from where the pipeline records it: plain dicts, ready for
JSON, one function per section (``regions``, ``sinks``, ``quarantine``, and the services' health
here). No Airflow here (the plugin adds the DAG runs it can see).

Every figure says where it came from (``source``: ``<dataset>.<table>`` or ``kafka``), so the page
links it. A table that does not exist yet (a fresh stack) reads as empty; a section whose service
does not answer says so in ``error`` and stays empty — the page never fails as a whole.

Queries are written for BigQuery's bill: constant partition filters (literal timestamps computed
here, so the planner prunes), aggregated in SQL, ``LIMIT`` on every list, named columns only.
Nothing returned holds a personal value (``masking``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from enrollment.clients.bigquery import sql_timestamp as ts
from enrollment.config import PipelineConfig
from enrollment.view.masking import scrub
from enrollment.view.quarantine import quarantine_overview
from enrollment.view.reader import Reader, check_status, iso, section
from enrollment.view.regions import regions_overview
from enrollment.view.sinks import sinks_overview

if TYPE_CHECKING:
    from enrollment.clients.bigquery import BigQuery
    from enrollment.clients.kafka import KafkaSettings


def health_overview(reader: Reader, now: datetime | None = None) -> dict[str, Any]:
    """The last environment check per service (``<ops>.health``, the environment_health DAG)."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        if not reader.exists("health"):
            return {"services": []}
        rows = reader.run(
            "SELECT service, ok, seconds, detail, run_id, checked_at "
            f"""FROM {reader.w.table("health", ops=True)}
            WHERE checked_at >= {ts(now - timedelta(days=2))}
            QUALIFY ROW_NUMBER() OVER (PARTITION BY service ORDER BY checked_at DESC) = 1 """
            "ORDER BY service LIMIT 100"
        )
        return {
            "services": [
                {
                    "service": r["service"],
                    "ok": bool(r["ok"]),
                    "seconds": r["seconds"],
                    "detail": scrub(r["detail"]),
                    "run_id": r["run_id"],
                    "checked_at": iso(r["checked_at"]),
                    **check_status(r["service"], bool(r["ok"]), r["checked_at"], now),
                }
                for r in rows
            ]
        }

    return section(reader.source("health"), body, {"services": []})


def overview(
    warehouse: BigQuery,
    kafka: KafkaSettings,
    config: PipelineConfig,
    window_hours: float = 24,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every section of the page (the plugin adds the DAG runs and an overall status)."""
    now = now or datetime.now(UTC)
    reader = Reader(warehouse, config)
    return {
        "generated_at": now.isoformat(),
        "window_hours": window_hours,
        "project": warehouse.project,
        "regions": regions_overview(reader, kafka, config, now, window_hours=window_hours),
        "sinks": sinks_overview(reader, config, window_hours, now),
        "quarantine": quarantine_overview(reader, config, window_hours, now),
        "health": health_overview(reader, now),
    }
