"""The application's domains, in dependency order: a module may use the services of those above it.

The web app, the worker process and the CLI are all assembled from this list (``app/core/modules.py``
says what a module holds). Adding a domain is one new folder under ``app/domains/`` and one line here.
"""

from __future__ import annotations

from app.core.modules import Module

MODULES: tuple[Module, ...] = ()
