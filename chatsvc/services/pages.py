"""Opaque cursors for `{"items", "next_cursor"}` lists."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from ..errors import ValidationFailed


def encode(*position: Any) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def decode(cursor: str | None, *types: type, maximum: int = INT64_MAX) -> tuple[Any, ...] | None:
    """The position a cursor encodes, checked against the expected types and the integer range
    its column holds (a forged, out-of-range number is a database error); 422 if it is not ours."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError):
        position = None
    if (
        not isinstance(position, list)
        or len(position) != len(types)
        or not all(
            isinstance(v, t)
            and not isinstance(v, bool)
            and (t is not int or 0 <= v <= maximum)
            and (t is not str or v.isprintable())  # no NUL (PostgreSQL refuses it) or controls
            for v, t in zip(position, types, strict=True)
        )
    ):
        raise ValidationFailed(
            "cursor: Not a cursor this list returned.",
            errors={"query": {"cursor": ["Not a cursor this list returned."]}},
        )
    return tuple(position)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """A timestamp as an exact integer, for cursors."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    try:
        return _EPOCH + micros * _MICROSECOND
    except OverflowError:
        raise ValidationFailed(
            "cursor: Not a cursor this list returned.",
            errors={"query": {"cursor": ["Not a cursor this list returned."]}},
        ) from None


def newest_first(
    session: Session,
    query: Select,
    when: InstrumentedAttribute,
    ident: InstrumentedAttribute,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of `query` ordered by (when, ident) descending, with keyset pagination: a
    cursor holds the last row's (when, ident), so pages neither skip nor repeat rows."""
    position = decode(cursor, int, str)
    if position:
        after, after_id = from_micros(position[0]), position[1]
        query = query.where(or_(when < after, and_(when == after, ident < after_id)))
    rows = list(session.scalars(query.order_by(when.desc(), ident.desc()).limit(limit + 1)))
    session.commit()
    items = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode(to_micros(getattr(last, when.key)), getattr(last, ident.key))
    return items, next_cursor
