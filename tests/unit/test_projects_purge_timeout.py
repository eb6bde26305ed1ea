"""A project purge's job outlives its run's budget, whatever ``JOB_TIMEOUT_S`` says.

The run stops at ``PURGE_RUN_BUDGET_S`` and enqueues its follow-up; with ``JOB_TIMEOUT_S`` below that
(it may be set as low as 1) SAQ cut every run of a large purge first: its last chunk rolled back, its
retries failed the same way, and the purge waited for the hourly requeue (a review).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import load_settings
from app.core.relay import timeouts_of
from app.domains.projects.jobs import PURGE_TIMEOUT_MARGIN_S
from app.domains.projects.services import PURGE_RUN_BUDGET_S
from app.modules import MODULES

PURGE = ("default", "purge_deleted_project")


@pytest.mark.parametrize("job_timeout_s", [1, 5, 20])
def test_a_short_job_timeout_leaves_a_purge_run_its_budget(tmp_path: Path, job_timeout_s: int) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path), "JOB_TIMEOUT_S": str(job_timeout_s)})
    assert timeouts_of(MODULES, settings)[PURGE] >= PURGE_RUN_BUDGET_S + PURGE_TIMEOUT_MARGIN_S


def test_a_longer_job_timeout_is_kept(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path), "JOB_TIMEOUT_S": "120"})
    assert timeouts_of(MODULES, settings)[PURGE] == 120
