"""Guards and the ``current_user`` dependency."""

from __future__ import annotations

from litestar.handlers import BaseRouteHandler

from app.core.auth import Caller, Connection, caller_of, provide_current_user, requires_admin, requires_user
from app.core.errors import ForbiddenError
from app.core.services import services_of_app
from app.domains.accounts.dashboard_tokens import ADMINS_ONLY, SESSION_COOKIE, sign_in_required
from app.domains.accounts.services import AccountService

__all__ = ["Caller", "provide_current_user", "requires_admin", "requires_dashboard_admin", "requires_user"]


async def requires_dashboard_admin(connection: Connection, _: BaseRouteHandler) -> None:
    """The SAQ dashboard: an administrator's bearer token (scripts), else the session cookie of the
    dashboard's sign-in (browsers; ``dashboard_controllers``, ``AccountService.dashboard_admin``).
    Either way the role is read from the account's row on every request (a token issued before a
    demotion opens nothing).

    Anonymous, or a session that is over → 401 without a Basic challenge (the dashboard's page
    answers it with a redirect to the sign-in page: ``app.core.dashboard``); a member → 403.
    """
    services = services_of_app(connection.app)
    caller = caller_of(connection)
    if caller is not None:
        if not caller.is_admin:
            raise ForbiddenError(ADMINS_ONLY)
        await services[AccountService].require_admin_now(caller.id)
        return
    token = connection.cookies.get(SESSION_COOKIE)
    if not token:
        raise sign_in_required()
    await services[AccountService].dashboard_admin(token)
