"""Observability of each operation: a DEBUG line on the `agentcomm.ops` logger and, with the
`otel` extra installed and a tracer provider configured, an OpenTelemetry span.

Cost when neither is on: `active()` is one logger-level check (cached by `logging`) and, when
opentelemetry is installed, one provider check; call sites on hot paths test it first and
otherwise run their plain code. opentelemetry is imported once, here; without it every
function is a no-op.

W3C trace context travels in message and topic metadata (`traceparent`, `tracestate`): a send
or publish inside a span carries it, and the receiver's spans (`queue.dequeue`, `queue.ack`,
`queue.requeue`, `bus.deliver`) take it as their parent, so they join the sender's trace
across processes. A consumer's own processing span joins it the same way:
`opentelemetry.propagate.extract(msg.metadata)` is the context to start it in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

__all__ = ["NOOP", "Setter", "active", "inject", "log", "span", "tracing"]

#: One DEBUG line per operation (and nothing else).
log = logging.getLogger("agentcomm.ops")

try:  # the optional `otel` extra
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _propagate = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

_configured = False  # set once a real tracer provider is seen (it cannot be replaced)
_LOOK_EVERY = 1.0
_next_look = 0.0
_tracer: Any = None
_TRACE_KEYS = ("traceparent", "tracestate")


def tracing() -> bool:
    """Whether spans are recorded: opentelemetry is installed and a tracer provider is set.

    Until one is set, the provider is looked up at most once a second (the lookup costs
    microseconds): a provider set after agentcomm's first operation takes effect within 1 s.
    """
    global _configured, _tracer, _next_look
    if _configured:
        return True
    if _trace is None:
        return False
    now = time.monotonic()
    if now < _next_look:
        return False
    _next_look = now + _LOOK_EVERY
    provider = _trace.get_tracer_provider()
    if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
        return False
    _configured = True
    _tracer = provider.get_tracer("agentcomm")
    return True


def active() -> bool:
    """Whether an operation has anything to record (a DEBUG line or a span)."""
    return log.isEnabledFor(logging.DEBUG) or tracing()


#: Sets one more attribute on the operation's span (`span` yields it).
Setter = Callable[[str, Any], None]


def _ignore(key: str, value: Any) -> None:
    pass


#: What a call site that found `active()` False uses instead of `span(...)`.
NOOP: AbstractContextManager[Setter] = nullcontext(_ignore)


@contextmanager
def span(
    name: str, attributes: Mapping[str, Any], carrier: Mapping[str, Any] | None = None
) -> Iterator[Setter]:
    """Record operation `name`: a DEBUG line, and a span (a child of the trace context in
    `carrier`, a message's metadata, when it has one; else of the current span). Yields a
    setter for attributes known only later (a new message's id)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s", name, " ".join(f"{k}={v}" for k, v in attributes.items()))
    if not tracing():
        yield _ignore
        return
    context = None
    if carrier is not None and "traceparent" in carrier:
        context = _propagate.extract({k: str(carrier[k]) for k in _TRACE_KEYS if k in carrier})
    attrs = {"messaging.system": "agentcomm", **_attrs(attributes)}
    with _tracer.start_as_current_span(name, context=context, attributes=attrs) as current:

        def set_attribute(key: str, value: Any) -> None:
            if value is not None:
                current.set_attribute(key, value)

        yield set_attribute


def inject(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """`metadata` plus the current span's trace context (when a span is recording)."""
    if not tracing() or not _trace.get_current_span().get_span_context().is_valid:
        return metadata
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    if not carrier:
        return metadata
    return {**(metadata or {}), **carrier}


def _attrs(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes: None dropped, other non-primitive values as text."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | int | float | bool) else str(value)
    return out
