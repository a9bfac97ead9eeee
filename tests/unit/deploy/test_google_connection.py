"""google_cloud_default as the Google provider's hooks read it (a key file, a key's JSON, an
impersonation chain, anonymous, the environment's), and the clients built with what it gives;
the emulators take no credentials whatever the connection says."""

from __future__ import annotations

import json
import time

import pytest
from airflow.sdk import Connection
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import impersonated_credentials
from google.auth.credentials import AnonymousCredentials
from google.oauth2 import service_account

from enrollment.clients.services import bigquery_client, firestore_client, storage_client
from enrollment_airflow.connections import google_access
from enrollment_airflow.google_connection import PipelineGoogleHook

EMAIL = "enrollment-airflow@key-project.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def key() -> dict:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "key-project",
        "private_key_id": "0123",
        "private_key": pem,
        "client_email": EMAIL,
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch, tmp_path):
    """Nothing of this machine's: no ADC file, no gcloud configuration, no metadata server."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    for var in ("STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)


def _google(extra: dict):
    conn = Connection(
        conn_id="google_cloud_default", conn_type="google_cloud_platform", extra=json.dumps(extra)
    )
    return PipelineGoogleHook("google_cloud_default", conn).credentials()


def test_a_key_json_in_the_connection(key):
    credentials, project = _google({"keyfile_dict": json.dumps(key), "project": "enrollment"})
    assert isinstance(credentials, service_account.Credentials)
    assert credentials.service_account_email == EMAIL
    assert project == "enrollment", "the connection's project wins over the key's"


def test_a_key_file_path_and_the_keys_project(key, tmp_path):
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    credentials, project = _google({"key_path": str(path)})
    assert isinstance(credentials, service_account.Credentials)
    assert (credentials.service_account_email, project) == (EMAIL, "key-project")


def test_an_impersonation_chain_impersonates_its_last_account(key):
    chain = "first@p.iam.gserviceaccount.com, target@p.iam.gserviceaccount.com"
    credentials, project = _google(
        {"keyfile_dict": json.dumps(key), "impersonation_chain": chain, "project": "other"}
    )
    assert isinstance(credentials, impersonated_credentials.Credentials)
    assert credentials.service_account_email == "target@p.iam.gserviceaccount.com"
    assert project == "other"


def test_the_environments_credentials_when_the_connection_names_none(key, tmp_path, monkeypatch):
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    credentials, project = _google({"project": "enrollment"})
    assert isinstance(credentials, service_account.Credentials)
    assert (credentials.service_account_email, project) == (EMAIL, "enrollment")


def test_anonymous_for_the_emulators():
    credentials, project = _google({"is_anonymous": True, "project": "local"})
    assert isinstance(credentials, AnonymousCredentials) and project == "local"


def test_no_credential_anywhere_fails_at_once_naming_the_connection():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="connection 'google_cloud_default'") as failed:
        _google({"project": "enrollment"})
    assert time.monotonic() - t0 < 30
    assert "key_path" in str(failed.value)


def test_no_project_anywhere_is_a_clear_error(key):
    without = {k: v for k, v in key.items() if k != "project_id"}
    with pytest.raises(RuntimeError, match="names no project"):
        _google({"keyfile_dict": json.dumps(without)})


def test_the_clients_take_the_connections_credentials_and_the_emulators_none(key, monkeypatch):
    credentials, project = _google({"keyfile_dict": json.dumps(key)})
    assert storage_client(project, credentials)._credentials is credentials
    assert bigquery_client(project, credentials)._credentials is credentials
    assert firestore_client(project, credentials)._credentials is credentials
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:1")
    assert isinstance(storage_client(project, credentials)._credentials, AnonymousCredentials)
    assert isinstance(bigquery_client(project, credentials)._credentials, AnonymousCredentials)


def test_with_every_client_emulated_no_credentials_and_the_connections_project(monkeypatch):
    for var in ("STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
        monkeypatch.setenv(var, "127.0.0.1:1")
    conn = Connection(
        conn_id="google_cloud_default",
        conn_type="google_cloud_platform",
        extra=json.dumps({"project": "local", "key_path": "/nowhere/key.json"}),
    )
    assert google_access("google_cloud_default", conn) == (None, "local")
    no_project = Connection(conn_id="google_cloud_default", conn_type="google_cloud_platform")
    with pytest.raises(RuntimeError, match="names no project"):
        google_access("google_cloud_default", no_project)
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")  # one real client: the provider resolves them
    with pytest.raises(RuntimeError, match="no Google credentials"):
        google_access("google_cloud_default", conn)
