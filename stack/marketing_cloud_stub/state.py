"""Everything the stub remembers (``StubState``), and how accepted requests, row deletes and
contact deletes are carried out."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Any

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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
            # Rowset pages served: filtered by one key, or of the whole data extension.
            "rowset_filtered_pages": 0,
            "rowset_full_pages": 0,
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
