"""``RESERVATION_WINDOW_S`` is bounded: a window past a week is refused at start-up (an unbounded one
overflowed ``now + timedelta(seconds=...)`` in every reservation, a 500 for every order)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import SettingsError, load_settings

WEEK_S = 7 * 24 * 3600
STRONG_SECRET = "k" * 16 + "0123456789ABCDEF"


def settings_with(window: str, data_dir: Path) -> int:
    env = {"RESERVATION_WINDOW_S": window, "DATA_DIR": str(data_dir), "SECRET_KEY": STRONG_SECRET}
    return load_settings(env).reservation_window_s


def test_a_window_up_to_a_week_is_accepted(tmp_path: Path) -> None:
    assert settings_with("10", tmp_path) == 10
    assert settings_with(str(WEEK_S), tmp_path) == WEEK_S


@pytest.mark.parametrize("window", [str(WEEK_S + 1), "9999999999999", str(2**63)])
def test_a_window_past_a_week_is_refused(window: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"RESERVATION_WINDOW_S"):
        settings_with(window, tmp_path)


def test_a_window_under_ten_seconds_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"RESERVATION_WINDOW_S"):
        settings_with("9", tmp_path)
