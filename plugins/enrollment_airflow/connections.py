"""What the Airflow connections hold: secrets stay in connections, never in DAG code or XCom.

The only module that reads connections; a task reads them once, through its ``Runtime``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enrollment.clients.services import Endpoints

if TYPE_CHECKING:
    from enrollment.clients.marketing_cloud import MarketingCloudClient
    from enrollment.core.pii import Keyring

KAFKA_CONN_ID = "kafka_default"
GCP_CONN_ID = "google_cloud_default"
SOLR_CONN_ID = "solr_default"
MARKETING_CLOUD_CONN_ID = "marketing_cloud_default"
# The personal-data key: login = key id, password = key, extra {"retired": {"<key id>": "<key>"}}.
PII_CONN_ID = "enrollment_pii"


class AirflowEndpoints(Endpoints):
    """Endpoints whose Marketing Cloud client comes from the hook of its connection type."""

    def marketing_cloud(self) -> MarketingCloudClient:
        from enrollment_airflow.hooks import MarketingCloudHook

        return MarketingCloudHook(MARKETING_CLOUD_CONN_ID).get_conn()


def endpoints_from_connections() -> Endpoints:
    from airflow.sdk import BaseHook

    from enrollment_airflow.hooks import MarketingCloudHook, PipelineGoogleHook, PipelineKafkaHook

    solr = BaseHook.get_connection(SOLR_CONN_ID)
    mc = BaseHook.get_connection(MARKETING_CLOUD_CONN_ID)
    solr_path = solr.extra_dejson.get("base_path", "/solr")
    mc_auth, mc_rest = MarketingCloudHook(MARKETING_CLOUD_CONN_ID).urls()
    credentials, project = PipelineGoogleHook(GCP_CONN_ID).credentials()
    return AirflowEndpoints(
        project=project,
        credentials=credentials,
        kafka=PipelineKafkaHook(KAFKA_CONN_ID).settings(),
        solr_url=f"{solr.schema or 'http'}://{solr.host}:{solr.port}{solr_path}",
        solr_auth=(solr.login, solr.password or "") if solr.login else None,
        marketing_cloud_auth_url=mc_auth,
        marketing_cloud_rest_url=mc_rest,
        marketing_cloud_client_id=mc.login or "",
        marketing_cloud_client_secret=mc.password or "",
    )


def keyring_from_connections() -> Keyring:
    """The tax-id tokenising key (``enrollment.core.pii.Keyring``) from the ``enrollment_pii``
    connection: the current key id and key, and the retired keys tokens made before a rotation
    still match."""
    from airflow.sdk import BaseHook

    from enrollment.core.pii import Keyring

    conn = BaseHook.get_connection(PII_CONN_ID)
    if not conn.password:
        raise RuntimeError(
            f"connection {PII_CONN_ID} has no key (its password); "
            "see docs/personal-data.md, 'Tax identifiers'"
        )
    return Keyring.from_secret(
        conn.login or "k1", conn.password, conn.extra_dejson.get("retired") or {}
    )
