"""The stack's secrets where another user of the machine could read them: on no process's command
line (``ps`` shows every one to everybody) and in no file but private ones (0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]


def _secrets(stack) -> dict[str, str]:
    return {k: v for k, v in stack.credentials.items() if isinstance(v, str) and len(v) >= 12}


def test_no_secret_on_any_command_line(stack):
    secrets = _secrets(stack)
    assert {"kafka_password", "kafka_admin_password", "solr_password"} <= set(secrets)
    seen = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        seen += 1
        for name, value in secrets.items():
            assert value not in cmdline, f"{name} on the command line of process {pid}"
    assert seen > 5, "the stack's processes were not found"


def test_files_holding_secrets_are_private(stack):
    kafka = stack.state / "kafka"
    for path in [
        kafka / "server.properties",  # the broker's own SCRAM password
        kafka / "tls" / "broker.pem",  # its private key
        kafka / "tls" / "ca.key",
        kafka / "tls" / "client.pem",  # the mutual-TLS client's private key
        kafka / "tls" / "token-signer.key",  # signs the OAUTHBEARER tokens the broker accepts
        stack.state / "solr" / "home" / "security.json",
        stack.saved_file,
        stack.env_file,
    ]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is readable by others ({oct(mode)})"
    secrets = _secrets(stack)
    props = (kafka / "server.properties").read_text()
    assert stack.credentials["kafka_password"] not in props, "only the broker's own user is there"
    assert (
        secrets["solr_password"]
        not in (stack.state / "solr" / "home" / "security.json").read_text()
    )
