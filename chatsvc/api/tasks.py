"""A user's tasks over plain REST, the same ones the agent manages."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from .. import auth, db
from ..models import Task
from ..schemas import (
    TaskCreateSchema,
    TaskListArgsSchema,
    TaskPageSchema,
    TaskSchema,
    TaskUpdateSchema,
)
from ..services import pages
from ..services import tasks as task_service
from . import problems

bp = Blueprint("tasks", __name__, url_prefix="/api", description="Tasks.")


@bp.get("/<user_id>/tasks")
@bp.arguments(TaskListArgsSchema, location="query")
@bp.response(200, TaskPageSchema)
@problems(bp, 401, 403, 404, 422, 429)
def list_tasks(args: dict[str, Any], user_id: str) -> dict[str, Any]:
    """The user's tasks by number, optionally only pending or completed ones."""
    position = pages.decode(args["cursor"], int, maximum=pages.INT32_MAX)
    found = task_service.list_tasks(
        db.session(), auth.user_for_path(user_id), args["status"],
        after=position[0] if position else 0, limit=args["limit"] + 1,
    )  # fmt: skip
    items = found[: args["limit"]]
    more = len(found) > args["limit"]
    return {"items": items, "next_cursor": pages.encode(items[-1].task_id) if more else None}


@bp.post("/<user_id>/tasks")
@bp.arguments(TaskCreateSchema)
@bp.response(201, TaskSchema)
@problems(bp, 400, 401, 403, 404, 413, 415, 422, 429)
def create_task(body: dict[str, Any], user_id: str) -> Task:
    """Add a task; it gets the user's next task number."""
    user = auth.user_for_path(user_id)
    return task_service.create_task(db.session(), user, body["title"], body["description"])


@bp.get("/<user_id>/tasks/<int:task_id>")
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
    """Change a task's title, description or completion."""
    return task_service.update_task(db.session(), auth.user_for_path(user_id), task_id, **body)


@bp.delete("/<user_id>/tasks/<int:task_id>")
@bp.response(204)
@problems(bp, 401, 403, 404, 422, 429)
def delete_task(user_id: str, task_id: int) -> None:
    """Delete a task; its number is never reused."""
    task_service.delete_task(db.session(), auth.user_for_path(user_id), task_id)
