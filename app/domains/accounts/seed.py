"""Demo accounts: one administrator and two members, from settings (idempotent).

The administrator is created only when ADMIN_EMAIL has no account: an account someone registered
with that address first is left as it is (never promoted: ``create-admin --promote-existing`` does
that, deliberately), and an ADMIN_EMAIL the login refuses seeds no administrator. Either is said in
one line among the seed's hints.
"""

from __future__ import annotations

from app.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from app.core.services import Services
from app.db.models import UserRole
from app.domains.accounts.services import AccountService, UnusableEmailError, sign_in_address

DEMO_MEMBERS = (("ana@example.com", "Ana Lima"), ("ben@example.com", "Ben Okafor"))


async def seed_accounts(services: Services) -> list[str]:
    settings = services.settings
    accounts = services[AccountService]
    admin_line = await _seed_admin(accounts, settings.admin_email, settings.admin_password)
    for email, name in DEMO_MEMBERS:
        await accounts.ensure_user(email, settings.demo_password, name, UserRole.MEMBER)
    admin_hint = (
        DEFAULT_ADMIN_PASSWORD if settings.admin_password == DEFAULT_ADMIN_PASSWORD else "$ADMIN_PASSWORD"
    )
    member_hint = (
        DEFAULT_DEMO_PASSWORD if settings.demo_password == DEFAULT_DEMO_PASSWORD else "$DEMO_PASSWORD"
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
