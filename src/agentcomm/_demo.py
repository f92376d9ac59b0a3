"""The `agentcomm demo` scenario: a planner, two workers, a reviewer and a monitor, for real.

`run_demo(url, emit)` drives the library's public API and reports each step as a `DemoEvent`
to `emit`; the CLI only renders what it gets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec

from ._agent import Agent
from ._errors import AgentCommError
from ._hub import Hub, connect
from ._mailbox import Message
from ._models import AgentInfo, DeadLetter, HubStats, MailboxStats, ScheduleInfo

__all__ = ["DemoEvent", "DemoResult", "DemoStalled", "StoreSnapshot", "run_demo", "snapshot"]

AGENTS = ("planner", "worker-1", "worker-2", "reviewer", "monitor")
TICKS = 2  # scheduled ticks the monitor waits for before the planner cancels the schedule
RETRY_DELAY = 0.1  # seconds a failing worker asks before the next attempt
MAX_ATTEMPTS = 3
_STALL = 10.0  # seconds without any message after which a demo agent gives up


class DemoEvent(msgspec.Struct, frozen=True):
    """One step of the demo: `at` seconds after the start, agent `who` did `what`."""

    at: float
    who: str
    what: str
    detail: str = ""
    #: send, receive, ack, nack, dead, request, reply, schedule, tick, info
    kind: str = "info"


class StoreSnapshot(msgspec.Struct, frozen=True):
    """What a store holds: agents with their mailboxes, dead letters, schedules, counters."""

    url: str
    agents: list[AgentInfo]
    mailboxes: list[MailboxStats]
    dead_letters: list[DeadLetter]
    schedules: list[ScheduleInfo]
    stats: HubStats


async def snapshot(hub: Hub) -> StoreSnapshot:
    """Read a `StoreSnapshot` through an open hub."""
    agents = await hub.agents()
    return StoreSnapshot(
        url=hub.url,
        agents=agents,
        mailboxes=[await hub.mailbox_stats(a.name) for a in agents],
        dead_letters=[d for a in agents for d in await hub.dead_letters(a.name)],
        schedules=await hub.schedules(),
        stats=await hub.stats(),
    )


class DemoResult(msgspec.Struct, frozen=True):
    """What the store holds once the demo is done (read before the hub closes)."""

    store: StoreSnapshot
    ticks: int
    elapsed: float


class DemoStalled(AgentCommError):
    """A demo agent waited too long for a message that should have come."""


async def run_demo(url: str, emit: Callable[[DemoEvent], None]) -> DemoResult:
    """Run the scenario on the store at `url`, reporting every step to `emit`."""
    start = time.monotonic()

    def log(who: str, what: str, detail: str = "", kind: str = "info") -> None:
        emit(DemoEvent(time.monotonic() - start, who, what, detail, kind))

    async def next_message(agent: Agent) -> Message:
        msg = await agent.receive(timeout=_STALL)
        if msg is None:
            raise DemoStalled(f"{agent.name} received nothing for {_STALL:g} s; the demo stalled.")
        return msg

    async with connect(url, lease=5.0) as hub:
        planner, *others = [await hub.agent(name) for name in AGENTS]
        log("hub", "opened", f"{url}, agents: {', '.join(AGENTS)}")
        gave_up = asyncio.Event()
        ticked = asyncio.Event()
        ticks = 0

        async def worker(agent: Agent) -> None:
            while True:
                msg = await next_message(agent)
                if msg.type == "shutdown":
                    await msg.ack()
                    log(agent.name, "stops", "got shutdown")
                    return
                title = msg.data["title"]
                origin = f"from {msg.sender}, attempt {msg.attempt}/{msg.max_attempts}"
                log(agent.name, f"receives {msg.type} {title!r}", origin, "receive")
                if not msg.data.get("fail"):
                    await msg.ack()
                    log(agent.name, f"acks {title!r}", "done", "ack")
                    continue
                await msg.nack(delay=RETRY_DELAY)
                last = msg.attempt >= msg.max_attempts
                why = "failed on the last attempt" if last else f"failed, retry in {RETRY_DELAY} s"
                log(agent.name, f"nacks {title!r}", why, "nack")
                if last:
                    gave_up.set()

        async def reviewer(agent: Agent) -> None:
            while True:
                msg = await next_message(agent)
                if msg.type == "shutdown":
                    await msg.ack()
                    log(agent.name, "stops", "got shutdown")
                    return
                log(agent.name, f"receives {msg.type} request", f"from {msg.sender}", "receive")
                verdict = {"approved": True, "comment": "looks good, ship it"}
                await msg.reply(verdict, type="verdict")
                log(agent.name, "replies", f"{verdict}", "reply")

        async def monitor(agent: Agent) -> None:
            nonlocal ticks
            while True:
                msg = await next_message(agent)
                await msg.ack()
                if msg.type == "shutdown":
                    log(agent.name, "stops", "got shutdown")
                    return
                ticks += 1
                log(agent.name, f"receives tick #{ticks}", f"scheduled by {msg.sender}", "tick")
                if ticks >= TICKS:
                    ticked.set()

        async def plan() -> None:
            sched_id = await planner.schedule("monitor", {"check": "health"}, type="tick", every=1)
            log("planner", "schedules a tick to monitor", "every 1 s", "schedule")
            tasks = [
                ("worker-1", "parse logs", False),
                ("worker-2", "write report", False),
                ("worker-1", "summarise logs", False),
                ("worker-2", "deploy to prod", True),  # fails every time
            ]
            for to, title, fail in tasks:
                data = {"title": title, "fail": True} if fail else {"title": title}
                await planner.send(to, data, type="task", max_attempts=MAX_ATTEMPTS)
                log(
                    "planner",
                    f"sends task {title!r} to {to}",
                    f"max {MAX_ATTEMPTS} attempts",
                    "send",
                )

            log("planner", "asks reviewer", "request type=review, timeout 5 s", "request")
            answer = await planner.request(
                "reviewer", {"draft": "report v1"}, type="review", timeout=5.0
            )
            log("planner", f"gets {answer.type} from {answer.sender}", f"{answer.data}", "reply")

            await gave_up.wait()
            for dead in await hub.dead_letters("worker-2"):
                what = f"dead letter {dead.id[:8]} for {dead.recipient}"
                why = f"{dead.data['title']!r}: {dead.reason}, attempts={dead.attempts}"
                log("hub", what, why, "dead")

            await ticked.wait()
            runs = {s.id: s.runs for s in await hub.schedules()}.get(sched_id, 0)
            cancelled = await hub.cancel_schedule(sched_id)
            done = f"after {runs} runs, cancelled={cancelled}"
            log("planner", "cancels the tick schedule", done, "schedule")

            log("planner", "sends shutdown", "to " + ", ".join(AGENTS[1:]), "send")
            for name in AGENTS[1:]:
                await planner.send(name, None, type="shutdown")

        roles = {"worker-1": worker, "worker-2": worker, "reviewer": reviewer, "monitor": monitor}
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(plan())
                for agent in others:
                    tg.create_task(roles[agent.name](agent))
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None

        return DemoResult(
            store=await snapshot(hub),
            ticks=ticks,
            elapsed=time.monotonic() - start,
        )


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
