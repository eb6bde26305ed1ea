"""OpenAPI helpers: every route documents the problems it can answer."""

from __future__ import annotations

from litestar.openapi import ResponseSpec

from app.core.errors import Problem

_DESCRIPTIONS = {
    400: "Invalid request: malformed body or bad fields (each listed in `errors`)",
    401: "Missing, invalid or expired credentials",
    403: "Authenticated, but not allowed",
    404: "No such resource (or not visible to the caller)",
    409: "Conflicts with the current state",
    413: "Request body too large",
    422: "Well-formed but cannot be processed",
    429: "Rate limit exceeded; see Retry-After",
    500: "Unexpected error; quote the request_id",
    503: "A dependency is unavailable; retry later",
}


ALWAYS = (400, 401, 500, 503)
"""Statuses every route can answer (see ``problems``)."""

BEARER = [{"BearerToken": []}]
"""``security=`` of routes that need an access token (the scheme is declared in ``create_app``)."""


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route: the given problem statuses plus ``ALWAYS``, as problem+json.

    400 is always listed because Litestar documents its own (plain JSON) 400 on any route with
    parameters unless the route declares one; 401 because a bad bearer token is refused on every
    route, public ones included; 503 because checking a token needs Valkey or PostgreSQL; 500 anywhere.
    """
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_DESCRIPTIONS.get(status, "Problem"),
            media_type="application/problem+json",
        )
        for status in sorted({*statuses, *ALWAYS})
    }
