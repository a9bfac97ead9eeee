"""The load test's report: the plots (lag, throughput, latency per stage, latency over time, the
ingest's per-batch metrics) and the text of ``report.md``, from the run's summary."""

from __future__ import annotations

from pathlib import Path

from bench.cpu import markdown as cpu_markdown
from bench.loadtest.faults import Fault
from bench.loadtest.sampling import Samples
from bench.plots import latency_over_time
from enrollment.warehouse import cost


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
All three sinks: p50 {fmt(s["all_sinks_p50_s"])} s, p95 {fmt(s["all_sinks_p95_s"])} s; p95 of the
events produced outside a fault {fmt(s.get("all_sinks_p95_outside_faults_s"))} s; everything caught
up {fmt(s.get("caught_up_after_fault_s"))} s after the last fault ended.

## Where the CPU went

**The pipeline's own CPU: {fmt(s.get("pipeline_cpu_s_per_1m"))} CPU-s per million events**
(its tasks, Airflow's components, its metadata database and broker, over the whole run with the
drain, divided by the events in; the services and the load apart).

CPU seconds per minute of the run (load and drain), per component; tasks are charged by the
kind of DAG their worker ran.

{cpu_markdown(s["cpu"])}
## The warehouse on real BigQuery, on paper

{cost.markdown(s["cost"])}
This run took {s["cost"]["cycles_in_run"]:,} warehouse cycles in {s["cost"].get("run_minutes", 0):g}
minutes ({s["cost"].get("cycles_per_min", 0):g} a minute): at that cadence and 400,000 events/min
the same table costs **${s["cost"].get("usd_per_day_at_run_cadence", 0):,.0f}/day**.

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
