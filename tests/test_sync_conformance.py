"""Conformance scenarios of the async suite, run again through `agentcomm.sync`.

A thin parametrization, not a copy: each scenario below is the async test function itself,
given an `AsyncView` of a blocking hub (tests/sync_adapter.py), so every call it makes goes
through the sync proxies and the sync hub's loop thread, on every backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

import agentcomm
import agentcomm.sync
import test_mailbox
import test_references
import test_requests
import test_shared_memory
import test_topics
from sync_adapter import AsyncView

Scenario = Callable[..., Awaitable[None]]
SCENARIOS: list[tuple[Scenario, dict[str, Any]]] = [
    (test_mailbox.test_message_fields_round_trip, {}),
    (test_mailbox.test_priority_first_then_fifo, {}),
    (test_mailbox.test_waiting_receiver_wakes_on_send, {}),
    (test_mailbox.test_explicit_dead_letter_and_requeue, {}),
    (test_mailbox.test_settling_twice_raises, {}),
    (test_mailbox.test_send_many_is_ordered_and_deduplicates_within_batch, {}),
    (test_requests.test_request_reply_round_trip, {"responder": "coder"}),
    (test_requests.test_request_carries_correlation_and_reply_to, {}),
    (test_requests.test_concurrent_requests_get_their_own_replies, {}),
    (test_topics.test_publish_subscribe_round_trip, {}),
    (test_topics.test_filters_and_together, {}),
    (test_topics.test_drops_are_counted_with_a_tiny_buffer, {}),
    (test_shared_memory.test_versions_count_up_and_conflicts_carry_both_versions, {}),
    (test_shared_memory.test_update_retries_until_every_increment_lands, {}),
    (test_shared_memory.test_watch_include_initial_then_live, {}),
    (test_references.test_store_and_resolve_by_content, {}),
    (test_references.test_retain_and_release_count, {}),
]


@pytest.mark.parametrize(
    ("scenario", "kwargs"),
    SCENARIOS,
    ids=[f"{s.__module__}.{s.__name__}" for s, _ in SCENARIOS],
)
async def test_scenario_through_the_sync_api(
    url: str, scenario: Scenario, kwargs: dict[str, Any]
) -> None:
    with agentcomm.sync.connect(url) as hub:
        await scenario(hub=cast(agentcomm.Hub, AsyncView(cast(Any, hub))), **kwargs)
