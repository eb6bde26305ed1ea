"""Every route the documents and the app's own messages name (``PATCH /api/auth/me``) exists. The
docstruth review: the README and the start-up refusal of a public ``HOST`` told users to change the
seeded passwords with ``PATCH /api/me``, a 404, and with a field named ``password``."""

from __future__ import annotations

import re
from pathlib import Path

from litestar import Litestar
from litestar.routes import HTTPRoute

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "CONVENTIONS.md", ROOT / "benchmarks" / "README.md"]
NAMED = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE|HEAD) `?(/api/[A-Za-z0-9_/{}.-]*)")
PARAMETER = re.compile(r"\{[^}]*\}")


def _shape(path: str) -> str:
    """A path with its parameters blank and no trailing slash: ``/api/sites/{}/ingest-key``."""
    return PARAMETER.sub("{}", path).rstrip("/") or "/"


def named_routes() -> set[tuple[str, str, str]]:
    """(method, path shape, where) of each route named in the documents and in ``app/``'s sources."""
    sources = [*DOCUMENTS, *sorted((ROOT / "app").rglob("*.py"))]
    return {
        (method, _shape(path.rstrip(".")), str(source.relative_to(ROOT)))
        for source in sources
        for method, path in NAMED.findall(source.read_text())
    }


def test_every_route_the_documents_and_messages_name_exists(app: Litestar) -> None:
    served = {
        (method, _shape(route.path))
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for method in route.methods
    }
    named = named_routes()
    assert len(named) > 30
    assert [
        (method, path, where) for method, path, where in sorted(named) if (method, path) not in served
    ] == []
