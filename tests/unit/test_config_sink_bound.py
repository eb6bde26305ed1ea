"""A ``DATABASE_TIMEOUT_S`` that would let a page view commit after the analytics rollup has passed the
five minutes of its ``received_at`` (``ROLLUP_GRACE_S``) is refused at start: such a view would be stored and
counted by no report (``tests/functional/test_reports_late_commit.py`` shows one lost).

The bound (``sink_commit_bound_s``): ``SINK_MAX_QUEUE_S`` in the sink's queue (older requests are
answered 503 unwritten, ``tests/functional/test_pageviews_sink.py``), then two write deadlines; the
queue's depth (``SINK_MAX_PENDING``, ``SINK_BATCH_SIZE``, ``SINK_FLUSHERS``, ``SINK_MAX_WAIT_MS``)
does not count.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import (
    INGEST_MARGIN_S,
    ROLLUP_GRACE_S,
    SINK_MAX_QUEUE_S,
    Settings,
    SettingsError,
    load_settings,
    sink_commit_bound_s,
)

STRONG_SECRET = "k" * 16 + "0123456789ABCDEF"


def settings_with(data_dir: Path, **env: str) -> Settings:
    return load_settings({"DATA_DIR": str(data_dir), "SECRET_KEY": STRONG_SECRET, **env})


def test_the_defaults_leave_the_margin(tmp_path: Path) -> None:
    settings = settings_with(tmp_path)
    assert sink_commit_bound_s(settings) == SINK_MAX_QUEUE_S + 2 * 5
    assert sink_commit_bound_s(settings) + INGEST_MARGIN_S < ROLLUP_GRACE_S


@pytest.mark.parametrize("timeout_s", ["60", "240", "900"])
def test_a_write_deadline_that_reaches_the_grace_is_refused_naming_it(tmp_path: Path, timeout_s: str) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_with(tmp_path, DATABASE_TIMEOUT_S=timeout_s)

    message = str(refused.value)
    assert f"DATABASE_TIMEOUT_S {timeout_s} s" in message, message
    assert f"below {ROLLUP_GRACE_S - INGEST_MARGIN_S} s" in message, message


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_TIMEOUT_S": "59.9"},
        {"SINK_MAX_PENDING": "1000000", "SINK_BATCH_SIZE": "1", "DATABASE_TIMEOUT_S": "30"},
        {"SINK_MAX_WAIT_MS": "2000", "SINK_BATCH_SIZE": "100"},
    ],
)
def test_a_deep_queue_is_accepted_since_the_queue_wait_is_capped(tmp_path: Path, env: dict[str, str]) -> None:
    settings = settings_with(tmp_path, **env)
    assert sink_commit_bound_s(settings) == SINK_MAX_QUEUE_S + 2 * settings.database_timeout_s
