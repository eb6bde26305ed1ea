"""Patterns match the whole value: a final newline is refused like any other character.

msgspec and Litestar check a ``pattern`` with Python's ``re.search``, where ``$`` also matches before
a final newline: ``"example.com\\n"`` was a site's domain, ``"SKU-1\\n"`` a SKU, ``"EUR\\n"`` a
currency. Every pattern is built by ``app.core.types.whole`` (``^``, the body, "nothing follows"),
which means the same in Python and in the ECMA dialect of the published schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from psycopg import AsyncConnection

from app.config import Settings
from app.core.types import END
from app.db.models import UserRole
from tests.factories import Client, assert_problem, make_user


def patterns_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from patterns_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from patterns_in(item)


def settings_patterns() -> Iterator[str]:
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        for kind in kinds:
            if isinstance(kind, msgspec.inspect.StrType) and kind.pattern is not None:
                yield kind.pattern


async def test_every_published_pattern_ends_where_the_text_ends(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    patterns = set(patterns_in(schema))
    assert len(patterns) >= 10, patterns
    assert {p for p in patterns if not (p.startswith("^") and p.endswith(END))} == set()
    for pattern in patterns:
        re.compile(pattern)  # and every one is valid in Python's dialect, as msgspec needs


def test_every_setting_pattern_ends_where_the_text_ends() -> None:
    patterns = set(settings_patterns())
    assert len(patterns) >= 5, patterns
    assert {p for p in patterns if not p.endswith(END)} == set()


@pytest.mark.parametrize("value", ["EUR\n", "EU", "eur"])
def test_a_currency_with_a_final_newline_is_no_currency(value: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="currency"):
        msgspec.convert({"currency": value}, Settings)


async def test_a_domain_with_a_final_newline_is_refused(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    owner = await make_user(db, app)
    refused = await client.post("/api/sites", json={"domain": "example.com\n"}, headers=owner.headers)
    assert_problem(refused, 400, fields={"domain"})
    created = await client.post("/api/sites", json={"domain": "example.com"}, headers=owner.headers)
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("domain", ["...", "-", "a..b", "-a.example", "a-.example", "a_b.example", "x" * 64])
async def test_a_domain_that_is_no_host_name_is_refused(
    client: Client, app: Litestar, db: AsyncConnection[Any], domain: str
) -> None:
    owner = await make_user(db, app)
    refused = await client.post("/api/sites", json={"domain": domain}, headers=owner.headers)
    assert_problem(refused, 400, fields={"domain"})


@pytest.mark.parametrize("domain", ["localhost", "xn--tnda-cra.cl", "a-b.c0.example", "10.0.0.1", "x" * 63])
async def test_host_names_are_sites_domains(
    client: Client, app: Litestar, db: AsyncConnection[Any], domain: str
) -> None:
    owner = await make_user(db, app)
    created = await client.post("/api/sites", json={"domain": domain}, headers=owner.headers)
    assert created.status_code == 201, created.text


async def test_a_sku_with_a_final_newline_is_refused(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    admin = await make_user(db, app, UserRole.ADMIN)
    body = {"sku": "SKU-NL\n", "name": "Thing", "price": "1.00"}
    assert_problem(await client.post("/api/products", json=body, headers=admin.headers), 400, fields={"sku"})


async def test_a_group_key_with_a_final_newline_is_refused(
    client: Client, app: Litestar, db: AsyncConnection[Any]
) -> None:
    reader = await make_user(db, app)
    response = await client.get("/api/feed/groups/1-1%0A", headers=reader.headers)
    assert_problem(response, 400, fields={"path.key"})
