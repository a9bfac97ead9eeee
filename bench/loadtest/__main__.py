"""The gridlock test: a steady load on the running stack and Airflow, faults injected on a
timeline, and a report that ends with the ledger's verdict.

    make loadtest ARGS="--rate 400000/min --duration 10m --fault solr-down@3m:2m"
    python -m bench.loadtest --rate 60000/min --duration
    2m --fault broker-restart@40s --fault worker-kill@1m

The simulator produces ``--rate`` for ``--duration`` (with ``--bad`` faulty messages) while the
backlog trigger, the ingest DAGs and the sink DAGs carry it. Faults (``NAME@START[:FOR]``):

- ``<service>-down@3m:2m`` — stop a service of the stack (solr, firestore, marketing-cloud,
  bigquery, gcs) 3 minutes in, start it again 2 minutes later;
- ``broker-restart@5m[:20s]`` — stop Kafka, start it again (after 20 s; default at once);
- ``worker-kill@4m[:30s]`` — SIGKILL a busy Airflow worker process and its task (the scheduler finds
  the task without heartbeat and retries it). On Celery (STACK_EXECUTOR=celery) the whole worker
  that runs a task goes (its process group: main process, pool, task processes) and is started
  again after FOR (default 30 s), as its supervisor (systemd, Kubernetes) would; meanwhile the
  other worker carries the queues it shares.

Every 5 s it samples each region's pending records and the offsets produced and committed;
every 30 s each sink's batches behind its watermark. One enrollment in ``--sample-every`` is
followed until it is queryable in BigQuery and visible in every sink. After the load it waits
(``--drain``) until everything produced is committed and every sample is visible everywhere.

**The verdict**: records in = offsets produced; records accounted = produced offsets that lie in a
batch whose land and warehouse ledger rows exist and balance; **late** = not yet accounted for
when the drain ended (in a claimed batch not yet warehoused, or not yet claimed); **lost** = an
offset the group committed past that no batch covers, plus sampled enrollments never visible in
all sinks once everything has drained. Only lost records make it exit 1. If the drain gives up,
the DAGs are paused and the report says what backlog was left (Kafka, landed batches, sinks).
The report also holds the CPU seconds per component per minute (bench/cpu.py) and the warehouse's
BigQuery cost on paper at 400,000 events/min after 30 days (enrollment.cost).

Writes ``bench/results/loadtest/<UTC time>/``: ``report.md``, ``summary.json`` and the plots
(lag per region, throughput, latency per stage, latency over time, the per-batch metrics the
ingest wrote to ``<ops>.metrics``); the report's path is the
last line printed. Exit code 1 when anything is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import RESULTS, machine
from bench.cpu import CpuSampler, airflow_resolver
from bench.load import log, percentiles, steady_load
from bench.loadtest.faults import Fault, Injector, seconds
from bench.loadtest.reporting import plots, report
from bench.loadtest.sampling import Sampler, Samples
from bench.loadtest.verdicts import (
    caught_up_after,
    cost_estimate,
    failed_task_counts,
    fault_windows,
    hostile_verdict,
    outside_faults,
    verdict,
)
from bench.watch import SinkWatcher, WarehouseWatcher
from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.config import load_config
from enrollment.sync.plan import backlogs
from enrollment.sync.run import SyncRun
from stack import cli as stack_cli
from stack import config as stack_config
from stack.services import Airflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make loadtest ARGS=...", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rate",
        default="400000/min",
        help="events per minute over all regions (the simulator's spelling), default 400000/min",
    )
    parser.add_argument(
        "--duration",
        default="10m",
        help="how long the simulator produces, e.g. 90s, 10m (default 10m)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        type=Fault.parse,
        default=[],
        metavar="NAME@START[:FOR]",
        help="inject a fault (repeatable): <service>-down@3m:2m, broker-restart@5m[:20s], "
        "worker-kill@4m",
    )
    parser.add_argument(
        "--bad", default="2%", help="share of faulty messages the simulator sends (default 2%%)"
    )
    parser.add_argument(
        "--hostile",
        default=None,
        help="share of hostile messages (JSON and contract edges, simulator.hostile), e.g. 0.5%%",
    )
    parser.add_argument(
        "--sample-every",
        type=int,
        default=25,
        help="follow one new enrollment in N to every sink (default 25)",
    )
    parser.add_argument(
        "--drain",
        type=seconds,
        default=seconds("15m"),
        help="how long to wait after the load for everything to arrive (default 15m)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default bench/results/loadtest/<UTC time>)",
    )
    args = parser.parse_args(argv)

    stack_cli.up(quiet=True)
    cfg = stack_config.load()
    os.environ.update(cfg.client_env())
    config = load_config()
    warehouse = BigQuery(
        client=bigquery_client(cfg.project),
        storage=storage_client(cfg.project),
        project=cfg.project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
    )
    run = SyncRun(warehouse, storage_client(cfg.project).bucket(config.landing_bucket))
    out = args.out or RESULTS / "loadtest" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    title = f"{args.rate} for {args.duration}" + (
        f", faults {', '.join(f.label for f in args.fault)}" if args.fault else ""
    )
    log(f"load test: {title}; report in {out}")

    injector, samples = Injector(args.fault), Samples()
    sampler = Sampler(cfg, config, run, samples)
    bq_watch, sink_watch = WarehouseWatcher(cfg, config), SinkWatcher(cfg, config)

    def tick(elapsed: float) -> None:
        injector(elapsed)
        sampler(elapsed)

    def poll(watched: dict[str, float]) -> int:
        return max(bq_watch.poll(watched), sink_watch.poll(watched))

    dag_ids = config.carrier_dags()
    began = datetime.now(UTC)
    cpu = CpuSampler(resolve=airflow_resolver(cfg.airflow_db_uri)).start()
    try:
        outcome = steady_load(
            cfg,
            config,
            args.rate,
            args.duration,
            dag_ids,
            poll,
            sample_every=args.sample_every,
            drain_s=args.drain,
            bad=args.bad,
            tick=tick,
            hostile=args.hostile,
        )
    finally:
        cpu_figures = cpu.stop()
        injector.heal()

    # Claims since the load began: the backlog found
    # before it was drained first, by batches of its own.
    figures = verdict(cfg, config, warehouse, outcome, outcome.started - timedelta(seconds=1))
    hostile = hostile_verdict(warehouse, outcome, outcome.started - timedelta(minutes=1))
    failed_tasks = failed_task_counts(cfg, outcome.failed)
    watched = outcome.watched
    never = [p for p in watched if sink_watch.everywhere(p) is None or p not in bq_watch.seen]
    # A sample not seen everywhere is late while anything is still on its way; once the pipeline
    # drained (every record warehoused, every sink's plan empty), it is lost.
    sinks_behind = {}
    try:
        for sink, plans in backlogs(run.warehouse, run.bucket.name, config).items():
            sinks_behind[sink] = sum(len(p.batches) for p in plans.values())
    except Exception as exc:
        log(f"sinks' backlog unreadable: {type(exc).__name__}")
        sinks_behind = {"unknown": 1}
    everything_arrived = (
        outcome.drained
        and not any(sinks_behind.values())
        and not figures["records_late_claimed"] + figures["records_late_unclaimed"]
    )
    samples_lost = len(never) if everything_arrived else 0
    late = figures["records_late_claimed"] + figures["records_late_unclaimed"]
    unexplained = figures["records_lost"] + samples_lost + hostile["not_quarantined"]
    visible = {
        "bigquery": [
            (watched[p], bq_watch.seen[p] - watched[p]) for p in watched if p in bq_watch.seen
        ],
        **{
            name: [(watched[p], got[p] - watched[p]) for p in watched if p in got]
            for name, got in sink_watch.seen.items()
        },
        "all sinks": [
            (watched[p], sink_watch.everywhere(p) - watched[p])
            for p in watched
            if sink_watch.everywhere(p) is not None
        ],
    }
    stages = {
        name: percentiles(values) for name, values in sorted(figures.pop("stage_seconds").items())
    }
    stages |= {
        f"visible in {name}": percentiles([latency for _, latency in points])
        for name, points in visible.items()
    }
    fresh = stages["visible in bigquery"]
    windows = fault_windows(outcome.started, args.fault)
    paths = plots(out, samples, args.fault, stages, visible, figures.pop("metrics"), title)
    duration_s = seconds(args.duration)
    summary = {
        "rate": args.rate,
        "duration": args.duration,
        "records_in": figures["records_in"],
        "records_accounted": figures["records_accounted"],
        "unexplained_records": unexplained,
        "unaccounted_offsets": figures["records_in"] - figures["records_accounted"],
        "records_lost": figures["records_lost"],
        "records_late": late,
        "records_late_claimed": figures["records_late_claimed"],
        "records_late_unclaimed": figures["records_late_unclaimed"],
        "samples_lost": samples_lost,
        "drained": outcome.drained,
        "backlog_left": outcome.backlog_left | {"sinks_batches_not_synced": sinks_behind},
        # The headline a user sizes with: the pipeline's own CPU (tasks, Airflow, its database and
        # broker) over the whole run, drain included, per million events in.
        "pipeline_cpu_s_per_1m": round(
            cpu_figures["cpu_s"].get("pipeline", 0.0) * 1e6 / figures["records_in"], 1
        )
        if figures["records_in"]
        else None,
        "cpu": cpu_figures,
        "cost": cost_estimate(config, outcome),
        "samples": len(watched),
        # How many points the lag plots have (a sampler that fails logs and skips: 0 says so).
        "lag_points": len(samples.lag),
        "sink_backlog_points": len(samples.sinks),
        "samples_never_visible_everywhere": len(never),
        "freshness_p50_s": fresh["p50"],
        "freshness_p95_s": fresh["p95"],
        "freshness_max_s": fresh["max"],
        "all_sinks_p50_s": stages["visible in all sinks"]["p50"],
        "all_sinks_p95_s": stages["visible in all sinks"]["p95"],
        # The goal holds outside faults; after one, how long until everything is caught up.
        "all_sinks_p95_outside_faults_s": percentiles(
            outside_faults(visible["all sinks"], windows)
        )["p95"],
        "caught_up_after_fault_s": caught_up_after(visible["all sinks"], windows),
        "produced_events_per_min": round(outcome.produced * 60 / duration_s)
        if duration_s
        else None,
        "batches": figures["batches"],
        "batches_balanced": figures["batches_balanced"],
        "valid": figures["valid"],
        "quarantined": figures["quarantined"],
        "hostile": hostile,
        "failed_dag_runs": outcome.failed_runs,
        "failed_tasks": failed_tasks,
        "faults": [asdict(f) | {"spec": f.label} for f in args.fault],
        "stages": stages,
        "plots": [p.name for p in paths],
        "machine": machine(),
        "began_at": began.isoformat(),
        "executor": Airflow(cfg).executor,
        "workers": (
            " ("
            + ", ".join(
                f"worker {w.name}: queues {','.join(w.queues)}, concurrency {w.concurrency}"
                for w in config.celery_workers
            )
            + ")"
            if cfg.celery
            else ""
        ),
    }
    (out / "summary.json").write_text(
        json.dumps(
            summary | {"cost": {k: v for k, v in summary["cost"].items() if k != "statements"}},
            indent=2,
            default=str,
        )
        + "\n"
    )
    (out / "report.md").write_text(report(summary, title))
    log(
        f"verdict: records in {summary['records_in']:,}, accounted "
        f"{summary['records_accounted']:,}, late {late:,}, lost {unexplained:,}"
    )
    print(out / "report.md")
    return 0 if unexplained == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
