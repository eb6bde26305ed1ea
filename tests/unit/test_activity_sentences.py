"""The feed's sentences begin with a capital letter when they begin with the feed's own words, and
show a name as its owner wrote it (was: every sentence's first letter upper-cased, so "de Vries"
became "De Vries" and "ßara" "SSara", while the actor's ``name`` field said otherwise)."""

from __future__ import annotations

import pytest

from app.domains.activity.verbs import sentence


def said(actor: str | None, *, title: str | None = "Fix login", deleted: bool = False) -> str:
    return sentence(
        "task.created",
        actor_names=[actor] if actor else [],
        actor_count=1 if actor else 0,
        object_type="task",
        objects=[(12, title, deleted)],
        object_count=1,
        event_count=1,
        project="Apollo",
        target=None,
    )


@pytest.mark.parametrize("name", ["de Vries", "ßara", "\ufb01ona", "Ana Lima"])
def test_an_actors_name_is_shown_as_written(name: str) -> None:
    assert said(name).startswith(f"{name} created")


def test_the_feeds_own_first_word_is_capitalized() -> None:
    assert said(None).startswith("Someone created")


def test_a_members_name_opens_a_sentence_as_written_and_the_feeds_own_words_with_a_capital() -> None:
    def joined(name: str | None, deleted: bool, project: str) -> str:
        return sentence(
            "member.joined",
            actor_names=["Ana"],
            actor_count=1,
            object_type="user",
            objects=[(7, name, deleted)],
            object_count=1,
            event_count=1,
            project=project,
            target=None,
        )

    assert joined("de Vries", False, "Apollo") == "de Vries joined Apollo"
    # A project named "a" is not the start of the feed's "a deleted member" (a review found it was read so).
    assert joined("a", True, "a") == "A deleted member joined a"


def test_an_orders_number_opens_with_a_capital_whatever_its_title() -> None:
    said = sentence(
        "order.reserved",
        actor_names=[],
        actor_count=0,
        object_type="order",
        objects=[(12, "o", False)],
        object_count=1,
        event_count=1,
        project=None,
        target=None,
    )
    assert said == "Order #12 was reserved", said
