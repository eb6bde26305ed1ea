"""The application's domains, in dependency order: a module may use the services of those above it.

The web app, the worker process and the CLI are all assembled from this list (``app/core/modules.py``
says what a module holds). Adding a domain is one new folder under ``app/domains/`` and one line here.
"""

from __future__ import annotations

from app.config import Settings
from app.core.idempotency import idempotency
from app.core.modules import Module
from app.core.relay import outbox
from app.domains.accounts.module import module as accounts
from app.domains.activity.module import module as activity
from app.domains.bench.module import module as bench
from app.domains.files.module import module as files
from app.domains.github.module import module as github
from app.domains.health.module import module as health
from app.domains.monitoring.module import module as monitoring
from app.domains.orders.module import module as orders
from app.domains.pageviews.module import module as pageviews
from app.domains.products.module import module as products
from app.domains.projects.module import module as projects
from app.domains.reports.module import module as reports
from app.domains.sites.module import module as sites
from app.domains.tasks.module import module as tasks

MODULES: tuple[Module, ...] = (
    outbox,
    idempotency,
    health,
    accounts,
    projects,
    tasks,
    files,
    products,
    orders,
    sites,
    pageviews,
    reports,
    activity,
    github,
    monitoring,
    bench,
)


def check_settings(settings: Settings, modules: tuple[Module, ...] = MODULES) -> None:
    """Every enabled module's ``check_settings``: the first refusal raises its ``SettingsError``. For
    the API (``app.main.granian_formatter``, ``app.cli serve``) and the worker, before they start."""
    for module in modules:
        if module.enabled(settings):
            module.check_settings(settings)
