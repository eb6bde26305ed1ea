"""Every verb of the activity feed, in one place: what its events are about and how a group of them
reads ("Ana uploaded 5 files to Apollo").

A domain that emits an event names its verb here first (``emit`` refuses unknown verbs, so a typo
fails its tests instead of writing events nobody can render). Each verb says:

- the object type of its events, and where its title is (``title_key`` in the event's ``data``;
  none for a user: named from their account when read, ``FeedGroups``, never from an event);
- ``deletes``: the object is gone, so the feed keeps it as a tombstone (type and id, no title);
- ``target``: events of this verb are grouped by a target object across actors ("Ana and 2 others
  commented on 'Fix login'"): its type, the ``data`` key of its id (used when the emitter passed no
  ``target``) and the ``data`` key of its title;
- ``details``: the ``data`` keys shown with each event (never titles or names: those would outlive
  a deletion; titles come only from ``activity_objects``);
- two sentences, for a group that touched one object and for one that touched several.

Sentence fields: ``{actors}`` ("Ana", "Ana and Ben", "Ana and 2 others"), ``{object}`` (the one
object: "task 'Fix login'", or "a deleted task"), ``{objects}`` (several: "'A' and 'B'" for two with
titles, else "5 files"), ``{count}`` (objects touched), ``{times}`` (" 3 times" when one object was
touched repeatedly), ``{project}``, ``{target}`` (its title alone: "'Fix login'").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from string import Formatter


class Verb(StrEnum):
    PROJECT_CREATED = "project.created"
    PROJECT_UPDATED = "project.updated"
    PROJECT_DELETED = "project.deleted"
    MEMBER_ADDED = "member.added"
    MEMBER_ROLE_CHANGED = "member.role_changed"
    MEMBER_REMOVED = "member.removed"
    MEMBER_LEFT = "member.left"
    MEMBER_INVITED = "member.invited"
    MEMBER_JOINED = "member.joined"
    TASK_CREATED = "task.created"
    TASK_UPDATED = "task.updated"
    TASK_STATUS_CHANGED = "task.status_changed"
    TASK_ASSIGNED = "task.assigned"
    TASK_DELETED = "task.deleted"
    COMMENT_ADDED = "comment.added"
    COMMENT_EDITED = "comment.edited"
    COMMENT_DELETED = "comment.deleted"
    FILE_UPLOADED = "file.uploaded"
    FILE_DELETED = "file.deleted"
    ORDER_PLACED = "order.placed"
    ORDER_RESERVED = "order.reserved"
    ORDER_REJECTED = "order.rejected"
    ORDER_PAID = "order.paid"
    ORDER_FULFILLED = "order.fulfilled"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_EXPIRED = "order.expired"


class ObjectType(StrEnum):
    PROJECT = "project"
    USER = "user"
    TASK = "task"
    COMMENT = "comment"
    FILE = "file"
    ORDER = "order"


@dataclass(frozen=True, slots=True)
class Noun:
    """How objects of a type are named in sentences."""

    one: str
    many: str
    quoted: bool  # titles in quotes ('Fix login'); names and project names bare
    named: bool  # the noun before the title: "task 'Fix login'", "project Apollo"; not "file 'a.pdf'"
    titled: bool = True  # orders and comments have no title: "order #12"


NOUNS: dict[str, Noun] = {
    ObjectType.PROJECT: Noun("project", "projects", quoted=False, named=True),
    ObjectType.USER: Noun("member", "members", quoted=False, named=False),
    ObjectType.TASK: Noun("task", "tasks", quoted=True, named=True),
    ObjectType.COMMENT: Noun("comment", "comments", quoted=False, named=True, titled=False),
    ObjectType.FILE: Noun("file", "files", quoted=True, named=False),
    ObjectType.ORDER: Noun("order", "orders", quoted=False, named=True, titled=False),
}


@dataclass(frozen=True, slots=True)
class Target:
    type: ObjectType
    id_key: str
    title_key: str | None


@dataclass(frozen=True, slots=True)
class VerbSpec:
    object_type: ObjectType
    one: str
    many: str
    title_key: str | None = None
    deletes: bool = False
    target: Target | None = None
    details: tuple[str, ...] = ()


_TASK_TARGET = Target(ObjectType.TASK, "task_id", "title")

VERBS: dict[Verb, VerbSpec] = {
    Verb.PROJECT_CREATED: VerbSpec(
        ObjectType.PROJECT, "{actors} created {object}", "{actors} created {objects}", "name"
    ),
    Verb.PROJECT_UPDATED: VerbSpec(
        ObjectType.PROJECT,
        "{actors} updated {object}{times}",
        "{actors} updated {objects}",
        "name",
        details=("fields",),
    ),
    Verb.PROJECT_DELETED: VerbSpec(
        ObjectType.PROJECT,
        "{actors} deleted a project",
        "{actors} deleted {objects}",
        deletes=True,
    ),
    Verb.MEMBER_ADDED: VerbSpec(
        ObjectType.USER,
        "{actors} added {object} to {project}",
        "{actors} added {objects} to {project}",
        details=("role",),
    ),
    Verb.MEMBER_ROLE_CHANGED: VerbSpec(
        ObjectType.USER,
        "{actors} changed the role of {object}{times} in {project}",
        "{actors} changed the roles of {objects} in {project}",
        details=("from", "to"),
    ),
    Verb.MEMBER_REMOVED: VerbSpec(
        ObjectType.USER,
        "{actors} removed {object} from {project}",
        "{actors} removed {objects} from {project}",
    ),
    # Leaving, and an account's erasure: "Ana removed Ana from Apollo" was how a leaving read.
    Verb.MEMBER_LEFT: VerbSpec(
        ObjectType.USER,
        "{object} left {project}",
        "{objects} left {project}",
    ),
    # The invitee's email is never in the event: members who are not owners must not learn it.
    Verb.MEMBER_INVITED: VerbSpec(
        ObjectType.PROJECT,
        "{actors} invited someone to {object}{times}",
        "{actors} invited people to {objects}",
        "name",
        details=("role",),
    ),
    Verb.MEMBER_JOINED: VerbSpec(
        ObjectType.USER,
        "{object} joined {project}",
        "{objects} joined {project}",
        details=("role",),
    ),
    Verb.TASK_CREATED: VerbSpec(
        ObjectType.TASK,
        "{actors} created {object} in {project}",
        "{actors} created {objects} in {project}",
        "title",
    ),
    Verb.TASK_UPDATED: VerbSpec(
        ObjectType.TASK,
        "{actors} updated {object}{times} in {project}",
        "{actors} updated {objects} in {project}",
        "title",
        details=("fields",),
    ),
    Verb.TASK_STATUS_CHANGED: VerbSpec(
        ObjectType.TASK,
        "{actors} changed the status of {object}{times} in {project}",
        "{actors} changed the status of {objects} in {project}",
        "title",
        details=("from", "to"),
    ),
    Verb.TASK_ASSIGNED: VerbSpec(
        ObjectType.TASK,
        "{actors} changed the assignee of {object}{times} in {project}",
        "{actors} changed the assignees of {objects} in {project}",
        "title",
        details=("assignee_id",),
    ),
    Verb.TASK_DELETED: VerbSpec(
        ObjectType.TASK,
        "{actors} deleted a task in {project}",
        "{actors} deleted {objects} in {project}",
        deletes=True,
    ),
    Verb.COMMENT_ADDED: VerbSpec(
        ObjectType.COMMENT,
        "{actors} commented on {target} in {project}",
        "{actors} commented on {target} in {project}",
        target=_TASK_TARGET,
    ),
    Verb.COMMENT_EDITED: VerbSpec(
        ObjectType.COMMENT,
        "{actors} edited a comment on {target} in {project}",
        "{actors} edited {objects} on {target} in {project}",
        target=_TASK_TARGET,
    ),
    Verb.COMMENT_DELETED: VerbSpec(
        ObjectType.COMMENT,
        "{actors} deleted a comment on {target} in {project}",
        "{actors} deleted {objects} on {target} in {project}",
        deletes=True,
        target=_TASK_TARGET,
    ),
    Verb.FILE_UPLOADED: VerbSpec(
        ObjectType.FILE,
        "{actors} uploaded {object} to {project}",
        "{actors} uploaded {objects} to {project}",
        "filename",
        details=("size_bytes",),
    ),
    Verb.FILE_DELETED: VerbSpec(
        ObjectType.FILE,
        "{actors} deleted a file from {project}",
        "{actors} deleted {objects} from {project}",
        deletes=True,
    ),
    Verb.ORDER_PLACED: VerbSpec(
        ObjectType.ORDER, "{actors} placed {object}", "{actors} placed {objects}", details=("total",)
    ),
    Verb.ORDER_RESERVED: VerbSpec(
        ObjectType.ORDER, "{object} was reserved", "{objects} were reserved", details=("total",)
    ),
    Verb.ORDER_REJECTED: VerbSpec(
        ObjectType.ORDER,
        "{object} was rejected",
        "{objects} were rejected",
        details=("reason", "total"),
    ),
    Verb.ORDER_PAID: VerbSpec(
        ObjectType.ORDER, "{actors} paid for {object}", "{actors} paid for {objects}", details=("total",)
    ),
    Verb.ORDER_FULFILLED: VerbSpec(
        ObjectType.ORDER, "{object} was fulfilled", "{objects} were fulfilled", details=("total",)
    ),
    Verb.ORDER_CANCELLED: VerbSpec(
        ObjectType.ORDER,
        "{actors} cancelled {object}",
        "{actors} cancelled {objects}",
        details=("reason", "total"),
    ),
    Verb.ORDER_EXPIRED: VerbSpec(
        ObjectType.ORDER,
        "The reservation of {object} expired",
        "The reservations of {objects} expired",
        details=("total",),
    ),
}

_GENERIC = VerbSpec(ObjectType.TASK, "{actors}: {verb} {object}", "{actors}: {verb} ({count} objects)")
"""For a verb stored before this list knew it (nothing emits one: ``emit`` refuses them)."""

MAX_SAMPLE = 8
"""Sample actors and objects per group (Mastodon's SAMPLE_ACCOUNTS_SIZE)."""


def spec_of(verb: str) -> VerbSpec | None:
    try:
        return VERBS[Verb(verb)]
    except ValueError:
        return None


def noun_of(object_type: str) -> Noun:
    return NOUNS.get(object_type) or Noun(object_type, f"{object_type}s", quoted=True, named=True)


def object_phrase(
    object_type: str, object_id: int, title: str | None, deleted: bool, *, with_noun: bool = True
) -> str:
    """task 'Fix login' · 'spec.pdf' · Ben Okafor · project Apollo · order #12 · a deleted task ·
    task #12 (no event carried its title)."""
    noun = noun_of(object_type)
    if deleted:
        return f"a deleted {noun.one}"
    if title is None or not noun.titled:
        return f"{noun.one} #{object_id}"
    shown = f"'{title}'" if noun.quoted else title
    return f"{noun.one} {shown}" if noun.named and with_noun else shown


def objects_phrase(object_type: str, objects: list[tuple[int, str | None, bool]], count: int) -> str:
    """'A' and 'B' (exactly two, both titled and not deleted; in the order they were touched), else
    "5 files"."""
    noun = noun_of(object_type)
    if (
        count == 2
        and len(objects) == 2
        and noun.titled
        and all(t is not None and not d for _, t, d in objects)
    ):
        first, second = (object_phrase(object_type, *o, with_noun=False) for o in reversed(objects))
        return f"{first} and {second}"
    return f"{count} {noun.many}"


def actors_phrase(names: list[str], count: int) -> str:
    """The most recent actor first; "and N others" counts exactly the actors the reader may see."""
    if not names:
        return "Someone"
    if count <= 1:
        return names[0]
    if count == 2 and len(names) >= 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} and {count - 1} others"


def sentence(
    verb: str,
    *,
    actor_names: list[str],
    actor_count: int,
    object_type: str,
    objects: list[tuple[int, str | None, bool]],
    object_count: int,
    event_count: int,
    project: str | None,
    target: str | None,
) -> str:
    spec = spec_of(verb) or _GENERIC
    one = object_count <= 1 and bool(objects)
    template = spec.one if one else spec.many
    text = template.format(
        actors=actors_phrase(actor_names, actor_count),
        objects=objects_phrase(object_type, objects, object_count),
        object=object_phrase(object_type, *objects[0]) if objects else noun_of(object_type).one,
        count=object_count,
        times=f" {event_count} times" if one and event_count > 1 else "",
        project=project or "a project",
        target=target or "a deleted item",
        verb=verb,
    )
    return text if _begins_with_written_text(template, actor_names, object_type, objects) else _capital(text)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _begins_with_written_text(
    template: str, actor_names: list[str], object_type: str, objects: list[tuple[int, str | None, bool]]
) -> bool:
    """Whether the sentence begins with what a user wrote (a name, a title), which is shown as its owner
    wrote it ("de Vries", "ßara" was "SSara"), not with the feed's own words, which begin with a capital
    ("Someone ...", "A deleted task ...", "The reservation of ..."). Read from the template's first
    field, never by comparing texts (a project named "a" is not the start of "a deleted member")."""
    literal, field, _, _ = next(iter(Formatter().parse(template)), ("", None, None, None))
    if literal or field is None:
        return False
    if field == "actors":
        return bool(actor_names)
    if field in ("project", "target"):
        return True
    if field in ("object", "objects") and objects:
        _, title, deleted = objects[0]
        noun = noun_of(object_type)
        shown_bare = field == "objects" or not noun.named  # a title without its noun before it
        return title is not None and not deleted and noun.titled and not noun.quoted and shown_bare
    return False
