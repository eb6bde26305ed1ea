"""Fingerprints: what makes two events the same problem, and what keeps them apart."""

from __future__ import annotations

import itertools
import linecache
import textwrap
import uuid

import pytest

from app.domains.monitoring import fingerprint
from app.domains.monitoring.fingerprint import (
    GROUPING_VERSION,
    RawException,
    capture_chain,
    culprit,
    fingerprint_chain,
    fixed_fingerprint,
    is_in_app,
    normalise_message,
    resolve_chain,
)

PACKAGES = ("app", "workers")

BUG = """
def load(value):
    return int(value)


def handler(value):
    return load(value) + 1
"""


def raise_bug(
    padding: int,
    *,
    module: str = "app.domains.shop.checkout",
    source: str = BUG,
    argument: object = "not a number",
) -> BaseException:
    """Run ``source`` (shifted down by ``padding`` lines) as module ``module`` and return what it raised."""
    text = "\n" * padding + textwrap.dedent(source)
    filename = f"/srv/app/{module.replace('.', '/')}_{uuid.uuid4().hex}.py"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace: dict[str, object] = {"__name__": module}
    exec(compile(text, filename, "exec"), namespace)  # noqa: S102 - test code, built above
    try:
        namespace["handler"](argument)  # type: ignore[operator]
    except Exception as exc:
        return exc
    raise AssertionError("the bug did not raise")


def fingerprint_of(exc: BaseException, kind: str = "error") -> tuple[str, ...]:
    return tuple(fingerprint_chain(kind, resolve_chain(capture_chain(exc), PACKAGES)).hashes)


def test_line_numbers_do_not_count() -> None:
    assert fingerprint_of(raise_bug(0)) == fingerprint_of(raise_bug(37))


def test_the_in_app_variant_comes_first_and_lists_only_our_frames() -> None:
    print_ = fingerprint_chain("error", resolve_chain(capture_chain(raise_bug(3)), PACKAGES))
    assert [v.name for v in print_.variants] == ["in_app", "all_frames"]
    in_app = print_.variants[0].components
    assert in_app[0] == "type ValueError"
    assert in_app[1:] == [
        "app.domains.shop.checkout handler | return load(value) + 1",
        "app.domains.shop.checkout load | return int(value)",
    ]
    assert any(" raise_bug | " in c for c in print_.variants[1].components)
    assert culprit(print_.chain) == "app.domains.shop.checkout in load"


def test_changed_code_in_our_frames_is_another_group() -> None:
    changed = BUG.replace("return int(value)", "return int(value.strip())")
    assert fingerprint_of(raise_bug(0)) != fingerprint_of(raise_bug(0, source=changed))


def test_a_module_outside_our_packages_only_contributes_to_the_all_frames_hash() -> None:
    outside = fingerprint_chain(
        "error", resolve_chain(capture_chain(raise_bug(0, module="thirdparty.x")), PACKAGES)
    )
    assert [v.name for v in outside.variants] == ["all_frames"]
    inside = fingerprint_chain("error", resolve_chain(capture_chain(raise_bug(0)), PACKAGES))
    # Only in-app frames differ between the two (module names): the all-frames hashes differ too,
    # but a group holding both hashes is found by either (see the functional tests).
    assert inside.variants[0].hash not in outside.hashes


def test_site_packages_are_never_in_app() -> None:
    assert not is_in_app("app.vendored", "/venv/lib/python3.11/site-packages/app/vendored.py", PACKAGES)
    assert is_in_app("app.domains.x", "/srv/app/domains/x.py", PACKAGES)
    assert is_in_app("workers", "/srv/workers/__init__.py", PACKAGES)
    assert not is_in_app("application", "/srv/application.py", PACKAGES)


def test_the_kind_and_the_scope_separate_groups() -> None:
    exc = raise_bug(0)
    chain = resolve_chain(capture_chain(exc), PACKAGES)
    assert fingerprint_chain("error", chain).hashes != fingerprint_chain("job", chain).hashes
    assert (
        fingerprint_chain("job", chain, ("job a",)).hashes
        != fingerprint_chain("job", chain, ("job b",)).hashes
    )


def test_the_cause_chain_counts() -> None:
    def wrapped() -> BaseException:
        try:
            try:
                raise KeyError("k")
            except KeyError as inner:
                raise RuntimeError("outer") from inner
        except RuntimeError as exc:
            return exc
        raise AssertionError

    chain = capture_chain(wrapped())
    assert [part.type for part in chain] == ["KeyError", "RuntimeError"]


def test_recursion_depth_does_not_split_groups() -> None:
    source = """
    LEVELS = DEPTH


    def recurse(depth):
        if depth == 0:
            raise ValueError("bottom")
        return recurse(depth - 1)


    def handler(value):
        return recurse(LEVELS)
    """
    shallow = fingerprint_of(raise_bug(0, source=source.replace("DEPTH", "3")))
    deep = fingerprint_of(raise_bug(0, source=source.replace("DEPTH", "30")))
    assert shallow[0] == deep[0]


TREE = """
def walk(depth):
    if depth == 0:
        raise KeyError("missing child")
    return walk(depth - 1)


def handler(depth):
    return walk(depth)
"""

EVEN_ODD = """
def even(depth):
    if depth <= 0:
        raise KeyError("missing child")
    return odd(depth - 1)


def odd(depth):
    return even(depth - 1)


def handler(depth):
    return even(depth)
"""


@pytest.mark.parametrize("source", [TREE, EVEN_ODD], ids=["recursion", "mutual-recursion"])
def test_a_recursive_bug_is_one_group_at_any_depth_past_the_frame_limit_too(source: str) -> None:
    def print_at(depth: int) -> tuple[str, ...]:
        return fingerprint_of(raise_bug(0, module="app.domains.tasks.tree", source=source, argument=depth))

    assert print_at(2) == print_at(3) == print_at(10) == print_at(11) == print_at(80) == print_at(501)
    deep = capture_chain(raise_bug(0, module="app.domains.tasks.tree", source=source, argument=501))
    functions = [function for _, function, _, _ in deep[-1].frames]
    assert "raise_bug" in functions and "handler" in functions, "the outermost frames are kept"


def test_a_stack_too_deep_without_cycles_keeps_its_outermost_and_innermost_frames() -> None:
    chain = "\n".join(f"def step{n}(value):\n    return step{n + 1}(value)\n" for n in range(100))
    last = "def step100(value):\n    raise KeyError(value)\n"
    source = f"{chain}\n{last}\ndef handler(value):\n    return step0(value)\n"
    frames = capture_chain(raise_bug(0, source=source))[-1].frames
    functions = [function for _, function, _, _ in frames]
    assert len(frames) == fingerprint.MAX_FRAMES
    assert functions[-1] == "step100" and "raise_bug" in functions[: fingerprint.OUTER_FRAMES]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ("", ""),
        ("hAAAAz", "hAz"),
        ("hABABABz", "hABz"),
        ("hABABAz", "hABAz"),
        ("hABCABCABCz", "hABCz"),
        ("hABCDEFGHIJABCDEFGHIJz", "hABCDEFGHIJz"),
        ("hABCDEFGHIJKABCDEFGHIJKz", "hABCDEFGHIJKABCDEFGHIJKz"),  # past MAX_CYCLE: kept
        ("hABCz", "hABCz"),
    ],
)
def test_repeated_cycles_are_collapsed(items: str, expected: str) -> None:
    assert "".join(fingerprint.collapse_cycles(list(items))) == expected


def test_collapsing_does_not_depend_on_how_often_a_cycle_ran() -> None:
    for prefix, cycle, suffix in itertools.product(
        ["", "h", "hA", "AB"], ["A", "AB", "ABA", "ABC"], ["", "A", "z"]
    ):
        collapsed = {
            tuple(fingerprint.collapse_cycles(list(prefix + cycle * n + suffix))) for n in range(2, 9)
        }
        assert len(collapsed) == 1, (prefix, cycle, suffix, collapsed)


def test_stackless_events_group_by_normalised_message() -> None:
    def event(message: str) -> tuple[str, ...]:
        return tuple(
            fingerprint_chain("error", resolve_chain([RawException("Timeout", message, ())], PACKAGES)).hashes
        )

    assert event("order 17 timed out after 3.5 s") == event("order 90211 timed out after 12 s")
    assert event("order 17 timed out") != event("payment 17 timed out")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("user 8f14e45f-ceea-467f-a0d1-0b1c9f6c1d2e not found", "user <uuid> not found"),
        ("mail to ana.maria+x@example.co.uk bounced", "mail to <email> bounced"),
        ("at 2026-11-30T12:34:56.789Z and 2026-11-30 08:00", "at <timestamp> and <timestamp>"),
        ("took 12:03:44 from 10.0.0.12", "took <time> from <ip>"),
        ("pointer 0xDEADBEEF, etag 9f86d081884c7d65", "pointer <hex>, etag <num>"),
        ("row 42 of 1000, ratio 0.75, id 12345678", "row <num> of <num>, ratio <num>, id <num>"),
        ("first line 1\nsecond line", "first line <num>"),
    ],
)
def test_message_normalisation(message: str, expected: str) -> None:
    assert normalise_message(message) == expected


def test_fixed_fingerprints_name_the_problem_and_are_versioned() -> None:
    slow = fixed_fingerprint("slow_route", "GET", "/api/x")
    assert slow.primary.name == "fixed"
    assert slow.hashes != fixed_fingerprint("slow_route", "POST", "/api/x").hashes
    assert GROUPING_VERSION  # the version is part of every hash (see _hash)
