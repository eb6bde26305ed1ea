"""A served process (``tests/served.py``) runs no periodic checks unless its test asks for them.

The browser tests' served process lives for the whole session on the worker's test database, and ran
error monitoring's periodic checks every 30 s (the default) in whichever test's database was there:
its hourly purge, whose tick a truncation makes claimable again, deleted the retention-old rows a
purge test had just counted (``test_monitoring_purge_chunks.py``, twice in CI-sized runs), and its
cron monitors reported missed slots. With the checks on, a served process deletes such rows within
seconds (checked by hand with ``MONITORING_CHECK_INTERVAL_S=1``).
"""

from __future__ import annotations

from pathlib import Path

from tests.served import ServerProcess


def test_a_served_process_runs_no_periodic_checks_within_a_session(tmp_path: Path) -> None:
    served = ServerProcess("postgresql://unused", "redis://unused", tmp_path)
    assert float(served.env["MONITORING_CHECK_INTERVAL_S"]) >= 3600
    asked = ServerProcess(
        "postgresql://unused", "redis://unused", tmp_path, env={"MONITORING_CHECK_INTERVAL_S": "1"}
    )
    assert asked.env["MONITORING_CHECK_INTERVAL_S"] == "1"
