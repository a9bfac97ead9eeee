"""A small client of the running Airflow's REST API (v2), for the demo, tests and load runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from .config import StackConfig

TERMINAL_RUN_STATES = {"success", "failed"}


def login_token(cfg: StackConfig, user: str = "admin") -> str:
    """A JWT for one of the stack's users (``admin`` or the read-only ``viewer``)."""
    token = httpx.post(
        f"{cfg.url('AIRFLOW_PORT')}/auth/token",
        json={"username": user, "password": cfg.credentials[f"airflow_{user}_password"]},
        timeout=10,
    )
    token.raise_for_status()
    return token.json()["access_token"]


class AirflowClient:
    def __init__(self, cfg: StackConfig, user: str = "admin"):
        self.base = cfg.url("AIRFLOW_PORT")
        self.token = login_token(cfg, user)
        self.http = httpx.Client(
            base_url=f"{self.base}/api/v2",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def dag_ids(self) -> set[str]:
        return {
            d["dag_id"]
            for d in self.http.get("/dags", params={"limit": 1000})
            .raise_for_status()
            .json()["dags"]
        }

    def import_errors(self) -> list[dict]:
        return self.http.get("/importErrors").raise_for_status().json()["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> None:
        """The DAG processor parses on its own clock; wait until it has seen the DAG."""
        deadline = time.monotonic() + timeout_s
        while self.http.get(f"/dags/{dag_id}").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Airflow has not parsed {dag_id} within {timeout_s:.0f} s; import errors: "
                    f"{self.import_errors()}"
                )
            time.sleep(1)

    def watch_backlogs(
        self, dag_ids: list[str], assets: list[str], timeout_s: float = 180
    ) -> float:
        """Unpauses the DAGs and waits until each asset named has its watchers registered; the
        seconds it took. Airflow registers an asset's watchers (the triggers the triggerer runs)
        only when it parses an unpaused DAG scheduled on it, so the DAGs' files are parsed again
        at once rather than on the DAG processor's own clock (up to a minute)."""
        t0 = time.monotonic()
        for dag_id in dag_ids:
            self.asked_again("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        tokens = {
            self.asked_again("GET", f"/dags/{dag_id}/details").json()["file_token"]
            for dag_id in dag_ids
        }
        for token in tokens:
            self.asked_again("PUT", f"/parseDagFile/{token}")
        waiting = set(assets)
        while waiting:
            found = self.http.get("/assets", params={"limit": 1000}).raise_for_status().json()
            waiting -= {a["name"] for a in found["assets"] if a.get("watchers")}
            if not waiting:
                break
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"no watcher registered after {timeout_s:.0f} s for {waiting}")
            time.sleep(1)
        return time.monotonic() - t0

    def asked_again(self, method: str, path: str, attempts: int = 5, **kwargs: Any) -> Any:
        """An idempotent request, asked again while it answers 5xx: on SQLite (the local stack's
        default) a request that waited 5 s for the database's one writer answers 500 or 503 with
        nothing written. The answer, raised for its status."""
        for attempt in range(1, attempts + 1):
            answer = self.http.request(method, path, **kwargs)
            if answer.status_code < 500 or attempt == attempts:
                return answer.raise_for_status()
            time.sleep(2 * attempt)
        raise AssertionError("unreachable")

    def trigger(self, dag_id: str, conf: dict | None = None, attempts: int = 5) -> str:
        """Unpauses the DAG and starts a run of it; the run's id. On SQLite (the local stack's
        default) a request that waited 5 s for the database's one writer answers 500 or 503 with
        nothing written: asked again, a few times."""
        for attempt in range(1, attempts + 1):
            answer = self.http.patch(f"/dags/{dag_id}", json={"is_paused": False})
            if answer.status_code < 500:
                answer.raise_for_status()
                answer = self.http.post(
                    f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
                )
                if answer.status_code < 500:
                    return str(answer.raise_for_status().json()["dag_run_id"])
            if attempt < attempts:
                time.sleep(2 * attempt)
        answer.raise_for_status()
        raise RuntimeError(f"{dag_id}: not triggered, HTTP {answer.status_code}")

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout_s: float = 600,
        progress: Callable[[str, float], None] | None = None,
    ) -> str:
        t0 = time.monotonic()
        while True:
            state = (
                self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()["state"]
            )
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout_s:.0f} s")
            if progress:
                progress(state, time.monotonic() - t0)
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """A run's task instances as the REST API gives them
        (id, state, try_number, pool, queue, pid, ...)."""
        return (
            self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
            .raise_for_status()
            .json()["task_instances"]
        )

    def task_states(self, dag_id: str, run_id: str) -> list[dict]:
        tis = self.task_instances(dag_id, run_id)
        return [
            {
                "task_id": t["task_id"],
                "map_index": t["map_index"],
                "rendered_map_index": t.get("rendered_map_index"),
                "state": t["state"],
            }
            for t in tis
        ]

    def failure_logs(self, dag_id: str, run_id: str, tail: int = 30) -> dict[str, str]:
        """The last lines of each failed task's log (its
        final try): why a run failed, for a test's message."""
        out = {}
        for ti in self.task_instances(dag_id, run_id):
            if ti["state"] != "failed":
                continue
            params = {
                "full_content": True,
                **({"map_index": ti["map_index"]} if ti["map_index"] >= 0 else {}),
            }
            log = self.http.get(
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
                f"/logs/{max(ti['try_number'], 1)}",
                params=params,
                headers={"Accept": "application/json"},
            )
            content = (
                log.json().get("content", "")
                if log.status_code == 200
                else f"(log: HTTP {log.status_code})"
            )
            lines = (
                [str(e.get("event", e)) if isinstance(e, dict) else str(e) for e in content]
                if isinstance(content, list)
                else str(content).splitlines()
            )
            out[f"{ti['task_id']}[{ti['map_index']}]"] = "\n".join(lines[-tail:])
        return out
