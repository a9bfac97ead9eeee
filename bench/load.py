"""A steady load on the running system, shared by the freshness benchmarks: the simulator sends a
rate for a duration into the region topics while the scheduler, the backlog trigger and the DAGs
carry it; a caller-supplied watcher follows sampled enrollments until they are visible where it
looks. Then every produced offset is checked against the committed offsets (landed, gate passed).

The DAGs named are unpaused for the run and paused again after it, as they were found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from enrollment.clients.kafka import pending_ranges
from enrollment.clients.services import storage_client
from enrollment.ingest.backlog import total_pending
from enrollment.ingest.pending import pending_batches
from stack.airflow_client import AirflowClient

POLL_S = 2.0


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass
class LoadOutcome:
    produced: int = 0
    watched: dict[str, float] = field(default_factory=dict)  # partner id -> occurred_at (epoch s)
    unexplained: int = 0
    hostile: dict = field(
        default_factory=dict
    )  # (region, partition, offset) -> expected reasons, of the hostile messages produced
    failed_runs: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)  # DAG id -> its failed run ids
    offsets: dict[tuple[str, int], list[int]] = field(
        default_factory=dict
    )  # (region, partition) -> offsets produced
    started: datetime | None = None
    # everything produced reached the warehouse and every sample was seen before the drain ended
    drained: bool = False
    backlog_left: dict = field(default_factory=dict)  # what was still waiting when the load gave up


# The triggerer looks for new triggers every few seconds (its heartbeat): time to start them.
WATCHER_START_S = 5.0


def steady_load(
    cfg,
    config,
    rate: str,
    duration: str,
    dag_ids: list[str],
    poll: Callable[[dict[str, float]], int],
    sample_every: int = 5,
    drain_s: float = 300.0,
    bad: str = "2%",
    tick: Callable[[float], None] | None = None,
    hostile: str | None = None,
) -> LoadOutcome:
    """Runs the load; ``poll(watched)`` looks for the watched partners and returns how many are
    still missing (called every POLL_S seconds, and after the simulator until 0 or ``drain_s``).
    ``bad`` is the simulator's share of faulty messages, ``hostile`` its share of hostile ones;
    ``tick(seconds since the load began)`` is called at every poll, during the load and the drain
    (fault injection, lag sampling)."""
    airflow = AirflowClient(cfg)
    for dag_id in dag_ids:
        airflow.wait_for_dag(dag_id)
    # The clock starts once every region's backlog watcher is registered (the triggerer then
    # starts it within seconds): before, the first minute of a run measured Airflow's start-up.
    backlogs = [f"commerce_backlog_{r.code.lower()}" for r in config.regions]
    waited = airflow.watch_backlogs(dag_ids, backlogs)
    log(f"the {len(backlogs)} backlog watchers registered {waited:.0f} s after unpausing")
    time.sleep(WATCHER_START_S)
    outcome = LoadOutcome()
    try:
        # Whatever waits from before is carried first, so the run measures only its own events.
        deadline = time.monotonic() + 600
        while (
            left := total_pending(cfg.kafka, config.consumer_group, config.regions)
        ) and time.monotonic() < deadline:
            log(f"draining earlier backlog: {left:,} pending")
            time.sleep(5)
        started = outcome.started = datetime.now(UTC)
        offsets = outcome.offsets
        with tempfile.TemporaryDirectory() as tmp:
            expected = Path(tmp) / "expected.jsonl"
            load_began = time.monotonic()
            producer = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "enrollment.simulator",
                    "produce",
                    "--rate",
                    rate,
                    "--duration",
                    duration,
                    "--faults",
                    bad,
                    *(["--hostile", hostile] if hostile else []),
                    "--seed",
                    str(int(time.time())),
                    "--start",
                    "now",
                    "--expected",
                    str(expected),
                ],
                env=os.environ.copy(),
            )
            read_to, enrollments = 0, 0

            def sample() -> int:
                nonlocal read_to, enrollments
                if expected.exists():
                    with open(expected, "rb") as fh:
                        fh.seek(read_to)
                        chunk = fh.read()
                    complete = chunk[: chunk.rfind(b"\n") + 1]
                    read_to += len(complete)
                    for line in complete.splitlines():
                        record = json.loads(line)
                        outcome.produced += 1
                        offsets.setdefault((record["region"], record["partition"]), []).append(
                            record["offset"]
                        )
                        if record["fault"] == "hostile":
                            outcome.hostile[
                                (record["region"], record["partition"], record["offset"])
                            ] = record["reasons"]
                        # Followed into every sink: so only those Marketing Cloud may hold (a
                        # partner who declined never goes there).
                        if (
                            record["event_type"] == "partner.enrolled"
                            and record["outcome"] == "valid"
                            and record["partner_version"] == 1
                            and config.marketing_consent.contactable(
                                record["region"], record.get("marketing_email")
                            )
                        ):
                            enrollments += 1
                            if enrollments % sample_every == 0:
                                outcome.watched[record["partner_id"]] = datetime.fromisoformat(
                                    record["occurred_at"].replace("Z", "+00:00")
                                ).timestamp()
                return poll(outcome.watched)

            try:
                last_report = 0.0
                while producer.poll() is None:
                    if (
                        tick
                    ):  # before the (slower) look for the watched partners: faults start on time
                        tick(time.monotonic() - load_began)
                    missing = sample()
                    if time.monotonic() - last_report > 15:
                        last_report = time.monotonic()
                        log(
                            f"produced {outcome.produced:,}; enrollments watched "
                            f"{len(outcome.watched):,}, not visible yet {missing:,}"
                        )
                    time.sleep(POLL_S)
                if producer.returncode != 0:
                    raise SystemExit(f"the simulator failed with exit code {producer.returncode}")
                deadline = time.monotonic() + drain_s
                bucket = storage_client(cfg.project).bucket(config.landing_bucket)

                def waiting() -> tuple[int, int]:
                    return total_pending(cfg.kafka, config.consumer_group, config.regions), len(
                        pending_batches(bucket, config.consumer_group)
                    )

                while True:
                    missing, left = sample(), waiting()
                    if not missing and not any(left):
                        outcome.drained = True
                        break
                    if tick:
                        tick(time.monotonic() - load_began)
                    if time.monotonic() > deadline:
                        outcome.backlog_left = {
                            "kafka_records_pending": left[0],
                            "landed_batches_not_warehoused": left[1],
                            "samples_not_visible": missing,
                        }
                        log(
                            f"gave up waiting after {drain_s:.0f} s: {missing:,} watched partners "
                            f"not visible, {left[0]:,} records pending "
                            f"in Kafka, {left[1]} landed batches not warehoused; the DAGs are "
                            "paused with that backlog left"
                        )
                        break
                    if time.monotonic() - last_report > 15:
                        last_report = time.monotonic()
                        log(
                            f"draining: {missing:,} watched partners not visible yet, {left[0]:,} "
                            "records pending in Kafka, "
                            f"{left[1]} landed batches waiting for the warehouse"
                        )
                    time.sleep(POLL_S)
            finally:
                if (
                    producer.poll() is None
                ):  # the watcher failed: do not leave the simulator producing
                    producer.terminate()

        # Every produced offset must lie below its
        # partition's committed offset (landed, gate passed).
        committed = {}
        for region in config.regions:
            for p, start, _ in pending_ranges(
                cfg.kafka, config.consumer_group, region.topic, region.partitions
            ):
                committed[(region.code, p)] = start
        outcome.unexplained = sum(
            sum(1 for o in produced if o >= committed[key]) for key, produced in offsets.items()
        )
        for dag_id in dag_ids:
            runs = airflow.http.get(
                f"/dags/{dag_id}/dagRuns", params={"limit": 1000, "order_by": "-start_date"}
            ).json()["dag_runs"]
            failed = [
                r["dag_run_id"]
                for r in runs
                if r["state"] == "failed" and r["start_date"] >= started.isoformat()
            ]
            if failed:
                outcome.failed[dag_id] = failed
        outcome.failed_runs = sum(len(v) for v in outcome.failed.values())
    finally:
        for dag_id in dag_ids:
            airflow.http.patch(f"/dags/{dag_id}", json={"is_paused": True})
    return outcome


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    latencies = sorted(latencies)
    if not latencies:
        return {"p50": None, "p95": None, "max": None}
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "max": round(latencies[-1], 2)}
