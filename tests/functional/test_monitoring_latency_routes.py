"""Only answers whose duration is their route's latency feed the slow-route checks.

Review opsrev: every feed stream (Server-Sent Events last as long as their client listens) opened a
"slow route" group and its Telegram alert, and so did the readiness probe's own 1 s timeout during a
database outage. The monitoring's latency recorder now leaves out streamed answers and the
operational routes (``/health``, ``/metrics``, ``/saq``), as the request metrics leave out the latter.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.domains.monitoring.services import MonitoringService
from tests.factories import Team


async def test_streams_and_probes_are_no_latency_samples(
    client: AsyncTestClient[Litestar], app: Litestar, team: Team
) -> None:
    service = app.state.services[MonitoringService]
    async with service._round:  # no background ship drains the counts meanwhile
        service.latency.drain()
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/health/live")).status_code == 200
        stream = await client.get("/api/feed/stream", headers=team.viewer.headers)  # not live: it ends
        assert stream.status_code == 200, stream.text
        head = await client.head("/api/feed/stream", headers=team.viewer.headers)  # answered as its GET
        assert head.status_code == 200, head.text
        listed = await client.get(f"/api/projects/{team.project}/tasks", headers=team.viewer.headers)
        assert listed.status_code == 200, listed.text
        timed = {
            (template, method) for template, methods in service.latency.drain().items() for method in methods
        }
    assert ("/api/projects/{project_id}/tasks", "GET") in timed
    assert not [template for template, _ in timed if template.startswith("/health")], timed
    assert ("/api/feed/stream", "GET") not in timed
    assert ("/api/feed/stream", "HEAD") not in timed
