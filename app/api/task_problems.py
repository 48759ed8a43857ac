"""GET /api/v1/org/{org}/task-problems: the task bundles this server found but did not load.

Its own route (not part of the task listing) so it stays put whatever shape `GET /tasks`
takes. Bundles are global to a deployment, so every member of any org sees the same list.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get

from app.api.context import container_of, org_caller
from app.api.openapi import errors_for


class TaskProblemResponse(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str
    error: str


class TaskProblemList(msgspec.Struct, frozen=True):
    problems: list[TaskProblemResponse]
    total: int


class TaskProblemController(Controller):
    path = "/api/v1/org/{org:str}"
    tags = ["tasks"]

    @get("/task-problems", responses=errors_for(401, 404, 426, 429))
    async def list_task_problems(
        self, request: Request[Any, Any, Any], org: str
    ) -> TaskProblemList:
        """Task bundles that failed to load at start-up, by folder name, with the reason;
        such a task cannot be used until its bundle is fixed and the server restarted."""
        await org_caller(request, org)
        container = container_of(request)
        problems = [
            TaskProblemResponse(name=p.name, path=p.path, error=p.error)
            for p in container.catalog.problems
        ]
        return TaskProblemList(problems=problems, total=len(problems))
