"""The Marketing Cloud hook and its connection type (``marketing_cloud``), and the Kafka
provider's hook as the pipeline reads ``kafka_default`` (``PipelineKafkaHook``); the Google
provider's is in ``enrollment_airflow.google_connection``.

Connection fields: **Login** = client id, **Password** = client secret, **Host** = the tenant's
REST base URL (``https://<subdomain>.rest.marketingcloudapis.com``), and in the extra
``auth_url`` (``https://<subdomain>.auth.marketingcloudapis.com``). The REST logic is in
``enrollment.marketing_cloud`` (importable and testable without Airflow); the hook only turns a
connection into a client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook
from airflow.sdk import BaseHook

from enrollment.clients.kafka import KafkaSettings
from enrollment.clients.marketing_cloud import MarketingCloudClient

if TYPE_CHECKING:
    from airflow.sdk import Connection


class PipelineKafkaHook(KafkaBaseHook):
    """A Kafka connection (the provider's type: its extra is the librdkafka configuration) as
    the pipeline's ``KafkaSettings``, resolved by the provider: callbacks named in the extra only
    from ``[apache_kafka] callback_allowlist``, Amazon MSK IAM's token callback for an MSK host
    with ``OAUTHBEARER``, Google Managed Kafka's. The pipeline builds its own assign-based clients
    from them; keys it owns (``enrollment.clients.kafka.OWNED``) are refused.

    ``connection``: one already read (the triggerer reads it asynchronously), else it is read."""

    def __init__(
        self, kafka_config_id: str = "kafka_default", connection: Connection | None = None
    ) -> None:
        super().__init__(kafka_config_id)  # type: ignore[no-untyped-call]  # the provider's
        self._connection = connection

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]
        # An instance's own connection first: the provider's _build_config reads it through here.
        if self._connection is not None and conn_id == self.kafka_config_id:
            return self._connection
        return super().get_connection(conn_id)

    def settings(self) -> KafkaSettings:
        return KafkaSettings(self._build_config(), source=f"connection {self.kafka_config_id!r}")


class MarketingCloudHook(BaseHook):
    conn_name_attr = "marketing_cloud_conn_id"
    default_conn_name = "marketing_cloud_default"
    conn_type = "marketing_cloud"
    hook_name = "Salesforce Marketing Cloud (REST)"

    def __init__(self, marketing_cloud_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marketing_cloud_conn_id = marketing_cloud_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {
                "login": "Client ID",
                "password": "Client secret",
                "host": "REST base URL",
            },
            "placeholders": {
                "host": "https://<subdomain>.rest.marketingcloudapis.com",
                "extra": '{"auth_url": "https://<subdomain>.auth.marketingcloudapis.com"}',
            },
        }

    def urls(self) -> tuple[str, str]:
        conn = self.get_connection(self.marketing_cloud_conn_id)
        extra = conn.extra_dejson
        host = conn.host or ""
        rest = str(extra.get("rest_url") or (host if "://" in host else f"https://{host}"))
        return (extra.get("auth_url") or rest).rstrip("/"), rest.rstrip("/")

    def get_conn(self) -> MarketingCloudClient:
        conn = self.get_connection(self.marketing_cloud_conn_id)
        auth_url, rest_url = self.urls()
        return MarketingCloudClient(auth_url, rest_url, conn.login or "", conn.password or "")

    def test_connection(self) -> tuple[bool, str]:
        try:
            client = self.get_conn()
            client.token()
            return True, "token issued"
        except Exception as exc:  # the UI shows the message; it never holds the secret
            return False, str(exc)
