"""The accounting after the load: each produced offset accounted, late or lost by the ledger
(``classify``, ``verdict``), each hostile message looked up in the quarantine
(``hostile_verdict``), and what Airflow says of the run: its failed tasks and its warehouse
cycles, beside the warehouse's cost on paper."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta

from google.cloud import bigquery

from bench.load import log
from enrollment.clients.bigquery import BigQuery
from enrollment.clients.kafka import pending_ranges
from enrollment.clients.services import storage_client
from enrollment.ingest.claim import claims
from enrollment.warehouse import cost
from stack import config as stack_config


def classify(
    offsets: dict[tuple[str, int], list[int]],
    ranges: dict[tuple[str, int], list[tuple[int, int, str]]],
    balanced: set[str],
    committed: dict[tuple[str, int], int],
) -> dict[str, int]:
    """Each produced offset is **accounted** (in a batch whose land and warehouse ledger rows
    balance), **late** (in a claimed batch not yet warehoused — ``late_claimed`` — or at/past the
    committed offset, not yet claimed — ``late_unclaimed``) or **lost** (committed past, in no
    batch: the only failure). A partition whose committed offset is unknown has no lost records."""
    out = {"accounted": 0, "late_claimed": 0, "late_unclaimed": 0, "lost": 0}
    for key, produced in offsets.items():
        spans = sorted(ranges.get(key, []))
        starts = [s[0] for s in spans]
        for offset in produced:
            i = bisect.bisect_right(starts, offset) - 1
            batch = spans[i][2] if i >= 0 and spans[i][0] <= offset < spans[i][1] else None
            if batch in balanced:
                out["accounted"] += 1
            elif batch is not None:
                out["late_claimed"] += 1
            elif key not in committed or offset >= committed[key]:
                out["late_unclaimed"] += 1
            else:
                out["lost"] += 1
    return out


def verdict(cfg, config, warehouse: BigQuery, outcome, since: datetime) -> dict:
    """Records in, records accounted for by balanced
    ledger batches, and the batches' stage times."""
    from google.cloud import bigquery

    bucket = storage_client(cfg.project).bucket(config.landing_bucket)
    ranges: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    batch_ids = []
    for region in config.regions:
        for m in claims(
            bucket,
            region.code,
            region.topic,
            config.consumer_group,
            since,
            datetime.now(UTC) + timedelta(minutes=1),
        ):
            batch_ids.append(m.batch_id)
            for r in m.ranges:
                if r.size:
                    ranges.setdefault((region.code, r.partition), []).append(
                        (r.start, r.end, m.batch_id)
                    )
    rows = (
        warehouse.run(
            "SELECT batch_id, stage, offsets_in, valid, quarantined, duplicates, seconds, ok FROM "
            f"{warehouse.table('ledger', ops=True)} "
            "WHERE batch_id IN UNNEST(@ids)",
            [bigquery.ArrayQueryParameter("ids", "STRING", batch_ids)],
        )
        if batch_ids
        else []
    )
    ledger: dict[str, dict[str, dict]] = {}
    for r in rows:
        ledger.setdefault(r["batch_id"], {})[r["stage"]] = dict(r)
    balanced = {
        b
        for b, stages in ledger.items()
        if {"land", "warehouse"} <= set(stages)
        and all(
            s["ok"] and s["offsets_in"] == s["valid"] + s["quarantined"] + s["duplicates"]
            for s in stages.values()
        )
    }
    committed = {}
    for region in config.regions:
        try:
            for p, start, _ in pending_ranges(
                cfg.kafka, config.consumer_group, region.topic, region.partitions
            ):
                committed[(region.code, p)] = start
        except Exception as exc:
            log(
                f"committed offsets of {region.code} unreadable ({type(exc).__name__}): its "
                "unaccounted records count as late"
            )
    counts = classify(outcome.offsets, ranges, balanced, committed)
    accounted, late_claimed, late_unclaimed, lost = (
        counts["accounted"],
        counts["late_claimed"],
        counts["late_unclaimed"],
        counts["lost"],
    )
    stage_seconds: dict[str, list[float]] = {}
    for stages in ledger.values():
        for stage, r in stages.items():
            stage_seconds.setdefault(stage, []).append(float(r["seconds"] or 0))
    land = [s["land"] for s in ledger.values() if "land" in s]
    metrics = (
        [
            dict(r)
            for r in warehouse.run(
                "SELECT measured_at, region, batch_id, name, value FROM "
                f"{warehouse.table('metrics', ops=True)} "
                "WHERE source = 'ingest' AND batch_id IN UNNEST(@ids) ORDER BY measured_at",
                [bigquery.ArrayQueryParameter("ids", "STRING", batch_ids)],
            )
        ]
        if batch_ids
        else []
    )
    return {
        "metrics": metrics,
        "records_in": outcome.produced,
        "records_accounted": accounted,
        "records_late_claimed": late_claimed,
        "records_late_unclaimed": late_unclaimed,
        "records_lost": lost,
        "batches": len(batch_ids),
        "batches_balanced": len(balanced),
        "valid": sum(r["valid"] for r in land),
        "quarantined": sum(r["quarantined"] + r["duplicates"] for r in land),
        "stage_seconds": stage_seconds,
    }


def cost_estimate(config, outcome) -> dict:
    """The cost on paper at 400,000 events/min after 30 days, one warehouse cycle a minute (the
    catch-up cadence; a busier cadence costs in proportion), and how many cycles this run took."""
    from stack.airflow_client import AirflowClient

    cycles = 0
    try:
        runs = (
            AirflowClient(stack_config.load())
            .http.get("/dags/warehouse/dagRuns", params={"limit": 1000, "order_by": "-start_date"})
            .json()["dag_runs"]
        )
        cycles = sum(
            1
            for r in runs
            if outcome.started
            and r["start_date"]
            and r["start_date"] >= outcome.started.isoformat()
            # a run the freshness gate failed (late) cycled all the same
            and r["state"] in ("success", "failed")
        )
    except Exception as exc:
        log(f"warehouse runs unreadable: {type(exc).__name__}")
    paper = cost.estimate(
        events_per_min=400_000,
        cycles_per_day=1440,
        dedup_window_days=config.warehouse.dedup_window_days,
    )
    # The cadence this run kept (cycles come as batches land): the bill scales with it.
    minutes = (datetime.now(UTC) - outcome.started).total_seconds() / 60 if outcome.started else 0
    per_min = cycles / minutes if minutes else 0.0
    return paper | {
        "cycles_in_run": cycles,
        "run_minutes": round(minutes, 1),
        "cycles_per_min": round(per_min, 2),
        "usd_per_day_at_run_cadence": round(paper["query_usd_per_day"] * per_min, 0),
    }


def failed_task_counts(cfg, failed: dict[str, list[str]]) -> dict[str, int]:
    """``<dag>.<task>`` -> how many of the load's failed
    runs failed there (the freshness gate, a sink…)."""
    from stack.airflow_client import AirflowClient

    airflow, counts = AirflowClient(cfg), {}
    for dag_id, run_ids in failed.items():
        for run_id in run_ids:
            for t in airflow.task_states(dag_id, run_id):
                if t["state"] == "failed":
                    key = f"{dag_id}.{t['task_id']}"
                    counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def hostile_verdict(warehouse: BigQuery, outcome, since: datetime) -> dict:
    """Each hostile message produced, looked up in the quarantine by its Kafka coordinates: there,
    with the reasons the contract gives it?"""
    sent = outcome.hostile
    if not sent:
        return {
            "sent": 0,
            "quarantined_as_expected": 0,
            "quarantined_otherwise": 0,
            "not_quarantined": 0,
        }
    rows = warehouse.run(
        f"""SELECT region, kafka_partition, kafka_offset, reasons
                             FROM {warehouse.table("quarantine")}
                             WHERE kafka_timestamp >= @since""",
        [bigquery.ScalarQueryParameter("since", "TIMESTAMP", since)],
    )
    found = {
        (r["region"], r["kafka_partition"], r["kafka_offset"]): sorted(r["reasons"].split(","))
        for r in rows
    }
    as_expected = sum(1 for key, reasons in sent.items() if found.get(key) == sorted(reasons))
    missing = sum(1 for key in sent if key not in found)
    return {
        "sent": len(sent),
        "quarantined_as_expected": as_expected,
        "quarantined_otherwise": len(sent) - as_expected - missing,
        "not_quarantined": missing,
    }


def fault_windows(started: datetime | None, faults) -> list[tuple[float, float]]:
    """Each fault that happened as (began, ended) in epoch seconds (the load's clock)."""
    if started is None:
        return []
    t0 = started.timestamp()
    return [
        (t0 + f.began_s, t0 + max(f.ended_s or f.began_s, f.began_s))
        for f in faults
        if f.began_s is not None
    ]


def outside_faults(
    points: list[tuple[float, float]], windows: list[tuple[float, float]]
) -> list[float]:
    """The latencies of the (produced at, latency) points produced outside every fault."""
    return [lat for at, lat in points if not any(lo <= at <= hi for lo, hi in windows)]


def caught_up_after(
    points: list[tuple[float, float]], windows: list[tuple[float, float]]
) -> float | None:
    """Seconds from the last fault's end until every event produced before it was visible
    (0: nothing was still waiting); None without a fault."""
    if not windows:
        return None
    ended = max(hi for _, hi in windows)
    return round(max([0.0] + [at + lat - ended for at, lat in points if at <= ended]), 1)
