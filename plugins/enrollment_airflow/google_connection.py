"""``google_cloud_default`` as the Google provider's hooks read it. Apart from the other hooks:
importing the provider's hook costs a task about half a CPU-second, which a task whose Google
clients are all emulators (they take no credentials) does not pay (``google_access``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from google.auth.credentials import Credentials


class PipelineGoogleHook(GoogleBaseHook):
    """A Google connection's credentials and project, as the Google provider's hooks resolve
    them: a key file path, a key's JSON, a Secret Manager key, workload identity federation, an
    impersonation chain, anonymous (the emulators), else the environment's (ADC).

    ``connection``: one already read (the triggerer reads it asynchronously), else it is read."""

    def __init__(
        self, gcp_conn_id: str = "google_cloud_default", connection: Connection | None = None
    ) -> None:
        self._connection = connection  # before the provider's __init__, which reads it
        super().__init__(gcp_conn_id)

    def get_connection(self, conn_id: str) -> Connection:  # type: ignore[override]
        if self._connection is not None and conn_id == self.gcp_conn_id:
            return self._connection
        return super().get_connection(conn_id)

    def credentials(self) -> tuple[Credentials, str]:
        """The credentials and the project (the connection's, else the credentials'); an error
        naming the connection and what to check when either cannot be had."""
        try:
            credentials, project = self.get_credentials_and_project_id()
        except Exception as exc:
            raise RuntimeError(
                f"connection {self.gcp_conn_id!r}: no Google credentials "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}) — check its "
                "key_path, keyfile_dict or impersonation_chain, or the environment's "
                "credentials (GOOGLE_APPLICATION_CREDENTIALS, the workload identity)"
            ) from exc
        if not project:
            raise RuntimeError(
                f"connection {self.gcp_conn_id!r} names no project and its credentials carry "
                "none: set `project` in its extra"
            )
        return credentials, project
