"""The "Enrollment pipeline" page: a FastAPI app the Airflow API server mounts at ``/enrollment``.

Server-rendered HTML (Jinja2, inline SVG charts) and one small script that refreshes the page's
content every 15 s: no build step, the plugin deploys by copying ``plugins/``, and the page works
before any script runs. The numbers come from ``enrollment.view`` (BigQuery, Kafka) and
``runs`` (Airflow's metadata DB), cached ``CACHE_S`` seconds so a refresh storm reads once
(``cache``).

Access: plugin apps are not protected by Airflow, so every route asks Airflow's auth manager:
the page and its JSON need a user allowed to view the UI (``AccessView.WEBSITE``) — the ``_token``
cookie the UI sets at login, or a Bearer token; ``POST /api/requeue`` needs permission to create
runs of ``requeue_quarantine`` and forwards the caller's own token to Airflow's REST API, so
Airflow checks and audits the run as that user's (``access``, ``requeue``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from enrollment_airflow.operator_page import requeue
from enrollment_airflow.operator_page.access import Viewer, may_requeue, viewer
from enrollment_airflow.operator_page.cache import CACHE_S, cached, clients

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)
T = TypeVar("T")

HERE = Path(__file__).parent
URL_PREFIX = "/enrollment"
MAX_WINDOW_HOURS = 24 * 31

app = FastAPI(title="Enrollment pipeline", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
templates = Jinja2Templates(directory=HERE / "templates")


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

        config, warehouse, kafka = clients()
        data: dict[str, Any] = overview(warehouse, kafka, config, window_hours)
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

        config, warehouse, kafka = clients()
        data: dict[str, Any] = region_detail(warehouse, kafka, config, code, window_hours)
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


app.include_router(requeue.router)
