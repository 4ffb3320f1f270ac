"""OpenTelemetry tracing: a span tree per request, off unless the standard OTEL_* variables ask.

    HTTP (Flask instrumentation; W3C traceparent in, `traceparent` response header out)
      chatsvc.turn.begin        unit of work 1 (its SQL statements: SQLAlchemy instrumentation)
      invoke_agent <agent>      the agent, step by step (also in the thread of a streamed turn)
        chat <model>            each LLM call (GenAI semantic conventions), OpenAI adapter
        execute_tool <tool>     each tool call, its own unit of work
      chatsvc.turn.finish       unit of work 2

On when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or
OTEL_TRACES_EXPORTER is set (and OTEL_SDK_DISABLED is not true); everything else (sampler,
resource, batch sizes, headers, timeouts) is the SDK's own reading of the OTEL_* variables.
Off, nothing of OpenTelemetry is imported or installed: the hooks below are module-level
no-ops (`span` returns one shared null context, `steps` returns its iterator unchanged).

Under gunicorn the app is built in each worker (it is not preloaded), so each worker has its
own provider and BatchSpanProcessor; gunicorn.conf.py's post_worker_init checks that, and
worker_exit flushes what is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask

log = logging.getLogger(__name__)

_NOOP: contextlib.nullcontext[Any] = contextlib.nullcontext()
_TRUE = frozenset({"true", "1", "yes", "on"})

# The state of this process: None while tracing is off.
_tracer: Any = None
_provider: Any = None
_owns_provider = False  # built here from the environment (not handed in by a test)
_pid: int | None = None


def wanted(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (the only switch)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def enabled() -> bool:
    return _tracer is not None


def init_app(app: Flask, provider: Any = None) -> None:
    """Instrument the app and its database engine when tracing is on. `provider` (a
    TracerProvider) is for embedding and tests (the in-memory exporter); otherwise one is built
    from the OTEL_* variables."""
    global _tracer, _provider, _owns_provider, _pid
    if provider is None:
        if not wanted():
            return
        if _provider is None or not _owns_provider or _pid != os.getpid():
            provider = _provider_from_environment()
            _owns_provider = True
        else:
            provider = _provider
    else:
        _owns_provider = False
    _provider, _pid = provider, os.getpid()
    _tracer = provider.get_tracer("chatsvc")
    _instrument(app, provider)


def shutdown(app: Flask | None = None) -> None:
    """Flush and stop: a worker exits, or a test is over (its instrumentation is removed)."""
    global _tracer, _provider, _owns_provider, _pid
    if _provider is None:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    _provider.force_flush()
    if _owns_provider:
        _provider.shutdown()
    if app is not None and getattr(app, "_is_instrumented_by_opentelemetry", False):
        FlaskInstrumentor.uninstrument_app(app)
    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    _tracer = _provider = _pid = None
    _owns_provider = False
    from . import observability

    observability.trace_id_hook = None


def worker_started() -> None:
    """gunicorn's post_worker_init: the app (and so the provider with its BatchSpanProcessor
    and export thread) is built in the worker, never in the master. Were the app ever
    preloaded, the provider would come from the master: said loudly (the SDK restarts the
    processor's thread after a fork, but the spans of the master's requests would be lost)."""
    if _provider is not None and _owns_provider and _pid != os.getpid():
        log.error("tracing: the tracer provider was built before the fork (preload_app?)")


def _provider_from_environment() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "chatsvc"}))
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER(_ARG)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    for name in (part.strip() for part in names.split(",")):
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name and name != "none":
            raise RuntimeError(f"OTEL_TRACES_EXPORTER={name!r}: chatsvc ships otlp and console")
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip().lower() not in ("", "http/protobuf"):
        raise RuntimeError(f"OTLP protocol {protocol!r}: chatsvc ships OTLP/HTTP (http/protobuf)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*


def _instrument(app: Flask, provider: Any) -> None:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    from . import db, observability

    if not getattr(app, "_is_instrumented_by_opentelemetry", False):
        FlaskInstrumentor.instrument_app(
            app, tracer_provider=provider, response_hook=_traceparent_out, enable_commenter=False
        )
    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:  # one app a process; tests: the newest
        instrumentor.uninstrument()
    # The instrumentation declares SQLAlchemy < 2.1 (no release yet says 2.1); what it hooks
    # (the engine's before/after_cursor_execute events) is unchanged in 2.1, and
    # tests/test_tracing.py checks each unit of work's SQL spans on SQLite and PostgreSQL.
    instrumentor.instrument(
        engine=db.database(app).engine, tracer_provider=provider, skip_dep_check=True
    )
    observability.trace_id_hook = current_trace_id


def _traceparent_out(span: Any, status: str, headers: list[tuple[str, str]]) -> None:
    """The server span's W3C `traceparent` on the response (a caller can find its trace)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if span is None or not span.get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    headers.extend(carrier.items())


def current_trace_id() -> str | None:
    """observability.trace_id_hook: the current span's trace id (32 hex digits), if any."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


# The hooks the turn engine, the toolbox and the OpenAI adapter call ---------------------------


def span(name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A context manager: a span current for the block (off: a shared null context)."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def capture() -> Any:
    """The current context, to continue the trace in another thread (off: None)."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def attached(captured: Any) -> Any:
    """A context manager making a captured context current (in the thread that runs a turn)."""
    if captured is None:
        return _NOOP
    return _Attached(captured)


class _Attached:
    def __init__(self, captured: Any) -> None:
        self._captured = captured
        self._token: Any = None

    def __enter__(self) -> None:
        from opentelemetry import context

        self._token = context.attach(self._captured)

    def __exit__(self, *exc: object) -> None:
        from opentelemetry import context

        context.detach(self._token)


def steps(
    events: Iterator[Any], name: str, attributes: dict[str, Any], last: Callable[[Any], bool]
) -> Iterator[Any]:
    """The agent's events, each step run under one span (its LLM and tool calls are the span's
    children) that ends at the event `last` accepts, or when the agent fails or is stopped. The
    span is current only while the agent computes a step, never while the consumer holds an
    event (a generator must not leave its context behind across `yield`)."""
    if _tracer is None:
        return events
    return _steps(events, name, attributes, last)


def _steps(
    events: Iterator[Any], name: str, attributes: dict[str, Any], last: Callable[[Any], bool]
) -> Iterator[Any]:
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    agent = _tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
    inside = trace.set_span_in_context(agent)
    open_ = True
    try:
        while True:
            token = context.attach(inside)
            try:
                event = next(events)
            except StopIteration:
                return
            except Exception as error:
                agent.record_exception(error)
                agent.set_status(Status(StatusCode.ERROR, type(error).__name__))
                agent.set_attribute("error.type", type(error).__name__)
                raise
            finally:
                context.detach(token)
            if open_ and last(event):
                agent.end()
                open_ = False
            yield event
    finally:
        if open_:
            agent.end()
        close = getattr(events, "close", None)
        if close is not None:
            close()


def llm_call(system: str, model: str, operation: str = "chat") -> Any:
    """A context manager for one model call: a CLIENT span `chat <model>` with the GenAI
    semantic-convention attributes; the block gets an object to report the response with
    (`done(model, input_tokens, output_tokens, finish_reasons)`). Not made current: the call
    streams (yields) from inside it."""
    if _tracer is None:
        return _NOOP_CALL
    return _LLMCall(system, model, operation)


class _NoCall:
    def __enter__(self) -> _NoCall:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def done(self, *args: Any, **kwargs: Any) -> None:
        return None


_NOOP_CALL = _NoCall()


class _LLMCall:
    def __init__(self, system: str, model: str, operation: str) -> None:
        self._attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.system": system,
            "gen_ai.provider.name": system,
            "gen_ai.request.model": model,
        }
        self._name = f"{operation} {model}"
        self._span: Any = None

    def __enter__(self) -> _LLMCall:
        from opentelemetry.trace import SpanKind

        self._span = _tracer.start_span(
            self._name, kind=SpanKind.CLIENT, attributes=self._attributes
        )
        return self

    def done(
        self,
        response_model: str | None,
        input_tokens: int,
        output_tokens: int,
        finish_reasons: list[str],
    ) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            "gen_ai.response.finish_reasons": [reason for reason in finish_reasons if reason],
        }
        if response_model:
            attributes["gen_ai.response.model"] = response_model
        self._span.set_attributes(attributes)

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        if error is not None and not isinstance(error, GeneratorExit):
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            self._span.set_attribute("error.type", type(error).__name__)
        self._span.end()
