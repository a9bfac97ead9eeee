"""What every service of the local stack shares: the ``Service`` base class (prepare, start,
probe, set up), ``ServiceError``, the quiet HTTP probe and the stack's own files (Log4j 2 of the
JVM services)."""

from __future__ import annotations

from pathlib import Path

import httpx

from ..config import ROOT, StackConfig

STACK = ROOT / "stack"
LOG4J2 = STACK / "log4j2.xml"


class ServiceError(RuntimeError):
    """A service could not be prepared, started or set up; the message names it."""


def _get(
    url: str, timeout: float = 1.0, auth: tuple[str, str] | None = None
) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=timeout, auth=auth)
    except httpx.HTTPError:
        return None


class Service:
    name: str = ""
    title: str = ""
    start_timeout_s = 90.0
    port_names: tuple[str, ...] = ()

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.dir = cfg.state / self.name

    # -- what each service defines ------------------------------------------------------------
    def data_dirs(self) -> list[Path]:
        """Where the service keeps the pipeline's data
        (``reset-data`` removes them); none: in memory."""
        return []

    def prepare(self) -> bool:
        """Creates what the first start needs; returns True when it did (a cold start)."""
        return False

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def ready(self) -> bool:
        raise NotImplementedError

    def setup(self) -> None:
        """Idempotent: topics, cores, buckets, datasets. Runs after every ``up``."""

    def url(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """Where it answers and how a client authenticates (``make status``)."""
        return self.url()

    # -- shared --------------------------------------------------------------------------------
    def ports(self) -> list[int]:
        return [self.cfg.port(p) for p in self.port_names]

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"
