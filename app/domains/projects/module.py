"""The projects domain: projects and their members (the permission model of the work area)."""

from app.core.modules import Cron, Job, Module
from app.core.services import Services
from app.domains.accounts.services import AccountService
from app.domains.projects.controllers import (
    InvitationsController,
    MembersController,
    MyInvitationsController,
    ProjectsController,
)
from app.domains.projects.jobs import (
    purge_deleted_project,
    purge_expired_invitations,
    purge_timeout_s,
    requeue_lost_project_purges,
)
from app.domains.projects.seed import seed_projects
from app.domains.projects.services import ProjectService


def build_service(s: Services) -> ProjectService:
    """The service, and its part of an account's erasure (``ProjectService.forget_member``)."""
    projects = ProjectService(s.db, s[AccountService], s.settings)
    s[AccountService].before_erasure(projects.forget_member)
    return projects


module = Module(
    name="projects",
    controllers=[ProjectsController, MembersController, InvitationsController, MyInvitationsController],
    service=build_service,
    seed=seed_projects,
    jobs=[Job(function=purge_deleted_project, timeout_s=purge_timeout_s)],
    cron=[
        Cron(function=purge_expired_invitations, schedule="53 3 * * *", timeout_s=300),
        Cron(function=requeue_lost_project_purges, schedule="37 * * * *", timeout_s=60),
    ],
)
