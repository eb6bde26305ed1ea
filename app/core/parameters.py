"""Request parameters read one way: each sent once, list headers whole, query values in UTF-8.

Sent twice. Litestar reads the first line of a header sent twice and the last value of a query
parameter given twice, and never validates the others (``?limit=abc&limit=1`` was a 200). A proxy or
a client library in front may read the other one: a request with two ``Idempotency-Key`` lines was
stored under the first, and a retry carrying the second created again. RFC 9110 5.3: a field that
holds one value, sent twice, is an error the recipient may refuse. So a header parameter a route
declares, or a query parameter it declares that is not a list, sent more than once, is the validation
400 naming it (``header.Idempotency-Key``, ``query.limit``), as the gate does for ``Authorization``.

List headers. The lines of ``If-Match`` and ``If-None-Match`` are one list (RFC 9110 5.3: joined in
order by commas); Litestar read the first alone, so ``If-Match: "1"`` then ``If-Match: "2"`` failed
version 2.

UTF-8. urllib decodes percent-escapes as UTF-8 and puts U+FFFD in place of bytes that are not
(``?q=%ff`` searched for "�"): a query value that is not UTF-8 once decoded is the 400 naming it.

``read_parameters_strictly`` wraps Litestar's two parsers; call it before the application's routes
are built (each route's parameter model takes its parsers then). Cost: on routes that declare header
parameters, a pass or two over the header lines; on a request with a query string, one look at its
names, and the UTF-8 check only when it escapes a byte (granian refuses raw bytes past ASCII).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from litestar._kwargs import kwargs_model
from litestar._parsers import parse_query_string
from litestar.connection import ASGIConnection
from litestar.datastructures import Headers

from app.core.errors import FieldError, InvalidFieldsError

LIST_HEADERS = frozenset({"if-match", "if-none-match"})
"""Header fields whose value is a list (RFC 9110 13.1.1-2): several lines are one list, not a repeat."""

_LISTS = {name: name for name in LIST_HEADERS}

SENT_TWICE = "sent more than once: send it once"
NOT_UTF8 = "not UTF-8 once percent-decoded"

Parser = Callable[[ASGIConnection[Any, Any, Any, Any], Any], Mapping[str, Any]]


def _refuse(errors: list[FieldError]) -> None:
    if errors:
        raise InvalidFieldsError(errors)


def _repeated(names: Iterable[str], one_value: Mapping[str, str]) -> list[str]:
    """The aliases in ``one_value`` (by their key in ``names``' spelling) that ``names`` holds twice."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        alias = one_value.get(name)
        if alias is None:
            continue
        if name in seen and alias not in repeated:
            repeated.append(alias)
        seen.add(name)
    return repeated


def _strict_headers(parse: Parser) -> Parser:
    def parse_headers(connection: ASGIConnection[Any, Any, Any, Any], model: Any) -> Mapping[str, Any]:
        one_value: dict[str, str] = {}
        lists = False
        for param in model.expected_header_params:
            name = param.field_alias.lower()
            if name in LIST_HEADERS:
                lists = True
            else:
                one_value[name] = param.field_alias
        lines: Iterable[tuple[bytes, bytes]] = connection.scope["headers"]
        names = [name.decode("latin-1") for name, _ in lines]
        _refuse([FieldError(f"header.{alias}", SENT_TWICE) for alias in _repeated(names, one_value)])
        if lists and _repeated(names, _LISTS):
            return Headers(_joined(lines))
        return parse(connection, model)

    return parse_headers


def _joined(lines: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``lines`` with the lines of each list header joined into one, in order."""
    joined: dict[bytes, list[bytes]] = {}
    others: list[tuple[bytes, bytes]] = []
    for name, value in lines:
        if name.decode("latin-1") in LIST_HEADERS:
            joined.setdefault(name, []).append(value)
        else:
            others.append((name, value))
    return [*others, *((name, b", ".join(values)) for name, values in joined.items())]


def _not_utf8(query_string: bytes) -> list[str]:
    """The names of the query's values that are not UTF-8 once percent-decoded."""
    bad: list[str] = []
    for part in query_string.split(b"&"):
        name, _, value = part.partition(b"=")
        try:
            unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            bad.append(unquote_to_bytes(name).decode("utf-8", "replace"))
    return bad


def _strict_query(parse: Parser) -> Parser:
    def parse_query(connection: ASGIConnection[Any, Any, Any, Any], model: Any) -> Mapping[str, Any]:
        query_string: bytes = connection.scope.get("query_string", b"")
        if query_string:
            if b"%" in query_string and not _is_utf8(query_string):
                _refuse([FieldError(f"query.{name}", NOT_UTF8) for name in _not_utf8(query_string)])
            sequences = model.sequence_query_parameter_names
            one_value = {
                param.field_alias: param.field_alias
                for param in model.expected_query_params
                if param.field_alias not in sequences
            }
            names = (name for name, _ in parse_query_string(query_string))
            _refuse([FieldError(f"query.{alias}", SENT_TWICE) for alias in _repeated(names, one_value)])
        return parse(connection, model)

    return parse_query


def _is_utf8(query_string: bytes) -> bool:
    try:
        unquote_to_bytes(query_string).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_parameters_strictly() -> None:
    """Make the strict parsers those of every route built from now on (see the module's docstring;
    idempotent)."""
    for name, strict in (
        ("parse_connection_headers", _strict_headers),
        ("parse_connection_query_params", _strict_query),
    ):
        parse = getattr(kwargs_model, name)
        if not getattr(parse, "strict", False):
            wrapped = strict(parse)
            wrapped.strict = True  # type: ignore[attr-defined]
            setattr(kwargs_model, name, wrapped)


__all__ = ["LIST_HEADERS", "read_parameters_strictly"]
