"""What the Airflow connections hold: secrets stay in connections, never in DAG code or XCom.

The only module that reads connections; a task reads them once, through its ``Runtime``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from enrollment.clients.services import Endpoints

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from google.auth.credentials import Credentials

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

    from enrollment_airflow.hooks import MarketingCloudHook, PipelineKafkaHook

    solr = BaseHook.get_connection(SOLR_CONN_ID)
    mc = BaseHook.get_connection(MARKETING_CLOUD_CONN_ID)
    solr_path = solr.extra_dejson.get("base_path", "/solr")
    mc_auth, mc_rest = MarketingCloudHook(MARKETING_CLOUD_CONN_ID).urls()
    credentials, project = google_access(GCP_CONN_ID)
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


def google_access(
    conn_id: str = GCP_CONN_ID, connection: Connection | None = None
) -> tuple[Credentials | None, str]:
    """The Google connection's credentials and project, as the Google provider's hooks resolve
    them (``enrollment_airflow.google_connection``); when every Google client is an emulator's
    (``EMULATOR_HOSTS``), no credentials (they would take none) and the connection's project.
    ``connection``: one already read (the triggerer reads it asynchronously)."""
    from airflow.sdk import BaseHook

    from enrollment.clients.services import EMULATOR_HOSTS

    if not all(os.environ.get(host) for host in EMULATOR_HOSTS):
        from enrollment_airflow.google_connection import PipelineGoogleHook

        return PipelineGoogleHook(conn_id, connection).credentials()
    extra = (connection or BaseHook.get_connection(conn_id)).extra_dejson
    project = extra.get("project") or extra.get("extra__google_cloud_platform__project")
    if not project:
        raise RuntimeError(f"connection {conn_id!r} names no project: set `project` in its extra")
    return None, str(project)


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
