"""The fake GitHub started the way README says a person starts it: ``python -m tests.fakes.github``.

README shows an answer of ``GET /api/github/users/octocat`` that "came from the fake GitHub of
``tests/fakes/github.py``, with ``GITHUB_API_URL`` pointing at it"; the module had no ``__main__``, so
the command did nothing. Here it runs as its own process, answers a seeded user, and the app pointed
at it answers README's example.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection
from valkey.asyncio import Valkey

from app.config import Settings
from tests.factories import generous_client, make_user, wait_until
from tests.served import ROOT, free_port


class FakeGitHubProcess:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    async def answers(self) -> bool:
        if self.process.poll() is not None:
            output = self.process.stdout.read() if self.process.stdout else ""
            pytest.fail(f"python -m tests.fakes.github exited with {self.process.returncode}:\n{output}")
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{self.url}/users/octocat", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def fake_github_process() -> Iterator[FakeGitHubProcess]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.github", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield FakeGitHubProcess(process, f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_the_fake_github_command_serves_seeded_users(fake_github_process: FakeGitHubProcess) -> None:
    await wait_until(fake_github_process.answers, 60, "python -m tests.fakes.github answers")
    async with httpx.AsyncClient(base_url=fake_github_process.url) as github:
        user = (await github.get("/users/OCTOCAT")).json()
        assert (user["login"], user["name"], user["public_repos"]) == ("octocat", "The Octocat", 3)
        repos = (await github.get("/users/monalisa/repos", params={"per_page": 100})).json()
        assert {repo["name"] for repo in repos} == {"smile", "sketches", "dotfiles", "old-site"}
        assert (await github.get("/users/hubot")).status_code == 200
        assert (await github.get("/users/nobody-here")).status_code == 404


async def test_the_app_pointed_at_the_fake_github_answers_the_readme_example(
    fake_github_process: FakeGitHubProcess, settings: Settings, db: AsyncConnection[Any], valkey: Valkey
) -> None:
    await wait_until(fake_github_process.answers, 60, "python -m tests.fakes.github answers")
    async for api in generous_client(settings, github_api_url=fake_github_process.url):
        caller = await make_user(db, api.app)
        response = await api.get("/api/github/users/octocat", headers=caller.headers)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["profile"]["name"] == "The Octocat"
        assert answer["repositories"] == {
            "total": 3,
            "scanned": 3,
            "counted": 2,
            "forks": 1,
            "archived": 0,
            "truncated": False,
        }
        assert (answer["total_stars"], answer["total_forks"]) == (120, 16)
        assert answer["top_repositories"][0]["name"] == "hello-world"
        blend = {row["name"]: (row["repos"], row["bytes"]) for row in answer["languages"]["blend"]}
        assert blend == {"Python": (1, 9000), "Ruby": (1, 5000), "Shell": (0, 1000)}
