"""The production deployment (docs/deploy.md, deploy/helm/values.yaml) against the local stack: the
Helm values carry every Airflow setting the stack sets (same value, or a named secret), the
pipeline's connections, pools and workers; the guide names every pool, connection and setting.
No chart is downloaded here: the values are "rendered" as the chart does for these keys
(``config:`` becomes AIRFLOW__SECTION__KEY) and the keys are checked by name against the chart's."""

import re
import shlex

import pytest
import yaml

from enrollment.config import load_config
from tests.conftest import ROOT
from tests.unit.deploy.airflow_settings import MACHINE_SPECIFIC, airflow_settings

VALUES = ROOT / "deploy" / "helm" / "values.yaml"
GUIDE = ROOT / "docs" / "deploy.md"

# Top-level keys of the chart's values (1.18 line) this file may use: a typo is a key the chart
# ignores without a word, so every key used must be one of these.
CHART_KEYS = {
    "airflowVersion",
    "defaultAirflowRepository",
    "defaultAirflowTag",
    "executor",
    "fernetKeySecretName",
    "apiSecretKeySecretName",
    "jwtSecretName",
    "data",
    "postgresql",
    "redis",
    "config",
    "env",
    "secret",
    "volumes",
    "volumeMounts",
    "workers",
    "scheduler",
    "triggerer",
    "dagProcessor",
    "apiServer",
    "migrateDatabaseJob",
    "webserver",
    "extraEnv",
    "extraEnvFrom",
    "images",
    "ingress",
}
WORKER_KEYS = {
    "args",
    "keda",
    "persistence",
    "serviceAccount",
    "resources",
    "replicas",
    "env",
    "extraVolumes",
    "extraVolumeMounts",
}
KEDA_KEYS = {
    "enabled",
    "pollingInterval",
    "cooldownPeriod",
    "minReplicaCount",
    "maxReplicaCount",
    "advanced",
    "query",
    "usePgbouncer",
}
# Where the chart takes each secret-bearing setting from (the secret's name; never a value here).
SECRET_SOURCES = {
    "AIRFLOW__API_AUTH__JWT_SECRET": ("jwtSecretName",),
    "AIRFLOW__API__SECRET_KEY": ("apiSecretKeySecretName",),
    "AIRFLOW__CORE__FERNET_KEY": ("fernetKeySecretName",),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("data", "metadataSecretName"),
    "AIRFLOW__CELERY__BROKER_URL": ("data", "brokerUrlSecretName"),
    "AIRFLOW__CELERY__RESULT_BACKEND": ("data", "resultBackendSecretName"),
}
# Values the chart would turn into secrets of its own making (or a plain value): never set here.
INLINE_SECRETS = ("fernetKey", "jwtSecret", "apiSecretKey", "webserverSecretKey")
# Managed by Cloud Composer (its executor, its own
# users and auth): the guide names them, no override.
COMPOSER_MANAGED = {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"}


@pytest.fixture(scope="module")
def values():
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def guide():
    return GUIDE.read_text()


def rendered(values) -> dict[str, str]:
    """The AIRFLOW__* settings the chart gives Airflow from these values: ``config:`` (airflow.cfg),
    ``executor`` and plain ``env`` entries."""
    settings = {
        f"AIRFLOW__{section.upper()}__{key.upper()}": str(value)
        for section, options in (values.get("config") or {}).items()
        for key, value in (options or {}).items()
    }
    settings["AIRFLOW__CORE__EXECUTOR"] = values["executor"]
    settings |= {e["name"]: str(e["value"]) for e in values.get("env") or [] if "value" in e}
    return settings


def _dig(values, path):
    for key in path:
        values = (values or {}).get(key)
    return values


def test_the_values_use_only_keys_of_the_chart(values):
    assert set(values) <= CHART_KEYS, sorted(set(values) - CHART_KEYS)
    assert set(values["workers"]) <= WORKER_KEYS, sorted(set(values["workers"]) - WORKER_KEYS)
    assert set(values["workers"]["keda"]) <= KEDA_KEYS, sorted(
        set(values["workers"]["keda"]) - KEDA_KEYS
    )
    assert values["airflowVersion"] == load_airflow_version()


def load_airflow_version() -> str:
    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("apache-airflow==")
    ]
    return pins[0].split("==")[1].split()[0]


def test_every_config_option_exists_in_airflow(values):
    """A misspelt option is ignored by Airflow without a word: each one is Airflow's (or a
    provider's)."""
    from airflow.configuration import conf

    known = (
        conf.configuration_description
    )  # Airflow's options and its providers' (the Celery one's)
    for section, options in values["config"].items():
        for key in options:
            assert key in known.get(section, {}).get("options", {}), (
                f"[{section}] {key} is not an option of Airflow {load_airflow_version()}"
            )


def test_the_values_carry_every_airflow_setting_of_the_local_stack(values, tmp_path):
    plain, secret = airflow_settings(tmp_path)
    settings = rendered(values)
    differing = {k: (v, settings.get(k)) for k, v in plain.items() if settings.get(k) != v}
    assert not differing, (
        f"deploy/helm/values.yaml differs from the local stack (local, helm): {differing}"
    )
    for key in secret:
        assert key not in settings, (
            f"{key} carries a secret: it comes from a Kubernetes secret, not from the values"
        )
        name = _dig(values, SECRET_SOURCES[key])
        assert isinstance(name, str) and name, (
            f"{key}: set {'.'.join(SECRET_SOURCES[key])} to the name of its secret"
        )
    for key in INLINE_SECRETS:
        assert not values.get(key), f"{key} holds a secret's value; use {key}SecretName"
    assert not _dig(values, ("redis", "password")) and _dig(values, ("redis", "passwordSecretName"))
    assert not _dig(values, ("data", "metadataConnection")) and not _dig(
        values, ("data", "brokerUrl")
    )
    # The machine-specific ones the deployment must
    # still set: the users file, mounted from a secret.
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in MACHINE_SPECIFIC
    users_dir = settings["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].rsplit("/", 1)[0]
    mount = next(m for m in values["volumeMounts"] if m["mountPath"] == users_dir)
    volume = next(v for v in values["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"]


def test_every_connection_comes_from_a_secret(values):
    from enrollment_airflow import connections

    conn_ids = [v for k, v in vars(connections).items() if k.endswith("_CONN_ID")]
    assert len(conn_ids) >= 5, conn_ids
    from_secrets = {s["envName"]: s for s in values["secret"]}
    for conn_id in conn_ids:
        entry = from_secrets.get(f"AIRFLOW_CONN_{conn_id.upper()}")
        assert entry and entry["secretName"] and entry["secretKey"], (
            f"connection {conn_id} has no secret in the values"
        )
    assert not [e for e in values.get("env") or [] if e["name"].startswith("AIRFLOW_CONN_")], (
        "connections are secrets, never values"
    )


def test_the_workers_take_every_queue_and_scale_with_keda(values):
    workers = values["workers"]
    command = shlex.split(workers["args"][-1])
    assert command[:4] == ["exec", "airflow", "celery", "worker"], command
    queues = set(command[command.index("--queues") + 1].split(","))
    config = load_config()
    assert (
        queues
        == {q for w in config.celery_workers for q in w.queues}
        >= {p.queue for p in config.pools.values()}
    )
    # One pod is the configuration's worker that takes every queue: the same concurrency.
    general = [w for w in config.celery_workers if set(w.queues) == queues]
    assert general and values["config"]["celery"]["worker_concurrency"] == general[0].concurrency
    keda = workers["keda"]
    assert keda["enabled"] is True and keda["minReplicaCount"] >= 1, (
        "the line runs all day: never scale to zero"
    )
    assert (
        keda["maxReplicaCount"] * values["config"]["celery"]["worker_concurrency"]
        >= values["config"]["core"]["parallelism"]
    ), "at the largest, the workers run as many tasks as the scheduler starts"


def test_the_install_imports_the_configured_pools(values):
    script = values["migrateDatabaseJob"]["args"][-1]
    assert re.search(
        r"airflow db migrate && python -m enrollment\.pools > (\S+) && airflow pools import \1",
        script,
    ), script


def test_workload_identity_and_no_key_file(values):
    for component in ("workers", "scheduler", "triggerer", "dagProcessor", "apiServer"):
        account = values[component]["serviceAccount"]["annotations"][
            "iam.gke.io/gcp-service-account"
        ]
        assert account.endswith(".iam.gserviceaccount.com"), component
    assert "key_path" not in VALUES.read_text() and "keyfile" not in VALUES.read_text()


def test_the_guide_names_every_pool_with_the_configured_slots(guide):
    pools = load_config().pools
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d+) \|", guide, re.M))
    assert rows == {name: str(p.slots) for name, p in pools.items()}, ("guide's pool table", rows)
    for name in pools:
        assert f"`{name}`" in guide.split("## Cloud Composer 3")[1], (
            f"the Composer section does not name pool {name}"
        )


def test_the_guide_names_every_connection(guide):
    from enrollment_airflow import connections

    for conn_id in [v for k, v in vars(connections).items() if k.endswith("_CONN_ID")]:
        assert f"`{conn_id}`" in guide, conn_id
        assert f"airflow-connections-{conn_id}" in guide or conn_id == connections.GCP_CONN_ID, (
            f"the guide does not say which Secret Manager secret holds {conn_id}"
        )


def test_the_guide_overrides_every_setting_on_composer(guide, tmp_path):
    """Each setting of the local stack is an --airflow-configs override (section-key=value) in the
    Composer section, or named as one Composer manages itself; and in the settings table."""
    plain, _ = airflow_settings(tmp_path)
    composer = guide.split("## Cloud Composer 3")[1].split("\n## ")[0]
    for key, value in plain.items():
        section, option = key.removeprefix("AIRFLOW__").lower().split("__", 1)
        assert re.search(
            rf"^\| `\[{section}\] {option}` \| `{re.escape(value)}` \|", guide, re.M
        ), f"settings table: [{section}] {option} = {value}"
        if key in COMPOSER_MANAGED:
            assert f"[{section}] {option}" in composer, key
        else:
            assert f"{section}-{option}={value}" in composer, (
                f"no Composer override {section}-{option}={value}"
            )
    # Triggerer capacity: the same in the guide and the values.
    capacity = yaml.safe_load(VALUES.read_text())["config"]["triggerer"]["capacity"]
    assert f"triggerer-capacity={capacity}" in composer


def test_the_sizing_quotes_measured_figures_from_reports_in_the_repository(guide):
    sizing = guide.split("## Sizing for the peak")[1].split("\n## ")[0]
    assert "400,000" in sizing and "<!--" not in sizing, "no placeholder left"
    assert sizing.count("*measured*") >= 6
    for report in re.findall(r"`(?:bench/results/loadtest/)?(\d{8}T\d{6}Z)/?`", sizing):
        assert (ROOT / "bench" / "results" / "loadtest" / report / "summary.json").exists(), report
