"""A failing readiness check says why in the log, once per interval per check."""

from __future__ import annotations

from app.config import Settings
from tests.factories import captured_logs, serve_in_loop
from tests.functional.test_health import become_ready
from tests.valkey_control import ControlledValkey


async def test_a_failing_check_is_logged_with_its_cause_once_per_interval(
    settings: Settings, controlled_valkey: ControlledValkey
) -> None:
    async with serve_in_loop(
        settings, valkey_url=controlled_valkey.url, health_timeout_s=2.0, health_ready_shared_s=0.0
    ) as served:
        await become_ready(served.client)
        controlled_valkey.stop()
        try:
            with captured_logs() as logs:
                first = await served.client.get("/health/ready")
                second = await served.client.get("/health/ready")
        finally:
            controlled_valkey.start()
        assert first.status_code == second.status_code == 200
        assert first.json()["status"] == "degraded"
        failed = [line for line in logs.lines if line.get("event") == "readiness_check_failed"]
        valkey = [line for line in failed if line["check"] == "valkey"]
        assert len(valkey) == 1, failed  # the second request, within the interval, adds none
        assert valkey[0]["level"] == "warning"
        assert valkey[0]["error"] == "ConnectionError"
        assert str(controlled_valkey.port) in valkey[0]["message"], valkey[0]  # the cause, not just a type
        assert "\n" not in valkey[0]["message"]
        assert len([line for line in failed if line["check"] == "queue"]) == 1
        assert not [line for line in failed if line["check"] == "postgres"]
        await become_ready(served.client)
