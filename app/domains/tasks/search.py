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

Chinese, Japanese and Korean are written without spaces between words, so PostgreSQL's parser reads
a whole run of them as one word: "東京都の会議" was found only by that exact run, never by "東京" or "会議".
The stored document (``task_search_document``, whose ``search_words`` uses the same ``CJK`` class)
holds each run as its overlapping pairs ("東京 京都 都の の会 会議") and each of its characters alone;
``cjk_phrases`` turns a run in the query into the phrase of its pairs (``"東京 京都"``, i.e. 東京 <-> 京都),
so any run of two or more characters is found wherever it stands, and one character by itself. This
is the bigram indexing Lucene's ``CJKBigramFilter`` does; a trigram index (``pg_trgm``) would serve too,
but the embedded PostgreSQL ships no extension for it.
"""

from __future__ import annotations

import re
import unicodedata

MAX_DASHES_IN_A_ROW = 30
CJK = (
    "\u1100-\u11ff\u3005-\u3007\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
"""The characters read as CJK (a regex class's inside): Hangul jamo and syllables, 々〆〇, kana,
the unified and compatibility ideographs. The same class as ``search_words`` in
migrations/20261206120000_task_search_words_cjk.sql (tested alike at each range's ends)."""
_SKIPPED = r"\t\n\x0b\x0c\r !&|()<"
_RUN = re.compile(rf"[-{_SKIPPED}]+")
_QUOTE_OR_RUN = re.compile(rf'"|[-{_SKIPPED}]+')
_QUOTE_OR_CJK_RUN = re.compile(f'"|([{CJK}]+)(-*)')


def search_text(q: str | None) -> str | None:
    """The query parameter ``q`` as the search gets it: the same meaning, in a shape PostgreSQL's
    parser always takes, in the NFKC form the stored documents are made of (``task_search_document``):
    "José" typed composed finds it written decomposed, a full-width "fix" the ASCII one."""
    if q is None:
        return None
    return _RUN.sub(_capped, shorten_negations(cjk_phrases(unicodedata.normalize("NFKC", q))))


def cjk_phrases(text: str) -> str:
    """``text`` with every run of CJK characters written as the stored documents hold it: two or more
    as the phrase of their overlapping pairs (quoted, unless inside quotes already), one alone, set
    apart from the letters around it. Dashes glued after a run are dropped: after a word they are
    text, not a NOT, and the document holds none (``"東京都-x"`` finds 東京都 and x)."""
    parts: list[str] = []
    done = 0
    quoted = False
    for match in _QUOTE_OR_CJK_RUN.finditer(text):
        run = match.group(1)
        if run is None:
            quoted = not quoted
            continue
        words = " ".join(run[i : i + 2] for i in range(len(run) - 1)) or run
        phrase = f'"{words}"' if len(run) > 1 and not quoted else f" {words} "
        parts.append(text[done : match.start()])
        parts.append(phrase + (match.group(2) if quoted else " "))
        done = match.end()
    parts.append(text[done:])
    return "".join(parts)


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
