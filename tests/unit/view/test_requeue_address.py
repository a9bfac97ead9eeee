"""Where the operator page's requeue sends the caller's token: Airflow's API as configured, never
an address taken from the request, whatever Host and X-Forwarded-* headers it carries."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from enrollment_airflow.operator_page import requeue

FORGED = [
    (b"host", b"attacker.example:8443"),
    (b"x-forwarded-host", b"attacker.example"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-port", b"8443"),
    (b"forwarded", b"host=attacker.example;proto=https"),
    (b"authorization", b"Bearer the-callers-token"),
]


class Recorded(Exception):
    pass


def _sent_to(monkeypatch) -> str:
    """The base URL the requeue's API client was built with (the call stops there)."""
    seen: dict = {}

    class Client:
        def __init__(self, base_url: str = "", **kwargs):
            seen["base_url"] = base_url

        async def __aenter__(self):
            raise Recorded

        async def __aexit__(self, *exc):
            return False

    import httpx

    monkeypatch.setattr(httpx, "AsyncClient", Client)
    request = Request(
        {
            "type": "http",
            "method": "POST",
            "scheme": "http",
            "server": ("attacker.example", 8443),
            "path": "/enrollment/api/requeue",
            "query_string": b"",
            "headers": FORGED,
        }
    )
    with pytest.raises(Recorded):
        asyncio.run(requeue.trigger(request, {"region": "ALL"}))
    return str(seen["base_url"])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"AIRFLOW__API__BASE_URL": "https://airflow.internal:8443"},
            "https://airflow.internal:8443",
        ),
        (
            {
                "AIRFLOW__API__BASE_URL": "",
                "AIRFLOW__API__HOST": "0.0.0.0",
                "AIRFLOW__API__PORT": "9091",
            },
            "http://127.0.0.1:9091",
        ),
        (
            {
                "AIRFLOW__API__BASE_URL": "",
                "AIRFLOW__API__HOST": "10.0.0.5",
                "AIRFLOW__API__PORT": "8080",
            },
            "http://10.0.0.5:8080",
        ),
    ],
)
def test_the_requeue_calls_the_configured_api_whatever_the_request_says(monkeypatch, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sent = _sent_to(monkeypatch)
    assert sent == f"{expected}/api/v2"
    assert "attacker" not in sent
