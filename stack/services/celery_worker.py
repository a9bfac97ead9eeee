"""One Celery worker of the configuration (STACK_EXECUTOR=celery)."""

from __future__ import annotations

from enrollment.config import CeleryWorker as CeleryWorkerConfig

from ..config import HOST, StackConfig
from .airflow import Airflow
from .base import Service


class CeleryWorker(Service):
    """One Celery worker of the configuration (``celery_workers:``): a process group of its own, so
    killing it (the load test's worker-kill, the Celery tests) leaves the other worker and the rest
    of Airflow running, as on separate machines. Same settings as Airflow's other components."""

    start_timeout_s = 120.0

    def __init__(self, cfg: StackConfig, worker: CeleryWorkerConfig):
        self.worker = worker
        self.name = f"worker-{worker.name}"
        self.title = (
            f"Celery worker {worker.name} (queues {','.join(worker.queues)}, concurrency "
            f"{worker.concurrency})"
        )
        super().__init__(cfg)

    @property
    def hostname(self) -> str:
        """Celery's node name of this worker (``celery inspect``, the results' ``worker`` field)."""
        return f"{self.worker.name}@{HOST}"

    def command(self) -> list[str]:
        return [
            "airflow",
            "celery",
            "worker",
            "--queues",
            ",".join(self.worker.queues),
            "--concurrency",
            str(self.worker.concurrency),
            "--celery-hostname",
            self.hostname,
            "--skip-serve-logs",
        ]

    def env(self) -> dict[str, str]:
        return Airflow(self.cfg).env()

    def ready(self) -> bool:
        """It answers a ping over the broker (a live process alone may still be loading Airflow)."""
        try:
            from celery import Celery

            app = Celery(broker=self.cfg.redis_url(0))
            try:
                return bool(app.control.ping(destination=[self.hostname], timeout=1.0))
            finally:
                app.close()
        except Exception:
            return False

    def url(self) -> str:
        return f"celery node {self.hostname}"
