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
    for conn in ("KAFKA_DEFAULT", "GOOGLE_CLOUD_DEFAULT", "SOLR_DEFAULT", "MARKETING_CLOUD_DEFAULT", "ENROLLMENT_PII"):
        assert f"AIRFLOW_CONN_{conn}" in env


def test_published_ports_bind_loopback_and_no_secret_is_written(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    text = (ROOT / "docker-compose.yaml").read_text()
    assert not re.search(r"MC_STUB_CLIENT_SECRET:\s*[^$\s]", text), "secrets come from .env, not the file"
    envs = [compose["x-airflow-common"]["environment"]] + [s.get("environment") or {} for s in compose["services"].values()]
    for env in envs:
        for key, value in env.items():
            if re.search(r"PASSWORD$|SECRET|TOKEN|FERNET_KEY|SQL_ALCHEMY_CONN|RESULT_BACKEND", key):
                assert re.search(r"\$\{\w+:\?[^}]+\}", str(value)), f"{key} must come from .env (${{VAR:?message}}), not {value!r}"


def test_topics_match_the_pipeline_config(compose, pipeline_config):
    command = " ".join(compose["services"]["kafka-topics"]["command"])
    for region in pipeline_config.regions:
        assert region.topic.replace(region.code.lower(), "$$r") in command or region.topic in command, region.topic


AIRFLOW_CONTAINERS = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker")
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]+\}")


def _local_stack_shared_settings(tmp_path) -> dict[str, str]:
    """The settings the local stack gives every Airflow component alike that carry one of its
    generated secrets (on PostgreSQL, as the Docker path runs), and the admin's password."""
    from stack import config as stack_config
    from stack.services import Airflow

    cfg = stack_config.load(tmp_path)
    cfg.airflow_db = "postgres"
    env = Airflow(cfg).env()
    shared = {key: value for key, value in env.items() if any(secret in value for secret in cfg.credentials.values())}
    # The admin's password reaches the API server through the users file this setting names.
    shared["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    return shared


def test_the_compose_file_shares_the_local_stacks_airflow_secrets_from_env(compose, tmp_path):
    shared = _local_stack_shared_settings(tmp_path)
    assert {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW_CONN_MARKETING_CLOUD_DEFAULT", "AIRFLOW_CONN_ENROLLMENT_PII"} <= set(shared), sorted(shared)
    common = compose["x-airflow-common"]["environment"]
    for key in shared:
        assert key in common, f"{key} is shared by the local stack's Airflow components but missing from x-airflow-common"
        if key != "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE":
            assert REQUIRED.search(str(common[key])), f"{key} must come from .env as ${{VAR:?message}}, not {common[key]!r}"
    # The admin's password: from .env, and written where the API server reads users from.
    assert REQUIRED.fullmatch(common["AIRFLOW_ADMIN_PASSWORD"])
    entrypoint = (ROOT / "docker" / "airflow-entrypoint.sh").read_text()
    assert "AIRFLOW_ADMIN_PASSWORD" in entrypoint and "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in entrypoint and "0o600" in entrypoint
    assert "airflow-entrypoint.sh" in (ROOT / "docker" / "airflow.Dockerfile").read_text().split("ENTRYPOINT")[-1]


def test_every_airflow_container_uses_the_common_environment(compose):
    common = compose["x-airflow-common"]
    services = compose["services"]
    assert set(AIRFLOW_CONTAINERS) == {name for name in services if name.startswith("airflow")}
    for name in AIRFLOW_CONTAINERS:
        service = services[name]
        assert service.get("build") == common["build"], f"{name} does not run the project's Airflow image"
        env = service.get("environment", {})
        for key, value in common["environment"].items():
            assert env.get(key) == value, f"{name}: {key} differs from x-airflow-common"


def test_every_variable_the_compose_file_requires_is_in_env_example(compose):
    text = (ROOT / "docker-compose.yaml").read_text()
    required = set(REQUIRED.findall(text))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert required == example, (sorted(required - example), sorted(example - required))
    assert all(not line.split("=", 1)[1].strip() for line in (ROOT / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")), ".env.example holds no values, let alone real secrets"
    for name in ("AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_DB_PASSWORD", "AIRFLOW_API_SECRET_KEY", "MC_STUB_TOKEN",
                 "ENROLLMENT_PII_KEY_ID", "ENROLLMENT_PII_KEY"):
        assert name in required, name
