"""Apache Kafka 4 in KRaft mode: one broker and controller, its topics and group coordinator.

Secured like a production cluster: clients (the pipeline, the tests, the broker itself) reach it
on a ``SASL_SSL`` listener, with SCRAM-SHA-512 users created when the KRaft storage is formatted
and a certificate of the stack's CA (``stack.tls``) named 127.0.0.1 and localhost. The same
listener takes PLAIN (a user of its own, ``plain-client``: PLAIN's users are written in this
file) and OAUTHBEARER (JWTs signed by the stack's token key, checked against its JWKS file), so
that the forms managed Kafkas use are tested against a real broker; a second, ``SSL`` listener
takes clients by their certificate (mutual TLS). The controller's own listener (KRaft quorum
traffic, loopback) is the only plain one."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

from ..config import (
    HOST,
    KAFKA_ADMIN_USER,
    KAFKA_PLAIN_USER,
    KAFKA_USER,
    OAUTH_AUDIENCE,
    OAUTH_ISSUER,
    SCRAM,
    private_dir,
    write_private,
)
from ..tls import LocalCA
from .base import LOG4J2, Service, ServiceError


class Kafka(Service):
    name, title = "kafka", "Apache Kafka 4 (KRaft)"
    port_names = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_MTLS_PORT")

    @property
    def lib(self) -> Path:
        return self.cfg.state / "kafka" / "lib"

    def data_dirs(self) -> list[Path]:
        return [self.dir / "data"]

    @property
    def _formatted_secured(self) -> Path:
        """Written once the storage is formatted with the SCRAM users (older stacks have none)."""
        return self.dir / "scram-users.formatted"

    def prepare(self) -> bool:
        if not any(self.lib.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"kafka: jars missing in {self.lib}; run `make install`")
        port, cport = self.cfg.port("KAFKA_PORT"), self.cfg.port("KAFKA_CONTROLLER_PORT")
        mport = self.cfg.port("KAFKA_MTLS_PORT")
        data = self.dir / "data"
        if (data / "meta.properties").exists() and not self._formatted_secured.exists():
            raise ServiceError(
                "kafka: this stack's data predates the SASL_SSL listener (its SCRAM users are "
                "created when the storage is formatted); run `make reset-data` once"
            )
        ca = LocalCA(self.cfg.kafka_tls_dir)
        broker_pem = ca.issue("broker", server=True)
        ca.issue("client", server=False)  # a client's certificate for the SSL listener
        _, jwks = ca.token_signer()
        admin_password = self.cfg.credentials["kafka_admin_password"]
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{KAFKA_ADMIN_USER}" password="{admin_password}";'
        )
        plain_jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{KAFKA_PLAIN_USER}="{self.cfg.credentials["kafka_plain_password"]}";'
        )
        oauth = "org.apache.kafka.common.security.oauthbearer"
        props = self.dir / "server.properties"
        private_dir(self.dir)
        write_private(  # the broker's own SCRAM password: 0600
            props,
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={HOST}:{cport}",
                    f"listeners=SASL_SSL://{HOST}:{port},SSL://{HOST}:{mport},"
                    f"CONTROLLER://{HOST}:{cport}",
                    f"advertised.listeners=SASL_SSL://{HOST}:{port},SSL://{HOST}:{mport}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=SASL_SSL",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
                    "listener.name.ssl.ssl.client.auth=required",
                    f"sasl.enabled.mechanisms={SCRAM},PLAIN,OAUTHBEARER",
                    f"sasl.mechanism.inter.broker.protocol={SCRAM}",
                    f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config={jaas}",
                    f"listener.name.sasl_ssl.plain.sasl.jaas.config={plain_jaas}",
                    "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config="
                    f"{oauth}.OAuthBearerLoginModule required;",
                    "listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class="
                    f"{oauth}.OAuthBearerValidatorCallbackHandler",
                    f"sasl.oauthbearer.jwks.endpoint.url={jwks.as_uri()}",
                    f"sasl.oauthbearer.expected.issuer={OAUTH_ISSUER}",
                    f"sasl.oauthbearer.expected.audience={OAUTH_AUDIENCE}",
                    "ssl.keystore.type=PEM",
                    f"ssl.keystore.location={broker_pem}",
                    "ssl.truststore.type=PEM",
                    f"ssl.truststore.location={ca.certificate}",
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
            ),
        )
        if (data / "meta.properties").exists():
            return False
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        users = [
            (KAFKA_ADMIN_USER, admin_password),
            (KAFKA_USER, self.cfg.credentials["kafka_password"]),
        ]
        arguments = [
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
        ]
        for user, password in users:
            arguments += ["--add-scram", f"{SCRAM}=[name={user},password={password}]"]
        # The passwords go in an argument file (0600), never on a command line: `ps` shows
        # every process's arguments to every user of the machine.
        argfile = self.dir / "format.args"
        write_private(argfile, "\n".join(f'"{a}"' for a in arguments) + "\n")
        try:
            fmt = subprocess.run(["java", f"@{argfile}"], capture_output=True, text=True)
        finally:
            argfile.unlink()
        if fmt.returncode != 0:
            said = fmt.stdout + fmt.stderr
            for _, password in users:
                said = said.replace(password, "***")  # the tool may echo its arguments
            raise ServiceError(f"kafka: formatting the KRaft storage failed:\n{said}")
        self._formatted_secured.write_text(f"{SCRAM} users: {KAFKA_ADMIN_USER}, {KAFKA_USER}\n")
        return True

    def command(self) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            f"-Dlog4j2.configurationFile={LOG4J2}",
            f"-Dkafka.logs.dir={self.dir}",
            # Kafka 4 fetches no OAuth URL it is not told to trust: the JWKS file only.
            "-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="
            + (self.cfg.kafka_tls_dir / "token-jwks.json").as_uri(),
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

    def describe(self) -> str:
        return (
            f"SASL_SSL://{self.cfg.kafka_bootstrap} (SCRAM-SHA-512 user {KAFKA_USER}, TLS; "
            f"also PLAIN, OAUTHBEARER); SSL://{self.cfg.kafka_mtls_bootstrap} (client certificate)"
        )
