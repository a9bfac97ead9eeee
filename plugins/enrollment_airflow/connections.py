"""Endpoints from Airflow connections: secrets stay in connections, never in DAG code or XCom."""

from __future__ import annotations

from enrollment.services import Endpoints

KAFKA_CONN_ID = "kafka_default"
GCP_CONN_ID = "google_cloud_default"
SOLR_CONN_ID = "solr_default"
MARKETING_CLOUD_CONN_ID = "marketing_cloud_default"


def endpoints_from_connections() -> Endpoints:
    from airflow.sdk import BaseHook

    kafka = BaseHook.get_connection(KAFKA_CONN_ID)
    gcp = BaseHook.get_connection(GCP_CONN_ID)
    solr = BaseHook.get_connection(SOLR_CONN_ID)
    mc = BaseHook.get_connection(MARKETING_CLOUD_CONN_ID)
    solr_path = solr.extra_dejson.get("base_path", "/solr")
    return Endpoints(
        project=gcp.extra_dejson.get("project") or gcp.extra_dejson.get("extra__google_cloud_platform__project"),
        kafka_bootstrap=kafka.extra_dejson["bootstrap.servers"],
        solr_url=f"{solr.schema or 'http'}://{solr.host}:{solr.port}{solr_path}",
        marketing_cloud_auth_url=mc.extra_dejson.get("auth_url", "").rstrip("/"),
        marketing_cloud_rest_url=mc.extra_dejson.get("rest_url", "").rstrip("/"),
        marketing_cloud_client_id=mc.login or "",
        marketing_cloud_client_secret=mc.password or "",
    )


def warehouse_from_connections(config):
    """The BigQuery warehouse of the pipeline, reached through ``google_cloud_default``."""
    from enrollment.services import bigquery_client, storage_client
    from enrollment.warehouse import Warehouse

    project = endpoints_from_connections().project
    return Warehouse(client=bigquery_client(project), storage=storage_client(project), project=project,
                     dataset=config.warehouse_dataset, ops_dataset=config.ops_dataset)
