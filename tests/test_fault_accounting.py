"""The campaign's bookkeeping (tests/fault_campaign.py) on hand-written child logs: each broken
promise it is there to catch is caught, and what at-least-once allows is not reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fault_campaign import Campaign, Drained, Figures, account


def _figures(
    tmp_path: Path, *logs: str, drained: Drained | None = None, lease_lost_doubtful: bool = False
) -> Figures:
    for n, text in enumerate(logs):
        (tmp_path / f"child.{n}.log").write_text(text)
    events = Campaign(tmp_path, "memory://").events(lease_lost_doubtful=lease_lost_doubtful)
    return account("test", 1.0, 1, events, drained or [], set())


def _batch(tag: str, k: int) -> dict[str, Any]:
    return {"b": tag, "k": k}


def test_a_clean_run_breaks_nothing(tmp_path: Path) -> None:
    producer = "ready\nS m1\nS m2\nS m3\n"
    # m2: killed between the ack call and its outcome; m3: delivered again before any ack
    consumer = "ready\nR m1 1.0 1 -\na m1\nA m1 2.0\nR m2 3.0 1 -\na m2\n"
    again = "ready\nR m3 1.5 1 -\nR m3 9.0 2 -\na m3\nA m3 9.5\nR m2 4.0 2 -\n"
    f = _figures(tmp_path, producer, consumer, again, drained=[("m4", None, 1)])
    assert (f.sends_confirmed, f.acks_confirmed, f.ack_unknown) == (3, 2, 1)
    assert f.unconfirmed_stored == 1  # m4
    f.assert_nothing_lost()
    f.assert_nothing_after_ack()


def test_a_confirmed_send_nobody_got_is_lost(tmp_path: Path) -> None:
    f = _figures(tmp_path, "ready\nS m1\nS m2\n", "ready\nR m1 1.0 1 -\na m1\nA m1 2.0\n")
    assert f.lost == ["m2"]
    with pytest.raises(AssertionError, match="1 confirmed sends lost"):
        f.assert_nothing_lost()


def test_a_delivery_that_lost_its_lease_is_not_an_ack(tmp_path: Path) -> None:
    logs = ("ready\nS m1\n", "ready\nR m1 1.0 1 -\na m1\nL m1\n")
    assert _figures(tmp_path, *logs).lost == ["m1"]
    # on Redis a LeaseLost may hide a successful ack: the outcome is unknown, not lost
    assert _figures(tmp_path, *logs, lease_lost_doubtful=True).lost == []


def test_deliveries_after_a_confirmed_ack_are_caught(tmp_path: Path) -> None:
    consumer = "R m1 1.0 1 -\na m1\nA m1 2.0\nR m1 2.5 2 -\nR m2 1.0 1 -\na m2\nA m2 1.2\n"
    drained: Drained = [("m2", None, 1), ("m3", None, 1), ("m3", None, 2)]
    f = _figures(tmp_path, "S m1\nS m2\nS m3\n", consumer, drained=drained)
    assert f.duplicated_after_ack == ["m1", "m2", "m3"]
    assert f.second_copies == 1  # m2 was delivered as attempt 1 twice
    with pytest.raises(AssertionError, match="3 ids delivered after their ack"):
        f.assert_nothing_after_ack()


def test_two_confirmed_acks_of_one_id_are_caught(tmp_path: Path) -> None:
    consumer = "R m1 1.0 1 -\nR m1 1.0 1 -\na m1\nA m1 2.0\na m1\nA m1 2.1\n"
    f = _figures(tmp_path, "S m1\n", consumer)
    assert (f.duplicated_after_ack, f.acked_twice, f.second_copies) == ([], ["m1"], 1)
    with pytest.raises(AssertionError, match="1 ids acked twice"):
        f.assert_nothing_after_ack()


def test_a_send_many_is_all_or_nothing(tmp_path: Path) -> None:
    whole = "B t1 2\nS m1\nS m2\n"
    cut = "B t2 3\n"  # killed in send_many: t2 found 2 of its 3 stored, t3 none
    cut_before_storing = "B t3 2\n"
    consumer = "R m1 1.0 1 t1/0\nR m2 1.0 1 t1/1\na m1\nA m1 2.0\na m2\nA m2 2.0\n"
    drained: Drained = [("x1", _batch("t2", 0), 1), ("x2", _batch("t2", 2), 1)]
    f = _figures(tmp_path, whole, cut, cut_before_storing, consumer, drained=drained)
    assert (f.batches_cut, f.batches_cut_stored, f.partial_batches) == (2, 1, ["t2"])
    with pytest.raises(AssertionError, match="send_many half stored"):
        f.assert_nothing_lost()


def test_only_whole_lines_count(tmp_path: Path) -> None:
    f = _figures(tmp_path, "ready\nS m1\nS m2", "R m1 1.0 1 -\na m1\nA m1 2.0\n")
    assert f.sends_confirmed == 1
    f.assert_nothing_lost()
