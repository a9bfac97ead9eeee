"""Registers the "Enrollment pipeline" page with Airflow: a FastAPI app the API server mounts at
``/enrollment`` and an entry in the UI's navigation that shows it (an iframe,
``plugin/enrollment-pipeline``).

At the top of the plugins folder so Airflow's plugin loader finds it; the app (and its access
control: every route asks the auth manager) is ``enrollment_airflow.operator_page.app``.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from enrollment_airflow.operator_page.app import URL_PREFIX, app


class EnrollmentPipelinePlugin(AirflowPlugin):
    name = "enrollment_pipeline"
    # Plain attributes, as AirflowPlugin declares them (a ClassVar would contradict its type).
    fastapi_apps: list[Any] = [  # noqa: RUF012
        {"app": app, "url_prefix": URL_PREFIX, "name": "Enrollment pipeline"}
    ]
    external_views: list[Any] = [  # noqa: RUF012
        {
            "name": "Enrollment pipeline",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "enrollment-pipeline",
            "nav_top_level": True,
        }
    ]
