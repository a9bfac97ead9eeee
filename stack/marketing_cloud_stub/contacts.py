"""The contact delete for privacy requests and its status:
``/contacts/v1/contacts/actions/delete``."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from .gate import Gate, error
from .state import StubState

CONTACT_DELETE_TYPES = ("ContactAndAttributes",)  # AttributesOnly: "reserved for future use"


def register(app: FastAPI, state: StubState, gate: Gate) -> None:
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
