"""Every patterned text a client sends has a realistic example in the published schema, valid by its
own rules.

Swagger UI fills "Try it out" from a schema's ``examples`` (or ``example``), and for a text with a
``pattern`` and neither it generates one from the regular expression: a task title
``"992919x92x919x…}/D<t~Uv6M0|u$8r*…"``, a project name ``"z4OBI?dWsC.[|`"``, a 250-character
domain, which "Execute" then saved. This walks the app's real ``/schema/openapi.json``: each string
schema with a ``pattern`` in a request body or a parameter (path, query, header) must carry an
example (on the schema, or on the parameter), and each example must satisfy its pattern (as msgspec
checks it: ``re.search``), its length bounds and its ``format``. A field added without one fails here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from app.config import Settings
from app.main import create_app
from tests.factories import Client

METHODS = {"get", "head", "post", "put", "patch", "delete"}


@dataclass
class Text:
    """A string schema a client fills in: where it is, its rules, and the examples it documents."""

    where: str
    schema: dict[str, Any]
    examples: list[Any]


def _schema_examples(schema: dict[str, Any]) -> list[Any]:
    return [*schema.get("examples", []), *([schema["example"]] if "example" in schema else [])]


def _parameter_examples(parameter: dict[str, Any]) -> list[Any]:
    named = [example["value"] for example in (parameter.get("examples") or {}).values() if "value" in example]
    return [*named, *([parameter["example"]] if "example" in parameter else [])]


class Walker:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def texts(
        self, node: Any, where: str, extra: list[Any], seen: frozenset[str] = frozenset()
    ) -> Iterator[Text]:
        """The string schemas under ``node`` that have a pattern or an example (``extra``: examples
        given beside the schema, a parameter's own)."""
        if isinstance(node, dict) and "$ref" in node:
            if node["$ref"] in seen:
                return
            name = node["$ref"].rsplit("/", 1)[-1]
            yield from self.texts(self.resolve(node), f"{where}->{name}", extra, seen | {node["$ref"]})
            return
        if isinstance(node, list):
            for item in node:
                yield from self.texts(item, where, extra, seen)
            return
        if not isinstance(node, dict):
            return
        examples = [*_schema_examples(node), *extra]
        if "pattern" in node or (examples and _is_text(node)):
            yield Text(where, node, examples)
        for key, value in node.items():
            if key in ("examples", "example", "default", "const", "enum"):
                continue
            if key == "properties":
                for name, field in value.items():
                    yield from self.texts(field, f"{where}.{name}", [], seen)
            elif isinstance(value, dict | list):
                yield from self.texts(value, where, [], seen)

    def request_texts(self) -> Iterator[Text]:
        for path, item in self.document["paths"].items():
            for method, operation in item.items():
                if method not in METHODS:
                    continue
                name = f"{method.upper()} {path}"
                for parameter in [*item.get("parameters", []), *operation.get("parameters", [])]:
                    parameter = self.resolve(parameter)
                    yield from self.texts(
                        parameter.get("schema", {}),
                        f"{name} {parameter['in']} {parameter['name']}",
                        _parameter_examples(parameter),
                    )
                body = self.resolve(operation.get("requestBody")) or {}
                for media_type, content in body.get("content", {}).items():
                    yield from self.texts(content.get("schema", {}), f"{name} body {media_type}", [])


def _is_text(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _valid_format(value: str, kind: str) -> bool:
    try:
        if kind == "date":
            date.fromisoformat(value)
        elif kind == "date-time":
            datetime.fromisoformat(value)
        elif kind == "uuid":
            uuid.UUID(value)
        elif kind == "email":
            return re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value) is not None
        elif kind in ("uri", "url"):
            parts = urlsplit(value)
            return bool(parts.scheme and parts.netloc)
        else:
            raise AssertionError(f"format {kind!r}: teach this test how to check it")
    except ValueError:
        return False
    return True


def faults(text: Text) -> list[str]:
    """What is wrong with ``text``'s examples (nothing: an empty list)."""
    schema = text.schema
    if "pattern" in schema and not text.examples:
        return ["a pattern and no example (in a body Swagger UI makes one up from the regular expression)"]
    found = []
    for example in text.examples:
        if example is None:
            continue  # a nullable field's example of its null
        if not isinstance(example, str):
            found.append(f"example {example!r} is not a string")
            continue
        if "pattern" in schema and re.search(schema["pattern"], example) is None:
            found.append(f"example {example!r} does not match its pattern")
        if len(example) < schema.get("minLength", 0):
            found.append(f"example {example!r} is shorter than minLength {schema['minLength']}")
        if "maxLength" in schema and len(example) > schema["maxLength"]:
            found.append(f"example {example!r} is longer than maxLength {schema['maxLength']}")
        if "format" in schema and not _valid_format(example, schema["format"]):
            found.append(f"example {example!r} is no {schema['format']}")
    return found


async def test_every_patterned_input_has_a_valid_example(client: Client) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    texts = list(Walker(document).request_texts())
    patterned = [text for text in texts if "pattern" in text.schema]
    assert len(patterned) >= 50, "the walk reaches request bodies and parameters"
    assert {"body", "query", "path", "header"} <= {text.where.split(" ")[2] for text in patterned}
    problems = [f"{text.where}: {fault}" for text in texts for fault in faults(text)]
    assert problems == [], "\n".join(problems)


def test_an_example_is_held_to_its_own_rules() -> None:
    """The checks themselves: each rule catches the example that breaks it."""
    rules = {"pattern": r"^[a-z]+(?![\s\S])", "minLength": 2, "maxLength": 5}
    assert faults(Text("x", rules, ["abc"])) == []
    assert faults(Text("x", rules, [])) != []
    assert faults(Text("x", rules, ["ABC"])) != []
    assert faults(Text("x", rules, ["a"])) != []
    assert faults(Text("x", rules, ["abcdef"])) != []
    assert faults(Text("x", {"type": "string", "format": "date"}, ["2026-13-01"])) != []
    assert faults(Text("x", {"type": "string", "format": "date"}, ["2026-12-01"])) == []


def test_the_document_is_the_same_in_every_build(settings: Settings) -> None:
    """Litestar's ``ResponseSpec`` fills a response schema's fields with random values unless told not
    to (``generate_examples``): a problem's ``status`` of 2562, a site's ``timezone`` of twenty random
    letters, shown by Swagger UI as sample answers; and each build, so each granian worker, published
    another document. Generated values differ from build to build; the ones the app writes do not."""
    first, second = (msgspec.json.encode(create_app(settings).openapi_schema.to_schema()) for _ in range(2))
    assert first == second
