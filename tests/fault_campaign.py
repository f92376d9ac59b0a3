"""The parent side of the crash-and-fault campaign: start the children of tests/fault_workers.py,
kill -9 them (or the server) for a time budget, drain the store and account for every message id.

The budget of each scenario is `$AGENTCOMM_SOAK_SECONDS` seconds of faults (default 12, so the
whole campaign of six scenarios takes about 2 minutes in `make test`); `make soak` sets it
higher.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agentcomm
from fault_workers import CONSUMER
from processes import kill, run_file

SOAK_SECONDS = float(os.environ.get("AGENTCOMM_SOAK_SECONDS", "12"))
#: pytest-timeout for one scenario: the budget, plus starts, drain and a loaded machine
TEST_TIMEOUT = SOAK_SECONDS * 2 + 240
WORKERS = Path(__file__).with_name("fault_workers.py")
START_TIMEOUT = 60.0  # a child's interpreter start and hub open on a loaded 2-core machine


@dataclass
class Child:
    """One role in the campaign, restarted after every kill (a new log per incarnation)."""

    role: str
    name: str
    args: list[str]
    killable: bool
    kill_during: tuple[bytes, ...] = ()  # kill while the log's last line starts with one
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    log: Path = Path()
    err: Path = Path()
    started: float = 0.0
    ready: bool = False  # this incarnation wrote `ready`
    kill_at: float | None = None


@dataclass
class Events:
    """What the children's logs say happened."""

    sends: set[str] = field(default_factory=set)
    batches: dict[str, int] = field(default_factory=dict)  # tag -> size
    batches_cut: set[str] = field(default_factory=set)  # killed between `B` and its ids
    receives: list[tuple[str, float, int, str]] = field(default_factory=list)
    acks: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    doubtful: set[str] = field(default_factory=set)  # ack outcome unknown
    lease_lost: set[str] = field(default_factory=set)
    unavailable: int = 0


@dataclass
class Figures:
    """One scenario's result. `lost`, `partial_batches`, `duplicated_after_ack` and
    `acked_twice` list the ids (batch tags) that break a promise; all must be empty."""

    scenario: str
    seconds: float
    kills: int
    sends_confirmed: int
    acks_confirmed: int
    deliveries: int
    drained: int
    ack_unknown: int
    unconfirmed_stored: int
    unavailable_retries: int
    batches_cut: int
    batches_cut_stored: int
    dead: int
    lost: list[str]
    partial_batches: list[str]
    duplicated_after_ack: list[str]
    acked_twice: list[str]
    second_copies: int  # duplicates delivered as attempt 1: a send stored twice

    def summary(self) -> str:
        """The figures on one line (printed by the tests: `pytest -s` shows them)."""
        return (
            f"{self.scenario}: {self.seconds:.0f} s, {self.kills} kills, "
            f"{self.sends_confirmed} sends confirmed, {self.acks_confirmed} acks confirmed, "
            f"{self.deliveries} deliveries + {self.drained} drained, "
            f"{self.ack_unknown} acks of unknown outcome, {self.unconfirmed_stored} unconfirmed "
            f"sends stored, {self.unavailable_retries} retries after BackendUnavailable, "
            f"{self.batches_cut} send_many cut by a kill ({self.batches_cut_stored} of them "
            f"stored whole, the others not at all), {self.dead} dead-lettered; "
            f"LOST {len(self.lost)}, PARTIAL BATCHES {len(self.partial_batches)}, "
            f"DELIVERED AFTER ACK {len(self.duplicated_after_ack)}, "
            f"ACKED TWICE {len(self.acked_twice)} ({self.second_copies} of those ids "
            "delivered as attempt 1 after another delivery: a send stored twice)"
        )

    def assert_nothing_lost(self) -> None:
        """Every confirmed send is accounted for; every send_many was all or nothing."""
        assert self.kills > 0 and self.sends_confirmed > 0 and self.acks_confirmed > 0
        assert not self.lost, f"{len(self.lost)} confirmed sends lost: {self.lost[:10]}"
        assert not self.partial_batches, f"send_many half stored: {self.partial_batches[:10]}"

    def assert_nothing_after_ack(self) -> None:
        """No id delivered again once an ack of it was confirmed, and none acked twice."""
        after, twice = self.duplicated_after_ack, self.acked_twice
        assert not after, f"{len(after)} ids delivered after their ack: {after[:10]}"
        assert not twice, f"{len(twice)} ids acked twice: {twice[:10]}"


class Campaign:
    """Children writing logs into `directory`, all talking to the store at `url`."""

    def __init__(self, directory: Path, url: str, *, retry: bool = False) -> None:
        self.directory = directory
        self.url = url
        self.retry = retry
        self.children: list[Child] = []
        self.kills = 0

    def add(
        self,
        role: str,
        name: str,
        *args: str,
        killable: bool = False,
        kill_during: tuple[bytes, ...] = (),
    ) -> None:
        """A child in `role`; `killable` ones are killed and restarted in a loop, and with
        `kill_during` preferably while their log ends in a line starting with one of these."""
        extra = [*args, "--retry"] if self.retry else list(args)
        self.children.append(Child(role, name, extra, killable, kill_during))

    def _start(self, child: Child) -> None:
        child.incarnation += 1
        stem = f"{child.name}.{child.incarnation}"
        child.log, child.err = self.directory / f"{stem}.log", self.directory / f"{stem}.err"
        child.started, child.ready, child.kill_at = time.monotonic(), False, None
        child.proc = run_file(
            WORKERS, child.role, self.url, str(child.log), child.name, *child.args, stderr=child.err
        )

    def _check(self, child: Child) -> None:
        """Fail if the child exited by itself or did not get ready in time."""
        assert child.proc is not None
        if child.proc.poll() is not None:
            raise AssertionError(
                f"{child.name} (incarnation {child.incarnation}) exited with "
                f"{child.proc.returncode}:\n{child.err.read_text(errors='replace')[-3000:]}"
            )
        if not self._ready(child) and time.monotonic() - child.started > START_TIMEOUT:
            raise AssertionError(f"{child.name} was not ready within {START_TIMEOUT} s")

    def _busy(self, child: Child) -> bool:
        """Whether the child's last log line starts with one of `kill_during` (say, `B `: it
        is in a send_many), or it has been waiting for that too long (it may be throttled)."""
        assert child.kill_at is not None
        if not child.kill_during or time.monotonic() > child.kill_at + 2:
            return True
        with child.log.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            tail = f.read().rsplit(b"\n", 2)
        return len(tail) > 1 and tail[-2].startswith(child.kill_during)

    def _ready(self, child: Child) -> bool:
        if not child.ready:
            try:
                with child.log.open("rb") as f:
                    child.ready = f.read(6) == b"ready\n"
            except FileNotFoundError:
                pass
        return child.ready

    async def run(
        self,
        seconds: float,
        *,
        work: tuple[float, float] = (0.05, 0.8),
        tick: Callable[[], None] | None = None,
    ) -> float:
        """Start every child, then for `seconds` kill -9 each killable child once it has
        worked a random time in `work` (seconds after it was ready) and start it again;
        `tick` (a server fault) runs on every turn. Waits until every child is ready first.
        Returns the time spent."""
        for child in self.children:
            self._start(child)
        while not all(self._ready(c) for c in self.children):
            for child in self.children:
                self._check(child)
            await asyncio.sleep(0.05)
        began = time.monotonic()
        end = began + seconds
        while (now := time.monotonic()) < end:
            for child in self.children:
                self._check(child)
                if not child.killable:
                    continue
                if child.kill_at is None:
                    if self._ready(child):
                        child.kill_at = now + random.uniform(*work)
                elif now >= child.kill_at and self._busy(child):
                    assert child.proc is not None
                    kill(child.proc)
                    self.kills += 1
                    self._start(child)
            if tick is not None:
                tick()
            await asyncio.sleep(0.01)
        for child in self.children:
            self._check(child)
        return time.monotonic() - began

    def stop(self) -> None:
        """kill -9 and reap every child (in a `finally`: nothing outlives the test)."""
        for child in self.children:
            if child.proc is not None:
                kill(child.proc)

    def stderr_texts(self) -> list[str]:
        """What every incarnation of every child wrote on stderr."""
        return [p.read_text(errors="replace") for p in sorted(self.directory.glob("*.err"))]

    def events(self, *, lease_lost_doubtful: bool) -> Events:
        """Parse every log. `lease_lost_doubtful`: a LeaseLost ack may have succeeded (Redis:
        redis-py retries a command whose answer a dropped connection lost)."""
        ev = Events()
        for path in sorted(self.directory.glob("*.log")):
            lines = path.read_bytes().decode().split("\n")[:-1]  # only whole lines
            intents: set[str] = set()
            open_batch = ""
            for line in lines:
                kind, *rest = line.split(" ")
                if kind == "S":
                    ev.sends.add(rest[0])
                    open_batch = ""
                elif kind == "B":
                    ev.batches[rest[0]] = int(rest[1])
                    open_batch = rest[0]
                elif kind == "R":
                    ev.receives.append((rest[0], float(rest[1]), int(rest[2]), rest[3]))
                elif kind == "a":
                    intents.add(rest[0])
                elif kind == "A":
                    ev.acks[rest[0]].append(float(rest[1]))
                    intents.discard(rest[0])
                elif kind in ("L", "U"):
                    intents.discard(rest[0])
                    if kind == "U" or lease_lost_doubtful:
                        ev.doubtful.add(rest[0])
                    ev.lease_lost.add(rest[0])
                elif kind == "X":
                    ev.unavailable += 1
            ev.doubtful |= intents  # killed between the ack call and its outcome
            if open_batch:
                ev.batches_cut.add(open_batch)
        return ev


#: what the drain got: (id, data, attempt) per delivery
Drained = list[tuple[str, Any, int]]


async def drain(url: str, *, deadline: float = 180.0) -> tuple[Drained, set[str]]:
    """Receive and ack everything left in the consumer's mailbox with a fresh hub (waiting out
    the leases of killed consumers); returns the deliveries and the dead-lettered ids."""
    got: Drained = []
    async with agentcomm.connect(url) as hub:
        me = await hub.agent(CONSUMER)
        give_up = time.monotonic() + deadline
        while True:
            msgs = await me.receive_many(500, timeout=0.5, lease=600)
            got += [(m.id, m.data, m.attempt) for m in msgs]
            if msgs:
                await me.ack_many(msgs)
                continue
            left = await hub.mailbox_stats(CONSUMER)
            if left.ready + left.delayed + left.in_flight == 0:
                break
            assert time.monotonic() < give_up, f"the drain is stuck at {left}"
        dead = {d.id for d in await hub.dead_letters(CONSUMER, limit=10_000)}
    return got, dead


def account(
    scenario: str, seconds: float, kills: int, ev: Events, drained: Drained, dead: set[str]
) -> Figures:
    """Every confirmed send acked, drained, dead-lettered or of unknown ack outcome; no
    delivery that began after a confirmed ack of the same id; every send_many all or nothing."""
    first_ack = {i: min(ts) for i, ts in ev.acks.items()}
    drained_ids = [i for i, *_ in drained]
    seen = {i for i, *_ in ev.receives} | set(drained_ids)
    lost = ev.sends - first_ack.keys() - set(drained_ids) - dead - ev.doubtful
    # deliveries that began after an ack of the same id returned, with their attempt
    after = [(i, att) for i, t0, att, _ in ev.receives if i in first_ack and t0 > first_ack[i]]
    after += [(i, att) for i, _, att in drained if i in first_ack]
    in_drain: set[str] = set()
    for i, _, att in drained:  # the drain acked each batch before it took the next
        if i in in_drain:
            after.append((i, att))
        in_drain.add(i)
    twice = {i for i, ts in ev.acks.items() if len(ts) > 1}
    firsts: dict[str, int] = defaultdict(int)
    for i, _, att, _ in ev.receives:
        firsts[i] += att == 1
    for i, _, att in drained:
        firsts[i] += att == 1
    members: dict[str, set[str]] = defaultdict(set)
    tags = [tag for _, _, _, tag in ev.receives]
    tags += [f"{d['b']}/{d['k']}" for _, d, _ in drained if isinstance(d, dict) and d.get("b")]
    for tag in tags:
        if tag != "-":
            batch, k = tag.rsplit("/", 1)
            members[batch].add(k)
    partial = sorted(b for b, ks in members.items() if len(ks) != ev.batches.get(b, -1))
    duplicated = {i for i, _ in after}
    return Figures(
        scenario=scenario,
        seconds=seconds,
        kills=kills,
        sends_confirmed=len(ev.sends),
        acks_confirmed=len(first_ack),
        deliveries=len(ev.receives),
        drained=len(drained_ids),
        ack_unknown=len(ev.doubtful - first_ack.keys()),
        unconfirmed_stored=len(seen - ev.sends),
        unavailable_retries=ev.unavailable,
        batches_cut=len(ev.batches_cut),
        batches_cut_stored=len(ev.batches_cut & members.keys()),
        dead=len(dead),
        lost=sorted(lost),
        partial_batches=partial,
        duplicated_after_ack=sorted(duplicated),
        acked_twice=sorted(twice),
        second_copies=sum(firsts[i] > 1 for i in duplicated | twice),
    )
