"""The pages of the problem types: ``/problems/<slug>``, the ``type`` of every problem answer.

RFC 9457 3.1.1: a problem's type URI, dereferenced, should document the problem type for a person.
Ours were relative URIs that answered a 404 problem of their own. Every type the app answers has a
page: each ``AppError`` class (its status, title and docstring), the HTTP statuses the handlers map
(``HTTP_PROBLEMS``) and the types the handlers name themselves (``HANDLER_PROBLEMS``). The registry
is read from those when first asked, once every domain is imported: nothing to keep in step by hand.
A page is plain HTML under a ``default-src 'none'`` policy: no script, no style, nothing fetched.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterator

import msgspec
from litestar import MediaType, Router, get
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.params import FromPath

from app.core.errors import HANDLER_PROBLEMS, HTTP_PROBLEMS, AppError, NotFoundError, problem_type
from app.core.openapi import problems

_CODE = re.compile(r"`([^`]+)`")

PAGES_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


class ProblemType(msgspec.Struct, frozen=True):
    slug: str
    status: int
    title: str
    about: str


def _subclasses(kind: type[AppError]) -> Iterator[type[AppError]]:
    for sub in kind.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _about(status: int) -> str:
    """What a problem of ``status`` means, as its HTTP status's type says (the classes' docstrings are
    written for the code's readers, not the API's)."""
    known = HTTP_PROBLEMS.get(status)
    if known is not None:
        return known[2]
    if status < 500:
        return "A problem with the request: its `detail` says what to change before sending it again."
    return "The service cannot do this now: retry later (after `Retry-After` seconds when it is given)."


@functools.cache
def problem_types() -> dict[str, ProblemType]:
    """Every problem type the app answers, by slug (first come: the HTTP statuses, the handlers'
    own, then the classes, most general first)."""
    found: dict[str, ProblemType] = {}
    for status, (slug, title, about) in HTTP_PROBLEMS.items():
        found[slug] = ProblemType(slug, status, title, about)
    for slug, (status, title, about) in HANDLER_PROBLEMS.items():
        found.setdefault(slug, ProblemType(slug, status, title, about))
    for kind in _subclasses(AppError):
        if "slug" in kind.__dict__ and kind.slug not in found:
            found[kind.slug] = ProblemType(kind.slug, kind.status, kind.title, _about(kind.status))
    return dict(sorted(found.items()))


def _page(title: str, body: str) -> bytes:
    return (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}</title>{body}</html>"
    ).encode()


def _paragraphs(text: str) -> str:
    """``text``'s paragraphs as HTML, its `code` spans as ``<code>``."""
    return "".join(
        "<p>" + _CODE.sub(r"<code>\1</code>", html.escape(part)) + "</p>"
        for part in text.split("\n\n")
        if part.strip()
    )


_PAGE_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=PAGES_CSP),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
]
_page_route = functools.partial(
    get,
    tags=["docs"],
    opt={"authenticate": False},
    media_type=MediaType.HTML,
    cache_control=CacheControlHeader(public=True, max_age=3600),
    sync_to_thread=False,
)
"""``get`` with what both pages share: public, HTML, cached for an hour."""


@_page_route(
    "/",
    summary="Every problem type the API answers",
    description="An HTML page listing the problem types (a problem answer's `type`), each linked.",
    responses=problems(429),
)
def problem_index() -> bytes:
    items = "".join(
        f'<li><a href="{html.escape(problem_type(kind.slug))}">{html.escape(kind.slug)}</a>: '
        f"{kind.status} {html.escape(kind.title)}</li>"
        for kind in problem_types().values()
    )
    return _page("Problem types", f"<h1>Problem types</h1><ul>{items}</ul>")


@_page_route(
    "/{slug:str}",
    summary="What a problem type means",
    description="An HTML page: the problem's status, title and what it means. Unknown types are a 404.",
    responses=problems(404, 429),
)
def problem_page(slug: FromPath[str]) -> bytes:
    kind = problem_types().get(slug)
    if kind is None:
        raise NotFoundError("No such problem type: the list is at /problems.")
    return _page(
        kind.title,
        f"<h1>{html.escape(kind.title)}</h1><p>HTTP {kind.status}, type <code>"
        f"{html.escape(problem_type(kind.slug))}</code></p>{_paragraphs(kind.about)}"
        "<p>The answer's <code>detail</code> says more, and each operation's documented answers "
        '(<a href="/schema">/schema</a>) which problems it gives.</p>'
        '<p><a href="/problems">Every problem type</a></p>',
    )


def problem_types_router() -> Router:
    """The pages under ``/problems`` (a new router per app: a router belongs to one application)."""
    return Router("/problems", route_handlers=[problem_index, problem_page], response_headers=_PAGE_HEADERS)


__all__ = ["ProblemType", "problem_types", "problem_types_router"]
