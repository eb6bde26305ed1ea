"""Credentials never reach a log line or a dying command's output, whatever quotes them."""

from __future__ import annotations

import pytest

from app.cli import exit_scrubbed
from app.core.logging import error_message
from app.core.scrub import scrub_text

PASSWORD = "S3cretPw"


def test_a_driver_error_quoting_the_password_is_scrubbed() -> None:
    url = f"postgresql://app:Xy%zz{PASSWORD}@127.0.0.1:1/app"
    text = f'invalid percent-encoded token: "Xy%zz{PASSWORD}"'
    assert PASSWORD not in scrub_text(text, url)
    assert PASSWORD not in scrub_text(f'missing "=" after "{url}" in connection info string', url)
    assert PASSWORD not in error_message(ValueError(f"connection to postgresql://app:{PASSWORD}@db failed"))
    assert PASSWORD not in error_message(ValueError(f"host=db password={PASSWORD} refused\nsecond line"))


def test_a_command_dying_of_a_driver_error_prints_it_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://app:Xy%zz{PASSWORD}@127.0.0.1:1/app"
    with pytest.raises(SystemExit) as exited, exit_scrubbed(url):
        raise RuntimeError(f'invalid percent-encoded token: "Xy%zz{PASSWORD}"')
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "RuntimeError" in err
    assert PASSWORD not in err
