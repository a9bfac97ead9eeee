"""Journey entry events, one contact or up to 100 at once: ``/interaction/v1/events`` and
``/interaction/v1/async/events``."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from .gate import Gate, error
from .state import StubState

MAX_JOURNEY_MEMBERS = 100


def register(app: FastAPI, state: StubState, gate: Gate) -> None:
    @app.post("/interaction/v1/events")
    async def fire_event(
        request: Request, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        body = await request.json()
        with state.lock:
            if refused := gate(authorization):
                return refused
            if (
                not isinstance(body, dict)
                or not body.get("ContactKey")
                or not body.get("EventDefinitionKey")
            ):
                return error(400, "ContactKey and EventDefinitionKey are required.", 10000)
            event_id = str(uuid.uuid4())
            state.journey_events.append(
                {
                    "eventInstanceId": event_id,
                    "ContactKey": body["ContactKey"],
                    "EventDefinitionKey": body["EventDefinitionKey"],
                    "Data": body.get("Data") or {},
                }
            )
            state.counters["journey_events"] += 1
            return JSONResponse({"eventInstanceId": event_id}, status_code=201)

    @app.post("/interaction/v1/async/events")
    async def fire_events(
        request: Request, authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        body = await request.json()
        with state.lock:
            if refused := gate(authorization):
                return refused
            members = body.get("members") if isinstance(body, dict) else None
            if not body.get("eventDefinitionKey") or not isinstance(members, list) or not members:
                return error(
                    400, "eventDefinitionKey and a non-empty members array are required.", 10000
                )
            if len(members) > MAX_JOURNEY_MEMBERS:
                return error(
                    400,
                    f"{len(members)} members; at most {MAX_JOURNEY_MEMBERS} contacts are accepted "
                    "per request.",
                    10000,
                )
            out = []
            for m in members:
                if not m.get("contactKey"):
                    out.append(
                        {
                            "contactKey": m.get("contactKey"),
                            "errorcode": 10001,
                            "message": "contactKey is required",
                        }
                    )
                    continue
                event_id = str(uuid.uuid4())
                state.journey_events.append(
                    {
                        "eventInstanceId": event_id,
                        "ContactKey": m["contactKey"],
                        "EventDefinitionKey": body["eventDefinitionKey"],
                        "Data": m.get("data") or {},
                    }
                )
                out.append({"contactKey": m["contactKey"], "eventInstanceId": event_id})
            state.counters["journey_events"] += sum(1 for m in out if "eventInstanceId" in m)
            return JSONResponse(
                {
                    "requestId": str(uuid.uuid4()),
                    "count": len(members),
                    "notQueuedCount": sum(1 for m in out if "errorcode" in m),
                    "members": out,
                },
                status_code=202,
            )
