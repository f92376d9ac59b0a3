"""Crash campaign on one SQLite file: kill -9 of producers, of consumers, of processes in
the middle of a `send_many` commit and of processes running W1 (one-at-a-time sends, receives
and acks from many tasks: loop writes), restarted again and again for a time budget; then every
message id is accounted for (see tests/fault_campaign.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import agentcomm
from fault_campaign import SOAK_SECONDS, TEST_TIMEOUT, Campaign, Figures, account, drain
from fault_workers import CONSUMER

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(TEST_TIMEOUT)]


async def _campaign(tmp_path: Path, scenario: str, cast: Callable[[Campaign], None]) -> Figures:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with agentcomm.connect(url) as hub:
        await hub.agent(CONSUMER)
    logs = tmp_path / "logs"
    logs.mkdir()
    campaign = Campaign(logs, url)
    cast(campaign)
    try:
        seconds = await campaign.run(SOAK_SECONDS)
    finally:
        campaign.stop()
    drained, dead = await drain(url)
    figures = account(
        scenario, seconds, campaign.kills, campaign.events(lease_lost_doubtful=False), drained, dead
    )
    print(figures.summary())
    for text in campaign.stderr_texts():  # "database is locked" would have killed a child
        assert "locked" not in text and "Traceback" not in text, text
    figures.assert_nothing_lost()
    figures.assert_nothing_after_ack()
    _remove_contents(tmp_path)  # a long soak leaves a big file; kept when a check fails
    return figures


def _remove_contents(directory: Path) -> None:
    for path in directory.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


async def test_kill_9_of_producers(tmp_path: Path) -> None:
    def cast(c: Campaign) -> None:
        c.add("producer", "p1", killable=True)
        c.add("producer", "p2", killable=True)
        c.add("consumer", "c1")

    await _campaign(tmp_path, "sqlite producers killed", cast)


async def test_kill_9_of_consumers(tmp_path: Path) -> None:
    def cast(c: Campaign) -> None:
        c.add("producer", "p1")
        # killed while holding leased messages: received, or in the middle of an ack
        c.add("consumer", "c1", killable=True, kill_during=(b"R ", b"a "))
        c.add("consumer", "c2", killable=True, kill_during=(b"R ", b"a "))

    figures = await _campaign(tmp_path, "sqlite consumers killed", cast)
    assert figures.deliveries > figures.acks_confirmed  # kills left leased messages behind


async def test_kill_9_in_the_middle_of_send_many_commits(tmp_path: Path) -> None:
    def cast(c: Campaign) -> None:
        c.add("batcher", "b1", "--batch", "200", killable=True, kill_during=(b"B ",))
        c.add("batcher", "b2", "--batch", "200", killable=True, kill_during=(b"B ",))
        c.add("consumer", "c1", "--batch", "50")

    figures = await _campaign(tmp_path, "sqlite send_many killed mid-commit", cast)
    assert figures.batches_cut > 0  # some kills landed while a send_many was being written


async def test_kill_9_in_the_middle_of_w1(tmp_path: Path) -> None:
    """W1 in each process: 8 tasks each awaiting one send at a time, 4 tasks each receiving one
    message and acking it. Those small writes run on the event-loop thread (loop writes), so
    this kills processes in the middle of them."""

    def cast(c: Campaign) -> None:
        c.add("producer", "p1", "--tasks", "8", killable=True)
        c.add("producer", "p2", "--tasks", "8", killable=True)
        c.add("consumer", "c1", "--tasks", "4", "--batch", "1", killable=True,
              kill_during=(b"R ", b"a "))  # fmt: skip
        c.add("consumer", "c2", "--tasks", "4", "--batch", "1")

    figures = await _campaign(tmp_path, "sqlite W1 killed", cast)
    assert figures.deliveries > figures.acks_confirmed  # kills left leased messages behind
