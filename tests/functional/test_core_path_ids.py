"""Ids in paths have one spelling (``app.core.routing.parse_path_int``).

Litestar parsed a ``{x:int}`` segment with ``int()``: ``/api/projects/20001%0A``, ``%2020001%0A``,
``+20001``, ``2_0001``, ``020001`` and ``٢٠٠٠١`` all answered project 20001, past any gateway or cache
rule written for ``/api/projects/20001``. Now only the canonical decimal is routed; every other spelling
is the 404 problem an unparsable id (``/api/projects/abc``) always got.

- A few representative resources (a project, a task, a site, an order): the owner reads each by its id,
  and no other spelling of the id finds it.
- ``0`` is a canonical spelling: it still reaches ``IdPath``'s bounds (a 400 naming the field).
- The sweep: every route of the app with an ``int`` path parameter parses it with ``parse_path_int``,
  documents a 404, answers the canonical spelling past routing, and 404 to every other spelling of
  each parameter.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from psycopg import AsyncConnection

from app.config import Settings
from app.core.routing import parse_path_int
from app.core.types import MAX_ID
from tests.factories import (
    Client,
    assert_problem,
    generous_client,
    make_product,
    make_project,
    make_site,
    make_task,
    make_user,
)


def respellings(id_: int) -> dict[str, str]:
    """Other spellings of ``id_`` (at least two digits) in a URL path, each one ``int()`` read as ``id_``
    (or, for the minus sign, as ``-id_``)."""
    digits = str(id_)
    assert len(digits) >= 2
    return {
        "final newline": f"{digits}%0A",
        "space and newline": f"%20{digits}%0A",
        "leading space": f"%20{digits}",
        "tab": f"{digits}%09",
        "plus sign": f"+{digits}",
        "encoded plus sign": f"%2B{digits}",
        "minus sign": f"-{digits}",
        "underscore": f"{digits[0]}_{digits[1:]}",
        "leading zero": f"0{digits}",
        "Arabic-Indic digits": "".join(chr(0x0660 + int(d)) for d in digits),
        "fullwidth digits": "".join(chr(0xFF10 + int(d)) for d in digits),
        "encoded slash after": f"{digits}%2F",  # the server decodes it, Litestar collapsed the segment
        "encoded slash before": f"%2f{digits}",
    }


@pytest.mark.parametrize("segment", ["0", "7", "10", "20001", str(MAX_ID), str(MAX_ID + 1)])
def test_the_canonical_decimal_is_parsed(segment: str) -> None:
    assert parse_path_int(segment) == int(segment)


NOT_CANONICAL = ["", "00", "007", "1\n", " 1", "1 ", "+1", "-1", "1_0", "1.0", "0x1", "abc"]
NOT_ASCII = ["\u0661", "\uff11", "\u00b2"]  # Arabic-Indic one, fullwidth one, superscript two


@pytest.mark.parametrize("segment", NOT_CANONICAL + NOT_ASCII)
def test_any_other_spelling_is_refused(segment: str) -> None:
    with pytest.raises(ValueError, match="canonical"):
        parse_path_int(segment)


async def test_a_resource_is_found_by_its_one_spelling_only(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, app)
    project = await make_project(db, owner)
    task = await make_task(db, project, owner)
    site = (await make_site(db, owner)).id
    product = await make_product(db)
    placed = await client.post(
        "/api/orders",
        json={"lines": [{"product_id": product, "quantity": 1}]},
        headers=owner.headers | {"Idempotency-Key": uuid.uuid4().hex},
    )
    assert placed.status_code == 202, placed.text
    order = int(placed.json()["id"])
    unknown = assert_problem(await client.get("/api/projects/abc", headers=owner.headers), 404, "not-found")
    assert "detail" not in unknown

    for template, id_ in [
        ("/api/projects/{}", project),
        ("/api/projects/{}/tasks", project),
        ("/api/tasks/{}", task),
        ("/api/sites/{}", site),
        ("/api/sites/{}/summary", site),
        ("/api/orders/{}", order),
    ]:
        served = await client.get(template.format(id_), headers=owner.headers)
        assert served.status_code == 200, (template, id_, served.text)
        for name, spelling in respellings(id_).items():
            refused = await client.get(template.format(spelling), headers=owner.headers)
            body = assert_problem(refused, 404, "not-found")
            assert body.keys() == unknown.keys(), (template, name, body)


async def test_zero_still_reaches_the_bounds_of_an_id(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, app)
    response = await client.get("/api/projects/0", headers=owner.headers)
    assert_problem(response, 400, "validation", fields={"path.project_id"})


# -- the sweep ---------------------------------------------------------------------------------------

SWEPT_ID = 12345
"""Any id: the sweep calls anonymously; a canonical path reaches the route (its 401, 204 or own 404)."""


@pytest.fixture(scope="module")
async def sweep_client(settings: Settings) -> AsyncIterator[Client]:
    async for client in generous_client(msgspec.structs.replace(settings, rate_limit_enabled=False)):
        yield client


def is_unrouted(response: httpx.Response) -> bool:
    """The answer to a path no route takes (``/api/projects/abc``): a 404 problem without a ``detail``,
    which a handler's own 404 (``No such product.``, to an anonymous caller too) carries. A ``HEAD``
    answer has no body: its status alone (the ``GET`` of the same path, swept too, tells the two 404s
    apart)."""
    if response.status_code != 404:
        return False
    if response.request.method == "HEAD":
        return response.content == b""
    return "detail" not in assert_problem(response, 404, "not-found")


def int_routes(app: Litestar) -> list[HTTPRoute]:
    return [
        route
        for route in app.routes
        if isinstance(route, HTTPRoute) and any(p.type is int for p in route.path_parameters.values())
    ]


async def test_every_int_path_parameter_has_one_spelling(sweep_client: Client) -> None:
    app: Litestar = sweep_client.app
    routes = int_routes(app)
    assert len(routes) >= 30, [route.path for route in routes]  # the sweep sees the app's routes
    documented = app.openapi_schema.to_schema()["paths"]
    refusals = 0
    for route in routes:
        int_names = [p.name for p in route.path_parameters.values() if p.type is int]
        assert len(int_names) == len(route.path_parameters), f"{route.path}: sweep its other parameters too"
        for parameter in route.path_parameters.values():
            assert parameter.parser is parse_path_int, (route.path, parameter)
        canonical = dict.fromkeys(int_names, str(SWEPT_ID))
        for method, operation in documented[route.path_format].items():
            if method != "parameters":  # the refusal is documented where the route is
                assert "404" in operation["responses"], (method, route.path)
        for method in sorted(route.methods):
            reached = await sweep_client.request(method, route.path_format.format(**canonical))
            assert not is_unrouted(reached), (method, route.path, reached.text)
            for name in int_names:
                for spelling_name, spelling in respellings(SWEPT_ID).items():
                    path = route.path_format.format(**(canonical | {name: spelling}))
                    response = await sweep_client.request(method, path)
                    assert is_unrouted(response), (method, path, spelling_name, response.text)
                    refusals += 1
    assert refusals > 500
