"""What every published call goes through: throttling first, then the bearer token (``gate``);
and the service's error answer (``error``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi.responses import JSONResponse

from .state import StubState

THROTTLE_ERROR_CODE = 50100

# gate(authorization): None when the call may go on, else the answer refusing it (429 or 401).
Gate = Callable[[str | None], JSONResponse | None]


def error(
    status: int, message: str, errorcode: int = 0, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        {"message": message, "errorcode": errorcode, "documentation": ""},
        status_code=status,
        headers=headers,
    )


def make_gate(state: StubState) -> Gate:
    def gate(authorization: str | None) -> JSONResponse | None:
        """Throttling first (as the service does), then the bearer token."""
        now = time.time()
        s = state.settings
        calls = state.calls
        while calls and calls[0] <= now - 1.0:
            calls.popleft()
        if now < s["throttle_until"] or (s["rate_per_s"] > 0 and len(calls) >= s["rate_per_s"]):
            state.counters["throttled"] += 1
            retry_after = (
                max(1, round(s["throttle_until"] - now))
                if now < s["throttle_until"]
                else int(s["retry_after_s"])
            )
            return error(
                429, "Too Many Requests", THROTTLE_ERROR_CODE, {"Retry-After": str(retry_after)}
            )
        calls.append(now)
        token = (authorization or "").removeprefix("Bearer ").strip()
        expires = state.tokens.get(token)
        if not token or expires is None or expires <= now:
            state.counters["unauthorized"] += 1
            return error(401, "Not Authorized", 0)
        state.settle(now)
        return None

    return gate
