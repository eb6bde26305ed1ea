"""The seed's design for page-view ingest: FastAPI + uvicorn + asyncpg, one INSERT per request.

Each request is validated by a pydantic model (the ingest body's shape and limits), its site key is
resolved (cached per process, as the project does), a few fields are derived, and one INSERT into
the project's ``page_views`` table runs on a pooled asyncpg connection; the answer (202) follows the
INSERT's implicit commit, so an acknowledged view is stored, as in the project. The pool is asyncpg's
default (10 connections per worker). Nothing from ``app`` is imported: the reference cannot change
when the project does.

Run by the harness: ``uvicorn benchmarks.reference.seed_fastapi:app --workers 2`` with
``SEED_DATABASE_URL`` set.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

INSERT = """
insert into page_views (site_id, ts, event_id, visitor_id, path, title, referrer_host, referrer_source,
    utm_source, utm_medium, utm_campaign, screen_width, device, browser, os, is_bot)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
"""


class PageViewIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site_key: Annotated[str, Field(min_length=16, max_length=64)]
    url: Annotated[str, Field(min_length=1, max_length=2000)]
    referrer: Annotated[str, Field(max_length=2000)] = ""
    title: Annotated[str, Field(max_length=500)] = ""
    screen_width: Annotated[int | None, Field(ge=0, le=100_000)] = None
    ts: datetime | None = None
    event_id: uuid.UUID | None = None


class Accepted(BaseModel):
    accepted: int


state: dict[str, Any] = {}
site_ids: dict[str, int] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    state["pool"] = await asyncpg.create_pool(os.environ["SEED_DATABASE_URL"])
    try:
        yield
    finally:
        await state["pool"].close()


app = FastAPI(lifespan=lifespan)


async def site_id(key: str) -> int:
    if key not in site_ids:
        found = await state["pool"].fetchval("select id from sites where ingest_key = $1", key)
        if found is None:
            raise HTTPException(status_code=422, detail="Unknown site key.")
        site_ids[key] = found
    return site_ids[key]


def classify(agent: str) -> tuple[str, str, str, bool]:
    """(device, browser, os, is_bot) from a user agent, by substrings."""
    lowered = agent.lower()
    device = "mobile" if "mobile" in lowered else "tablet" if "tablet" in lowered else "desktop"
    browser = next((b for b in ("Firefox", "Edg", "Chrome", "Safari") if b in agent), "Other")
    system = next((s for s in ("Android", "iPhone", "Windows", "Mac OS", "Linux") if s in agent), "Other")
    return device, browser, system, "bot" in lowered


@app.get("/ready")
async def ready() -> dict[str, str]:
    await state["pool"].fetchval("select 1")
    return {"status": "ok"}


@app.post("/api/page-views", status_code=202)
async def ingest(view: PageViewIn, request: Request) -> Accepted:
    site = await site_id(view.site_key)
    now = datetime.now(UTC)
    ts = min(max(view.ts, now - timedelta(hours=24)), now) if view.ts else now
    url = urlsplit(view.url)
    query = parse_qs(url.query)
    referrer_host = urlsplit(view.referrer).hostname or ""
    agent = request.headers.get("user-agent", "")
    client = request.client.host if request.client else ""
    digest = hashlib.blake2b(f"{site}|{client}|{agent}|{now.date()}".encode(), digest_size=8).digest()
    device, browser, system, is_bot = classify(agent)
    await state["pool"].execute(
        INSERT,
        site,
        ts,
        view.event_id,
        int.from_bytes(digest, "big", signed=True),
        url.path or "/",
        view.title,
        referrer_host,
        referrer_host,
        query.get("utm_source", [""])[0],
        query.get("utm_medium", [""])[0],
        query.get("utm_campaign", [""])[0],
        view.screen_width,
        device,
        browser,
        system,
        is_bot,
    )
    return Accepted(accepted=1)
