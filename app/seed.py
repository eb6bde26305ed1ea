"""Demo data: ``just seed``, and ``just serve`` once.

Each domain's ``Module.seed`` runs in module order (accounts first, so later seeds find the demo
users), through the domains' own services. Every seed is idempotent (it checks before it creates),
so running the seed twice changes nothing. ``just serve`` runs a seed only until it has run to its
end once (``demo_seeds``; a start that stopped half-way runs it again): a demo project or site a
user deleted or renamed was created again at every start, because each seed checks by name. ``just
seed`` runs them all, to bring the demo data back.
"""

from __future__ import annotations

from app.core.services import Services
from app.db import seeds as queries


async def run_seeders(services: Services, *, once: bool = False) -> list[str]:
    """Run every enabled module's seed (with ``once``: those not run to their end before, and those
    with ``seed_once`` off); returns what they report (log-in hints)."""
    lines: list[str] = []
    for module in services.modules:
        if module.seed is None:
            continue
        if once and module.seed_once:
            async with services.db.read() as uow:
                if await queries.demo_seeded(uow.conn, module=module.name):
                    continue
        lines.extend(await module.seed(services))
        if module.seed_once:
            async with services.db.transaction() as uow:
                await queries.mark_demo_seeded(uow.conn, module=module.name)
    return lines
