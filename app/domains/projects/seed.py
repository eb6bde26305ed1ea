"""Demo projects with members, tasks in every status, and comments (idempotent)."""

from __future__ import annotations

from datetime import date, timedelta

from app.config import Settings
from app.core.db import UnitOfWork
from app.db import accounts as account_queries
from app.db import projects as queries
from app.db.models import ProjectRole, TaskPriority, TaskStatus
from app.domains.projects import services as projects
from app.domains.projects.schemas import MemberAdd, ProjectCreate
from app.domains.tasks import services as tasks
from app.domains.tasks.schemas import TaskCreate
from app.seed import seeder

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


@seeder
async def seed_projects(uow: UnitOfWork, settings: Settings) -> list[str]:
    admin = await account_queries.get_user_by_email(uow.conn, email=settings.admin_email.lower())
    ana = await account_queries.get_user_by_email(uow.conn, email="ana@example.com")
    ben = await account_queries.get_user_by_email(uow.conn, email="ben@example.com")
    if admin is None or ana is None or ben is None:
        return []
    existing = {
        row.name
        for row in await queries.list_member_projects(
            uow.conn, user_id=ana.id, archived=None, after_id=0, row_limit=100
        )
    }
    created = 0
    for name, description in DEMO.items():
        if name in existing:
            continue
        project = await projects.create_project(
            uow, ana.id, ProjectCreate(name=name, description=description)
        )
        await projects.add_member(uow, ana.id, project.id, MemberAdd(user_id=ben.id, role=ProjectRole.EDITOR))
        await projects.add_member(
            uow, ana.id, project.id, MemberAdd(user_id=admin.id, role=ProjectRole.VIEWER)
        )
        for index, (title, status, priority, due_in) in enumerate(TASKS):
            task = await tasks.create_task(
                uow,
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
            await tasks.add_comment(uow, ben.id, task.id, f"On it — {title.lower()}.")
        created += 1
    return (
        [f"demo projects: {', '.join(DEMO)} (Ana owns them, Ben edits, the admin views)"] if created else []
    )
