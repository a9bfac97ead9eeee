"""The "Enrollment pipeline" page on the live API server: who may see it, who may start a
re-processing, that the UI's navigation lists it, and that what it serves holds no personal value.

The plugin is loaded by the API server at start: after changing its Python code, restart the
stack (``make down && make up``; templates are read again on their own)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from google.cloud import bigquery

from enrollment.clients.bigquery import landed_schema
from enrollment.config import load_config
from enrollment.ingest.shape import landed_schemas
from enrollment.warehouse.tables import ensure_tables
from stack.airflow_client import login_token
from tests.integration.conftest import pipeline_warehouse

pytestmark = [pytest.mark.integration]

JSON_GETS = [
    "/enrollment/api/overview?window_hours=1",
    "/enrollment/api/regions/amer?window_hours=1",
]
DAG = "requeue_quarantine"


@pytest.fixture(scope="module")
def base(stack):
    return stack.url("AIRFLOW_PORT")


@pytest.fixture(scope="module")
def tokens(stack):
    return {user: login_token(stack, user) for user in ("admin", "viewer")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_plugin_is_listed_with_its_nav_entry_and_app(base, tokens):
    plugins = (
        httpx.get(f"{base}/api/v2/plugins", headers=bearer(tokens["admin"]), timeout=30)
        .raise_for_status()
        .json()["plugins"]
    )
    mine = [p for p in plugins if p["name"] == "enrollment_pipeline"]
    assert len(mine) == 1, [p["name"] for p in plugins]
    assert [(a["url_prefix"], a["name"]) for a in mine[0]["fastapi_apps"]] == [
        ("/enrollment", "Enrollment pipeline")
    ]
    view = mine[0]["external_views"]
    assert [(v["name"], v["href"], v["destination"], v["url_route"]) for v in view] == [
        ("Enrollment pipeline", "/enrollment/", "nav", "enrollment-pipeline")
    ]


def test_without_a_token_the_json_answers_401_and_the_page_sends_to_the_login(base):
    for path in JSON_GETS:
        assert httpx.get(f"{base}{path}", timeout=60).status_code == 401, path
    assert (
        httpx.post(f"{base}/enrollment/api/requeue", json={"dry_run": True}, timeout=30).status_code
        == 401
    )
    page = httpx.get(f"{base}/enrollment/", timeout=60, follow_redirects=False)
    assert (
        page.status_code == 303
        and "/auth/login" in page.headers["location"]
        and "enrollment" in page.headers["location"]
    )
    assert "Enrollment pipeline" not in page.text


@pytest.mark.parametrize("how", ["bearer", "cookie"])
def test_a_garbage_token_is_refused(base, how):
    garbage = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhZG1pbiJ9.not-a-signature"
    kwargs = {"headers": bearer(garbage)} if how == "bearer" else {"cookies": {"_token": garbage}}
    for path in [*JSON_GETS, "/enrollment/"]:
        r = httpx.get(f"{base}{path}", timeout=60, follow_redirects=False, **kwargs)
        assert r.status_code in (401, 403), (path, r.status_code)
    r = httpx.post(f"{base}/enrollment/api/requeue", json={"dry_run": True}, timeout=30, **kwargs)
    assert r.status_code in (401, 403)


def test_a_viewer_sees_the_page_and_the_json_but_cannot_start_a_run(base, tokens):
    # The UI's way (the _token cookie set at login) and the API's way (a Bearer header).
    page = httpx.get(f"{base}/enrollment/", cookies={"_token": tokens["viewer"]}, timeout=60)
    assert page.status_code == 200 and "Enrollment pipeline" in page.text
    assert 'id="requeue"' not in page.text and "You may look but not start" in page.text
    for path in JSON_GETS:
        r = httpx.get(f"{base}{path}", headers=bearer(tokens["viewer"]), timeout=60)
        assert r.status_code == 200, (path, r.text[:300])
    overview = httpx.get(
        f"{base}{JSON_GETS[0]}", headers=bearer(tokens["viewer"]), timeout=60
    ).json()
    assert [r["code"] for r in overview["regions"]["regions"]] == [
        r.code for r in load_config().regions
    ]
    assert {"regions", "sinks", "quarantine", "health", "dags", "status"} <= set(overview)
    refused = httpx.post(
        f"{base}/enrollment/api/requeue",
        json={"region": "ALL", "dry_run": True},
        headers=bearer(tokens["viewer"]),
        timeout=30,
    )
    assert refused.status_code == 403, refused.text


def test_an_admin_starts_a_dry_run_that_airflow_holds_as_theirs(base, tokens):
    page = httpx.get(f"{base}/enrollment/", headers=bearer(tokens["admin"]), timeout=60)
    assert page.status_code == 200 and 'id="requeue"' in page.text
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sent = {
        "region": "emea",
        "since": since,
        "until": "",
        "reasons": ["unparsable"],
        "dry_run": True,
    }
    r = httpx.post(
        f"{base}/enrollment/api/requeue", json=sent, headers=bearer(tokens["admin"]), timeout=60
    )
    assert r.status_code == 201, r.text
    started = r.json()
    assert started["dag_id"] == DAG and started["url"].startswith(f"/dags/{DAG}/runs/")
    # Read back from Airflow itself: the run exists,
    # with the params as sent, triggered by the admin.
    run = (
        httpx.get(
            f"{base}/api/v2/dags/{DAG}/dagRuns/{started['dag_run_id']}",
            headers=bearer(tokens["admin"]),
            timeout=30,
        )
        .raise_for_status()
        .json()
    )
    assert run["conf"] == {
        "region": "EMEA",
        "since": since,
        "until": "",
        "reasons": ["unparsable"],
        "dry_run": True,
    }
    assert run.get("triggering_user_name", "admin") == "admin"
    assert (
        started["paused"]
        == httpx.get(
            f"{base}/api/v2/dags/{DAG}", headers=bearer(tokens["admin"]), timeout=30
        ).json()["is_paused"]
    )


def test_requeue_takes_json_from_this_origin_only_and_checks_the_region(base, tokens):
    h = bearer(tokens["admin"])
    assert (
        httpx.post(
            f"{base}/enrollment/api/requeue",
            content=b"region=ALL",
            headers={**h, "Content-Type": "application/x-www-form-urlencoded"},
            timeout=30,
        ).status_code
        == 415
    )
    assert (
        httpx.post(
            f"{base}/enrollment/api/requeue",
            json={"dry_run": True},
            headers={**h, "Origin": "https://elsewhere.example"},
            timeout=30,
        ).status_code
        == 403
    )
    assert (
        httpx.post(
            f"{base}/enrollment/api/requeue", json={"region": "MARS"}, headers=h, timeout=30
        ).status_code
        == 422
    )
    assert (
        httpx.post(
            f"{base}/enrollment/api/requeue", json={"dry_run": "maybe"}, headers=h, timeout=30
        ).status_code
        == 422
    )


def test_the_json_never_holds_a_personal_value_even_from_a_row_stored_unmasked(stack, base, tokens):
    """A quarantine row as an older release stored it (raw not masked), in the live warehouse for
    the length of the test: the page shows it as an example, masked, and its values are nowhere."""
    config = load_config()
    warehouse = pipeline_warehouse(stack, config)
    client = warehouse.client
    valid_schema, quarantine_schema = landed_schemas()
    ensure_tables(warehouse, landed_schema(valid_schema), landed_schema(quarantine_schema))
    batch_id = f"page-test-{uuid.uuid4().hex[:8]}"
    email, phone, tax_id, partner = (
        "marta.quintero71@example.net",
        "+5491155501234",
        "20-27654321-3",
        "LA7Q2W9E4R1T",
    )
    raw = json.dumps(
        {
            "event_type": "partner.enrolled",
            "partner_id": partner,
            "payload": {"email": email, "phone": phone, "tax_id": tax_id, "first_name": "Marta"},
        }
    )[:-2].encode()  # cut: unparsable
    window = (
        24 + uuid.uuid4().int % 1000 / 1000
    )  # a window of its own: not served from the page's 10 s cache
    before = httpx.get(
        f"{base}/enrollment/api/overview",
        params={"window_hours": window},
        headers=bearer(tokens["viewer"]),
        timeout=120,
    ).json()
    totals: dict[str, int] = {}
    for row in before["quarantine"]["counts"]["by_reason"]:
        totals[row["reason"]] = totals.get(row["reason"], 0) + row["count"]
    reason = (
        max(totals, key=totals.get) if totals else "unparsable"
    )  # the most frequent reason always has examples
    at = datetime.now(UTC) - timedelta(seconds=2)
    client.query(
        f"""INSERT INTO {warehouse.table("quarantine")} (batch_id, region, kafka_partition,
            kafka_offset, kafka_timestamp, reasons, duplicate_only, event_id, event_type,
            partner_id, raw)
        VALUES (@b, 'LATAM', 0, 999999999, @at, @reason, FALSE, NULL, 'partner.enrolled', @p,
            FROM_BASE64(@raw))""",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter("b", "STRING", batch_id),
                bigquery.ScalarQueryParameter("at", "TIMESTAMP", at),
                bigquery.ScalarQueryParameter("reason", "STRING", reason),
                bigquery.ScalarQueryParameter("p", "STRING", partner),
                # as text: the emulator stores a BYTES parameter base64-encoded
                bigquery.ScalarQueryParameter("raw", "STRING", base64.b64encode(raw).decode()),
            ]
        ),
    ).result()
    try:
        window += 0.0001
        for path in ("/enrollment/api/overview", "/enrollment/api/regions/latam"):
            body = httpx.get(
                f"{base}{path}",
                params={"window_hours": window},
                headers=bearer(tokens["viewer"]),
                timeout=120,
            )
            assert body.status_code == 200
            ours = [
                e
                for e in body.json()["quarantine"]["examples"]["examples"]
                if e["batch_id"] == batch_id
            ]
            assert len(ours) == 1, f"{path}: the planted row is shown as an example of {reason}"
            assert (
                "xxxxx.xxxxxxxx##@xxxxxxx.xxx" in ours[0]["message"]
                and ours[0]["partner_id"] == "LA••••••••••"
            )
            for value in (email, phone, tax_id, partner, "marta", "Marta", "27654321", "55501234"):
                assert value not in body.text, (path, value)
        html = httpx.get(
            f"{base}/enrollment/regions/LATAM",
            params={"window_hours": window},
            headers=bearer(tokens["viewer"]),
            timeout=120,
        ).text
        assert batch_id in html and email not in html and partner not in html
    finally:
        client.query(
            f"DELETE FROM {warehouse.table('quarantine')} WHERE batch_id = @b",
            job_config=bigquery.QueryJobConfig(
                query_parameters=[bigquery.ScalarQueryParameter("b", "STRING", batch_id)]
            ),
        ).result()
