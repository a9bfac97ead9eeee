"""How the pipeline reaches each service: endpoints and official clients.

``Endpoints`` is filled from Airflow connections inside Airflow (see the ``enrollment_airflow``
plugin package) or from the environment for command-line tools and tests. Emulators are used
when their standard ``*_EMULATOR_HOST`` variables are set, as the official clients expect.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from enrollment.clients.kafka import KafkaSettings

if TYPE_CHECKING:
    from google.auth.credentials import AnonymousCredentials, Credentials
    from google.cloud import bigquery, firestore
    from google.cloud.bigquery_storage_v1 import BigQueryReadClient
    from google.cloud.storage import Client as StorageClient

    from enrollment.clients.marketing_cloud import MarketingCloudClient


@dataclass(frozen=True)
class Endpoints:
    project: str
    kafka: KafkaSettings
    solr_url: str
    marketing_cloud_auth_url: str
    marketing_cloud_rest_url: str
    marketing_cloud_client_id: str = field(repr=False)
    marketing_cloud_client_secret: str = field(repr=False)
    # Solr's BasicAuth user and password (solr_default's login and password); None: no auth.
    solr_auth: tuple[str, str] | None = field(default=None, repr=False)
    # Google's (google_cloud_default's, as the Google provider resolves it); None: the
    # environment's (ADC). The emulators take none.
    credentials: Credentials | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Endpoints:
        env = os.environ if env is None else env
        missing = [
            k
            for k in (
                "GOOGLE_CLOUD_PROJECT",
                "KAFKA_BOOTSTRAP_SERVERS",
                "SOLR_URL",
                "MARKETING_CLOUD_URL",
            )
            if not env.get(k)
        ]
        if missing:
            raise RuntimeError(
                f"set {', '.join(missing)} (for the local stack: source .stack/stack.env)"
            )
        return cls(
            project=env["GOOGLE_CLOUD_PROJECT"],
            kafka=KafkaSettings.from_env(env),
            solr_url=env["SOLR_URL"].rstrip("/"),
            marketing_cloud_auth_url=env["MARKETING_CLOUD_URL"].rstrip("/"),
            marketing_cloud_rest_url=env["MARKETING_CLOUD_URL"].rstrip("/"),
            marketing_cloud_client_id=env.get("MARKETING_CLOUD_CLIENT_ID", ""),
            marketing_cloud_client_secret=env.get("MARKETING_CLOUD_CLIENT_SECRET", ""),
            solr_auth=(env["SOLR_USERNAME"], env.get("SOLR_PASSWORD", ""))
            if env.get("SOLR_USERNAME")
            else None,
        )

    def marketing_cloud(self) -> MarketingCloudClient:
        """The Marketing Cloud client for these endpoints (Airflow: the hook's connection)."""
        # lazy: httpx loads only where Marketing Cloud is called
        from enrollment.clients.marketing_cloud import MarketingCloudClient

        return MarketingCloudClient(
            self.marketing_cloud_auth_url,
            self.marketing_cloud_rest_url,
            self.marketing_cloud_client_id,
            self.marketing_cloud_client_secret,
        )


# Set, each points its Google client at an emulator (which takes no credentials).
EMULATOR_HOSTS = ("STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")


def anonymous_if_emulated(
    env_var: str, credentials: Credentials | None = None
) -> Credentials | AnonymousCredentials | None:
    """Emulators take no credentials (without this the clients look for ADC and fail offline);
    real services take the connection's, or (None) the environment's."""
    if os.environ.get(env_var):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()  # type: ignore[no-untyped-call]  # google-auth: __init__ unannotated
    return credentials


def storage_client(project: str, credentials: Credentials | None = None) -> StorageClient:
    from google.cloud.storage import Client

    return Client(
        project=project, credentials=anonymous_if_emulated("STORAGE_EMULATOR_HOST", credentials)
    )


@functools.cache
def bigquery_read_client() -> BigQueryReadClient | None:
    """The Storage Read API's client (Arrow record batches over gRPC) when it is an emulator's
    (``BIGQUERY_STORAGE_EMULATOR_HOST``, host:port); None otherwise, and the BigQuery client
    makes its own (``enrollment.clients.bigquery.BigQuery.read_arrow``). One per process."""
    host = os.environ.get("BIGQUERY_STORAGE_EMULATOR_HOST")
    if not host:
        return None
    import grpc  # type: ignore[import-untyped]  # no stubs; one call
    from google.cloud.bigquery_storage_v1 import BigQueryReadClient
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
        BigQueryReadGrpcTransport,
    )

    # A read stream's messages are larger than gRPC's 4 MiB default (so BigQuery's own client).
    unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    return BigQueryReadClient(  # type: ignore[no-untyped-call]  # its __init__ is unannotated
        transport=BigQueryReadGrpcTransport(channel=grpc.insecure_channel(host, options=unlimited))
    )


def bigquery_client(project: str, credentials: Credentials | None = None) -> bigquery.Client:
    from google.cloud import bigquery

    return bigquery.Client(
        project=project, credentials=anonymous_if_emulated("BIGQUERY_EMULATOR_HOST", credentials)
    )


def firestore_client(project: str, credentials: Credentials | None = None) -> firestore.Client:
    from google.cloud import firestore

    # With FIRESTORE_EMULATOR_HOST set the client talks to the emulator, whatever it is given.
    return firestore.Client(
        project=project,
        credentials=None if os.environ.get("FIRESTORE_EMULATOR_HOST") else credentials,
    )
