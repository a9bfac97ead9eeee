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
from typing import Any

from enrollment.clients.kafka import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
AIRFLOW_DB_NAME = AIRFLOW_DB_ROLE = "airflow_enrollment"
STUB_TOKEN_HEADER = "X-Stub-Token"
# Kafka's users (SCRAM, made when its storage is formatted): the broker's own, and the pipeline's.
SCRAM = "SCRAM-SHA-512"
KAFKA_ADMIN_USER, KAFKA_USER = "admin", "enrollment"
# PLAIN's users live in the broker's configuration file: a user of its own, never the pipeline's.
KAFKA_PLAIN_USER = "plain-client"
# The issuer and audience of the OAUTHBEARER tokens the broker accepts (signed by the key
# stack.tls.LocalCA.token_signer makes; checked against its JWKS file).
OAUTH_ISSUER, OAUTH_AUDIENCE = "enrollment-local-stack", "kafka"
SOLR_USER = "enrollment"  # Solr's BasicAuth user (its password: solr_password in stack.json)


def private_dir(path: Path) -> Path:
    """Creates ``path`` (and parents) and makes it readable
    by its owner only (0700), also when it existed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Writes a file that holds secrets: created 0600 (never readable by others, not even for a
    moment); an existing file is narrowed to 0600 before its new content is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = -1
            fh.write(text)
    finally:
        if fd != -1:
            os.close(fd)


DEFAULT_PORTS = {
    "KAFKA_PORT": 19092,
    "KAFKA_CONTROLLER_PORT": 19093,
    "KAFKA_MTLS_PORT": 19094,  # Kafka's SSL listener: clients authenticate with a certificate
    "SOLR_PORT": 18983,
    "GCS_PORT": 14443,
    "BIGQUERY_PORT": 19050,
    "BIGQUERY_GRPC_PORT": 19060,
    "FIRESTORE_PORT": 18081,
    "MARKETING_CLOUD_PORT": 18090,
    "AIRFLOW_PORT": 18080,
    "REDIS_PORT": 16379,  # the Celery broker (STACK_EXECUTOR=celery only)
}
EXECUTORS = ("local", "celery")


@dataclass
class StackConfig:
    state: Path
    ports: dict[str, int]
    airflow_db: str  # "sqlite" (embedded default) or "postgres"
    project: str
    # "local" (LocalExecutor, the embedded default)
    # or "celery" (Redis broker, the configured workers)
    executor: str = "local"
    credentials: dict[str, str] = field(
        default_factory=dict, repr=False
    )  # secrets: never in a repr (logs, tracebacks)

    @property
    def saved_file(self) -> Path:
        return self.state / "stack.json"

    @property
    def celery(self) -> bool:
        return self.executor == "celery"

    def redis_url(self, db: int) -> str:
        """The Celery broker (db 0) and result backend
        (db 1): Redis on loopback, with its password."""
        return (
            f"redis://:{self.credentials['redis_password']}@{HOST}:{self.ports['REDIS_PORT']}/{db}"
        )

    def port(self, name: str) -> int:
        return self.ports[name]

    def url(self, port_name: str, path: str = "") -> str:
        return f"http://{HOST}:{self.ports[port_name]}{path}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.ports['KAFKA_PORT']}"

    @property
    def kafka_mtls_bootstrap(self) -> str:
        """The broker's SSL listener, where a client authenticates with a certificate of the
        stack's CA (``kafka_tls_dir / "client.pem"``) instead of a password."""
        return f"{HOST}:{self.ports['KAFKA_MTLS_PORT']}"

    @property
    def kafka(self) -> KafkaSettings:
        """The stack's Kafka as every client of it is given it (``kafka_default``'s extra)."""
        return KafkaSettings(self.kafka_extra(), source="the local stack")

    @property
    def solr_auth(self) -> tuple[str, str]:
        """Solr's BasicAuth user and password (httpx's ``auth=``)."""
        return SOLR_USER, self.credentials["solr_password"]

    @property
    def kafka_tls_dir(self) -> Path:
        return self.state / "kafka" / "tls"

    def kafka_extra(self) -> dict[str, Any]:
        """The broker's SASL_SSL listener, as the pipeline's user: SCRAM over TLS, the broker's
        certificate checked against the stack's CA (and its name, 127.0.0.1)."""
        return {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM,
            "sasl.username": KAFKA_USER,
            "sasl.password": self.credentials["kafka_password"],
            "ssl.ca.location": str(self.kafka_tls_dir / "ca.pem"),
        }

    @property
    def airflow_home(self) -> Path:
        return self.state / "airflow"

    @property
    def airflow_db_uri(self) -> str:
        if self.airflow_db == "postgres":
            # An ordinary role (not a superuser) that owns only its database, with a generated
            # password, over TCP on loopback (pg_hba.conf asks for a password there).
            return (
                f"postgresql+psycopg2://{AIRFLOW_DB_ROLE}:{self.credentials['airflow_db_password']}"
                f"@{HOST}:{self.postgres_port}/{AIRFLOW_DB_NAME}"
            )
        return f"sqlite:///{self.airflow_home / 'airflow.db'}"

    @property
    def postgres_port(self) -> int:
        return int(os.environ.get("STACK_POSTGRES_PORT") or 5432)

    @property
    def env_file(self) -> Path:
        return self.state / "stack.env"

    @property
    def pii_retired_keys(self) -> dict[str, str]:
        """Personal-data keys retired by a rotation
        ({key id: key}; ``pii_retired_keys`` in stack.json)."""
        return json.loads(self.credentials.get("pii_retired_keys") or "{}")

    def stub_headers(self) -> dict[str, str]:
        """The header the Marketing Cloud stub's admin endpoints (``/_stub/...``) require."""
        return {STUB_TOKEN_HEADER: self.credentials["mc_stub_token"]}

    def save(self) -> None:
        """Writes ``stack.json`` (ports and the generated credentials): 0600 in a 0700 folder."""
        private_dir(self.state)
        data = asdict(self) | {"state": str(self.state)}
        write_private(self.saved_file, json.dumps(data, indent=2))

    def save_env(self) -> None:
        """Writes ``stack.env`` (the clients' environment,
        with their secrets): 0600 in a 0700 folder."""
        private_dir(self.state)
        write_private(
            self.env_file, "".join(f"export {k}='{v}'\n" for k, v in self.client_env().items())
        )

    def client_env(self) -> dict[str, str]:
        """The environment a client of the stack needs: emulator hosts and Airflow connections."""
        mc_url = self.url("MARKETING_CLOUD_PORT")
        conns = {
            "KAFKA_DEFAULT": {
                "conn_type": "kafka",
                # The librdkafka settings (the Kafka provider's form); the pipeline sets its group.
                "extra": self.kafka_extra(),
            },
            "GOOGLE_CLOUD_DEFAULT": {
                "conn_type": "google_cloud_platform",
                "extra": {"project": self.project, "is_anonymous": True},
            },
            "SOLR_DEFAULT": {
                "conn_type": "http",
                "host": HOST,
                "port": self.ports["SOLR_PORT"],
                "login": SOLR_USER,
                "password": self.credentials["solr_password"],
                "schema": "http",
                "extra": {"base_path": "/solr"},
            },
            "MARKETING_CLOUD_DEFAULT": {
                "conn_type": "marketing_cloud",
                "host": mc_url,
                "login": self.credentials["mc_client_id"],
                "password": self.credentials["mc_client_secret"],
                "extra": {"auth_url": mc_url, "rest_url": mc_url},
            },
            # The key tax ids are tokenised with (enrollment.pii): login = key id, password = key.
            "ENROLLMENT_PII": {
                "conn_type": "generic",
                "login": self.credentials["pii_key_id"],
                "password": self.credentials["pii_key"],
                "extra": {"retired": self.pii_retired_keys},
            },
        }
        env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            # The rest of kafka_default's settings (TLS, SASL) for tools and tests outside Airflow.
            "KAFKA_CLIENT_CONFIG": json.dumps(
                {k: v for k, v in self.kafka_extra().items() if k != "bootstrap.servers"}
            ),
            "SOLR_URL": self.url("SOLR_PORT", "/solr"),
            "SOLR_USERNAME": SOLR_USER,
            "SOLR_PASSWORD": self.credentials["solr_password"],
            "STORAGE_EMULATOR_HOST": self.url("GCS_PORT"),
            "BIGQUERY_EMULATOR_HOST": self.url("BIGQUERY_PORT"),
            # Its Storage Read API (gRPC): Arrow record batches (enrollment.clients.services).
            "BIGQUERY_STORAGE_EMULATOR_HOST": f"{HOST}:{self.ports['BIGQUERY_GRPC_PORT']}",
            "FIRESTORE_EMULATOR_HOST": f"{HOST}:{self.ports['FIRESTORE_PORT']}",
            "MARKETING_CLOUD_URL": mc_url,
            "MARKETING_CLOUD_CLIENT_ID": self.credentials["mc_client_id"],
            "MARKETING_CLOUD_CLIENT_SECRET": self.credentials["mc_client_secret"],
            # For tests and tools that read back what the stub accepted (its /_stub/ endpoints).
            "MARKETING_CLOUD_STUB_TOKEN": self.credentials["mc_stub_token"],
            "AIRFLOW_URL": self.url("AIRFLOW_PORT"),
            # The same key for tests and tools outside Airflow (enrollment.pii.Keyring.from_env).
            "ENROLLMENT_PII_KEY_ID": self.credentials["pii_key_id"],
            "ENROLLMENT_PII_KEY": self.credentials["pii_key"],
            "ENROLLMENT_PII_RETIRED_KEYS": json.dumps(self.pii_retired_keys),
        }
        env |= {f"AIRFLOW_CONN_{name}": json.dumps(value) for name, value in conns.items()}
        return env


def load(state: str | os.PathLike | None = None) -> StackConfig:
    state_dir = Path(state or os.environ.get("STACK_DIR") or ROOT / ".stack").resolve()
    saved: dict = {}
    saved_file = state_dir / "stack.json"
    if saved_file.exists():
        saved = json.loads(saved_file.read_text())
    ports = {
        name: int(os.environ.get(name) or saved.get("ports", {}).get(name) or default)
        for name, default in DEFAULT_PORTS.items()
    }
    airflow_db = os.environ.get("STACK_AIRFLOW_DB") or saved.get("airflow_db") or "sqlite"
    if airflow_db not in ("sqlite", "postgres"):
        raise SystemExit(f"STACK_AIRFLOW_DB must be 'sqlite' or 'postgres', not {airflow_db!r}")
    # Kept like the ports, so `status` and `down` find the workers `up` started.
    executor = os.environ.get("STACK_EXECUTOR") or saved.get("executor") or "local"
    if executor not in EXECUTORS:
        raise SystemExit(f"STACK_EXECUTOR must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    # Generated once per stack and kept in the git-ignored state folder (mode 600). Airflow's
    # components run as separate processes: they must share one JWT secret (or each signs task
    # tokens the others refuse) and one Fernet key.
    credentials = dict(saved.get("credentials") or {})
    for key, make in (
        ("mc_client_id", lambda: "local-" + secrets.token_hex(6)),
        ("mc_client_secret", lambda: secrets.token_urlsafe(24)),
        ("airflow_admin_password", lambda: secrets.token_urlsafe(12)),
        # A read-only user: what an operator who may look but not start runs sees (access tests).
        ("airflow_viewer_password", lambda: secrets.token_urlsafe(12)),
        ("airflow_jwt_secret", lambda: secrets.token_urlsafe(32)),
        ("airflow_api_secret_key", lambda: secrets.token_urlsafe(32)),
        # The stub's admin endpoints (/_stub/...) and the metadata DB's ordinary role.
        ("mc_stub_token", lambda: secrets.token_urlsafe(24)),
        ("airflow_db_password", lambda: secrets.token_urlsafe(24)),
        # Trigger kwargs are encrypted by the DAG processor and decrypted by the triggerer.
        ("airflow_fernet_key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()),
        # The key tax ids are tokenised with (a keyed hash: without it nobody can test a guess).
        ("pii_key_id", lambda: "local1"),
        ("pii_key", lambda: secrets.token_urlsafe(32)),
        # The Celery broker's password (Redis' requirepass).
        ("redis_password", lambda: secrets.token_urlsafe(24)),
        # Kafka's SCRAM users: the broker's own (inter-broker) and the pipeline's.
        ("kafka_admin_password", lambda: secrets.token_urlsafe(24)),
        ("kafka_password", lambda: secrets.token_urlsafe(24)),
        ("kafka_plain_password", lambda: secrets.token_urlsafe(24)),  # the PLAIN test user's
        ("solr_password", lambda: secrets.token_urlsafe(24)),
    ):
        credentials.setdefault(key, make())
    from enrollment.config import load_config

    return StackConfig(
        state=state_dir,
        ports=ports,
        airflow_db=airflow_db,
        project=load_config().project,
        executor=executor,
        credentials=credentials,
    )
