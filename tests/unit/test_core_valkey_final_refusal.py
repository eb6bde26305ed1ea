"""Which answers of a Valkey the start-up checks take as final (``final_refusal``): ``just serve``'s
check of a configured ``VALKEY_URL`` and the worker's preflight fail at once on those, and wait on the
rest. The replies are parsed by valkey-py's own parser, as a client meets them."""

from __future__ import annotations

import pytest
from valkey._parsers.base import BaseParser
from valkey.exceptions import ConnectionError, InvalidResponse, TimeoutError

from app.core.valkey import final_refusal


def reply(text: str) -> Exception:
    error: Exception = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]
    return error


@pytest.mark.parametrize(
    "text",
    [
        "WRONGPASS invalid username-password pair or user is disabled.",
        "NOAUTH Authentication required.",
        "ERR invalid password",
        "ERR AUTH <password> called without any password configured for the default user. Are you sure your "
        "configuration is correct?",
        "NOPERM User app has no permissions to run the 'ping' command",
        "ERR DB index is out of range",
        "DENIED Valkey is running in protected mode because protected mode is enabled",
        "ERR unknown command 'PING', with args beginning with: ",
        "ERR SELECT is not allowed in cluster mode",
    ],
)
def test_a_refusal_waiting_cannot_change_is_final(text: str) -> None:
    assert final_refusal(reply(text)) == "refused the connection"


def test_a_reply_in_another_protocol_is_final() -> None:
    error = InvalidResponse('Protocol error, got "H" as reply type byte')
    assert final_refusal(error) == "answered in another protocol"


@pytest.mark.parametrize(
    "text",
    [
        "LOADING Valkey is loading the dataset in memory",
        "BUSY Valkey is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "ERR max number of clients reached",
    ],
)
def test_a_server_busy_starting_or_failing_over_is_waited_for(text: str) -> None:
    """Review: ``BUSY`` and ``MASTERDOWN`` failed the start at once, and both pass."""
    assert final_refusal(reply(text)) is None


@pytest.mark.parametrize(
    "error", [ConnectionError("Error 111 connecting to 127.0.0.1:6999."), TimeoutError("Timeout"), OSError()]
)
def test_an_unreachable_server_is_waited_for(error: Exception) -> None:
    assert final_refusal(error) is None
