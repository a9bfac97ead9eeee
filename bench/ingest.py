"""Ingest throughput on the local stack: claim → land per region, then one warehouse cycle for
all four, against
two references measured in the same run on the same events:

- the limit: raw confluent-kafka consume-and-parse (json.loads) of the events;
- the baseline: Airflow's stock ConsumeFromTopicOperator with apply_function_batch writing the
  same events to Cloud Storage (no validation, no warehouse).

Uses its own topics, consumer groups and datasets (nothing shared with a running pipeline).
Writes bench/results/ingest.json; the freshness figures in the same file come from
bench/freshness.py (the running scheduler under a steady rate).
"""

from __future__ import annotations

import json
import os
import sys
import time

from bench.common import local_stack, produce_simulated, write
from enrollment.clients.bigquery import BigQuery
from enrollment.clients.services import bigquery_client, storage_client
from enrollment.core.pii import Keyring
from enrollment.ingest.claim import claim
from enrollment.ingest.land import land
from enrollment.ingest.pending import pending_batches
from enrollment.simulator.faults import FaultRates
from enrollment.simulator.generator import Simulator
from enrollment.warehouse.cycle import raise_failed, run_cycle
from enrollment.warehouse.ledger import Ledger

EVENTS = int(os.environ.get("BENCH_INGEST_EVENTS", "400000"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, NewTopic
    from google.cloud import bigquery

    cfg, config, run = local_stack(["kafka", "gcs", "bigquery"])
    topics = {r.code: f"bench.{run}.{r.code.lower()}.events" for r in config.regions}
    admin = AdminClient(cfg.kafka.admin())
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=4, replication_factor=1) for t in topics.values()]
    ).values():
        future.result(30)
    client = bigquery_client(cfg.project)
    datasets = (f"bench_{run}", f"bench_ops_{run}")
    for name in datasets:
        client.create_dataset(bigquery.Dataset(f"{cfg.project}.{name}"))
    bucket = storage_client(cfg.project).bucket(config.landing_bucket)
    keyring = (
        Keyring.from_env()
    )  # the stack's key (local_stack exported it), as the ingest DAG takes it from its connection
    try:
        log(f"producing {EVENTS:,} events (2% faults) to {len(topics)} region topics ...")
        produced = produce_simulated(
            cfg.kafka,
            Simulator(seed=31337, faults=FaultRates.mix(0.02)),
            {r.topic: topics[r.code] for r in config.regions},
            EVENTS,
        )

        # The limit: one consumer reads and parses everything.
        consumer = Consumer(
            cfg.kafka.consumer(
                {
                    "group.id": f"bench-raw-{run}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
        )
        consumer.subscribe(list(topics.values()))
        t0, seen = time.monotonic(), 0
        while seen < produced and time.monotonic() - t0 < 300:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                if msg.error() is None:
                    seen += 1
                    # contextlib.suppress would add its own cost to what this loop times
                    try:  # noqa: SIM105
                        json.loads(msg.value())
                    except ValueError:
                        pass
        raw_s = time.monotonic() - t0
        consumer.close()
        log(f"raw consume+parse: {seen:,} in {raw_s:.1f} s")

        # The baseline: the stock operator, batches of 1,000 written to Cloud Storage.
        from airflow.providers.apache.kafka.operators.consume import ConsumeFromTopicOperator

        os.environ["AIRFLOW_CONN_BENCH_KAFKA"] = json.dumps(
            {
                "conn_type": "kafka",
                "extra": {
                    **cfg.kafka.config,
                    "group.id": f"bench-baseline-{run}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                },
            }
        )
        written = [0]

        def to_gcs(messages):
            bucket.blob(f"bench/{run}/baseline/{written[0]:06d}.jsonl").upload_from_string(
                b"\n".join(m.value() for m in messages)
            )
            written[0] += 1

        operator = ConsumeFromTopicOperator(
            task_id="baseline",
            topics=list(topics.values()),
            kafka_config_id="bench_kafka",
            apply_function_batch=to_gcs,
            max_messages=produced,
            max_batch_size=1000,
            poll_timeout=5,
        )
        t0 = time.monotonic()
        operator.execute(context={})
        baseline_s = time.monotonic() - t0
        log(
            f"baseline ConsumeFromTopicOperator → GCS: {produced:,} in {baseline_s:.1f} s "
            f"({written[0]} objects)"
        )

        # The pipeline: one batch per region claimed and landed (one after the other here; the
        # ingest DAGs land regions in parallel), then ONE warehouse cycle writes them all.
        warehouse = BigQuery(
            client, storage_client(cfg.project), cfg.project, *datasets, settings=config.warehouse
        )
        group = f"bench-pipeline-{run}"
        t0, accounted, stages, landed_batches = time.monotonic(), 0, {}, []
        for region in config.regions:
            manifest = claim(
                cfg.kafka,
                group,
                region.code,
                topics[region.code],
                4,
                bucket,
                max_batch=10_000_000,
            )
            t1 = time.monotonic()
            landed = land(cfg.kafka, manifest, bucket, keyring)
            landed_batches.append(landed)
            stages[region.code] = {
                "offsets": landed.offsets,
                "land_s": round(time.monotonic() - t1, 2),
            }
            log(
                f"  {region.code}: {landed.offsets:,} offsets landed in "
                f"{time.monotonic() - t1:.1f} s"
            )
        t2 = time.monotonic()
        cycle = run_cycle(warehouse, pending_batches(bucket, group), config.warehouse)
        raise_failed(cycle)
        cycle_s = time.monotonic() - t2
        stages["warehouse_cycle_s"] = round(cycle_s, 2)
        log(
            f"  one warehouse cycle over {len(cycle.batches)} batches: {cycle_s:.1f} s, write "
            f"statements {cycle.statements}, phases {cycle.phases}"
        )
        stages["warehouse_cycle_phases_s"] = cycle.phases
        for landed in landed_batches:
            Ledger(warehouse).balance(landed.batch_id)
            accounted += landed.valid + landed.quarantined + landed.duplicates
        pipeline_s = time.monotonic() - t0
    finally:
        admin.delete_topics(list(topics.values()))
        for name in datasets:
            client.delete_dataset(name, delete_contents=True, not_found_ok=True)

    per_min = lambda seconds: round(produced / seconds * 60)  # noqa: E731
    figures = {
        "events": produced,
        "throughput_events_per_min": per_min(pipeline_s),
        "pipeline_seconds": round(pipeline_s, 2),
        "stages": stages,
        "baseline_events_per_min": per_min(baseline_s),
        "ratio_vs_baseline": round(baseline_s / pipeline_s, 2),
        "raw_consume_events_per_min": per_min(raw_s),
        "ratio_vs_raw": round(raw_s / pipeline_s, 2),
        "unexplained_records": produced - accounted,
        "mode": "four regions claimed and landed one after the other in one process, then one "
        "warehouse cycle (validation on the critical path)",
    }
    print(
        f"ingest: {produced:,} events through claim → land → warehouse in {pipeline_s:.1f} s = "
        f"{figures['throughput_events_per_min']:,}/min; "
        f"baseline operator {figures['baseline_events_per_min']:,}/min (ratio "
        f"{figures['ratio_vs_baseline']}); raw consume+parse "
        f"{figures['raw_consume_events_per_min']:,}/min (ratio {figures['ratio_vs_raw']}); "
        f"unexplained records {figures['unexplained_records']}"
    )
    write("ingest", figures, merge=True)  # keeps the freshness figures of bench/freshness.py
    return 0


if __name__ == "__main__":
    sys.exit(main())
