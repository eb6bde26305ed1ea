"""Guards shared across domains."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler


def requires_open_dashboard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The SAQ dashboard without accounts: reachable only with ``APP_ENV=development``."""
    if not connection.app.state.settings.dashboard_open:
        raise NotAuthorizedException("The job dashboard requires an administrator login.")
