"""The tasks domain: tasks and their comments, inside projects."""

from app.core.modules import Module
from app.core.services import Services
from app.domains.projects.services import ProjectService
from app.domains.tasks.cache import TaskListCache
from app.domains.tasks.controllers import MyTasksController, ProjectTasksController, TasksController
from app.domains.tasks.services import TaskService


def build_service(s: Services) -> TaskService:
    """The service, and the hooks that keep its cached task lists honest: a reader's scope goes stale
    when they join or leave a project, a project's pages when a member leaves or it is deleted."""
    projects = s[ProjectService]
    cache = TaskListCache(s.cache, s.settings.tasks_cache_ttl_s, projects.member_project_ids)
    projects.after_membership_change(cache.membership_changed)
    projects.after_delete(cache.tasks_changed)
    return TaskService(
        s.db,
        projects,
        cache,
        tasks_per_project_max=s.settings.tasks_per_project_max,
        comments_per_task_max=s.settings.comments_per_task_max,
    )


module = Module(
    name="tasks",
    controllers=[ProjectTasksController, TasksController, MyTasksController],
    service=build_service,
)
