"""Demo data, created once: ``just seed``, and ``just serve`` on an empty database.

Each domain's ``Module.seed`` runs in module order (accounts first, so later seeds find the demo
users), through the domains' own services. Every seed is idempotent (it checks before it creates),
so running the seed twice changes nothing.
"""

from __future__ import annotations

from app.core.services import Services


async def run_seeders(services: Services) -> list[str]:
    """Run every enabled module's seed; returns what they report (log-in hints)."""
    lines: list[str] = []
    for module in services.modules:
        if module.seed is not None:
            lines.extend(await module.seed(services))
    return lines
