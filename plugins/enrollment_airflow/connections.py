"""Endpoints from Airflow connections: secrets stay in connections, never in DAG code or XCom."""

from __future__ import annotations

from enrollment.services import Endpoints

KAFKA_CONN_ID = "kafka_default"
GCP_CONN_ID = "google_cloud_default"
SOLR_CONN_ID = "solr_default"
MARKETING_CLOUD_CONN_ID = "marketing_cloud_default"
# The personal-data key: login = key id, password = key, extra {"retired": {"<key id>": "<key>"}}.
PII_CONN_ID = "enrollment_pii"


class AirflowEndpoints(Endpoints):
    """Endpoints whose Marketing Cloud client comes from the hook of its connection type."""

    def marketing_cloud(self):
        from enrollment_airflow.hooks import MarketingCloudHook

        return MarketingCloudHook(MARKETING_CLOUD_CONN_ID).get_conn()


def endpoints_from_connections() -> Endpoints:
    from airflow.sdk import BaseHook

    from enrollment_airflow.hooks import MarketingCloudHook

    kafka = BaseHook.get_connection(KAFKA_CONN_ID)
    gcp = BaseHook.get_connection(GCP_CONN_ID)
    solr = BaseHook.get_connection(SOLR_CONN_ID)
    mc = BaseHook.get_connection(MARKETING_CLOUD_CONN_ID)
    solr_path = solr.extra_dejson.get("base_path", "/solr")
    mc_auth, mc_rest = MarketingCloudHook(MARKETING_CLOUD_CONN_ID).urls()
    return AirflowEndpoints(
        project=gcp.extra_dejson.get("project")
        or gcp.extra_dejson.get("extra__google_cloud_platform__project"),
        kafka_bootstrap=kafka.extra_dejson["bootstrap.servers"],
        solr_url=f"{solr.schema or 'http'}://{solr.host}:{solr.port}{solr_path}",
        marketing_cloud_auth_url=mc_auth,
        marketing_cloud_rest_url=mc_rest,
        marketing_cloud_client_id=mc.login or "",
        marketing_cloud_client_secret=mc.password or "",
    )


def keyring_from_connections():
    """The tax-id tokenising key (``enrollment.pii.Keyring``) from the ``enrollment_pii`` connection:
    the current key id and key, and the retired keys tokens made before a rotation still match."""
    from airflow.sdk import BaseHook

    from enrollment.pii import Keyring

    conn = BaseHook.get_connection(PII_CONN_ID)
    if not conn.password:
        raise RuntimeError(
            f"connection {PII_CONN_ID} has no key (its password); see the README, 'Tax identifiers'"
        )
    return Keyring.from_secret(
        conn.login or "k1", conn.password, conn.extra_dejson.get("retired") or {}
    )


def warehouse_from_connections(config):
    """The BigQuery warehouse of the pipeline, reached through ``google_cloud_default``."""
    from enrollment.services import bigquery_client, storage_client
    from enrollment.warehouse import Warehouse

    project = endpoints_from_connections().project
    return Warehouse(
        client=bigquery_client(project),
        storage=storage_client(project),
        project=project,
        dataset=config.warehouse_dataset,
        ops_dataset=config.ops_dataset,
        settings=config.warehouse,
    )


def sync_run_from_connections(config):
    """A sink sync against the pipeline's warehouse and landing bucket."""
    from enrollment.services import storage_client
    from enrollment.sync import SyncRun

    warehouse = warehouse_from_connections(config)
    return SyncRun(warehouse, storage_client(warehouse.project).bucket(config.landing_bucket))


def sink_from_connections(config, name: str):
    """The configured sink ``name``, its clients built from the Airflow connections."""
    from enrollment.sinks import build_sink

    return build_sink(name, config.sinks[name], endpoints_from_connections())
