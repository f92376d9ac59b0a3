"""agentcomm.sync: the blocking API, its twins of every async member, and the misuse errors."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agentcomm
import agentcomm.sync
from agentcomm._sync import stubgen
from agentcomm._sync.introspect import ASYNC_KINDS, PROTOCOL, Kind, members, proxied_classes
from agentcomm._sync.proxy import SyncProxy

WAIT = 20.0  # a guard against hanging, never a timing assertion


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "agentcomm-sync"]


# --- the blocking API on every backend ------------------------------------------------------------


def test_mailbox_request_topics_memory_and_refs_without_await(url: str) -> None:
    with agentcomm.sync.connect(url) as hub:
        assert isinstance(hub, agentcomm.sync.Hub)
        planner, coder = hub.agent("planner"), hub.agent("coder")
        assert isinstance(coder, agentcomm.sync.Agent) and coder.name == "coder"
        msg_id = planner.send("coder", {"n": 1}, priority=2)
        msg = coder.receive(timeout=WAIT)
        assert isinstance(msg, agentcomm.sync.Message)
        assert (msg.id, msg.data, msg.sender, msg.attempt) == (msg_id, {"n": 1}, "planner", 1)
        msg.ack()
        assert msg.settled and hub.queue_depth("coder") == 0

        planner.send_many([agentcomm.Outgoing(to="coder", data=i) for i in range(3)])
        batch = coder.receive_many(3, timeout=WAIT)
        assert [m.data for m in batch] == [0, 1, 2]
        coder.ack_many(batch)  # proxies given back are unwrapped
        assert hub.mailbox_stats("coder").in_flight == 0

        def serve() -> None:
            got = coder.receive(timeout=WAIT)
            assert got is not None
            got.reply({"echo": got.data})

        server = threading.Thread(target=serve)
        server.start()
        reply = planner.request("coder", "hi", timeout=WAIT)
        server.join(WAIT)
        assert isinstance(reply, agentcomm.Reply) and reply.data == {"echo": "hi"}

        with coder.subscribe("jobs.*") as sub:
            assert isinstance(sub, agentcomm.sync.Subscription)
            planner.publish("jobs.a", 1)
            event = sub.next(timeout=WAIT)
            assert event is not None and (event.topic, event.data) == ("jobs.a", 1)
            assert isinstance(event, agentcomm.sync.TopicMessage)
        assert sub.closed and sub.dropped == 0

        kv = planner.memory("plans")
        assert kv.put("a", 1).version == 1
        assert kv.update("a", lambda v: v + 1).value == 2
        watch = kv.watch(include_initial=True)
        first = next(watch)
        assert (first.kind, first.key, first.value) == ("put", "a", 2)
        watch.close()

        ref = hub.refs.store(b"blob" * 100)
        assert hub.refs.resolve(ref) == b"blob" * 100
        assert [a.name for a in hub.agents()] == ["coder", "planner"]


def test_iterators_are_blocking_and_end_when_the_hub_closes(url: str) -> None:
    hub = agentcomm.sync.connect(url)
    agent = hub.agent("a")
    seen: list[object] = []

    def consume() -> None:
        for msg in agent.messages():
            seen.append(msg.data)
            msg.ack()

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(3):
        agent.send("a", i)
    while hub.mailbox_stats("a").pending or len(seen) < 3:
        threading.Event().wait(0.01)
    hub.close()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert sorted(seen) == [0, 1, 2]  # type: ignore[type-var]


def test_a_subscription_iterates_until_closed(url: str) -> None:
    with agentcomm.sync.connect(url) as hub:
        agent = hub.agent("a")
        sub = agent.subscribe("t.>")
        got: list[object] = []

        def consume() -> None:
            for event in sub:
                got.append(event.data)
                if len(got) == 2:
                    sub.close()

        consumer = threading.Thread(target=consume)
        consumer.start()
        agent.publish("t.x", 1)
        agent.publish("t.y", 2)
        consumer.join(WAIT)
        assert got == [1, 2] and sub.closed


def test_many_threads_share_one_hub(url: str) -> None:
    with agentcomm.sync.connect(url) as hub:
        hub.agent("sink")
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                me = hub.agent(f"w{n}")
                for i in range(5):
                    me.send("sink", (n, i))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert errors == []
        assert hub.queue_depth("sink") == 30


def test_works_inside_a_running_event_loop(url: str) -> None:
    """Jupyter: the calling thread runs a loop; the sync hub uses its own thread."""

    async def notebook_cell() -> object:
        with agentcomm.sync.connect(url) as hub:
            agent = hub.agent("nb")
            agent.send("nb", {"cell": 1})
            msg = agent.receive(timeout=WAIT)
            assert msg is not None
            msg.ack()
            return msg.data

    assert asyncio.run(notebook_cell()) == {"cell": 1}


def test_close_is_bounded_ends_the_thread_and_wakes_waiters(url: str) -> None:
    before = len(_loop_threads())
    hub = agentcomm.sync.connect(url)
    agent = hub.agent("a")
    assert len(_loop_threads()) == before + 1
    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            agent.receive()
        except agentcomm.AgentCommError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    hub.close()
    hub.close()  # idempotent
    waiter.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], agentcomm.HubClosed)
    assert len(_loop_threads()) == before
    with pytest.raises(agentcomm.HubClosed, match=r"sync\.connect"):
        agent.send("a", 1)


def test_errors_keep_their_types(url: str) -> None:
    with agentcomm.sync.connect(url) as hub:
        agent = hub.agent("a")
        with pytest.raises(agentcomm.UnknownAgent):
            agent.send("nobody", 1)
        with pytest.raises(agentcomm.InvalidName):
            hub.agent("")
        with pytest.raises(agentcomm.RequestTimeout):
            agent.request("a", "q", timeout=0.05)
    with pytest.raises(agentcomm.ConfigurationError):
        agentcomm.sync.connect("ftp://x")


def test_a_blocking_call_from_the_hubs_own_loop_is_refused() -> None:
    with agentcomm.sync.connect("memory://") as hub:
        kv = hub.memory("ns")

        def reenter(value: object) -> object:
            return hub.agent("x")  # runs on the hub's loop thread: would deadlock

        with pytest.raises(agentcomm.AsyncMisuse, match="own event loop"):
            kv.update("k", reenter)


def test_proxies_compare_by_what_they_wrap() -> None:
    with agentcomm.sync.connect("memory://") as hub:
        a1, a2 = hub.agent("a"), hub.agent("a")
        assert a1 == a2 and hash(a1) == hash(a2) and a1 != hub.agent("b")
        assert "Agent 'a'" in repr(a1)


# --- every async member has a blocking twin -------------------------------------------------------


def _public_async_classes() -> list[type]:
    return [
        obj
        for name in agentcomm.__all__
        if isinstance(obj := getattr(agentcomm, name), type)
        and not issubclass(obj, BaseException)
        and any(m.kind in ASYNC_KINDS for m in members(obj))
    ]


def _stub_classes() -> dict[str, dict[str, ast.FunctionDef | ast.AnnAssign]]:
    tree = ast.parse(stubgen.STUB_PATH.read_text())
    out: dict[str, dict[str, ast.FunctionDef | ast.AnnAssign]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            found: dict[str, ast.FunctionDef | ast.AnnAssign] = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[item.name] = item
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    found[item.target.id] = item
            out[node.name] = found
    return out


def test_every_public_async_member_has_a_blocking_twin() -> None:
    classes = _public_async_classes()
    assert {c.__name__ for c in classes} >= {"Hub", "Agent", "Message", "Subscription"}
    assert classes == proxied_classes()
    stubs = _stub_classes()
    for cls in classes:
        proxy = getattr(agentcomm.sync, cls.__name__)
        assert issubclass(proxy, SyncProxy) and proxy.async_class is cls
        declared = stubs[cls.__name__]
        for m in members(cls):
            where = f"{cls.__name__}.{m.name}"
            twin = inspect.getattr_static(proxy, m.sync_name)
            assert twin is not None, where
            assert m.sync_name in declared, f"sync.pyi lacks {where}: run the stubgen"
            if m.kind in (Kind.PROPERTY, Kind.ATTRIBUTE):
                assert isinstance(twin, property), where
                continue
            assert callable(twin) and not inspect.iscoroutinefunction(twin), where
            assert not inspect.isasyncgenfunction(twin), where
            # the stub takes the same parameters as the async method
            stub = declared[m.sync_name]
            assert isinstance(stub, ast.FunctionDef)
            args = stub.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            assert names == [
                p.name
                for p in inspect.signature(m.obj).parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ], where
            returns = ast.unparse(stub.returns) if stub.returns else ""
            for async_word in ("Awaitable", "Coroutine", "AsyncIterator", "AsyncGenerator"):
                assert async_word not in returns, where
        if any(m.name == "aclose" for m in members(cls)):
            assert callable(proxy.close) and "close" in declared
        for async_name, sync_name in PROTOCOL.items():
            if hasattr(cls, async_name):
                assert hasattr(proxy, sync_name), f"{cls.__name__} lacks {sync_name}"


def test_the_stubs_are_what_the_generator_makes_now() -> None:
    def normalized(text: str) -> str:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = " ".join(node.value.split())
        return ast.dump(tree)

    assert normalized(stubgen.generate()) == normalized(stubgen.STUB_PATH.read_text()), (
        "src/agentcomm/sync.pyi is out of date: run `python -m agentcomm._sync.stubgen`"
    )


def test_a_new_async_method_is_covered_without_edits() -> None:
    from agentcomm._sync.proxy import _make_class

    class Later:
        async def ping(self, n: int) -> int:
            return n + 1

        async def ticks(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i

        @contextlib.asynccontextmanager
        async def held(self) -> AsyncIterator[str]:
            self.log.append("enter")
            yield "inside"
            self.log.append("exit")

        def __init__(self) -> None:
            self.log: list[str] = []

    Later.__module__ = "agentcomm._later"
    kinds = {m.name: m.kind for m in members(Later)}
    assert (kinds["ping"], kinds["ticks"], kinds["held"]) == (
        Kind.ASYNC, Kind.ASYNC_ITER, Kind.ASYNC_CM,
    )  # fmt: skip
    proxy_cls = _make_class(Later)
    with agentcomm.sync.connect("memory://") as hub:
        runner = hub._runner  # type: ignore[attr-defined]
        target = Later()
        later = proxy_cls(target, runner)
        assert later.ping(1) == 2
        assert list(later.ticks(3)) == [0, 1, 2]
        with later.held() as value:
            assert value == "inside" and target.log == ["enter"]
        assert target.log == ["enter", "exit"] and later.log == ["enter", "exit"]


@pytest.mark.slow
def test_users_type_checker_sees_the_blocking_types(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "user.py"
    snippet.write_text(
        "import agentcomm.sync\n"
        "with agentcomm.sync.connect('memory://') as hub:\n"
        "    agent = hub.agent('a')\n"
        "    reveal_type(agent.receive())\n"
        "    reveal_type(agent.messages())\n"
        "    n: int = agent.send('a', 1)\n"  # wrong on purpose: send returns the id
        "    agent.sned('a', 1)\n"  # a typo the checker must catch
        "async def f() -> None:\n"
        "    with agentcomm.connect('memory://'):\n"  # the async hub needs async with
        "        pass\n"
    )
    out, err, status = api.run(["--strict", "--no-incremental", str(snippet)])
    assert status == 1, out + err
    assert 'Revealed type is "agentcomm.sync.Message | None"' in out, out
    assert "Generator[agentcomm.sync.Message" in out, out
    assert 'expression has type "str", variable has type "int"' in out, out
    assert '"Agent" has no attribute "sned"' in out, out
    assert '"Hub" has no attribute "__enter__"' in out, out


# --- misuse of the async API says what to do ------------------------------------------------------


async def test_an_unawaited_call_used_as_its_result_explains(hub: agentcomm.Hub) -> None:
    with pytest.raises(agentcomm.AsyncMisuse, match=r"hub\.agent\(\) is async.*await") as info:
        hub.agent("cli").send("worker", {"x": 1})  # type: ignore[call-arg]  # the misuse
    assert isinstance(info.value, TypeError)
    assert "agentcomm.sync" in str(info.value)
    agent = await hub.agent("cli")
    with pytest.raises(agentcomm.AsyncMisuse, match=r"agent\.receive\(\).*'data'"):
        agent.receive(timeout=0).data  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(agentcomm.AsyncMisuse, match=r"agent\.request\(\)"):
        agent.request("cli", 1).data  # type: ignore[attr-defined]  # noqa: B018


async def test_the_explaining_coroutines_still_work_as_coroutines(hub: agentcomm.Hub) -> None:
    agent = await hub.agent("a")
    await agent.send("a", 1)
    task = asyncio.create_task(agent.receive(timeout=WAIT))
    msg = await asyncio.wait_for(task, WAIT)
    assert msg is not None
    await msg.ack()
    both = await asyncio.gather(hub.agent("b"), agent.receive(timeout=0))
    assert both[0].name == "b" and both[1] is None
    # a task of one has a repr (asyncio's logs and debuggers print it), and is cancellable
    waiting = asyncio.ensure_future(agent.receive(timeout=WAIT))
    assert "receive()" in repr(waiting)
    waiting.cancel()
    assert isinstance((await asyncio.gather(waiting, return_exceptions=True))[0], BaseException)


def test_with_on_the_async_hub_explains() -> None:
    hub = agentcomm.connect("memory://")
    with pytest.raises(agentcomm.AsyncMisuse, match=r"async with agentcomm\.connect") as info:
        hub.__enter__()  # type: ignore[attr-defined]  # what `with connect(...)` calls first
    assert "agentcomm.sync.connect" in str(info.value)


@pytest.mark.parametrize("scheme", ["memory", "sqlite"])
def test_a_hub_reused_in_a_second_asyncio_run_explains(scheme: str, tmp_path: Path) -> None:
    url = "memory://reuse" if scheme == "memory" else f"sqlite:///{tmp_path / 'reuse.db'}"
    hub = agentcomm.connect(url)

    async def first() -> None:
        await hub.open()
        await (await hub.agent("a")).send("a", 1)

    async def second() -> None:
        await hub.agent("a")

    async def reenter() -> None:
        async with hub:
            pass

    asyncio.run(first())
    for again in (second, reenter):
        with pytest.raises(agentcomm.WrongEventLoop, match=r"asyncio\.run") as info:
            asyncio.run(again())
        assert isinstance(info.value, RuntimeError)
        assert "agentcomm.sync" in str(info.value)
    asyncio.run(hub.aclose())  # closing still works from another loop
    assert repr(hub).endswith("closed>")
