"""Shared by the benchmarks: machine facts and where results go."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

from enrollment.clients.kafka import KafkaSettings

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            name: version(name)
            for name in ("pyarrow", "pandas", "numpy", "confluent-kafka", "msgspec")
        },
    }


def write(name: str, result: dict, merge: bool = False) -> Path:
    """Writes the figures with the machine's facts; ``merge`` keeps the file's other figures
    (two benchmarks share ingest.json)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    previous = json.loads(path.read_text()) if merge and path.exists() else {}
    path.write_text(json.dumps(previous | result | {"machine": machine()}, indent=2) + "\n")
    print(
        f"written {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}",
        file=sys.stderr,
    )
    return path


def pin_to_one_core() -> None:
    """'On one core' honestly: this process and Arrow's thread pools use one CPU."""
    import pyarrow as pa

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def local_stack(services: list[str]):
    """The benchmark's side of the local stack: the services started, their clients' environment
    set; (stack config, pipeline config, a run id for the benchmark's own topics and datasets)."""
    import uuid

    from enrollment.config import load_config
    from stack import cli as stack_cli
    from stack import config as stack_config

    stack_cli.up(services, quiet=True)
    cfg = stack_config.load()
    os.environ.update(cfg.client_env())
    return cfg, load_config(), uuid.uuid4().hex[:6]


def produce_simulated(kafka: KafkaSettings, sim, topic_of: dict[str, str], events: int) -> int:
    """``events`` messages of the simulator into the benchmark's topics (``topic_of``: the
    region topic a message names → the topic to produce to); how many were produced."""
    from confluent_kafka import Producer

    producer = Producer(
        kafka.producer(
            {
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 500_000,
            }
        )
    )
    produced = 0
    for message in sim:
        if produced >= events:
            break
        while True:
            try:
                producer.produce(topic_of[message.topic], key=message.key, value=message.value)
                break
            except BufferError:
                producer.poll(0.05)
        produced += 1
    assert producer.flush(60) == 0
    return produced
