"""Tasks use cases. Each function is one unit of work and ends in one commit."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import utcnow
from ..errors import NotFound
from ..models import Task, TaskCounter

STATUSES = ("all", "pending", "completed")
MAX_TASK_ID = 2**31 - 1


class TaskNotFound(NotFound):
    detail = "The task does not exist."


def create_task(session: Session, user_id: str, title: str, description: str = "") -> Task:
    task = Task(
        user_id=user_id,
        task_id=_next_task_id(session, user_id),
        title=title,
        description=description or "",
    )
    session.add(task)
    session.commit()
    return task


def list_tasks(
    session: Session,
    user_id: str,
    status: str = "all",
    *,
    after: int = 0,
    limit: int | None = None,
) -> list[Task]:
    query = select(Task).where(Task.user_id == user_id, Task.task_id > after)
    if status != "all":
        query = query.where(Task.completed.is_(status == "completed"))
    query = query.order_by(Task.task_id).limit(limit)
    tasks = list(session.scalars(query))
    session.commit()
    return tasks


def _find(session: Session, user_id: str, task_id: int, *, lock: bool = False) -> Task:
    task = None
    if 1 <= task_id <= MAX_TASK_ID:
        task = session.get(Task, (user_id, task_id), with_for_update=lock)
    if task is None:
        session.rollback()
        raise TaskNotFound()
    return task


def get_task(session: Session, user_id: str, task_id: int) -> Task:
    task = _find(session, user_id, task_id)
    session.commit()
    return task


def update_task(
    session: Session,
    user_id: str,
    task_id: int,
    *,
    title: str | None = None,
    description: str | None = None,
    completed: bool | None = None,
) -> Task:
    task = _find(session, user_id, task_id, lock=True)
    changes = {"title": title, "description": description, "completed": completed}
    for name, value in changes.items():
        if value is not None:
            setattr(task, name, value)
    task.updated_at = utcnow()
    session.commit()
    return task


def delete_task(session: Session, user_id: str, task_id: int) -> Task:
    task = _find(session, user_id, task_id)
    session.delete(task)
    session.commit()
    return task


def _next_task_id(session: Session, user_id: str) -> int:
    """Bump the user's counter atomically: concurrent creations get unique, gap-free numbers."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(TaskCounter)
        .values(user_id=user_id, last_task_id=1)
        .on_conflict_do_update(
            index_elements=[TaskCounter.user_id],
            set_={"last_task_id": TaskCounter.last_task_id + 1},
        )
        .returning(TaskCounter.last_task_id)
    )
    return session.execute(statement).scalar_one()
