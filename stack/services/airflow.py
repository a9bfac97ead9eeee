"""Apache Airflow 3: its components as one process group, its settings (``Airflow.env``), its
metadata database (SQLite or the local PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from enrollment.config import DEFAULT_QUEUE

from ..config import AIRFLOW_DB_NAME, AIRFLOW_DB_ROLE, HOST, ROOT, private_dir, write_private
from .base import Service, ServiceError, _get


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
            # Kafka's and Solr's credentials: from kafka_default and solr_default.
            "KAFKA_CLIENT_CONFIG",
            "SOLR_USERNAME",
            "SOLR_PASSWORD",
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
            # STACK_HEARTBEAT_TIMEOUT_S shortens it where a test kills workers on purpose.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": os.environ.get(
                "STACK_HEARTBEAT_TIMEOUT_S", "120"
            ),
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
