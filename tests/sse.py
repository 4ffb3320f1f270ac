"""Reading Server-Sent Events in tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    name: str
    id: int
    data: dict[str, Any]


def parse(text: str) -> tuple[list[Event], int]:
    """The events of a stream, and how many `: ping` comments it carried."""
    events: list[Event] = []
    pings = 0
    for block in text.split("\n\n"):
        if block.startswith(": ping"):
            pings += 1
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append(Event(fields["event"], int(fields["id"]), json.loads(fields["data"])))
    return events, pings


def text_of(events: list[Event]) -> str:
    return "".join(event.data["text"] for event in events if event.name == "delta")
