"""What TLS and SASL cost: the same produce-then-consume of simulated events on one throwaway
broker's ``PLAINTEXT`` and ``SASL_SSL`` (SCRAM-SHA-512, the stack's form) listeners, in one run,
rounds alternating which listener goes first, so both see the same machine.

CPU is measured apart for the client (this process, librdkafka's threads included) and the
broker (its JVM, from /proc), for producing and for consuming (the land task's side: assign-based
reads of whole partitions). The broker is the stack's Kafka distribution with its own CA, users
and folder under the system's temporary directory, on free loopback ports; it is stopped and its
folder deleted at the end: the local stack is not touched (run it with the stack down, or at least
idle: a contended figure is not a figure). Writes bench/results/tls.json.

``BENCH_TLS_EVENTS`` (default 200,000) events per round, ``BENCH_TLS_ROUNDS`` (3) rounds.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

from bench.common import write
from enrollment.clients.kafka import KafkaSettings

EVENTS = int(os.environ.get("BENCH_TLS_EVENTS", "200000"))
ROUNDS = int(os.environ.get("BENCH_TLS_ROUNDS", "3"))
PARTITIONS = 4
USER = "bench"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jiffies(pid: int) -> float:
    """CPU-s of process ``pid`` so far (user + system, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Broker:
    """A single-node KRaft broker in ``folder`` with a PLAINTEXT and a SASL_SSL listener."""

    def __init__(self, folder: Path, lib: Path) -> None:
        from stack.config import SCRAM, write_private
        from stack.services.base import LOG4J2
        from stack.tls import LocalCA

        self.folder, self.lib, self.log4j = folder, lib, LOG4J2
        ca = LocalCA(folder / "tls")
        broker_pem = ca.issue("broker", server=True)
        self.password = secrets.token_urlsafe(16)
        plain, sasl, controller = _free_port(), _free_port(), _free_port()
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{USER}" password="{self.password}";'
        )
        self.props = folder / "server.properties"
        write_private(
            self.props,
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}",
                    f"listeners=PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{sasl},"
                    f"CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{plain},"
                    f"SASL_SSL://127.0.0.1:{sasl}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map="
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
                    f"sasl.enabled.mechanisms={SCRAM}",
                    f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config={jaas}",
                    "ssl.keystore.type=PEM",
                    f"ssl.keystore.location={broker_pem}",
                    f"log.dirs={folder / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "",
                ]
            ),
        )
        self.listeners = {
            "PLAINTEXT": KafkaSettings.plaintext(f"127.0.0.1:{plain}"),
            "SASL_SSL": KafkaSettings(
                {
                    "bootstrap.servers": f"127.0.0.1:{sasl}",
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanism": SCRAM,
                    "sasl.username": USER,
                    "sasl.password": self.password,
                    "ssl.ca.location": str(ca.certificate),
                },
                source="the benchmark's broker",
            ),
        }
        argfile = folder / "format.args"
        arguments = [
            f"-Dlog4j2.configurationFile={LOG4J2}",
            "-cp",
            f"{lib}/*",
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
            "-c",
            str(self.props),
            "--add-scram",
            f"{SCRAM}=[name={USER},password={self.password}]",
        ]
        write_private(argfile, "\n".join(f'"{a}"' for a in arguments) + "\n")
        subprocess.run(["java", f"@{argfile}"], check=True, capture_output=True)
        argfile.unlink()
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> None:
        from confluent_kafka.admin import AdminClient

        self.process = subprocess.Popen(
            [
                "java",
                "-Xms512m",
                "-Xmx1g",
                f"-Dlog4j2.configurationFile={self.log4j}",
                f"-Dkafka.logs.dir={self.folder}",
                "-cp",
                f"{self.lib}/*",
                "kafka.Kafka",
                str(self.props),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        for kafka in self.listeners.values():
            while True:
                try:
                    AdminClient(kafka.admin({"log_level": 0})).list_topics(timeout=2)
                    break
                except Exception:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError("the benchmark's broker did not start") from None
                    time.sleep(1)

    def cpu(self) -> float:
        assert self.process is not None
        return _jiffies(self.process.pid)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _topic(kafka: KafkaSettings, name: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka.admin())  # kept until the answer: its end cancels the request
    admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])[
        name
    ].result(timeout=30)
    return name


def _measured(broker: Broker, work, *args) -> dict:
    wall, client, server = time.perf_counter(), time.process_time(), broker.cpu()
    work(*args)
    return {
        "wall_s": time.perf_counter() - wall,
        "client_cpu_s": time.process_time() - client,
        "broker_cpu_s": broker.cpu() - server,
    }


def _produce(kafka: KafkaSettings, topic: str, events: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    # The simulator's and the canary's settings: batched, idempotent, all replicas.
    producer = Producer(
        kafka.producer(
            {"linger.ms": 20, "batch.size": 1_000_000, "enable.idempotence": True, "acks": "all"}
        )
    )
    for key, value in events:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def _consume(kafka: KafkaSettings, topic: str, expected: int) -> None:
    from confluent_kafka import Consumer, TopicPartition

    # As the land task reads: assigned partitions, no group membership, batches of messages.
    consumer = Consumer(kafka.consumer({"group.id": f"bench-{topic}", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    read, deadline = 0, time.monotonic() + 300
    while read < expected and time.monotonic() < deadline:
        read += sum(1 for m in consumer.consume(10_000, 1.0) if m.error() is None)
    consumer.close()
    assert read == expected, f"read {read} of {expected}"


def main() -> None:
    from enrollment.simulator.generator import Simulator
    from stack import config as stack_config

    lib = stack_config.load().state / "kafka" / "lib"
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise SystemExit(f"Kafka's jars are missing in {lib}: run `make install`")
    events = [(m.key or b"", m.value) for m in Simulator(seed=424).take(EVENTS)]
    size = sum(len(k) + len(v) for k, v in events) / len(events)
    log(f"{len(events):,} simulated events, {size:.0f} bytes each on average")
    folder = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    broker = Broker(folder, lib)
    runs: dict[str, list[dict]] = {name: [] for name in broker.listeners}
    try:
        broker.start()
        for name, kafka in broker.listeners.items():  # warm-up: coordinators, JIT, sessions
            _produce(kafka, _topic(kafka, f"warm-up-{name.lower()}"), events[:5_000])
        for r in range(ROUNDS):
            order = list(broker.listeners) if r % 2 == 0 else list(reversed(broker.listeners))
            for name in order:
                kafka = broker.listeners[name]
                topic = _topic(kafka, f"bench-{name.lower()}-{r}")
                produced = _measured(broker, _produce, kafka, topic, events)
                consumed = _measured(broker, _consume, kafka, topic, len(events))
                runs[name].append({"produce": produced, "consume": consumed})
                log(
                    f"round {r + 1}/{ROUNDS} {name:9} produce {produced['wall_s']:.1f} s "
                    f"consume {consumed['wall_s']:.1f} s"
                )
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)

    per_million = 1_000_000 / len(events)
    figures: dict = {}
    for name, rounds in runs.items():
        figures[name] = {
            phase: {
                key: round(statistics.median(r[phase][key] for r in rounds) * per_million, 2)
                for key in ("client_cpu_s", "broker_cpu_s", "wall_s")
            }
            for phase in ("produce", "consume")
        }
    plain, secured = figures["PLAINTEXT"], figures["SASL_SSL"]
    print(f"\nper 1M events ({size:.0f} B), median of {ROUNDS} alternating rounds:")
    print(f"{'':20} {'PLAINTEXT':>10} {'SASL_SSL':>10} {'ratio':>6}")
    for phase in ("produce", "consume"):
        for key in ("client_cpu_s", "broker_cpu_s", "wall_s"):
            a, b = plain[phase][key], secured[phase][key]
            print(f"{phase + ' ' + key:20} {a:10.2f} {b:10.2f} {b / a if a else 0:6.2f}")
    write(
        "tls",
        {
            "events_per_round": len(events),
            "bytes_per_event": round(size),
            "rounds": ROUNDS,
            "per_million_events": figures,
            "note": "medians of alternating rounds on one throwaway broker; CPU-s per 1M events",
        },
    )


if __name__ == "__main__":
    main()
