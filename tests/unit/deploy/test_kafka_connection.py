"""The Kafka connection as the pipeline reads it: the provider's extra (librdkafka settings)
through the provider's hook, each client kind given what applies to it, the pipeline's own keys
refused, no secret in a repr or an error."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Connection

from enrollment.clients.kafka import (
    CONSUMER_ONLY,
    OWNED,
    PRODUCER_ONLY,
    KafkaSettings,
    KafkaSettingsError,
)
from enrollment.clients.services import Endpoints
from enrollment_airflow.hooks import PipelineKafkaHook

SECRET = "s3cr3t-Pa55"

SCRAM_TLS = {
    "bootstrap.servers": "broker-1.example.com:9093,broker-2.example.com:9093",
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "enrollment",
    "sasl.password": SECRET,
    "ssl.ca.location": "/etc/kafka/ca.pem",
    "fetch.wait.max.ms": 200,
    "linger.ms": 5,
}


def test_each_client_kind_gets_what_applies_to_it_and_what_the_pipeline_owns():
    kafka = KafkaSettings(SCRAM_TLS)
    consumer = kafka.consumer({"group.id": "g", "enable.auto.commit": False})
    producer = kafka.producer({"enable.idempotence": True})
    admin = kafka.admin()
    security = {k: v for k, v in SCRAM_TLS.items() if k not in CONSUMER_ONLY | PRODUCER_ONLY}
    assert consumer == security | {
        "fetch.wait.max.ms": 200,
        "group.id": "g",
        "enable.auto.commit": False,
    }
    assert producer == security | {"linger.ms": 5, "enable.idempotence": True}
    assert admin == security
    assert kafka.bootstrap == SCRAM_TLS["bootstrap.servers"]


@pytest.mark.parametrize("key", sorted(OWNED))
def test_a_key_the_pipeline_owns_is_refused_naming_the_source_and_not_the_secrets(key):
    with pytest.raises(KafkaSettingsError) as refused:
        KafkaSettings(SCRAM_TLS | {key: "x"}, source="connection 'kafka_default'")
    message = str(refused.value)
    assert key in message and "connection 'kafka_default'" in message
    assert SECRET not in message


def test_no_brokers_is_a_clear_error():
    with pytest.raises(KafkaSettingsError, match=r"bootstrap\.servers"):
        KafkaSettings({"security.protocol": "SSL"})


def test_a_repr_shows_the_brokers_and_protocol_never_a_secret():
    kafka = KafkaSettings(SCRAM_TLS | {"ssl.key.pem": "-----BEGIN PRIVATE KEY-----"})
    endpoints = Endpoints(
        project="p",
        kafka=kafka,
        solr_url="http://solr",
        marketing_cloud_auth_url="http://mc",
        marketing_cloud_rest_url="http://mc",
        marketing_cloud_client_id="id",
        marketing_cloud_client_secret="mc-secret",
    )
    for shown in (repr(kafka), str(kafka), repr(endpoints), f"{kafka}"):
        assert SECRET not in shown and "PRIVATE KEY" not in shown and "mc-secret" not in shown
        assert "broker-1.example.com:9093" in shown and "SASL_SSL" in shown


def test_the_environment_gives_brokers_and_the_rest_of_the_settings():
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9093",
        "KAFKA_CLIENT_CONFIG": json.dumps({"security.protocol": "SASL_SSL", "sasl.password": "x"}),
    }
    kafka = KafkaSettings.from_env(env)
    assert kafka.admin() == {
        "bootstrap.servers": "127.0.0.1:9093",
        "security.protocol": "SASL_SSL",
        "sasl.password": "x",
    }
    assert KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "h:1"}).admin() == {
        "bootstrap.servers": "h:1"
    }
    with pytest.raises(KafkaSettingsError, match="not JSON"):
        KafkaSettings.from_env(env | {"KAFKA_CLIENT_CONFIG": "{"})
    with pytest.raises(KafkaSettingsError, match=r"bootstrap\.servers"):
        KafkaSettings.from_env({})


def _connection(extra: dict) -> Connection:
    return Connection(conn_id="kafka_default", conn_type="kafka", extra=json.dumps(extra))


def test_the_hook_resolves_the_connection_as_the_provider_does():
    kafka = PipelineKafkaHook("kafka_default", _connection(SCRAM_TLS)).settings()
    assert dict(kafka.config) == SCRAM_TLS
    assert kafka.source == "connection 'kafka_default'"


def test_the_hook_reads_the_connection_itself_when_given_none(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAFKA_ENROLLMENT",
        json.dumps({"conn_type": "kafka", "extra": SCRAM_TLS}),
    )
    assert dict(PipelineKafkaHook("kafka_enrollment").settings().config) == SCRAM_TLS


def test_the_hook_refuses_an_owned_key_naming_the_connection():
    with pytest.raises(KafkaSettingsError, match=r"connection 'kafka_default' set group\.id"):
        PipelineKafkaHook("kafka_default", _connection(SCRAM_TLS | {"group.id": "g"})).settings()


def test_a_callback_named_in_the_extra_needs_the_providers_allow_list(monkeypatch):
    extra = SCRAM_TLS | {
        "sasl.mechanism": "OAUTHBEARER",
        "oauth_cb": "tests.unit.deploy.test_kafka_connection.token",
    }
    monkeypatch.delenv("AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST", raising=False)
    with pytest.raises(ValueError, match="callback_allowlist"):
        PipelineKafkaHook("kafka_default", _connection(extra)).settings()
    monkeypatch.setenv(
        "AIRFLOW__APACHE_KAFKA__CALLBACK_ALLOWLIST", "tests.unit.deploy.test_kafka_connection.token"
    )
    kafka = PipelineKafkaHook("kafka_default", _connection(extra)).settings()
    assert kafka.consumer({"group.id": "g"})["oauth_cb"] is token


def token(config: str) -> tuple[str, float]:
    """An OAUTHBEARER token callback, as a connection names one."""
    return "token", 0.0


def _documented_kafka_connections(state) -> dict[str, dict]:
    """Every kafka_default this repository ships or documents, as connection JSON."""
    import re
    from pathlib import Path

    import yaml

    from stack import config as stack_config

    root = Path(__file__).resolve().parents[3]
    guide = (root / "docs" / "deploy.md").read_text()
    row = next(line for line in guide.splitlines() if line.startswith("| `kafka_default`"))
    compose = yaml.safe_load((root / "docker-compose.yaml").read_text())
    env = stack_config.load(state).client_env()
    return {
        "docs/deploy.md": json.loads(re.search(r"`(\{.*\})`", row).group(1)),
        "docker-compose.yaml": json.loads(
            compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_KAFKA_DEFAULT"]
        ),
        "the local stack": json.loads(env["AIRFLOW_CONN_KAFKA_DEFAULT"]),
    }


@pytest.mark.parametrize("where", ["docs/deploy.md", "docker-compose.yaml", "the local stack"])
def test_every_shipped_kafka_connection_builds_the_clients_settings(where, tmp_path):
    shipped = _documented_kafka_connections(tmp_path)[where]
    conn = Connection(
        conn_id="kafka_default", conn_type=shipped["conn_type"], extra=json.dumps(shipped["extra"])
    )
    kafka = PipelineKafkaHook("kafka_default", conn).settings()
    assert (
        kafka.consumer({"group.id": "g"})["bootstrap.servers"]
        == shipped["extra"]["bootstrap.servers"]
    )


def _guide_examples() -> list[dict]:
    """The Kafka connection examples of docs/deploy.md (its ```json kafka-connection blocks)."""
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[3] / "docs" / "deploy.md").read_text()
    return [
        json.loads(block)
        for block in re.findall(r"```json kafka-connection\n(.*?)\n```", guide, re.S)
    ]


def test_the_guide_shows_each_production_kafka():
    mechanisms = {
        (
            e["extra"]["security.protocol"],
            e["extra"].get("sasl.mechanism") or e["extra"].get("sasl.mechanisms"),
        )
        for e in _guide_examples()
    }
    assert mechanisms == {
        ("SASL_SSL", "PLAIN"),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "OAUTHBEARER"),
        ("SSL", None),
    }


@pytest.mark.parametrize("example", range(5))
def test_each_guide_example_builds_the_clients_settings(example):
    shipped = _guide_examples()[example]
    conn = Connection(
        conn_id="kafka_default", conn_type=shipped["conn_type"], extra=json.dumps(shipped["extra"])
    )
    kafka = PipelineKafkaHook("kafka_default", conn).settings()
    consumer, producer = kafka.consumer({"group.id": "g"}), kafka.producer()
    for key, value in shipped["extra"].items():
        assert consumer[key] == producer[key] == kafka.admin()[key] == value
    if ".amazonaws.com" in kafka.bootstrap and "OAUTHBEARER" in shipped["extra"].values():
        # MSK IAM: the provider adds its token callback (the `msk` extra signs the tokens).
        assert callable(consumer["oauth_cb"]) and callable(producer["oauth_cb"])
    for secret in ("API_SECRET", "PASSWORD", "CLIENT_SECRET"):
        assert secret not in repr(kafka)


def _guide_example(mechanism: str, method: str | None = None, host: str = "") -> dict:
    return next(
        e["extra"]
        for e in _guide_examples()
        if e["extra"].get("sasl.mechanism") == mechanism
        and e["extra"].get("sasl.oauthbearer.method") == method
        and host in e["extra"]["bootstrap.servers"]
    )


def test_msk_iam_tokens_are_signed_for_the_clusters_region_by_the_environments_role(
    monkeypatch,
):
    """The provider's MSK IAM callback, as the guide's connection gets it: a SigV4-presigned
    `kafka-cluster:Connect` for the region of the brokers' names, by the environment's key (no
    network: the signature is made here and checked by the broker)."""
    import base64
    import time
    from urllib.parse import parse_qs, urlparse

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENROLLMENTTEST01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    extra = _guide_example("OAUTHBEARER", host=".amazonaws.com")
    kafka = PipelineKafkaHook("kafka_default", _connection(extra)).settings()

    token, expiry = kafka.consumer({"group.id": "g"})["oauth_cb"]("")
    signed = urlparse(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    query = {k: v[0] for k, v in parse_qs(signed.query).items()}
    assert signed.netloc == "kafka.us-east-1.amazonaws.com"
    assert query["Action"] == "kafka-cluster:Connect"
    assert query["X-Amz-Credential"].startswith("AKIAENROLLMENTTEST01/")
    assert query["X-Amz-Credential"].endswith("/us-east-1/kafka-cluster/aws4_request")
    assert len(query["X-Amz-Signature"]) == 64
    assert time.time() < expiry < time.time() + 3600  # seconds, as librdkafka wants them
    assert SECRET not in token


def test_oidc_settings_reach_every_client_and_librdkafka_accepts_them():
    """OIDC client credentials (the guide's example): librdkafka fetches the token itself, so the
    configuration is all there is; librdkafka checks it when a client is made."""
    from confluent_kafka import KafkaException, Producer

    extra = _guide_example("OAUTHBEARER", method="oidc")
    kafka = PipelineKafkaHook("kafka_default", _connection(extra)).settings()
    quiet = {"log_level": 0, "socket.connection.setup.timeout.ms": 1000}
    for config in (kafka.consumer({"group.id": "g"}), kafka.producer(), kafka.admin()):
        assert config["sasl.oauthbearer.method"] == "oidc"
        assert config["sasl.oauthbearer.token.endpoint.url"].startswith("https://")
        assert "oauth_cb" not in config  # not an MSK host: librdkafka's own OIDC flow
    Producer(kafka.producer() | quiet).flush(0)
    with pytest.raises(KafkaException, match=r"sasl\.oauthbearer\.method"):
        Producer(kafka.producer() | quiet | {"sasl.oauthbearer.method": "oidcc"})
    assert "CLIENT_SECRET" not in repr(kafka)
