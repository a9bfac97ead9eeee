"""docker-compose.yaml (no Docker engine runs here): it parses, carries every service of the
local stack with a healthcheck, publishes ports on loopback only, and runs Airflow on Celery with
the local stack's settings, components and configured workers
(tests/unit/deploy/airflow_settings.py)."""

import re
import shlex

import pytest
import yaml

from enrollment.config import load_config
from stack.services import NAMES
from tests.conftest import ROOT
from tests.unit.deploy.airflow_settings import MACHINE_SPECIFIC, airflow_settings, local_stack


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_every_local_stack_service_is_present_with_a_healthcheck(compose):
    services = compose["services"]
    expected = (
        [n for n in NAMES if n != "airflow"] + list(AIRFLOW_CONTAINERS) + ["postgres", "redis"]
    )
    for name in expected:
        assert name in services, f"{name} missing from docker-compose.yaml"
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_airflow_runs_celery_with_postgres_and_redis(compose):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    for conn in (
        "KAFKA_DEFAULT",
        "GOOGLE_CLOUD_DEFAULT",
        "SOLR_DEFAULT",
        "MARKETING_CLOUD_DEFAULT",
        "ENROLLMENT_PII",
    ):
        assert f"AIRFLOW_CONN_{conn}" in env


def test_published_ports_bind_loopback_and_no_secret_is_written(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    text = (ROOT / "docker-compose.yaml").read_text()
    assert not re.search(r"MC_STUB_CLIENT_SECRET:\s*[^$\s]", text), (
        "secrets come from .env, not the file"
    )
    envs = [compose["x-airflow-common"]["environment"]] + [
        s.get("environment") or {} for s in compose["services"].values()
    ]
    for env in envs:
        for key, value in env.items():
            if re.search(
                r"PASSWORD$|SECRET|TOKEN|FERNET_KEY|SQL_ALCHEMY_CONN|RESULT_BACKEND|BROKER_URL|AUTH$",
                key,
            ):
                assert re.search(r"\$\{\w+:\?[^}]+\}", str(value)), (
                    f"{key} must come from .env (${{VAR:?message}}), not {value!r}"
                )


def test_topics_match_the_pipeline_config(compose, pipeline_config):
    command = " ".join(compose["services"]["kafka-topics"]["command"])
    for region in pipeline_config.regions:
        assert (
            region.topic.replace(region.code.lower(), "$$r") in command or region.topic in command
        ), region.topic


# One container per component of the local stack (Airflow.COMPONENTS; the API server's is named
# as in Airflow's own compose file), one per configured Celery worker, and the init container.
COMPONENT_CONTAINERS = {
    "api-server": "airflow-apiserver",
    "scheduler": "airflow-scheduler",
    "dag-processor": "airflow-dag-processor",
    "triggerer": "airflow-triggerer",
}
WORKER_CONTAINERS = {w.name: f"airflow-worker-{w.name}" for w in load_config().celery_workers}
AIRFLOW_CONTAINERS = ("airflow-init", *COMPONENT_CONTAINERS.values(), *WORKER_CONTAINERS.values())
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]+\}")


def _local_stack_shared_settings(tmp_path) -> dict[str, str]:
    """The settings the local stack gives every Airflow component alike that carry one of its
    generated secrets (on PostgreSQL and Celery, as the Docker path runs), and the users file."""
    env, cfg, _ = local_stack(tmp_path)
    shared = {
        key: value
        for key, value in env.items()
        if any(secret in value for secret in cfg.credentials.values())
    }
    # The admin's password reaches the API server through the users file this setting names.
    shared["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = env[
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    ]
    return shared


def test_the_compose_file_shares_the_local_stacks_airflow_secrets_from_env(compose, tmp_path):
    shared = _local_stack_shared_settings(tmp_path)
    assert {
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW_CONN_MARKETING_CLOUD_DEFAULT",
        "AIRFLOW_CONN_ENROLLMENT_PII",
    } <= set(shared), sorted(shared)
    common = compose["x-airflow-common"]["environment"]
    # Not secured in compose yet (docs/stack.md, "Secured like production"): its Kafka is plain and
    # its Solr open, so their connections carry no secret there.
    unsecured = {"AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_SOLR_DEFAULT"}
    assert "sasl.password" not in common["AIRFLOW_CONN_KAFKA_DEFAULT"]
    for key in set(shared) - unsecured:
        assert key in common, (
            f"{key} is shared by the local stack's Airflow components but missing from "
            "x-airflow-common"
        )
        if key != "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE":
            assert REQUIRED.search(str(common[key])), (
                f"{key} must come from .env as ${{VAR:?message}}, not {common[key]!r}"
            )
    # The users' passwords (the admin and the read-only viewer, as in the local stack): from .env,
    # and written where the API server reads users from.
    users = [u.split(":")[0] for u in common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
    assert users == ["admin", "viewer"], users
    entrypoint = (ROOT / "docker" / "airflow-entrypoint.sh").read_text()
    for user in users:
        variable = f"AIRFLOW_{user.upper()}_PASSWORD"
        assert REQUIRED.fullmatch(common[variable]), variable
        assert f'"{user}": os.environ["{variable}"]' in entrypoint, (
            f"the entrypoint does not write {user}'s password"
        )
        assert re.search(rf"^unset .*\b{variable}\b", entrypoint, re.M), (
            f"the entrypoint keeps {variable} in Airflow's environment"
        )
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in entrypoint and "0o600" in entrypoint
    assert (
        "airflow-entrypoint.sh"
        in (ROOT / "docker" / "airflow.Dockerfile").read_text().split("ENTRYPOINT")[-1]
    )


def test_every_airflow_container_uses_the_common_environment(compose):
    common = compose["x-airflow-common"]
    services = compose["services"]
    assert set(AIRFLOW_CONTAINERS) == {name for name in services if name.startswith("airflow")}
    for name in AIRFLOW_CONTAINERS:
        service = services[name]
        assert service.get("build") == common["build"], (
            f"{name} does not run the project's Airflow image"
        )
        env = service.get("environment", {})
        for key, value in common["environment"].items():
            assert env.get(key) == value, f"{name}: {key} differs from x-airflow-common"


def test_every_variable_the_compose_file_requires_is_in_env_example(compose):
    text = (ROOT / "docker-compose.yaml").read_text()
    required = set(REQUIRED.findall(text))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required == example, (sorted(required - example), sorted(example - required))
    assert all(
        not line.split("=", 1)[1].strip()
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ), ".env.example holds no values, let alone real secrets"
    for name in (
        "AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW_VIEWER_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_API_SECRET_KEY",
        "REDIS_PASSWORD",
        "MC_STUB_TOKEN",
        "ENROLLMENT_PII_KEY_ID",
        "ENROLLMENT_PII_KEY",
    ):
        assert name in required, name


def test_the_compose_file_carries_every_airflow_setting_of_the_local_stack(compose, tmp_path):
    """Every AIRFLOW__* setting the local stack gives Airflow is in x-airflow-common: the same
    value, or ${VAR:?} from .env when it carries a secret; only the machine-specific ones may
    differ."""
    plain, secret = airflow_settings(tmp_path)
    assert {
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
        "AIRFLOW__CORE__PARALLELISM",
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE",
    } <= set(plain), sorted(plain)
    common = compose["x-airflow-common"]["environment"]
    differing = {k: (v, common.get(k)) for k, v in plain.items() if str(common.get(k)) != v}
    assert not differing, (
        f"x-airflow-common differs from the local stack (local, compose): {differing}"
    )
    for key in secret:
        assert REQUIRED.search(str(common.get(key, ""))), (
            f"{key} must come from .env as ${{VAR:?message}}, not {common.get(key)!r}"
        )
    # What compose sets beyond the local stack: the machine-specific ones only, each for a reason.
    env, _, _ = local_stack(tmp_path)
    extra = {k for k in common if k.startswith("AIRFLOW__") and k not in env}
    assert not extra, (
        f"x-airflow-common sets {sorted(extra)}, which the local stack does not: add them there, "
        "or explain here"
    )
    assert {k for k in MACHINE_SPECIFIC if k in common} <= set(MACHINE_SPECIFIC)


def test_the_broker_needs_its_password_from_env_and_keeps_it_off_command_lines(compose):
    redis = compose["services"]["redis"]
    assert REQUIRED.fullmatch(redis["environment"]["REDIS_PASSWORD"]) and REQUIRED.fullmatch(
        redis["environment"]["REDISCLI_AUTH"]
    )
    command = " ".join(redis["command"])
    assert "requirepass" in command and "--requirepass" not in command, (
        "the password goes into a config file, not redis-server's arguments"
    )
    assert (
        "redis-cli" in " ".join(redis["healthcheck"]["test"])
        and "-a" not in redis["healthcheck"]["test"][-1].split()
    )
    broker = compose["x-airflow-common"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", broker), broker


def _command(service) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_every_component_and_configured_worker_runs_in_its_own_container(compose):
    """The components of the local stack (Airflow.COMPONENTS) each have a container running them;
    each configured Celery worker has one with the same queues and concurrency."""
    from stack.services import Airflow

    services = compose["services"]
    assert set(Airflow.COMPONENTS) == set(COMPONENT_CONTAINERS), (
        "a component was added to the local stack: give it a container"
    )
    for component, name in COMPONENT_CONTAINERS.items():
        assert _command(services[name]) == [component], (name, services[name]["command"])
    workers = load_config().celery_workers
    assert workers, "the configuration names the Celery workers"
    for worker in workers:
        command = _command(services[WORKER_CONTAINERS[worker.name]])
        assert command[:2] == ["celery", "worker"], command
        flags = dict(zip(command[2::2], command[3::2], strict=True))
        assert flags["--queues"].split(",") == list(worker.queues), (worker, flags)
        assert int(flags["--concurrency"]) == worker.concurrency, (worker, flags)
        # Named as the local stack names its workers
        # (``<name>@<host>``): the healthcheck pings that node.
        assert flags["--celery-hostname"] == f"{worker.name}@%h"
        assert f"{worker.name}@$${{HOSTNAME}}" in " ".join(
            services[WORKER_CONTAINERS[worker.name]]["healthcheck"]["test"]
        )
    # Every queue a pool sends tasks to is served.
    served = {q for w in workers for q in w.queues}
    assert {p.queue for p in load_config().pools.values()} <= served


def test_airflow_init_imports_the_configured_pools(compose):
    command = " ".join(_command(compose["services"]["airflow-init"]))
    assert "airflow db migrate" in command
    assert re.search(r"python -m enrollment\.pools > (\S+) && airflow pools import \1", command), (
        command
    )
    assert "pools set" not in command, "the pools come from the configuration, every one of them"
