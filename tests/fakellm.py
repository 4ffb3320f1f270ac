"""A fake OpenAI-compatible server on 127.0.0.1 speaking the real wire format.

Tests script it with a queue of responses (`say`, `call`, `fail`, `garbage`, `drop`,
`endless`, `slow`) and read back what the model was sent (`requests`). With nothing queued it
echoes the last user message. (The benchmarks have their own, bench/fakellm.py.)

It is an embeddings endpoint too (`POST /v1/embeddings`): each text's vector is a bag of its
hashed words (`fake_vector`), with a few synonyms made one word, so that a paraphrase is near
what it paraphrases while sharing no word with it. `embed_script` queues faults
(`EmbedFault`); `embedding_requests` is what it was sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Response:
    """One scripted answer. `fault` picks a failure instead of a completion."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    usage: tuple[int, int] = (10, 5)
    delay: float = 0.0  # before the response starts
    chunk_delay: float = 0.0  # between streamed chunks
    # status | garbage | drop | drop_midstream | error_midstream | endless
    fault: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def say(text: str, **options: Any) -> Response:
    return Response(text=text, **options)


def call(*calls: tuple[str, dict[str, Any] | str], text: str = "", **options: Any) -> Response:
    """Tool calls; a str argument is sent verbatim (e.g. broken JSON)."""
    return Response(text=text, tool_calls=list(calls), **options)


def fail(status: int, retry_after: str | None = None) -> Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return Response(fault="status", status=status, headers=headers)


def garbage() -> Response:
    return Response(fault="garbage")


def drop(midstream: bool = False) -> Response:
    fault = "drop_midstream" if midstream else "drop"
    return Response(text="a partial answer that is cut off", fault=fault)


def error_midstream() -> Response:
    """A stream that reports an error event (as OpenAI does when overloaded) after some text."""
    return Response(text="a partial answer that breaks off", fault="error_midstream")


def endless(chunk_delay: float = 0.02) -> Response:
    return Response(fault="endless", chunk_delay=chunk_delay)


def slow(seconds: float, text: str = "late") -> Response:
    return Response(text=text, delay=seconds)


# The fake embedding model: a word's synonyms are that word, and words that say nothing of
# what a text is about weigh nothing.
SYNONYMS = {
    "automobile": "car", "automobiles": "car", "vehicle": "car", "cars": "car",
    "purchase": "buy", "purchasing": "buy", "buying": "buy", "acquire": "buy",
    "physician": "doctor", "medic": "doctor",
}  # fmt: skip
FILLER = frozenset(
    "a an and are do does for from how i in is it of on or the to what with".split()  # noqa: SIM905
)
EMBED_DIMENSION = 256


def fake_vector(text: str, dimension: int = EMBED_DIMENSION) -> list[float]:
    """A unit vector: one component per distinct hashed word (after SYNONYMS), counted."""
    vector = [0.0] * dimension
    words = [SYNONYMS.get(w, w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in FILLER]
    for word in words or [""]:
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dimension] += 1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


@dataclass
class EmbedFault:
    """One scripted embeddings answer instead of the vectors: `status` (an HTTP error),
    `delay` (seconds before answering), `nan`, `dimension` (a vector one number short), `count`
    (one vector fewer than texts), `strings` (numbers as text), `garbage` (not JSON)."""

    kind: str
    status: int = 500
    delay: float = 0.0


class FakeLLM:
    """The server. `url` is the OPENAI_BASE_URL (and the EMBEDDINGS_BASE_URL)."""

    def __init__(self) -> None:
        self.embedding_requests: list[dict[str, Any]] = []
        self._embed_script: list[EmbedFault] = []
        self.embed_always: EmbedFault | None = None  # every embeddings answer, while set
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.peers: list[tuple[str, int]] = []  # each request's client address: its connection
        self._script: list[Response] = []
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # Its loop looks for close() every 0.05 s: at the default 0.5 s each close waited
        # 0.2-0.5 s (a test's teardown, some 300 times a run).
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, *responses: Response) -> None:
        with self._lock:
            self._script.extend(responses)

    def next_response(
        self, body: dict[str, Any], headers: dict[str, str], peer: tuple[str, int] = ("", 0)
    ) -> Response:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.peers.append(peer)
            if self._script:
                return self._script.pop(0)
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        last = users[-1]["content"] if users else ""
        return Response(text=f"fake: {last}")

    def embed_script(self, *faults: EmbedFault) -> None:
        with self._lock:
            self._embed_script.extend(faults)

    def next_embedding(self, body: dict[str, Any]) -> EmbedFault | None:
        with self._lock:
            self.embedding_requests.append(body)
            if self._embed_script:
                return self._embed_script.pop(0)
            return self.embed_always

    def reset(self) -> None:
        """Forget the script and what was asked (one server shared by several tests)."""
        with self._lock:
            self._embed_script.clear()
            self.embedding_requests.clear()
            self.embed_always = None
            self._script.clear()
            self.requests.clear()
            self.headers.clear()
            self.peers.clear()

    def close(self) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()


def _handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without this, Nagle + delayed ACK
            # add ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.endswith("/embeddings"):
                self._embeddings(body, fake.next_embedding(body))
                return
            if not self.path.endswith("/chat/completions"):
                self._json(404, {"error": {"message": "not found"}})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            response = fake.next_response(body, headers, self.client_address)
            if response.delay and fake.stopped.wait(response.delay):
                return
            if response.fault == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if response.fault == "status":
                error = {"error": {"message": "scripted failure", "type": "server_error"}}
                self._json(response.status, error, response.headers)
            elif response.fault == "garbage":
                self._raw(200, b"<html>upstream proxy says hello", "application/json")
            elif body.get("stream"):
                self._stream(body, response)
            else:
                self._json(200, _completion(body, response))

        def _embeddings(self, body: dict[str, Any], fault: EmbedFault | None) -> None:
            texts = body.get("input", [])
            texts = [texts] if isinstance(texts, str) else texts
            vectors: list[Any] = [fake_vector(text) for text in texts]
            if fault is not None and fault.delay and fake.stopped.wait(fault.delay):
                return
            kind = fault.kind if fault is not None else None
            if kind == "status":
                error = {"error": {"message": "scripted failure", "type": "server_error"}}
                self._json(fault.status, error)
                return
            if kind == "garbage":
                self._raw(200, b"<html>upstream proxy says hello", "application/json")
                return
            if kind == "nan":
                vectors[-1] = [float("nan"), *vectors[-1][1:]]
            elif kind == "dimension":
                vectors[-1] = vectors[-1][:-1]
            elif kind == "count":
                vectors = vectors[:-1]
            elif kind == "strings":
                vectors[-1] = [str(x) for x in vectors[-1]]
            data = [
                {"object": "embedding", "index": n, "embedding": vector}
                for n, vector in enumerate(vectors)
            ]
            usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
            reply = {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
            # json.dumps writes NaN as the bare word, as a careless server would
            self._raw(200, json.dumps(reply).encode(), "application/json")

        def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
            self._raw(status, json.dumps(data).encode(), "application/json", headers)

        def _raw(
            self, status: int, data: bytes, kind: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, body: dict[str, Any], response: Response) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for number, chunk in enumerate(_chunks(body, response)):
                    if number and response.chunk_delay and fake.stopped.wait(response.chunk_delay):
                        return
                    if response.fault == "drop_midstream" and number == 3:
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
            except OSError:  # the client went away
                self.close_connection = True

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    return Handler


def _completion(body: dict[str, Any], response: Response) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": response.text or None}
    if response.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": name, "arguments": _arguments(arguments)}}
            for i, (name, arguments) in enumerate(response.tool_calls)
        ]  # fmt: skip
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(response)}],
        "usage": _usage(response),
    }


def _chunks(body: dict[str, Any], response: Response):
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    yield chunk({"role": "assistant", "content": ""})
    if response.fault == "endless":
        while True:
            yield chunk({"content": "and on "})
    for number, piece in enumerate(_pieces(response.text)):
        if response.fault == "error_midstream" and number == 2:
            # and then carries on to a normal end: the error alone must fail the turn
            yield {"error": {"message": "The server is overloaded.", "type": "server_error"}}
        yield chunk({"content": piece})
    for index, (name, arguments) in enumerate(response.tool_calls):
        raw = _arguments(arguments)
        half = len(raw) // 2
        yield chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                     "function": {"name": name, "arguments": ""}}]})  # fmt: skip
        for part in (raw[:half], raw[half:]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    yield chunk({}, _finish_reason(response))
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**chunk({}), "choices": [], "usage": _usage(response)}


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


def _arguments(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _finish_reason(response: Response) -> str:
    return "tool_calls" if response.tool_calls else "stop"


def _usage(response: Response) -> dict[str, int]:
    prompt, completion = response.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip
