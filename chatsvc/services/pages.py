"""Opaque cursors for `{"items", "next_cursor"}` lists."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any

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
            isinstance(v, t) and not isinstance(v, bool) and (t is not int or 0 <= v <= maximum)
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
