"""``POST /api/requeue``: starts ``requeue_quarantine`` with the caller's own token through
Airflow's REST API, so Airflow checks and audits the run as that user's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from enrollment_airflow.operator_page.access import REQUEUE_DAG, Viewer, _token, may_requeue
from enrollment_airflow.operator_page.cache import clients

if TYPE_CHECKING:
    import httpx

router = APIRouter()


class Requeue(BaseModel):
    """The ``requeue_quarantine`` DAG's params (its own checks decide; these only shape them)."""

    region: str = "ALL"
    since: str = ""
    until: str = ""
    reasons: list[str] = Field(default_factory=list, max_length=50)
    dry_run: bool = True


@router.post("/api/requeue")
async def api_requeue(request: Request, user: Viewer) -> JSONResponse:
    """Starts ``requeue_quarantine`` with the caller's own token through Airflow's REST API."""
    if not may_requeue(user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"not allowed to start runs of {REQUEUE_DAG}"
        )
    # A JSON body only (a cross-site form cannot send one without CORS), from this origin when
    # the browser says.
    if not request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the request as application/json"
        )
    origin = request.headers.get("origin")
    if origin and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin request refused")
    try:
        body = Requeue.model_validate(await request.json())
    except (ValidationError, ValueError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, f"invalid request: {exc}"
        ) from None
    config = clients()[0]
    region = body.region.strip().upper() or "ALL"
    if region != "ALL" and region not in {r.code for r in config.regions}:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"unknown region {body.region!r}")
    conf = {
        "region": region,
        "since": body.since.strip(),
        "until": body.until.strip(),
        "reasons": [r.strip() for r in body.reasons if r.strip()],
        "dry_run": body.dry_run,
    }
    return JSONResponse(await trigger(request, conf), status_code=status.HTTP_201_CREATED)


def api_base() -> str:
    """Airflow's REST API as this api-server reaches itself: ``[api] base_url`` when it is a URL,
    else its own ``[api] host`` and ``port`` (a wildcard bind is reached on the loopback; https
    when ``[api] ssl_cert`` is set). Never from the request: its Host and X-Forwarded-* headers
    are the caller's to write, and the caller's token would follow them."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    if base.startswith(("http://", "https://")):
        return base
    host = (conf.get("api", "host", fallback="") or "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = conf.getint("api", "port", fallback=8080)
    scheme = "https" if conf.get("api", "ssl_cert", fallback="") else "http"
    return f"{scheme}://{host}:{port}{base}"


async def trigger(request: Request, conf: dict[str, Any]) -> dict[str, Any]:
    import httpx

    token = _token(request)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=f"{api_base()}/api/v2", headers=headers, timeout=30
    ) as client:
        dag = await client.get(f"/dags/{REQUEUE_DAG}")
        if dag.status_code != 200:
            raise HTTPException(
                dag.status_code if dag.status_code in (401, 403, 404) else 502,
                f"DAG {REQUEUE_DAG}: {_detail(dag)}",
            )
        paused = bool(dag.json().get("is_paused"))
        run = await client.post(
            f"/dags/{REQUEUE_DAG}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        if run.status_code not in (200, 201):
            raise HTTPException(
                run.status_code if 400 <= run.status_code < 500 else 502,
                f"Airflow refused the run: {_detail(run)}",
            )
    created = run.json()
    run_id = created["dag_run_id"]
    return {
        "dag_id": REQUEUE_DAG,
        "dag_run_id": run_id,
        "url": f"/dags/{quote(REQUEUE_DAG, safe='')}/runs/{quote(run_id, safe='')}",
        "state": created.get("state"),
        "paused": paused,
        "conf": conf,
        "note": (
            f"{REQUEUE_DAG} is paused: the run waits until someone unpauses the DAG"
            if paused
            else None
        ),
        "requested_at": datetime.now(UTC).isoformat(),
    }


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:300]
    return f"{response.status_code} {detail}"
