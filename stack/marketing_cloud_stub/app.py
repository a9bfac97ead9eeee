"""Contract stub of Salesforce Marketing Cloud's REST API (no emulator exists anywhere).

The app assembled from its API families (``create_app``) and the command line serving it
(``main``, run by ``python -m stack.marketing_cloud_stub``)."""

from __future__ import annotations

import argparse
import os

from fastapi import FastAPI

from . import admin, auth, contacts, journeys, polling, rowset, soap, upsert
from .gate import make_gate
from .state import StubState


def create_app(state: StubState) -> FastAPI:
    app = FastAPI(
        title="Marketing Cloud contract stub",
        docs_url="/_stub/docs",
        openapi_url="/_stub/openapi.json",
    )
    admin.require_admin_token(app, state)
    gate = make_gate(state)
    auth.register(app, state)
    upsert.register(app, state, gate)
    soap.register(app, state, gate)
    contacts.register(app, state, gate)
    journeys.register(app, state, gate)
    rowset.register(app, state, gate)
    polling.register(app, state, gate)
    admin.register(app, state)
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="marketing_cloud_stub.py", description=__doc__.splitlines()[0]
    )
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
