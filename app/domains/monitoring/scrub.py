"""Scrubbing: no secret leaves the process into an event, by key name or by the shape of the value.

Bodies, headers and cookies are never captured at all; what is captured (exception messages, source
lines, context values) passes through ``scrub_text`` / ``scrub_mapping`` before it is stored or sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FILTERED = "[Filtered]"

SENSITIVE_KEY = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|auth|cookie|session|credential|private[-_]?key"
    r"|signature|csrf|jwt|bearer|dsn",
    re.IGNORECASE,
)
"""Key names whose values are never stored (``password``, ``X-Api-Key``, ``sessionid``, ...)."""

_KEYS = (
    r"password|passwd|passphrase|pwd|secret|token|api[_-]?key|access[_-]?token|refresh[_-]?token"
    r"|client[_-]?secret|authorization|cookie|session(?:[_-]?id)?|jwt|private[_-]?key"
)
_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header values (before key=value, which would stop at the scheme)
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {FILTERED}"),
    # key=value, key: value, "key": "value" (JSON or repr of a dict), ?key=value in URLs
    (
        re.compile(rf"""(?i)(["']?\b(?:{_KEYS})\b["']?\s*[=:]\s*["']?)([^\s"',;&}}\]]+)"""),
        rf"\g<1>{FILTERED}",
    ),
    # JSON Web Tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), FILTERED),
    # credentials in URLs: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@"), rf"\1:{FILTERED}@"),
    # Telegram bot tokens, and whatever stands in a Bot API path (/bot<token>/method)
    (re.compile(r"/bot[^/\s]+/"), f"/bot{FILTERED}/"),
    (re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}"), FILTERED),
    # GitHub, Slack, AWS and Stripe style keys
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), FILTERED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), FILTERED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), FILTERED),
    (re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"), FILTERED),
    # PEM private keys
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL),
        FILTERED,
    ),
)


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """Text PostgreSQL stores (in ``text`` and ``jsonb``): NUL and lone surrogates become U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)


def scrub_text(text: str) -> str:
    """``text`` with every value that looks like a secret replaced by ``[Filtered]`` (and storable)."""
    text = storable(text)
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_value(key: str, value: Any, depth: int = 0) -> Any:
    if SENSITIVE_KEY.search(key):
        return FILTERED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return scrub_mapping(value, depth + 1)
    if isinstance(value, list | tuple):
        return [scrub_value(key, item, depth + 1) for item in value][:50]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub_text(repr(value))


def scrub_mapping(values: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """A copy of ``values``: sensitive keys filtered, string values scrubbed, nesting bounded."""
    if depth > 5:
        return {"...": FILTERED}
    return {storable(str(key)): scrub_value(str(key), value, depth) for key, value in values.items()}
