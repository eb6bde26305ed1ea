"""``NON_BLANK``: a text of whitespace and Unicode format characters (category Cf: zero-width space,
joiners, byte order mark, bidirectional controls, tags...) alone is blank, in Python's regexes (msgspec
checks bodies with them) and in ECMA's (the published schema, as Schemathesis' validator reads it)."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from typing import Annotated

import jsonschema_rs
import msgspec
import pytest

from app.core.types import FORMAT_CHARACTERS, INVISIBLE_CHARACTERS, NonBlank


def acceptance(meta: msgspec.Meta) -> Callable[[str], tuple[bool, bool]]:
    """For a text field of ``meta``'s pattern: (msgspec accepts the text, the published schema's ECMA
    pattern accepts it)."""
    named = msgspec.defstruct("Named", [("name", Annotated[str, meta])])
    schema = jsonschema_rs.validator_for({"type": "string", "pattern": meta.pattern})

    def accepted(text: str) -> tuple[bool, bool]:
        try:
            msgspec.json.decode(msgspec.json.encode({"name": text}), type=named)
            python = True
        except msgspec.ValidationError:
            python = False
        return python, schema.is_valid(text)

    return accepted


accepted = acceptance(NonBlank)
FORMAT = [code for first, last in FORMAT_CHARACTERS for code in range(first, last + 1)]


def test_the_format_characters_are_unicodes_category_cf() -> None:
    cf = [code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"]
    assert cf == FORMAT, (
        f"Unicode {unicodedata.unidata_version} changed category Cf: update FORMAT_CHARACTERS"
    )


@pytest.mark.parametrize("code", FORMAT, ids=lambda code: f"U+{code:04X}")
def test_format_characters_alone_are_blank_and_beside_a_visible_one_kept(code: int) -> None:
    char = chr(code)
    for blank in (char, char * 3, f" {char}\t", f"\u200b{char}\ufeff"):
        assert accepted(blank) == (False, False), ascii(blank)
    for named in (f"{char}A", f"A{char}", f" {char}é{char} ", f"{char}\U0001f600"):
        assert accepted(named) == (True, True), ascii(named)


def test_visible_characters_past_the_bmp_and_whitespace_alone() -> None:
    for named in ("\U0001f600", "\U0001d11e", "\U000e0100x", "\U00020000"):
        assert accepted(named) == (True, True), ascii(named)
    for blank in ("", " ", "\u3000\u2028", "\x00", "\u200bA\x00"):
        assert accepted(blank) == (False, False), ascii(blank)


INVISIBLE = [code for first, last in INVISIBLE_CHARACTERS for code in range(first, last + 1)]


@pytest.mark.parametrize("code", INVISIBLE, ids=lambda code: f"U+{code:04X}")
def test_invisible_characters_alone_are_blank_and_beside_a_visible_one_kept(code: int) -> None:
    """(Was: a task titled U+3164, a Hangul filler, or U+2800 showed as a blank one.)"""
    char = chr(code)
    assert unicodedata.category(char) != "Cf"
    for blank in (char, char * 3, f" {char}\u200b"):
        assert accepted(blank) == (False, False), ascii(blank)
    for named in (f"{char}A", f"A{char}", f"\u2764{char}"):
        assert accepted(named) == (True, True), ascii(named)
