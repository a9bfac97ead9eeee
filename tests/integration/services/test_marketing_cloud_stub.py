"""The Marketing Cloud contract stub: token, async upsert, status and results, row limit, 429."""

import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stack")]


@pytest.fixture
def admin(stack):
    """A client of the stub's admin endpoints (/_stub/...), which want the stack's stub token."""
    with httpx.Client(headers=stack.stub_headers()) as client:
        yield client


@pytest.fixture
def mc(stack, admin):
    base = stack.url("MARKETING_CLOUD_PORT")
    admin.post(f"{base}/_stub/reset").raise_for_status()
    admin.patch(
        f"{base}/_stub/settings",
        json={"rate_per_s": 200, "processing_delay_s": 0.2, "token_ttl_s": 1080},
    ).raise_for_status()
    yield base
    admin.patch(
        f"{base}/_stub/settings",
        json={
            "rate_per_s": 200,
            "processing_delay_s": 0.2,
            "token_ttl_s": 1080,
            "throttle_for_s": 0,
        },
    )


def _token(base, stack, **override):
    body = {
        "grant_type": "client_credentials",
        "client_id": stack.credentials["mc_client_id"],
        "client_secret": stack.credentials["mc_client_secret"],
    } | override
    return httpx.post(f"{base}/v2/token", json=body)


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_token_requires_the_right_client_credentials(mc, stack):
    assert _token(mc, stack, client_secret="wrong").status_code == 401
    good = _token(mc, stack)
    assert good.status_code == 200
    assert good.json()["expires_in"] == 1080 and good.json()["token_type"] == "Bearer"


def test_async_upsert_status_results_and_rows_kept(mc, stack, admin):
    token = _token(mc, stack).json()["access_token"]
    items = [
        {"PartnerId": "P1", "EmailAddress": "ana@example.com", "Region": "EMEA"},
        {"PartnerId": "P2", "EmailAddress": "not-an-email"},
        {"EmailAddress": "nokey@example.com"},
        {"PartnerId": "P1", "EmailAddress": "ana.new@example.com"},
    ]
    accepted = httpx.put(
        f"{mc}/data/v1/async/dataextensions/key:partners/rows",
        json={"items": items},
        headers=_auth(token),
    )
    assert accepted.status_code == 202
    request_id = accepted.json()["requestId"]

    for _ in range(50):
        status = httpx.get(f"{mc}/data/v1/async/{request_id}/status", headers=_auth(token)).json()[
            "status"
        ]
        if status["requestStatus"] == "Complete":
            break
        time.sleep(0.1)
    assert status["requestStatus"] == "Complete" and status["hasErrors"] is True

    results = httpx.get(f"{mc}/data/v1/async/{request_id}/results", headers=_auth(token)).json()
    assert [r["status"] for r in results["items"]] == ["OK", "Error", "Error", "OK"]
    assert (
        "EmailAddress" in results["items"][1]["message"]
        and "PartnerId" in results["items"][2]["message"]
    )

    rows = admin.get(f"{mc}/_stub/dataextensions/partners/rows").json()
    assert rows["count"] == 1
    written_at = rows["items"][0].pop("_written_at")
    assert rows["items"][0] == {
        "PartnerId": "P1",
        "EmailAddress": "ana.new@example.com",
        "Region": "EMEA",
    }
    assert abs(written_at - time.time()) < 60, "the stub says when it last changed the row"


def test_more_than_32000_rows_are_refused(mc, stack, admin):
    token = _token(mc, stack).json()["access_token"]
    too_many = [{"PartnerId": f"P{i}"} for i in range(32_001)]
    refused = httpx.put(
        f"{mc}/data/v1/async/dataextensions/key:partners/rows",
        json={"items": too_many},
        headers=_auth(token),
        timeout=30,
    )
    assert refused.status_code == 400 and "32000" in refused.json()["message"]
    assert admin.get(f"{mc}/_stub/dataextensions/partners/rows").json()["count"] == 0


def test_exceeding_the_rate_answers_429_with_retry_after(mc, stack, admin):
    admin.patch(f"{mc}/_stub/settings", json={"rate_per_s": 3}).raise_for_status()
    token = _token(mc, stack).json()["access_token"]
    codes = [
        httpx.get(f"{mc}/data/v1/async/unknown/status", headers=_auth(token)) for _ in range(6)
    ]
    throttled = [r for r in codes if r.status_code == 429]
    assert throttled, [r.status_code for r in codes]
    assert int(throttled[0].headers["Retry-After"]) >= 1
    assert throttled[0].json()["errorcode"] == 50100
    assert admin.get(f"{mc}/_stub/counters").json()["throttled"] == len(throttled)


def test_an_expired_token_is_refused(mc, stack, admin):
    admin.patch(f"{mc}/_stub/settings", json={"token_ttl_s": 0.2}).raise_for_status()
    token = _token(mc, stack).json()["access_token"]
    time.sleep(0.3)
    expired = httpx.put(
        f"{mc}/data/v1/async/dataextensions/key:partners/rows",
        json={"items": [{"PartnerId": "P9"}]},
        headers=_auth(token),
    )
    assert expired.status_code == 401


def test_journey_entry_events_in_batches_of_at_most_100(mc, stack, admin):
    token = httpx.post(
        f"{mc}/v2/token",
        json={
            "grant_type": "client_credentials",
            "client_id": stack.credentials["mc_client_id"],
            "client_secret": stack.credentials["mc_client_secret"],
        },
    ).json()["access_token"]
    key = f"welcome-{time.time_ns()}"
    members = [{"contactKey": f"P{i}", "data": {"PartnerId": f"P{i}"}} for i in range(100)]
    accepted = httpx.post(
        f"{mc}/interaction/v1/async/events",
        headers=_auth(token),
        json={"eventDefinitionKey": key, "members": members},
    )
    assert accepted.status_code == 202 and accepted.json()["notQueuedCount"] == 0
    assert all(m["eventInstanceId"] for m in accepted.json()["members"])
    too_many = httpx.post(
        f"{mc}/interaction/v1/async/events",
        headers=_auth(token),
        json={"eventDefinitionKey": key, "members": members + members[:1]},
    )
    assert too_many.status_code == 400 and "100" in too_many.json()["message"]
    fired = admin.get(f"{mc}/_stub/journey-events", params={"event_definition_key": key}).json()
    assert fired["count"] == 100, "the refused request fired nothing"


def test_admin_endpoints_refuse_a_call_without_the_stub_token(mc, stack, admin):
    """/_stub/ holds what the stub accepted (personal
    data) and changes its behaviour: token or 401."""
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
        for headers in (
            {},
            {"X-Stub-Token": "wrong"},
            {"Authorization": f"Bearer {stack.credentials['mc_stub_token']}"},
        ):
            refused = httpx.request(method, f"{mc}{path}", json=body, headers=headers)
            assert refused.status_code == 401, (method, path, headers.keys(), refused.status_code)
        assert admin.request(method, f"{mc}{path}", json=body).status_code == 200, (method, path)
    assert httpx.get(f"{mc}/_stub/health").status_code == 200, "the readiness probe stays open"
    # The published endpoints keep their OAuth behaviour: the stub token is no access token.
    assert (
        httpx.get(
            f"{mc}/data/v1/async/unknown/status", headers=_auth(stack.credentials["mc_stub_token"])
        ).status_code
        == 401
    )


def _soap_delete(mc, token, data_extension, keys):
    objects = "".join(
        "<Objects "
        f'xsi:type="DataExtensionObject"><CustomerKey>{data_extension}</CustomerKey><Keys><Key><Name>PartnerId</Name>'
        f"<Value>{k}</Value></Key></Keys></Objects>"
        for k in keys
    )
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?><s:Envelope '
        'xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header><a:Action '
        's:mustUnderstand="1">Delete</a:Action>'
        f'<fueloauth xmlns="http://exacttarget.com">{token}</fueloauth></s:Header>'
        '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><DeleteRequest xmlns="http://exacttarget.com/wsdl/partnerAPI">'
        f"<Options/>{objects}</DeleteRequest></s:Body></s:Envelope>"
    )
    return httpx.post(
        f"{mc}/Service.asmx",
        content=envelope,
        headers={"Content-Type": "application/soap+xml", "SOAPAction": "Delete"},
    )


def _upserted(mc, token, data_extension, items):
    request_id = httpx.put(
        f"{mc}/data/v1/async/dataextensions/key:{data_extension}/rows",
        json={"items": items},
        headers=_auth(token),
    ).json()["requestId"]
    for _ in range(50):
        if (
            httpx.get(f"{mc}/data/v1/async/{request_id}/status", headers=_auth(token)).json()[
                "status"
            ]["requestStatus"]
            == "Complete"
        ):
            return
        time.sleep(0.1)
    raise AssertionError("the upsert never completed")


def test_soap_delete_removes_data_extension_rows_with_a_valid_token_only(mc, stack, admin):
    import xml.etree.ElementTree as ET

    token = _token(mc, stack).json()["access_token"]
    _upserted(
        mc,
        token,
        "partners",
        [
            {"PartnerId": "P1", "EmailAddress": "a@example.com"},
            {"PartnerId": "P2", "EmailAddress": "b@example.com"},
        ],
    )

    for bad in ("", "not-a-token"):
        refused = _soap_delete(mc, bad, "partners", ["P1"])
        assert refused.status_code == 401 and b"Fault" in refused.content
    assert admin.get(f"{mc}/_stub/dataextensions/partners/rows").json()["count"] == 2, (
        "a refused call deletes nothing"
    )

    answered = _soap_delete(mc, token, "partners", ["P1", "P-missing"])
    assert answered.status_code == 200
    ns = "{http://exacttarget.com/wsdl/partnerAPI}"
    results = [
        (r.findtext(f"{ns}StatusCode"), r.findtext(f"{ns}StatusMessage"))
        for r in ET.fromstring(answered.content).iter(f"{ns}Results")
    ]
    assert results == [
        ("OK", "Deleted DataExtensionObject"),
        ("Error", "Row not found for the given primary key"),
    ]
    assert ET.fromstring(answered.content).findtext(f".//{ns}OverallStatus") == "Has Errors"
    rows = admin.get(f"{mc}/_stub/dataextensions/partners/rows").json()
    assert [r["PartnerId"] for r in rows["items"]] == ["P2"]
    assert admin.get(f"{mc}/_stub/counters").json()["rows_deleted"] == 1


def test_contact_delete_is_accepted_and_removes_the_contact_everywhere(mc, stack, admin):
    token = _token(mc, stack).json()["access_token"]
    _upserted(mc, token, "partners", [{"PartnerId": "P1"}, {"PartnerId": "P2"}])
    key = f"welcome-{time.time_ns()}"
    httpx.post(
        f"{mc}/interaction/v1/async/events",
        headers=_auth(token),
        json={
            "eventDefinitionKey": key,
            "members": [{"contactKey": "P1", "data": {}}, {"contactKey": "P2", "data": {}}],
        },
    ).raise_for_status()
    path = f"{mc}/contacts/v1/contacts/actions/delete"
    body = {"values": ["P1"], "DeleteOperationType": "ContactAndAttributes"}
    assert httpx.post(path, params={"type": "keys"}, json=body).status_code == 401, (
        "no token, no delete"
    )
    assert (
        httpx.post(
            path,
            params={"type": "keys"},
            json=body | {"DeleteOperationType": "AttributesOnly"},
            headers=_auth(token),
        ).status_code
        == 400
    )
    assert (
        httpx.post(
            path,
            params={"type": "keys"},
            json={"values": [], "DeleteOperationType": "ContactAndAttributes"},
            headers=_auth(token),
        ).status_code
        == 400
    )

    accepted = httpx.post(path, params={"type": "keys"}, json=body, headers=_auth(token))
    assert (
        accepted.status_code == 200
        and accepted.json()["operationInitiated"] is True
        and not accepted.json()["hasErrors"]
    )
    operation = accepted.json()["operationID"]
    status_url = f"{mc}/contacts/v1/contacts/actions/delete/status"
    assert httpx.get(status_url, params={"operationID": operation}).status_code == 401
    for _ in range(50):
        status = httpx.get(
            status_url, params={"operationID": operation}, headers=_auth(token)
        ).json()["operation"]["status"]
        if status == "Completed":
            break
        time.sleep(0.1)
    assert status == "Completed"
    assert [
        r["PartnerId"]
        for r in admin.get(f"{mc}/_stub/dataextensions/partners/rows").json()["items"]
    ] == ["P2"]
    assert [
        e["ContactKey"]
        for e in admin.get(
            f"{mc}/_stub/journey-events", params={"event_definition_key": key}
        ).json()["items"]
    ] == ["P2"]
    assert httpx.get(f"{mc}/_stub/contact-deletes").status_code == 401, (
        "the deletion record is an admin endpoint"
    )
    assert admin.get(f"{mc}/_stub/contact-deletes").json()["items"][0]["status"] == "Completed"
