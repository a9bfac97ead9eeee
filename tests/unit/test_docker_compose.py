"""docker-compose.yaml (no Docker engine runs here): it parses, carries every service of the
local stack with a healthcheck, publishes ports on loopback only, and runs Airflow on Celery."""

import re

import pytest
import yaml

from stack.services import NAMES
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_every_local_stack_service_is_present_with_a_healthcheck(compose):
    services = compose["services"]
    expected = [n for n in NAMES if n != "airflow"] + ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "postgres", "redis"]
    for name in expected:
        assert name in services, f"{name} missing from docker-compose.yaml"
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_airflow_runs_celery_with_postgres_and_redis(compose):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    for conn in ("KAFKA_DEFAULT", "GOOGLE_CLOUD_DEFAULT", "SOLR_DEFAULT", "MARKETING_CLOUD_DEFAULT"):
        assert f"AIRFLOW_CONN_{conn}" in env


def test_published_ports_bind_loopback_and_no_secret_is_written(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    text = (ROOT / "docker-compose.yaml").read_text()
    assert not re.search(r"MC_STUB_CLIENT_SECRET:\s*[^$\s]", text), "secrets come from .env, not the file"


def test_topics_match_the_pipeline_config(compose, pipeline_config):
    command = " ".join(compose["services"]["kafka-topics"]["command"])
    for region in pipeline_config.regions:
        assert region.topic.replace(region.code.lower(), "$$r") in command or region.topic in command, region.topic
