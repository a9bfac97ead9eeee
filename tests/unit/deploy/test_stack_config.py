"""The stack's configuration: ports from the environment, secrets out of reprs and code."""

import json

import pytest

from stack import config as stack_config
from stack.services import NAMES


def test_ports_come_from_the_environment_over_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_PORT", "29092")
    cfg = stack_config.load(tmp_path)
    assert cfg.kafka_bootstrap == "127.0.0.1:29092"
    assert cfg.ports["SOLR_PORT"] == stack_config.DEFAULT_PORTS["SOLR_PORT"]


def test_saved_ports_and_generated_credentials_survive_a_reload(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLR_PORT", "28983")
    first = stack_config.load(tmp_path)
    first.save()
    monkeypatch.delenv("SOLR_PORT")
    second = stack_config.load(tmp_path)
    assert second.ports["SOLR_PORT"] == 28983
    assert second.credentials == first.credentials
    assert (tmp_path / "stack.json").stat().st_mode & 0o077 == 0, (
        "the file with the stub's secret must be private"
    )


def test_every_service_binds_loopback_and_connections_carry_no_other_host(tmp_path):
    env = stack_config.load(tmp_path).client_env()
    for key, value in env.items():
        if key.startswith("AIRFLOW_CONN_"):
            conn = json.loads(value)
            host = (
                conn.get("host")
                or conn["extra"].get("bootstrap.servers", "127.0.0.1").split(":")[0]
            )
            assert (
                host.removeprefix("http://").split(":")[0] == "127.0.0.1" or "host" not in conn
            ), key
        elif key.endswith(("_HOST", "_URL")):
            assert "127.0.0.1" in value, key


def test_endpoints_repr_hides_the_marketing_cloud_secret():
    from enrollment.clients.services import Endpoints

    ep = Endpoints(
        "p", "k:1", "http://s", "http://a", "http://r", "client-id-value", "secret-value-xyz"
    )
    assert "secret-value-xyz" not in repr(ep)
    assert "client-id-value" not in repr(ep)


def test_secret_files_are_private_from_the_start_in_a_private_folder(tmp_path, monkeypatch):
    """stack.json, stack.env and Airflow's users file: 0600 in a 0700 folder, even under a lax
    umask, even when an older stack left the folder and files readable by others; never written then
    narrowed."""
    import os
    import stat

    from stack.services import Airflow

    state = tmp_path / ".stack"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "stack.json").write_text("{}")
    (state / "stack.json").chmod(0o644)
    created_modes = []
    real_open = os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created_modes.append((os.path.basename(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    old_umask = os.umask(0o022)
    try:
        monkeypatch.setattr(os, "open", watching_open)
        cfg = stack_config.load(state)
        cfg.save()
        cfg.save_env()
        Airflow(cfg).prepare()
    finally:
        monkeypatch.undo()
        os.umask(old_umask)
    secret_files = [state / "stack.json", state / "stack.env", cfg.airflow_home / "passwords.json"]
    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path.name, oct(path.stat().st_mode))
    for folder in (state, cfg.airflow_home):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, (
            folder.name,
            oct(folder.stat().st_mode),
        )
    assert {name: mode for name, mode in created_modes} == {
        "stack.json": 0o600,
        "stack.env": 0o600,
        "passwords.json": 0o600,
    }
    assert cfg.credentials["mc_stub_token"] in (state / "stack.env").read_text()


def test_the_status_never_prints_the_admin_password(tmp_path, monkeypatch, capsys):
    from stack import cli as stack_cli

    cfg = stack_config.load(tmp_path)
    cfg.save()
    monkeypatch.setattr(stack_config, "load", lambda *a, **k: cfg)
    monkeypatch.setattr(stack_cli, "select", lambda names, c, every=False: [])
    stack_cli.status()
    out = capsys.readouterr().out
    assert "airflow_admin_password" in out and str(cfg.saved_file.name) in out
    for secret in cfg.credentials.values():
        assert secret not in out


def test_each_service_gets_only_its_own_secrets(tmp_path, monkeypatch):
    """Nothing secret is inherited from the caller; the stub gets its client credentials and admin
    token, Airflow its own keys and its connections (Kafka's and Solr's users among them), Kafka,
    Solr and the emulators none (their own credentials are in 0600 files)."""
    from stack import cli as stack_cli
    from stack.services import ALL, Airflow, MarketingCloudStub

    cfg = stack_config.load(tmp_path)
    monkeypatch.setenv("SOME_CALLER_SECRET", "caller-secret-value")
    monkeypatch.setenv(
        "MARKETING_CLOUD_CLIENT_SECRET", cfg.credentials["mc_client_secret"]
    )  # as after `up` or in a test session
    secrets = cfg.credentials
    airflow_only = {
        "airflow_admin_password",
        "airflow_jwt_secret",
        "airflow_api_secret_key",
        "airflow_fernet_key",
        "airflow_db_password",
        "pii_key_id",
        "pii_key",
        "kafka_password",
        "solr_password",
    }
    for cls in ALL:
        env = stack_cli.service_env(cls(cfg))
        text = "\n".join(env.values())
        assert "caller-secret-value" not in text, cls.name
        held = {key for key, value in secrets.items() if value in text}
        if cls is MarketingCloudStub:
            assert held == {"mc_client_id", "mc_client_secret", "mc_stub_token"}, held
        elif cls is Airflow:
            assert held <= airflow_only | {"mc_client_id", "mc_client_secret"}, held
            assert "mc_stub_token" not in held
            assert {
                "airflow_jwt_secret",
                "airflow_fernet_key",
                "airflow_api_secret_key",
                "pii_key",
                "kafka_password",
                "solr_password",
            } <= held
            assert "kafka_admin_password" not in held, "the broker's own user is the broker's"
        else:
            assert held == set(), (cls.name, held)


def test_the_stub_admin_endpoints_want_the_token_and_the_published_api_keeps_oauth():
    from fastapi.testclient import TestClient

    from stack.marketing_cloud_stub import ADMIN_TOKEN_HEADER, StubState, create_app

    client = TestClient(
        create_app(StubState("id", "secret", ["PartnerId"], admin_token="admin-token"))
    )
    good = {ADMIN_TOKEN_HEADER: "admin-token"}
    calls = [
        ("GET", "/_stub/settings", None),
        ("PATCH", "/_stub/settings", {"rate_per_s": 200}),
        ("GET", "/_stub/counters", None),
        ("GET", "/_stub/dataextensions/partners/rows", None),
        ("POST", "/_stub/dataextensions/partners/lookup", {"keys": ["P1"]}),
        ("PUT", "/_stub/dataextensions/partners", {"primary_key": ["PartnerId"]}),
        ("GET", "/_stub/journey-events", None),
        ("POST", "/_stub/reset", None),
    ]
    for method, path, body in calls:
        for headers in ({}, {ADMIN_TOKEN_HEADER: "wrong"}, {"Authorization": "Bearer admin-token"}):
            assert client.request(method, path, json=body, headers=headers).status_code == 401, (
                method,
                path,
                headers,
            )
        assert client.request(method, path, json=body, headers=good).status_code == 200, (
            method,
            path,
        )
    assert client.get("/_stub/health").status_code == 200
    # The published API: OAuth as before, and the admin token is no access token.
    assert (
        client.get(
            "/data/v1/async/x/status", headers={"Authorization": "Bearer admin-token"}
        ).status_code
        == 401
    )
    token = client.post(
        "/v2/token",
        json={"grant_type": "client_credentials", "client_id": "id", "client_secret": "secret"},
    ).json()["access_token"]
    assert (
        client.get(
            "/data/v1/async/x/status", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 404
    )


def test_the_postgres_metadata_db_uses_an_ordinary_role_with_a_password(tmp_path):
    cfg = stack_config.load(tmp_path)
    cfg.airflow_db = "postgres"
    uri = cfg.airflow_db_uri
    assert "root@" not in uri and uri.startswith(
        f"postgresql+psycopg2://{stack_config.AIRFLOW_DB_ROLE}:"
    )
    assert cfg.credentials["airflow_db_password"] in uri and "@127.0.0.1:" in uri


def test_the_personal_data_key_is_generated_once_and_reaches_airflow_only_as_its_connection(
    tmp_path,
):
    """One random key per stack (kept in stack.json), as the ``enrollment_pii`` connection for
    Airflow and as ENROLLMENT_PII_* for tests and tools: both give the same tokens."""
    from enrollment.core.pii import Keyring
    from stack.services import Airflow

    cfg = stack_config.load(tmp_path)
    cfg.save()
    again = stack_config.load(tmp_path)
    assert (
        again.credentials["pii_key"] == cfg.credentials["pii_key"]
        and len(cfg.credentials["pii_key"]) >= 32
    )
    assert (
        stack_config.load(tmp_path / "other").credentials["pii_key"] != cfg.credentials["pii_key"]
    ), "random per stack"
    env = cfg.client_env()
    conn = json.loads(env["AIRFLOW_CONN_ENROLLMENT_PII"])
    from_conn = Keyring.from_secret(conn["login"], conn["password"], conn["extra"]["retired"])
    assert from_conn.token("123-45-6789", "tax_id") == Keyring.from_env(env).token(
        "123456789", "tax_id"
    )
    airflow = Airflow(cfg).env()
    assert "AIRFLOW_CONN_ENROLLMENT_PII" in airflow and not any(
        k.startswith("ENROLLMENT_PII_") for k in airflow
    )
    assert cfg.credentials["pii_key"] not in repr(cfg), "the key stays out of reprs"


def test_the_celery_stack_binds_loopback_with_a_password_kept_off_command_lines(
    tmp_path, monkeypatch
):
    """STACK_EXECUTOR=celery: Redis on 127.0.0.1 with requirepass in a 0600 file, Airflow's broker
    and result backend carry that password, one worker process per configured worker with its own
    queues and concurrency; LocalExecutor stays the default and starts neither."""
    from enrollment.config import load_config
    from stack.services import Airflow, CeleryWorker, Redis, stack_services

    local = stack_config.load(tmp_path)
    assert (
        local.executor == "local"
        and Airflow(local).env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    )
    assert [s.name for s in stack_services(local)] == list(
        NAMES
    ) and "AIRFLOW__CELERY__BROKER_URL" not in Airflow(local).env()

    monkeypatch.setenv("STACK_EXECUTOR", "celery")
    cfg = stack_config.load(tmp_path)
    password = cfg.credentials["redis_password"]
    services = stack_services(cfg)
    names = [s.name for s in services]
    assert names.index("redis") < names.index("airflow") < names.index("worker-line")
    redis = next(s for s in services if isinstance(s, Redis))
    monkeypatch.setattr(Redis, "binary", staticmethod(lambda: "redis-server"))
    redis.prepare()
    conf = (redis.dir / "redis.conf").read_text()
    assert (
        "bind 127.0.0.1\n" in conf
        and f"requirepass {password}\n" in conf
        and "protected-mode yes" in conf
    )
    assert (redis.dir / "redis.conf").stat().st_mode & 0o077 == 0
    env = Airflow(cfg).env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"]
        == f"redis://:{password}@127.0.0.1:{cfg.port('REDIS_PORT')}/0"
    )
    workers = [s for s in services if isinstance(s, CeleryWorker)]
    assert [(w.worker.name, w.worker.queues, w.worker.concurrency) for w in workers] == [
        (w.name, w.queues, w.concurrency) for w in load_config().celery_workers
    ]
    for worker in workers:
        command = worker.command()
        assert command[:3] == ["airflow", "celery", "worker"] and "--skip-serve-logs" in command
        assert command[command.index("--queues") + 1] == ",".join(worker.worker.queues)
        assert command[command.index("--concurrency") + 1] == str(worker.worker.concurrency)
    for service in services:
        if service.name != "airflow":
            assert not any(
                password in part
                for part in (redis.command() if service is redis else service.command())
            ), service.name
    assert stack_config.load(tmp_path).executor == "celery"
    monkeypatch.setenv("STACK_EXECUTOR", "kubernetes")
    with pytest.raises(SystemExit, match="STACK_EXECUTOR"):
        stack_config.load(tmp_path)


def test_pools_and_workers_are_checked_when_the_configuration_loads():
    import yaml

    from enrollment.config import DEFAULT_CONFIG, parse_config

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config = parse_config(raw)
    assert (
        config.pools["ingest"].priority
        > config.pools["sinks"].priority
        > config.pools["maintenance"].priority
    )
    assert config.pools["ingest"].task_args() == {
        "pool": "ingest",
        "priority_weight": 100,
        "weight_rule": "absolute",
        "queue": "ingest",
    }
    for broken, message in (
        (lambda r: r["pools"].pop("sinks"), "missing"),
        (
            lambda r: r["pools"]["ingest"].update(slot=3),
            r"pools\.ingest: unknown key\(s\) \['slot'\]",
        ),
        (lambda r: r["pools"]["sinks"].update(queue="nowhere"), "no worker takes the queue"),
        (lambda r: r["celery_workers"].append(dict(r["celery_workers"][0])), "unique"),
        (lambda r: r["celery_workers"][0].update(concurrency=0), "concurrency"),
    ):
        copy = yaml.safe_load(yaml.safe_dump(raw))
        broken(copy)
        with pytest.raises(ValueError, match=message):
            parse_config(copy)
    without = {k: v for k, v in raw.items() if k not in ("pools", "celery_workers")}
    assert parse_config(without).pools == config.pools, (
        "a configuration without pools gets the embedded ones"
    )


def test_the_stack_gives_the_pipeline_the_emulators_storage_read_api(tmp_path, monkeypatch):
    from enrollment.clients.services import bigquery_read_client

    env = stack_config.load(tmp_path).client_env()
    for configured in (env["BIGQUERY_STORAGE_EMULATOR_HOST"], None):
        bigquery_read_client.cache_clear()
        if configured is None:
            monkeypatch.delenv("BIGQUERY_STORAGE_EMULATOR_HOST", raising=False)
        else:
            monkeypatch.setenv("BIGQUERY_STORAGE_EMULATOR_HOST", configured)
        reader = bigquery_read_client()
        assert (reader is None) == (configured is None)
        if reader is not None:
            assert type(reader).__name__ == "BigQueryReadClient"
    bigquery_read_client.cache_clear()
