"""Registers the project with Airflow as a provider (entry point ``apache_airflow_provider``), so
the Marketing Cloud connection type appears in the UI's connection form."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "enrollment-pipelines",
        "name": "Enrollment pipelines",
        "description": (
            "Hooks and connection types of the enrollment pipelines "
            "(Salesforce Marketing Cloud REST)."
        ),
        "connection-types": [
            {
                "connection-type": "marketing_cloud",
                "hook-class-name": "enrollment_airflow.hooks.MarketingCloudHook",
            },
        ],
    }
