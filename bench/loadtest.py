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
import bisect
import contextlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.cloud import bigquery

from bench.common import RESULTS, machine
from bench.cpu import CpuSampler, airflow_resolver
from bench.cpu import markdown as cpu_markdown
from bench.load import log, percentiles, steady_load
from bench.plots import latency_over_time
from bench.watch import SinkWatcher, WarehouseWatcher
from enrollment.clients.bigquery import BigQuery
from enrollment.clients.kafka import pending_ranges
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.config import load_config
from enrollment.ingest.claim import claims
from enrollment.sync.plan import plan_all
from enrollment.sync.run import SyncRun
from enrollment.warehouse import cost
from stack import cli as stack_cli
from stack import config as stack_config
from stack.services import Airflow

SERVICES_THAT_MAY_GO_DOWN = ("solr", "firestore", "marketing-cloud", "bigquery", "gcs")
LAG_EVERY_S, SINK_LAG_EVERY_S = 5.0, 30.0
CELERY_WORKER_RESTART_S = 30.0


def seconds(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``1h`` → seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 3m, 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass
class Fault:
    kind: str  # "<service>-down", "broker-restart", "worker-kill"
    at_s: float
    for_s: float = 0.0
    began_s: float | None = None
    ended_s: float | None = None
    detail: str = ""
    restart: str = (
        ""  # the stack's service to start again when the fault ends (a killed Celery worker)
    )

    @classmethod
    def parse(cls, text: str) -> Fault:
        match = re.fullmatch(r"([a-z-]+)@([^:]+)(?::(.+))?", text.strip())
        if not match:
            raise argparse.ArgumentTypeError(
                f"fault {text!r}: write NAME@START[:FOR], e.g. solr-down@3m:2m"
            )
        kind, at, length = (
            match.group(1),
            seconds(match.group(2)),
            seconds(match.group(3)) if match.group(3) else 0.0,
        )
        if kind.endswith("-down"):
            if kind.removesuffix("-down") not in SERVICES_THAT_MAY_GO_DOWN:
                raise argparse.ArgumentTypeError(
                    f"fault {text!r}: services that may go down: "
                    f"{', '.join(SERVICES_THAT_MAY_GO_DOWN)}"
                )
            if not length:
                raise argparse.ArgumentTypeError(
                    f"fault {text!r}: say for how long, e.g. {kind}@{match.group(2)}:2m"
                )
        elif kind not in ("broker-restart", "worker-kill"):
            raise argparse.ArgumentTypeError(
                f"fault {text!r}: known faults are <service>-down, broker-restart, worker-kill"
            )
        return cls(kind, at, length)

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.at_s:g}s" + (f":{self.for_s:g}s" if self.for_s else "")


def busy_celery_workers(cfg) -> list:
    """The stack's Celery workers that run a task now (a task process under one of their pool
    processes, whose title is ``airflow supervisor: <task instance id>``), with what it runs."""
    import psutil

    from stack.cli import _pgid
    from stack.services import CeleryWorker, stack_services

    busy = []
    for worker in (s for s in stack_services(cfg) if isinstance(s, CeleryWorker)):
        pgid = _pgid(worker)
        if pgid is None:
            continue
        running = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                title = " ".join(proc.info["cmdline"] or [])
                if (
                    title.startswith("airflow supervisor:")
                    and os.getpgid(proc.pid) == pgid
                    and proc.children()
                ):
                    running.append(title.split(":", 1)[1].strip())
            except (psutil.Error, ProcessLookupError):
                continue
        if running:
            busy.append((worker, pgid, running))
    return busy


def busy_workers() -> list:
    """Airflow's LocalExecutor workers that are running a task now (their title names it)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("airflow worker -- LocalExecutor:") and "<idle>" not in title:
            out.append(proc)
    return out


class Injector:
    """Starts and ends each fault when its time comes (called at every tick of the load)."""

    def __init__(self, faults: list[Fault]):
        self.faults = faults

    def __call__(self, elapsed: float) -> None:
        for f in self.faults:
            if f.began_s is None and elapsed >= f.at_s:
                self._begin(f, elapsed)
            if f.began_s is not None and f.ended_s is None and elapsed >= f.began_s + f.for_s:
                self._end(f, elapsed)

    def _begin(self, f: Fault, elapsed: float) -> None:
        if f.kind == "worker-kill" and stack_config.load().celery:
            busy = busy_celery_workers(stack_config.load())
            if not busy:
                if elapsed > f.at_s + 120:
                    f.began_s = f.ended_s = elapsed
                    f.detail = "no Celery worker ran a task for 2 minutes: nothing killed"
                return
            worker, pgid, running = busy[0]
            killed = stack_cli.kill_hard(worker)
            f.began_s, f.for_s = elapsed, f.for_s or CELERY_WORKER_RESTART_S
            f.detail = (
                f"SIGKILL to Celery worker {worker.worker.name} ({len(killed)} processes: its "
                f"group {pgid} and its task processes) "
                f"running {len(running)} task(s) ({', '.join(running)})"
            )
            f.restart = worker.name
        elif f.kind == "worker-kill":
            workers = busy_workers()
            if not workers:
                if elapsed > f.at_s + 120:
                    f.began_s = f.ended_s = elapsed
                    f.detail = "no task was running for 2 minutes: nothing killed"
                return  # try again at the next tick
            worker = workers[0]
            title = " ".join(worker.cmdline())
            victims = [worker, *worker.children(recursive=True)]
            for proc in victims:
                with contextlib.suppress(Exception):
                    proc.send_signal(signal.SIGKILL)
            f.began_s = f.ended_s = elapsed
            f.detail = (
                f"SIGKILL to worker {worker.pid} and {len(victims) - 1} task processes "
                f"({title.split(':', 1)[1].strip()})"
            )
        elif f.kind == "broker-restart":
            stack_cli.down(["kafka"], quiet=True)
            f.began_s = elapsed
            f.detail = "Kafka stopped"
        else:
            service = f.kind.removesuffix("-down")
            stack_cli.down([service], quiet=True)
            f.began_s = elapsed
            f.detail = f"{service} stopped"
        log(f"fault {f.label}: {f.detail}")

    def _end(self, f: Fault, elapsed: float) -> None:
        service = (
            "kafka"
            if f.kind == "broker-restart"
            else f.restart
            if f.kind == "worker-kill"
            else f.kind.removesuffix("-down")
        )
        t0 = time.monotonic()
        stack_cli.up([service], quiet=True)
        f.ended_s = elapsed + (time.monotonic() - t0)
        f.detail += f", started again (ready {time.monotonic() - t0:.0f} s later)"
        log(f"fault {f.label}: {f.detail}")

    def heal(self) -> None:
        """Whatever is still down comes back (the load ended early, or failed)."""
        for f in self.faults:
            if f.began_s is not None and f.ended_s is None:
                self._end(f, f.began_s + f.for_s)


@dataclass
class Samples:
    """The time series the report plots."""

    lag: list[tuple[float, str, int]] = field(default_factory=list)  # (s, region, pending)
    offsets: list[tuple[float, int, int]] = field(
        default_factory=list
    )  # (s, produced so far, committed so far)
    sinks: list[tuple[float, str, int]] = field(default_factory=list)  # (s, sink, batches behind)


class Sampler:
    def __init__(self, cfg, config, run: SyncRun, samples: Samples):
        self.cfg, self.config, self.run, self.samples = cfg, config, run, samples
        self.next_lag = self.next_sinks = 0.0
        self.base: tuple[int, int] | None = None

    def __call__(self, elapsed: float) -> None:
        if elapsed >= self.next_lag:
            self.next_lag = elapsed + LAG_EVERY_S
            try:
                ends = committed = 0
                for region in self.config.regions:
                    ranges = pending_ranges(
                        self.cfg.kafka_bootstrap,
                        self.config.consumer_group,
                        region.topic,
                        region.partitions,
                        timeout=3,
                    )
                    self.samples.lag.append(
                        (elapsed, region.code, sum(end - start for _, start, end in ranges))
                    )
                    ends += sum(end for _, _, end in ranges)
                    committed += sum(start for _, start, _ in ranges)
                self.base = self.base or (ends, committed)
                self.samples.offsets.append(
                    (elapsed, ends - self.base[0], committed - self.base[1])
                )
            except Exception as exc:
                log(f"lag sample skipped: {type(exc).__name__}")
        if elapsed >= self.next_sinks:
            self.next_sinks = elapsed + SINK_LAG_EVERY_S
            try:
                for sink in self.config.sinks:
                    plans = self.run.plan_all(
                        sink, [r.code for r in self.config.regions], max_batches=10_000
                    )
                    self.samples.sinks.append(
                        (elapsed, sink, sum(len(p.batches) for p in plans.values()))
                    )
            except Exception as exc:
                log(f"sink backlog sample skipped: {type(exc).__name__}")


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
                cfg.kafka_bootstrap, config.consumer_group, region.topic, region.partitions
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
            and r["state"] == "success"
        )
    except Exception as exc:
        log(f"warehouse runs unreadable: {type(exc).__name__}")
    return cost.estimate(
        events_per_min=400_000,
        cycles_per_day=1440,
        dedup_window_days=config.warehouse.dedup_window_days,
    ) | {"cycles_in_run": cycles}


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


def plots(
    out: Path,
    samples: Samples,
    faults: list[Fault],
    stages: dict[str, dict],
    e2e: dict[str, list[tuple[float, float]]],
    metrics: list[dict],
    title: str,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def shade(ax) -> None:
        for f in faults:
            if f.began_s is None:
                continue
            end = f.ended_s if f.ended_s and f.ended_s > f.began_s else f.began_s + 2
            ax.axvspan(f.began_s, end, color="red", alpha=0.12)
            ax.text(
                f.began_s, ax.get_ylim()[1] * 0.97, f.kind, fontsize=7, color="darkred", va="top"
            )

    paths = []

    def finish(fig, axes, name: str, shaded: bool = True) -> None:
        for axis in axes:
            axis.legend(fontsize=8)
            axis.grid(alpha=0.3)
            if shaded:
                shade(axis)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1])
        plt.close(fig)

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 7), dpi=110, sharex=True)
    for region in sorted({r for _, r, _ in samples.lag}):
        points = [(t, n) for t, r, n in samples.lag if r == region]
        ax.plot([t for t, _ in points], [n for _, n in points], label=region)
    ax.set_ylabel("records pending in Kafka")
    ax.set_title(f"Lag per region — {title}")
    for sink in sorted({s for _, s, _ in samples.sinks}):
        points = [(t, n) for t, s, n in samples.sinks if s == sink]
        ax2.step([t for t, _ in points], [n for _, n in points], where="post", label=sink)
    ax2.set_ylabel("warehoused batches not synced")
    ax2.set_xlabel("s after the load began")
    finish(fig, (ax, ax2), "lag.png")

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    for label, index in (("produced", 1), ("committed (landed)", 2)):
        xs, ys = [], []
        for a, b in zip(samples.offsets, samples.offsets[1:], strict=False):
            if b[0] > a[0]:
                xs.append(b[0])
                ys.append(max(0.0, (b[index] - a[index]) * 60 / (b[0] - a[0])))
        ax.plot(xs, ys, label=label, linewidth=1)
    ax.set_ylabel("events per minute")
    ax.set_xlabel("s after the load began")
    ax.set_title(f"Throughput — {title}")
    finish(fig, (ax,), "throughput.png")

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    names = [n for n, q in stages.items() if q["p50"] is not None]
    for i, (q, color) in enumerate((("p50", "#4c72b0"), ("p95", "#dd8452"), ("max", "#c44e52"))):
        ax.bar(
            [j + (i - 1) * 0.27 for j in range(len(names))],
            [stages[n][q] for n in names],
            width=0.27,
            label=q,
            color=color,
        )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("seconds (stages: per batch task; visible: from the event)")
    ax.set_title(f"Latency per stage — {title}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths.append(out / "stages.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    paths.append(latency_over_time(out / "latency.png", e2e, f"Event to visible — {title}"))

    # What the ingest itself recorded in <ops>.metrics for the run's batches.
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 7), dpi=110, sharex=True)
    start = min((m["measured_at"] for m in metrics), default=None)
    for region in sorted({m["region"] for m in metrics}):
        for axis, name in ((ax, "freshness_oldest_s"), (ax2, "events_per_min")):
            points = [
                ((m["measured_at"] - start).total_seconds(), m["value"])
                for m in metrics
                if m["region"] == region and m["name"] == name
            ]
            axis.plot(
                [t for t, _ in points],
                [v for _, v in points],
                marker="o",
                markersize=3,
                linewidth=1,
                label=region,
            )
    ax.set_ylabel("oldest event of the batch,\ns from Kafka to queryable")
    ax.set_title(f"Per batch, from enrollment_ops.metrics — {title}")
    ax2.set_ylabel("events per minute of the batch\n(land + warehouse)")
    ax2.set_xlabel("s after the first batch was recorded")
    for axis in (ax, ax2):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "metrics.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


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
        for sink in config.sinks:
            plans = plan_all(
                run.warehouse,
                run.bucket.name,
                sink,
                [r.code for r in config.regions],
                max_batches=10_000,
                lookback_days=config.sync_lookback_days,
            )
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
        "cpu": cpu_figures,
        "cost": cost_estimate(config, outcome),
        "samples": len(watched),
        "samples_never_visible_everywhere": len(never),
        "freshness_p50_s": fresh["p50"],
        "freshness_p95_s": fresh["p95"],
        "freshness_max_s": fresh["max"],
        "all_sinks_p50_s": stages["visible in all sinks"]["p50"],
        "all_sinks_p95_s": stages["visible in all sinks"]["p95"],
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


def report(s: dict, title: str) -> str:
    def fmt(v) -> str:
        empty = "–"  # an empty table cell
        return empty if v is None else f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"

    faults = (
        "\n".join(
            f"| `{f['spec']}` | {fmt(f['began_s'])} | {fmt(f['ended_s'])} | {f['detail']} |"
            for f in s["faults"]
        )
        or "| none | | | |"
    )
    stages = "\n".join(
        f"| {name} | {fmt(q['p50'])} | {fmt(q['p95'])} | {fmt(q['max'])} |"
        for name, q in s["stages"].items()
    )
    ok = s["unexplained_records"] == 0
    left = s["backlog_left"]
    drain = (
        "Everything drained before the deadline."
        if s["drained"]
        else f"The drain gave up: left behind {left.get('kafka_records_pending', 0):,} records "
        "pending in Kafka, "
        f"{left.get('landed_batches_not_warehoused', 0)} landed batches not warehoused, sinks' "
        "batches not synced "
        f"{left.get('sinks_batches_not_synced')}; the DAGs were paused with that backlog (unpause "
        "them, or `make reset-data`)."
    )
    h = s["hostile"]
    hostile = (
        f" Of {h['sent']:,} hostile messages sent, **{h['quarantined_as_expected']:,} are in "
        "quarantine with the reasons the "
        f"contract gives them**, {h['quarantined_otherwise']:,} with other reasons, "
        f"{h['not_quarantined']:,} not in quarantine."
        if h["sent"]
        else ""
    )
    failed = (
        (" — failed tasks: " + ", ".join(f"`{k}` {v}" for k, v in s["failed_tasks"].items()))
        if s["failed_tasks"]
        else ""
    )
    verdict_row = (
        f"| {s['records_in']:,} | {s['records_accounted']:,} | {s['records_late']:,} "
        f"| **{s['unexplained_records']:,}** |"
    )
    return f"""# Load test: {title}

Began {s["began_at"]} on {s["machine"]["cores"]} cores, Airflow on the
**{s["executor"]}**{s["workers"]}. The simulator produced **{s["records_in"]:,} events**
({fmt(s["produced_events_per_min"])} per minute, asked {s["rate"]}); {s["batches"]:,} batches
carried them ({s["valid"]:,} valid, {s["quarantined"]:,} quarantined with a reason);
{s["failed_dag_runs"]} DAG runs failed on the way{failed}.{hostile} A failed run loses nothing:
the freshness gate fails after the data is in, a sync run's batches are taken again by the next
run from the watermark, an ingest batch is claimed again from the committed offsets.

## Faults injected

| fault | began (s) | ended (s) | what happened |
|---|---|---|---|
{faults}

## Lag

![lag per region and sink backlog](lag.png)

## Throughput

![produced and committed events per minute](throughput.png)

## Latency per stage

Batch stages: seconds of each batch's task (from the ledger). *Visible in …*: from the event's
production to the sampled enrollment being queryable in BigQuery or visible in a sink
({s["samples"]:,} samples; polled every 2 s).

| stage | p50 s | p95 s | max s |
|---|---|---|---|
{stages}

![latency per stage](stages.png)

![event to visible, over time](latency.png)

What the ingest recorded per batch in `enrollment_ops.metrics` (freshness of the batch's oldest
event, throughput of its land and warehouse tasks):

![per-batch metrics](metrics.png)

Freshness (event → queryable in BigQuery): p50 {fmt(s["freshness_p50_s"])} s,
**p95 {fmt(s["freshness_p95_s"])} s**, max {fmt(s["freshness_max_s"])} s.
All three sinks: p50 {fmt(s["all_sinks_p50_s"])} s, p95 {fmt(s["all_sinks_p95_s"])} s.

## Where the CPU went

CPU seconds per minute of the run (load and drain), per component; tasks are charged by the
kind of DAG their worker ran.

{cpu_markdown(s["cpu"])}
## The warehouse on real BigQuery, on paper

{cost.markdown(s["cost"])}
This run took {s["cost"]["cycles_in_run"]:,} warehouse cycles.

## Verdict of the ledger

| records in | accounted for | late (not yet accounted when the drain ended) | lost |
|---|---|---|---|
{verdict_row}

{"Nothing is lost" if ok else "RECORDS ARE LOST"}: {s["batches_balanced"]:,} of {s["batches"]:,}
batches have balanced land and warehouse ledger rows covering {s["records_accounted"]:,} of the
produced offsets. Late: {s["records_late_claimed"]:,} in batches claimed but not yet warehoused,
{s["records_late_unclaimed"]:,} not yet claimed; {s["samples_never_visible_everywhere"]:,} of
{s["samples"]:,} sampled enrollments were not visible in all sinks when the drain ended
({s["samples_lost"]:,} counted lost: only once everything else has arrived). {drain}
"""


if __name__ == "__main__":
    sys.exit(main())
