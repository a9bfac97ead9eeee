"""The Airflow settings the local stack gives its components, as the other deployments must carry
them (docker-compose.yaml, deploy/helm/values.yaml, docs/deploy.md): shared by
test_docker_compose.py and test_deploy.py, so both hold their file to one list."""

from __future__ import annotations

# Settings whose value belongs to the machine or the process layout, not to the pipeline: each
# deployment sets its own (or leaves Airflow's default). Anything else the local stack sets must
# appear in every deployment with the same value, or come from a secret when it carries one.
MACHINE_SPECIFIC = {
    # Folders of this checkout; the image's /opt/airflow/..., the chart's mount, Composer's bucket.
    "AIRFLOW__CORE__DAGS_FOLDER": "path",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "path",
    # Where the users file lives: the local stack's state folder, /opt/airflow in the containers.
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "path",
    # The API server's address: 127.0.0.1 and a free port here, a service name in containers.
    "AIRFLOW__API__HOST": "host",
    "AIRFLOW__API__PORT": "port",
    "AIRFLOW__API__BASE_URL": "URL",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "URL",
    # Only there because the stack may be started from a test session (which sets unit-test mode).
    "AIRFLOW__CORE__UNIT_TEST_MODE": "test session",
}

# Settings that carry one of the stack's generated secrets: a deployment takes them from its secret
# store (.env, Kubernetes secrets, Composer's own), never from a file in the repository.
SECRET = (
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
)


def local_stack(tmp_path):
    """``(Airflow(cfg).env(), cfg, Airflow)`` of a local stack as the deployments run it: Celery
    workers and PostgreSQL (state in ``tmp_path``: nothing is started)."""
    from stack import config as stack_config
    from stack.services import Airflow

    cfg = stack_config.load(tmp_path)
    cfg.executor = "celery"
    cfg.airflow_db = "postgres"
    return Airflow(cfg).env(), cfg, Airflow


def airflow_settings(tmp_path) -> tuple[dict[str, str], set[str]]:
    """``(plain, secret)``: the local stack's ``AIRFLOW__*`` settings a deployment must carry with
    the same value, and the names of those it must take from a secret. Fails when a setting
    carries a generated secret but is not declared in ``SECRET`` (the list would be stale)."""
    env, cfg, _ = local_stack(tmp_path)
    settings = {
        k: v for k, v in env.items() if k.startswith("AIRFLOW__") and k not in MACHINE_SPECIFIC
    }
    carrying = {
        k for k, v in settings.items() if any(secret in v for secret in cfg.credentials.values())
    }
    assert carrying == set(SECRET), (
        f"settings carrying a secret changed: {sorted(carrying ^ set(SECRET))}; update SECRET"
    )
    return {k: v for k, v in settings.items() if k not in carrying}, carrying
