"""Polling an accepted async request: ``GET /data/v1/async/{requestId}/status`` and
``/results``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse

from .gate import Gate, error
from .state import StubState


def register(app: FastAPI, state: StubState, gate: Gate) -> None:
    def gated_request(request_id: str, authorization: str | None) -> dict[str, Any] | JSONResponse:
        """The accepted request, or the answer refusing the call (429, 401 or 404)."""
        if refused := gate(authorization):
            return refused
        found = state.requests.get(request_id)
        return found if found is not None else error(404, f"Request {request_id} not found", 10004)

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
