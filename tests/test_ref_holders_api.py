"""Explicit references are counted per holder (issue 10 item 2), on every backend: a release by
a hub that holds no reference to a blob is refused and changes nothing, so no caller can drop
a reference that a message, another hub or the feature layer holds; listings survive a blob
that is gone."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentcomm
from agentcomm import Outgoing, RefConfig, RefNotFound, RefNotHeld, ValidationError

BIG = {"blob": "x" * 20_000}  # over the default promotion threshold


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def evict(hub: agentcomm.Hub, ref_id: str) -> None:
    """Evict a blob by force through the backend, whoever holds it (a damaged store)."""
    ctx = hub._ctx
    while await ctx.references.ref_adjust(ref_id, -1, holder=None, now=ctx.now()) is not None:
        pass


async def refcounts(hub: agentcomm.Hub) -> dict[str, int]:
    return {r.id: r.refcount for r in await hub.refs.list_refs()}


# --- the plausible mistake ----------------------------------------------------------------------


async def test_releasing_a_received_payload_ref_is_refused_and_others_still_receive(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub() as hub, make_hub() as other:
        sender = await hub.agent("sender")
        first, second = await hub.agent("first"), await other.agent("second")
        await sender.send_many([Outgoing(to="first", data=BIG), Outgoing(to="second", data=BIG)])
        msg = await first.receive(timeout=5)
        assert msg is not None and msg.data == BIG
        ref = msg.payload_ref
        assert ref is not None
        before = await refcounts(hub)
        assert before == {ref.id: 2}  # one per message: nothing else holds it
        for refs in (hub.refs, other.refs):  # the receiver's hub, and the other one's
            with pytest.raises(RefNotHeld, match="needs no release"):
                await refs.release(ref)
        assert await refcounts(hub) == before
        got = await second.receive(timeout=5)
        assert got is not None and got.data == BIG
        await msg.ack()
        await got.ack()
        assert await hub.refs.list_refs() == []  # the messages' references were their own
        assert await hub.dead_letters("second") == []


async def test_a_stray_release_of_a_never_held_ref_changes_nothing(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub() as hub, make_hub() as stranger:
        mine = await hub.refs.store(b"mine")
        await hub.memory("ns").put("k", BIG)  # a key's value, held by the key
        before, stats = await refcounts(hub), await hub.refs.stats()
        for ref_id in before:
            with pytest.raises(RefNotHeld) as caught:
                await stranger.refs.release(ref_id)
            assert caught.value.ref_id == ref_id
            assert caught.value.holder == stranger.refs.holder
        with pytest.raises(RefNotHeld):  # the key's reference is not the putter's either
            await hub.refs.release(next(i for i in before if i != mine.id))
        assert await refcounts(hub) == before
        assert await hub.refs.stats() == stats
        entry = await hub.memory("ns").get("k")
        assert entry is not None and entry.value == BIG
        assert await hub.refs.release(mine) == 0
        with pytest.raises(RefNotFound):
            await stranger.refs.release(mine)


async def test_store_and_release_by_one_hub_keeps_the_blob_another_holds(
    make_hub: Callable[..., agentcomm.Hub],
) -> None:
    async with make_hub() as keeper, make_hub() as passerby:
        await keeper.refs.store(b"shared content")
        ref = await passerby.refs.store(b"shared content")
        assert ref.refcount == 2
        assert await passerby.refs.release(ref) == 1
        with pytest.raises(RefNotHeld):
            await passerby.refs.release(ref)  # its one reference is gone
        assert await keeper.refs.resolve(ref) == b"shared content"
        assert (await passerby.refs.retain(ref)).refcount == 2  # retain holds for the caller
        assert await passerby.refs.release(ref) == 1
        assert await keeper.refs.release(ref) == 0
        assert await keeper.refs.list_refs() == []


async def test_a_stable_holder_name_releases_after_a_restart(
    make_hub: Callable[..., agentcomm.Hub], backend_name: str
) -> None:
    if backend_name == "memory":
        pytest.skip("a memory store does not outlive its hubs")
    async with make_hub(refs=RefConfig(holder="worker-1")) as hub:
        assert hub.refs.holder == "worker-1"
        ref = await hub.refs.store(b"kept across restarts")
    async with make_hub() as fresh:
        with pytest.raises(RefNotHeld):
            await fresh.refs.release(ref)
    async with make_hub(refs=RefConfig(holder="worker-1")) as again:
        assert await again.refs.release(ref) == 0


def test_holder_names_are_checked() -> None:
    for bad in ("", "agentcomm:hold-1", 5, "x" * 256):
        with pytest.raises(ValidationError, match=r"RefConfig\.holder"):
            RefConfig(holder=bad)  # type: ignore[arg-type]
    err = RefNotHeld("sha256:" + "0" * 64, "h")
    assert isinstance(err, ValidationError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


# --- per holder counts against a model --------------------------------------------------------

_CONTENTS = [b"alpha", b"beta" * 300]
_OPS = st.lists(
    st.tuples(
        st.integers(0, 1),  # which hub (holder)
        st.sampled_from(["store", "retain", "release"]),
        st.integers(0, len(_CONTENTS) - 1),
    ),
    max_size=30,
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(ops=_OPS)
def test_counts_per_holder_follow_a_model(
    fresh_url: Callable[[], str], ops: list[tuple[int, str, int]]
) -> None:
    async def scenario(url: str) -> None:
        async with agentcomm.connect(url) as a, agentcomm.connect(url) as b:
            hubs = (a, b)
            held: dict[tuple[int, str], int] = {}  # (hub, id) -> its references
            for who, op, n in ops:
                refs, ref_id = hubs[who].refs, sha(_CONTENTS[n])
                total = sum(c for (_, i), c in held.items() if i == ref_id)
                mine = held.get((who, ref_id), 0)
                if op == "store":
                    assert (await refs.store(_CONTENTS[n])).refcount == total + 1
                    held[who, ref_id] = mine + 1
                elif total == 0:  # not stored: ref_counting evicted it at zero
                    with pytest.raises(RefNotFound):
                        await (refs.retain if op == "retain" else refs.release)(ref_id)
                elif op == "retain":
                    assert (await refs.retain(ref_id)).refcount == total + 1
                    held[who, ref_id] = mine + 1
                elif mine == 0:
                    with pytest.raises(RefNotHeld):
                        await refs.release(ref_id)
                else:
                    assert await refs.release(ref_id) == total - 1
                    held[who, ref_id] = mine - 1
                expected: dict[str, int] = {}
                for (_, i), c in held.items():
                    if c:
                        expected[i] = expected.get(i, 0) + c
                assert await refcounts(a) == expected

    asyncio.run(scenario(fresh_url()))


# --- listings survive a missing blob --------------------------------------------------------------


async def test_dead_letters_list_the_others_when_one_blob_is_gone(hub: agentcomm.Hub) -> None:
    sender, inbox = await hub.agent("sender"), await hub.agent("inbox")
    payloads = [{"n": i, "pad": str(i) * 20_000} for i in range(3)]
    for p in payloads:
        await sender.send("inbox", p, max_attempts=1)
    refs = []
    for _ in payloads:
        msg = await inbox.receive(timeout=5)
        assert msg is not None and msg.payload_ref is not None
        refs.append(msg.payload_ref.id)
        await msg.nack()  # the last attempt: dead-lettered, still holding its payload
    await evict(hub, refs[1])
    assert refs[1] not in await refcounts(hub)
    letters = await hub.dead_letters("inbox")
    assert [letter.data for letter in letters[::2]] == payloads[::2]
    assert letters[1].data is None and letters[1].error is not None
    assert refs[1] in letters[1].error and "No blob" in letters[1].error
    assert len(letters) == 3


async def test_pending_lists_a_message_whose_blob_is_gone(hub: agentcomm.Hub) -> None:
    sender = await hub.agent("sender")
    await hub.agent("inbox")
    ids = [await sender.send("inbox", {"n": i, "pad": str(i) * 20_000}) for i in range(2)]
    first = next(iter(await refcounts(hub)))
    await evict(hub, first)
    assert [p.id for p in await hub.pending("inbox")] == ids
