"""A little more demo activity on top of the projects' seed, so the demo feed shows what grouping does:
several people commenting on one task ("Ana Lima and Ben Okafor commented on 'Load-test the
checkout'"), a status change, and a task deleted after it was created (a tombstone in its group).

Runs through the other domains' services, so every event is a real one. Idempotent: once Ana has
commented on the checkout task, there is nothing to do.
"""

from __future__ import annotations

from app.core.services import Services
from app.db.models import TaskStatus
from app.domains.accounts.services import AccountService
from app.domains.projects.services import ProjectService
from app.domains.tasks.schemas import TaskCreate, TaskUpdate
from app.domains.tasks.services import TaskFilters, TaskService

PROJECT = "Apollo"
TASK = "Load-test the checkout"


async def seed_feed(services: Services) -> list[str]:
    accounts, projects, tasks = services[AccountService], services[ProjectService], services[TaskService]
    ana = await accounts.find_by_email("ana@example.com")
    ben = await accounts.find_by_email("ben@example.com")
    if ana is None or ben is None:
        return []
    mine = await projects.list_for(ana.id, archived=None, after_id=0, row_limit=100)
    project = next((p for p in mine if p.name == PROJECT), None)
    if project is None:
        return []
    found = await tasks.list_in_project(
        ana.id, project.id, filters=TaskFilters(search="checkout"), sort="created", cursor=None, row_limit=10
    )
    task = next((t for t in found if t.title == TASK), None)
    if task is None:
        return []
    comments = await tasks.list_comments(ana.id, task.id, after_id=0, row_limit=100)
    if any(comment.author_id == ana.id for comment in comments):
        return []
    await tasks.add_comment(ana.id, task.id, "The numbers look good: ship it.")
    await tasks.update(ben.id, task.id, TaskUpdate(status=TaskStatus.DONE))
    draft = await tasks.create(ana.id, project.id, TaskCreate(title="Old launch plan"))
    await tasks.delete(ana.id, draft.id)
    return ["demo feed: log in as Ana or Ben and GET /api/feed (grouped activity, live at /api/feed/stream)"]
