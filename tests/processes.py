"""Child interpreters for cross-process tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """Run `code` (which defines `async def main(*args)`) in a fresh interpreter."""
    script = "import asyncio, sys, agentcomm\n" + textwrap.dedent(code)
    script += "\nasyncio.run(main(*sys.argv[1:]))\n"
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """Wait for `proc`, assert it succeeded, and return its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a hung child (and its pipes) to a later test
        out, err = proc.communicate()
        raise AssertionError(f"child process hung for {timeout} s; stderr:\n{err}") from None
    assert proc.returncode == 0, err
    return out


def kill_and_read_rest(proc: subprocess.Popen[str], timeout: float = 10) -> str:
    """SIGKILL `proc` (read with `proc.stdout.readline` so far) and return what it printed
    that was not read yet.

    Read through the same buffered stream as the lines before: `communicate()` reads the
    pipe itself and would skip whatever that stream's buffer already holds (a line cut in
    two, seen as a lost "confirmed" id under load)."""
    assert proc.stdout is not None
    proc.kill()
    proc.wait(timeout)
    rest = proc.stdout.read()  # the child is gone: its end of the pipe is closed
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()
    return rest


def run_file(path: Path, *args: str, stderr: Path) -> subprocess.Popen[bytes]:
    """Run the script at `path` in a fresh interpreter, its stderr to the file `stderr` (a
    pipe nobody reads could fill up and stall a long-running child)."""
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def kill(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """kill -9 `proc` unless it already exited, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait(timeout)
