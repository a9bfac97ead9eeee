"""The Marketing Cloud hook and its connection type (``marketing_cloud``).

Connection fields: **Login** = client id, **Password** = client secret, **Host** = the tenant's
REST base URL (``https://<subdomain>.rest.marketingcloudapis.com``), and in the extra
``auth_url`` (``https://<subdomain>.auth.marketingcloudapis.com``). The REST logic is in
``enrollment.marketing_cloud`` (importable and testable without Airflow); the hook only turns a
connection into a client.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from enrollment.clients.marketing_cloud import MarketingCloudClient


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
