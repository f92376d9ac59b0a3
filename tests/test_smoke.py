"""The quick start works on every backend."""

from __future__ import annotations

import agentcomm


async def test_send_receive_ack(hub: agentcomm.Hub) -> None:
    planner = await hub.agent("planner")
    coder = await hub.agent("coder")
    msg_id = await planner.send("coder", {"goal": "write tests"}, type="task")
    msg = await coder.receive(timeout=5)
    assert msg is not None
    assert (msg.id, msg.sender, msg.recipient, msg.type) == (msg_id, "planner", "coder", "task")
    assert msg.data == {"goal": "write tests"}
    await msg.ack()
    assert await hub.queue_depth("coder") == 0
