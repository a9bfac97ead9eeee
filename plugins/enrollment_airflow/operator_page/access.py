"""Who may use the page: every route asks Airflow's auth manager (plugin apps are not protected
by Airflow), with the UI's ``_token`` cookie or a Bearer token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request, status

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

REQUEUE_DAG = "requeue_quarantine"


# -- access ---------------------------------------------------------------------------------
def _token(request: Request) -> str | None:
    """The caller's JWT: a Bearer header wins over the UI's ``_token`` cookie (as Airflow's
    get_user)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


async def viewer(request: Request) -> BaseUser:
    """A logged-in user allowed to view the UI; 401 without a token, 403 otherwise."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    user = await get_user(request, None, await bearer_scheme(request))
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    return user


# The route's user: FastAPI resolves it at import, so it stays Any (Airflow's BaseUser is only
# imported when a request comes).
Viewer = Annotated[Any, Depends(viewer)]


def may_requeue(user: BaseUser | None) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    return get_auth_manager().is_authorized_dag(
        method="POST",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=REQUEUE_DAG),
        user=user,
    )
