"""Scrubbing: no secret leaves the process into an event, by key name or by the shape of the value.

Bodies, headers and cookies are never captured at all; what is captured (exception messages, source
lines, context values) passes through ``storable_scrubbed`` / ``scrub_mapping`` before it is stored or sent.
The patterns are the ones every log line passes through (``app.core.scrub``); this module adds what
storing needs (text PostgreSQL accepts, ``app.core.types.storable``) and the walk of a captured
context by its keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.core.scrub import MASK, scrub_text, scrubbed_prefix
from app.core.types import storable as storable  # re-exported: monitoring imports it from here

FILTERED = MASK

SENSITIVE_KEY = re.compile(
    r"pass(word|wd|phrase|code)?|pwd|secret|token|api[-_]?key|auth|cookie|session|credential|private[-_]?key"
    r"|signature|csrf|xsrf|jwt|bearer|dsn|(?<![a-z])t?otp(?![a-z])|(?<![a-z])sig(?![a-z])",
    re.IGNORECASE,
)
"""Names of fields whose values are never kept, whatever they look like (``password``, ``X-Api-Key``,
``sessionid``) in a captured error's context."""

MAX_DEPTH = 5
"""Nesting kept in a captured context, lists and mappings alike; deeper is ``FILTERED``."""
MAX_ITEMS = 50
"""Items kept of a list (the first ones; the rest are never walked)."""


def storable_scrubbed(text: str) -> str:
    """``text`` with every value that looks like a secret replaced by ``[Filtered]`` (and storable)."""
    return scrub_text(storable(text))


def storable_scrubbed_prefix(text: str, limit: int) -> str:
    """``storable_scrubbed``, then cut to ``limit`` characters (``app.core.scrub.scrubbed_prefix``: a cut
    before the scrub kept the part of a URL's password before the cut)."""
    return scrubbed_prefix(storable(text), limit)


def scrub_value(key: str, value: Any, depth: int = 0) -> Any:
    if SENSITIVE_KEY.search(key):
        return FILTERED
    if isinstance(value, str):
        return storable_scrubbed(value)
    if isinstance(value, Mapping):
        return scrub_mapping(value, depth + 1)
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return FILTERED
        return [scrub_value(key, item, depth + 1) for item in value[:MAX_ITEMS]]
    if value is None or isinstance(value, bool | int | float):
        return value
    return storable_scrubbed(repr(value))


def scrub_mapping(values: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """A copy of ``values``: sensitive keys filtered, string values scrubbed, nesting bounded."""
    if depth > MAX_DEPTH:
        return {"...": FILTERED}
    return {storable(str(key)): scrub_value(str(key), value, depth) for key, value in values.items()}
