"""Bounded input types: nothing a client sends may exceed what PostgreSQL stores.

Every id in a body is an ``Id``, in a path an ``IdPath``, in a query ``QueryParameter(ge=1,
le=MAX_ID)``; every free text that reaches a ``text`` column
excludes NUL (PostgreSQL refuses it) through ``NO_NUL`` or ``NON_BLANK``. A value outside the bounds
is a 400 problem naming the field, decided before any SQL runs.

Why 2^53 - 1 and not bigint's 2^63 - 1: it is every JSON client's exact integer range (JavaScript's
``Number.MAX_SAFE_INTEGER``), identity columns never get near it, and it survives Litestar's OpenAPI
generator, which writes numeric bounds as floats (``float(2**63 - 1)`` is 2^63, one past bigint).
"""

from __future__ import annotations

import enum
import re
import zoneinfo
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import msgspec
from litestar.params import PathParameter

MAX_ID = 2**53 - 1
MAX_INT4 = 2**31 - 1

END = r"(?![\s\S])"
"""The end of the text (nothing follows), in Python's regex dialect and the ECMA one alike."""


def whole(body: str) -> str:
    r"""The pattern of a text that ``body`` must match whole: ``^``, ``body``, then ``END``.

    msgspec and Litestar check a pattern with Python's ``re.search``, where ``$`` also matches before
    a final newline: ``^[A-Z]{3}$`` took ``"EUR\n"``, a release ``"v1\n"`` was a release of its own.
    ``(?![\s\S])`` means the end of the text there and in the ECMA dialect of the published schema
    (``\Z`` is Python's only). Every pattern of a field or parameter is built here."""
    return f"^(?:{body}){END}" if "|" in body else f"^{body}{END}"


NO_NUL = whole(r"[^\x00]*")
"""Any text without NUL (empty allowed)."""

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """Text PostgreSQL stores (in ``text`` and ``jsonb``): NUL and lone surrogates become U+FFFD.

    For text we do not refuse because another wrote it (a captured error, a third party's answer):
    a client's own text is refused instead (``NO_NUL``). ``text`` itself when it holds neither (the
    usual case, checked without the regex for ASCII text)."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


FORMAT_CHARACTERS = (
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)
"""Unicode's format characters (category Cf, Unicode 14.0: this Python's ``unicodedata``; a unit test
compares), as inclusive ranges of code points: invisible on their own (zero-width space U+200B,
joiners U+200C-U+200D, word joiner U+2060, byte order mark U+FEFF, bidirectional controls, soft
hyphen, tags U+E0001-U+E007F...). Spelled out, not derived at import: scanning every code point
costs a tenth of a second in each process."""


def _class_of(ranges: tuple[tuple[int, int], ...]) -> str:
    """``ranges`` as the body of a regex character class, in both dialects. Code points of the BMP are
    ``\\uXXXX`` escapes (runs ``\\uXXXX-\\uXXXX``); those past it are the characters themselves,
    one by one: no escape spells them in both (Python's ``\\U0010FFFF``, ECMA's ``\\u{10FFFF}``, ``u``
    flag only), and ECMA without the ``u`` flag (JSON Schema 2020-12 asks for it, 6.4; not every
    tool obliges) reads such a character as its two UTF-16 units, so a run of them would be a range
    out of order, a syntax error there."""

    def spell(code: int) -> str:
        return f"\\u{code:04x}"

    body = []
    for first, last in ranges:
        if last <= 0xFFFF:
            body.append(spell(first) if first == last else f"{spell(first)}-{spell(last)}")
        else:
            body.extend(chr(code) for code in range(first, last + 1))
    return "".join(body)


_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Exactly what Python's str.strip() removes, spelled out: `\s` means different sets in Python and in
# the ECMA regexes of JSON Schema, and services strip these before a length check in SQL.
INVISIBLE_CHARACTERS = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180D),
    (0x180F, 0x180F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
)
"""Characters of the Basic Multilingual Plane that show nothing and are not format characters: Unicode's
Default_Ignorable_Code_Point outside category Cf (the combining grapheme joiner, the Hangul fillers,
Khmer's inherent vowels, Mongolian and standard variation selectors), and the blank Braille pattern
U+2800. A title of them alone showed as a blank task, a display name as a blank actor."""
_BLANK = _SPACE + _class_of(FORMAT_CHARACTERS) + _class_of(INVISIBLE_CHARACTERS)
"""What a text of nothing else looks like: empty. Beside a visible character a format or invisible
character is kept, as written (a joiner in a name is meaningful, a variation selector picks a glyph)."""
NON_BLANK = whole(rf"[{_BLANK}]*[^\x00{_BLANK}][^\x00]*")
"""Text without NUL holding a character that is neither one ``str.strip()`` removes nor a format
or invisible character (``FORMAT_CHARACTERS``, ``INVISIBLE_CHARACTERS``). The classes are disjoint, so
matching is linear (no catastrophic backtracking) in both regex dialects."""

_NOT_IN_A_LINE = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
"""Control characters (C0, DEL, C1: a newline, a carriage return, an escape, a bell) and the
characters that change the direction of the text after them until their end (embeddings, overrides,
isolates): in a name or a title, shown in other people's feed sentences, alerts and lists, they
broke a sentence into lines or turned the rest of it around ('\u202efdp.exe' shows as 'exe.pdf')."""
ONE_LINE = whole(rf"(?![\s\S]*[{_NOT_IN_A_LINE}])[{_BLANK}]*[^\x00{_BLANK}][^\x00]*")
"""``NON_BLANK`` on one line: no character of ``_NOT_IN_A_LINE`` (the lookahead reads the text once;
the classes after it are those of ``NON_BLANK``)."""

_CONTROL_RUNS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_DIRECTION = re.compile(r"[\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """``text`` without what ``ONE_LINE`` refuses: each run of control characters one space, the
    direction characters gone, the ends' spaces trimmed (as migration 20261206140000 made the rows
    stored before the API refused them; for text that comes from before it, such as an event of the
    previous release still on its way to the feed)."""
    return _CONTROL_RUNS.sub(" ", _DIRECTION.sub("", text)).strip(" ")


Text = msgspec.Meta(pattern=NO_NUL)
"""Stack with length limits: ``Annotated[str, Text, msgspec.Meta(max_length=...)]``."""
NonBlank = msgspec.Meta(pattern=NON_BLANK)
OneLine = msgspec.Meta(pattern=ONE_LINE)
"""A name or a title: ``NonBlank`` on one line, its direction its own (``_NOT_IN_A_LINE``)."""

Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
"""An id inside a body (msgspec Struct field)."""

IdPath = Annotated[int, PathParameter(ge=1, le=MAX_ID)]
"""An id in the path (Litestar ignores msgspec ``Meta`` on parameters: the bounds go on the marker)."""

KNOWN_ZONES = frozenset(zoneinfo.available_timezones())
"""The IANA names the server's tz database holds, read once (a scan of its files: ~20 ms)."""

_NOT_ZONES = {
    "localtime",  # the machine's own zone file: not a name with a meaning elsewhere
    # Zones whose name PostgreSQL reads first as a fixed-offset abbreviation (pg_timezone_abbrevs):
    # a report's days (its `at time zone`, `date_trunc`) would ignore their summer time. The regions'
    # names (Europe/Brussels, Europe/Athens, Europe/Lisbon...) mean what they say in both.
    "CET",
    "EET",
    "MET",
    "WET",
}

if TYPE_CHECKING:
    TimeZone = str
else:
    TimeZone = enum.StrEnum(
        "TimeZone",
        {name: name for name in sorted(KNOWN_ZONES - _NOT_ZONES)},
        module=__name__,
    )
    TimeZone.__doc__ = "An IANA time zone name (e.g. Europe/Berlin), from the server's tz database."
"""A time zone, validated and documented as the enumeration of the IANA names the server knows
(``America`` or ``../etc/passwd`` are a 400 naming the field, and the schema lists every value)."""

__all__ = [
    "END",
    "INVISIBLE_CHARACTERS",
    "ISO_DATE",
    "KNOWN_ZONES",
    "MAX_ID",
    "MAX_INT4",
    "NON_BLANK",
    "NO_NUL",
    "ONE_LINE",
    "Id",
    "IdPath",
    "NonBlank",
    "OneLine",
    "Text",
    "TimeZone",
    "one_line",
    "storable",
    "whole",
]


ISO_DATE = whole(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
"""A calendar date as RFC 3339 writes it (``2030-01-31``), for a query parameter taken as a string:
Python's ``date.fromisoformat`` also takes ``20300131`` and week dates (``2030-W05-4``)."""

RFC3339_MOMENT = whole(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
"""A moment as RFC 3339 writes it (an offset optional: none is UTC), for a query parameter taken as a
string and decoded by ``moment_of``: a ``datetime`` parameter also took ``0.5`` (a Unix time)."""


def moment_of(name: str, value: str | None) -> datetime | None:
    """The moment a ``RFC3339_MOMENT`` query parameter names (UTC when it has no offset); a value the
    pattern admits but the calendar has not (``02-30``, a leap second) is a 400 naming ``query.<name>``."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.upper().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        from app.core.errors import FieldError, InvalidFieldsError  # errors imports this module

        raise InvalidFieldsError(
            [FieldError(field=f"query.{name}", message="Not a moment of the calendar (RFC 3339)")]
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


CALENDAR_START = datetime.min.replace(tzinfo=UTC)
CALENDAR_END = datetime.max.replace(tzinfo=UTC)


def require_in_calendar(moment: datetime) -> datetime:
    """``moment`` when it falls in years 1 to 9999 once in UTC (the years a ``datetime`` holds), else
    ``ValueError``: a Struct's ``__post_init__`` calls it, so a body's moment past either end is a 400
    naming the field (its Struct's ``post_init_field``). An offset carries a moment the calendar
    accepts past an end: ``9999-12-31T23:59:59-23:59`` is in year 10000 in UTC, which PostgreSQL
    stores but psycopg cannot load back (the write failed on its own ``returning`` row)."""
    if not CALENDAR_START <= moment <= CALENDAR_END:
        raise ValueError("must fall between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in UTC")
    return moment
