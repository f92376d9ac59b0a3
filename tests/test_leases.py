"""Coordination leases: glob overlap, grant / conflict / renew / release / expiry on every
backend, a model test of the rules, and a race between processes."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentcomm
from agentcomm._globs import matches, normalize, overlaps, witness
from processes import finish, spawn

# --- the glob rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("src/api/*.py", "src/api/users.py", True),
        ("src/api/*.py", "src/api/v1/users.py", False),  # `*` does not cross `/`
        ("src/**", "src/api/v1/users.py", True),  # `**` does
        ("src/", "src/api/v1/users.py", True),  # `dir/` is everything under dir
        ("**/*.md", "README.md", True),  # `**/` is zero or more directories
        ("**/*.md", "docs/a/b.md", True),
        ("*.md", "docs/a.md", False),
        ("src/*.py", "*/api.py", True),  # both ways: `src/api.py` matches both
        ("src/*/x.py", "src/a*/x.py", True),
        ("src/[ab].py", "src/[!ab].py", False),
        ("src/?.py", "src/[!a].py", True),
        ("docs/**", "src/**", False),
        ("a/*/c", "a/b/*", True),
        ("./src//api/x.py", "src/api/x.py", True),
    ],
)
def test_overlap_is_decided_by_globs_in_both_directions(
    first: str, second: str, expected: bool
) -> None:
    a, b = normalize(first), normalize(second)
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected
    found = witness(a, b)
    assert (found is not None) is expected
    if found is not None:
        assert matches(a, found) and matches(b, found)


@pytest.mark.parametrize(
    "bad", ["", "   ", "/etc/passwd", "src/../x", "src\\x.py", "src/[ab", "x" * 1025, 7]
)
def test_a_bad_pattern_is_refused_with_what_to_do(bad: object) -> None:
    with pytest.raises(agentcomm.ValidationError):
        normalize(bad)


_TOKENS = ["a", "b", "/", "*", "**", "?", "[ab]", "[!a]", "**/"]


def _reference_regex(pattern: str) -> re.Pattern[str]:
    """An independent reading of the rules, as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern.startswith("[ab]", i):
            out.append("[ab]")
            i += 4
        elif pattern.startswith("[!a]", i):
            out.append("[^a/]")
            i += 4
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


_pattern = (
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=6)
    .map("".join)
    .filter(lambda p: not p.startswith("/") and "//" not in p and not p.endswith("/"))
)


@settings(max_examples=300, deadline=None)
@given(
    first=_pattern,
    second=_pattern,
    paths=st.lists(st.text("ab/c", max_size=8), max_size=30),
)
def test_overlap_agrees_with_a_reference_matcher(first: str, second: str, paths: list[str]) -> None:
    """Sound and complete: a path both reference matchers accept means `overlaps`; and when
    `overlaps`, its witness is accepted by both reference matchers."""
    a, b = normalize(first), normalize(second)
    ra, rb = _reference_regex(a), _reference_regex(b)
    found = witness(a, b)
    if found is not None:
        assert ra.fullmatch(found) and rb.fullmatch(found)
    for path in paths:
        assert bool(ra.fullmatch(path)) == matches(a, path)
        if ra.fullmatch(path) and rb.fullmatch(path):
            assert found is not None


# --- the library on every backend ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_exclusive_conflicts_name_the_holder_pattern_and_expiry(
    hub: agentcomm.Hub,
) -> None:
    got = await hub.leases.acquire("alice", ["src/api/*.py"], ttl=600, reason="auth refactor")
    assert got.ok
    (lease,) = got.granted
    assert (lease.owner, lease.pattern, lease.exclusive, lease.reason) == (
        "alice", "src/api/*.py", True, "auth refactor",
    )  # fmt: skip
    assert lease.expires_at == pytest.approx(lease.acquired_at + 600)

    denied = await hub.leases.acquire("bob", ["src/**", "docs/*.md"])
    assert not denied.ok and denied.granted == []  # all or nothing by default
    (conflict,) = denied.conflicts
    assert conflict.pattern == "src/**" and conflict.holder == "alice"
    assert conflict.lease == lease
    assert await hub.leases.list(owner="bob") == []

    part = await hub.leases.acquire("bob", ["src/**", "docs/*.md"], partial=True)
    assert [g.pattern for g in part.granted] == ["docs/*.md"]
    assert [c.pattern for c in part.conflicts] == ["src/**"]


async def test_shared_coexists_with_shared_and_exclusive_with_none(hub: agentcomm.Hub) -> None:
    assert (await hub.leases.acquire("alice", ["src/*.py"], exclusive=False)).ok
    assert (await hub.leases.acquire("bob", ["src/a.py"], exclusive=False)).ok
    denied = await hub.leases.acquire("carol", ["src/**"])
    assert sorted(c.holder for c in denied.conflicts) == ["alice", "bob"]
    # upgrading one's own shared lease to exclusive conflicts with the other sharer only
    up = await hub.leases.acquire("alice", ["src/*.py"], exclusive=True)
    assert [c.holder for c in up.conflicts] == ["bob"]
    assert (await hub.leases.acquire("carol", ["docs/**"])).ok  # no overlap, no conflict


async def test_an_owner_never_conflicts_with_itself_and_reacquiring_renews(
    hub: agentcomm.Hub,
) -> None:
    first = (await hub.leases.acquire("alice", ["src/**"], ttl=60)).granted[0]
    again = await hub.leases.acquire("alice", ["src/**", "src/x.py"], ttl=600, reason="more")
    assert again.ok
    kept = next(g for g in again.granted if g.pattern == "src/**")
    assert kept.id == first.id and kept.acquired_at == first.acquired_at
    assert kept.expires_at > first.expires_at and kept.reason == "more"
    assert len(await hub.leases.list()) == 2


async def test_renew_release_and_list(hub: agentcomm.Hub) -> None:
    granted = (await hub.leases.acquire("alice", ["a/*", "b/*", "c/*"], ttl=60)).granted
    await hub.leases.acquire("bob", ["z/*"], exclusive=False)
    renewed = await hub.leases.renew("alice", ["a/*"], ttl=900)
    assert [r.pattern for r in renewed] == ["a/*"]
    assert renewed[0].expires_at > granted[0].expires_at
    assert [x.pattern for x in await hub.leases.list(overlapping="b/file.txt")] == ["b/*"]
    gone = await hub.leases.release("alice", [granted[1].id])  # by id
    assert [g.pattern for g in gone] == ["b/*"]
    assert [x.pattern for x in await hub.leases.release("alice", "./a/*")] == ["a/*"]
    assert await hub.leases.release("alice", ["nothing/*"]) == []
    assert [x.pattern for x in await hub.leases.release("alice")] == ["c/*"]  # all
    assert [(x.owner, x.pattern) for x in await hub.leases.list()] == [("bob", "z/*")]
    assert (await hub.leases.acquire("carol", ["a/**", "b/x"])).ok


async def test_leases_expire_by_ttl(url: str) -> None:
    clock = Clock()
    async with agentcomm.connect(url, clock=clock, background=False) as hub:
        await hub.leases.acquire("alice", ["src/**"], ttl=30)
        clock.now += 29
        assert not (await hub.leases.acquire("bob", ["src/x"])).ok
        assert await hub.leases.renew("alice", ttl=30) != []
        clock.now += 29
        assert len(await hub.leases.list()) == 1
        clock.now += 2
        assert await hub.leases.list() == []
        assert await hub.leases.renew("alice") == []  # expired: acquire it again
        assert (await hub.leases.acquire("bob", ["src/x"])).ok


async def test_a_rejected_call_stores_nothing(hub: agentcomm.Hub) -> None:
    for call in (
        hub.leases.acquire("alice", ["src/*", "/abs"]),
        hub.leases.acquire("alice", []),
        hub.leases.acquire("alice", ["x"], ttl=0),
        hub.leases.acquire("alice", ["x"], reason="r" * 5000),
        hub.leases.acquire("bad name!", ["x"]),
        hub.leases.acquire("alice", [f"f{i}" for i in range(101)]),
    ):
        with pytest.raises(agentcomm.ValidationError):
            await call
    assert await hub.leases.list() == []


async def test_hubs_on_one_store_see_each_other(
    hub: agentcomm.Hub, make_hub: Callable[..., agentcomm.Hub]
) -> None:
    async with make_hub() as other:
        assert (await hub.leases.acquire("alice", ["x/**"])).ok
        assert [c.holder for c in (await other.leases.acquire("bob", ["x/y"])).conflicts] == [
            "alice"
        ]
        await other.leases.release("alice")  # any hub may act for an owner
        assert await hub.leases.list() == []


def test_the_blocking_face_has_leases(url: str) -> None:
    from agentcomm import sync

    with sync.connect(url) as hub:
        assert hub.leases.acquire("alice", ["src/**"]).ok
        assert [x.owner for x in hub.leases.list()] == ["alice"]


# --- a model of the rules ----------------------------------------------------------------------

_OWNERS = ["alice", "bob", "carol"]
_PATTERNS = ["src/**", "src/*.py", "src/a.py", "docs/**", "**/*.md", "src/api/*"]

_op = st.one_of(
    st.tuples(
        st.just("acquire"), st.sampled_from(_OWNERS),
        st.lists(st.sampled_from(_PATTERNS), min_size=1, max_size=3, unique=True),
        st.booleans(), st.booleans(), st.integers(1, 50),
    ),
    st.tuples(st.just("release"), st.sampled_from(_OWNERS), st.sampled_from([None, *_PATTERNS])),
    st.tuples(st.just("renew"), st.sampled_from(_OWNERS), st.integers(1, 50)),
    st.tuples(st.just("wait"), st.integers(1, 40)),
)  # fmt: skip


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_op, max_size=12))
def test_grants_and_conflicts_follow_a_model(
    fresh_url: Callable[[], str], ops: list[tuple[object, ...]]
) -> None:
    """Against a dict of (owner, pattern) -> (exclusive, expires_at)."""
    clock = Clock()
    model: dict[tuple[str, str], tuple[bool, float]] = {}

    def live() -> dict[tuple[str, str], tuple[bool, float]]:
        return {k: v for k, v in model.items() if v[1] > clock.now}

    async def go(url: str) -> None:
        async with agentcomm.connect(url, clock=clock, background=False) as hub:
            for op in ops:
                if op[0] == "acquire":
                    _, owner, patterns, exclusive, partial, ttl = op
                    assert isinstance(owner, str) and isinstance(patterns, list)
                    assert isinstance(exclusive, bool) and isinstance(partial, bool)
                    assert isinstance(ttl, int)
                    expected = {
                        (p, o)
                        for p in patterns
                        for (o, q), (ex, _) in live().items()
                        if o != owner and (ex or exclusive) and overlaps(p, q)
                    }
                    got = await hub.leases.acquire(
                        owner, patterns, ttl=ttl, exclusive=exclusive, partial=partial
                    )
                    assert {(c.pattern, c.holder) for c in got.conflicts} == expected
                    blocked = {p for p, _ in expected}
                    granted = [p for p in patterns if p not in blocked]
                    if expected and not partial:
                        granted = []
                    assert [g.pattern for g in got.granted] == granted
                    for p in granted:
                        model[(owner, p)] = (exclusive, clock.now + ttl)
                elif op[0] == "release":
                    _, owner, pattern = op
                    assert isinstance(owner, str)
                    want = {k for k in live() if k[0] == owner and pattern in (None, k[1])}
                    sel = None if pattern is None else [str(pattern)]
                    got_r = await hub.leases.release(owner, sel)
                    assert {(x.owner, x.pattern) for x in got_r} == want
                    for k in want:
                        del model[k]
                elif op[0] == "renew":
                    _, owner, ttl = op
                    assert isinstance(owner, str) and isinstance(ttl, int)
                    mine = [k for k in live() if k[0] == owner]
                    got_n = await hub.leases.renew(owner, ttl=ttl)
                    assert {(x.owner, x.pattern) for x in got_n} == set(mine)
                    for k in mine:
                        model[k] = (model[k][0], clock.now + ttl)
                else:
                    assert isinstance(op[1], int)
                    clock.now += op[1]
                listed = {(x.owner, x.pattern): (x.exclusive, x.expires_at)
                          for x in await hub.leases.list()}  # fmt: skip
                assert listed == live()

    asyncio.run(go(fresh_url()))


# --- across processes ---------------------------------------------------------------------------

_RACER = """
import time
async def main(url, owner, pattern, start):
    async with agentcomm.connect(url) as hub:
        time.sleep(max(0.0, float(start) - time.time()))
        got = await hub.leases.acquire(owner, [pattern], ttl=60)
        print("granted" if got.ok else "denied:" + ",".join(c.holder for c in got.conflicts))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["sqlite", "redis"], indirect=True)
def test_one_process_wins_a_race_for_overlapping_patterns(url: str) -> None:
    patterns = ["src/**", "src/api/*.py", "src/api/users.py", "**/users.py"]
    start = str(time.time() + 2.0)  # every child is connected by then
    procs = [spawn(_RACER, url, f"agent{i}", p, start) for i, p in enumerate(patterns)]
    outs = [finish(p).strip() for p in procs]
    assert outs.count("granted") == 1, outs

    async def check() -> list[agentcomm.Lease]:
        async with agentcomm.connect(url) as hub:
            return await hub.leases.list()

    (held,) = asyncio.run(check())
    winner = outs.index("granted")
    assert held.owner == f"agent{winner}"
    for i, out in enumerate(outs):
        if i != winner:
            assert out == f"denied:agent{winner}"
    assert sys.executable  # the children ran the interpreter under test
