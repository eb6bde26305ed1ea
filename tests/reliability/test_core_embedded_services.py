"""The embedded Valkey keeps its data across restarts and is shared by processes that ask for it."""

from __future__ import annotations

from pathlib import Path

from valkey import Valkey

from app.core import embedded


def test_embedded_valkey_data_survives_a_restart(tmp_path: Path) -> None:
    url, server = embedded.start_valkey(tmp_path)
    assert server is not None
    try:
        joined_url, joined = embedded.start_valkey(tmp_path)
        assert (joined_url, joined) == (url, None), "a second caller joins the running server"
        with Valkey.from_url(url) as client:
            client.set("survives", "yes")
    finally:
        server.stop()
    url, server = embedded.start_valkey(tmp_path)
    assert server is not None, "the recorded server is gone, so a new one starts"
    try:
        with Valkey.from_url(url) as client:
            assert client.get("survives") == b"yes"
    finally:
        server.stop()
