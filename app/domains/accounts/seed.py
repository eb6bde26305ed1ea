"""Demo accounts: one administrator and two members, from settings (idempotent)."""

from __future__ import annotations

from app.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD
from app.core.services import Services
from app.db.models import UserRole
from app.domains.accounts.services import AccountService

DEMO_MEMBERS = (("ana@example.com", "Ana Lima"), ("ben@example.com", "Ben Okafor"))


async def seed_accounts(services: Services) -> list[str]:
    settings = services.settings
    accounts = services[AccountService]
    await accounts.ensure_user(settings.admin_email, settings.admin_password, "Administrator", UserRole.ADMIN)
    for email, name in DEMO_MEMBERS:
        await accounts.ensure_user(email, settings.demo_password, name, UserRole.MEMBER)
    admin_hint = (
        DEFAULT_ADMIN_PASSWORD if settings.admin_password == DEFAULT_ADMIN_PASSWORD else "$ADMIN_PASSWORD"
    )
    member_hint = (
        DEFAULT_DEMO_PASSWORD if settings.demo_password == DEFAULT_DEMO_PASSWORD else "$DEMO_PASSWORD"
    )
    return [
        f"log in: POST /api/auth/login with admin {settings.admin_email} / {admin_hint}",
        f"        or a member, {DEMO_MEMBERS[0][0]} / {member_hint}; the dashboard: sign in at /saq/login",
        "        with the admin's email and password (or send an admin's bearer token)",
    ]
