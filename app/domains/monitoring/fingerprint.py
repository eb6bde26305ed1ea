"""Fingerprints: when two events are the same problem.

An exception yields up to three hashes, all versioned by ``GROUPING_VERSION`` (a change of the rules
ships as a new version; stored groups keep the hashes they were found by):

- ``in_app``: the exception type chain plus the frames of our own code (modules under the configured
  packages, ``app`` and ``workers``, never a file under site-packages) as module + function + the
  normalised source line. Line numbers never count, so moving code does not split a group, and a
  repeated cycle of frames (recursion: ``A A A``, ``A B A B``) counts once, so the depth of a
  recursion does not either.
- ``all_frames``: the type chain plus every frame. A group holds both hashes, so when the in-app rules
  change (a module moves in or out of our packages) the event still finds its group by this one, and
  the new in-app hash joins the group.
- ``message``: for events without a stack, the type chain plus the first line of the message with
  numbers, UUIDs, hex, timestamps, IPs and e-mail addresses replaced by placeholders.

Fixed fingerprints (``fixed``) name a problem directly: a dependency outage by its dependency and
exception name, a slow route by method and route, a cron monitor by its job name.
"""

from __future__ import annotations

import hashlib
import linecache
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import msgspec

from app.core.scrub import SCRUB_MARGIN, exception_message

GROUPING_VERSION = "2026-11-30"
GROUPING_RULES = (
    "in_app: exception type chain + in-app frames (module, function, normalised source line; "
    "no line numbers); all_frames: the same with every frame; message: type + message with "
    "numbers, UUIDs, hex, timestamps, IPs and e-mails replaced (events without a stack); "
    "fixed: outages by dependency and exception name, slow routes by method and route, crons by job. "
    "An event joins the group holding its first matching hash, and its other hashes join it."
)
"""The rules in a sentence each, as ``GET …/grouping`` states them."""
MAX_CHAIN = 5
MAX_FRAMES = 60
OUTER_FRAMES = 20
"""Of a stack still longer than ``MAX_FRAMES`` once its cycles are collapsed: the outermost frames kept
(where the request or job entered our code), the rest being the innermost (where it failed)."""
MAX_CYCLE = 10
"""The longest cycle of frames collapsed (``A B ... A B ...``: mutual recursion through up to 10 frames)."""
MAX_CONTEXT_LINE = 120
"""Longer source lines do not contribute (minified or generated code, huge literals)."""
MAX_MESSAGE = 2000

RawFrame = tuple[str, str, str, int]
"""(module, function, filename, line number) as taken at capture time, before any file is read."""


class Frame(msgspec.Struct, frozen=True):
    module: str
    function: str
    filename: str
    lineno: int
    context_line: str | None
    in_app: bool


class ExceptionPart(msgspec.Struct, frozen=True):
    type: str
    message: str
    frames: list[Frame]


class Variant(msgspec.Struct, frozen=True):
    name: str
    hash: str
    components: list[str]
    """What contributed, one readable line each (the explanation of ``/grouping``)."""


@dataclass(frozen=True, slots=True)
class RawException:
    """An exception as captured on the hot path: names and positions only, no file read yet."""

    type: str
    message: str
    frames: tuple[RawFrame, ...]


@dataclass(frozen=True, slots=True)
class Fingerprint:
    variants: tuple[Variant, ...]
    chain: tuple[ExceptionPart, ...] = field(default=())

    @property
    def primary(self) -> Variant:
        return self.variants[0]

    @property
    def hashes(self) -> list[str]:
        return [variant.hash for variant in self.variants]


def type_name(kind: type[BaseException]) -> str:
    module = kind.__module__
    return kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"


def capture_chain(exc: BaseException) -> tuple[RawException, ...]:
    """The exception and its causes (innermost first), with the frames of each traceback.

    Cheap on purpose (it runs inside the failing request): no source file is read here.
    """
    chain: list[RawException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(current))
        chain.append(
            RawException(type_name(type(current)), _message(current), _frames(current.__traceback__))
        )
        cause = current.__cause__
        current = cause if cause is not None or current.__suppress_context__ else current.__context__
    chain.reverse()
    return tuple(chain)


def _message(exc: BaseException) -> str:
    """What an event keeps of ``exc``'s message: of a database error only its primary message, as in
    a logged traceback (``app.core.scrub.exception_message``). A log line's ``cause`` keeps only the
    first line of any error (``app.core.logging.error_message``)."""
    try:
        text = exception_message(exc)
    except Exception:
        text = "<unprintable>"
    return text[
        : MAX_MESSAGE + SCRUB_MARGIN
    ]  # cut to MAX_MESSAGE once scrubbed (``storable_scrubbed_prefix``)


def _frames(tb: TracebackType | None) -> tuple[RawFrame, ...]:
    """The traceback's frames, outermost first. A stack over ``MAX_FRAMES`` (deep recursion) has its
    cycles collapsed, then keeps its ``OUTER_FRAMES`` outermost and its innermost frames: cutting only
    one end would make the same bug at two depths two different stacks."""
    frames: list[RawFrame] = []
    append = frames.append
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        append((frame.f_globals.get("__name__") or "?", code.co_qualname, code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    if len(frames) > MAX_FRAMES:
        frames = collapse_cycles(frames)
        if len(frames) > MAX_FRAMES:
            frames = frames[:OUTER_FRAMES] + frames[OUTER_FRAMES - MAX_FRAMES :]
    return tuple(frames)


T = TypeVar("T")


def collapse_cycles(items: Sequence[T]) -> list[T]:
    """``items`` with every run repeated back to back kept once (``A A A`` → ``A``; ``A B A B A`` →
    ``A B A``), for runs of up to ``MAX_CYCLE`` items: a recursion gives the same sequence at any depth.

    Online (each item is appended, then a repetition ending there is removed), so the result does not
    depend on how many times a cycle ran.
    """
    out: list[T] = []
    for item in items:
        out.append(item)
        reduced = True
        while reduced:
            reduced = False
            for size in range(1, min(MAX_CYCLE, len(out) // 2) + 1):
                if out[-size:] == out[-2 * size : -size]:
                    del out[-size:]
                    reduced = True
                    break
    return out


def is_in_app(module: str, filename: str, packages: Sequence[str]) -> bool:
    if "site-packages" in filename or "dist-packages" in filename:
        return False
    return any(module == package or module.startswith(package + ".") for package in packages)


_SPACES = re.compile(r"\s+")


def normalise_line(line: str | None) -> str | None:
    if not line:
        return None
    line = _SPACES.sub(" ", line.strip())
    return line if 0 < len(line) <= MAX_CONTEXT_LINE else None


_PLACEHOLDERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
        "<uuid>",
    ),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (
        re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2}\b)?"),
        "<timestamp>",
    ),
    (re.compile(r"\b\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\b"), "<time>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<ip>"),
    (re.compile(r"(?i)\b0x[0-9a-f]+\b"), "<hex>"),
    # Long hex ids and decimal numbers share one placeholder: a hex id may happen to be all digits.
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<num>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<num>"),
)


def normalise_message(message: str) -> str:
    """The first line of ``message`` with its variable parts replaced by placeholders."""
    first = message.strip().split("\n", 1)[0][:MAX_MESSAGE]
    for pattern, placeholder in _PLACEHOLDERS:
        first = pattern.sub(placeholder, first)
    return _SPACES.sub(" ", first).strip()[:512]


def _hash(kind: str, variant: str, components: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for part in (GROUPING_VERSION, kind, variant, *components):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def resolve_chain(chain: Sequence[RawException], packages: Sequence[str]) -> tuple[ExceptionPart, ...]:
    """The captured chain with source lines (read now, in the background) and in-app flags."""
    parts = []
    for raw in chain:
        frames = [
            Frame(
                module=module,
                function=function,
                filename=filename,
                lineno=lineno,
                context_line=linecache.getline(filename, lineno).strip() or None,
                in_app=is_in_app(module, filename, packages),
            )
            for module, function, filename, lineno in raw.frames
        ]
        parts.append(ExceptionPart(type=raw.type, message=raw.message, frames=frames))
    return tuple(parts)


def _frame_components(frames: Sequence[Frame]) -> list[str]:
    components: list[str] = []
    for frame in frames:
        line = normalise_line(frame.context_line)
        components.append(f"{frame.module} {frame.function}" + (f" | {line}" if line else ""))
    return collapse_cycles(components)  # recursion depth must not split groups


def fingerprint_chain(kind: str, chain: Sequence[ExceptionPart], scope: Sequence[str] = ()) -> Fingerprint:
    """Every variant of ``chain``, best first (in-app, all frames, message).

    ``scope``: components every variant starts with (a job failure's job name: a timeout raised in
    SAQ's own frames is a different problem in each job).
    """
    variants: list[Variant] = []
    in_app: list[str] = list(scope)
    every: list[str] = list(scope)
    for part in chain:
        in_app += [f"type {part.type}", *_frame_components([f for f in part.frames if f.in_app])]
        every += [f"type {part.type}", *_frame_components(part.frames)]
    if any(f.in_app for part in chain for f in part.frames):
        variants.append(Variant(name="in_app", hash=_hash(kind, "in_app", in_app), components=in_app))
    if any(part.frames for part in chain):
        variants.append(Variant(name="all_frames", hash=_hash(kind, "all_frames", every), components=every))
    if not variants:
        message = [*scope] + [
            component
            for part in chain
            for component in (f"type {part.type}", f"message {normalise_message(part.message)}")
        ]
        variants.append(Variant(name="message", hash=_hash(kind, "message", message), components=message))
    return Fingerprint(variants=tuple(variants), chain=tuple(chain))


def fixed_fingerprint(kind: str, *parts: str) -> Fingerprint:
    components = [f"{kind} {part}" for part in parts]
    return Fingerprint(
        variants=(Variant(name="fixed", hash=_hash(kind, "fixed", components), components=components),)
    )


def culprit(chain: Sequence[ExceptionPart]) -> str:
    """Where it happened: the innermost in-app frame of the last exception, else its last frame."""
    for part in reversed(chain):
        frames = [f for f in part.frames if f.in_app] or part.frames
        if frames:
            return f"{frames[-1].module} in {frames[-1].function}"[:300]
    return ""
