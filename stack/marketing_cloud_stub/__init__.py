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

One module per API family, each registering its endpoints on the app: ``auth`` (token),
``upsert`` (async upsert), ``soap`` (SOAP delete), ``contacts`` (contact delete), ``journeys``
(entry events), ``rowset`` (rows read back), ``polling`` (async status and results) and ``admin``
(``/_stub/``, its token); ``gate`` (throttling, the bearer token, errors), ``state`` (what the
stub remembers), ``app`` (``create_app`` and ``main``).
"""

from .admin import ADMIN_PREFIX, ADMIN_TOKEN_HEADER, OPEN_ADMIN_PATHS
from .app import create_app, main
from .contacts import CONTACT_DELETE_TYPES
from .gate import THROTTLE_ERROR_CODE
from .journeys import MAX_JOURNEY_MEMBERS
from .rowset import MAX_ROWSET_PAGE
from .soap import PARTNER_API, XSI
from .state import StubState
from .upsert import MAX_ROWS_PER_ASYNC_REQUEST

__all__ = [
    "ADMIN_PREFIX",
    "ADMIN_TOKEN_HEADER",
    "CONTACT_DELETE_TYPES",
    "MAX_JOURNEY_MEMBERS",
    "MAX_ROWSET_PAGE",
    "MAX_ROWS_PER_ASYNC_REQUEST",
    "OPEN_ADMIN_PATHS",
    "PARTNER_API",
    "THROTTLE_ERROR_CODE",
    "XSI",
    "StubState",
    "create_app",
    "main",
]
