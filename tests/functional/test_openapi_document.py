"""The OpenAPI document is valid and generates a usable client (the OpenAPI reviewer, with
openapi-spec-validator and openapi-python-client): a parameter example carried Litestar's ``id``
(not a field of OpenAPI's Example Object, so the document failed validation), and two components
titled ``EventOut`` (the feed's and monitoring's) made a generated client drop one model and fail to
parse seven monitoring answers."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from litestar import Litestar
from openapi_spec_validator import validate


def document(app: Litestar) -> dict[str, Any]:
    schema: dict[str, Any] = app.openapi_schema.to_schema()
    return schema


def test_the_document_is_valid_openapi_3_1(app: Litestar) -> None:
    validate(document(app))


def test_no_two_components_share_a_title(app: Litestar) -> None:
    """A generator names a model by its title: two of one title are one model, the other lost."""
    titles = Counter(
        component.get("title", name) for name, component in document(app)["components"]["schemas"].items()
    )
    assert [title for title, count in titles.items() if count > 1] == []


def test_every_operation_id_is_its_handlers_name_and_unique(app: Litestar) -> None:
    """A generator names a client's methods by operationId: Litestar's default joined the path's
    words to the handler's name (``ApiProjectsProjectIdTasksCreateTask``); two of one id would be one
    method."""
    ids = [
        operation["operationId"]
        for item in document(app)["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    ]
    assert [name for name, count in Counter(ids).items() if count > 1] == []
    assert [name for name in ids if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name)] == []
    assert {"create_task", "place_order", "list_alerts", "download_file"} <= set(ids)
