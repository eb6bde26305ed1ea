"""Secrets out of text: one set of patterns for everything that leaves the process as text.

Log lines (every string field of an event, tracebacks), a command's dying message, and captured
errors (monitoring's events and Telegram alerts) all pass through ``scrub_text``. Two sets used to
exist, and each missed what the other caught: a log line kept a GitHub or Telegram token and a
quoted ``password="..."``; a captured error kept the password of a URL missing its scheme's colon.

A secret is recognised by its shape (a URL's ``user:password@``, a JWT, a bearer value, a provider's
key format, a PEM private key) or by the name written before it (``password=``, ``"token": "..."``).
Text holding none of the substrings every match needs is returned unchanged, so scrubbing every field
of a log event costs about a microsecond per field.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "[Filtered]"

_KEYS = (
    r"password(?:[_-]?(?:hash|digest))?|passwd|passphrase|pass|pwd|pgpassword|secret|secret[_-]?key|token|api[_-]?key"
    r"|secret[_-]?access[_-]?key|access[_-]?token|refresh[_-]?token|client[_-]?secret|authorization|cookie"
    r"|session(?:[_-]?id)?|jwt|(?:csrf|xsrf)[_-]?token|passcode"
    r"|private[_-]?key|credentials?|dsn"
)
"""The names a secret is written after, in any form (``password=``, ``"token": "..."``, ``PWD: ...``)."""
_WEAK_KEYS = r"auth|signature|sig|csrf|xsrf|t?otp(?:[_-]?code)?|bearer"
"""Names that are also words of prose and of code (``auth: token expired``, ``signature: str`` in a
captured source line): their value is masked as ``name=value`` (a space on either side of ``=`` at
most), after a quoted name (``"auth": "..."``), or after ``name:`` and a space when it looks like a
credential (8 or more characters with a digit: ``X-Amz-Signature: 9f86d0...``), and never when it is
a literal (``hasSignature=true``). With ``_KEYS`` they cover
``app.domains.monitoring.scrub.SENSITIVE_KEY`` (a captured context's keys): a test holds the two
vocabularies together."""
_KEY_START = r"(?:(?<![A-Za-z0-9])|(?-i:(?<=[a-z0-9])(?=[A-Z])))"
"""Where a key's name may start: not inside a word (``bypass``, ``compass``), but after ``_`` or ``-``,
so an environment variable's or a header's prefix (``DB_PASSWORD``, ``MYSQL_PWD``, ``X-Api-Key``) does
not hide it (``\b`` did: ``_`` is a word character), and at a capital inside a camelCase name
(``dbPassword``, ``authToken``), compared with its case even in the patterns that ignore it. A key
ends at ``\b`` then ``=`` or ``:``, so a longer name (``passed=``, ``pass_fds=``, ``session_timeout=``,
``authToken`` read as ``auth``) is no key."""
_MASKED = re.escape(MASK)
"""A value masked already (by the Authorization pattern) is masked whole again, not up to its ``]``."""
_PATTERNS: tuple[tuple[str, str], ...] = (
    # PEM private keys, whole (first: a key's body would otherwise be cut by the patterns below)
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", MASK),
    # credentials in URLs: scheme://user:password@host (also a scheme missing its colon); one that
    # ``app.config.redact_url`` masked already (``***``) is kept, not masked a second way
    (r"(?i)\b([a-z][a-z0-9+.-]*:?//[^/\s:@\"']*):(?!\*\*\*@)[^\s@\"']*@", rf"\1:{MASK}@"),
    # An Authorization header's whole value, whatever its scheme and however short its credential
    # (before key=value, which would mask the scheme alone: ``Authorization: Token abc`` kept ``abc``)
    (
        rf"""(?i)({_KEY_START}authorization["']?[ \t]*[=:][ \t]*)"""
        r"""(?:"[^"]*"|'[^']*'|[A-Za-z][\w-]*[ \t]+[^\s"',;&}\]]+)""",
        rf"\g<1>{MASK}",
    ),
    # A Cookie header's cookies, every one (key=value stops at the first ``;``): ``name=value`` pairs
    # joined by ``;`` (a Set-Cookie's attributes too), never the prose or code after ``cookie:``
    (
        rf"(?i)({_KEY_START}(?:set-)?cookie[ \t]*:[ \t]*)[^=;\s]+=[^;\s]*(?:;[ \t]*[^=;\s]+(?:=[^;\s]*)?)*",
        rf"\g<1>{MASK}",
    ),
    # Authorization header values elsewhere (before key=value, which would stop at the scheme)
    (r"(?i)\b(bearer|basic)[ \t]+[A-Za-z0-9._~+/=-]{8,}", rf"\1 {MASK}"),
    (r"(?i)\b(token)[ \t]+[A-Za-z0-9._~+/=-]{16,}", rf"\1 {MASK}"),  # not "token provided" in prose
    # key=value, key: value, "key": "value" (JSON, a dict's repr, a DSN), ?key=value in URLs
    (
        rf"""(?i)(["']?{_KEY_START}(?:{_KEYS})\b["']?[ \t]*[=:][ \t]*)"""
        rf"""({_MASKED}|"[^"]*"|'[^']*'|[^\s"',;&}}\]]+)""",
        rf"\g<1>{MASK}",
    ),
    # the weaker names (a name may end a longer one: X-Amz-Signature): name=value, "name": value
    (
        rf"""(?i)((?:{_KEY_START}(?:{_WEAK_KEYS}) ?= ?"""
        rf"""|(["'])[\w-]*?{_KEY_START}(?:{_WEAK_KEYS})\2 ?[=:] ?))"""
        rf"""(?!(?:true|false|none|null)(?:[\s"',;&}}\]]|$))({_MASKED}|"[^"]*"|'[^']*'|[^\s"',;&}}\]]+)""",
        rf"\g<1>{MASK}",
    ),
    # ... and name: value where the value looks like a credential (not "auth: token expired")
    (
        rf"""(?i)({_KEY_START}(?:{_WEAK_KEYS}): +)(?=[^\s"',;&}}\]]*[0-9])[^\s"',;&}}\]]{{8,}}""",
        rf"\g<1>{MASK}",
    ),
    # a one-time password after its name and a colon, however short (``OTP: 123456``)
    (rf"(?i)({_KEY_START}t?otp(?:[_-]?code)?:[ \t]*)\d{{4,10}}\b", rf"\g<1>{MASK}"),
    # JSON Web Tokens
    (r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", MASK),
    # Telegram bot tokens, and whatever stands in a Bot API path (/bot<token>/method)
    (r"/bot[^/\s]+/", f"/bot{MASK}/"),
    (r"\d{5,}:[A-Za-z0-9_-]{30,}", MASK),
    # GitHub, Slack, AWS and Stripe style keys
    (r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})", MASK),
    (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", MASK),
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", MASK),
    (r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}", MASK),
    (r"\bwhsec_[A-Za-z0-9+/=]{10,}", MASK),
)
_SUBSTITUTIONS = tuple(
    (re.compile(pattern, re.DOTALL | re.ASCII), replacement) for pattern, replacement in _PATTERNS
)
"""ASCII: ignoring case, Python's patterns would read U+017F (long s) as ``s`` and U+0130 as ``i``,
which ``str.lower`` does not, and the quick check (``_TRIGGERS``) would skip text a pattern changes."""
_TRIGGERS = (
    *("private", "@", "bearer", "basic", "token", "pass", "pwd", "secret", "apikey", "api_key", "api-key"),
    *("authorization", "cookie", "session", "jwt", "eyj", "/bot", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    *("auth=", "auth ", 'auth"', "auth'", "auth:", "signature=", "signature ", 'signature"', "signature'"),
    *("signature:", "csrf", "xsrf", "credential", "dsn"),
    *("sig", "otp"),  # as parts of words too (``signal``): such a field is scrubbed in full
    *("github_pat_", "xox", "akia", "asia", "_live_", "_test_", "whsec_"),
)
"""A substring of every match of the patterns (lower case): text holding none of them is left as it is.
Substring tests run in C; one search of the patterns joined cost 3-10 µs per short field, 60 per
300 characters."""
_TELEGRAM_TOKEN_START = re.compile(r"\d{5}:")


def _may_hold_secret(text: str) -> bool:
    lowered = text.lower()
    for trigger in _TRIGGERS:  # a loop, not any(): no generator per field
        if trigger in lowered:
            return True
    return ":" in text and _TELEGRAM_TOKEN_START.search(text) is not None


SCRUB_MARGIN = 256
"""Characters past a cut that ``scrubbed_prefix`` scrubs with the text: a secret the cut goes
through is still recognised whole (a URL's password is one only with its ``@``)."""


def scrubbed_prefix(text: str, limit: int) -> str:
    """``text`` scrubbed, then cut to ``limit`` characters: never cut first (a URL's password cut
    before its ``@`` is no longer one, and was stored); only ``SCRUB_MARGIN`` past the cut is read."""
    if len(text) <= limit:
        return scrub_text(text)
    return scrub_text(text[: limit + SCRUB_MARGIN])[:limit]


def scrub_text(text: str, *urls: str | None) -> str:
    """``text`` with every value that looks like a secret replaced by ``MASK``; also the passwords of
    ``urls`` wherever they appear, raw or percent-decoded (a driver quotes a bad token alone)."""
    for url in urls:
        password = _url_password(url) if url else None
        if not password:
            continue
        for secret in sorted({password, unquote(password)}, key=len, reverse=True):
            if len(secret) >= 3:  # shorter is not told from other text (the patterns still apply)
                text = text.replace(secret, MASK)
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    return text


def _url_password(url: str) -> str | None:
    """The password part of a URL-shaped string, even a malformed one (``user:pw@`` before the host)."""
    rest = url.split("//", 1)[1] if "//" in url else url
    if "@" not in rest:
        return None
    credentials = rest.rsplit("@", 1)[0]
    return credentials.split(":", 1)[1] if ":" in credentials else None


def exception_message(exc: BaseException) -> str:
    """What may be told of ``exc``'s message anywhere it leaves the process (a logged traceback, a
    monitoring event). Of a database error only its primary message: the DETAIL line quotes whole rows
    and keys (``Failing row contains (e-mail, display name, password hash, ...)``), which no pattern can
    tell from other text, and CONTEXT and HINT add nothing. psycopg's errors give the primary message
    apart; asyncpg's, and psycopg's raised before a server answered, carry it on their first line.
    """
    import psycopg

    if isinstance(exc, psycopg.Error) and (primary := exc.diag.message_primary):
        return primary
    text = str(exc)
    if isinstance(exc, psycopg.Error) or getattr(exc, "sqlstate", None) is not None:
        return (text.strip().splitlines() or [""])[0]
    return text
