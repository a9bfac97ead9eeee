"""The stack's configuration: ports from the environment, secrets out of reprs and code."""

import json

from stack import config as stack_config


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
    assert (tmp_path / "stack.json").stat().st_mode & 0o077 == 0, "the file with the stub's secret must be private"


def test_every_service_binds_loopback_and_connections_carry_no_other_host(tmp_path):
    env = stack_config.load(tmp_path).client_env()
    for key, value in env.items():
        if key.startswith("AIRFLOW_CONN_"):
            conn = json.loads(value)
            host = conn.get("host") or conn["extra"].get("bootstrap.servers", "127.0.0.1").split(":")[0]
            assert host.removeprefix("http://").split(":")[0] == "127.0.0.1" or "host" not in conn, key
        elif key.endswith(("_HOST", "_URL")):
            assert "127.0.0.1" in value, key


def test_endpoints_repr_hides_the_marketing_cloud_secret():
    from enrollment.services import Endpoints

    ep = Endpoints("p", "k:1", "http://s", "http://a", "http://r", "client-id-value", "secret-value-xyz")
    assert "secret-value-xyz" not in repr(ep)
    assert "client-id-value" not in repr(ep)
