"""The stack's Airflow client asks again when SQLite's one writer made a request fail."""

from __future__ import annotations

import httpx
import pytest

from stack.airflow_client import AirflowClient


def _client(answers: list[int], monkeypatch) -> tuple[AirflowClient, list[str]]:
    asked: list[str] = []
    codes = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.method)
        code = next(codes)
        return httpx.Response(code, json={"dag_run_id": "manual__1"} if code == 200 else {})

    client = AirflowClient.__new__(AirflowClient)
    client.http = httpx.Client(base_url="http://airflow", transport=httpx.MockTransport(handler))
    monkeypatch.setattr("stack.airflow_client.time.sleep", lambda s: None)
    return client, asked


def test_a_trigger_refused_by_a_busy_database_is_asked_again(monkeypatch):
    client, asked = _client([200, 500, 503, 200, 200, 200], monkeypatch)
    assert client.trigger("canary") == "manual__1"
    assert asked == ["PATCH", "POST", "PATCH", "PATCH", "POST"]


def test_a_trigger_gives_up_and_says_so(monkeypatch):
    client, _ = _client([500] * 3, monkeypatch)
    with pytest.raises(httpx.HTTPStatusError):
        client.trigger("canary", attempts=3)
    client, _ = _client([200, 404], monkeypatch)
    with pytest.raises(httpx.HTTPStatusError):
        client.trigger("no_such_dag")
