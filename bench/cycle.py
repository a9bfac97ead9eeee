"""The warehouse cycle's seconds against the size of history: they must not grow with it.

Four regions' batches (``BENCH_CYCLE_EVENTS`` events in all, 2 % faults) are produced, landed
and written by one warehouse cycle into an ``events`` table that already holds 0, 1M and 5M
rows of history — first history that arrived inside the dedup window (the worst case: the
anti-join reads all of it), then 5M rows that arrived before the window (what a table of 30 days
looks like to a cycle). History rows are synthetic copies of landed events with new ids.

Own topics, groups and datasets; everything is dropped at the end. Writes bench/results/cycle.json
with a plot, cycle.png.
"""

from __future__ import annotations

import io
import os
import sys
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import local_stack, produce_simulated, write
from enrollment.clients.bigquery import BigQuery
from enrollment.clients.objects import read_parquet
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.ingest.pending import pending_batches
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.cycle import raise_failed, run_cycle

EVENTS = int(os.environ.get("BENCH_CYCLE_EVENTS", "400000"))
HISTORY = [(0, "inside"), (1_000_000, "inside"), (5_000_000, "inside"), (5_000_000, "before")]
CHUNK = 500_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    from confluent_kafka.admin import AdminClient, NewTopic
    from google.cloud import bigquery

    cfg, config, run = local_stack(["kafka", "gcs", "bigquery"])
    admin = AdminClient(cfg.kafka.admin())
    client = bigquery_client(cfg.project)
    bucket = storage_client(cfg.project).bucket(config.landing_bucket)
    keyring = (
        Keyring.from_env()
    )  # the stack's key (local_stack exported it), as the ingest DAG takes it from its connection
    datasets = (f"bench_cycle_{run}", f"bench_cycle_ops_{run}")
    for name in datasets:
        client.create_dataset(bigquery.Dataset(f"{cfg.project}.{name}"))
    warehouse = BigQuery(
        client, storage_client(cfg.project), cfg.project, *datasets, settings=config.warehouse
    )
    sim = Simulator(seed=4711, faults=FaultRates.mix(0.02))
    topics_made: list[str] = []
    results: list[dict] = []
    history_rows, template = 0, None
    try:
        for step, (history, where) in enumerate(HISTORY):
            if template is not None and (history > history_rows or where == "before"):
                if where == "before":
                    warehouse.run(
                        f"DELETE FROM {warehouse.table('events')} WHERE batch_id LIKE 'history-%'"
                    )
                    history_rows = 0
                fill_history(warehouse, template, history - history_rows, where)
                history_rows = history
            topics = {r.code: f"bench.cycle.{run}.{step}.{r.code.lower()}" for r in config.regions}
            for future in admin.create_topics(
                [NewTopic(t, num_partitions=4, replication_factor=1) for t in topics.values()]
            ).values():
                future.result(30)
            topics_made += topics.values()
            produce_simulated(
                cfg.kafka, sim, {r.topic: topics[r.code] for r in config.regions}, EVENTS
            )
            group = f"bench-cycle-{run}-{step}"
            for region in config.regions:
                land(
                    cfg.kafka,
                    claim(
                        cfg.kafka,
                        group,
                        region.code,
                        topics[region.code],
                        4,
                        bucket,
                        10_000_000,
                    ),
                    bucket,
                    keyring,
                )
            batches = pending_batches(bucket, group)
            if template is None:
                # what history rows are copied from
                template = read_parquet(warehouse.storage, batches[0].valid_uri)
            t0 = time.monotonic()
            result = run_cycle(warehouse, batches, config.warehouse)
            raise_failed(result)
            seconds = time.monotonic() - t0
            table_rows = warehouse.run(f"SELECT COUNT(*) AS n FROM {warehouse.table('events')}")[0][
                "n"
            ]
            results.append(
                {
                    "history_rows": history,
                    "history": where,
                    "events_table_rows_after": table_rows,
                    "cycle_events": sum(b.offsets for b in batches),
                    "cycle_s": round(seconds, 2),
                    "statements": result.statements,
                    "window_days": result.window_days,
                }
            )
            log(
                f"history {history:,} ({where} the window): one cycle of {EVENTS:,} events in "
                f"{seconds:.1f} s; events table now {table_rows:,} rows"
            )
    finally:
        admin.delete_topics(topics_made) if topics_made else None
        for name in datasets:
            client.delete_dataset(name, delete_contents=True, not_found_ok=True)

    base = results[0]["cycle_s"]
    figures = {
        "events_per_cycle": EVENTS,
        "runs": results,
        "ratio_5m_inside_vs_empty": round(results[2]["cycle_s"] / base, 2) if base else None,
        "ratio_5m_before_vs_empty": round(results[3]["cycle_s"] / base, 2) if base else None,
        "note": "history rows are synthetic copies of landed events; 'inside' = arrived within the "
        "dedup window",
    }
    print(
        "cycle: "
        + "; ".join(
            f"{r['history_rows']:,} rows {r['history']} the window → {r['cycle_s']} s"
            for r in results
        )
        + f"; 5M inside / empty = {figures['ratio_5m_inside_vs_empty']}, 5M before / empty = "
        f"{figures['ratio_5m_before_vs_empty']}"
    )
    write("cycle", figures)
    plot(results)
    return 0


def fill_history(warehouse: BigQuery, template: pa.Table, rows: int, where: str) -> None:
    """``rows`` synthetic events appended to ``events`` by load jobs, arriving inside the dedup
    window (today) or before it (spread over the 30 days before)."""
    from google.cloud import bigquery

    now = datetime.now(UTC)
    done = 0
    while done < rows:
        n = min(CHUNK, rows - done)
        reps = -(-n // template.num_rows)
        chunk = pa.concat_tables([template] * reps).slice(0, n)
        ids = pa.array([f"history-{where}-{done + i:09d}" for i in range(n)], pa.string())
        if where == "inside":
            stamps = pa.array(
                [now - timedelta(seconds=(done + i) % 3600) for i in range(n)],
                pa.timestamp("ms", tz="UTC"),
            )
        else:
            stamps = pa.array(
                [now - timedelta(days=2 + (done + i) % 30) for i in range(n)],
                pa.timestamp("ms", tz="UTC"),
            )
        chunk = chunk.set_column(chunk.schema.get_field_index("event_id"), "event_id", ids)
        chunk = chunk.set_column(
            chunk.schema.get_field_index("batch_id"),
            "batch_id",
            pa.array([f"history-{done // CHUNK}"] * n, pa.string()),
        )
        chunk = chunk.set_column(
            chunk.schema.get_field_index("kafka_timestamp"), "kafka_timestamp", stamps
        )
        sink = io.BytesIO()
        pq.write_table(chunk, sink)
        sink.seek(0)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET, write_disposition="WRITE_APPEND"
        )
        t0 = time.monotonic()
        warehouse.client.load_table_from_file(
            sink, f"{warehouse.project}.{warehouse.dataset}.events", job_config=config
        ).result()
        done += n
        log(
            f"  history: {done:,}/{rows:,} rows ({where} the window) loaded, last chunk "
            f"{time.monotonic() - t0:.1f} s"
        )


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import RESULTS

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['history_rows'] / 1e6:g}M\n{r['history']}" for r in results]
    ax.bar(labels, [r["cycle_s"] for r in results], color=["#4c72b0"] * 3 + ["#55a868"])
    ax.set_ylabel("one warehouse cycle (s)")
    ax.set_xlabel("rows of history in events (arrived inside / before the dedup window)")
    ax.set_title(f"Warehouse cycle of {results[0]['cycle_events']:,} events vs history")
    fig.tight_layout()
    fig.savefig(RESULTS / "cycle.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
