"""BigQuery: the bqemulator in its own virtualenv, with the pipeline's datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from ..config import HOST
from .base import Service, ServiceError, _get
from .gcs import CloudStorage


class BigQuery(Service):
    name, title = "bigquery", "BigQuery (bqemulator)"
    port_names = ("BIGQUERY_PORT", "BIGQUERY_GRPC_PORT")
    duckdb_version = "v1.5.5"

    @property
    def venv(self) -> Path:
        return self.cfg.state / "bq-venv"

    def data_dirs(self) -> list[Path]:
        return [self.dir / "data"]

    def prepare(self) -> bool:
        binary = self.venv / "bin" / "bqemulator"
        if not binary.exists():
            raise ServiceError(
                f"bigquery: the emulator's virtualenv is missing ({self.venv}); run `make install`"
            )
        # Offline start: DuckDB would download its spatial extension at start; place the copy
        # shipped by duckdb-extension-spatial where DuckDB looks (HOME is ours, not the user's).
        shipped = next(
            self.venv.glob(
                f"lib/python3*/site-packages/duckdb_extension_spatial/extensions/{self.duckdb_version}/spatial.duckdb_extension"
            ),
            None,
        )
        if shipped is None:
            raise ServiceError(
                "bigquery: duckdb-extension-spatial is missing from the emulator's virtualenv; run "
                "`make install`"
            )
        target = (
            self.dir
            / "home"
            / ".duckdb"
            / "extensions"
            / self.duckdb_version
            / "linux_amd64"
            / "spatial.duckdb_extension"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy(shipped, target)
        cold = not (self.dir / "data").exists()
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        return cold

    def command(self) -> list[str]:
        return [
            str(self.venv / "bin" / "bqemulator"),
            "start",
            "--rest-host",
            HOST,
            "--rest-port",
            str(self.cfg.port("BIGQUERY_PORT")),
            "--grpc-host",
            HOST,
            "--grpc-port",
            str(self.cfg.port("BIGQUERY_GRPC_PORT")),
            "--project",
            self.cfg.project,
            "--persistent",
            "--data-dir",
            str(self.dir / "data"),
            "--log-level",
            "warning",
        ]

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.dir / "home"),
            # `gs://` load jobs read fake-gcs-server's files directly.
            "BQEMU_GCS_LOCAL_ROOT": str(CloudStorage(self.cfg).root),
            # Every write snapshots the whole table for time travel; keep none.
            "BQEMU_TIME_TRAVEL_RETENTION_DAYS": "0",
        }

    def ready(self) -> bool:
        response = _get(f"{self.url()}/bigquery/v2/projects/{self.cfg.project}/datasets")
        return response is not None and response.status_code == 200

    def setup(self) -> None:
        from enrollment.config import load_config

        config = load_config()
        for dataset in (config.warehouse_dataset, config.ops_dataset):
            response = httpx.post(
                f"{self.url()}/bigquery/v2/projects/{self.cfg.project}/datasets",
                json={
                    "datasetReference": {"projectId": self.cfg.project, "datasetId": dataset},
                    "location": "US",
                },
                timeout=30,
            )
            if response.status_code not in (200, 409):
                raise ServiceError(
                    f"bigquery: creating dataset {dataset} failed: {response.text[:500]}"
                )

    def url(self) -> str:
        return self.cfg.url("BIGQUERY_PORT")
