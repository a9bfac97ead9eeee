"""Apache Kafka 4 in KRaft mode: one broker and controller, its topics and group coordinator."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

from ..config import HOST
from .base import LOG4J2, Service, ServiceError


class Kafka(Service):
    name, title = "kafka", "Apache Kafka 4 (KRaft)"
    port_names = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT")

    @property
    def lib(self) -> Path:
        return self.cfg.state / "kafka" / "lib"

    def data_dirs(self) -> list[Path]:
        return [self.dir / "data"]

    def prepare(self) -> bool:
        if not any(self.lib.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"kafka: jars missing in {self.lib}; run `make install`")
        port, cport = self.cfg.port("KAFKA_PORT"), self.cfg.port("KAFKA_CONTROLLER_PORT")
        data = self.dir / "data"
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={HOST}:{cport}",
                    f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
                    f"advertised.listeners=PLAINTEXT://{HOST}:{port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=4",
                    "auto.create.topics.enable=false",
                    # single node: internal topics cannot have more replicas than brokers
                    "offsets.topic.replication.factor=1",
                    # 50 partitions (the default) take a minute to create and load on a busy
                    # small machine, during which every group answers NOT_COORDINATOR; one broker
                    # needs few.
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        if (data / "meta.properties").exists():
            return False
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            [
                "java",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                f"{self.lib}/*",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise ServiceError(
                f"kafka: formatting the KRaft storage failed:\n{fmt.stdout}{fmt.stderr}"
            )
        return True

    def command(self) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            f"-Dlog4j2.configurationFile={LOG4J2}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            f"{self.lib}/*",
            "kafka.Kafka",
            str(self.dir / "server.properties"),
        ]

    def _admin(self):
        from confluent_kafka.admin import AdminClient

        # A silent logger: connection refusals while the broker starts are expected, not news.
        quiet = logging.getLogger("stack.kafka.probe")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        return AdminClient(
            self.cfg.kafka.admin({"socket.connection.setup.timeout.ms": 1000, "logger": quiet})
        )

    def ready(self) -> bool:
        try:
            self._admin().list_topics(timeout=1.0)
            return True
        except Exception:
            return False

    def setup(self) -> None:
        from confluent_kafka.admin import NewTopic

        from enrollment.config import load_config

        admin = self._admin()
        existing = admin.list_topics(timeout=10).topics
        wanted = [
            NewTopic(r.topic, num_partitions=r.partitions, replication_factor=1)
            for r in load_config().regions
            if r.topic not in existing
        ]
        for topic, future in (admin.create_topics(wanted) if wanted else {}).items():
            try:
                future.result(timeout=30)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise ServiceError(f"kafka: creating topic {topic} failed: {exc}") from exc
        self._wait_for_group_coordinator(load_config())

    def _wait_for_group_coordinator(self, config, timeout_s: float = 120.0) -> None:
        """Ready means the pipeline's group can read its offsets: the first call creates and loads
        the offsets topic, and until then the broker answers NOT_COORDINATOR."""
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer(
            self.cfg.kafka.consumer(
                {"group.id": config.consumer_group, "enable.auto.commit": False}
            )
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    consumer.committed([TopicPartition(config.regions[0].topic, 0)], timeout=10)
                    return
                except KafkaException as exc:
                    if time.monotonic() > deadline:
                        raise ServiceError(
                            f"kafka: the group coordinator did not answer within {timeout_s:.0f} "
                            f"s: {exc}"
                        ) from exc
                    time.sleep(1)
        finally:
            consumer.close()

    def url(self) -> str:
        return f"kafka://{self.cfg.kafka_bootstrap}"
