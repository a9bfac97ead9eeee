"""A client of Salesforce Marketing Cloud's REST API, as the pipeline uses it.

- OAuth2 client credentials (``POST /v2/token``); the token is cached and renewed shortly before
  it expires, and once more if the service answers 401 anyway (a token revoked or expired early).
- Async data-extension upserts in chunks within the 32,000-row limit; polling of each request's
  status with backoff, then its per-row results (paged).
- 429 is answered by waiting ``Retry-After`` (bounded by ``max_throttle_wait_s`` in total per
  call); connection errors and 5xx by exponential backoff (tenacity).
- Journey entry events (``POST /interaction/v1/events`` for one contact,
  ``POST /interaction/v1/async/events`` for up to 100).
- Deletions: data-extension rows by primary key with the SOAP API's ``Delete`` of
  ``DataExtensionObject`` (Marketing Cloud publishes no REST call for it; the SOAP endpoint is the
  token's ``soap_instance_url``, the token travels in the ``fueloauth`` header element), and
  contacts by key with ``POST /contacts/v1/contacts/actions/delete?type=keys`` (the privacy
  request delete: asynchronous, followed with ``/contacts/v1/contacts/actions/delete/status``).

Secrets live in the Airflow connection (``marketing_cloud`` type) and in this object only; they
are never logged, and ``repr`` hides them.
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack
from xml.sax.saxutils import escape

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)


MAX_ROWS_PER_ASYNC_REQUEST = 32_000


MAX_JOURNEY_MEMBERS = 100


DELETE_OBJECTS_PER_CALL = (
    2_500  # ours: rows per SOAP Delete call (one envelope of a few hundred kB)
)


# ours: contact keys per delete request (the service queues each request as one operation)
CONTACT_KEYS_PER_DELETE = 1_000


PARTNER_API = "http://exacttarget.com/wsdl/partnerAPI"


class MarketingCloudError(RuntimeError):
    """The service refused a call for a reason waiting will not fix."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500


def unsent(exc: BaseException) -> bool:
    """The request never reached the service (no connection): sending it again cannot do anything
    twice."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def not_queued(exc: BaseException) -> bool:
    """A failed call the service certainly did not carry out: refused (4xx, throttled), never sent,
    or answered with a server error — except a gateway timeout (504), behind which it may have."""
    if isinstance(exc, MarketingCloudError) or unsent(exc):
        return True
    return (
        isinstance(exc, httpx.HTTPStatusError)
        and exc.response.status_code >= 500
        and exc.response.status_code != 504
    )


class _RequestOptions(TypedDict, total=False):
    """The ``httpx`` request options the client's calls pass through ``_request``."""

    params: Mapping[str, str | int]
    json: Any  # any JSON-serialisable body, as httpx takes it
    content: bytes
    headers: dict[str, str]


@dataclass
class MarketingCloudClient:
    """Over 200 lines on purpose: every call shares one token (and its lock), the 429/401
    handling and the retry policies, and the hook and sinks use the REST and SOAP surface as one
    object; the sections below (auth, transport, data extensions, contacts, journeys) are short."""

    auth_url: str
    rest_url: str
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    timeout_s: float = 30.0
    max_throttle_wait_s: float = 300.0
    _token: str = field(default="", repr=False)
    _expires_at: float = 0.0
    soap_url: str = ""  # the token's soap_instance_url (the REST URL until a token says)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not (self.client_id and self.client_secret):
            raise MarketingCloudError(
                "marketing cloud: the connection has no client id/secret (login/password)"
            )
        self._http = httpx.Client(timeout=self.timeout_s)
        self.tokens_fetched = 0
        self.throttled = 0

    # -- auth -------------------------------------------------------------------------------
    def token(self, force: bool = False) -> str:
        with self._lock:
            # Renew a little before expiry: a tenth of the lifetime, at most a minute.
            if force or not self._token or time.time() >= self._expires_at:
                response = self._http.post(
                    f"{self.auth_url}/v2/token",
                    json={
                        "grant_type": "client_credentials",
                        "client_id": self.client_id,
                        "client_secret": self.client_secret,
                    },
                )
                if response.status_code != 200:
                    raise MarketingCloudError(
                        f"marketing cloud: token request refused with HTTP {response.status_code}"
                    )
                body = response.json()
                lifetime = float(body.get("expires_in", 0))
                self._token = body["access_token"]
                self.soap_url = (
                    body.get("soap_instance_url") or self.soap_url or self.rest_url
                ).rstrip("/")
                self._expires_at = time.time() + lifetime - min(60.0, lifetime / 10)
                self.tokens_fetched += 1
            return self._token

    # -- transport --------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Unpack[_RequestOptions]) -> httpx.Response:
        waited = 0.0
        renewed = False
        while True:
            url = path if path.startswith(("http://", "https://")) else f"{self.rest_url}{path}"
            headers = {"Authorization": f"Bearer {self.token()}"} | kwargs.get("headers", {})
            response = self._http.request(method, url, **(kwargs | {"headers": headers}))
            if response.status_code == 429:
                delay = float(response.headers.get("Retry-After") or 1)
                if waited + delay > self.max_throttle_wait_s:
                    raise MarketingCloudError(
                        f"marketing cloud: still throttled (429) after waiting {waited:.0f} s "
                        f"on {method} {path.split('?')[0]}"
                    )
                self.throttled += 1
                log.info(
                    "marketing cloud: throttled (429), waiting %.0f s as Retry-After asks", delay
                )
                time.sleep(delay)
                waited += delay
                continue
            if response.status_code == 401 and not renewed:
                self.token(force=True)  # expired or revoked early: renew once, then retry
                renewed = True
                continue
            if response.status_code >= 500:
                response.raise_for_status()
            return response

    _call = retry(
        retry=retry_if_exception(_transient),
        wait=wait_exponential(multiplier=0.5, max=20),
        stop=stop_after_attempt(8),
        reraise=True,
    )(_request)
    # Journey entry events are not idempotent: a timeout or a 5xx may hide an event queued, so they
    # are sent again only when the request never left (429 and 401 are refusals: waited out above).
    _call_once = retry(
        retry=retry_if_exception(unsent),
        wait=wait_exponential(multiplier=0.5, max=20),
        stop=stop_after_attempt(8),
        reraise=True,
    )(_request)

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                message = response.json().get("message", "")
            except ValueError:
                message = response.text[:200]
            raise MarketingCloudError(
                f"marketing cloud: {what} refused with HTTP {response.status_code}: {message}"
            )
        body: dict[str, Any] = response.json()
        return body

    # -- data extensions --------------------------------------------------------------------
    def upsert_async(
        self, data_extension: str, rows: list[dict[str, Any]], chunk_rows: int = 10_000
    ) -> list[str]:
        """Sends the rows in chunks (≤ 32,000 each); returns the request ids, in order."""
        chunk_rows = max(1, min(chunk_rows, MAX_ROWS_PER_ASYNC_REQUEST))
        ids: list[str] = []
        for start in range(0, len(rows), chunk_rows):
            response = self._call(
                "PUT",
                f"/data/v1/async/dataextensions/key:{data_extension}/rows",
                json={"items": rows[start : start + chunk_rows]},
            )
            ids.append(self._json(response, f"upsert into {data_extension}")["requestId"])
        return ids

    def wait(self, request_id: str, timeout_s: float = 600.0) -> dict[str, Any]:
        """Polls a request's status with backoff until it completes; returns the status."""
        delay, deadline = 0.2, time.monotonic() + timeout_s
        while True:
            status: dict[str, Any] = self._json(
                self._call("GET", f"/data/v1/async/{request_id}/status"), f"status of {request_id}"
            )["status"]
            if status.get("requestStatus") == "Complete":
                return status
            if status.get("requestStatus") in ("Error", "Failed"):
                raise MarketingCloudError(
                    f"marketing cloud: request {request_id} ended as {status.get('requestStatus')}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"marketing cloud: request {request_id} not complete after {timeout_s:.0f} s"
                )
            time.sleep(delay)
            delay = min(delay * 1.6, 5.0)

    def results(self, request_id: str, page_size: int = 5_000) -> list[dict[str, Any]]:
        """Every row's result of a completed request (status, errorCode, message, identifiers)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self._json(
                self._call(
                    "GET",
                    f"/data/v1/async/{request_id}/results",
                    params={"page": page, "pageSize": page_size},
                ),
                f"results of {request_id}",
            )
            out.extend(body.get("items", []))
            if len(out) >= int(body.get("count", 0)) or not body.get("items"):
                return out
            page += 1

    def rowset(
        self, data_extension: str, where: tuple[str, str] | None = None, page_size: int = 2_500
    ) -> list[dict[str, Any]]:
        """A data extension's rows as the service holds them now (field names in lower case, values
        as strings), every page; ``where=(field, value)`` keeps the rows whose field equals
        value."""
        params: dict[str, str | int] = {"$pageSize": page_size} | (
            {"$filter": f"{where[0]} eq '{where[1]}'"} if where else {}
        )
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self._json(
                self._call(
                    "GET",
                    f"/data/v1/customobjectdata/key/{data_extension}/rowset",
                    params=params | {"$page": page},
                ),
                f"rows of {data_extension}",
            )
            out.extend(
                item.get("keys", {}) | item.get("values", {}) for item in body.get("items", [])
            )
            if len(out) >= int(body.get("count", 0)) or not body.get("items"):
                return out
            page += 1

    def delete_rows(
        self, data_extension: str, keys: list[str], key_field: str = "PartnerId"
    ) -> dict[str, str | None]:
        """Deletes the data extension's rows of these primary-key values (SOAP ``Delete`` of
        ``DataExtensionObject``); key → None when the row is gone (deleted now, or there was none),
        else the service's message. Safe to send again: a row already gone is not an error."""
        out: dict[str, str | None] = {}
        for start in range(0, len(keys), DELETE_OBJECTS_PER_CALL):
            chunk = list(keys[start : start + DELETE_OBJECTS_PER_CALL])
            objects = "".join(
                '<Objects xsi:type="DataExtensionObject">'
                f"<CustomerKey>{escape(data_extension)}</CustomerKey><Keys><Key>"
                f"<Name>{escape(key_field)}</Name><Value>{escape(str(k))}</Value>"
                "</Key></Keys></Objects>"
                for k in chunk
            )
            root = self._soap(
                "Delete",
                f'<DeleteRequest xmlns="{PARTNER_API}"><Options/>{objects}</DeleteRequest>',
                f"delete from {data_extension}",
            )
            results = sorted(
                root.iter(f"{{{PARTNER_API}}}Results"),
                key=lambda r: int(r.findtext(f"{{{PARTNER_API}}}OrdinalID") or 0),
            )
            if len(results) != len(chunk):
                raise MarketingCloudError(
                    f"marketing cloud: delete from {data_extension} answered {len(results)} "
                    f"results for {len(chunk)} rows"
                )
            for key, result in zip(chunk, results, strict=True):  # lengths checked just above
                code, message = (
                    result.findtext(f"{{{PARTNER_API}}}StatusCode"),
                    result.findtext(f"{{{PARTNER_API}}}StatusMessage") or "",
                )
                out[key] = (
                    None if code == "OK" or "not found" in message.lower() else f"{code}: {message}"
                )
        return out

    def _soap(self, action: str, body: str, what: str) -> ET.Element:
        """One SOAP call; the token is in the envelope, so a refused token is renewed and the call
        rebuilt once."""
        for attempt in (1, 2):
            token = self.token(force=attempt == 2)  # also learns soap_instance_url
            url = f"{self.soap_url}/Service.asmx"
            envelope = (
                '<?xml version="1.0" encoding="utf-8"?>'
                '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
                'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header>'
                f'<a:Action s:mustUnderstand="1">{action}</a:Action>'
                f'<a:To s:mustUnderstand="1">{escape(url)}</a:To>'
                f'<fueloauth xmlns="http://exacttarget.com">{escape(token)}</fueloauth></s:Header>'
                '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
                f"{body}</s:Body></s:Envelope>"
            )
            response = self._call(
                "POST",
                url,
                content=envelope.encode(),
                headers={
                    "Content-Type": "application/soap+xml; charset=utf-8",
                    "SOAPAction": action,
                },
            )
            if response.status_code != 401:
                break
        if response.status_code >= 400:
            raise MarketingCloudError(
                f"marketing cloud: {what} refused with HTTP {response.status_code}"
            )
        return ET.fromstring(response.content)

    # -- contacts ---------------------------------------------------------------------------
    def delete_contacts(self, contact_keys: list[str]) -> list[int]:
        """Deletes contacts by key from the whole account (``ContactAndAttributes``: the privacy
        request delete); returns the operation ids to follow with ``contact_delete_status``."""
        ids: list[int] = []
        for start in range(0, len(contact_keys), CONTACT_KEYS_PER_DELETE):
            chunk = list(contact_keys[start : start + CONTACT_KEYS_PER_DELETE])
            response = self._call(
                "POST",
                "/contacts/v1/contacts/actions/delete",
                params={"type": "keys"},
                json={"values": chunk, "DeleteOperationType": "ContactAndAttributes"},
            )
            body = self._json(response, "contact delete")
            if not body.get("operationInitiated"):
                raise MarketingCloudError(
                    f"marketing cloud: contact delete not initiated: {body.get('resultMessages')}"
                )
            ids.append(int(body["operationID"]))
        return ids

    def contact_delete_status(self, operation_id: int) -> str:
        """The status of a contact delete operation (e.g. PendingProcessing, Completed)."""
        response = self._call(
            "GET",
            "/contacts/v1/contacts/actions/delete/status",
            params={"operationID": operation_id},
        )
        return str(self._json(response, f"contact delete {operation_id}")["operation"]["status"])

    # -- journeys ---------------------------------------------------------------------------
    def fire_entry_event(
        self, event_definition_key: str, contact_key: str, data: Mapping[str, Any]
    ) -> str:
        response = self._call_once(
            "POST",
            "/interaction/v1/events",
            json={
                "ContactKey": contact_key,
                "EventDefinitionKey": event_definition_key,
                "Data": data,
            },
        )
        event_id: str = self._json(response, f"entry event {event_definition_key}")[
            "eventInstanceId"
        ]
        return event_id

    def fire_entry_events(
        self, event_definition_key: str, members: list[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Journey entry for many contacts, 100 per request (the API's limit); one result per
        member, in order (``eventInstanceId``, or ``errorcode`` and ``message``)."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(members), MAX_JOURNEY_MEMBERS):
            chunk = [
                {"contactKey": key, "data": data}
                for key, data in members[start : start + MAX_JOURNEY_MEMBERS]
            ]
            response = self._call_once(
                "POST",
                "/interaction/v1/async/events",
                json={"eventDefinitionKey": event_definition_key, "members": chunk},
            )
            out.extend(self._json(response, f"entry events {event_definition_key}")["members"])
        return out

    def close(self) -> None:
        self._http.close()
