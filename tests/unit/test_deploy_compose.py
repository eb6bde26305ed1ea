"""deploy/compose.yaml's stop timings agree with the app's: a container is SIGKILLed by Docker at its
``stop_grace_period``, so what the process inside waits for must end before it (deployrev: the api's
30 s grace was below the longest request it lets finish, 41 s, and granian, given no kill timeout,
waited for its workers for good)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from app.cli import workers_kill_timeout_s
from app.config import Settings
from tests.served import ROOT

COMPOSE = ROOT / "deploy" / "compose.yaml"


def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded["services"]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"a grace of whole seconds, as this file writes them: {duration!r}"
    return float(match[1])


def default_of(value: str) -> float:
    """The default of an interpolated setting, ``${NAME:-20}``."""
    match = re.fullmatch(r"\$\{\w+:-(\d+)\}", value)
    assert match, f"a setting with a default: {value!r}"
    return float(match[1])


def test_the_apis_workers_are_killed_by_granian_after_their_longest_request_and_before_docker() -> None:
    api = services()["api"]
    kill_timeout = float(api["environment"]["GRANIAN_WORKERS_KILL_TIMEOUT"])
    assert kill_timeout >= workers_kill_timeout_s(Settings())
    # granian's own exit after killing a worker takes a moment: a margin of a few seconds
    assert seconds(api["stop_grace_period"]) >= kill_timeout + 5


def test_the_worker_finishes_its_jobs_before_docker_kills_it() -> None:
    worker = services()["worker"]
    grace = default_of(worker["environment"]["WORKER_SHUTDOWN_GRACE_S"])
    assert seconds(worker["stop_grace_period"]) > grace


def test_the_one_process_containers_have_an_init_to_take_sigterm() -> None:
    """PID 1 has no default action for SIGTERM: a step without the app's handler (dbmate running,
    the worker's start-up checks) ignored ``docker stop`` until the SIGKILL."""
    assert {name for name, service in services().items() if service.get("init")} >= {"migrate", "worker"}


def test_the_gateway_is_restarted_with_the_api_whose_address_it_resolved_at_start() -> None:
    assert services()["gateway"]["depends_on"]["api"] == {"condition": "service_healthy", "restart": True}
