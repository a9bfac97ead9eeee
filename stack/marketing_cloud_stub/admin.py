"""The test-control endpoints under ``/_stub/`` (settings, reset, counters, rows, journey events,
data extension definitions) and the admin token they need."""

from __future__ import annotations

import secrets
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .gate import error
from .state import StubState

ADMIN_PREFIX = "/_stub/"
ADMIN_TOKEN_HEADER = "X-Stub-Token"
OPEN_ADMIN_PATHS = frozenset(
    {"/_stub/health", "/_stub/docs", "/_stub/openapi.json", "/_stub/docs/oauth2-redirect"}
)


def require_admin_token(app: FastAPI, state: StubState) -> None:
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


def register(app: FastAPI, state: StubState) -> None:
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
