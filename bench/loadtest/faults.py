"""Fault injection for the load test: the ``--fault NAME@START[:FOR]`` specs (and the durations
they are written in), and the injector that stops and starts the stack's services, restarts Kafka
or kills a busy Airflow worker when each fault's time comes."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass

from bench.load import log
from stack import cli as stack_cli
from stack import config as stack_config

SERVICES_THAT_MAY_GO_DOWN = ("solr", "firestore", "marketing-cloud", "bigquery", "gcs")
CELERY_WORKER_RESTART_S = 30.0


def seconds(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``1h`` → seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 3m, 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass
class Fault:
    kind: str  # "<service>-down", "broker-restart", "worker-kill"
    at_s: float
    for_s: float = 0.0
    began_s: float | None = None
    ended_s: float | None = None
    detail: str = ""
    restart: str = (
        ""  # the stack's service to start again when the fault ends (a killed Celery worker)
    )

    @classmethod
    def parse(cls, text: str) -> Fault:
        match = re.fullmatch(r"([a-z-]+)@([^:]+)(?::(.+))?", text.strip())
        if not match:
            raise argparse.ArgumentTypeError(
                f"fault {text!r}: write NAME@START[:FOR], e.g. solr-down@3m:2m"
            )
        kind, at, length = (
            match.group(1),
            seconds(match.group(2)),
            seconds(match.group(3)) if match.group(3) else 0.0,
        )
        if kind.endswith("-down"):
            if kind.removesuffix("-down") not in SERVICES_THAT_MAY_GO_DOWN:
                raise argparse.ArgumentTypeError(
                    f"fault {text!r}: services that may go down: "
                    f"{', '.join(SERVICES_THAT_MAY_GO_DOWN)}"
                )
            if not length:
                raise argparse.ArgumentTypeError(
                    f"fault {text!r}: say for how long, e.g. {kind}@{match.group(2)}:2m"
                )
        elif kind not in ("broker-restart", "worker-kill"):
            raise argparse.ArgumentTypeError(
                f"fault {text!r}: known faults are <service>-down, broker-restart, worker-kill"
            )
        return cls(kind, at, length)

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.at_s:g}s" + (f":{self.for_s:g}s" if self.for_s else "")


def busy_celery_workers(cfg) -> list:
    """The stack's Celery workers that run a task now (a task process under one of their pool
    processes, whose title is ``airflow supervisor: <task instance id>``), with what it runs."""
    import psutil

    from stack.cli import _pgid
    from stack.services import CeleryWorker, stack_services

    busy = []
    for worker in (s for s in stack_services(cfg) if isinstance(s, CeleryWorker)):
        pgid = _pgid(worker)
        if pgid is None:
            continue
        running = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                title = " ".join(proc.info["cmdline"] or [])
                if (
                    title.startswith("airflow supervisor:")
                    and os.getpgid(proc.pid) == pgid
                    and proc.children()
                ):
                    running.append(title.split(":", 1)[1].strip())
            except (psutil.Error, ProcessLookupError):
                continue
        if running:
            busy.append((worker, pgid, running))
    return busy


def busy_workers() -> list:
    """Airflow's LocalExecutor workers that are running a task now (their title names it)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("airflow worker -- LocalExecutor:") and "<idle>" not in title:
            out.append(proc)
    return out


class Injector:
    """Starts and ends each fault when its time comes (called at every tick of the load)."""

    def __init__(self, faults: list[Fault]):
        self.faults = faults

    def __call__(self, elapsed: float) -> None:
        for f in self.faults:
            if f.began_s is None and elapsed >= f.at_s:
                self._begin(f, elapsed)
            if f.began_s is not None and f.ended_s is None and elapsed >= f.began_s + f.for_s:
                self._end(f, elapsed)

    def _begin(self, f: Fault, elapsed: float) -> None:
        if f.kind == "worker-kill" and stack_config.load().celery:
            busy = busy_celery_workers(stack_config.load())
            if not busy:
                if elapsed > f.at_s + 120:
                    f.began_s = f.ended_s = elapsed
                    f.detail = "no Celery worker ran a task for 2 minutes: nothing killed"
                return
            worker, pgid, running = busy[0]
            killed = stack_cli.kill_hard(worker)
            f.began_s, f.for_s = elapsed, f.for_s or CELERY_WORKER_RESTART_S
            f.detail = (
                f"SIGKILL to Celery worker {worker.worker.name} ({len(killed)} processes: its "
                f"group {pgid} and its task processes) "
                f"running {len(running)} task(s) ({', '.join(running)})"
            )
            f.restart = worker.name
        elif f.kind == "worker-kill":
            workers = busy_workers()
            if not workers:
                if elapsed > f.at_s + 120:
                    f.began_s = f.ended_s = elapsed
                    f.detail = "no task was running for 2 minutes: nothing killed"
                return  # try again at the next tick
            worker = workers[0]
            title = " ".join(worker.cmdline())
            victims = [worker, *worker.children(recursive=True)]
            for proc in victims:
                with contextlib.suppress(Exception):
                    proc.send_signal(signal.SIGKILL)
            f.began_s = f.ended_s = elapsed
            f.detail = (
                f"SIGKILL to worker {worker.pid} and {len(victims) - 1} task processes "
                f"({title.split(':', 1)[1].strip()})"
            )
        elif f.kind == "broker-restart":
            stack_cli.down(["kafka"], quiet=True)
            f.began_s = elapsed
            f.detail = "Kafka stopped"
        else:
            service = f.kind.removesuffix("-down")
            stack_cli.down([service], quiet=True)
            f.began_s = elapsed
            f.detail = f"{service} stopped"
        log(f"fault {f.label}: {f.detail}")

    def _end(self, f: Fault, elapsed: float) -> None:
        service = (
            "kafka"
            if f.kind == "broker-restart"
            else f.restart
            if f.kind == "worker-kill"
            else f.kind.removesuffix("-down")
        )
        t0 = time.monotonic()
        stack_cli.up([service], quiet=True)
        f.ended_s = elapsed + (time.monotonic() - t0)
        f.detail += f", started again (ready {time.monotonic() - t0:.0f} s later)"
        log(f"fault {f.label}: {f.detail}")

    def heal(self) -> None:
        """Whatever is still down comes back (the load ended early, or failed)."""
        for f in self.faults:
            if f.began_s is not None and f.ended_s is None:
                self._end(f, f.began_s + f.for_s)
