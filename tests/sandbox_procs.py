"""Sandbox-side processes for the sandbox-channel tests (see sandbox_worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
WORKER = TESTS / "sandbox_worker.py"
NOBODY = 65534
SETPRIV = [
    "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
    "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
]  # fmt: skip


def other_uid_reason() -> str | None:
    """Why the sandbox cannot be run as another user here (None: it can)."""
    if os.geteuid() != 0:
        return "the tests do not run as root, so they cannot drop to another user"
    if shutil.which("setpriv") is None:
        return "util-linux setpriv is not installed"
    return None


@contextlib.contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory both sides can use, also a sandbox running as `nobody`: under /tmp (every
    ancestor searchable), sticky and world-writable like /tmp itself."""
    d = Path(tempfile.mkdtemp(prefix="agentcomm-sandbox-", dir="/tmp"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class BoxProcess:
    """A sandbox side running `scenario` in another process."""

    def __init__(self, proc: asyncio.subprocess.Process, scenario: str) -> None:
        self.proc = proc
        self.scenario = scenario
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, scenario: str, directory: Path, *, as_nobody: bool = False) -> BoxProcess:
        """Start the worker (as `nobody` when asked) and wait until its side is open."""
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        cmd = [sys.executable, str(WORKER), scenario, str(directory)]
        if as_nobody:
            cmd = [*SETPRIV, *cmd]
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc, scenario)

    async def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next event `name` the process prints (earlier events are kept in `seen`)."""
        assert self.proc.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            except TimeoutError:
                raise AssertionError(f"no {name!r} from the sandbox within {timeout} s") from None
            if not line:
                err = await self._stderr()
                raise AssertionError(f"the sandbox exited before {name!r}; stderr:\n{err}")
            got = json.loads(line)
            self.seen.append(got)
            if got["event"] == name:
                return dict(got)

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 5.0)).decode()
        return ""

    def kill(self) -> None:
        """kill -9."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def finish(self, timeout: float = 30.0) -> None:
        """Wait for a clean exit (else kill it and fail)."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
            raise AssertionError("the sandbox process did not exit") from None
        if code != 0:
            raise AssertionError(f"the sandbox exited with {code}:\n{await self._stderr()}")

    async def close(self) -> None:
        """Make sure the process is gone."""
        if self.proc.returncode is None:
            self.kill()
            await self.proc.wait()
