"""Jobs of the files domain (queue ``default``)."""

from __future__ import annotations

from saq.types import Context

from app.core.services import services_of
from app.domains.files.services import FileService


async def sweep_files(ctx: Context) -> dict[str, int]:
    """Hourly: remove files no row refers to (deleted projects, crashed uploads) and stale temp files."""
    return await services_of(ctx)[FileService].sweep()
