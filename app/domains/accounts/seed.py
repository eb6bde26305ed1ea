"""Demo accounts: one administrator and two members, from settings (idempotent)."""

from __future__ import annotations

from app.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_DEMO_PASSWORD, Settings
from app.core.db import UnitOfWork
from app.core.security import Passwords
from app.db import accounts as queries
from app.db.models import UserRole
from app.seed import seeder

DEMO_MEMBERS = (("ana@example.com", "Ana Lima"), ("ben@example.com", "Ben Okafor"))


@seeder
async def seed_accounts(uow: UnitOfWork, settings: Settings) -> list[str]:
    passwords = Passwords(settings)
    wanted = [(settings.admin_email, "Administrator", UserRole.ADMIN, settings.admin_password)]
    wanted += [(email, name, UserRole.MEMBER, settings.demo_password) for email, name in DEMO_MEMBERS]
    for email, name, role, password in wanted:
        if await queries.get_user_by_email(uow.conn, email=email.lower()) is None:
            await queries.create_user(
                uow.conn,
                email=email.lower(),
                display_name=name,
                password_hash=await passwords.hash(password),
                role=role,
            )
    admin_hint = (
        DEFAULT_ADMIN_PASSWORD if settings.admin_password == DEFAULT_ADMIN_PASSWORD else "$ADMIN_PASSWORD"
    )
    member_hint = (
        DEFAULT_DEMO_PASSWORD if settings.demo_password == DEFAULT_DEMO_PASSWORD else "$DEMO_PASSWORD"
    )
    return [
        f"log in: POST /api/auth/login with admin {settings.admin_email} / {admin_hint}",
        f"        or a member, {DEMO_MEMBERS[0][0]} / {member_hint}; the dashboard takes the admin's",
        "        credentials (HTTP Basic) or an admin's bearer token",
    ]
