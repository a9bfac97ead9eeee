"""Marketing Cloud: the contract stub (``stack.marketing_cloud_stub``) as a service."""

from __future__ import annotations

import sys

from ..config import HOST, ROOT
from .base import Service, _get


class MarketingCloudStub(Service):
    name, title = "marketing-cloud", "Marketing Cloud contract stub"
    port_names = ("MARKETING_CLOUD_PORT",)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "stack.marketing_cloud_stub",
            "--host",
            HOST,
            "--port",
            str(self.cfg.port("MARKETING_CLOUD_PORT")),
        ]

    def env(self) -> dict[str, str]:
        # Its own secrets only: the client credentials
        # it checks and the token of its admin endpoints.
        credentials = self.cfg.credentials
        return {
            "MC_STUB_CLIENT_ID": credentials["mc_client_id"],
            "MC_STUB_CLIENT_SECRET": credentials["mc_client_secret"],
            "MC_STUB_ADMIN_TOKEN": credentials["mc_stub_token"],
            "PYTHONPATH": str(ROOT),
        }

    def ready(self) -> bool:
        response = _get(self.url() + "/_stub/health")
        return response is not None and response.status_code == 200

    def url(self) -> str:
        return self.cfg.url("MARKETING_CLOUD_PORT")
