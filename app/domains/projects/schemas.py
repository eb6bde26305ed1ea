"""Wire shapes of projects and their members."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import msgspec

from app.core.preconditions import ETAG_FORMS
from app.core.types import OneLine, Text, whole
from app.core.wire import from_row
from app.db.models import Project, ProjectRole

Name = Annotated[str, OneLine, msgspec.Meta(min_length=1, max_length=200, examples=["Website relaunch"])]
Description = Annotated[
    str,
    Text,
    msgspec.Meta(
        max_length=10_000,
        examples=["Move the marketing site to the new design by March."],
    ),
]


class ProjectCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    description: Description = ""


class ProjectUpdate(msgspec.Struct, forbid_unknown_fields=True):
    openapi_example: ClassVar[dict[str, object]] = {}  # unedited, "Try it out" changes nothing

    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    archived: bool | msgspec.UnsetType = msgspec.UNSET


CreatorId = Annotated[
    int,
    msgspec.Meta(
        description="The user who created the project. It stays when they hand the project over or "
        "leave it: the owners are the members with the `owner` role (`/members`)."
    ),
]


ProjectVersion = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        description="Taken by every change of the project's name, description or archived flag (none by "
        f"a change that changes nothing): its `ETag` is {ETAG_FORMS}, for `If-Match`.",
    ),
]


class ProjectOut(msgspec.Struct, frozen=True):
    id: int
    name: str
    description: str
    owner_id: CreatorId
    archived: bool
    my_role: ProjectRole
    created_at: datetime
    updated_at: datetime
    version: ProjectVersion

    @classmethod
    def from_row(cls, project: Project, my_role: ProjectRole) -> ProjectOut:
        return from_row(cls, project, my_role=my_role)


InviteRole = Annotated[
    Literal["editor", "viewer"],
    msgspec.Meta(description="editor or viewer (owners are made by promoting a member)"),
]
InviteEmail = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=320,
        pattern=whole(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        examples=["ben@example.com"],
    ),
]


class InvitationCreate(msgspec.Struct, forbid_unknown_fields=True):
    email: InviteEmail
    role: InviteRole = "viewer"


InvitationExpiresAt = Annotated[
    datetime,
    msgspec.Meta(
        description="When the invitation expires: `INVITATION_TTL_S` after `created_at` (7 days by default). "
        "From then on it cannot be accepted or declined, is listed nowhere and no longer counts toward the "
        "project's limit; inviting the email again sends a fresh one (a new `created_at`)."
    ),
]


class InvitationOut(msgspec.Struct, frozen=True):
    """An invitation as its project's owners see it (never its token)."""

    id: int
    project_id: int
    email: str
    role: ProjectRole
    created_at: datetime
    expires_at: InvitationExpiresAt


InvitationTokenOut = Annotated[
    str,
    msgspec.Meta(
        description="The secret that accepts this invitation, shown only in this answer (only its hash is "
        "stored): hand it to the invitee over a channel you trust. Inviting the email again issues a new "
        "token, and the one handed out before no longer works. It expires with the invitation, "
        "`INVITATION_TTL_S` after it was issued (7 days by default).",
        examples=["lPq3v0cO6yq1m8Zf2b9k4Q7sX5tYwR0aNn1JhGdEeUo"],
    ),
]


class SentInvitationOut(InvitationOut, frozen=True):
    """An invitation as its sender sees it once: with the token that accepts it."""

    token: InvitationTokenOut


InvitationToken = Annotated[
    str,
    msgspec.Meta(
        max_length=128,
        description="The token the inviter was given when inviting you (`POST "
        "/api/projects/{id}/invitations`). Missing or wrong: 404, as for an invitation that does not exist.",
    ),
]


class InvitationAccept(msgspec.Struct, forbid_unknown_fields=True):
    """The token handed to the invitee: it accepts the invitation, or declines it."""

    token: InvitationToken = ""


class MyInvitationOut(msgspec.Struct, frozen=True):
    """An invitation as its invitee sees it."""

    id: int
    project_id: int
    project_name: str
    role: ProjectRole
    created_at: datetime
    expires_at: InvitationExpiresAt


class InvitationCursor(msgspec.Struct, frozen=True):
    after_id: Annotated[int, msgspec.Meta(ge=0)]


class MemberUpdate(msgspec.Struct, forbid_unknown_fields=True):
    # The least a role can give: Swagger UI filled the first, `owner`, which Execute then granted.
    openapi_example: ClassVar[dict[str, object]] = {"role": "viewer"}

    role: ProjectRole


class MemberOut(msgspec.Struct, frozen=True):
    """``email`` is shown to the project's owners (and to each member for themselves), else null."""

    user_id: int
    role: ProjectRole
    display_name: str
    email: str | None
    added_at: datetime


class ProjectCursor(msgspec.Struct, frozen=True):
    after_id: Annotated[int, msgspec.Meta(ge=0)]


class MemberCursor(msgspec.Struct, frozen=True):
    after_user_id: Annotated[int, msgspec.Meta(ge=0)]
