"""Contract stub of Salesforce Marketing Cloud's REST API (no emulator exists anywhere).

It follows the published contract the pipeline depends on:

- ``POST /v2/token``: OAuth2 client credentials; tokens expire after ``token_ttl_s``.
- ``PUT /data/v1/async/dataextensions/key:{key}/rows`` with ``{"items": [...]}``: async upsert,
  ``202`` with a ``requestId``; more than 32,000 rows in one request is refused with ``400``.
- ``GET /data/v1/async/{requestId}/status`` and ``/results``: polling; a request completes
  ``processing_delay_s`` after it was accepted, and
  each row gets ``OK`` or ``Error`` with a message.
- ``POST /interaction/v1/events``: a journey's entry event for one contact (``ContactKey``,
  ``EventDefinitionKey``, ``Data``), ``201`` with an ``eventInstanceId``. Like the service, it
  does not deduplicate: whether a contact may enter twice is the journey's re-entry setting.
- ``POST /interaction/v1/async/events``: the same for up to 100 contacts at once
  (``eventDefinitionKey``, ``members: [{contactKey, data}]``); more is refused with 400.
- ``GET /data/v1/customobjectdata/key/{key}/rowset``: a data extension's rows, paged
  (``$page``, ``$pageSize`` up to 2,500), optionally ``$filter=<Field> eq '<value>'``; field names
  come back in lower case and values as strings, as the service returns them.
- A data extension's fields may declare ``max_length`` (``PUT /_stub/dataextensions/{key}``):
  a longer value fails that row with error 10003, as the service does for a Text(n) field.
- ``POST /Service.asmx`` (the SOAP API, ``soap_instance_url``) with a ``DeleteRequest`` of
  ``DataExtensionObject`` items (``CustomerKey``, ``Keys/Key/Name,Value``): the data extension's
  rows deleted by primary key, the token in the ``fueloauth`` header element. One ``Results`` per
  object (``StatusCode`` OK, or Error with "Row not found" for a key no row has) and an
  ``OverallStatus``. Marketing Cloud publishes no REST call that deletes data-extension rows; the
  service answers a bad token with a SOAP fault (HTTP 500), the stub with the same fault and 401.
- ``POST /contacts/v1/contacts/actions/delete?type=keys`` (``values``, ``DeleteOperationType``
  ``ContactAndAttributes``): the contact delete used for privacy requests, asynchronous; ``200``
  with ``operationInitiated`` and an ``operationID``. ``GET
  /contacts/v1/contacts/actions/delete/status?operationID=`` follows it (``operation.status``
  ``PendingProcessing`` then ``Completed``, ``processing_delay_s`` after the request; the service
  suppresses the contact for days first). Completed, the contact is gone: its rows (by primary key)
  in every data extension and its journey entries.
- More than ``rate_per_s`` API calls in a second, or any call while throttling is forced, is
  answered ``429`` with error code 50100 and ``Retry-After``.

It keeps what it accepted so tests can read it back under ``/_stub/`` (local use only: the stub
binds 127.0.0.1). Those admin endpoints (settings, reset, counters, rows, journey events, data
extension definitions) hold personal data and change the stub's behaviour, so each call needs the
admin token in the ``X-Stub-Token`` header (else ``401``); only ``/_stub/health`` and the API docs
are open. The published endpoints above keep their OAuth behaviour. Credentials and the admin
token come from the environment (``MC_STUB_CLIENT_ID``, ``MC_STUB_CLIENT_SECRET``,
``MC_STUB_ADMIN_TOKEN``), never from code.

Run: ``python -m stack.marketing_cloud_stub --port 18090``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response

MAX_ROWS_PER_ASYNC_REQUEST = 32_000
THROTTLE_ERROR_CODE = 50100
MAX_JOURNEY_MEMBERS = 100
MAX_ROWSET_PAGE = 2_500
_FILTER = re.compile(r"(\w+) eq '([^']*)'")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PARTNER_API = "http://exacttarget.com/wsdl/partnerAPI"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CONTACT_DELETE_TYPES = ("ContactAndAttributes",)  # AttributesOnly: "reserved for future use"


class StubState:
    """Everything the stub remembers; one lock, since handlers run in a thread pool."""

    def __init__(
        self, client_id: str, client_secret: str, primary_key: list[str], admin_token: str
    ):
        if not admin_token:
            raise ValueError("the stub's admin endpoints need a token")
        self.lock = threading.Lock()
        self.client_id = client_id
        self.client_secret = client_secret
        self.admin_token = admin_token
        self.default_primary_key = primary_key
        self.settings = {
            "token_ttl_s": 1080.0,
            "rate_per_s": 200.0,
            "processing_delay_s": 0.2,
            "throttle_until": 0.0,
            "retry_after_s": 1,
        }
        self.reset()

    def reset(self) -> None:
        self.tokens: dict[str, float] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, dict[tuple, dict[str, Any]]] = {}
        self.primary_keys: dict[str, list[str]] = {}
        self.max_lengths: dict[str, dict[str, int]] = {}
        self.journey_events: list[dict[str, Any]] = []
        self.calls: deque[float] = deque()
        self.contact_deletes: dict[int, dict[str, Any]] = {}
        self.counters = {
            "tokens_issued": 0,
            "throttled": 0,
            "upsert_requests": 0,
            "rows_received": 0,
            "unauthorized": 0,
            "journey_events": 0,
            "rows_deleted": 0,
            "contact_delete_requests": 0,
            "contacts_deleted": 0,
        }

    # -- processing -------------------------------------------------------------------------
    def settle(self, now: float) -> None:
        """Completes every accepted request whose processing time has come."""
        for request in self.requests.values():
            if request["status"] == "Pending" and now >= request["due"]:
                self._process(request)
        for operation in self.contact_deletes.values():
            if operation["status"] == "PendingProcessing" and now >= operation["due"]:
                self._delete_contacts(operation)

    def _delete_contacts(self, operation: dict[str, Any]) -> None:
        """A contact delete carried out: the contacts'
        rows (by primary key) and journey entries gone."""
        keys = set(operation["keys"])
        for table in self.rows.values():
            for pk in [pk for pk in table if len(pk) == 1 and pk[0] in keys]:
                del table[pk]
        self.journey_events = [e for e in self.journey_events if e["ContactKey"] not in keys]
        operation.update(status="Completed", completed_at=time.time())
        self.counters["contacts_deleted"] += len(keys)

    def delete_rows(self, key: str, wanted: list[dict[str, str]]) -> list[tuple[str, str]]:
        """Rows of one data extension deleted by primary key (each ``{field: value}``): (StatusCode,
        StatusMessage) each."""
        self.settle(time.time())
        primary_key = self.primary_keys.get(key, self.default_primary_key)
        table = self.rows.get(key, {})
        out = []
        for given in wanted:
            lowered = {k.lower(): v for k, v in given.items()}
            if sorted(lowered) != sorted(f.lower() for f in primary_key):
                out.append(
                    (
                        "Error",
                        f"The keys given must be the primary key fields {', '.join(primary_key)}",
                    )
                )
                continue
            pk = tuple(str(lowered[f.lower()]) for f in primary_key)
            if table.pop(pk, None) is None:
                out.append(("Error", "Row not found for the given primary key"))
            else:
                self.counters["rows_deleted"] += 1
                out.append(("OK", "Deleted DataExtensionObject"))
        return out

    def _process(self, request: dict[str, Any]) -> None:
        key = request["data_extension"]
        primary_key = self.primary_keys.get(key, self.default_primary_key)
        table = self.rows.setdefault(key, {})
        limits = self.max_lengths.get(key, {})
        results = []
        for item in request.pop("items"):
            missing = [field for field in primary_key if item.get(field) in (None, "")]
            email = item.get("EmailAddress")
            identifiers = [{"key": f, "value": item.get(f)} for f in primary_key]
            too_long = [
                f for f, n in limits.items() if item.get(f) is not None and len(str(item[f])) > n
            ]
            if missing:
                results.append(
                    {
                        "status": "Error",
                        "errorCode": 10001,
                        "message": f"Primary key field(s) {', '.join(missing)} missing",
                        "identifiers": identifiers,
                    }
                )
            elif too_long:
                f = too_long[0]
                results.append(
                    {
                        "status": "Error",
                        "errorCode": 10003,
                        "message": f"Value for field {f} exceeds its maximum length of {limits[f]}",
                        "identifiers": identifiers,
                    }
                )
            elif email is not None and not _EMAIL.match(str(email)):
                results.append(
                    {
                        "status": "Error",
                        "errorCode": 10002,
                        "message": "Invalid email address in field EmailAddress",
                        "identifiers": identifiers,
                    }
                )
            else:
                pk = tuple(str(item[f]) for f in primary_key)
                held = table.get(pk, {})
                changed = not held or any(held.get(k) != v for k, v in item.items())
                # _written_at (read-back only) moves when the row's content changes, not on a
                # same-content upsert.
                table[pk] = {
                    **held,
                    **item,
                    "_written_at": time.time() if changed else held["_written_at"],
                }
                results.append(
                    {"status": "OK", "errorCode": None, "message": None, "identifiers": identifiers}
                )
        request["results"] = results
        request["status"] = "Complete"
        request["completed_at"] = time.time()


ADMIN_PREFIX = "/_stub/"
ADMIN_TOKEN_HEADER = "X-Stub-Token"
OPEN_ADMIN_PATHS = frozenset(
    {"/_stub/health", "/_stub/docs", "/_stub/openapi.json", "/_stub/docs/oauth2-redirect"}
)


def create_app(state: StubState) -> FastAPI:
    app = FastAPI(
        title="Marketing Cloud contract stub",
        docs_url="/_stub/docs",
        openapi_url="/_stub/openapi.json",
    )

    @app.middleware("http")
    async def admin_token_required(request: Request, call_next):
        """Every ``/_stub/`` endpoint but health and docs: the admin token, or 401."""
        path = request.url.path
        if path.startswith(ADMIN_PREFIX) and path not in OPEN_ADMIN_PATHS:
            given = request.headers.get(ADMIN_TOKEN_HEADER, "")
            if not secrets.compare_digest(given.encode(), state.admin_token.encode()):
                return JSONResponse(
                    {
                        "message": f"The stub's admin endpoints need the {ADMIN_TOKEN_HEADER} "
                        "header (MARKETING_CLOUD_STUB_TOKEN).",
                        "errorcode": 0,
                        "documentation": "",
                    },
                    status_code=401,
                )
        return await call_next(request)

    def error(
        status: int, message: str, errorcode: int = 0, headers: dict | None = None
    ) -> JSONResponse:
        return JSONResponse(
            {"message": message, "errorcode": errorcode, "documentation": ""},
            status_code=status,
            headers=headers,
        )

    def gate(authorization: str | None) -> JSONResponse | None:
        """Throttling first (as the service does), then the bearer token."""
        now = time.time()
        s = state.settings
        calls = state.calls
        while calls and calls[0] <= now - 1.0:
            calls.popleft()
        if now < s["throttle_until"] or (s["rate_per_s"] > 0 and len(calls) >= s["rate_per_s"]):
            state.counters["throttled"] += 1
            retry_after = (
                max(1, round(s["throttle_until"] - now))
                if now < s["throttle_until"]
                else int(s["retry_after_s"])
            )
            return error(
                429, "Too Many Requests", THROTTLE_ERROR_CODE, {"Retry-After": str(retry_after)}
            )
        calls.append(now)
        token = (authorization or "").removeprefix("Bearer ").strip()
        expires = state.tokens.get(token)
        if not token or expires is None or expires <= now:
            state.counters["unauthorized"] += 1
            return error(401, "Not Authorized", 0)
        state.settle(now)
        return None

    @app.post("/v2/token")
    async def token(request: Request) -> JSONResponse:
        body = await request.json()
        with state.lock:
            if body.get("grant_type") != "client_credentials":
                return JSONResponse(
                    {
                        "error": "unsupported_grant_type",
                        "error_description": "Use client_credentials.",
                    },
                    status_code=400,
                )
            if not (
                secrets.compare_digest(str(body.get("client_id", "")), state.client_id)
                and secrets.compare_digest(str(body.get("client_secret", "")), state.client_secret)
            ):
                return JSONResponse(
                    {
                        "error": "invalid_client",
                        "error_description": "Client authentication failed.",
                    },
                    status_code=401,
                )
            ttl = state.settings["token_ttl_s"]
            access_token = secrets.token_urlsafe(32)
            state.tokens[access_token] = time.time() + ttl
            state.counters["tokens_issued"] += 1
            base = str(request.base_url)
            return JSONResponse(
                {
                    "access_token": access_token,
                    "token_type": "Bearer",
                    "expires_in": int(ttl),
                    "scope": "data_extensions_read data_extensions_write journeys_execute",
                    "rest_instance_url": base,
                    "soap_instance_url": base,
                }
            )

    @app.put("/data/v1/async/dataextensions/key:{key}/rows")
    async def upsert_rows(
        key: str, request: Request, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        body = await request.json()
        with state.lock:
            if refused := gate(authorization):
                return refused
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list) or not items:
                return error(400, "The request body must contain a non-empty 'items' array.", 10000)
            if len(items) > MAX_ROWS_PER_ASYNC_REQUEST:
                return error(
                    400,
                    f"The request contains {len(items)} rows; at most {MAX_ROWS_PER_ASYNC_REQUEST} "
                    "rows are accepted per request.",
                    10000,
                )
            request_id = str(uuid.uuid4())
            now = time.time()
            state.requests[request_id] = {
                "data_extension": key,
                "items": items,
                "status": "Pending",
                "received_at": now,
                "due": now + state.settings["processing_delay_s"],
            }
            state.counters["upsert_requests"] += 1
            state.counters["rows_received"] += len(items)
            return JSONResponse({"requestId": request_id, "resultMessages": []}, status_code=202)

    def soap_response(body: str, status: int = 200) -> Response:
        envelope = (
            '<?xml version="1.0" encoding="utf-8"?><soap:Envelope '
            'xmlns:soap="http://www.w3.org/2003/05/soap-envelope" '
            f'xmlns:xsi="{XSI}"><soap:Body>{body}</soap:Body></soap:Envelope>'
        )
        return Response(
            envelope, status_code=status, media_type="application/soap+xml; charset=utf-8"
        )

    def soap_fault(message: str, status: int) -> Response:
        return soap_response(
            "<soap:Fault><soap:Code><soap:Value>soap:Sender</soap:Value></soap:Code>"
            '<soap:Reason><soap:Text xml:lang="en">'
            f"{escape(message)}</soap:Text></soap:Reason></soap:Fault>",
            status,
        )

    @app.post("/Service.asmx")
    async def soap(request: Request) -> Response:
        """The SOAP API's Delete of data-extension rows (the only SOAP call the pipeline makes)."""
        try:
            root = ET.fromstring(await request.body())
        except ET.ParseError:
            return soap_fault("The request is not well-formed XML.", 400)
        token = next(
            (
                e.text or ""
                for e in root.iter()
                if e.tag.endswith("}fueloauth") or e.tag == "fueloauth"
            ),
            "",
        )
        delete = next((e for e in root.iter() if e.tag == f"{{{PARTNER_API}}}DeleteRequest"), None)
        with state.lock:
            if (refused := gate(f"Bearer {token}")) is not None:
                if refused.status_code == 401:
                    return soap_fault(
                        "Security requirements are not satisfied because the security token is "
                        "missing, invalid or expired.",
                        401,
                    )
                return refused
            if delete is None:
                return soap_fault("This stub answers DeleteRequest only.", 400)
            results = []
            for ordinal, obj in enumerate(delete.findall(f"{{{PARTNER_API}}}Objects")):
                kind = obj.get(f"{{{XSI}}}type", "")
                customer_key = obj.findtext(f"{{{PARTNER_API}}}CustomerKey")
                keys = {
                    k.findtext(f"{{{PARTNER_API}}}Name"): k.findtext(f"{{{PARTNER_API}}}Value")
                    or ""
                    for k in obj.iterfind(f"{{{PARTNER_API}}}Keys/{{{PARTNER_API}}}Key")
                }
                if kind.split(":")[-1] != "DataExtensionObject" or not customer_key or not keys:
                    code, message = (
                        "Error",
                        "Objects must be DataExtensionObject with a CustomerKey and Keys",
                    )
                else:
                    code, message = state.delete_rows(customer_key, [keys])[0]
                results.append(
                    f"<Results><StatusCode>{code}</StatusCode><StatusMessage>{escape(message)}</StatusMessage>"
                    f"<OrdinalID>{ordinal}</OrdinalID></Results>"
                )
            if not results:
                return soap_fault("A DeleteRequest needs at least one Objects element.", 400)
            ok = sum(1 for r in results if "<StatusCode>OK<" in r)
            overall = "OK" if ok == len(results) else "Error" if ok == 0 else "Has Errors"
            return soap_response(
                "<DeleteResponse "
                f'xmlns="{PARTNER_API}">{"".join(results)}<RequestID>{uuid.uuid4()}</RequestID>'
                f"<OverallStatus>{overall}</OverallStatus></DeleteResponse>"
            )

    @app.post("/contacts/v1/contacts/actions/delete")
    async def delete_contacts(
        request: Request, type: str = "", authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        body = await request.json()
        with state.lock:
            if refused := gate(authorization):
                return refused
            if type != "keys":
                return error(400, "This stub deletes contacts by key only (type=keys).", 10000)
            values = body.get("values") if isinstance(body, dict) else None
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, str) and v for v in values)
            ):
                return error(400, "values must be a non-empty array of contact keys.", 10000)
            if body.get("DeleteOperationType") not in CONTACT_DELETE_TYPES:
                return error(
                    400,
                    f"DeleteOperationType must be one of {', '.join(CONTACT_DELETE_TYPES)}.",
                    10000,
                )
            operation_id = len(state.contact_deletes) + 1
            now = time.time()
            state.contact_deletes[operation_id] = {
                "operationID": operation_id,
                "keys": list(values),
                "deleteType": body["DeleteOperationType"],
                "status": "PendingProcessing",
                "received_at": now,
                "due": now + state.settings["processing_delay_s"],
            }
            state.counters["contact_delete_requests"] += 1
            return JSONResponse(
                {
                    "operationInitiated": True,
                    "operationID": operation_id,
                    "requestServiceMessageID": str(uuid.uuid4()),
                    "responseDateTime": datetime.now(UTC).isoformat(),
                    "hasErrors": False,
                    "resultMessages": [],
                    "serviceMessageID": str(uuid.uuid4()),
                }
            )

    @app.get("/contacts/v1/contacts/actions/delete/status")
    def contact_delete_status(
        operationID: int = 0, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        with state.lock:
            if refused := gate(authorization):
                return refused
            operation = state.contact_deletes.get(operationID)
            if operation is None:
                return error(404, f"Operation {operationID} not found", 10004)
            return JSONResponse(
                {
                    "operation": {
                        "operationID": operationID,
                        "deleteType": operation["deleteType"],
                        "status": operation["status"],
                        "expectedListCount": len(operation["keys"]),
                        "retryCount": 0,
                    },
                    "requestServiceMessageID": str(uuid.uuid4()),
                    "resultMessages": [],
                    "serviceMessageID": str(uuid.uuid4()),
                }
            )

    @app.post("/interaction/v1/events")
    async def fire_event(
        request: Request, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        body = await request.json()
        with state.lock:
            if refused := gate(authorization):
                return refused
            if (
                not isinstance(body, dict)
                or not body.get("ContactKey")
                or not body.get("EventDefinitionKey")
            ):
                return error(400, "ContactKey and EventDefinitionKey are required.", 10000)
            event_id = str(uuid.uuid4())
            state.journey_events.append(
                {
                    "eventInstanceId": event_id,
                    "ContactKey": body["ContactKey"],
                    "EventDefinitionKey": body["EventDefinitionKey"],
                    "Data": body.get("Data") or {},
                }
            )
            state.counters["journey_events"] += 1
            return JSONResponse({"eventInstanceId": event_id}, status_code=201)

    @app.post("/interaction/v1/async/events")
    async def fire_events(
        request: Request, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        body = await request.json()
        with state.lock:
            if refused := gate(authorization):
                return refused
            members = body.get("members") if isinstance(body, dict) else None
            if not body.get("eventDefinitionKey") or not isinstance(members, list) or not members:
                return error(
                    400, "eventDefinitionKey and a non-empty members array are required.", 10000
                )
            if len(members) > MAX_JOURNEY_MEMBERS:
                return error(
                    400,
                    f"{len(members)} members; at most {MAX_JOURNEY_MEMBERS} contacts are accepted "
                    "per request.",
                    10000,
                )
            out = []
            for m in members:
                if not m.get("contactKey"):
                    out.append(
                        {
                            "contactKey": m.get("contactKey"),
                            "errorcode": 10001,
                            "message": "contactKey is required",
                        }
                    )
                    continue
                event_id = str(uuid.uuid4())
                state.journey_events.append(
                    {
                        "eventInstanceId": event_id,
                        "ContactKey": m["contactKey"],
                        "EventDefinitionKey": body["eventDefinitionKey"],
                        "Data": m.get("data") or {},
                    }
                )
                out.append({"contactKey": m["contactKey"], "eventInstanceId": event_id})
            state.counters["journey_events"] += sum(1 for m in out if "eventInstanceId" in m)
            return JSONResponse(
                {
                    "requestId": str(uuid.uuid4()),
                    "count": len(members),
                    "notQueuedCount": sum(1 for m in out if "errorcode" in m),
                    "members": out,
                },
                status_code=202,
            )

    def gated_request(request_id: str, authorization: str | None) -> dict[str, Any] | JSONResponse:
        """The accepted request, or the answer refusing the call (429, 401 or 404)."""
        if refused := gate(authorization):
            return refused
        found = state.requests.get(request_id)
        return found if found is not None else error(404, f"Request {request_id} not found", 10004)

    @app.get("/data/v1/customobjectdata/key/{key}/rowset")
    def rowset(
        key: str, request: Request, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        query = request.query_params
        page, page_size = int(query.get("$page", 1)), int(query.get("$pageSize", 2500))
        if page < 1 or not 1 <= page_size <= MAX_ROWSET_PAGE:
            return error(
                400, f"$page must be >= 1 and $pageSize between 1 and {MAX_ROWSET_PAGE}.", 10000
            )
        wanted = None
        if query.get("$filter"):
            match = _FILTER.fullmatch(query["$filter"].strip())
            if match is None:
                return error(
                    400, "Only $filter=<Field> eq '<value>' is supported by this stub.", 10000
                )
            wanted = (match.group(1).lower(), match.group(2))
        with state.lock:
            if refused := gate(authorization):
                return refused
            state.settle(time.time())
            primary_key = [
                f.lower() for f in state.primary_keys.get(key, state.default_primary_key)
            ]
            rows = []
            for row in state.rows.get(key, {}).values():
                lowered = {k.lower(): v for k, v in row.items() if not k.startswith("_")}
                if wanted is None or str(lowered.get(wanted[0])) == wanted[1]:
                    rows.append(lowered)
        start = (page - 1) * page_size
        items = [
            {
                "keys": {k: str(r[k]) for k in primary_key},
                "values": {
                    k: None if v is None else str(v) for k, v in r.items() if k not in primary_key
                },
            }
            for r in rows[start : start + page_size]
        ]
        return JSONResponse(
            {
                "customObjectKey": key,
                "page": page,
                "pageSize": page_size,
                "count": len(rows),
                "items": items,
            }
        )

    @app.get("/data/v1/async/{request_id}/status")
    def status(request_id: str, authorization: str | None = Header(default=None)) -> JSONResponse:
        with state.lock:
            found = gated_request(request_id, authorization)
            if isinstance(found, JSONResponse):
                return found
            has_errors = any(r["status"] != "OK" for r in found.get("results", []))
            return JSONResponse(
                {
                    "requestId": request_id,
                    "status": {
                        "requestStatus": found["status"],
                        "hasErrors": has_errors,
                        "pipelineType": "UPSERT",
                        "callDateTime": found["received_at"],
                        "completionDateTime": found.get("completed_at"),
                    },
                }
            )

    @app.get("/data/v1/async/{request_id}/results")
    def results(
        request_id: str,
        page: int = 1,
        pageSize: int = 1000,
        authorization: str | None = Header(default=None),
    ) -> JSONResponse:
        with state.lock:
            found = gated_request(request_id, authorization)
            if isinstance(found, JSONResponse):
                return found
            if found["status"] != "Complete":
                return error(409, "The request is still being processed", 10005)
            rows = found["results"]
            start = (page - 1) * pageSize
            return JSONResponse(
                {
                    "requestId": request_id,
                    "page": page,
                    "pageSize": pageSize,
                    "count": len(rows),
                    "items": rows[start : start + pageSize],
                }
            )

    # -- test-only endpoints ------------------------------------------------------------------
    @app.get("/_stub/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/_stub/reset")
    def reset() -> dict:
        with state.lock:
            state.reset()
        return {"reset": True}

    @app.get("/_stub/settings")
    def get_settings() -> dict:
        return state.settings

    @app.patch("/_stub/settings")
    async def patch_settings(request: Request) -> JSONResponse:
        changes = await request.json()
        with state.lock:
            unknown = set(changes) - set(state.settings) - {"throttle_for_s"}
            if unknown:
                return error(400, f"unknown settings: {sorted(unknown)}")
            if "throttle_for_s" in changes:
                state.settings["throttle_until"] = time.time() + float(
                    changes.pop("throttle_for_s")
                )
            state.settings.update({k: float(v) for k, v in changes.items()})
            return JSONResponse(state.settings)

    @app.put("/_stub/dataextensions/{key}")
    async def define_data_extension(key: str, request: Request) -> dict:
        body = await request.json()
        with state.lock:
            state.primary_keys[key] = list(body["primary_key"])
            state.max_lengths[key] = {k: int(v) for k, v in (body.get("max_length") or {}).items()}
        return {
            "key": key,
            "primary_key": state.primary_keys[key],
            "max_length": state.max_lengths[key],
        }

    @app.post("/_stub/dataextensions/{key}/lookup")
    async def lookup_rows(key: str, request: Request) -> dict:
        """The rows of these primary-key values (single-field
        keys), with when each was last written."""
        wanted = (await request.json()).get("keys", [])
        with state.lock:
            state.settle(time.time())
            table = state.rows.get(key, {})
            found = {k: table[(str(k),)] for k in wanted if (str(k),) in table}
        return {"key": key, "count": len(found), "items": list(found.values())}

    @app.get("/_stub/journey-events")
    def journey_events(event_definition_key: str | None = None) -> dict:
        with state.lock:
            items = [
                e
                for e in state.journey_events
                if event_definition_key in (None, e["EventDefinitionKey"])
            ]
        return {"count": len(items), "items": items}

    @app.get("/_stub/dataextensions/{key}/rows")
    def data_extension_rows(key: str) -> dict:
        with state.lock:
            state.settle(time.time())
            rows = list(state.rows.get(key, {}).values())
        return {"key": key, "count": len(rows), "items": rows}

    @app.get("/_stub/contact-deletes")
    def contact_deletes() -> dict:
        with state.lock:
            state.settle(time.time())
            items = [
                {k: v for k, v in op.items() if k != "due"} for op in state.contact_deletes.values()
            ]
        return {"count": len(items), "items": items}

    @app.get("/_stub/counters")
    def counters() -> dict:
        with state.lock:
            pending = sum(1 for r in state.requests.values() if r["status"] == "Pending")
            return {**state.counters, "pending_requests": pending}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    args = parser.parse_args()
    missing = [
        k
        for k in ("MC_STUB_CLIENT_ID", "MC_STUB_CLIENT_SECRET", "MC_STUB_ADMIN_TOKEN")
        if not os.environ.get(k)
    ]
    if missing:
        raise SystemExit(
            f"marketing cloud stub: set {', '.join(missing)} (the stack generates them)"
        )
    state = StubState(
        os.environ["MC_STUB_CLIENT_ID"],
        os.environ["MC_STUB_CLIENT_SECRET"],
        os.environ.get("MC_STUB_PRIMARY_KEY", "PartnerId").split(","),
        admin_token=os.environ["MC_STUB_ADMIN_TOKEN"],
    )
    uvicorn.run(
        create_app(state), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
