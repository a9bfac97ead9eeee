"""What the backlog trigger costs the triggerer: CPU-s a minute for the four regions' watchers,
asking every second as the trigger does, with Kafka clients made and closed per question (the
trigger until issue 24) against one ``BacklogWatch`` per region kept for the trigger's life —
both measured in the same run on the same topics.

Two cases each: a backlog the count decides (at the peak: offsets only), and a small one below
``min_records`` (at low load: the first record of each lagging partition is fetched for its
timestamp). CPU is this process's (librdkafka's threads included), over ``QUESTIONS`` questions
per region, scaled to one question a second. Uses its own topics and group; deletes them.
Writes bench/results/backlog.json.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from bench.common import local_stack, write
from enrollment.clients.kafka import KafkaSettings
from enrollment.ingest.backlog import BacklogWatch, measure

QUESTIONS = int(os.environ.get("BENCH_BACKLOG_QUESTIONS", "60"))
PARTITIONS = 8
RECORDS = 5_000  # pending per region
ENOUGH = 1_000  # min_records


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_per_minute(ask: Callable[[int], object], regions: int) -> tuple[float, float]:
    """(CPU-s a minute for every region asking once a second, mean seconds a question)."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    for _ in range(QUESTIONS):
        for r in range(regions):
            ask(r)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return round(cpu / QUESTIONS * 60, 2), round(wall / (QUESTIONS * regions), 4)


def compare(
    kafka: KafkaSettings, group: str, topics: list[str], enough: int | None
) -> dict[str, float]:
    """The same questions, on kept watches and on clients made per question."""
    watches = [BacklogWatch(kafka, group, t, PARTITIONS) for t in topics]
    try:
        for w in watches:  # connected outside the measurement, as a running trigger is
            w.measure(enough)
        kept = cpu_per_minute(lambda r: watches[r].measure(enough), len(topics))
    finally:
        for w in watches:
            w.close()
    fresh = cpu_per_minute(
        lambda r: measure(kafka, group, topics[r], PARTITIONS, enough), len(topics)
    )
    return {
        "client_per_question_cpu_s_per_min": fresh[0],
        "kept_watch_cpu_s_per_min": kept[0],
        "ratio": round(kept[0] / fresh[0], 3) if fresh[0] else 0.0,
        "client_per_question_s": fresh[1],
        "kept_watch_s": kept[1],
    }


def main() -> int:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    cfg, config, run = local_stack(["kafka"])
    kafka, group = cfg.kafka, f"bench-backlog-{run}"
    topics = [f"bench.{run}.{r.code.lower()}.backlog" for r in config.regions]
    admin = AdminClient(kafka.admin())
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in topics]
    ).values():
        future.result(30)
    figures: dict[str, dict[str, float]] = {}
    try:
        producer = Producer(kafka.producer({"linger.ms": 50}))
        for t in topics:
            for i in range(RECORDS):
                producer.produce(t, key=str(i).encode(), value=b"{}")
        producer.flush(30)
        # At the peak the count decides (offsets only); below min_records (None: never enough)
        # each lagging partition's first record is fetched for its timestamp.
        for case, enough in (("count_decides", ENOUGH), ("timestamps_read", None)):
            figures[case] = compare(kafka, group, topics, enough)
            f = figures[case]
            log(
                f"backlog, {case.replace('_', ' ')}: four watchers asking every second cost "
                f"{f['client_per_question_cpu_s_per_min']:.2f} CPU-s/min with a client per "
                f"question, {f['kept_watch_cpu_s_per_min']:.2f} with one watch each "
                f"({f['ratio']:.2f}x); a question takes {f['client_per_question_s'] * 1000:.0f} "
                f"ms vs {f['kept_watch_s'] * 1000:.0f} ms"
            )
    finally:
        admin.delete_topics(topics)
    write(
        "backlog",
        {"regions": len(topics), "partitions": PARTITIONS, "questions": QUESTIONS, **figures},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
