"""``ONE_LINE``, the pattern of names and titles (projects, tasks, products, display names): ``NON_BLANK``
without control characters or the characters that turn the direction of the text after them. Such a
title or name, shown inside other people's feed sentences, broke them into lines or turned the rest
of them around ('\\u202efdp.exe' reads 'exe.pdf'). Checked in Python's regexes (msgspec) and in
ECMA's (the published schema)."""

from __future__ import annotations

import pytest

from app.core.types import OneLine
from tests.unit.test_core_types_blank import acceptance

accepted = acceptance(OneLine)


@pytest.mark.parametrize(
    "title",
    [
        "Write the notes",
        "  padded  ",
        "José Müller",
        "a\u200bb",
        "\u200f\u05e9\u05dc\u05d5\u05dd\u200f",
        "\U0001f600 launch",
    ],
)
def test_a_title_on_one_line_is_accepted(title: str) -> None:
    assert accepted(title) == (True, True), ascii(title)


@pytest.mark.parametrize(
    "title",
    [
        "\u202efdp.exe",  # right-to-left override
        "a\u202ab",  # embedding
        "\u2066isolated\u2069",  # isolates
        "line one\nline two",
        "carriage\rreturn",
        "tab\there",
        "red\x1b[31m",
        "bell\x07",
        "next line\x85",
        "paragraph\u2029separator",
        "line\u2028separator",
        "del\x7f",
        "   ",
        "\u200b",
    ],
)
def test_control_and_direction_characters_are_refused(title: str) -> None:
    assert accepted(title) == (False, False), ascii(title)
