"""Tasks use cases. Each function is one unit of work and ends in one commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.types import Date

from ..db import utcnow
from ..errors import NotFound, ValidationFailed
from ..models import Task, TaskCounter
from . import pages
from .words import words

STATUSES = ("all", "pending", "completed")
PRIORITIES = ("low", "normal", "high")
SORTS = ("task_id", "due_date", "priority", "updated_at")
MAX_TASK_ID = 2**31 - 1
_UNSET: Any = object()


class TaskNotFound(NotFound):
    detail = "The task does not exist."


@dataclass(frozen=True)
class TaskFilter:
    """Which of a user's tasks a list shows; `q` matches every word in title or description."""

    status: str = "all"
    q: str | None = None
    due_before: date | None = None  # inclusive
    due_after: date | None = None  # inclusive
    priority: str | None = None


def create_task(
    session: Session,
    user_id: str,
    title: str,
    description: str = "",
    *,
    due_date: date | None = None,
    priority: str = "normal",
) -> Task:
    task = Task(
        user_id=user_id,
        task_id=_next_task_id(session, user_id),
        title=title,
        description=description or "",
        due_date=due_date,
        priority=priority,
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
    **filters: Any,
) -> list[Task]:
    """The user's tasks by number (the agent's view); `filters` are TaskFilter's other fields."""
    query = _filtered(user_id, TaskFilter(status, **filters)).where(Task.task_id > after)
    tasks = list(session.scalars(query.order_by(Task.task_id).limit(limit)))
    session.commit()
    return tasks


def page_tasks(
    session: Session,
    user_id: str,
    where: TaskFilter,
    sort: str = "task_id",
    limit: int = 20,
    cursor: str | None = None,
) -> tuple[list[Task], str | None]:
    """One page of the user's tasks in `sort` order (a leading `-`: descending), ties broken by
    task number; the cursor holds the last task's sort key and number (keyset pagination)."""
    descending, name = sort.startswith("-"), sort.lstrip("-")
    key = _SORT_KEYS[name](descending)
    query = _filtered(user_id, where)
    if name == "task_id":
        position = pages.decode(cursor, int, maximum=pages.INT32_MAX)
        if position:
            query = query.where(
                Task.task_id < position[0] if descending else Task.task_id > position[0]
            )
        query = query.order_by(Task.task_id.desc() if descending else Task.task_id)
    else:
        position = pages.decode(cursor, int, int, maximum=pages.INT64_MAX)
        if position:
            value, after = key.decode(position[0]), position[1]
            beyond = key.column < value if descending else key.column > value
            query = query.where(or_(beyond, and_(key.column == value, Task.task_id > after)))
        query = query.order_by(key.column.desc() if descending else key.column, Task.task_id)
    rows = list(session.scalars(query.limit(limit + 1)))
    session.commit()
    items = rows[:limit]
    if len(rows) <= limit:
        return items, None
    last = items[-1]
    if name == "task_id":
        return items, pages.encode(last.task_id)
    return items, pages.encode(key.encode(last), last.task_id)


def _filtered(user_id: str, where: TaskFilter) -> Any:
    query = select(Task).where(Task.user_id == user_id)
    if where.status != "all":
        query = query.where(Task.completed.is_(where.status == "completed"))
    if where.priority is not None:
        query = query.where(Task.priority == where.priority)
    if where.due_before is not None:
        query = query.where(Task.due_date <= where.due_before)
    if where.due_after is not None:
        query = query.where(Task.due_date >= where.due_after)
    for word in words(where.q or ""):
        query = query.where(
            or_(
                func.lower(Task.title).contains(word, autoescape=True),
                func.lower(Task.description).contains(word, autoescape=True),
            )
        )
    return query


@dataclass(frozen=True)
class _SortKey:
    """A sort column as an integer a cursor can hold, and back."""

    column: Any
    encode: Any
    decode: Any


def _due_key(descending: bool) -> _SortKey:
    # Tasks without a due date come last in either direction.
    missing = date.min if descending else date.max
    return _SortKey(
        func.coalesce(Task.due_date, literal(missing, Date)),
        lambda task: (task.due_date or missing).toordinal(),
        lambda number: _from_ordinal(number),
    )


def _from_ordinal(number: int) -> date:
    if not 1 <= number <= date.max.toordinal():
        raise _forged()
    return date.fromordinal(number)


def _priority_key(descending: bool) -> _SortKey:
    rank = case({name: n for n, name in enumerate(PRIORITIES)}, value=Task.priority, else_=1)
    return _SortKey(rank, lambda task: PRIORITIES.index(task.priority), lambda number: number)


def _updated_key(descending: bool) -> _SortKey:
    return _SortKey(
        Task.updated_at,
        lambda task: pages.to_micros(task.updated_at),
        pages.from_micros,
    )


_SORT_KEYS = {
    "task_id": lambda descending: None,
    "due_date": _due_key,
    "priority": _priority_key,
    "updated_at": _updated_key,
}


def _forged() -> ValidationFailed:
    return ValidationFailed(
        "cursor: Not a cursor this list returned.",
        errors={"query": {"cursor": ["Not a cursor this list returned."]}},
    )


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
    due_date: date | None = _UNSET,
    priority: str | None = None,
) -> Task:
    """Change the given fields (`due_date=None` removes the due date); completing a task
    records when, reopening it clears that."""
    task = _find(session, user_id, task_id, lock=True)
    changes = {"title": title, "description": description, "priority": priority}
    for name, value in changes.items():
        if value is not None:
            setattr(task, name, value)
    if due_date is not _UNSET:
        task.due_date = due_date
    now = utcnow()
    if completed is not None and completed != task.completed:
        task.completed = completed
        task.completed_at = now if completed else None
    task.updated_at = now
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
