"""Round-trip checks of every service the pipeline uses: reachable, authenticated, writable.

Each check writes something small where the pipeline writes, reads it back, and reports a
``Check`` (never raises), so a caller can name the failing service instead of timing out deep
inside a task. Used by the smoke DAG and the scheduled ``environment_health`` DAG (which records
them in ``<ops>.health``); ``require`` is the quick version the ingest and sync tasks call first,
so a task fails within seconds naming the service that is down.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx

from enrollment.clients.services import Endpoints, bigquery_client, firestore_client, storage_client
from enrollment.config import PipelineConfig, load_config

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

HEALTH_TOPIC = "enrollment.health"


HEALTH_GROUP = "enrollment-health"


@dataclass(frozen=True)
class Check:
    service: str
    ok: bool
    seconds: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kafka(ep: Endpoints, cfg: PipelineConfig) -> str:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    # Where NewTopic is defined: confluent_kafka.admin re-exports it, but not in its type hints.
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient(ep.kafka.admin())
    topics = admin.list_topics(timeout=5).topics
    missing = [r.topic for r in cfg.regions if r.topic not in topics]
    if missing:
        raise RuntimeError(f"region topics missing: {missing}")
    if HEALTH_TOPIC not in topics:
        try:
            admin.create_topics([NewTopic(HEALTH_TOPIC, num_partitions=1, replication_factor=1)])[
                HEALTH_TOPIC
            ].result(10)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    token = uuid.uuid4().hex.encode()
    producer = Producer(ep.kafka.producer({"enable.idempotence": True}))
    producer.produce(HEALTH_TOPIC, key=b"health", value=token)
    if producer.flush(10) != 0:
        raise RuntimeError("produce not acknowledged within 10 s")
    consumer = Consumer(
        ep.kafka.consumer(
            {"group.id": HEALTH_GROUP, "enable.auto.commit": False, "auto.offset.reset": "earliest"}
        )
    )
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(HEALTH_TOPIC, 0), timeout=5)
        consumer.assign([TopicPartition(HEALTH_TOPIC, 0, high - 1)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error() and msg.value() == token:
                consumer.commit(message=msg, asynchronous=False)
                return (
                    f"{len(cfg.regions)} region topics present; "
                    f"produced and consumed offset {msg.offset()}"
                )
        raise RuntimeError("the produced message was not consumed back within 10 s")
    finally:
        consumer.close()


def _gcs(ep: Endpoints, cfg: PipelineConfig) -> str:
    bucket = storage_client(ep.project, ep.credentials).bucket(cfg.landing_bucket)
    blob = bucket.blob(f"_health/{uuid.uuid4().hex}.txt")
    blob.upload_from_string(b"ok", if_generation_match=0)
    try:
        if blob.download_as_bytes() != b"ok":
            raise RuntimeError("read back a different object than was written")
    finally:
        blob.delete()
    return f"bucket {cfg.landing_bucket} writable"


def _bigquery(ep: Endpoints, cfg: PipelineConfig) -> str:
    client = bigquery_client(ep.project, ep.credentials)
    for dataset in (cfg.warehouse_dataset, cfg.ops_dataset):
        client.get_dataset(dataset)
    rows = list(client.query("SELECT 1 AS one").result())
    if rows[0]["one"] != 1:
        raise RuntimeError("SELECT 1 returned something else")
    return f"datasets {cfg.warehouse_dataset}, {cfg.ops_dataset} present; queries run"


def _firestore(ep: Endpoints, cfg: PipelineConfig) -> str:
    doc = (
        firestore_client(ep.project, ep.credentials)
        .collection("_health")
        .document(uuid.uuid4().hex)
    )
    doc.set({"ok": True})
    try:
        read = doc.get().to_dict()  # None: the document is not there
        if read is None or not read.get("ok"):
            raise RuntimeError("read back a different document than was written")
    finally:
        doc.delete()
    return "document written and read back"


def _solr(ep: Endpoints, cfg: PipelineConfig) -> str:
    response = httpx.get(
        f"{ep.solr_url}/{cfg.solr_core}/admin/ping",
        params={"wt": "json"},
        timeout=5,
        auth=ep.solr_auth,
    )
    response.raise_for_status()
    if response.json().get("status") != "OK":
        raise RuntimeError(f"ping answered {response.text[:200]}")
    return f"core {cfg.solr_core} answers ping"


def _marketing_cloud(ep: Endpoints, cfg: PipelineConfig) -> str:
    response = httpx.post(
        f"{ep.marketing_cloud_auth_url}/v2/token",
        timeout=10,
        json={
            "grant_type": "client_credentials",
            "client_id": ep.marketing_cloud_client_id,
            "client_secret": ep.marketing_cloud_client_secret,
        },
    )
    if response.status_code != 200:
        raise RuntimeError(f"token request answered HTTP {response.status_code}")
    return f"authenticated; token valid for {json.loads(response.text)['expires_in']} s"


CHECKS: dict[str, Callable[[Endpoints, PipelineConfig], str]] = {
    "kafka": _kafka,
    "gcs": _gcs,
    "bigquery": _bigquery,
    "firestore": _firestore,
    "solr": _solr,
    "marketing-cloud": _marketing_cloud,
}


class ServiceDown(RuntimeError):
    """A service a task needs did not answer; the message names it (and where it was looked for)."""


def _where(service: str, ep: Endpoints) -> str:
    import os

    return {
        "kafka": f"{ep.kafka.bootstrap} ({ep.kafka.source})",
        "gcs": os.environ.get("STORAGE_EMULATOR_HOST", "Cloud Storage"),
        "bigquery": os.environ.get("BIGQUERY_EMULATOR_HOST", "BigQuery"),
        "solr": ep.solr_url,
        "firestore": os.environ.get("FIRESTORE_EMULATOR_HOST", "Firestore"),
        "marketing-cloud": ep.marketing_cloud_rest_url,
    }[service]


def _answers(service: str, ep: Endpoints, cfg: PipelineConfig, timeout_s: float) -> None:
    """The cheapest call that proves the service is up, without the clients' long retries."""
    if service == "kafka":
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient

        # What the client heard: a refused login or certificate shows only here (the metadata
        # call itself just times out).
        heard: list[str] = []

        def hear(error: KafkaError) -> None:
            heard.append(error.str())

        admin = AdminClient(
            ep.kafka.admin(
                {"socket.connection.setup.timeout.ms": int(timeout_s * 1000), "error_cb": hear}
            )
        )
        try:
            admin.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            admin.poll(0)
            causes = [h for h in dict.fromkeys(heard) if "brokers are down" not in h][:2]
            raise RuntimeError("; ".join([str(exc.args[0].str()), *causes])) from exc
    elif service == "gcs":
        if (
            not storage_client(ep.project, ep.credentials)
            .bucket(cfg.landing_bucket)
            .exists(timeout=timeout_s, retry=None)
        ):
            raise RuntimeError(f"bucket {cfg.landing_bucket} does not exist")
    elif service == "bigquery":
        bigquery_client(ep.project, ep.credentials).get_dataset(
            cfg.warehouse_dataset,
            timeout=timeout_s,
            retry=None,  # type: ignore[arg-type]  # None (no retries) is valid; the hint omits it
        )
    elif service == "solr":
        httpx.get(
            f"{ep.solr_url}/{cfg.solr_core}/admin/ping",
            params={"wt": "json"},
            timeout=timeout_s,
            auth=ep.solr_auth,
        ).raise_for_status()
    elif service == "marketing-cloud":
        httpx.get(
            ep.marketing_cloud_auth_url, timeout=timeout_s
        )  # any HTTP answer: the token is the sink's business
    elif service == "firestore":
        import os

        host = os.environ.get("FIRESTORE_EMULATOR_HOST")
        if host:
            httpx.get(f"http://{host}/", timeout=timeout_s)
        else:
            firestore_client(ep.project, ep.credentials).collection("_health").document("ping").get(
                timeout=timeout_s, retry=None
            )
    else:
        raise KeyError(f"unknown service {service!r}")


# What a refusal's words point at, and what to check in the connection: librdkafka's and the
# HTTP clients' messages for a wrong password, a certificate not trusted, a missing credential.
_HINTS = (  # the first match wins: the specific before the general
    (
        ("invalid_token",),
        "check the OAUTHBEARER token (kafka_default: oauth_cb or sasl.oauthbearer.*; its issuer, "
        "audience, expiry and signing key)",
    ),
    (
        ("alert bad certificate", "certificate required"),
        "check the client certificate (kafka_default: ssl.certificate.location, "
        "ssl.key.location) and that the broker trusts its CA",
    ),
    (
        ("authentication failed", "sasl authentication", "invalid credentials", "401 unauthorized"),
        "check the connection's user and password (kafka_default: sasl.username, "
        "sasl.password; solr_default: login, password)",
    ),
    (
        ("certificate verify failed", "ssl handshake failed", "certificate_verify_failed"),
        "check the CA the connection trusts (Kafka: ssl.ca.location) and the server's name",
    ),
    (
        ("default credentials", "could not automatically determine credentials"),
        "check google_cloud_default (key_path, keyfile_dict or the environment's credentials)",
    ),
)


def _what_to_check(why: str) -> str:
    low = why.lower()
    for words, hint in _HINTS:
        if any(w in low for w in words):
            return f" — {hint}"
    return ""


def require(
    services: list[str],
    endpoints: Endpoints,
    config: PipelineConfig | None = None,
    timeout_s: float = 5.0,
) -> None:
    """Fails fast, naming every service of ``services`` that does not answer within
    ``timeout_s``."""
    config = config or load_config()
    down = []
    for service in services:
        try:
            _answers(service, endpoints, config, timeout_s)
        except Exception as exc:
            why = " ".join(str(exc).split())[:200]
            down.append(
                f"{service} at {_where(service, endpoints)} ({type(exc).__name__}: {why})"
                + _what_to_check(why)
            )
    if down:
        raise ServiceDown("service down: " + "; ".join(down))


HEALTH_SCHEMA = [
    ("service", "STRING"),
    ("ok", "BOOL"),
    ("seconds", "FLOAT64"),
    ("detail", "STRING"),
    ("run_id", "STRING"),
    ("checked_at", "TIMESTAMP"),
]


def record(
    checks: list[Check],
    run_id: str,
    project: str,
    config: PipelineConfig | None = None,
    credentials: Credentials | None = None,
) -> None:
    """The checks as rows of ``<ops>.health`` (one per service and run; recording again replaces
    them)."""
    from google.cloud import bigquery

    config = config or load_config()
    client = bigquery_client(project, credentials)
    table = f"`{project}.{config.ops_dataset}.health`"
    client.query(
        f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {t}' for c, t in HEALTH_SCHEMA)}) "
        "PARTITION BY DATE(checked_at) CLUSTER BY service"
    ).result()
    params, rows = [bigquery.ScalarQueryParameter("run", "STRING", run_id)], []
    for i, c in enumerate(checks):
        params += [
            bigquery.ScalarQueryParameter(f"s{i}", "STRING", c.service),
            bigquery.ScalarQueryParameter(f"o{i}", "BOOL", c.ok),
            bigquery.ScalarQueryParameter(f"t{i}", "FLOAT64", c.seconds),
            bigquery.ScalarQueryParameter(f"d{i}", "STRING", c.detail),
        ]
        rows.append(f"SELECT @s{i} AS service, @o{i} AS ok, @t{i} AS seconds, @d{i} AS detail")
    client.query(
        f"MERGE {table} T USING (SELECT *, @run AS run_id, CURRENT_TIMESTAMP() AS checked_at "
        f"""FROM ({" UNION ALL ".join(rows)})) S
        ON T.run_id = S.run_id AND T.service = S.service
        WHEN MATCHED THEN UPDATE SET ok = S.ok, seconds = S.seconds, detail = S.detail, """
        """checked_at = S.checked_at
        WHEN NOT MATCHED THEN INSERT (service, ok, seconds, detail, run_id, checked_at) """
        "VALUES (S.service, S.ok, S.seconds, S.detail, S.run_id, S.checked_at)",
        job_config=bigquery.QueryJobConfig(query_parameters=params),
    ).result()


def check(service: str, endpoints: Endpoints, config: PipelineConfig | None = None) -> Check:
    config = config or load_config()
    t0 = time.monotonic()
    try:
        detail = CHECKS[service](endpoints, config)
        ok = True
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {exc}"[:500], False
    return Check(service=service, ok=ok, seconds=round(time.monotonic() - t0, 3), detail=detail)
