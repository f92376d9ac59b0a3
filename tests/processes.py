"""Child interpreters for cross-process tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap


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
