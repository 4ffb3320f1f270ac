"""A user's tasks over plain REST, the same ones the agent manages."""

from __future__ import annotations

from typing import Any

from .. import auth, db
from ..models import Task
from ..schemas import (
    TaskCreateSchema,
    TaskListArgsSchema,
    TaskPageSchema,
    TaskSchema,
    TaskUpdateSchema,
)
from ..services import tasks as task_service
from . import Blueprint, cached, problems

bp = Blueprint("tasks", __name__, url_prefix="/api", description="Tasks.")


@bp.get("/<user_id>/tasks")
@bp.arguments(TaskListArgsSchema, location="query")
@cached(bp)
@bp.response(200, TaskPageSchema)
@problems(bp, 401, 403, 404, 422, 429)
def list_tasks(args: dict[str, Any], user_id: str) -> dict[str, Any]:
    """The user's tasks, filtered and sorted (by number unless `sort` says otherwise)."""
    where = task_service.TaskFilter(
        args["status"], args["q"], args["due_before"], args["due_after"], args["priority"]
    )
    items, next_cursor = task_service.page_tasks(
        db.session(), auth.user_for_path(user_id), where, args["sort"], args["limit"],
        args["cursor"],
    )  # fmt: skip
    return {"items": items, "next_cursor": next_cursor}


@bp.post("/<user_id>/tasks")
@bp.arguments(TaskCreateSchema)
@bp.response(201, TaskSchema)
@problems(bp, 400, 401, 403, 404, 413, 415, 422, 429)
def create_task(body: dict[str, Any], user_id: str) -> Task:
    """Add a task; it gets the user's next task number."""
    user = auth.user_for_path(user_id)
    return task_service.create_task(db.session(), user, **body)


@bp.get("/<user_id>/tasks/<int:task_id>")
@cached(bp)
@bp.response(200, TaskSchema)
@problems(bp, 401, 403, 404, 422, 429)
def get_task(user_id: str, task_id: int) -> Task:
    """One task."""
    return task_service.get_task(db.session(), auth.user_for_path(user_id), task_id)


@bp.patch("/<user_id>/tasks/<int:task_id>")
@bp.arguments(TaskUpdateSchema)
@bp.response(200, TaskSchema)
@problems(bp, 400, 401, 403, 404, 413, 415, 422, 429)
def update_task(body: dict[str, Any], user_id: str, task_id: int) -> Task:
    """Change a task's title, description, completion, due date or priority."""
    return task_service.update_task(db.session(), auth.user_for_path(user_id), task_id, **body)


@bp.delete("/<user_id>/tasks/<int:task_id>")
@bp.response(204)
@problems(bp, 401, 403, 404, 422, 429)
def delete_task(user_id: str, task_id: int) -> None:
    """Delete a task; its number is never reused."""
    task_service.delete_task(db.session(), auth.user_for_path(user_id), task_id)
