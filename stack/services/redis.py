"""Redis: the Celery broker and result backend (STACK_EXECUTOR=celery)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import HOST, write_private
from .base import Service, ServiceError


class Redis(Service):
    """The Celery broker and result backend (STACK_EXECUTOR=celery): Debian's redis-server on
    loopback, with a password, its queue kept on disk
    (append-only file) so a restart loses no task."""

    name, title = "redis", "Redis (Celery broker)"
    port_names = ("REDIS_PORT",)

    def data_dirs(self) -> list[Path]:
        return [self.dir / "data"]

    @staticmethod
    def binary() -> str:
        found = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if found is None:
            raise ServiceError(
                "redis: redis-server is not installed; `make install` installs Debian's "
                "redis-server (or: apt-get install redis-server)"
            )
        return found

    def prepare(self) -> bool:
        cold = not (self.dir / "data").exists()
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        # The password lives in the config file (0600), never on a command line where `ps` shows it.
        write_private(
            self.dir / "redis.conf",
            "\n".join(
                [
                    f"bind {HOST}",
                    f"port {self.cfg.port('REDIS_PORT')}",
                    "protected-mode yes",
                    f"requirepass {self.cfg.credentials['redis_password']}",
                    f"dir {self.dir / 'data'}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    'logfile ""',
                    "loglevel warning",
                    "",
                ]
            ),
        )
        return cold

    def command(self) -> list[str]:
        return [self.binary(), str(self.dir / "redis.conf")]

    def client(self):
        import redis

        return redis.Redis(
            host=HOST,
            port=self.cfg.port("REDIS_PORT"),
            password=self.cfg.credentials["redis_password"],
            socket_timeout=1.0,
        )

    def ready(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def url(self) -> str:
        return f"redis://{HOST}:{self.cfg.port('REDIS_PORT')}"
