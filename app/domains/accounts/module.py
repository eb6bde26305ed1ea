"""The accounts domain: registration, login, sessions, administration of users and the SAQ dashboard's
sign-in."""

from app.core.modules import Cron, Module
from app.domains.accounts.controllers import AdminUsersController, AuthController
from app.domains.accounts.dashboard_controllers import DashboardSignInController
from app.domains.accounts.jobs import purge_expired_sessions
from app.domains.accounts.seed import seed_accounts
from app.domains.accounts.services import AccountService

module = Module(
    name="accounts",
    controllers=[AuthController, AdminUsersController, DashboardSignInController],
    service=lambda s: AccountService(s.db, s.settings, s.valkey),
    seed=seed_accounts,
    seed_once=False,  # the configured administrator and demo members, whenever one is missing
    cron=[Cron(function=purge_expired_sessions, schedule="41 3 * * *", queue="default", timeout_s=300)],
)
