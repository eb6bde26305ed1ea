"""Command line: ``python -m app.cli serve|worker|migrate|seed``.

``serve`` is what ``just serve`` runs: it starts the embedded services when ``DATABASE_URL`` /
``VALKEY_URL`` are unset, applies migrations, seeds demo data once, then runs granian with the URLs
exported to its workers, and prints where everything is once the app answers.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import threading
import time
import urllib.request
from typing import Any

from app.config import Settings, load_settings
from app.core.logging import configure_logging
from app.core.migrate import migrate
from app.core.runtime import resolve_services


def _prepare(settings: Settings) -> Settings:
    """Resolve URLs (embedded when unset), export them to child processes, apply migrations."""
    settings = resolve_services(settings)
    assert settings.database_url
    assert settings.valkey_url
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["VALKEY_URL"] = settings.valkey_url
    migrate(settings.database_url)
    return settings


async def _seed(settings: Settings) -> list[str]:
    from psycopg import AsyncConnection

    from app.core.db import UnitOfWork
    from app.db.models import register_types
    from app.seed import run_seeders

    assert settings.database_url
    if settings.is_production:
        return ["demo data is never seeded in production: create an administrator with `create-admin`"]
    async with await AsyncConnection.connect(settings.database_url) as conn:
        await register_types(conn)
        async with conn.transaction():
            return await run_seeders(UnitOfWork(conn), settings)


async def _create_admin(settings: Settings, email: str, name: str) -> Any:
    """Promote ``email`` if it exists; else create it with ``ADMIN_PASSWORD`` or a prompted password."""
    from app.core.db import create_pool
    from app.core.valkey import create_valkey
    from app.domains.accounts.services import AccountService

    assert settings.database_url and settings.valkey_url
    password = os.environ.get("ADMIN_PASSWORD") or None
    pool = create_pool(settings, settings.database_url)
    await pool.open()
    valkey = create_valkey(settings, settings.valkey_url)
    try:
        accounts = AccountService(settings, pool, valkey)
        try:
            return await accounts.ensure_admin(email, password, name)
        except ValueError:
            password = getpass.getpass(f"password for the new administrator {email}: ")
            if len(password) < 10:
                raise SystemExit("the password needs at least 10 characters") from None
            return await accounts.ensure_admin(email, password, name)
    finally:
        await pool.close()
        await valkey.aclose()


def _announce_when_ready(settings: Settings, started: float, hints: list[str]) -> None:
    base = f"http://{settings.host}:{settings.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    lines = [
        f"ready in {time.monotonic() - started:.1f}s",
        f"  API            {base}/api",
        f"  OpenAPI UI     {base}/schema  (Swagger: {base}/schema/swagger)",
        f"  SAQ dashboard  {base}/saq",
        f"  health         {base}/health/ready   metrics {base}/metrics",
        *[f"  {hint}" for hint in hints],
    ]
    print("\n".join(lines), flush=True)


def serve(settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    started = time.monotonic()
    os.environ.setdefault("WORKER_IN_PROCESS", "false" if settings.is_production else "true")
    settings = _prepare(settings)
    hints = asyncio.run(_seed(settings))
    threading.Thread(target=_announce_when_ready, args=(settings, started, hints), daemon=True).start()
    Granian(
        "app.main:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.auto,
        log_access=False,
        backlog=2048,
    ).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the API (granian) on embedded or configured services")
    commands.add_parser("worker", help="run the SAQ workers and the outbox relay")
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser("seed", help="create demo data (idempotent)")
    create_admin = commands.add_parser("create-admin", help="create an administrator or promote an account")
    create_admin.add_argument("email")
    create_admin.add_argument("--name", default="Administrator")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    if args.command == "serve":
        serve(settings)
    elif args.command == "worker":
        from workers.__main__ import run_workers

        asyncio.run(run_workers(_prepare(settings)))
    elif args.command == "migrate":
        settings = resolve_services(settings)
        assert settings.database_url
        sys.stdout.write(migrate(settings.database_url))
    elif args.command == "create-admin":
        user = asyncio.run(_create_admin(_prepare(settings), args.email, args.name))
        print(f"{user.email} is an administrator (id {user.id})")
    elif args.command == "seed":
        for line in asyncio.run(_seed(_prepare(settings))) or ["nothing to seed"]:
            print(line)


if __name__ == "__main__":
    main()
