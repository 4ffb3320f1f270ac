"""The performance tricks, in one room, each with the figure that keeps it (bench/RESULTS.md).

Worker-wide, applied by gunicorn's post_worker_init (`tune_worker`):
- `probe_sockets_without_the_hub`: httpcore probes idle keep-alive connections with a
  zero-timeout poll; gevent's cooperative poll made each a trip through the hub (~20 µs
  against 1.4 µs), a quarter of the CPU at 500 turns in flight.
- `collect_less`: gc.freeze after boot and young collections every 10 000 allocations: under
  P2 a worker spent 1.8 s of 25 s collecting (pauses up to 190 ms); after, 0.5-0.7 s (~60 ms).

In the OpenAI-compatible adapter (chatsvc/agent/openai.py), where they belong to the protocol:
- `_ConnectionPools`: eight SDK clients with a pool each, lent least busy first: 1.1-2.4 ms of
  CPU saved per turn (13-25 %) at 250 turns in flight per worker.
- `_with_retries`: the request sent as plain dicts through the SDK's `post`, the answer read
  as plain JSON, a stream read to its end so its connection is reused: the SDK's typed layer
  cost more CPU than the rest of the turn.
"""

from __future__ import annotations

import gc
import select
import types

# Allocations between young collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_worker() -> None:
    """What a gunicorn worker applies once its app is loaded."""
    probe_sockets_without_the_hub()
    collect_less()
    headers_with_the_first_write()
    request_head_with_its_body()


def probe_sockets_without_the_hub() -> None:
    """A zero-timeout poll never blocks, so httpcore may use the system's own."""
    import httpcore2._utils
    from gevent import monkey

    httpcore2._utils.select = types.SimpleNamespace(
        poll=monkey.get_original("select", "poll"),
        select=monkey.get_original("select", "select"),
        POLLIN=select.POLLIN,
    )


def collect_less() -> None:
    """What exists once the worker has booted lives as long as the worker: the collector stops
    walking it, and young collections run less often."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def headers_with_the_first_write() -> None:
    """gunicorn sends a response's head in a send of its own, then each body write: the head
    is held and goes out with the first body bytes (one system call, one TCP segment fewer
    per response). Anything else that writes (close, sendfile, a write that sends no body)
    sends the held head first, as gunicorn would have."""
    from gunicorn import util
    from gunicorn.http import wsgi

    response = wsgi.Response
    if getattr(response, "_chatsvc_holds_head", False):
        return
    write, emit, close, sendfile = (
        response.write,
        response._emit_body,
        response.close,
        response.sendfile,
    )

    def flush(self: wsgi.Response) -> None:
        held = self.__dict__.pop("_held_head", None)
        if held:
            util.write(self.sock, held)

    def held_write(self: wsgi.Response, arg: bytes) -> None:
        if not self.headers_sent:  # what send_headers would send, held
            head = self.default_headers()
            head.extend([f"{k}: {v}\r\n" for k, v in self.headers])
            self._held_head = util.to_bytestring("{}\r\n".format("".join(head)), "latin-1")
            self.headers_sent = True
        try:
            write(self, arg)
        finally:
            flush(self)  # no body bytes carried it (an empty or dropped write, an error)

    def held_emit(self: wsgi.Response, data: bytes) -> None:
        held = self.__dict__.pop("_held_head", None)
        if held is None:
            emit(self, data)
        elif self.chunked:
            self.sock.sendall(b"".join([held, b"%X\r\n" % len(data), data, b"\r\n"]))
        else:
            self.sock.sendall(held + data)

    def held_close(self: wsgi.Response) -> None:
        flush(self)
        close(self)

    def held_sendfile(self: wsgi.Response, respiter: object) -> bool:
        flush(self)
        return sendfile(self, respiter)

    response.write = held_write
    response._emit_body = held_emit
    response.close = held_close
    response.sendfile = held_sendfile
    response._chatsvc_holds_head = True


def request_head_with_its_body() -> None:
    """httpcore writes a request's head and its body in two sends: the head is held and
    goes out with the body (the provider request of every turn)."""
    from httpcore2._sync.http11 import HTTP11Connection

    if getattr(HTTP11Connection, "_chatsvc_holds_head", False):
        return
    send_head = HTTP11Connection._send_request_headers

    def held_send_head(self: HTTP11Connection, request: object) -> None:
        self._holding_head = True
        try:
            send_head(self, request)
        finally:
            self._holding_head = False

    def send_event(self: HTTP11Connection, event: object, timeout: float | None = None) -> None:
        data = self._h11_state.send(event)
        if getattr(self, "_holding_head", False):
            self._held_head = data
            return
        held = self.__dict__.pop("_held_head", None)
        if held:
            data = held + (data or b"")
        if data:
            self._network_stream.write(data, timeout=timeout)

    HTTP11Connection._send_request_headers = held_send_head
    HTTP11Connection._send_event = send_event
    HTTP11Connection._chatsvc_holds_head = True
