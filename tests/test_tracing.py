"""OpenTelemetry: a span per operation, and a trace that crosses processes through the
`traceparent` a message carries in its metadata.

Every traced hub runs in a child interpreter with the SDK's InMemorySpanExporter and writes the
spans it finished to a JSON file: a tracer provider is process-wide, and setting one here would
trace every other test of the session.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from processes import finish, spawn

pytest.importorskip("opentelemetry.sdk")

_SETUP = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

def dump(path):
    spans = [
        {"name": s.name, "trace": s.context.trace_id, "id": s.context.span_id,
         "parent": s.parent.span_id if s.parent else None, "attributes": dict(s.attributes)}
        for s in exporter.get_finished_spans()
    ]
    with open(path, "w") as f:
        json.dump(spans, f)
"""

_SENDER = (
    _SETUP
    + """
async def main(url, out):
    tracer = trace.get_tracer("app")
    async with agentcomm.connect(url) as hub:
        boss = await hub.agent("boss")
        await hub.agent("worker")
        with tracer.start_as_current_span("job"):
            await boss.send("worker", {"n": 1}, type="task", metadata={"k": "v"})
            await boss.publish("jobs.done", {"n": 1})
        mem = boss.memory("notes")
        await mem.put("a", 1)
        await mem.get("a")
        ref = await hub.refs.store(b"x" * 100)
        await hub.refs.resolve(ref)
    dump(out)
"""
)

_RECEIVER = (
    _SETUP
    + """
async def main(url, out, ready):
    async with agentcomm.connect(url) as hub:
        worker = await hub.agent("worker")
        sub = await worker.subscribe("jobs.>", durable="watch", start="all")
        open(ready, "w").close()
        msg = await worker.receive(timeout=30)
        assert msg.metadata["k"] == "v" and "traceparent" in msg.metadata
        await msg.nack(delay=0)
        msg = await worker.receive(timeout=30)
        await msg.ack()
        event = await sub.next(timeout=30)
        await event.ack()
        await sub.aclose()
    dump(out)
"""
)


def _spans(path: Path) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = json.loads(path.read_text())
    return spans


def _one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


async def test_a_trace_spans_two_processes(url: str, backend_name: str, tmp_path: Path) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store lives in one process")
    sent, received, ready = tmp_path / "sent.json", tmp_path / "received.json", tmp_path / "r"
    receiver = spawn(_RECEIVER, url, str(received), str(ready))
    while not ready.exists():  # the durable consumer exists before anything is published
        await asyncio.sleep(0.05)
        assert receiver.poll() is None, receiver.communicate()[1]
    await asyncio.to_thread(finish, spawn(_SENDER, url, str(sent)))
    await asyncio.to_thread(finish, receiver)
    s, r = _spans(sent), _spans(received)

    job = _one(s, "job")
    enqueue = _one(s, "queue.enqueue")
    assert enqueue["parent"] == job["id"] and enqueue["trace"] == job["trace"]
    attrs = enqueue["attributes"]
    assert attrs["agentcomm.agent"] == "boss" and attrs["agentcomm.type"] == "task"
    assert attrs["messaging.destination.name"] == "worker" and attrs["messaging.message.id"]

    dequeues = [x for x in r if x["name"] == "queue.dequeue"]
    assert [d["attributes"]["agentcomm.attempt"] for d in dequeues] == [1, 2]
    for name in ("queue.dequeue", "queue.requeue", "queue.ack"):
        for span in (x for x in r if x["name"] == name):
            # the receiver's spans are children of the sender's enqueue span: one trace
            assert (span["trace"], span["parent"]) == (enqueue["trace"], enqueue["id"]), name
            assert span["attributes"]["messaging.message.id"] == attrs["messaging.message.id"]
            assert span["attributes"]["agentcomm.agent"] == "worker"

    publish = _one(s, "bus.publish")
    deliver = _one(r, "bus.deliver")
    assert (deliver["trace"], deliver["parent"]) == (publish["trace"], publish["id"])
    assert deliver["attributes"]["messaging.destination.name"] == "jobs.done"

    for name in ("shared_memory.put", "shared_memory.get", "refs.store", "refs.resolve"):
        _one(s, name)
    assert _one(s, "shared_memory.put")["attributes"]["agentcomm.key"] == "a"


_UNTRACED = """
import sys
if sys.argv[2] == "missing":
    sys.modules["opentelemetry"] = None  # as if the extra were not installed

async def main(url, how):
    from agentcomm import _observe
    assert not _observe.tracing()
    async with agentcomm.connect(url) as hub:
        a = await hub.agent("a")
        await a.send("a", 1, metadata={"k": "v"})
        msg = await a.receive(timeout=5)
        assert msg.metadata == {"k": "v"}  # no trace context without a tracer provider
        await msg.ack()
"""


@pytest.mark.parametrize("how", ["missing", "no-provider"])
async def test_without_the_extra_or_a_provider_nothing_is_traced(tmp_path: Path, how: str) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    await asyncio.to_thread(finish, spawn(_UNTRACED, url, how))
