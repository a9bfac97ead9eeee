"""The local Kafka is secured like production: clients reach it only over SASL_SSL (SCRAM, the
stack's CA); a wrong password or an untrusted CA fails the service check within seconds, naming
the connection and what to check, and never quoting a secret."""

from __future__ import annotations

import dataclasses
import re
import secrets
import time

import pytest
from confluent_kafka.admin import AdminClient

from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.services import Endpoints
from enrollment.ops.health import ServiceDown, require
from stack.tls import LocalCA

pytestmark = [pytest.mark.integration]


def test_the_broker_listens_for_clients_only_over_sasl_ssl(stack, pipeline_config):
    props = (stack.state / "kafka" / "server.properties").read_text()
    listeners = re.search(r"^listeners=(.*)$", props, re.M).group(1).split(",")
    protocols = dict(
        pair.split(":")
        for pair in re.search(r"^listener.security.protocol.map=(.*)$", props, re.M)
        .group(1)
        .split(",")
    )
    advertised = re.search(r"^advertised.listeners=(.*)$", props, re.M).group(1)
    assert {name.split("://")[0] for name in listeners} == {"SASL_SSL", "CONTROLLER"}
    assert protocols["SASL_SSL"] == "SASL_SSL" and advertised.startswith("SASL_SSL://")
    assert "PLAINTEXT://" not in advertised
    # The controller's own listener is the only plain one, and no client is pointed at it.
    assert stack.kafka.config["security.protocol"] == "SASL_SSL"

    topics = AdminClient(stack.kafka.admin()).list_topics(timeout=10).topics
    assert {r.topic for r in pipeline_config.regions} <= set(topics)
    plain = AdminClient({"bootstrap.servers": stack.kafka.bootstrap, "log_level": 0})
    with pytest.raises(Exception, match=r"transport|timed out|brokers are down"):
        plain.list_topics(timeout=3)


def _refused(stack, pipeline_config, **changed: str) -> str:
    """The service check's message for the stack's Kafka settings with ``changed`` (dots as
    underscores), after asserting it failed within 30 s and quoted no password of the stack."""
    config = {**stack.kafka.config, "log_level": 0} | {
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
