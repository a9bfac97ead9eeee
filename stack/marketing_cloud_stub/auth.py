"""The OAuth2 token endpoint: ``POST /v2/token`` (client credentials)."""

from __future__ import annotations

import secrets
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .state import StubState


def register(app: FastAPI, state: StubState) -> None:
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
