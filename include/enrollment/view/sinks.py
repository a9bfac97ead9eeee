"""The page's sinks: per sink and region how far behind it is, what it refused, its set-aside
batches; and the canaries' last traces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from enrollment.clients.bigquery import sql_timestamp as ts
from enrollment.config import PipelineConfig
from enrollment.view.masking import scrub
from enrollment.view.reader import (
    LEDGER_LOOKBACK_DAYS,
    Reader,
    classify,
    iso,
    meta,
    parse_seen,
    section,
    window_bounds,
)


def sinks_overview(
    reader: Reader, config: PipelineConfig, window_hours: float = 24, now: datetime | None = None
) -> dict[str, Any]:
    """Per sink and region: warehoused batches not synced yet (the sync plans' anti-join, from
    ``LEDGER_LOOKBACK_DAYS`` days before the sinks' oldest committed batch), the last committed
    batch (``<ops>.sink_watermarks``), the last failed sync ledger row, rows in the sink
    quarantine over the window; and the last canary."""
    now = now or datetime.now(UTC)
    sinks = list(config.sinks)
    codes = [r.code for r in config.regions]
    since_ledger = ts(now - timedelta(days=LEDGER_LOOKBACK_DAYS))

    def behind() -> dict[str, Any]:
        out: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in sinks}
        if not reader.exists("ledger"):
            return {"sinks": out}
        from google.cloud import bigquery

        from enrollment.sync.plan import plan_since

        # As the sync plans bound it: from the sinks' own progress, however long ago.
        since = ts(
            plan_since(reader.w, sinks, codes, LEDGER_LOOKBACK_DAYS, now, run=reader.run)
            if reader.exists("sink_watermarks")
            else now - timedelta(days=LEDGER_LOOKBACK_DAYS)
        )
        table = reader.w.table("ledger", ops=True)
        rows = reader.run(
            f"""SELECT sink, L.region, COUNT(*) AS behind, MIN(L.recorded_at) AS oldest
            FROM {table} L CROSS JOIN UNNEST(@sinks) AS sink
            LEFT JOIN (SELECT DISTINCT batch_id, stage FROM {table} """
            f"""WHERE recorded_at >= {since} AND STARTS_WITH(stage, 'sync_')) S
              ON S.batch_id = L.batch_id AND S.stage = CONCAT('sync_', sink)
            WHERE L.recorded_at >= {since} AND L.stage = 'warehouse' AND L.ok """
            f"""AND S.batch_id IS NULL
            GROUP BY sink, L.region LIMIT 1000""",
            [bigquery.ArrayQueryParameter("sinks", "STRING", sinks)],
        )
        for r in rows:
            out[r["sink"]][r["region"]] = {
                "behind": r["behind"],
                "oldest_waiting_since": iso(r["oldest"]),
            }
        return {"sinks": out}

    def failures() -> dict[str, Any]:
        out: dict[str, dict[str, Any] | None] = {s: None for s in sinks}
        if not reader.exists("ledger"):
            return {"sinks": out}
        rows = reader.run(
            "SELECT stage, region, batch_id, detail, recorded_at "
            f"""FROM {reader.w.table("ledger", ops=True)}
            WHERE recorded_at >= {since_ledger} AND STARTS_WITH(stage, 'sync_') AND NOT ok
            QUALIFY ROW_NUMBER() OVER (PARTITION BY stage ORDER BY recorded_at DESC) = 1 """
            "LIMIT 100"
        )
        for r in rows:
            sink = r["stage"][len("sync_") :]
            if sink in out:
                out[sink] = {
                    "region": r["region"],
                    "batch_id": r["batch_id"],
                    "reason": scrub(r["detail"]),
                    "at": iso(r["recorded_at"]),
                }
        return {"sinks": out}

    def watermarks() -> dict[str, Any]:
        out: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in sinks}
        if not reader.exists("sink_watermarks"):
            return {"sinks": out}
        for r in reader.run(
            "SELECT sink, region, batch_id, warehoused_at, synced_at "
            f"FROM {reader.w.table('sink_watermarks', ops=True)} LIMIT 1000"
        ):
            if r["sink"] in out:
                out[r["sink"]][r["region"]] = {
                    "batch_id": r["batch_id"],
                    "warehoused_at": iso(r["warehoused_at"]),
                    "synced_at": iso(r["synced_at"]),
                }
        return {"sinks": out}

    def refused() -> dict[str, Any]:
        out: dict[str, dict[str, int]] = {s: {} for s in sinks}
        if not reader.exists("sink_quarantine", ops=False):
            return {"sinks": out}
        since, until = window_bounds(window_hours, now)
        rows = reader.run(
            f"""SELECT sink, region, COUNT(*) AS n FROM {reader.w.table("sink_quarantine")}
            WHERE recorded_at >= {ts(since)} AND recorded_at < {ts(until)} """
            "GROUP BY sink, region LIMIT 1000"
        )
        for r in rows:
            if r["sink"] in out:
                out[r["sink"]][r["region"]] = r["n"]
        return {"sinks": out, "since": since.isoformat(), "until": until.isoformat()}

    parts = {
        "behind": section(reader.source("ledger"), behind, {"sinks": {}}),
        "failure": section(reader.source("ledger"), failures, {"sinks": {}}),
        "committed": section(reader.source("sink_watermarks"), watermarks, {"sinks": {}}),
        "quarantined": section(reader.source("sink_quarantine", ops=False), refused, {"sinks": {}}),
    }
    result = []
    for sink in sinks:
        per_region = []
        for code in codes:
            b = (parts["behind"]["sinks"].get(sink) or {}).get(code) or {
                "behind": 0,
                "oldest_waiting_since": None,
            }
            per_region.append(
                {
                    "region": code,
                    **b,
                    "committed": (parts["committed"]["sinks"].get(sink) or {}).get(code),
                    "quarantined": (parts["quarantined"]["sinks"].get(sink) or {}).get(code, 0),
                }
            )
        failure = parts["failure"]["sinks"].get(sink)
        rules_late = [
            f"{r['region']}: {r['behind']} batches behind"
            for r in per_region
            if r["behind"] > config.lag.max_sink_batches
        ]
        result.append(
            {
                "sink": sink,
                "regions": per_region,
                "behind": sum(r["behind"] for r in per_region),
                "quarantined": sum(r["quarantined"] for r in per_region),
                "last_failure": failure,
                **classify(
                    [f"batch {failure['batch_id']} set aside: {failure['reason']}"]
                    if failure
                    else [],
                    rules_late,
                ),
            }
        )
    return {
        "sinks": result,
        "sources": {k: meta(v) for k, v in parts.items()},
        "canary": canaries(reader, config, now),
    }


def canaries(reader: Reader, config: PipelineConfig, now: datetime | None = None) -> dict[str, Any]:
    """The last canary trace per region (``<ops>.canary``): seconds until visible in the warehouse
    and each sink, what it has not reached. The canary partner's id is not shown."""
    now = now or datetime.now(UTC)

    def body() -> dict[str, Any]:
        out: dict[str, dict[str, Any] | None] = {r.code: None for r in config.regions}
        if not reader.exists("canary"):
            return {"regions": out}
        rows = reader.run(
            "SELECT region, injected_at, traced_at, seen, missing, seconds, ok "
            f"""FROM {reader.w.table("canary", ops=True)}
            WHERE injected_at >= {ts(now - timedelta(days=2))}
            QUALIFY ROW_NUMBER() OVER (PARTITION BY region ORDER BY injected_at DESC) = 1 """
            "LIMIT 100"
        )
        for r in rows:
            if r["region"] in out:
                out[r["region"]] = {
                    "injected_at": iso(r["injected_at"]),
                    "traced_at": iso(r["traced_at"]),
                    "seen": parse_seen(r["seen"]),
                    "missing": [m for m in (r["missing"] or "").split(",") if m],
                    "seconds": r["seconds"],
                    "ok": bool(r["ok"]),
                }
        return {"regions": out}

    return section(reader.source("canary"), body, {"regions": {}})
