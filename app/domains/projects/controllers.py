"""HTTP for projects and members (``/api/projects``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from app.core.auth import Caller, requires_user
from app.core.idempotency import (
    IDEMPOTENCY_DESCRIPTION,
    LOCATION_HEADER,
    DocumentsVersionedCreation,
    Idempotent,
    OptionalIdempotencyKey,
    at_location,
    with_etag,
)
from app.core.openapi import BEARER, problems
from app.core.pagination import CursorParam, Page, PageSize, decode_cursor, paginate
from app.core.preconditions import (
    ETAG_FORMS,
    ETAG_HEADER,
    DocumentsConditionalRead,
    DocumentsIfMatch,
    IfMatchHeader,
    IfNoneMatchHeader,
    etag,
    parse_preconditions,
    precondition_failed,
    require_if_match,
)
from app.core.routing import Controller
from app.core.types import IdPath
from app.core.wire import from_row
from app.db.models import ProjectRole
from app.domains.projects.schemas import (
    InvitationAccept,
    InvitationCreate,
    InvitationCursor,
    InvitationOut,
    MemberCursor,
    MemberOut,
    MemberUpdate,
    MyInvitationOut,
    ProjectCreate,
    ProjectCursor,
    ProjectOut,
    ProjectUpdate,
    SentInvitationOut,
)
from app.domains.projects.services import ProjectService

Projects = NamedDependency[ProjectService]


class ProjectsController(Controller):
    path = "/api/projects"
    tags = ["projects"]
    guards = [requires_user]
    security = BEARER

    @get("/", summary="Projects the caller is a member of", responses=problems(400, 401, 429))
    async def list_projects(
        self,
        projects: Projects,
        current_user: Caller,
        archived: Annotated[bool | None, QueryParameter(description="Only archived (true) or active")] = None,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[ProjectOut]:
        after_id = decode_cursor(cursor, ProjectCursor).after_id if cursor else 0
        rows = await projects.list_for(
            current_user.id, archived=archived, after_id=after_id, row_limit=limit + 1
        )
        return paginate(
            rows,
            limit,
            lambda row: ProjectCursor(row.id),
            lambda row: from_row(ProjectOut, row),
        )

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a project (the caller becomes its owner)",
        description="A user may have created at most `PROJECTS_PER_USER_MAX` projects (100 by default) "
        "that still exist; one more is a 409 (`project-limit`) until one of them is deleted. The creator "
        "becomes a member, and one account may be a member of at most `MEMBERSHIPS_PER_USER_MAX` "
        "projects (1,000 by default): one more is a 409 (`membership-limit`) until they leave one. "
        f"Answers the new project and its `ETag`, {ETAG_FORMS}, as its GET does. " + IDEMPOTENCY_DESCRIPTION,
        operation_class=DocumentsVersionedCreation,
        responses={
            **problems(400, 401, 409, 422, 429),
            201: ResponseSpec(ProjectOut, description="Created"),
        },
    )
    async def create_project(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ProjectCreate],
        projects: Projects,
        idempotency: Idempotent,
        current_user: Caller,
        idempotency_key: OptionalIdempotencyKey = None,
    ) -> Response[bytes]:
        created = await idempotency.respond(
            request,
            current_user.id,
            idempotency_key,
            data,
            lambda claim: projects.create(current_user.id, data, claim=claim),
            lambda project: ProjectOut.from_row(project, ProjectRole.OWNER),
        )
        return at_location(with_etag(created), "/api/projects/{id}")

    @get(
        "/{project_id:int}",
        summary="A project",
        description=f"Answers the project's `ETag`, {ETAG_FORMS}: send it as `If-Match` with a change. "
        "It versions the project's own fields, not the caller's `my_role`.",
        response_headers=[ETAG_HEADER],
        responses=problems(400, 401, 404, 429) | precondition_failed(),
        operation_class=DocumentsConditionalRead,
    )
    async def get_project(
        self, project_id: IdPath, projects: Projects, current_user: Caller, if_match: IfMatchHeader = None
    ) -> Response[ProjectOut]:
        project, role = await projects.get(current_user.id, project_id)
        require_if_match(if_match, project.version)
        return Response(ProjectOut.from_row(project, role), headers={"ETag": etag(project.version)})

    @patch(
        "/{project_id:int}",
        summary="Rename, describe (editors) or archive (owners) a project",
        description="With `If-Match` (the `ETag` of the project as the client last read it), the change "
        "is applied only if nobody has changed the project since: otherwise 412 `precondition-failed` "
        "and nothing changes (of two changes sent with the same `ETag`, one is applied). A change that "
        "changes nothing keeps the version. Answers the project and its new `ETag`.",
        response_headers=[ETAG_HEADER],
        responses={**problems(400, 401, 403, 404, 429), **precondition_failed()},
        operation_class=DocumentsIfMatch,
    )
    async def update_project(
        self,
        project_id: IdPath,
        data: JSONBody[ProjectUpdate],
        projects: Projects,
        current_user: Caller,
        if_match: IfMatchHeader = None,
        if_none_match: IfNoneMatchHeader = None,
    ) -> Response[ProjectOut]:
        project, role = await projects.update(
            current_user.id, project_id, data, conditions=parse_preconditions(if_match, if_none_match)
        )
        return Response(ProjectOut.from_row(project, role), headers={"ETag": etag(project.version)})

    @delete(
        "/{project_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a project (owners)",
        description="With `If-Match`, only if the project is still at a version it names (else 412 "
        "`precondition-failed`, nothing deleted). From the answer on the project and everything in it "
        "(its tasks, comments, files and feed) is a 404 to everyone and no longer counts toward its "
        "creator's `PROJECTS_PER_USER_MAX`; what it held is deleted in the background.",
        responses={**problems(400, 401, 403, 404, 429), **precondition_failed()},
        operation_class=DocumentsIfMatch,
    )
    async def delete_project(
        self,
        project_id: IdPath,
        projects: Projects,
        current_user: Caller,
        if_match: IfMatchHeader = None,
        if_none_match: IfNoneMatchHeader = None,
    ) -> None:
        await projects.delete(
            current_user.id, project_id, conditions=parse_preconditions(if_match, if_none_match)
        )


class MembersController(Controller):
    path = "/api/projects/{project_id:int}/members"
    tags = ["projects"]
    guards = [requires_user]
    security = BEARER

    @get(
        "/",
        summary="Members of a project",
        description="Members join by accepting an invitation (`/invitations`). Emails are shown to the "
        "project's owners only (and each member sees their own); otherwise `email` is null.",
        responses=problems(400, 401, 404, 429),
    )
    async def list_members(
        self,
        project_id: IdPath,
        projects: Projects,
        current_user: Caller,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[MemberOut]:
        after = decode_cursor(cursor, MemberCursor).after_user_id if cursor else 0
        rows = await projects.list_members(
            current_user.id, project_id, after_user_id=after, row_limit=limit + 1
        )
        return paginate(rows, limit, lambda row: MemberCursor(row.user_id))

    @patch(
        "/{user_id:int}",
        summary="Change a member's role (owners)",
        description="The last owner whose account is active cannot be demoted (409): an owner whose "
        "account is deactivated does not count. Demoting an owner withdraws the invitations they sent to "
        "the project.",
        responses=problems(400, 401, 403, 404, 409, 429),
    )
    async def change_role(
        self,
        project_id: IdPath,
        user_id: IdPath,
        data: JSONBody[MemberUpdate],
        projects: Projects,
        current_user: Caller,
    ) -> MemberUpdate:
        return MemberUpdate(
            role=await projects.change_member_role(current_user.id, project_id, user_id, data.role)
        )

    @delete(
        "/{user_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove a member (owners) or leave the project (yourself)",
        description="The last owner whose account is active cannot go (409): an owner whose account is "
        "deactivated does not count. The member's waiting invitations to the project are withdrawn, and "
        "so are the invitations they sent to it.",
        responses=problems(401, 403, 404, 409, 429),
    )
    async def remove_member(
        self, project_id: IdPath, user_id: IdPath, projects: Projects, current_user: Caller
    ) -> None:
        await projects.remove_member(current_user.id, project_id, user_id)


class InvitationsController(Controller):
    """Owners invite people by email and hand them the answer's token; the invitee accepts with it
    under ``/api/me/invitations``."""

    path = "/api/projects/{project_id:int}/invitations"
    tags = ["projects"]
    guards = [requires_user]
    security = BEARER

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Invite someone by email (owners)",
        description="The answer carries the invitation's `token`, shown only here (the server keeps only "
        "its hash): hand it to the invitee over a channel you trust. No mail is sent, and an account's "
        "email is not proof that its holder controls the address, so the invitation is accepted only "
        "with the token, by a user signed in with the invited email (`POST "
        "/api/me/invitations/{id}/accept`). The answer is the same whether or not the email belongs to "
        "an account (active or not) or to a member already: it never tells who has an account. Inviting "
        "the same email again updates the role and issues a new token: the one handed out before no "
        "longer works. A project has at most `PROJECT_INVITATIONS_MAX` waiting invitations (50 by "
        "default): one more is a 409 (`invitation-limit`). Removing a member (or a member leaving) "
        "withdraws their waiting invitations to the project. An invitation holds only while its sender "
        "is an active owner of the project: removing the sender, the sender leaving or being demoted "
        "withdraws it, and one from a deactivated account cannot be accepted. An invitation expires "
        "`INVITATION_TTL_S` after it was sent (7 days by default; inviting the email again sends a fresh "
        "one): an expired invitation is as if withdrawn (404 to accept, decline or withdraw, listed "
        "nowhere, not counted toward the limit) and is deleted by a daily job.",
        responses=problems(400, 401, 403, 404, 409, 429),
        response_headers=[LOCATION_HEADER],
    )
    async def invite_member(
        self, project_id: IdPath, data: JSONBody[InvitationCreate], projects: Projects, current_user: Caller
    ) -> Response[SentInvitationOut]:
        sent = await projects.invite(current_user.id, project_id, data)
        location = f"/api/projects/{project_id}/invitations/{sent.id}"
        return Response(sent, status_code=HTTP_201_CREATED, headers={"Location": location})

    @get(
        "/",
        summary="Open invitations of a project (owners)",
        description="Without their tokens (each was shown once, when the invitation was sent): to give "
        "an invitee a token again, invite the email again (a new token; the old one stops working). "
        "An invitation whose sender's account was deactivated stays listed (and counts toward the limit) "
        "but cannot be accepted until an owner sends it again (it is then theirs) or withdraws it. "
        "Expired invitations (older than `INVITATION_TTL_S`) are not listed.",
        responses=problems(400, 401, 403, 404, 429),
    )
    async def list_invitations(
        self,
        project_id: IdPath,
        projects: Projects,
        current_user: Caller,
        cursor: CursorParam = None,
        limit: PageSize = 50,
    ) -> Page[InvitationOut]:
        after = decode_cursor(cursor, InvitationCursor).after_id if cursor else 0
        rows = await projects.list_invitations(
            current_user.id, project_id, after_id=after, row_limit=limit + 1
        )
        return paginate(
            rows, limit, lambda row: InvitationCursor(row.id), lambda row: from_row(InvitationOut, row)
        )

    @delete(
        "/{invitation_id:int}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Withdraw an invitation (owners)",
        description="An expired invitation (older than `INVITATION_TTL_S`) is a 404: it is withdrawn "
        "already, and a daily job deletes it.",
        responses=problems(401, 403, 404, 429),
    )
    async def revoke_invitation(
        self, project_id: IdPath, invitation_id: IdPath, projects: Projects, current_user: Caller
    ) -> None:
        await projects.revoke_invitation(current_user.id, project_id, invitation_id)


class MyInvitationsController(Controller):
    """Invitations addressed to the caller's email, accepted with the token their sender handed over."""

    path = "/api/me/invitations"
    tags = ["projects"]
    guards = [requires_user]
    security = BEARER

    @get(
        "/",
        summary="Invitations to projects addressed to you",
        description="The invitations to your account's email. Seeing one does not let you accept it: "
        "accepting takes the token its sender was given and handed to the invitee (never listed here). "
        "Only invitations whose sender is still an active owner of the project, and that have not "
        "expired (`INVITATION_TTL_S` after they were sent), are listed.",
        responses=problems(400, 401, 429),
    )
    async def list_my_invitations(
        self, projects: Projects, current_user: Caller, cursor: CursorParam = None, limit: PageSize = 50
    ) -> Page[MyInvitationOut]:
        after = decode_cursor(cursor, InvitationCursor).after_id if cursor else 0
        rows = await projects.my_invitations(current_user.id, after_id=after, row_limit=limit + 1)
        return paginate(
            rows, limit, lambda row: InvitationCursor(row.id), lambda row: from_row(MyInvitationOut, row)
        )

    @post(
        "/{invitation_id:int}/accept",
        status_code=HTTP_200_OK,
        summary="Accept an invitation: join the project",
        description='Send `{"token": ...}`, the token the inviter was given when sending the '
        "invitation (the latest one, if they invited you again), while signed in with the invited "
        "email. A wrong or missing token is a 404, exactly like an invitation that does not exist or is "
        "addressed to someone else. Joining uses the invitation up; a member already keeps their role. "
        "An invitation whose sender is no longer an active owner of the project, or that has expired "
        "(`INVITATION_TTL_S` after it was sent), is a 404 too. One account may be a member of at most "
        "`MEMBERSHIPS_PER_USER_MAX` projects (1,000 by default): joining one more is a 409 "
        "(`membership-limit`, saying how many you are a member of) that leaves the invitation waiting; "
        "leave a project, then accept it again. A project has at most `PROJECT_MEMBERS_MAX` members "
        "(1,000 by default): joining one past it is a 409 (`project-full`) that leaves the invitation "
        "waiting. Accepting an invitation to a project you are a member of is never refused (it adds "
        "nothing).",
        responses=problems(400, 401, 404, 409, 429),
    )
    async def accept_invitation(
        self,
        invitation_id: IdPath,
        data: JSONBody[InvitationAccept],
        projects: Projects,
        current_user: Caller,
    ) -> ProjectOut:
        project, role = await projects.accept_invitation(current_user.id, invitation_id, data.token)
        return ProjectOut.from_row(project, role)

    @post(
        "/{invitation_id:int}/decline",
        status_code=HTTP_204_NO_CONTENT,
        summary="Decline an invitation",
        description='Removes an invitation addressed to your email. Send `{"token": ...}`, the token '
        "that accepts it: an email address proves nothing here (registration sends no mail), so declining "
        "takes the same proof as accepting. A wrong or missing token is a 404, exactly like an invitation "
        "that does not exist, is addressed to someone else or has expired.",
        responses=problems(400, 401, 404, 429),
    )
    async def decline_invitation(
        self,
        invitation_id: IdPath,
        data: JSONBody[InvitationAccept],
        projects: Projects,
        current_user: Caller,
    ) -> None:
        await projects.decline_invitation(current_user.id, invitation_id, data.token)
