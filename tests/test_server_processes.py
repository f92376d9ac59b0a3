"""The server across processes: a server process and three client processes on separate
tokens (messages, a request / reply, a durable consumer shared by two), and a kill -9 of the
server mid-stream with a restart (nothing acknowledged is lost, the client reconnects)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import agentcomm
from agentcomm._server.authz import Principal
from agentcomm._server.tokens import TokenStore
from processes import finish, spawn

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tokens(url: str, principals: list[Principal]) -> list[str]:
    async def make() -> list[str]:
        async with agentcomm.connect(url, background=False) as hub:
            store = TokenStore(hub._ctx.backend)
            return [(await store.create(p))[0] for p in principals]

    return asyncio.run(make())


class ServerProcess:
    """`agentcomm serve` in a child process."""

    def __init__(self, store: str, port: int, log: Path) -> None:
        self.store, self.port, self.log = store, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        code = "from agentcomm._entry import main; main()"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, "serve", self.store, "--port", str(self.port)],
                stdout=err, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(self.url + "/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    time.sleep(0.1)
        raise AssertionError("the server did not start: " + self.log.read_text()[-2000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(f"sqlite:///{tmp_path / 's.db'}?create=1", _free_port(),
                           tmp_path / "server.log")  # fmt: skip
    _tokens(server.store, [])  # create the store
    server.store = f"sqlite:///{tmp_path / 's.db'}"
    yield server
    server.stop()


CLIENT = """
async def main(url, token, role):
    async with agentcomm.connect(url, token=token) as hub:
        me = await hub.agent(role)
        if role == "c1":
            for i in range(5):
                await me.send("c3", i)
            reply = await me.request("c2", 21, timeout=30)
            print("reply", reply.data)
            for i in range(20):
                await me.publish("jobs.x", i)
            return
        if role == "c2":
            msg = await me.receive(timeout=30)
            await msg.reply(msg.data * 2)
        else:
            got = []
            while len(got) < 5:
                msg = await me.receive(timeout=30)
                got.append(msg.data)
                await msg.ack()
            print("mail", sorted(got))
        seen = []
        async with me.subscribe("jobs.>", durable="work", start="all", buffer=4) as sub:
            idle = 0
            while idle < 3:
                m = await sub.next(timeout=1.0)
                if m is None:
                    idle += 1
                    continue
                idle = 0
                seen.append(m.data)
                await m.ack()
        print("jobs", seen)
"""


def _wait_for_agents(store: str, names: set[str], timeout: float = 60.0) -> None:
    """Wait until `names` are registered agents of the store (the clients' first step)."""
    deadline = time.monotonic() + timeout
    with agentcomm.sync.connect(store) as hub:
        while not names <= {a.name for a in hub.agents()}:
            assert time.monotonic() < deadline, f"{names} were not registered in {timeout} s"
            time.sleep(0.05)


def test_three_client_processes_on_separate_tokens(served: ServerProcess) -> None:
    tokens = _tokens(served.store, [
        Principal(agents=["c1"], publish=["jobs.>"]),
        Principal(agents=["c2"], subscribe=["jobs.>"]),
        Principal(agents=["c3"], subscribe=["jobs.>"]),
    ])  # fmt: skip
    served.start()
    # c2 and c3 first, so the requests and mail find their agents registered
    c2 = spawn(CLIENT, served.url, tokens[1], "c2")
    c3 = spawn(CLIENT, served.url, tokens[2], "c3")
    _wait_for_agents(served.store, {"c2", "c3"})
    c1 = spawn(CLIENT, served.url, tokens[0], "c1")
    out1, out2, out3 = finish(c1, 120), finish(c2, 120), finish(c3, 120)
    assert "reply 42" in out1
    assert "mail [0, 1, 2, 3, 4]" in out3
    jobs = [line for line in (out2 + out3).splitlines() if line.startswith("jobs")]
    seen = [int(x) for line in jobs for x in line[5:].strip("[]").split(",") if x.strip()]
    assert sorted(seen) == list(range(20))  # shared: each job once, between the two


def test_kill_9_mid_stream_loses_nothing_acknowledged(served: ServerProcess) -> None:
    (token,) = _tokens(served.store, [Principal(agents=["*"], admin=True)])
    served.start()
    acked, got = asyncio.run(_kill_and_restart(served, token))
    assert not set(acked) & set(got), "an acknowledged message came back"
    assert set(acked) | set(got) == set(range(40))


async def _kill_and_restart(served: ServerProcess, token: str) -> tuple[list[int], list[int]]:
    acked: list[int] = []
    async with agentcomm.connect(served.url, token=token) as hub:
        src, dst = await hub.agent("src"), await hub.agent("dst")
        await src.send_many([agentcomm.Outgoing(to="dst", data=i) for i in range(40)])
        for _ in range(15):
            msg = await dst.receive(timeout=5, lease=2.0)
            assert msg is not None
            await msg.ack()
            acked.append(msg.data)
        waiting = asyncio.ensure_future(dst.receive_many(5, timeout=30, lease=2.0))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(served.stop, signal.SIGKILL)
        await asyncio.to_thread(served.start)  # same port, same store
        got: list[int] = []
        try:
            first = await waiting
            got += [m.data for m in first]
            for m in first:
                await m.ack()
        except agentcomm.BackendUnavailable:
            pass  # the call in flight died with the server: its messages come back
        deadline = time.monotonic() + 60
        while len(set(acked) | set(got)) < 40 and time.monotonic() < deadline:
            try:
                msg = await dst.receive(timeout=5, lease=2.0)
            except agentcomm.BackendUnavailable:
                await asyncio.sleep(0.2)
                continue
            if msg is not None:
                got.append(msg.data)
                await msg.ack()
    return acked, got
