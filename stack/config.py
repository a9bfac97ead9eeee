"""Where the local stack lives and listens.

Ports come from the environment (``KAFKA_PORT=...``) over the values saved by the last ``up``
over the defaults below, so ``status`` and ``down`` find what ``up`` started. Everything the
stack writes lives under one git-ignored folder (``STACK_DIR``, default ``.stack``).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

DEFAULT_PORTS = {
    "KAFKA_PORT": 19092,
    "KAFKA_CONTROLLER_PORT": 19093,
    "SOLR_PORT": 18983,
    "GCS_PORT": 14443,
    "BIGQUERY_PORT": 19050,
    "BIGQUERY_GRPC_PORT": 19060,
    "FIRESTORE_PORT": 18081,
    "MARKETING_CLOUD_PORT": 18090,
    "AIRFLOW_PORT": 18080,
}


@dataclass
class StackConfig:
    state: Path
    ports: dict[str, int]
    airflow_db: str  # "sqlite" (embedded default) or "postgres"
    project: str
    credentials: dict[str, str] = field(default_factory=dict)

    @property
    def saved_file(self) -> Path:
        return self.state / "stack.json"

    def port(self, name: str) -> int:
        return self.ports[name]

    def url(self, port_name: str, path: str = "") -> str:
        return f"http://{HOST}:{self.ports[port_name]}{path}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.ports['KAFKA_PORT']}"

    @property
    def airflow_home(self) -> Path:
        return self.state / "airflow"

    @property
    def airflow_db_uri(self) -> str:
        if self.airflow_db == "postgres":
            # Peer authentication over the Unix socket: no password to keep anywhere.
            return "postgresql+psycopg2://root@/airflow_enrollment?host=/var/run/postgresql"
        return f"sqlite:///{self.airflow_home / 'airflow.db'}"

    def save(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        data = asdict(self) | {"state": str(self.state)}
        self.saved_file.write_text(json.dumps(data, indent=2))
        self.saved_file.chmod(0o600)  # holds the stub's generated client secret

    def client_env(self) -> dict[str, str]:
        """The environment a client of the stack needs: emulator hosts and Airflow connections."""
        mc_url = self.url("MARKETING_CLOUD_PORT")
        conns = {
            "KAFKA_DEFAULT": {"conn_type": "kafka", "extra": {"bootstrap.servers": self.kafka_bootstrap, "group.id": "enrollment-pipeline", "enable.auto.commit": False}},
            "GOOGLE_CLOUD_DEFAULT": {"conn_type": "google_cloud_platform", "extra": {"project": self.project, "is_anonymous": True}},
            "SOLR_DEFAULT": {"conn_type": "http", "host": HOST, "port": self.ports["SOLR_PORT"], "schema": "http", "extra": {"base_path": "/solr"}},
            "MARKETING_CLOUD_DEFAULT": {"conn_type": "marketing_cloud", "host": mc_url,
                                        "login": self.credentials["mc_client_id"], "password": self.credentials["mc_client_secret"],
                                        "extra": {"auth_url": mc_url, "rest_url": mc_url}},
        }
        env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "SOLR_URL": self.url("SOLR_PORT", "/solr"),
            "STORAGE_EMULATOR_HOST": self.url("GCS_PORT"),
            "BIGQUERY_EMULATOR_HOST": self.url("BIGQUERY_PORT"),
            "FIRESTORE_EMULATOR_HOST": f"{HOST}:{self.ports['FIRESTORE_PORT']}",
            "MARKETING_CLOUD_URL": mc_url,
            "MARKETING_CLOUD_CLIENT_ID": self.credentials["mc_client_id"],
            "MARKETING_CLOUD_CLIENT_SECRET": self.credentials["mc_client_secret"],
            "AIRFLOW_URL": self.url("AIRFLOW_PORT"),
        }
        env |= {f"AIRFLOW_CONN_{name}": json.dumps(value) for name, value in conns.items()}
        return env


def load(state: str | os.PathLike | None = None) -> StackConfig:
    state_dir = Path(state or os.environ.get("STACK_DIR") or ROOT / ".stack").resolve()
    saved: dict = {}
    saved_file = state_dir / "stack.json"
    if saved_file.exists():
        saved = json.loads(saved_file.read_text())
    ports = {name: int(os.environ.get(name) or saved.get("ports", {}).get(name) or default) for name, default in DEFAULT_PORTS.items()}
    airflow_db = os.environ.get("STACK_AIRFLOW_DB") or saved.get("airflow_db") or "sqlite"
    if airflow_db not in ("sqlite", "postgres"):
        raise SystemExit(f"STACK_AIRFLOW_DB must be 'sqlite' or 'postgres', not {airflow_db!r}")
    # Generated once per stack and kept in the git-ignored state folder (mode 600). Airflow's
    # components run as separate processes: they must share one JWT secret (or each signs task
    # tokens the others refuse) and one Fernet key.
    credentials = dict(saved.get("credentials") or {})
    for key, make in (("mc_client_id", lambda: "local-" + secrets.token_hex(6)), ("mc_client_secret", lambda: secrets.token_urlsafe(24)),
                      ("airflow_admin_password", lambda: secrets.token_urlsafe(12)), ("airflow_jwt_secret", lambda: secrets.token_urlsafe(32)),
                      ("airflow_api_secret_key", lambda: secrets.token_urlsafe(32)),
                      # Trigger kwargs are encrypted by the DAG processor and decrypted by the triggerer.
                      ("airflow_fernet_key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())):
        credentials.setdefault(key, make())
    from enrollment.config import load_config

    return StackConfig(state=state_dir, ports=ports, airflow_db=airflow_db, project=load_config().project, credentials=credentials)
