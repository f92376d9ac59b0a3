"""The sandbox side of the sandbox-channel tests, run as a separate process.

    python tests/sandbox_worker.py <scenario> <directory>

It prints one JSON object per line (`{"event": ...}`) so the test can follow it. Scenarios:

- `serve`: claim batches until a message with `{"stop": true}`; per message data:
  `reply` -> a reply (in_reply_to) echoing the data; `tell` -> a message to that agent;
  `ask` -> ask that agent (through the bridge) and tell it the answer; `fail` -> fail it;
  `hang` -> print `claimed` and sleep (the test kills the process).
- `raw_write`: try to change inbound.db with raw sqlite3, print what happened, then `serve`.
- `ask_late`: ask with a short timeout, print the result, wait for the late answer, print the
  late count and what next_batch returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from typing import Any

from agentcomm import sandbox


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def serve(box: sandbox.Sandbox) -> None:
    while True:
        batch = await box.next_batch(max_messages=5, timeout=30.0)
        if not batch:
            say("idle")
            return
        say("batch", ids=[m.id for m in batch], seqs=[m.seq for m in batch])
        for m in batch:
            data = m.data if isinstance(m.data, dict) else {}
            if data.get("hang"):
                say("claimed", id=m.id, tries=m.tries)
                await asyncio.sleep(3600)
            if data.get("fail"):
                await box.fail(m, "the sandbox could not do it")
                continue
            if data.get("reply"):
                await box.send({"echo": data}, kind="chat", in_reply_to=m.id)
            if isinstance(data.get("tell"), str):
                await box.send({"told": data}, to=data["tell"], in_reply_to=m.id)
            if isinstance(data.get("ask"), str):
                answer = await box.ask({"question": "deploy?"}, to=data["ask"], timeout=20)
                await box.send({"answer": answer}, to=data["ask"])
            await box.complete(m)
            if data.get("stop"):
                say("stopped")
                return


def raw_write(directory: str) -> None:
    """Try every way raw sqlite3 offers to change the host's file."""
    path = os.path.join(directory, "inbound.db")
    results = {}
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("UPDATE messages_in SET state = 'completed'")
        conn.execute("INSERT INTO meta (key, value) VALUES ('intruder', '1')")
        results["plain"] = "written"
    except sqlite3.Error as exc:
        results["plain"] = f"refused: {exc}"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("DELETE FROM messages_in")
        results["readonly"] = "written"
    except sqlite3.Error as exc:
        results["readonly"] = f"refused: {exc}"
    try:
        with open(path, "r+b") as f:
            f.write(b"x")
        results["file"] = "written"
    except OSError as exc:
        results["file"] = f"refused: {exc}"
    say("raw_write", uid=os.getuid(), **results)


async def ask_late(box: sandbox.Sandbox) -> None:
    got = await box.ask({"question": "late?"}, timeout=0.3)
    say("asked", answer=got)
    for _ in range(200):
        if await box.late_answers():
            break
        await asyncio.sleep(0.05)
    batch = await box.next_batch(timeout=0.2)
    say("late", count=await box.late_answers(), batch=[m.id for m in batch])


async def main(scenario: str, directory: str) -> None:
    if scenario == "raw_write":
        raw_write(directory)
        scenario = "serve"
    async with sandbox.open_sandbox(directory, heartbeat_every=0.05, poll_max=0.2) as box:
        say("ready", journal=box.journal, uid=os.getuid(), run=box.run_id)
        if scenario == "serve":
            await serve(box)
        elif scenario == "ask_late":
            await ask_late(box)
        else:
            raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
