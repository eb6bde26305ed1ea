"""Demo projects with members, tasks in every status, and comments (idempotent).

Runs through the services, so the demo data also produces the activity events a real team would:
the seeded users open a readable demo feed.
"""

from __future__ import annotations

from datetime import date, timedelta

from app.core.services import Services
from app.db.models import TaskPriority, TaskStatus, User
from app.domains.accounts.services import AccountService
from app.domains.projects.schemas import InvitationCreate, ProjectCreate
from app.domains.projects.services import ProjectService
from app.domains.tasks.schemas import TaskCreate
from app.domains.tasks.services import TaskService

DEMO = {
    "Apollo": "Launch of the new storefront.",
    "Gemini": "Internal analytics dashboards.",
}
TASKS = [
    ("Draft the launch checklist", TaskStatus.DONE, TaskPriority.HIGH, -3),
    ("Load-test the checkout", TaskStatus.IN_PROGRESS, TaskPriority.URGENT, 2),
    ("Write release notes", TaskStatus.TODO, TaskPriority.MEDIUM, 7),
    ("Tidy the backlog", TaskStatus.TODO, TaskPriority.LOW, None),
]


async def seed_projects(services: Services) -> list[str]:
    accounts = services[AccountService]
    projects = services[ProjectService]
    tasks = services[TaskService]
    admin = await accounts.find_by_email(services.settings.admin_email)
    ana = await accounts.find_by_email("ana@example.com")
    ben = await accounts.find_by_email("ben@example.com")
    if admin is None or ana is None or ben is None:
        return []
    existing = {row.name for row in await projects.list_for(ana.id, archived=None, after_id=0, row_limit=100)}
    created = [name for name in DEMO if name not in existing]
    for name in created:
        await _seed_project(projects, tasks, name, ana=ana, ben=ben, admin=admin)
    return (
        [f"demo projects: {', '.join(DEMO)} (Ana owns them, Ben edits, the admin views)"] if created else []
    )


async def _seed_project(
    projects: ProjectService, tasks: TaskService, name: str, *, ana: User, ben: User, admin: User
) -> None:
    project = await projects.create(ana.id, ProjectCreate(name=name, description=DEMO[name]))
    invitations = (InvitationCreate(email=ben.email, role="editor"), InvitationCreate(email=admin.email))
    for invitee, invited in zip((ben, admin), invitations, strict=True):
        sent = await projects.invite(ana.id, project.id, invited)
        await projects.accept_invitation(invitee.id, sent.id, sent.token)
    for index, (title, status, priority, due_in) in enumerate(TASKS):
        task = await tasks.create(
            ana.id if index % 2 == 0 else ben.id,
            project.id,
            TaskCreate(
                title=title,
                status=status,
                priority=priority,
                assignee_id=ben.id if index % 2 else ana.id,
                due_date=date.today() + timedelta(days=due_in) if due_in is not None else None,
            ),
        )
        await tasks.add_comment(ben.id, task.id, f"On it — {title.lower()}.")
