"""Apache Solr 9 with the project's configset and core, behind its BasicAuth plugin (every
request authenticated, as in production; the user is ``solr_default``'s)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
from pathlib import Path

import httpx

from ..config import ROOT, SOLR_USER, write_private
from .base import LOG4J2, STACK, Service, ServiceError, _get


def solr_credential(password: str, salt: bytes) -> str:
    """A password as Solr's BasicAuth plugin stores it: base64 of sha256(sha256(salt +
    password)), a space, base64 of the salt."""
    digest = hashlib.sha256(hashlib.sha256(salt + password.encode()).digest()).digest()
    return f"{base64.b64encode(digest).decode()} {base64.b64encode(salt).decode()}"


class Solr(Service):
    name, title = "solr", "Apache Solr 9.10"
    port_names = ("SOLR_PORT",)
    configsets = ROOT / "include" / "enrollment" / "solr" / "configsets"

    @property
    def home(self) -> Path:
        return self.dir / "home"

    def data_dirs(self) -> list[Path]:
        return [self.home / "cores"]

    def prepare(self) -> bool:
        lib, classes = self.dir / "lib", self.dir / "classes"
        if not any(lib.glob("solr-core-*.jar")) or not (classes / "SolrLauncher.class").exists():
            raise ServiceError(
                f"solr: jars or launcher missing under {self.dir}; run `make install`"
            )
        cold = not (self.home / "cores").exists()
        (self.home / "cores").mkdir(parents=True, exist_ok=True)
        shutil.copy(STACK / "solr" / "solr.xml", self.home / "solr.xml")
        # Read by Solr at start: every request must authenticate (blockUnknown).
        security = {
            "authentication": {
                "class": "solr.BasicAuthPlugin",
                "blockUnknown": True,
                "realm": "enrollment local stack",
                "forwardCredentials": False,
                "credentials": {
                    SOLR_USER: solr_credential(
                        self.cfg.credentials["solr_password"], secrets.token_bytes(16)
                    )
                },
            }
        }
        write_private(self.home / "security.json", json.dumps(security, indent=2))
        # The configset is copied on every start, so a schema change lands at the next `up`.
        shutil.copytree(self.configsets, self.home / "configsets", dirs_exist_ok=True)
        return cold

    def command(self) -> list[str]:
        classpath = f"{self.dir / 'classes'}:{self.dir / 'lib'}/*"
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            f"-Dlog4j2.configurationFile={LOG4J2}",
            f"-Dsolr.log.dir={self.dir}",
            "-Dsolr.install.dir=" + str(self.dir),
            "-cp",
            classpath,
            "SolrLauncher",
            str(self.home),
            str(self.cfg.port("SOLR_PORT")),
        ]

    def ready(self) -> bool:
        response = _get(self.url() + "/admin/cores?action=STATUS&wt=json", auth=self.cfg.solr_auth)
        return response is not None and response.status_code == 200

    def setup(self) -> None:
        from enrollment.config import load_config

        core = load_config().solr_core
        status = httpx.get(
            f"{self.url()}/admin/cores",
            params={"action": "STATUS", "core": core, "wt": "json"},
            auth=self.cfg.solr_auth,
            timeout=10,
        ).json()
        if status.get("status", {}).get(core):
            return
        created = httpx.get(
            f"{self.url()}/admin/cores",
            params={"action": "CREATE", "name": core, "configSet": core, "wt": "json"},
            auth=self.cfg.solr_auth,
            timeout=60,
        )
        if created.status_code != 200:
            raise ServiceError(f"solr: creating core {core} failed: {created.text[:500]}")

    def url(self) -> str:
        return self.cfg.url("SOLR_PORT", "/solr")

    def describe(self) -> str:
        return f"{self.url()} (BasicAuth, user {SOLR_USER})"
