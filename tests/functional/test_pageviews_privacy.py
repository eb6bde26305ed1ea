"""What the app keeps of a site's visitors: the stored row holds no address or agent (a salted daily
hash stands for the visitor), and neither does the access log of the ingest routes, where every other
route's line names its client."""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection

from tests.factories import Client, captured_logs, create_user, make_site

AGENT = "Mozilla/5.0 (X11; Linux x86_64) PrivacyProbe/1.0"
PEER = "203.0.113.77"
HEADERS = {"user-agent": AGENT, "x-test-peer": PEER}


async def test_the_ingest_routes_log_no_visitors_address(
    api: Client, db: AsyncConnection[Any], password_hash: str
) -> None:
    owner = await create_user(db, password_hash)
    site = await make_site(db, owner)
    view = {"site_key": site.ingest_key, "url": "https://example.com/pricing"}
    with captured_logs(logging.INFO) as logs:
        single = await api.post("/api/page-views", json=view, headers=HEADERS)
        batch = await api.post("/api/page-views/batch", json={"views": [view]}, headers=HEADERS)
        other = await api.get("/api/products", headers=HEADERS)
    assert (single.status_code, batch.status_code, other.status_code) == (202, 202, 200), batch.text
    by_path = {line["path"]: line for line in logs.events("request")}
    assert by_path["/api/products"]["client_ip"] == PEER, "other routes still name their client"
    for path in ("/api/page-views", "/api/page-views/batch"):
        assert by_path[path]["status"] == 202
        assert by_path[path].get("client_ip") is None, by_path[path]
    ingest_lines = [line for line in logs.text.splitlines() if "/api/page-views" in line]
    assert len(ingest_lines) == 2 and not any(PEER in line or "PrivacyProbe" in line for line in ingest_lines)
