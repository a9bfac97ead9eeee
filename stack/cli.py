"""The local stack's command line: ``python -m stack up|down|status|env|bench``.

``up`` starts what is not running (each service in its own process group, bound to 127.0.0.1),
polls every service until it answers, then creates topics, the Solr core, the bucket and the
datasets. ``down`` stops each group and checks that its ports are free. ``status`` prints each
service, its URL and whether it answers, and where the Airflow login is kept (never the password).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from . import config as stack_config
from .services import CELERY_NAMES, NAMES, Airflow, Service, ServiceError, stack_services

POLL_S = 0.1


# -- process groups -----------------------------------------------------------------------------
def _pid_file(service: Service) -> Path:
    return service.dir / "pid"


def _pgid(service: Service) -> int | None:
    """The service's process group if any of its processes is alive."""
    try:
        pgid = int(_pid_file(service).read_text())
    except (FileNotFoundError, ValueError):
        return None
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return pgid


def _reap(pid: int) -> None:
    """Collects our own exited child so a zombie leader does not look alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def kill_hard(service: Service) -> list[int]:
    """SIGKILL to a service's whole process group and every descendant that left it (Airflow's task
    processes start sessions of their own): as when its machine dies. Returns the pids killed."""
    import psutil

    pgid = _pgid(service)
    if pgid is None:
        return []
    victims = [p for p in psutil.process_iter(["pid"]) if _in_group(p.pid, pgid)]
    victims += [child for p in list(victims) for child in _children(p) if child not in victims]
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    _reap(pgid)
    return [p.pid for p in victims]


def _in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except OSError:
        return False


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((stack_config.HOST, port)) == 0


def _spawn(service: Service) -> subprocess.Popen:
    service.dir.mkdir(parents=True, exist_ok=True)
    busy = [p for p in service.ports() if _port_open(p)]
    if busy:
        raise ServiceError(
            f"{service.name}: port(s) {busy} already in use by another program; set "
            f"{'/'.join(service.port_names)} to free ports"
        )
    log = open(service.log_file, "ab")  # noqa: SIM115 (the child owns it)
    # umask 077: whatever the service writes (Airflow's generated airflow.cfg, its DB, logs, data)
    # is readable by this user only, from the moment it is created.
    process = subprocess.Popen(
        service.command(),
        env=service_env(service),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=service.dir,
        start_new_session=True,
        umask=0o077,
    )
    _pid_file(service).write_text(str(process.pid))
    return process


# What a service may inherit from the caller's environment: nothing secret, only what finds
# programs and sets the locale. Everything else (ports, credentials) comes from ``service.env()``,
# so each service gets only its own secrets (the stub's
# client secret and admin token, Airflow's keys).
INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "JAVA_HOME",
)


def service_env(service: Service) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in INHERITED_ENV} | service.env()


def _stop(service: Service, timeout_s: float = 30.0) -> bool:
    pgid = _pgid(service)
    if pgid is not None:
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _pgid(service) is not None:
                time.sleep(POLL_S)
            if _pgid(service) is None:
                break
    _pid_file(service).unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_port_open(p) for p in service.ports()):
        time.sleep(POLL_S)
    return not any(_port_open(p) for p in service.ports())


def _log_tail(service: Service, lines: int = 25) -> str:
    try:
        return "\n".join(service.log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# -- commands -------------------------------------------------------------------------------------
def select(
    names: Iterable[str] | None, cfg: stack_config.StackConfig, every: bool = False
) -> list[Service]:
    """The named services (default: all of this stack; ``every``: also the Celery parts a
    LocalExecutor stack does not run, so that ``down`` stops what an earlier Celery ``up`` left)."""
    services = stack_services(cfg, every=every or bool(names))
    known = [s.name for s in services]
    wanted = list(names or known)
    unknown = set(wanted) - set(known)
    if unknown:
        raise SystemExit(f"unknown service(s) {sorted(unknown)}; known: {', '.join(known)}")
    return [s for s in services if s.name in wanted]


def up(names: Iterable[str] | None = None, quiet: bool = False) -> dict[str, dict]:
    """Starts what is not running; returns per service whether it was started and how fast."""
    cfg = stack_config.load()
    cfg.save()
    os.environ.update(cfg.client_env())
    services = select(names, cfg)
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, flush=True))
    started: dict[str, tuple[subprocess.Popen, float, bool]] = {}
    report: dict[str, dict] = {}
    for service in services:
        if (
            isinstance(service, Airflow)
            and _pgid(service) is not None
            and service.started_with() not in (None, cfg.executor)
        ):
            say(
                f"restarting Airflow: it runs the {service.started_with()} executor, "
                f"STACK_EXECUTOR asks for {cfg.executor}"
            )
            _stop(service)
        if _pgid(service) is not None and service.ready():
            report[service.name] = {"started": False}
            continue
        _stop(service)  # a half-dead leftover
        say(f"starting {service.title} ...")
        cold = service.prepare()
        started[service.name] = (_spawn(service), time.monotonic(), cold)
    pending = {s.name: s for s in services if s.name in started}
    deadline_of = {name: t0 + pending[name].start_timeout_s for name, (_, t0, _) in started.items()}
    while pending:
        for name, service in list(pending.items()):
            process, t0, cold = started[name]
            if service.ready():
                elapsed = time.monotonic() - t0
                report[name] = {"started": True, "ready_s": round(elapsed, 2), "cold": cold}
                say(f"  {name} ready in {elapsed:.1f} s{' (cold)' if cold else ''}")
                del pending[name]
            elif process.poll() is not None:
                raise ServiceError(
                    f"{name} exited with code {process.returncode} before answering; last lines of "
                    f"{service.log_file}:\n{_log_tail(service)}"
                )
            elif time.monotonic() > deadline_of[name]:
                raise ServiceError(
                    f"{name} did not answer within {service.start_timeout_s:.0f} s; last lines of "
                    f"{service.log_file}:\n{_log_tail(service)}"
                )
        time.sleep(POLL_S)
    for service in services:
        service.setup()
    cfg.save_env()
    return report


def reset_data(names: Iterable[str] | None = None) -> list[str]:
    """Stops the services and removes the pipeline's data they keep (topics and offsets, the Solr
    core, objects, BigQuery datasets), so the next ``up`` starts from a known, empty state.
    Airflow keeps its run history; Firestore and the Marketing Cloud stub keep data in memory
    only (a restart empties them). Returns what was removed."""
    cfg = stack_config.load()
    services = select(names, cfg, every=True)
    if not down([s.name for s in services], quiet=True):
        raise ServiceError(
            "reset-data: a service is still listening after stopping; nothing was removed"
        )
    removed = []
    for service in services:
        for path in service.data_dirs():
            if path.exists():
                shutil.rmtree(path)
                removed.append(
                    str(path.relative_to(cfg.state.parent))
                    if path.is_relative_to(cfg.state.parent)
                    else str(path)
                )
    return removed


def down(names: Iterable[str] | None = None, quiet: bool = False) -> bool:
    cfg = stack_config.load()
    clean = True
    for service in reversed(select(names, cfg, every=True)):
        running = _pgid(service) is not None
        ok = _stop(service)
        clean &= ok
        if not quiet and (running or not ok):
            print(
                f"{service.name}: "
                f"{'stopped' if ok else 'STILL LISTENING on ' + str(service.ports())}",
                flush=True,
            )
    return clean


def status(names: Iterable[str] | None = None) -> bool:
    cfg = stack_config.load()
    all_ok = True
    # This stack's services, and Celery parts still running from an earlier executor's `up`.
    current = {s.name for s in select(names, cfg)} if not names else set(names)
    shown = [s for s in select(names, cfg, every=True) if s.name in current or _pgid(s) is not None]
    print(
        f"executor: {Airflow(cfg).executor}"
        + (
            " (STACK_EXECUTOR=celery)"
            if cfg.celery
            else " (the default; STACK_EXECUTOR=celery for Celery workers)"
        )
    )
    for service in shown:
        try:
            answers = service.ready()
        except Exception:
            answers = False
        all_ok &= answers
        state = "answers" if answers else ("running, not answering" if _pgid(service) else "down")
        print(
            f"{service.name:16} {service.describe():40} {state}"
            + (f"  {service.title}" if service.name.startswith("worker-") else "")
        )
    # Never the password itself: this output lands in CI logs.
    print(
        f"\nAirflow UI login: {Airflow.admin_user}, password in {_shown(cfg.saved_file)} "
        "(airflow_admin_password); "
        f"read-only: {Airflow.viewer_user} (airflow_viewer_password)"
    )
    print(f"Client environment for your shell: source {_shown(cfg.env_file)}")
    return all_ok


def _shown(path: Path) -> str:
    """A path relative to the repository when it is
    inside it (shorter, and no home folder in logs)."""
    return (
        str(path.relative_to(stack_config.ROOT))
        if path.is_relative_to(stack_config.ROOT)
        else str(path)
    )


def bench(names: Iterable[str] | None = None) -> dict:
    """Cold (fresh state) and warm (existing state) start times of each service."""
    import shutil

    cfg = stack_config.load()
    down(names, quiet=True)
    for service in select(names, cfg):
        for sub in ("data", "home", "cores") if service.name != "airflow" else ():
            shutil.rmtree(service.dir / sub, ignore_errors=True)
        if service.name == "airflow":
            shutil.rmtree(cfg.airflow_home, ignore_errors=True)
    results: dict[str, dict] = {}
    for phase in ("cold", "warm"):
        t0 = time.monotonic()
        report = up(names, quiet=True)
        total = time.monotonic() - t0
        for name, row in report.items():
            results.setdefault(name, {})[f"{phase}_ready_s"] = row.get("ready_s")
        results.setdefault("_all", {})[f"{phase}_up_s"] = round(total, 2)
        down(names, quiet=True)
    print(f"{'service':16} {'cold (s)':>9} {'warm (s)':>9}")
    for name, row in results.items():
        cold, warm = (
            row.get("cold_ready_s", row.get("cold_up_s")),
            row.get("warm_ready_s", row.get("warm_up_s")),
        )
        print(f"{name if name != '_all' else 'whole stack up':16} {cold:>9} {warm:>9}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "bench"):
        p = sub.add_parser(name)
        p.add_argument(
            "services",
            nargs="*",
            help=f"default: all ({', '.join(NAMES)}; with STACK_EXECUTOR=celery also "
            f"{', '.join(CELERY_NAMES)} and worker-<name> per Celery worker)",
        )
    p = sub.add_parser(
        "reset-data",
        help="stop the stack and remove the data its services keep (benchmarks start from here)",
    )
    p.add_argument(
        "services",
        nargs="*",
        help=f"default: all ({', '.join(NAMES)}; with STACK_EXECUTOR=celery also "
        f"{', '.join(CELERY_NAMES)} and worker-<name> per Celery worker)",
    )
    p = sub.add_parser("env", help="print the client environment as shell exports")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.services)
            status(args.services)
            return 0
        if args.command == "down":
            return 0 if down(args.services) else 1
        if args.command == "reset-data":
            removed = reset_data(args.services)
            print(
                "removed "
                + (", ".join(removed) if removed else "nothing (no data kept)")
                + "; `make up` starts the stack empty"
            )
            return 0
        if args.command == "status":
            return 0 if status(args.services) else 1
        if args.command == "bench":
            results = bench(args.services)
            out = stack_config.ROOT / "bench" / "results" / "stack.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps(
                    {
                        "services": results,
                        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
                    },
                    indent=2,
                )
            )
            print(f"written {out.relative_to(stack_config.ROOT)}")
            return 0
        if args.command == "env":
            for key, value in stack_config.load().client_env().items():
                print(f"export {key}='{value}'")
            return 0
    except ServiceError as exc:
        print(f"stack: {exc}\n(`make down` stops whatever did start)", file=sys.stderr)
        return 1
    return 2
