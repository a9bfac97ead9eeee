"""Where the CPU goes during a load: CPU seconds per component per minute.

A thread samples every process of the machine every ``every_s`` seconds (psutil) and charges the
growth of each one's user + system time to a component named from its command line: each Airflow
component, the task processes by the kind of DAG they run (a LocalExecutor worker's title, or a
Celery pool process's ``airflow supervisor:`` title, names the task instance it runs; ``resolve``
maps that id to its DAG), each service of the stack, the
simulator, and the load test itself (its watchers).

A process that ends between two samples is not lost: once its parent reaps it, the parent's
children's CPU grows by all the child used, and what the samples had not yet seen of it (its last
``every_s`` seconds, or all of a process shorter than that) is charged to the parent's component —
a task's to its worker. The sum is checked against the machine's busy time from /proc/stat.

Components are grouped as a user sizes them: the **pipeline** (its tasks, Airflow's components,
and what Airflow needs besides: its metadata database and the Celery broker), the **services** it
talks to (emulators here, managed services in production), and the **load** (the simulator and
the load test's watchers).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable

import psutil

RULES = (  # (substring of the command line, component), first match wins
    ("airflow scheduler", "airflow scheduler"),
    ("airflow dag-processor", "airflow dag-processor"),
    ("airflow triggerer", "airflow triggerer"),
    ("airflow api-server", "airflow api-server"),
    ("airflow api_server", "airflow api-server"),
    ("celeryd:", "airflow celery workers (idle)"),
    ("celery worker", "airflow celery workers (idle)"),
    ("redis-server", "airflow celery broker (redis)"),
    ("postgres", "airflow metadata db (postgresql)"),
    ("bqemulator", "bigquery emulator"),
    ("kafka.Kafka", "kafka"),
    ("SolrLauncher", "solr"),
    ("cloud_firestore_emulator", "firestore emulator"),
    ("CloudFirestore", "firestore emulator"),
    ("fake-gcs-server", "gcs emulator"),
    ("marketing_cloud_stub", "marketing cloud stub"),
    ("enrollment.simulator", "simulator"),
)


TI_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
KINDS = (
    ("ingest_", "tasks: ingest land"),
    ("warehouse", "tasks: warehouse cycle"),
    ("sync_", "tasks: sinks"),
    ("lag_monitor", "tasks: lag monitor"),
    ("environment_health", "tasks: health"),
    ("canary", "tasks: canary"),
)


SERVICES = (
    "bigquery emulator",
    "kafka",
    "solr",
    "firestore emulator",
    "gcs emulator",
    "marketing cloud stub",
)
LOAD = ("simulator", "load test (watchers)")


def group(component: str) -> str:
    """pipeline, services, load or other (see the module's doc)."""
    if component in SERVICES:
        return "services"
    if component in LOAD:
        return "load"
    if component.startswith(("tasks:", "airflow")):
        return "pipeline"
    return "other"


def task_kind(dag_id: str | None) -> str:
    for prefix, kind in KINDS:
        if dag_id and dag_id.startswith(prefix):
            return kind
    return "tasks: other"


def airflow_resolver(db_uri: str) -> Callable[[str], str | None]:
    """Task instance id → its DAG id, read from Airflow's metadata database (cached)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_uri)
    cache: dict[str, str | None] = {}

    def resolve(ti_id: str) -> str | None:
        if ti_id not in cache:
            try:
                with engine.connect() as conn:
                    # SQLite keeps the UUID as 32 hex digits,
                    # PostgreSQL as a uuid (hyphens accepted).
                    key = ti_id.replace("-", "") if engine.dialect.name == "sqlite" else ti_id
                    cache[ti_id] = conn.execute(
                        text("SELECT dag_id FROM task_instance WHERE id = :id"), {"id": key}
                    ).scalar()
            except Exception:
                return None
        return cache[ti_id]

    return resolve


class CpuSampler:
    def __init__(self, every_s: float = 2.0, resolve: Callable[[str], str | None] | None = None):
        self.every_s = every_s
        self.resolve = resolve or (lambda _ti: None)
        self.me = os.getpid()
        self.last: dict[int, float] = {}  # pid → its CPU and its reaped children's, last seen
        self.parent: dict[int, int] = {}  # pid → its parent, last seen
        self.seen_of_gone: dict[int, float] = {}  # parent → what was charged of its ended children
        self.kind_of_worker: dict[int, str] = {}
        self.totals: dict[str, float] = {}
        self.series: list[
            tuple[float, dict[str, float]]
        ] = []  # (s since start, cpu s per component in the interval)
        self.machine_busy_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self.started = self.ended = 0.0

    def component(self, proc: psutil.Process, cmdline: str, parents: dict[int, int]) -> str:
        if proc.pid == self.me:
            return "load test (watchers)"
        if cmdline.startswith(("airflow worker --", "airflow supervisor:")):
            if "<idle>" in cmdline:
                self.kind_of_worker.pop(proc.pid, None)
                return "airflow workers (idle)"
            ti = TI_ID.search(cmdline)
            kind = task_kind(self.resolve(ti.group(0))) if ti else "tasks: other"
            self.kind_of_worker[proc.pid] = kind
            return kind
        parent = parents.get(proc.pid)
        while parent is not None:  # a task process: charged to its worker's task
            if parent in self.kind_of_worker:
                return self.kind_of_worker[parent]
            parent = parents.get(parent)
        for needle, name in RULES:
            if needle in cmdline:
                return name
        if "airflow" in cmdline or "task-runner" in cmdline or "supervisor" in cmdline:
            return "airflow (other processes)"
        return "other"

    def sample(self) -> dict[str, float]:
        parents, procs = {}, []
        for proc in psutil.process_iter(["pid", "ppid", "cmdline", "cpu_times"]):
            info = proc.info
            if info["cpu_times"] is None:
                continue
            parents[info["pid"]] = info["ppid"]
            times = info["cpu_times"]
            procs.append(
                (
                    proc,
                    " ".join(info["cmdline"] or []),
                    times.user + times.system + times.children_user + times.children_system,
                )
            )
        # Ended since the last sample: what was charged of each is already counted, and comes
        # back in its parent's children's CPU once reaped; only the rest is new.
        for pid in set(self.last) - set(parents):
            self.seen_of_gone.pop(pid, None)  # children it never reaped: their parent is now init
            ppid = self.parent.pop(pid, None)
            if ppid is not None:
                self.seen_of_gone[ppid] = self.seen_of_gone.get(ppid, 0.0) + self.last[pid]
            self.last.pop(pid, None)
            self.kind_of_worker.pop(pid, None)
        used: dict[str, float] = {}
        for proc, cmdline, cpu in procs:
            before = self.last.get(proc.pid, 0.0 if self.series or self.started else cpu)
            grown = cpu - before
            self.last[proc.pid] = cpu
            self.parent[proc.pid] = parents[proc.pid]
            counted = self.seen_of_gone.pop(proc.pid, 0.0)
            if counted:
                # Its ended children's counted part returns with their reaping (now, or at a
                # later sample: what is not yet back is kept until then).
                taken = min(max(grown, 0.0), counted)
                grown -= taken
                if counted - taken > 1e-6:
                    self.seen_of_gone[proc.pid] = counted - taken
            if grown > 0:
                name = self.component(proc, cmdline, parents)
                used[name] = used.get(name, 0.0) + grown
        return used

    def _machine_busy(self) -> float:
        times = psutil.cpu_times()
        return (
            times.user
            + times.system
            + getattr(times, "nice", 0.0)
            + getattr(times, "irq", 0.0)
            + getattr(times, "softirq", 0.0)
        )

    def _run(self) -> None:
        self.sample()  # the baseline: CPU spent before the load is not charged
        busy0 = self._machine_busy()
        self.started = time.monotonic()
        while not self._stop.wait(self.every_s):
            used = self.sample()
            self.series.append((time.monotonic() - self.started, used))
            for name, value in used.items():
                self.totals[name] = self.totals.get(name, 0.0) + value
        self.ended = time.monotonic()
        self.machine_busy_s = self._machine_busy() - busy0

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=30)
        minutes = max((self.ended - self.started) / 60, 1e-9)
        per_min = {
            name: round(value / minutes, 1)
            for name, value in sorted(self.totals.items(), key=lambda kv: -kv[1])
        }
        groups: dict[str, float] = {}
        for name, value in self.totals.items():
            groups[group(name)] = groups.get(group(name), 0.0) + value
        return {
            "minutes": round(minutes, 2),
            "cores": psutil.cpu_count(),
            "cpu_s": {name: round(value, 1) for name, value in sorted(groups.items())},
            "groups_cpu_s_per_min": {
                name: round(value / minutes, 1) for name, value in sorted(groups.items())
            },
            "cpu_s_per_min": per_min,
            "components_cpu_s_per_min": round(sum(self.totals.values()) / minutes, 1),
            "machine_busy_cpu_s_per_min": round(self.machine_busy_s / minutes, 1),
            "machine_capacity_cpu_s_per_min": 60 * (psutil.cpu_count() or 1),
        }


def markdown(cpu: dict) -> str:
    rows = "\n".join(
        f"| {name} | {value:,.1f} | {100 * value / cpu['machine_capacity_cpu_s_per_min']:.0f} % |"
        for name, value in cpu["cpu_s_per_min"].items()
    )
    capacity = cpu["machine_capacity_cpu_s_per_min"]
    components, busy = cpu["components_cpu_s_per_min"], cpu["machine_busy_cpu_s_per_min"]
    groups = "\n".join(
        f"| **{name}** (group) | **{value:,.1f}** | {100 * value / capacity:.0f} % |"
        for name, value in cpu.get("groups_cpu_s_per_min", {}).items()
    )
    return f"""| component | CPU s per minute | share of the {cpu["cores"]} cores |
|---|---|---|
{rows}
{groups}
| **all components** | **{components:,.1f}** | {100 * components / capacity:.0f} % |
| machine busy (/proc/stat) | {busy:,.1f} | {100 * busy / capacity:.0f} % |

Sampled every 2 s over {cpu["minutes"]:,.1f} minutes, ended processes counted through their
parents; the capacity is {capacity} CPU s a minute. Groups: the pipeline (tasks, Airflow, its
database and broker), the services (emulators, Kafka, Solr, the stub), the load (simulator,
watchers).
"""
