"""A fake GitHub REST API for the tests: a Litestar app served by uvicorn on 127.0.0.1 in a thread.

Or on its own, to try the GitHub analytics locally: ``python -m tests.fakes.github --port 18701``
serves the users of ``seed_demo`` (``octocat``, ``monalisa``, ``hubot``); point ``GITHUB_API_URL`` at it.

It behaves like GitHub where our client depends on it, and enforces GitHub's limits:

- ``GET /users/{login}``, ``GET /users/{login}/repos`` (``type``, ``sort=full_name``, ``per_page``
  ≤ 100, ``page``), its continuation ``GET /user/{id}/repos`` (the path GitHub's ``link`` headers
  use: a client that builds page URLs itself instead of following ``link`` gets them wrong),
  ``GET /repos/{owner}/{repo}`` and ``GET /repos/{owner}/{repo}/languages``, and the same two by
  the repository's id: ``GET /repositories/{id}`` and ``GET /repositories/{id}/languages``.
- Names as GitHub matches them: ``{login}``, ``{owner}`` and ``{repo}`` case-insensitively
  (``/users/OCTOCAT`` is ``/users/octocat``); answers carry the canonical case (``login``, ``name``,
  ``full_name``, ``languages_url``).
- Repository ids (``FakeRepo.id``): unique and kept through renames and transfers, as GitHub's are.
  A repository renamed (``rename_repo``), transferred (``transfer_repo``) or whose owner was renamed
  (``rename_user``) answers its old ``/repos/{owner}/{repo}[/languages]`` with GitHub's ``301 Moved
  Permanently``, ``location`` absolute on the fake's own base URL: ``…/repositories/{id}[/languages]``
  (the query kept); a name in use again is its new repository's. A renamed user's old login is a 404
  (GitHub redirects no user).
- ETags (weak ``W/"…"`` for users, repositories and languages, strong ``"…"`` for repository
  pages), compared verbatim with ``if-none-match``: a match is a 304, which costs no quota only when
  the request was authorized (GitHub: a 304 is free "if the request was made while correctly
  authorized with an Authorization header"); an anonymous 304 is charged like a 200.
- A primary rate limit per token (``Authorization`` header, or anonymous): 200s, 301s, 404s and
  anonymous 304s are charged (each request counts, a redirect too); every answer carries
  ``x-ratelimit-*``; a request while the quota is 0 gets GitHub's 403 (remaining 0, reset) and is
  counted in ``violations``.
- Scripted faults: the next matching requests answer a given status with given headers (429 with
  ``retry-after``, 403 secondary limits, 502, 204 with no body, 410) or stall past the client's
  timeout, or drip their body (``drip_s``: one byte at a time, then whitespace without end: a body
  that never ends, whatever the client's per-read timeout).
- Garbage GitHub might send: a user's listing whose ``link: rel="next"`` never ends
  (``FakeUser.endless_pages``: every page links to the next, empty past the last repository), and
  whatever body and headers a fault is given (a broken gzip, a gzip bomb, a huge document).
- Records every request (arrival time, path, token, ``if-none-match``, status) and the most requests
  ever in flight at once per token.
- Refuses what GitHub refuses before it looks at the resource (none of it charged): an
  ``Authorization`` that is not ``Bearer``/``token`` or names a revoked token (``revoke``: 401 "Bad
  credentials"), a request without a ``User-Agent`` (403), an ``X-GitHub-Api-Version`` GitHub does
  not serve (400) and an ``Accept`` that asks for no JSON (415).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get
from litestar.params import FromPath
from litestar.response import Stream

from tests.fakes.serving import ThreadedServer

ANONYMOUS = "anonymous"
API_VERSIONS = frozenset({"2022-11-28"})
"""The REST API versions GitHub serves (``X-GitHub-Api-Version``; absent means the default)."""
JSON_ACCEPTS = ("application/vnd.github", "application/json", "*/*", "application/*")
MOVED_DOCS = "https://docs.github.com/rest/guides/best-practices-for-using-the-rest-api#follow-redirects"

_REPO_IDS = itertools.count(1_296_269)
"""Repository ids, unique in the process (the first is octocat/Hello-World's on GitHub)."""


def _key(name: str) -> str:
    """How GitHub matches a login or a repository name: case-insensitively."""
    return name.casefold()


@dataclass
class FakeRepo:
    name: str
    fork: bool = False
    archived: bool = False
    stars: int = 0
    forks: int = 0
    language: str | None = None
    size: int = 100
    languages: dict[str, int] = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_REPO_IDS))
    """GitHub's id of the repository: unique, kept through renames and transfers (the client tells
    a repository listed twice by it)."""


@dataclass
class FakeUser:
    login: str
    id: int
    followers: int = 0
    following: int = 0
    name: str | None = None
    bio: str | None = None
    repos: list[FakeRepo] = field(default_factory=list)
    endless_pages: bool = False
    """Every page of the listing links to a next one, past the last repository too (empty pages)."""
    page_size: int | None = None
    """Pages of at most this many repositories, whatever ``per_page`` asks (short pages)."""
    after_page: Callable[[int], None] | None = None
    """Called with the page's number once a page of the listing is answered (the owner creates or
    deletes a repository while a client pages)."""


@dataclass
class Fault:
    status: int
    times: int
    headers: dict[str, str]
    body: bytes
    delay_s: float
    path_contains: str | None
    drip_s: float = 0.0
    """Above 0: the body is sent one byte every ``drip_s``, then whitespace without end."""


@dataclass
class Recorded:
    at: float
    """Arrival time (epoch seconds)."""
    path: str
    query: str
    token: str
    if_none_match: str | None
    status: int = 0
    """0 until answered."""


@dataclass
class Quota:
    limit: int
    remaining: int
    reset: int


class FakeGitHub:
    def __init__(self, *, anonymous_limit: int = 60, token_limit: int = 5000) -> None:
        self.anonymous_limit = anonymous_limit
        self.token_limit = token_limit
        self.latency_s = 0.0
        """Every answer waits this long (to make overlapping requests observable)."""
        self._lock = threading.RLock()
        """Re-entrant: ``FakeUser.after_page`` runs under it and may rename or transfer."""
        self.users: dict[str, FakeUser] = {}
        """By login, casefolded (``_key``)."""
        self.moved: dict[tuple[str, str], int] = {}
        """Old ``(owner, repo)`` names, casefolded, of renamed or transferred repositories: their ids."""
        self.requests: list[Recorded] = []
        self.violations = 0
        self.faults: list[Fault] = []
        self.quotas: dict[str, Quota] = {}
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self._next_id = 1000
        self.revoked: set[str] = set()
        """Tokens GitHub no longer accepts (401 "Bad credentials")."""
        self.app = self._build_app()

    # -- arranging ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything; answers still under way from an earlier test no longer count."""
        with self._lock:
            self.users.clear()
            self.moved.clear()
            self.requests = []
            self.faults.clear()
            self.quotas.clear()
            self.in_flight = defaultdict(int)
            self.max_in_flight = defaultdict(int)
            self.violations = 0
            self.latency_s = 0.0
            self.revoked.clear()

    def add_user(self, login: str, repos: list[FakeRepo] | None = None, **fields: Any) -> FakeUser:
        with self._lock:
            self._next_id += 1
            user = FakeUser(login=login, id=self._next_id, repos=list(repos or []), **fields)
            self.users[_key(login)] = user
            return user

    def rename_repo(self, login: str, old: str, new: str) -> FakeRepo:
        """The owner renames a repository: its old name answers 301 to ``/repositories/{id}``."""
        with self._lock:
            user, repo = self._existing_repo(login, old)
            if _key(new) != _key(old) and self._find_repo(user, new) is not None:
                raise ValueError(f"{user.login} already has a repository named {new}")
            self.moved[(_key(user.login), _key(repo.name))] = repo.id
            repo.name = new
            return repo

    def transfer_repo(self, login: str, name: str, new_owner: str) -> FakeRepo:
        """The repository moves to ``new_owner`` (same name and id): its old path answers 301."""
        with self._lock:
            user, repo = self._existing_repo(login, name)
            owner = self._user(new_owner)
            if owner is None or self._find_repo(owner, name) is not None:
                raise ValueError(f"cannot transfer {user.login}/{name} to {new_owner}")
            user.repos.remove(repo)
            owner.repos.append(repo)
            self.moved[(_key(user.login), _key(repo.name))] = repo.id
            return repo

    def rename_user(self, old: str, new: str) -> FakeUser:
        """The user changes login: the old one is a 404, its repositories' old paths answer 301."""
        with self._lock:
            user = self._user(old)
            if user is None or (_key(new) != _key(old) and self._user(new) is not None):
                raise ValueError(f"cannot rename {old} to {new}")
            for repo in user.repos:
                self.moved[(_key(user.login), _key(repo.name))] = repo.id
            del self.users[_key(user.login)]
            user.login = new
            self.users[_key(new)] = user
            return user

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        delay_s: float = 0.0,
        path_contains: str | None = None,
        drip_s: float = 0.0,
    ) -> None:
        """The next ``times`` matching requests answer ``status`` (after ``delay_s``); a 204 or 304
        has no body."""
        default = b'{"message": "Server Error"}' if status >= 500 else b'{"message": "refused"}'
        if status in (204, 304):
            body, default = b"", b""
        with self._lock:
            self.faults.append(
                Fault(status, times, headers or {}, body or default, delay_s, path_contains, drip_s)
            )

    def revoke(self, token: str) -> None:
        """The token is revoked (or was never valid): every request with it is a 401."""
        with self._lock:
            self.revoked.add(token)

    def recover(self) -> None:
        """GitHub answers again: the scripted faults not spent yet are dropped."""
        with self._lock:
            self.faults.clear()

    def set_quota(
        self, *, remaining: int, reset: int, token: str | None = None, limit: int | None = None
    ) -> None:
        key = token or ANONYMOUS
        with self._lock:
            default_limit = self.anonymous_limit if key == ANONYMOUS else self.token_limit
            self.quotas[key] = Quota(limit=limit or default_limit, remaining=remaining, reset=reset)

    # -- observing ---------------------------------------------------------------------------

    def charged(self, token: str | None = None) -> int:
        """Quota spent by ``token`` (anonymous by default) in the current window."""
        with self._lock:
            quota = self._quota(token or ANONYMOUS)
            return quota.limit - quota.remaining

    def recorded(self, path_contains: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path_contains in r.path]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests = []

    # -- serving -----------------------------------------------------------------------------

    def _quota(self, token: str) -> Quota:
        now = int(time.time())
        quota = self.quotas.get(token)
        if quota is None or quota.reset <= now:
            limit = self.anonymous_limit if token == ANONYMOUS else self.token_limit
            if quota is not None:
                limit = quota.limit
            quota = Quota(limit=limit, remaining=limit, reset=now + 3600)
            self.quotas[token] = quota
        return quota

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.path_contains is None or fault.path_contains in path:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _rate_headers(quota: Quota) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(quota.limit),
            "x-ratelimit-remaining": str(quota.remaining),
            "x-ratelimit-used": str(quota.limit - quota.remaining),
            "x-ratelimit-reset": str(quota.reset),
            "x-ratelimit-resource": "core",
        }

    def _refusal(self, request: Request[Any, Any, Any], token: str | None) -> tuple[int, bytes] | None:
        """What GitHub answers before it looks at the resource, if anything."""
        if token is None or token in self.revoked:
            return 401, b'{"message": "Bad credentials", "status": "401"}'
        if not request.headers.get("user-agent", "").strip():
            return (
                403,
                b'{"message": "Request forbidden by administrative rules. '
                b'Please make sure your request has a User-Agent header"}',
            )
        version = request.headers.get("x-github-api-version")
        if version is not None and version not in API_VERSIONS:
            return 400, b'{"message": "API version ' + version.encode() + b' is not supported."}'
        accept = request.headers.get("accept")
        if accept is not None and not any(kind in accept for kind in JSON_ACCEPTS):
            return 415, b'{"message": "Unsupported \'Accept\' header"}'
        return None

    @staticmethod
    def _token_of(authorization: str | None) -> str | None:
        """The token an ``Authorization`` names, ``ANONYMOUS`` without one, ``None`` for a scheme
        GitHub does not take."""
        if authorization is None:
            return ANONYMOUS
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() in ("bearer", "token") and credentials.strip():
            return credentials.strip()
        return None

    async def _serve(self, request: Request[Any, Any, Any], resource: Any) -> Response[bytes] | Stream:
        token_or_none = self._token_of(request.headers.get("authorization"))
        token = token_or_none or ANONYMOUS
        if_none_match = request.headers.get("if-none-match")
        record = Recorded(time.time(), request.url.path, request.url.query, token, if_none_match)
        refused = self._refusal(request, token_or_none)
        if refused is not None:
            with self._lock:
                self.requests.append(record)
                record.status = refused[0]
            return Response(refused[1], status_code=refused[0], media_type="application/json")
        with self._lock:
            self.requests.append(record)
            in_flight, max_in_flight = self.in_flight, self.max_in_flight
            in_flight[token] += 1
            max_in_flight[token] = max(max_in_flight[token], in_flight[token])
            fault = self._take_fault(request.url.path)
        try:
            delay = self.latency_s + (fault.delay_s if fault is not None else 0.0)
            if delay:
                await asyncio.sleep(delay)
            with self._lock:
                quota = self._quota(token)
                if fault is not None:
                    status, body, headers = (
                        fault.status,
                        fault.body,
                        {**self._rate_headers(quota), **fault.headers},
                    )
                elif quota.remaining <= 0:
                    self.violations += 1
                    status, headers = 403, self._rate_headers(quota)
                    body = b'{"message": "API rate limit exceeded"}'
                else:
                    status, body, headers = resource(str(request.base_url).rstrip("/"))
                    if status == 200 and if_none_match is not None and if_none_match == headers.get("etag"):
                        status, body = 304, b""
                    if status in (200, 301, 404) or (status == 304 and token == ANONYMOUS):
                        quota.remaining -= 1
                    headers = {**headers, **self._rate_headers(quota)}
                record.status = status
            if fault is not None and fault.drip_s > 0:
                return Stream(_drip(body, fault.drip_s), status_code=status, headers=headers)
            return Response(body, status_code=status, headers=headers, media_type="application/json")
        finally:
            with self._lock:
                in_flight[token] -= 1

    def _user(self, login: str) -> FakeUser | None:
        return self.users.get(_key(login))

    @staticmethod
    def _find_repo(user: FakeUser, name: str) -> FakeRepo | None:
        return next((repo for repo in user.repos if _key(repo.name) == _key(name)), None)

    def _existing_repo(self, login: str, name: str) -> tuple[FakeUser, FakeRepo]:
        user = self._user(login)
        repo = self._find_repo(user, name) if user is not None else None
        if user is None or repo is None:
            raise KeyError(f"no repository {login}/{name}")
        return user, repo

    def _repo_by_id(self, repo_id: int) -> tuple[FakeUser, FakeRepo] | None:
        for user in self.users.values():
            for repo in user.repos:
                if repo.id == repo_id:
                    return user, repo
        return None

    def _user_resource(self, login: str) -> Any:
        def resource(base: str) -> tuple[int, bytes, dict[str, str]]:
            user = self._user(login)
            if user is None:
                return 404, b'{"message": "Not Found"}', {}
            body = msgspec.json.encode(
                {
                    "login": user.login,
                    "id": user.id,
                    "html_url": f"https://github.example/{user.login}",
                    "avatar_url": f"https://avatars.example/u/{user.id}",
                    "type": "User",
                    "name": user.name,
                    "bio": user.bio,
                    "company": None,
                    "location": None,
                    "blog": "",
                    "public_repos": len(user.repos),
                    "followers": user.followers,
                    "following": user.following,
                    "created_at": "2015-03-01T12:00:00Z",
                }
            )
            return 200, body, {"etag": f'W/"{hashlib.sha256(body).hexdigest()[:32]}"'}

        return resource

    def _repos_resource(self, user_key: str | int, query: dict[str, str]) -> Any:
        def resource(base: str) -> tuple[int, bytes, dict[str, str]]:
            if isinstance(user_key, int):
                user = next((u for u in self.users.values() if u.id == user_key), None)
            else:
                user = self._user(user_key)
            if user is None:
                return 404, b'{"message": "Not Found"}', {}
            per_page = min(100, max(1, int(query.get("per_page", "30"))), user.page_size or 100)
            page = max(1, int(query.get("page", "1")))
            repos = sorted(user.repos, key=lambda r: r.name.lower())
            last = page + 1 if user.endless_pages else max(1, -(-len(repos) // per_page))
            chunk = repos[(page - 1) * per_page : page * per_page]
            body = msgspec.json.encode([self._repo_json(base, user, repo) for repo in chunk])
            links = []
            common = f"{base}/user/{user.id}/repos?per_page={per_page}&type=owner&sort=full_name"
            if page < last:
                links.append(f'<{common}&page={page + 1}>; rel="next"')
                links.append(f'<{common}&page={last}>; rel="last"')
            if page > 1:
                links.append(f'<{common}&page={page - 1}>; rel="prev"')
                links.append(f'<{common}&page=1>; rel="first"')
            headers = {"etag": f'"{hashlib.sha256(body).hexdigest()[:40]}"'}
            if links:
                headers["link"] = ", ".join(links)
            if user.after_page is not None:
                user.after_page(page)
            return 200, body, headers

        return resource

    @staticmethod
    def _repo_json(base: str, user: FakeUser, repo: FakeRepo) -> dict[str, Any]:
        return {
            "id": repo.id,
            "name": repo.name,
            "full_name": f"{user.login}/{repo.name}",
            "html_url": f"https://github.example/{user.login}/{repo.name}",
            "description": "a repository",
            "fork": repo.fork,
            "archived": repo.archived,
            "stargazers_count": repo.stars,
            "watchers_count": repo.stars,
            "forks_count": repo.forks,
            "size": repo.size,
            "language": repo.language,
            "pushed_at": "2026-01-02T03:04:05Z",
            "languages_url": f"{base}/repos/{user.login}/{repo.name}/languages",
            "owner": {"login": user.login, "id": user.id},
        }

    def _repo_resource(self, owner: str | None, name: str | int, suffix: str, query: str) -> Any:
        """``/repos/{owner}/{name}{suffix}`` (``owner`` None: ``/repositories/{name}{suffix}``, by
        id): the repository (``suffix`` empty) or its languages (``/languages``). An old name of a
        moved repository answers 301 to its id's path, as GitHub does."""

        def resource(base: str) -> tuple[int, bytes, dict[str, str]]:
            found: tuple[FakeUser, FakeRepo] | None = None
            if owner is None:
                found = self._repo_by_id(int(name))
            elif (user := self._user(owner)) is not None and (repo := self._find_repo(user, str(name))):
                found = user, repo
            else:
                moved_to = self.moved.get((_key(owner), _key(str(name))))
                if moved_to is not None and self._repo_by_id(moved_to) is not None:
                    location = f"{base}/repositories/{moved_to}{suffix}" + (f"?{query}" if query else "")
                    body = msgspec.json.encode(
                        {"message": "Moved Permanently", "url": location, "documentation_url": MOVED_DOCS}
                    )
                    return 301, body, {"location": location}
            if found is None:
                return 404, b'{"message": "Not Found"}', {}
            user, repo = found
            document = repo.languages if suffix == "/languages" else self._repo_json(base, user, repo)
            body = msgspec.json.encode(document)
            return 200, body, {"etag": f'W/"{hashlib.sha256(body).hexdigest()[:32]}"'}

        return resource

    def _build_app(self) -> Litestar:
        fake = self

        @get("/users/{login:str}")
        async def user(request: Request[Any, Any, Any], login: FromPath[str]) -> Response[bytes] | Stream:
            return await fake._serve(request, fake._user_resource(login))

        @get("/users/{login:str}/repos")
        async def repos(request: Request[Any, Any, Any], login: FromPath[str]) -> Response[bytes] | Stream:
            return await fake._serve(request, fake._repos_resource(login, dict(request.query_params)))

        @get("/user/{user_id:int}/repos")
        async def repos_by_id(
            request: Request[Any, Any, Any], user_id: FromPath[int]
        ) -> Response[bytes] | Stream:
            return await fake._serve(request, fake._repos_resource(user_id, dict(request.query_params)))

        @get("/repos/{owner:str}/{name:str}")
        async def repo(
            request: Request[Any, Any, Any], owner: FromPath[str], name: FromPath[str]
        ) -> Response[bytes] | Stream:
            return await fake._serve(request, fake._repo_resource(owner, name, "", request.url.query))

        @get("/repos/{owner:str}/{name:str}/languages")
        async def languages(
            request: Request[Any, Any, Any], owner: FromPath[str], name: FromPath[str]
        ) -> Response[bytes] | Stream:
            return await fake._serve(
                request, fake._repo_resource(owner, name, "/languages", request.url.query)
            )

        @get("/repositories/{repo_id:int}")
        async def repo_by_id(
            request: Request[Any, Any, Any], repo_id: FromPath[int]
        ) -> Response[bytes] | Stream:
            return await fake._serve(request, fake._repo_resource(None, repo_id, "", request.url.query))

        @get("/repositories/{repo_id:int}/languages")
        async def languages_by_id(
            request: Request[Any, Any, Any], repo_id: FromPath[int]
        ) -> Response[bytes] | Stream:
            return await fake._serve(
                request, fake._repo_resource(None, repo_id, "/languages", request.url.query)
            )

        return Litestar(
            route_handlers=[user, repos, repos_by_id, repo, languages, repo_by_id, languages_by_id],
            openapi_config=None,
        )


DRIP_MAX_S = 30.0
"""A dripping body stops after this long, whoever still reads it (a test must never hang on it)."""


async def _drip(body: bytes, every_s: float) -> AsyncIterator[bytes]:
    started = time.monotonic()
    for index in range(len(body)):
        yield body[index : index + 1]
        await asyncio.sleep(every_s)
    while time.monotonic() - started < DRIP_MAX_S:
        yield b" "
        await asyncio.sleep(every_s)


class FakeGitHubServer(ThreadedServer):
    """Serves a ``FakeGitHub`` on a free 127.0.0.1 port."""

    def __init__(self, fake: FakeGitHub) -> None:
        super().__init__(fake.app, "fake-github")
        self.fake = fake


@contextmanager
def serve_fake_github(fake: FakeGitHub | None = None) -> Iterator[FakeGitHubServer]:
    server = FakeGitHubServer(fake or FakeGitHub())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def repos_named(count: int, **fields: Any) -> list[FakeRepo]:
    """``count`` repositories ``repo-0000``, ``repo-0001``, … with the same ``fields``."""
    return [FakeRepo(name=f"repo-{index:04d}", **fields) for index in range(count)]


def seed_demo(fake: FakeGitHub) -> None:
    """A few users with repositories, for a person trying the API against the fake (``main``).
    ``octocat`` answers the example of README's "GitHub profile analytics": three repositories, one a
    fork; 120 stars and 16 forks on the other two; Python, Ruby and some Shell."""
    fake.add_user(
        "octocat",
        [
            FakeRepo("hello-world", stars=80, forks=12, language="Python", languages={"Python": 9000}),
            FakeRepo("octo-gem", stars=40, forks=4, language="Ruby", languages={"Ruby": 5000, "Shell": 1000}),
            FakeRepo("linguist", fork=True, stars=2, language="Ruby", languages={"Ruby": 70000}),
        ],
        name="The Octocat",
        bio="GitHub's mascot",
        followers=120,
        following=3,
    )
    fake.add_user(
        "monalisa",
        [
            FakeRepo("smile", stars=512, forks=64, language="TypeScript", languages={"TypeScript": 42000}),
            FakeRepo("sketches", stars=31, forks=2, language="Go", languages={"Go": 12000, "Makefile": 400}),
            FakeRepo("dotfiles", stars=7, language="Shell", languages={"Shell": 3000}),
            FakeRepo("old-site", archived=True, stars=3, language="HTML", languages={"HTML": 8000}),
        ],
        name="Mona Lisa Octocat",
        followers=2048,
        following=12,
    )
    fake.add_user(
        "hubot",
        [
            FakeRepo(
                "hubot-scripts", stars=15, forks=9, language="CoffeeScript", languages={"CoffeeScript": 20000}
            )
        ],
        name="Hubot",
        followers=42,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A fake GitHub REST API (users, their repositories and languages) with a few users "
        "(seed_demo), enforcing GitHub's rate limits."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18701)
    parser.add_argument("--anonymous-limit", type=int, default=60, help="requests per hour without a token")
    parser.add_argument("--token-limit", type=int, default=5000, help="requests per hour per token")
    options = parser.parse_args()
    fake = FakeGitHub(anonymous_limit=options.anonymous_limit, token_limit=options.token_limit)
    seed_demo(fake)
    url = f"http://{options.host}:{options.port}"
    users = ", ".join(user.login for user in fake.users.values())
    print(f"fake GitHub on {url}: GITHUB_API_URL={url}; users {users}", flush=True)
    uvicorn.run(fake.app, host=options.host, port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
