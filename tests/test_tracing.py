"""OpenTelemetry tracing (issue 19): the span tree of a turn, W3C traceparent in and out, the
trace id in the log lines, a real OTLP/HTTP export from gunicorn, and nothing at all when off."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest
import sse
from fakellm import call, fail, say
from flask import Flask
from helpers import ok, wait_for
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chatsvc import observability, tracing

ROOT = Path(__file__).resolve().parent.parent
STREAM = {"Accept": "text/event-stream"}
# A caller's trace (W3C trace-context): the service must continue it.
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(
    make_app: Callable[..., Flask], llm_app: Callable[..., Flask], exporter: InMemorySpanExporter
) -> Iterator[Callable[..., Flask]]:
    """Apps traced into the in-memory exporter: `traced()` (local agent), `traced(llm=True)`."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    apps: list[Flask] = []

    def factory(llm: bool = False, **config: Any) -> Flask:
        config["TRACER_PROVIDER"] = provider
        app = llm_app(**config) if llm else make_app(config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        tracing.shutdown(app)


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id
    ]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    found = [
        s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    return sorted(found, key=lambda s: s.start_time)


def the(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in spans if s.name == name]
    assert len(named) == 1, f"{name}: {[s.name for s in spans]}"
    return named[0]


def is_sql(span: ReadableSpan) -> bool:
    return (
        span.kind == SpanKind.CLIENT
        and "db.statement" in (span.attributes or {})
        or ("db.query.text" in (span.attributes or {}))
    )


def turn_tree(exporter: InMemorySpanExporter, trace_id: str, agent: str) -> dict[str, Any]:
    """The turn's spans once they have all ended: the server span and its turn children."""

    def complete() -> list[ReadableSpan] | None:
        spans = spans_of(exporter, trace_id)
        names = {s.name for s in spans}
        wanted = {"chatsvc.turn.begin", f"invoke_agent {agent}", "chatsvc.turn.finish"}
        servers = [s for s in spans if s.kind == SpanKind.SERVER]
        return spans if wanted <= names and servers else None

    spans = wait_for(complete, what="the turn's spans")
    server = [s for s in spans if s.kind == SpanKind.SERVER][0]
    turn = [s for s in children(spans, server) if not is_sql(s)]
    return {"spans": spans, "server": server, "turn": turn}


def check_turn(tree: dict[str, Any], agent: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """HTTP -> unit of work 1 -> agent (-> its LLM and tool calls) -> unit of work 2, in order,
    each unit of work with its SQL statements; the agent span's children returned."""
    spans, server, turn = tree["spans"], tree["server"], tree["turn"]
    assert [s.name for s in turn] == [
        "chatsvc.turn.begin",
        f"invoke_agent {agent}",
        "chatsvc.turn.finish",
    ]
    begin, agent_span, finish = turn
    assert begin.end_time <= agent_span.start_time
    assert agent_span.end_time <= finish.start_time, "the agent span ends before unit of work 2"
    # A streamed turn outlives the Flask instrumentation's server span (it ends as the headers
    # go out); the turn's spans are its children all the same.
    assert begin.start_time >= server.start_time
    for unit in (begin, finish):
        assert any(is_sql(s) for s in children(spans, unit)), f"{unit.name} has its SQL"
    assert agent_span.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent_span.attributes["gen_ai.agent.name"] == agent
    assert finish.attributes["chatsvc.turn.status"] == "completed"
    steps = [s for s in children(spans, agent_span) if not is_sql(s)]
    tool = [s for s in steps if s.name == "execute_tool add_task"]
    assert len(tool) == 1
    assert tool[0].attributes["gen_ai.tool.name"] == "add_task"
    assert any(is_sql(s) for s in children(spans, tool[0])), "the tool's own unit of work"
    return agent_span, steps


def check_traceparent(response: Any, server: ReadableSpan) -> None:
    out = response.headers["traceparent"]
    version, trace_id, span_id, flags = out.split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")
    assert span_id == format(server.context.span_id, "016x")


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_local_turn_span_tree(traced, exporter, streamed):
    client = traced().test_client()
    headers = {"traceparent": TRACEPARENT, **(STREAM if streamed else {})}
    response = client.post("/api/alice/chat", json={"message": "add a task to buy milk"},
                           headers=headers)  # fmt: skip
    assert response.status_code == 200
    if streamed:
        events, _ = sse.parse(response.get_data(as_text=True))
        assert events[-1].name == "done"
    else:
        assert ok(response)["tool_calls"][0]["tool"] == "add_task"
    tree = turn_tree(exporter, CALLER_TRACE, "local")
    server = tree["server"]
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN
    assert server.attributes.get("http.route") == "/api/<user_id>/chat"
    _, steps = check_turn(tree, "local")
    assert [s.name for s in steps] == ["execute_tool add_task"]
    check_traceparent(response, server)


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_openai_turn_span_tree_with_genai_attributes(traced, exporter, fake_llm, streamed):
    client = traced(llm=True).test_client()
    fake_llm.script(
        call(("add_task", {"title": "buy milk"}), usage=(40, 7)),
        say("Added 'buy milk'.", usage=(60, 9)),
    )
    headers = {"traceparent": TRACEPARENT, **(STREAM if streamed else {})}
    response = client.post("/api/alice/chat", json={"message": "add a task to buy milk"},
                           headers=headers)  # fmt: skip
    assert response.status_code == 200
    if streamed:
        events, _ = sse.parse(response.get_data(as_text=True))
        assert events[-1].name == "done"
    tree = turn_tree(exporter, CALLER_TRACE, "fake-model")
    _, steps = check_turn(tree, "fake-model")
    assert [s.name for s in steps] == [
        "chat fake-model",
        "execute_tool add_task",
        "chat fake-model",
    ]
    first, _, second = steps
    for span, tokens, reason in ((first, (40, 7), "tool_calls"), (second, (60, 9), "stop")):
        assert span.kind == SpanKind.CLIENT
        attributes = span.attributes
        assert attributes["gen_ai.system"] == "openai"
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "fake-model"
        assert attributes["gen_ai.response.model"] == "fake-model"
        assert (
            attributes["gen_ai.usage.input_tokens"],
            attributes["gen_ai.usage.output_tokens"],
        ) == tokens
        assert tuple(attributes["gen_ai.response.finish_reasons"]) == (reason,)
    check_traceparent(response, tree["server"])


def test_a_failed_llm_call_is_an_error_span(traced, exporter, fake_llm):
    client = traced(llm=True).test_client()
    fake_llm.script(fail(500))
    response = client.post("/api/alice/chat", json={"message": "hello"},
                           headers={"traceparent": TRACEPARENT})  # fmt: skip
    assert response.status_code == 502
    spans = wait_for(
        lambda: (
            [s for s in spans_of(exporter, CALLER_TRACE) if s.name == "chatsvc.turn.finish"]
            and spans_of(exporter, CALLER_TRACE)
        ),
        what="the failed turn's spans",
    )
    llm = the(spans, "chat fake-model")
    assert llm.status.status_code.name == "ERROR"
    assert llm.attributes["error.type"] == "UpstreamError"
    assert the(spans, "invoke_agent fake-model").status.status_code.name == "ERROR"
    assert the(spans, "chatsvc.turn.finish").attributes["chatsvc.turn.status"] == "failed"


def test_without_a_caller_trace_a_new_one_is_started_and_returned(traced, exporter):
    response = traced().test_client().get("/health/live")
    assert response.status_code == 200
    version, trace_id, span_id, _ = response.headers["traceparent"].split("-")
    assert version == "00" and trace_id != CALLER_TRACE and int(trace_id, 16)
    server = wait_for(lambda: spans_of(exporter, trace_id), what="the request's span")[0]
    assert server.parent is None
    assert format(server.context.span_id, "016x") == span_id


class _Lines(logging.Handler):
    """The JSON log lines as the app's formatter writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(observability.JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_every_log_line_of_the_request_carries_the_trace_id(traced, exporter, fake_llm, streamed):
    # A retried model call logs from inside the turn (the turn's thread when streamed).
    client = traced(llm=True, AGENT_MAX_RETRIES=1, LOG_LEVEL="INFO").test_client()
    fake_llm.script(fail(503, retry_after="0"), say("hello there"))
    lines = _Lines()
    logger = logging.getLogger("chatsvc")
    logger.addHandler(lines)
    try:
        headers = {"traceparent": TRACEPARENT, **(STREAM if streamed else {})}
        response = client.post("/api/chat", json={"message": "hi"}, headers=headers)
        assert response.status_code == 200
        response.get_data()
        wait_for(lambda: any(line.get("path") for line in lines.lines), what="the access line")
    finally:
        logger.removeHandler(lines)
    messages = [line.get("message") or line.get("path") for line in lines.lines]
    assert any(m and m.startswith("retrying the language model") for m in messages), messages
    assert "/api/chat" in messages
    for line in lines.lines:  # the streamed turn's own greenlet's lines too
        assert line["trace_id"] == CALLER_TRACE, line
        assert line["request_id"] == response.headers["X-Request-ID"], line


def test_off_by_default_nothing_of_opentelemetry_is_loaded(database_url):
    """No OTEL_* variable: no provider, no instrumentation, no OpenTelemetry module imported,
    no traceparent on the response (a fresh interpreter: this one has the SDK for the tests)."""
    program = (
        "import os, sys\n"
        "os.environ['CHATSVC_ENV'] = 'testing'\n"
        "from chatsvc import create_app, observability, tracing\n"
        f"app = create_app({{'DATABASE_URL': {database_url!r}}})\n"
        "body = {'message': 'add a task to buy milk'}\n"
        "response = app.test_client().post('/api/chat', json=body)\n"
        "assert response.status_code == 200, response.get_data()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "instrumented = getattr(app, '_is_instrumented_by_opentelemetry', False)\n"
        "print(repr((loaded, 'traceparent' in response.headers, tracing.enabled(),\n"
        "            observability.trace_id_hook, instrumented)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "([], False, False, None, False)"


def test_the_switch_reads_only_the_standard_variables():
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})


class _Receiver:
    """A tiny OTLP/HTTP receiver: keeps each POST's path, content type and body."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_gunicorn_exports_json_and_streamed_turns_over_otlp_http(gunicorn):
    """gevent workers: the streamed turn's greenlet continues the trace too."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    streamed_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    receiver = _Receiver()
    try:
        server = gunicorn(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="200",
            OTEL_SERVICE_NAME="chatsvc-test",
        )  # fmt: skip
        for trace_id, accept in ((CALLER_TRACE, "application/json"),
                                 (streamed_trace, "text/event-stream")):  # fmt: skip
            request = Request(
                server.url + "/api/chat",
                data=json.dumps({"message": "add a task to buy milk"}).encode(),
                headers={"Content-Type": "application/json", "Accept": accept,
                         "traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"},
            )  # fmt: skip
            with urlopen(request, timeout=30) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith(accept)
                assert response.headers["traceparent"].split("-")[1] == trace_id
                assert b"event: done" in response.read() or accept == "application/json"

        def exported() -> dict[str, dict[str, Any]] | None:
            traces: dict[str, dict[str, Any]] = {CALLER_TRACE: {}, streamed_trace: {}}
            for path, content_type, body in list(receiver.posts):
                assert path == "/v1/traces" and content_type == "application/x-protobuf"
                export = ExportTraceServiceRequest.FromString(body)
                for resource_spans in export.resource_spans:
                    service = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            if span.trace_id.hex() in traces:
                                traces[span.trace_id.hex()][span.name] = (span, service)
            done = all("chatsvc.turn.finish" in spans for spans in traces.values())
            return traces if done else None

        traces = wait_for(exported, timeout=30, what="the turns' spans at the receiver")
    finally:
        receiver.close()
    for spans in traces.values():
        # (an anonymous session turn: no task tools; the tool spans are checked above)
        assert {"chatsvc.turn.begin", "invoke_agent local", "chatsvc.turn.finish"} <= set(spans)
        assert {service["service.name"] for _, service in spans.values()} == {"chatsvc-test"}
        servers = [span for span, _ in spans.values() if span.kind == span.SPAN_KIND_SERVER]
        assert len(servers) == 1 and servers[0].parent_span_id.hex() == CALLER_SPAN
        agent, _ = spans["invoke_agent local"]
        finish, _ = spans["chatsvc.turn.finish"]
        assert agent.parent_span_id == servers[0].span_id == finish.parent_span_id
