"""The async upsert of data-extension rows:
``PUT /data/v1/async/dataextensions/key:{key}/rows``."""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from .gate import Gate, error
from .state import StubState

MAX_ROWS_PER_ASYNC_REQUEST = 32_000


def register(app: FastAPI, state: StubState, gate: Gate) -> None:
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
