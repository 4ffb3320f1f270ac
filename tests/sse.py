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


class LiveStream:
    """A chat POST's event stream read as it arrives, over a real socket: `next()` is the next
    event (comments skipped), None once the server has ended the stream."""

    def __init__(self, host: str, port: int, path: str, body: dict[str, Any], **headers: str):
        self._open(host, port, "POST", path, json.dumps(body),
                   {"Content-Type": "application/json", **headers})  # fmt: skip

    def _open(self, host: str, port: int, method: str, path: str, body: str | None,
              headers: dict[str, str]) -> None:  # fmt: skip
        import http.client

        self.connection = http.client.HTTPConnection(host, port, timeout=15)
        self.connection.request(
            method, path, body=body, headers={"Accept": "text/event-stream", **headers}
        )
        self.response = self.connection.getresponse()
        self.events: list[Event] = []

    def next(self) -> Event | None:
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\r\n")
            if text:
                if ": " in text and not text.startswith(":"):
                    name, value = text.split(": ", 1)
                    fields[name] = value
                continue
            if "event" in fields:
                event = Event(fields["event"], int(fields["id"]), json.loads(fields["data"]))
                self.events.append(event)
                return event
            fields = {}

    def until(self, name: str, count: int = 1) -> list[Event]:
        """Read until `count` events named `name` have come (all events so far)."""
        while sum(event.name == name for event in self.events) < count:
            if self.next() is None:
                raise AssertionError(f"the stream ended before {count} {name} events")
        return self.events

    def rest(self) -> list[Event]:
        while self.next() is not None:
            pass
        return self.events

    def close(self) -> None:
        self.connection.close()


class LiveGet(LiveStream):
    """A GET of a turn's events link (…/events), read as it arrives."""

    def __init__(self, host: str, port: int, path: str, **headers: str):
        self._open(host, port, "GET", path, None, headers)
