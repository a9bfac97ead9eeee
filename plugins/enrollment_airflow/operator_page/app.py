"""The "Enrollment pipeline" page: a FastAPI app the Airflow API server mounts at ``/enrollment``.

Server-rendered HTML (Jinja2, inline SVG charts) and one small script that refreshes the page's
content every 15 s: no build step, the plugin deploys by copying ``plugins/``, and the page works
before any script runs. The numbers come from ``enrollment.view`` (BigQuery, Kafka) and
``runs`` (Airflow's metadata DB), cached ``CACHE_S`` seconds so a refresh storm reads once.

Access: plugin apps are not protected by Airflow, so every route asks Airflow's auth manager:
the page and its JSON need a user allowed to view the UI (``AccessView.WEBSITE``) — the ``_token``
cookie the UI sets at login, or a Bearer token; ``POST /api/requeue`` needs permission to create
runs of ``requeue_quarantine`` and forwards the caller's own token to Airflow's REST API, so
Airflow checks and audits the run as that user's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError

if TYPE_CHECKING:
    import httpx
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

    from enrollment.clients.bigquery import BigQuery
    from enrollment.config import PipelineConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

HERE = Path(__file__).parent
URL_PREFIX = "/enrollment"
REQUEUE_DAG = "requeue_quarantine"
CACHE_S = 10.0
CLIENTS_S = 300.0
MAX_WINDOW_HOURS = 24 * 31

app = FastAPI(title="Enrollment pipeline", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
templates = Jinja2Templates(directory=HERE / "templates")


# -- access ---------------------------------------------------------------------------------
def _token(request: Request) -> str | None:
    """The caller's JWT: a Bearer header wins over the UI's ``_token`` cookie (as Airflow's
    get_user)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


async def viewer(request: Request) -> BaseUser:
    """A logged-in user allowed to view the UI; 401 without a token, 403 otherwise."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    user = await get_user(request, None, await bearer_scheme(request))
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    return user


# The route's user: FastAPI resolves it at import, so it stays Any (Airflow's BaseUser is only
# imported when a request comes).
Viewer = Annotated[Any, Depends(viewer)]


def may_requeue(user: BaseUser | None) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    return get_auth_manager().is_authorized_dag(
        method="POST",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=REQUEUE_DAG),
        user=user,
    )


# -- data, cached ---------------------------------------------------------------------------
_locks_guard = threading.Lock()
_locks: dict[tuple[Any, ...], threading.Lock] = {}
_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}


def cached(key: tuple[Any, ...], seconds: float, make: Callable[[], T]) -> T:
    """``make()`` at most once per ``seconds`` per key, whatever the number of callers: the others
    wait for that one and share its result (one key's slow read never holds another key)."""
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        hit = _cache.get(key)
        if hit and time.monotonic() - hit[0] < seconds:
            return cast("T", hit[1])
        value = make()
        _cache[key] = (time.monotonic(), value)
    if len(_cache) > 100:  # windows are the caller's choice: forget what expired
        with _locks_guard:
            for old in [
                k for k, (at, _) in list(_cache.items()) if time.monotonic() - at > CLIENTS_S
            ]:
                _cache.pop(old, None)
                _locks.pop(old, None)
    return value


def clients() -> tuple[PipelineConfig, BigQuery, str]:
    """The pipeline configuration, its warehouse and Kafka bootstrap, from the Airflow connections
    the DAGs use."""

    def make() -> tuple[PipelineConfig, BigQuery, str]:
        from enrollment.config import load_config
        from enrollment_airflow.runtime import Runtime

        rt = Runtime(load_config())  # the page's own handle, not a task's
        return rt.config, rt.warehouse, rt.kafka_bootstrap

    return cached(("clients",), CLIENTS_S, make)


def _airflow(make: Callable[[], T], empty: T) -> T:
    try:
        return make()
    except Exception as exc:
        log.warning(
            "enrollment page: Airflow metadata unavailable: %s: %s", type(exc).__name__, exc
        )
        return empty


def _window(window_hours: float) -> float:
    return min(max(float(window_hours), 1.0), MAX_WINDOW_HOURS)


def overview_data(window_hours: float) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        from enrollment.view.overview import overview
        from enrollment_airflow.operator_page import runs

        config, warehouse, bootstrap = clients()
        data: dict[str, Any] = overview(warehouse, bootstrap, config, window_hours)
        dags: dict[str, Any] = _airflow(
            lambda: runs.dag_runs(config, window_hours),
            {"source": "airflow", "dags": [], "error": "metadata DB unavailable"},
        )
        links: dict[str, dict[str, Any]] = _airflow(lambda: runs.batch_runs(config), {})
        _annotate(data["regions"]["regions"], data["sinks"]["sinks"], dags, links, data["health"])
        data["dags"] = dags
        data["requeue"] = _airflow(
            runs.requeue_runs, {"source": "airflow", "runs": [], "error": "metadata DB unavailable"}
        )
        data["status"] = _overall(data)
        return data

    return cached(("overview", window_hours), CACHE_S, make)


def region_data(code: str, window_hours: float) -> dict[str, Any]:
    def make() -> dict[str, Any]:
        from enrollment.view.regions import region_detail
        from enrollment_airflow.operator_page import runs

        config, warehouse, bootstrap = clients()
        data: dict[str, Any] = region_detail(warehouse, bootstrap, config, code, window_hours)
        dags: dict[str, Any] = _airflow(
            lambda: runs.dag_runs(config, window_hours), {"source": "airflow", "dags": []}
        )
        links: dict[str, dict[str, Any]] = _airflow(lambda: runs.batch_runs(config), {})
        _annotate([data["region"]], [], dags, links, None)
        data["dags"] = {
            "source": "airflow",
            "dags": [
                d for d in dags["dags"] if d["dag_id"] in (f"ingest_{code.lower()}", "warehouse")
            ],
        }
        data["requeue"] = _airflow(
            runs.requeue_runs, {"source": "airflow", "runs": [], "error": "metadata DB unavailable"}
        )
        return data

    return cached(("region", code, window_hours), CACHE_S, make)


def _annotate(
    regions: list[dict[str, Any]],
    sinks: list[dict[str, Any]],
    dags: dict[str, Any],
    links: dict[str, Any],
    health: dict[str, Any] | None,
) -> None:
    """Adds the DAG runs to what the tables say: each batch's runs, and a region's or sink's status
    from its DAG's last run (broken wins over late)."""
    from enrollment.view.reader import classify

    by_dag = {d["dag_id"]: d for d in dags.get("dags", [])}
    warehouse = by_dag.get("warehouse") or {}
    for region in regions:
        for b in region["batches"]:
            b["runs"] = links.get(b["batch_id"], {})
        broken, late = (
            [w for w in region["why"] if region["status"] == "broken"],
            [w for w in region["why"] if region["status"] == "late"],
        )
        ingest = by_dag.get(f"ingest_{region['code'].lower()}") or {}
        for d in (ingest, warehouse):
            if d.get("status") == "broken":
                broken.append(_failed(d))
            elif d.get("status") == "late":
                late.append(
                    f"last {d['dag_id']} run: the {', '.join(d['failed_tasks'])} gate measured "
                    "lateness"
                )
        region.update(classify(broken, late))
        region["dag"] = ingest or None
    for sink in sinks:
        d = by_dag.get(f"sync_{sink['sink']}") or {}
        broken = [w for w in sink["why"] if sink["status"] == "broken"]
        late = [w for w in sink["why"] if sink["status"] == "late"]
        if d.get("status") == "broken":
            broken.append(_failed(d))
        sink.update(classify(broken, late))
        sink["dag"] = d or None


def _failed(dag: dict[str, Any]) -> str:
    return f"last {dag['dag_id']} run failed ({', '.join(dag['failed_tasks']) or 'no task failed'})"


def _overall(data: dict[str, Any]) -> dict[str, Any]:
    from enrollment.view.reader import classify

    broken: list[str] = []
    late: list[str] = []
    for region in data["regions"]["regions"]:
        (
            broken if region["status"] == "broken" else late if region["status"] == "late" else []
        ).append(f"region {region['code']}")
    for sink in data["sinks"]["sinks"]:
        (broken if sink["status"] == "broken" else late if sink["status"] == "late" else []).append(
            f"sink {sink['sink']}"
        )
    broken += [
        f"service {s['service']}" for s in data["health"]["services"] if s["status"] == "broken"
    ]  # not a stale check
    return classify(broken, late)


# -- routes -----------------------------------------------------------------------------------
def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {"prefix": URL_PREFIX, **context},
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


async def _page_user(request: Request) -> tuple[BaseUser | None, RedirectResponse | None]:
    """The page's user, or a redirect to Airflow's login for a browser without a session."""
    try:
        return await viewer(request), None
    except HTTPException as exc:
        if exc.status_code != status.HTTP_401_UNAUTHORIZED:
            raise
        from airflow.api_fastapi.app import get_auth_manager

        return None, RedirectResponse(
            get_auth_manager().get_url_login(next_url=str(request.url)),
            status_code=status.HTTP_303_SEE_OTHER,
        )


@app.get("/", response_class=HTMLResponse, response_model=None)
async def page(
    request: Request,
    window_hours: float = Query(24, gt=0, le=MAX_WINDOW_HOURS),
    fragment: bool = False,
) -> HTMLResponse | RedirectResponse:
    user, redirect = await _page_user(request)
    if redirect:
        return redirect
    from starlette.concurrency import run_in_threadpool

    from enrollment_airflow.operator_page import charts

    data = await run_in_threadpool(overview_data, _window(window_hours))
    return _render(
        request,
        "fragment.html" if fragment else "page.html",
        data=data,
        charts=charts,
        can_requeue=may_requeue(user),
        regions=[r["code"] for r in data["regions"]["regions"]],
        title="Enrollment pipeline",
    )


@app.get("/regions/{code}", response_class=HTMLResponse, response_model=None)
async def region_page(
    request: Request,
    code: str,
    window_hours: float = Query(24, gt=0, le=MAX_WINDOW_HOURS),
    fragment: bool = False,
) -> HTMLResponse | RedirectResponse:
    user, redirect = await _page_user(request)
    if redirect:
        return redirect
    from starlette.concurrency import run_in_threadpool

    from enrollment_airflow.operator_page import charts

    data = await run_in_threadpool(_region_or_404, code, _window(window_hours))
    return _render(
        request,
        "region_fragment.html" if fragment else "region.html",
        data=data,
        charts=charts,
        can_requeue=may_requeue(user),
        regions=[data["region"]["code"]],
        title=f"Enrollment pipeline — {data['region']['code']}",
    )


def _region_or_404(code: str, window_hours: float) -> dict[str, Any]:
    config = clients()[0]
    if code.upper() not in {r.code for r in config.regions}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown region {code!r}")
    return region_data(code.upper(), window_hours)


@app.get("/api/overview")
def api_overview(
    user: Viewer, window_hours: float = Query(24, gt=0, le=MAX_WINDOW_HOURS)
) -> JSONResponse:
    return JSONResponse(overview_data(_window(window_hours)), headers={"Cache-Control": "no-store"})


@app.get("/api/regions/{code}")
def api_region(
    code: str, user: Viewer, window_hours: float = Query(24, gt=0, le=MAX_WINDOW_HOURS)
) -> JSONResponse:
    return JSONResponse(
        _region_or_404(code, _window(window_hours)), headers={"Cache-Control": "no-store"}
    )


class Requeue(BaseModel):
    """The ``requeue_quarantine`` DAG's params (its own checks decide; these only shape them)."""

    region: str = "ALL"
    since: str = ""
    until: str = ""
    reasons: list[str] = Field(default_factory=list, max_length=50)
    dry_run: bool = True


@app.post("/api/requeue")
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


def _api_base(request: Request) -> str:
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    return (
        base.rstrip("/")
        if base.startswith("http")
        else f"{request.url.scheme}://{request.url.netloc}"
    )


async def trigger(request: Request, conf: dict[str, Any]) -> dict[str, Any]:
    import httpx

    token = _token(request)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=f"{_api_base(request)}/api/v2", headers=headers, timeout=30
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
