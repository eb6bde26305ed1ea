"""The task list's ``q``, made safe for ``websearch_to_tsquery`` before it reaches SQL.

PostgreSQL parses a web search onto an operator stack of 32 entries (``STACKDEPTH`` in tsquery.c).
A ``-`` where an operand is awaited is a NOT, and NOTs wait on that stack until their operand comes:
``"-" * 33 + "a"`` (or 31 with an OR and an AND waiting below them) failed the statement with
``tsquery stack too small``, an internal error answered as a 500. Only spaces and the characters the
web syntax skips (``!&|()<``) may stand between the NOTs of one run: anything else is an operand.

``search_text`` first shortens each run to one NOT, or two when it had an even number (``!!x`` is
``x``; a run never vanishes, so an ``or`` before it still sees an operand coming): the query means
what it meant. Then, without relying on that reading of the parser, it caps every stretch of ``-`` and
skipped characters at ``MAX_DASHES_IN_A_ROW`` dashes (with an OR and an AND waiting, 30 NOTs fill the
stack). After the shortening, only dashes that are text reach that cap (glued to a word, ``a-----``,
or inside quotes), and a long run of them reads as a shorter one does.
"""

from __future__ import annotations

import re
import unicodedata

MAX_DASHES_IN_A_ROW = 30
_SKIPPED = r"\t\n\x0b\x0c\r !&|()<"
_RUN = re.compile(rf"[-{_SKIPPED}]+")
_QUOTE_OR_RUN = re.compile(rf'"|[-{_SKIPPED}]+')


def search_text(q: str | None) -> str | None:
    """The query parameter ``q`` as the search gets it: the same meaning, in a shape PostgreSQL's
    parser always takes, in the NFKC form the stored documents are made of (``task_search_document``):
    "José" typed composed finds it written decomposed, a full-width "fix" the ASCII one."""
    return None if q is None else _RUN.sub(_capped, shorten_negations(unicodedata.normalize("NFKC", q)))


def shorten_negations(text: str) -> str:
    """``text`` with every run of NOTs outside quotes cut to one, or two if even (same meaning)."""
    parts: list[str] = []
    done = 0
    quoted = False
    for match in _QUOTE_OR_RUN.finditer(text):
        run, start = match.group(), match.start()
        if run == '"':
            quoted = not quoted
            continue
        if quoted:
            continue
        # After a word, the dashes up to the first space or skipped character still belong to it;
        # at the start, or after a closing quote, an operand is awaited at once.
        glued = 0 if start == 0 or text[start - 1] == '"' else len(run) - len(run.lstrip("-"))
        negations = run[glued:].count("-")
        extra = negations - (1 if negations % 2 else 2)
        if extra > 0:
            parts.append(text[done:start])
            parts.append(run[:glued] + run[glued:].replace("-", "", extra))
            done = match.end()
    parts.append(text[done:])
    return "".join(parts)


def _capped(run: re.Match[str]) -> str:
    dashes = run.group().count("-")
    return run.group().replace("-", "", max(0, dashes - MAX_DASHES_IN_A_ROW))
