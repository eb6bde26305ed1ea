"""Demo accounts: one administrator and two members, from settings (idempotent).

The administrator is created only when ADMIN_EMAIL has no account: an account someone registered
with that address first is left as it is (never promoted: ``create-admin --promote-existing`` does
that, deliberately), and an ADMIN_EMAIL the login refuses seeds no administrator. Either is said in
one line among the seed's hints.

An existing account keeps its password, so setting ``ADMIN_PASSWORD``/``DEMO_PASSWORD`` after a first
start changes nothing stored: what a seeded account opens with is asked of the account itself (a
password check each). The hints name the password that works, and a server bound to a non-loopback
``HOST`` refuses to start while an account the seed makes (under the current or the default
``ADMIN_EMAIL``), whatever its role or activity, still opens with its public default (the front-door
reviewer: a ``DATA_DIR`` first started in development kept ``admin-password-change-me`` behind
``HOST=0.0.0.0`` with both variables set, and the hint said ``$ADMIN_PASSWORD``).
"""

from __future__ import annotations

from app.config import (
    DEFAULT_ADMIN_EMAIL,
    DEFAULT_ADMIN_PASSWORD,
    DEFAULT_DEMO_PASSWORD,
    SettingsError,
    is_loopback_host,
)
from app.core.services import Services
from app.db.models import UserRole
from app.domains.accounts.registration import UnusableEmailError, sign_in_address
from app.domains.accounts.services import AccountService

DEMO_MEMBERS = (("ana@example.com", "Ana Lima"), ("ben@example.com", "Ben Okafor"))


async def seed_accounts(services: Services) -> list[str]:
    settings = services.settings
    accounts = services[AccountService]
    admin_line = await _seed_admin(accounts, settings.admin_email, settings.admin_password)
    for email, name in DEMO_MEMBERS:
        await accounts.ensure_user(email, settings.demo_password, name, UserRole.MEMBER)
    admin_email = settings.admin_email.strip().lower()
    candidates = [
        (email, DEFAULT_ADMIN_PASSWORD) for email in dict.fromkeys((admin_email, DEFAULT_ADMIN_EMAIL))
    ]
    candidates += [(email, DEFAULT_DEMO_PASSWORD) for email, _ in DEMO_MEMBERS]
    public = {email for email, default in candidates if await accounts.opens_with(email, default)}
    if public and not is_loopback_host(settings.host):
        raise SettingsError(
            f"HOST={settings.host} is not a loopback address, and {', '.join(sorted(public))} still "
            "open with the public default passwords (seeded before ADMIN_PASSWORD/DEMO_PASSWORD were "
            "set, or under another ADMIN_EMAIL: an existing account keeps its password, whatever its "
            "role). Change them (PATCH /api/auth/me with current_password and new_password), or bind "
            "HOST=127.0.0.1"
        )
    admin_hint = await _hint(
        accounts, admin_email, public, DEFAULT_ADMIN_PASSWORD, ("ADMIN_PASSWORD", settings.admin_password)
    )
    member_hint = await _hint(
        accounts, DEMO_MEMBERS[0][0], public, DEFAULT_DEMO_PASSWORD, ("DEMO_PASSWORD", settings.demo_password)
    )
    if admin_line is not None:
        return [
            admin_line,
            f"log in: POST /api/auth/login as a member, {DEMO_MEMBERS[0][0]} / {member_hint}",
        ]
    return [
        f"log in: POST /api/auth/login with admin {settings.admin_email} / {admin_hint}",
        f"        or a member, {DEMO_MEMBERS[0][0]} / {member_hint}; the dashboard: sign in at /saq/login",
        "        with the admin's email and password (or send an admin's bearer token)",
    ]


async def _hint(
    accounts: AccountService, email: str, public: set[str], default: str, configured: tuple[str, str]
) -> str:
    """The password to show for a seeded account: the one it opens with, of its public default and
    the ``configured`` variable's value (its name, its value); else that it has its own."""
    if email in public:
        return default
    variable, value = configured
    if value != default and await accounts.opens_with(email, value):
        return f"${variable}"
    return "(its own: changed since it was seeded)"


async def _seed_admin(accounts: AccountService, email: str, password: str) -> str | None:
    """Create the administrator if ADMIN_EMAIL has no account; None when it is an active administrator
    (the seed's own, from an earlier run), else the line that says why there is none."""
    try:
        address = sign_in_address(email)
    except UnusableEmailError as exc:
        return f"ADMIN_EMAIL {exc.detail}; no administrator was seeded"
    admin = await accounts.ensure_user(address, password, "Administrator", UserRole.ADMIN)
    if admin.role == UserRole.ADMIN and admin.is_active:
        return None
    return (
        f"ADMIN_EMAIL {address} already has an account (id {admin.id}) that is not an active "
        f"administrator: left unchanged (`create-admin --promote-existing {address}` promotes it)"
    )
