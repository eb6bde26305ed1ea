"""The ingest sink's settings are refused when a page view could wait in it until the analytics rollup
has passed the hour of its ``received_at`` (``ROLLUP_GRACE_S``): such a view would be stored and
counted by no report (``tests/functional/test_reports_late_commit.py`` shows one lost).

The bound (``sink_commit_bound_s``): the batches a view may wait for, each written within two
deadlines (``DATABASE_TIMEOUT_S``) after a linger (``SINK_MAX_WAIT_MS``); with the defaults
(1 + 49 batches of 2 x 5 s) 500 s, which leaves more than ``INGEST_MARGIN_S`` of the grace.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import (
    INGEST_MARGIN_S,
    ROLLUP_GRACE_S,
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
    assert sink_commit_bound_s(settings) == 500
    assert sink_commit_bound_s(settings) + INGEST_MARGIN_S < ROLLUP_GRACE_S


@pytest.mark.parametrize(
    ("env", "bound_s"),
    [
        ({"DATABASE_TIMEOUT_S": "900"}, 50 * 1800),  # one write alone may outlast the grace
        ({"DATABASE_TIMEOUT_S": "5.4"}, 540),  # the first deadline refused with the other defaults
        ({"SINK_MAX_PENDING": "1000000"}, 1000 * 10),
        ({"SINK_BATCH_SIZE": "100"}, 1000 * 10),  # 50,000 pending rows in batches of 100
        ({"SINK_MAX_WAIT_MS": "2000"}, 50 * 12),  # a linger before every batch
        ({"SINK_BATCH_SIZE": "1", "SINK_MAX_PENDING": "54"}, 55 * 10),  # a batch per pending row
    ],
)
def test_settings_that_let_a_view_wait_past_the_grace_are_refused_naming_them(
    tmp_path: Path, env: dict[str, str], bound_s: float
) -> None:
    with pytest.raises(SettingsError) as refused:
        settings_with(tmp_path, **env)

    message = str(refused.value)
    for name in (
        "SINK_MAX_PENDING",
        "SINK_BATCH_SIZE",
        "SINK_FLUSHERS",
        "SINK_MAX_WAIT_MS",
        "DATABASE_TIMEOUT_S",
    ):
        assert name in message, message
    assert f"up to {bound_s:,.0f} s" in message, message
    assert f"below {ROLLUP_GRACE_S - INGEST_MARGIN_S} s" in message, message


@pytest.mark.parametrize(
    ("env", "bound_s"),
    [
        ({"DATABASE_TIMEOUT_S": "5.39"}, 539),
        ({"DATABASE_TIMEOUT_S": "10", "SINK_FLUSHERS": "2"}, (1 + 25) * 20),  # 49 batches two at a time
        ({"DATABASE_TIMEOUT_S": "30", "SINK_MAX_PENDING": "8000"}, (1 + 7) * 60),
        ({"SINK_BATCH_SIZE": "100000"}, 2 * 10),  # everything pending fits one batch, after one in flight
        ({"SINK_BATCH_SIZE": "1", "SINK_MAX_PENDING": "1"}, 2 * 10),
    ],
)
def test_settings_within_the_grace_are_accepted(tmp_path: Path, env: dict[str, str], bound_s: float) -> None:
    assert sink_commit_bound_s(settings_with(tmp_path, **env)) == pytest.approx(bound_s)
