"""The tasks domain: tasks and their comments, inside projects."""

from app.core.modules import Module
from app.domains.projects.services import ProjectService
from app.domains.tasks.controllers import MyTasksController, ProjectTasksController, TasksController
from app.domains.tasks.services import TaskService

module = Module(
    name="tasks",
    controllers=[ProjectTasksController, TasksController, MyTasksController],
    service=lambda s: TaskService(s.db, s[ProjectService]),
)
