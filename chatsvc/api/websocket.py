"""The WebSocket transport (contract §5, "WebSocket"): many turns over one socket, on the same
turn engine as the JSON and SSE routes, with the same event bodies as SSE (`sse.named_event`).

    client → {"type": "auth", "token"}                     only as the first frame
             {"type": "message", "message", "conversation_id"?}   (session route: "session_id"?)
             {"type": "cancel", "message_id"}
    server → {"event", "id", "data"}: meta, delta, tool_call, sources, then done or error

One turn at a time per socket: a message while a turn runs is refused with an `error` event
(409 `turn_in_progress`); wait for its `done`/`error`, or open another socket. An `error`
about a frame that started no turn has `"id": null`. A cancelled turn ends with a `done`
whose status is `cancelled` (the text so far, as stored).
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request
from flask_sock import ConnectionClosed, Sock
from limits import parse_many
from marshmallow import Schema, ValidationError, fields
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.routing import WebsocketMismatch

from .. import auth, observability
from ..errors import (
    ApiError,
    Forbidden,
    NotFound,
    TurnFinished,
    TurnInProgress,
    Unauthorized,
    Unavailable,
    log_failure,
    problem,
    problem_body,
)
from ..schemas import SessionChatSchema, UserChatSchema
from ..services.conversations import SESSION, USER, Access
from ..services.turns import TurnFailed, TurnHandle, TurnRequest, TurnResult
from . import Blueprint, problems, sse

bp = Blueprint(
    "websocket", __name__, url_prefix="/api",
    description="Chat turns over a WebSocket (contract §5): see the README's WebSocket section.",
)  # fmt: skip
# 422: an unknown query parameter; 405: a plain GET of /api/chat/ws (a POST route has its path)
UPGRADE_ERRORS = (401, 403, 404, 405, 422, 426, 429)
OPENED = {
    "101": {"description": "Switching Protocols: the socket is open; frames as the README says."}
}
sock = Sock()

AUTH_SECONDS = 5.0  # a socket that must authenticate by frame has this long to do it
NORMAL_CLOSURE, POLICY_VIOLATION = 1000, 1008
LINGER_SECONDS = 2.0  # a closed socket's last reads (_LingeringSocket)
PUMP_WAIT = 15.0  # a pump forwards events only: it has nothing to do on silence
CHAT_SCOPE = "chat"  # the chat routes' shared rate-limit bucket (extensions._scope)


class SessionMessageFrame(SessionChatSchema):
    session_id = fields.String(
        load_default=None, allow_none=True, metadata={"description": "Continue this session."}
    )


class CancelFrame(Schema):
    message_id = fields.String(required=True)


class BadFrame(ApiError):
    status, code, detail = 400, "bad_request", "The frame is not a JSON text frame."


class FrameInvalid(ApiError):
    status, code, detail = 422, "validation_error", "The frame is not valid."


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


def init_app(app: Flask, api: Any) -> None:
    """The socket's frame limits and keep-alive pings (simple-websocket closes a socket
    whose client stops answering them), then the routes."""
    idle = app.config["WS_IDLE_SECONDS"]
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS",
        {
            "ping_interval": min(app.config["SSE_PING_SECONDS"], idle / 3),
            "max_message_size": app.config["MAX_CONTENT_LENGTH"],  # larger: closed with 1009
        },
    )
    api.register_blueprint(bp)
    app.register_error_handler(WebsocketMismatch, _mismatch)


def _mismatch(error: WebsocketMismatch) -> Response:
    """A plain request to a socket route: 426 (with `Upgrade: websocket`); an upgrade asked
    of a route that is not a socket: 400."""
    if request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        return problem(400, "bad_request", "This route does not open a WebSocket.")
    return problem(
        426, "upgrade_required", "This route opens a WebSocket: send an Upgrade request.",
        headers={"Upgrade": "websocket"},
    )  # fmt: skip


@bp.before_request
def _before_upgrade() -> None:
    """Refused before the handshake, as HTTP problems: a foreign Origin (403: no cross-site
    WebSocket hijacking), a bad token in the header (401), another user's path (403)."""
    _check_origin()
    # gunicorn's socket, and werkzeug's (`flask run`, the browser tests' server): simple-websocket
    # takes whichever the server gave.
    for key in ("gunicorn.socket", "werkzeug.socket"):
        raw = request.environ.get(key)
        if raw is not None:
            request.environ[key] = _LingeringSocket(raw)
    if _needs_auth_frame():
        user_id = (request.view_args or {}).get("user_id")
        if user_id is not None and not auth.USER_ID.fullmatch(user_id):
            raise NotFound()
        return
    _access()


class _LingeringSocket:
    """gunicorn's client socket, closed as RFC 6455 §7.1.1 asks: the client may still be
    sending after the server's close frame (the rest of a frame over the size limit), and
    closing with unread data sends a reset that can destroy the close frame (1009) before
    the client reads it. So: stop writing, read what still comes for up to LINGER_SECONDS
    (the client's own close ends it at once), then close."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def close(self) -> None:
        deadline = time.monotonic() + LINGER_SECONDS
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
            self._sock.settimeout(LINGER_SECONDS)
            while time.monotonic() < deadline and self._sock.recv(65536):
                continue  # drained and dropped: the peer's last bytes, so close() sends no RST
        self._sock.close()


@sock.route("/<user_id>/chat/ws", bp=bp)
@bp.doc(responses=OPENED)
@problems(bp, *UPGRADE_ERRORS)
def user_socket(ws: Any, user_id: str) -> None:
    """Turns with the Todo assistant over one WebSocket."""
    _Socket(ws, USER).serve()


@sock.route("/chat/ws", bp=bp)
@bp.doc(responses=OPENED)
@problems(bp, *UPGRADE_ERRORS)
def session_socket(ws: Any) -> None:
    """Knowledge-session turns over one WebSocket."""
    _Socket(ws, SESSION).serve()


def _check_origin() -> None:
    """A browser always sends Origin: it must be one of CORS_ORIGINS, or the service's own
    (the demo page). Clients that are not browsers send none."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    allowed = {o.strip().rstrip("/") for o in current_app.config["CORS_ORIGINS"].split(",")}
    parts = urlsplit(origin)
    same_site = parts.scheme in ("http", "https") and parts.netloc == request.host
    if not (same_site or "*" in allowed or origin.rstrip("/") in allowed):
        raise Forbidden("This origin may not open a WebSocket here (CORS_ORIGINS).")


def _needs_auth_frame() -> bool:
    """No Authorization header where a token is required: the first frame must carry one."""
    if request.headers.get("Authorization") is not None:
        return False
    config = current_app.config
    if config["AUTH_MODE"] != "required":
        return False
    if "user_id" in (request.view_args or {}):
        return True
    return not config["ALLOW_ANONYMOUS_SESSIONS"]


def _access() -> Access:
    user_id = (request.view_args or {}).get("user_id")
    return auth.user_access(user_id) if user_id is not None else auth.session_access()


def _rate_limit() -> None:
    """Each message spends the chat budget of its caller, the one the chat POSTs share
    (RATELIMIT_CHAT, same key, same storage): 429 when it is spent."""
    limiter = next(iter(current_app.extensions.get("limiter", ())), None)
    if limiter is None or not limiter.enabled:
        return
    prefix = current_app.config.get("RATELIMIT_KEY_PREFIX", "")
    args = [a for a in (prefix, auth.limit_key(), CHAT_SCOPE) if a]
    try:
        strategy = limiter.limiter
        for item in parse_many(current_app.config["RATELIMIT_CHAT"]):
            if not strategy.hit(item, *args):
                observability.RATE_LIMITED.labels("chat").inc()
                reset = strategy.get_window_stats(item, *args).reset_time
                retry = max(1, math.ceil(reset - time.time()))
                raise RateLimited(
                    f"Too many requests (limit: {item}); retry after {retry} seconds.",
                    retry_after=retry,
                )
    except RateLimited:
        raise
    except Exception:  # the storage is unreachable: fail open, as the HTTP routes do
        current_app.logger.warning("rate limit storage unreachable: a WebSocket turn passes")


@dataclass
class _Turn:
    handle: TurnHandle
    message_id: str
    counter: int = 0
    ended: bool = False  # a done or error was sent


class _Socket:
    """One connection: a reader thread and each turn's pump put what happens into one inbox;
    this (the request's own greenlet) is the only one that sends."""

    def __init__(self, ws: Any, kind: str) -> None:
        self.ws, self.kind = ws, kind
        self.inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.access: Access | None = None
        self.turn: _Turn | None = None
        self.finished: set[str] = set()
        self.idle = current_app.config["WS_IDLE_SECONDS"]
        self.heard = time.monotonic()

    def serve(self) -> None:
        threading.Thread(target=self._read, daemon=True, name="ws-reader").start()
        try:
            # An auth frame may come first where no header was sent (where a token is
            # required, it must); after the socket's first frame, none is accepted.
            may_authenticate = request.headers.get("Authorization") is None
            if _needs_auth_frame():
                if not self._authenticate():
                    return
                may_authenticate = False
            else:
                self.access = _access()
            self._loop(may_authenticate)
        finally:
            if self.turn is not None and not self.turn.ended:
                self.turn.handle.cancel()  # the client has gone: stored `cancelled`

    def _read(self) -> None:
        try:
            while True:
                self.inbox.put(("frame", self.ws.receive()))
        except ConnectionClosed:
            self.inbox.put(("closed",))
        except Exception as error:  # a broken socket ends the connection, never the worker
            log_failure("websocket read failed", error)
            self.inbox.put(("closed",))

    def _authenticate(self) -> bool:
        """The first frame, within AUTH_SECONDS: {"type": "auth", "token"}. Else 1008."""
        try:
            item = self.inbox.get(timeout=AUTH_SECONDS)
        except queue.Empty:
            self._close(POLICY_VIOLATION, "authentication timeout")
            return False
        if item[0] != "frame":
            return False
        self.heard = time.monotonic()
        return self._auth_frame(item[1])

    def _auth_frame(self, data: Any) -> bool:
        """The token of an auth frame becomes the caller; a bad one (or no auth frame where
        one is required) gets an `error` event and closes the socket (1008)."""
        try:
            frame = _parse(data)
            if frame.get("type") != "auth":
                raise Unauthorized('Send {"type": "auth", "token"} first.')
            self._use_token(frame)
        except ApiError as error:
            self._error(error)
            self._close(POLICY_VIOLATION, "authentication failed")
            return False
        return True

    def _use_token(self, frame: dict[str, Any]) -> None:
        if set(frame) - {"type", "token"}:
            raise FrameInvalid("An auth frame has only `type` and `token`.")
        auth.authenticate(frame.get("token"))
        self.access = _access()

    def _loop(self, may_authenticate: bool) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=self._wait())
            except queue.Empty:
                if self.turn is None and time.monotonic() - self.heard >= self.idle:
                    self._close(NORMAL_CLOSURE, "idle timeout")
                    return
                continue
            what = item[0]
            if what == "closed":
                return
            try:
                if what == "frame":
                    self.heard = time.monotonic()
                    if may_authenticate and _is_auth(item[1]):
                        if not self._auth_frame(item[1]):
                            return
                    else:
                        self._on_frame(item[1])
                    may_authenticate = False
                elif what == "event":
                    self._on_event(item[1], item[2])
                elif what == "end":
                    self._on_end(item[1])
            except ConnectionClosed:
                return

    def _wait(self) -> float:
        if self.turn is not None:
            return self.idle
        return max(0.01, self.heard + self.idle - time.monotonic())

    # Frames from the client ----------------------------------------------------------------

    def _on_frame(self, data: Any) -> None:
        try:
            frame = _parse(data)
            kind = frame.get("type")
            if kind == "message":
                _rate_limit()  # every message frame counts, as every chat POST does
                self._start(frame)
            elif kind == "cancel":
                self._cancel(_load(CancelFrame(), frame))
            elif kind == "auth":
                raise BadFrame(
                    "An auth frame is accepted only as the first frame of a socket opened "
                    "without an Authorization header."
                )
            else:
                raise FrameInvalid(
                    "type: Must be one of: auth, message, cancel.",
                    errors={"json": {"type": ["Must be one of: auth, message, cancel."]}},
                )
        except ApiError as error:
            self._error(error)
        except (OperationalError, PoolTimeout):
            self._error(Unavailable("The database is unavailable; retry later."))
        except ConnectionClosed:
            raise
        except Exception as error:
            log_failure("websocket frame failed", error)
            self._error(ApiError())

    def _start(self, frame: dict[str, Any]) -> None:
        turns = current_app.extensions["chatsvc.turns"]
        turns.admission.check()  # a worker that admits no turn: before the frame is validated
        if self.kind == USER:
            body = _load(UserChatSchema(), frame)
            conversation_id = body["conversation_id"]
        else:
            body = _load(SessionMessageFrame(), frame)
            conversation_id = body["session_id"]
        if self.turn is not None:
            raise TurnInProgress(
                "A turn is already running on this socket; wait for its done or error event."
            )
        assert self.access is not None
        g.started = time.perf_counter()  # the `done` event's timing counts from here
        handle = turns.take(
            TurnRequest(self.access, self.kind, body["message"], conversation_id,
                        client_address=request.remote_addr)
        )  # fmt: skip
        self.turn = _Turn(handle, handle.started.message_id)
        threading.Thread(target=self._pump, args=(self.turn,), daemon=True, name="ws-turn").start()

    def _cancel(self, frame: dict[str, Any]) -> None:
        message_id = frame["message_id"]
        if self.turn is not None and self.turn.message_id == message_id:
            self.turn.handle.cancel()
        elif message_id in self.finished:
            raise TurnFinished()
        else:
            raise NotFound("No turn with this message id runs on this socket.")

    # The running turn ----------------------------------------------------------------------

    def _pump(self, turn: _Turn) -> None:
        events = turn.handle.events(PUMP_WAIT)
        try:
            for event in events:
                if event is not None:
                    self.inbox.put(("event", turn, event))
        except Exception as error:  # the engine reports failures as TurnFailed; never a crash
            log_failure("websocket turn failed", error)
            self.inbox.put(("event", turn, TurnFailed(ApiError())))
        finally:
            events.close()
            self.inbox.put(("end", turn))

    def _on_event(self, turn: _Turn, event: Any) -> None:
        named = sse.named_event(event)
        if named is None:
            return
        if isinstance(event, TurnResult | TurnFailed):
            turn.ended = True
        turn.counter += 1
        self._send(named[0], turn.counter, named[1])

    def _on_end(self, turn: _Turn) -> None:
        """The run is over. One that ended without a result (closed early) gets the reply as
        stored for its `done`; a cancelled run ends with its own `cancelled` result."""
        if not turn.ended:
            stored = current_app.extensions["chatsvc.turns"].stored(turn.message_id)
            self._on_event(turn, stored)
        self.finished.add(turn.message_id)
        self.turn = None
        self.heard = time.monotonic()

    # Sending -------------------------------------------------------------------------------

    def _send(self, name: str, event_id: int | None, data: dict[str, Any]) -> None:
        text = json.dumps({"event": name, "id": event_id, "data": data}, ensure_ascii=False)
        self.ws.send(text)

    def _error(self, error: ApiError) -> None:
        """An `error` event about a frame that started no turn (its id is null). A socket has no
        headers: a Retry-After (503 `overloaded`, `unavailable`) travels as `retry_after`."""
        extra = dict(error.extra)
        retry = error.headers.get("Retry-After", "")
        if retry.isdigit():
            extra.setdefault("retry_after", int(retry))
        body = problem_body(error.status, error.code, error.detail, **extra)
        self._send("error", None, body)

    def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):  # already closed by the client
            self.ws.close(reason=code, message=reason)
        # Wait for the socket's reader to see the client's answer and close the socket
        # (_LingeringSocket): the server that runs this handler closes its connection as soon as
        # the handler returns, and a close with unread client bytes (a frame the client sent
        # meanwhile) is a reset that can destroy the error event and close frame before the
        # browser reads them (werkzeug's server: the demo's "401" read as a network error).
        self.ws.thread.join(LINGER_SECONDS)


def _is_auth(data: Any) -> bool:
    try:
        return _parse(data).get("type") == "auth"
    except ApiError:
        return False


def _parse(data: Any) -> dict[str, Any]:
    """A text frame holding a JSON object with a string `type`, read as strictly as request
    bodies are (no NaN, numbers that fit, nesting bounded)."""
    if not isinstance(data, str):
        raise BadFrame("Send JSON in text frames; binary frames are not accepted.")
    try:
        frame = current_app.json.loads(data)
    except (ValueError, RecursionError) as exc:
        reason = exc.args[0] if isinstance(exc, ValueError) and exc.args else "malformed"
        raise BadFrame(f"The frame is not valid JSON: {reason}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise FrameInvalid(
            "type: A frame is a JSON object with a string `type`.",
            errors={"json": {"type": ["A frame is a JSON object with a string `type`."]}},
        )
    return frame


def _load(schema: Any, frame: dict[str, Any]) -> dict[str, Any]:
    """The frame (less its `type`) through the same schema as the POST route's body."""
    fields_only = {key: value for key, value in frame.items() if key != "type"}
    try:
        return schema.load(fields_only)
    except ValidationError as error:
        messages = (
            error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
        )
        detail = " ".join(
            f"{name}: {problems[0] if isinstance(problems, list) and problems else 'invalid'}"
            for name, problems in messages.items()
        )
        raise FrameInvalid(detail or None, errors={"json": messages}) from None
