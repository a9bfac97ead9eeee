"""A data extension's rows, paged and filtered:
``GET /data/v1/customobjectdata/key/{key}/rowset``."""

from __future__ import annotations

import re
import time

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from .gate import Gate, error
from .state import StubState

MAX_ROWSET_PAGE = 2_500
_FILTER = re.compile(r"(\w+) eq '([^']*)'")


def register(app: FastAPI, state: StubState, gate: Gate) -> None:
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
            state.counters["rowset_full_pages" if wanted is None else "rowset_filtered_pages"] += 1
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
