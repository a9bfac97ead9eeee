"""The local Kafka is secured like production: clients reach it only over TLS, with SCRAM (the
pipeline's form), PLAIN, OAUTHBEARER or a client certificate, each tested by a round trip through
the pipeline's own settings; a wrong password or an untrusted CA fails the service check within
seconds, naming the connection and what to check, and never quoting a secret."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
import uuid
from pathlib import Path

import pytest
from airflow.sdk import Connection
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import Endpoints
from enrollment.ops.health import ServiceDown, require
from enrollment_airflow.hooks import PipelineKafkaHook
from stack import config as stack_config
from stack.tls import TOKEN_KEY_ID, LocalCA

pytestmark = [pytest.mark.integration]


def test_the_broker_listens_for_clients_only_over_tls(stack, pipeline_config):
    props = (stack.state / "kafka" / "server.properties").read_text()
    listeners = re.search(r"^listeners=(.*)$", props, re.M).group(1).split(",")
    protocols = dict(
        pair.split(":")
        for pair in re.search(r"^listener.security.protocol.map=(.*)$", props, re.M)
        .group(1)
        .split(",")
    )
    advertised = re.search(r"^advertised.listeners=(.*)$", props, re.M).group(1)
    assert {name.split("://")[0] for name in listeners} == {"SASL_SSL", "SSL", "CONTROLLER"}
    assert protocols["SASL_SSL"] == "SASL_SSL" and advertised.startswith("SASL_SSL://")
    assert protocols["SSL"] == "SSL" and "listener.name.ssl.ssl.client.auth=required" in props
    assert "PLAINTEXT://" not in advertised
    # The controller's own listener is the only plain one, and no client is pointed at it.
    assert stack.kafka.config["security.protocol"] == "SASL_SSL"

    topics = AdminClient(stack.kafka.admin()).list_topics(timeout=10).topics
    assert {r.topic for r in pipeline_config.regions} <= set(topics)
    plain = AdminClient({"bootstrap.servers": stack.kafka.bootstrap, "log_level": 0})
    with pytest.raises(Exception, match=r"transport|timed out|brokers are down"):
        plain.list_topics(timeout=3)


@pytest.fixture
def probe_topic(stack):
    """A topic of its own (never a region's: the pipeline would land what is written there)."""
    admin = AdminClient(stack.kafka.admin())
    topic = f"security-probe-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )
    yield topic
    admin.delete_topics([topic])[topic].result(timeout=30)


def _round_trip(kafka: KafkaSettings, topic: str) -> None:
    """Writes one record with ``kafka``'s producer settings and reads the same back with its
    consumer settings (assign-based, as the pipeline reads)."""
    sent = uuid.uuid4().hex.encode()
    producer = Producer(kafka.producer({"enable.idempotence": True, "acks": "all"}))
    producer.produce(topic, sent)
    assert producer.flush(30) == 0
    consumer = Consumer(kafka.consumer({"group.id": f"probe-{topic}", "enable.auto.commit": False}))
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        message = consumer.poll(30)
        assert message is not None and message.error() is None
        assert message.value() == sent
    finally:
        consumer.close()


def _connection(extra: dict) -> Connection:
    return Connection(conn_id="kafka_default", conn_type="kafka", extra=json.dumps(extra))


def _tls(stack) -> dict:
    return {"bootstrap.servers": stack.kafka.bootstrap, "security.protocol": "SASL_SSL"} | {
        "ssl.ca.location": stack.kafka.config["ssl.ca.location"]
    }


def test_a_client_certificate_reaches_the_ssl_listener_and_none_is_refused(
    stack, pipeline_config, probe_topic, tmp_path
):
    tls = stack.kafka_tls_dir
    mutual = {
        "bootstrap.servers": stack.kafka_mtls_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(tls / "ca.pem"),
        "ssl.certificate.location": str(tls / "client.pem"),
        "ssl.key.location": str(tls / "client.pem"),
    }
    kafka = PipelineKafkaHook("kafka_default", _connection(mutual)).settings()
    _round_trip(kafka, probe_topic)

    other = LocalCA(tmp_path, name="some other CA")
    stranger = str(other.issue("client", server=False))
    for changed in (
        {"ssl.certificate.location": None, "ssl.key.location": None},  # no certificate
        {"ssl.certificate.location": stranger, "ssl.key.location": stranger},  # not our CA's
    ):
        config = {k: v for k, v in (mutual | changed).items() if v is not None}
        message = _refused(stack, pipeline_config, config=config)
        assert "ssl.certificate.location" in message, message


def test_sasl_plain_round_trip_and_a_wrong_password_is_refused(stack, pipeline_config, probe_topic):
    """PLAIN, as Confluent Cloud's API keys use it (the guide's first example's form)."""
    plain = _tls(stack) | {
        "sasl.mechanisms": "PLAIN",
        "sasl.username": stack_config.KAFKA_PLAIN_USER,
        "sasl.password": stack.credentials["kafka_plain_password"],
    }
    kafka = PipelineKafkaHook("kafka_default", _connection(plain)).settings()
    _round_trip(kafka, probe_topic)
    message = _refused(
        stack, pipeline_config, config=plain | {"sasl.password": "wrong-" + secrets.token_hex(4)}
    )
    assert "sasl.password" in message, message


def signed_token(config: str, key_file: str | None = None) -> tuple[str, float]:
    """An OAUTHBEARER token callback (``oauth_cb``): a JWT signed by the stack's token key, as an
    identity provider would issue one; the broker checks it against the key's JWKS."""
    import jwt

    key = Path(key_file or stack_config.load().kafka_tls_dir / "token-signer.key").read_text()
    now = int(time.time())
    claims = {
        "sub": stack_config.KAFKA_USER,
        "iss": stack_config.OAUTH_ISSUER,
        "aud": stack_config.OAUTH_AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": TOKEN_KEY_ID}), now + 300


def test_oauthbearer_round_trip_with_a_named_callback_and_a_forged_token_is_refused(
    stack, pipeline_config, probe_topic, monkeypatch, tmp_path
):
    """The connection names its token callback; the provider resolves it only from
    ``[apache_kafka] callback_allowlist`` (how an IdP's client library is plugged in)."""
    here = f"{__name__}.signed_token"
    monkeypatch.setenv("AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST", here)
    oauth = _tls(stack) | {"sasl.mechanism": "OAUTHBEARER", "oauth_cb": here}
    kafka = PipelineKafkaHook("kafka_default", _connection(oauth)).settings()
    _round_trip(kafka, probe_topic)

    other = LocalCA(tmp_path, name="some other issuer")
    forged_key, _ = other.token_signer()  # same kid, same claims, another key
    forged = oauth | {"oauth_cb": lambda config: signed_token(config, str(forged_key))}
    message = _refused(stack, pipeline_config, config=forged)
    assert "invalid_token" in message and "OAUTHBEARER token" in message, message


def _refused(stack, pipeline_config, *, config: dict | None = None, **changed: str) -> str:
    """The service check's message for ``config`` (default: the stack's Kafka settings with
    ``changed``, dots as underscores), after asserting it failed within 30 s and quoted no
    password of the stack."""
    config = {**(config or stack.kafka.config), "log_level": 0} | {
        key.replace("_", "."): value for key, value in changed.items()
    }
    kafka = KafkaSettings(config, source="connection 'kafka_default'")
    endpoints = dataclasses.replace(Endpoints.from_env(), kafka=kafka)
    t0 = time.monotonic()
    with pytest.raises(ServiceDown) as down:
        require(["kafka"], endpoints, pipeline_config)
    assert time.monotonic() - t0 < 30
    message = str(down.value)
    assert "connection 'kafka_default'" in message
    assert stack.credentials["kafka_password"] not in message
    return message


def test_a_wrong_password_fails_the_check_fast_naming_the_connection(stack, pipeline_config):
    wrong = "wrong-" + secrets.token_urlsafe(8)
    message = _refused(stack, pipeline_config, sasl_password=wrong)
    assert "Authentication failed" in message and "sasl.password" in message, message
    assert wrong not in message


def test_an_untrusted_ca_fails_the_check_fast_naming_what_to_check(
    stack, pipeline_config, tmp_path
):
    other = LocalCA(tmp_path, name="some other CA")
    other.ensure()
    message = _refused(stack, pipeline_config, ssl_ca_location=str(other.certificate))
    assert "certificate verify failed" in message and "ssl.ca.location" in message, message
