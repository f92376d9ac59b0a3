"""Shared fixtures: one conformance suite, parametrized over every backend."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import agentcomm
from redis_server import BINARY, RedisServer, drop_prefixes

BACKENDS = ["memory", "sqlite", "redis", "http"]

#: Conformance files that also run over the server (backend "http": a live server over a fresh
#: SQLite store, hubs with an all-permissions admin token) in every run. Set
#: AGENTCOMM_TEST_HTTP=1 to run every conformance test over it (slower: a server per store).
HTTP_FILES = {"test_mailbox.py", "test_requests.py", "test_leases.py"}
#: Why a conformance test cannot hold over the server (docs/server.md "Conformance over the
#: server"): each is a consequence of the server running the store, its clock and its
#: housekeeping, not a gap in the client.
_CLOCK = (
    "a client's clock= does not move the server's clock, which decides TTLs, leases and due times"
)
_SERVER_SETTINGS = (
    "retention=, RefConfig(gc=...) and prune passes are the server hub's, not the client's"
)
_TIMING = "its 0.2 s lease can pass within the round trips of a loaded machine"
#: Conformance tests that do not hold over the server (test name, or name[params]) -> why.
HTTP_DIFFERS = {
    **dict.fromkeys([
        "test_a_ttl_passes_when_the_clock_moves",
        "test_a_delay_becomes_due_when_the_clock_moves",
        "test_a_lease_expires_when_the_clock_moves",
        "test_a_shared_memory_ttl_passes_when_the_clock_moves",
        "test_wait_for_mail_sees_a_delayed_message_fall_due_and_a_lease_end",
        "test_released_deliveries_never_count_as_attempts",
        "test_a_request_that_expires_fails_as_expired",
        "test_release_skips_a_delivery_whose_lease_passed_to_another",
        "test_presence_reports_active_idle_and_gone",
        "test_a_wake_times_out_with_nobody_watching",
        "test_looking_a_wake_up_times_out_the_due_wakes_in_registration_order",
        "test_leases_expire_by_ttl",
        "test_grants_and_conflicts_follow_a_model",
    ], _CLOCK),
    **dict.fromkeys([
        "test_retention_prunes_acked_and_dead_rows",
        "test_housekeeping_survives_an_unexpected_error",
        "test_watch_reports_a_gap_when_retention_dropped_records",
        "test_dead_letters_hold_until_pruned",
        "test_pruned_topic_records_release_their_payloads",
        "test_refcounts_follow_a_model[http-manual-1]",
        "test_refcounts_follow_a_model[http-manual-2]",
        "test_refcounts_follow_a_model[http-manual-3]",
        "test_manual_evicts_only_on_gc",
        "test_ttl_evicts_expired_unreferenced_only",
        "test_background_passes_evict_except_under_manual",
        "test_ttl_never_evicts_what_a_live_message_holds",
        "test_a_request_dead_lettered_by_a_prune_pass_fails",
        "test_pruned_after_lease_ended_counts_as_lost",
        "test_consumer_behind_retention_is_told_what_it_lost",
        "test_retention_by_age",
    ], _SERVER_SETTINGS),
    "test_unacked_message_is_redelivered_after_lease": _TIMING,
}  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the "http" conformance runs to `HTTP_FILES` unless AGENTCOMM_TEST_HTTP is set;
    skip what `HTTP_DIFFERS` names."""
    everything = bool(os.environ.get("AGENTCOMM_TEST_HTTP"))
    kept, dropped = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None or spec.params.get("backend_name") != "http":
            kept.append(item)
            continue
        if not everything and item.path.name not in HTTP_FILES:
            dropped.append(item)
            continue
        reason = HTTP_DIFFERS.get(item.name) or HTTP_DIFFERS.get(getattr(item, "originalname", ""))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"over the server: {reason}"))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


#: SQLite with every write on the writer thread (`?loop_writes=0`): a module that sets
#: `ALSO_THREAD_WRITES = True` runs its conformance tests on it too (the mailbox and
#: concurrency tests), so both write paths stay covered without doubling the whole suite.
THREAD_WRITES = "sqlite-thread-writes"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses `backend_name` on each backend (plus the thread-writes SQLite
    variant in modules that ask for it), unless the test parametrizes it itself."""
    if "backend_name" not in metafunc.fixturenames:
        return
    if any("backend_name" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return
    names = list(BACKENDS)
    if getattr(metafunc.module, "ALSO_THREAD_WRITES", False):
        names.append(THREAD_WRITES)
    metafunc.parametrize("backend_name", names, indirect=True)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the session: `$AGENTCOMM_REDIS_URL`, or our own redis-server."""
    given = os.environ.get("AGENTCOMM_REDIS_URL")
    if given:
        yield given
        return
    if BINARY is None:
        pytest.skip("redis-server is not installed and AGENTCOMM_REDIS_URL is not set")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of its own on the session's Redis, its keys dropped after the test."""
    p = f"t-{uuid4().hex[:8]}"
    yield p
    drop_prefixes(redis_url, [p])


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    """A plain redis-py client of the session's Redis (`redis.Redis`)."""
    import redis

    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def fresh_url(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], str]]:
    """Make the URL of a new, empty store of the backend under test on every call."""
    base = request.getfixturevalue("redis_url") if backend_name == "redis" else ""
    prefixes: list[str] = []
    servers: list[Any] = []
    if backend_name == "http":  # every hub of the test authenticates with the admin token
        from live_server import ADMIN_TOKEN

        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("AGENTCOMM_TOKEN", ADMIN_TOKEN)

    def make() -> str:
        name = uuid4().hex[:12]
        if backend_name == "memory":
            return f"memory://{name}"
        if backend_name == "http":  # a server of its own over a fresh SQLite store
            from live_server import LiveServer

            # a module may set the server hub's options (HTTP_HUB_OPTIONS: e.g. no passes)
            options = getattr(request.module, "HTTP_HUB_OPTIONS", None)
            server = LiveServer(f"sqlite:///{tmp_path / name}.db", hub_options=options)
            servers.append(server.__enter__())
            return str(servers[-1].url)
        if backend_name == "redis":
            # a key prefix of its own isolates this store on the shared server
            prefixes.append(f"test-{name}")
            return f"{base}{'&' if '?' in base else '?'}prefix={prefixes[-1]}"
        if backend_name == THREAD_WRITES:
            return f"sqlite:///{tmp_path / name}.db?loop_writes=0"
        return f"sqlite:///{tmp_path / name}.db"

    yield make
    for server in servers:
        server.__exit__(None, None, None)
    if prefixes:  # leave nothing behind on a server given by AGENTCOMM_REDIS_URL
        drop_prefixes(base, prefixes)


@pytest.fixture
def url(fresh_url: Callable[[], str]) -> str:
    """A fresh store URL for the backend under test, shared by every hub a test opens on it."""
    return fresh_url()


@pytest.fixture
def make_hub(url: str) -> Callable[..., agentcomm.Hub]:
    """Open more hubs on the test's store: `hub2 = await make_hub(lease=1.0)`."""

    def make(**kwargs: Any) -> agentcomm.Hub:
        return agentcomm.connect(url, **kwargs)

    return make


@pytest.fixture
async def hub(url: str) -> AsyncIterator[agentcomm.Hub]:
    """An open hub on a fresh store of the backend under test."""
    async with agentcomm.connect(url) as h:
        yield h
