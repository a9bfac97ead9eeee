"""Firestore: the official Cloud Firestore emulator."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import HOST
from .base import Service, ServiceError, _get

FIRESTORE_EMULATOR_CANDIDATES = (
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator",
    "/usr/share/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator",
)


class Firestore(Service):
    name, title = "firestore", "Firestore (official emulator)"
    port_names = ("FIRESTORE_PORT",)

    @staticmethod
    def binary() -> str:
        found = shutil.which("cloud_firestore_emulator") or next(
            (c for c in FIRESTORE_EMULATOR_CANDIDATES if Path(c).exists()), None
        )
        if found is None:
            raise ServiceError(
                "firestore: the Cloud Firestore emulator is not installed; install the Debian "
                "package google-cloud-cli-firestore-emulator or run "
                "`gcloud components install cloud-firestore-emulator`"
            )
        return found

    def command(self) -> list[str]:
        return [
            self.binary(),
            "start",
            f"--host={HOST}",
            f"--port={self.cfg.port('FIRESTORE_PORT')}",
        ]

    def ready(self) -> bool:
        response = _get(self.url() + "/")
        return response is not None and response.status_code == 200

    def url(self) -> str:
        return self.cfg.url("FIRESTORE_PORT")
