"""What every feature's Lua shares: the prelude of each script, and the runner that calls them.

Every state change of the Redis backend is one script call, so it is atomic against every
other hub on the same server and costs one round trip. Each feature has one script beside it
(`mailbox_lua.py`, whose functions are in `mailbox_lua_functions.py`, `topics_lua.py`,
`shared_memory_lua.py`, `references_lua.py`), dispatching on an operation name; each starts
with `COMMON` and, when its rows carry payloads, the reference holds of `ref_holds.py`.

ARGV is always `prefix, origin, now, op, ...`; `op` may carry a token (`op NUL token`) for a
call that must not apply twice when redis-py runs it again after a dropped connection.
Timestamps travel as the strings Python wrote (`repr` of a float) and are stored as such, so
no float ever goes through Lua's 14-digit `tostring`. After a change a script PUBLISHes
`origin \\n channel \\n channel ...` on `<prefix>wake`; each hub skips its own messages (it
notified its waiters already) and wakes the rest. A reply is published whole, as
`\\1 correlation-id \\n reply`, for the hub waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.commands.core import AsyncScript

from ..._deadline import CALL_DEADLINE
from ..._errors import AgentCommError, BackendUnavailable, ValidationError
from ..._notify import Notifier
from .errors import REDIS_ERRORS, translate

T = TypeVar("T")

logger = logging.getLogger("agentcomm")

#: Seconds a round trip may take beyond the deadline of the blocking call that makes it (a
#: `receive(timeout=1)` against a frozen server raises BackendUnavailable after at most
#: 1 + MARGIN s); no round trip takes longer than the URL's `command_timeout` either.
MARGIN = 1.0

#: The bound of a round trip outside a call with a deadline (`?command_timeout=` in the URL).
DEFAULT_COMMAND_TIMEOUT = 5.0

#: Seconds a call's token outlives `command_timeout` (see `Scripts.once_ms`).
ONCE_MARGIN = 30.0

COMMON = r"""
local P, ORIGIN, NOW_S, OP = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(NOW_S)

-- "op NUL token": a call that must not apply twice. redis-py runs a script again on a new
-- connection when the old one drops, also after the server ran it; the first run records its
-- reply under the token for ONCE_MS ms (longer than any retry of the call can come: see
-- `Scripts.once_ms`) and a rerun returns that reply and changes nothing
local ONCE = false
do
  local nul = string.find(OP, '\0', 1, true)
  if nul then
    ONCE = P .. 'once:' .. string.sub(OP, nul + 1)
    OP = string.sub(OP, 1, nul - 1)
    local done = redis.call('GET', ONCE)
    if done then return cmsgpack.unpack(done) end
  end
end

-- the script's reply, recorded for a rerun when the call has a token (a `false` reply, which
-- only the calls that changed nothing give, is not)
local function once_done(reply)
  if ONCE and reply then redis.call('SET', ONCE, cmsgpack.pack(reply), 'PX', ONCE_MS) end
  return reply
end
local touched, touched_list = {}, {}

local function touch(channel)
  if not touched[channel] then
    touched[channel] = true
    touched_list[#touched_list + 1] = channel
  end
end

-- the `n` fields of `s` separated by NUL bytes (%z); the last one takes the rest of `s`
local patterns = {}
local function split(s, n)
  local pattern = patterns[n]
  if not pattern then
    pattern = '^' .. string.rep('([^%z]*)%z', n - 1) .. '(.*)$'
    patterns[n] = pattern
  end
  return {string.match(s, pattern)}
end

-- a script checks its arguments (and the stored values it relies on) before its first write:
-- Redis does not roll back a script that fails half-way. `arg_num` raises on anything but a
-- number (NaN included), which the backend reports as a ValidationError, nothing written.
local function arg_num(value, what)
  local n = tonumber(value)
  if n == nil or n ~= n then
    error({err = 'BADARG ' .. what .. ' is not a number: ' .. tostring(value)})
  end
  return n
end

-- '' (or nil) for none, else as `arg_num`
local function arg_opt_num(value, what)
  if value == nil or value == '' then return nil end
  return arg_num(value, what)
end

arg_num(NOW_S, 'now')

-- a stored number, or nil when what is stored is missing, not a number or NaN
local function stored_num(value)
  local n = tonumber(value)
  if n ~= n then return nil end
  return n
end

-- HINCRBY that never fails on a damaged counter (it starts again from `n`), so a script does
-- not fail after its first write because of one
local function hincr(key, field, n)
  local cur = redis.call('HGET', key, field)
  if cur and not string.match(cur, '^%-?%d+$') then
    redis.call('HSET', key, field, n)
    return tonumber(n)
  end
  return redis.call('HINCRBY', key, field, n)
end

-- a sequence counter must be an integer (or absent) before a script INCRs it: one that is
-- damaged is refused rather than guessed, as a reused number would overwrite a record
local function check_seq(key)
  local cur = redis.call('GET', key)
  if cur and not string.match(cur, '^%d+$') then
    error({err = 'DAMAGED ' .. key .. ' is not a sequence number (' .. cur .. '): restore it '
      .. 'to the highest number in use'})
  end
end

-- other hubs are woken only if there are any: a lone hub notified its own waiters already
local function others()
  return redis.call('SCARD', P .. 'hubs') > 1
end

local function publish()
  if #touched_list > 0 and others() then
    redis.call('PUBLISH', P .. 'wake', ORIGIN .. '\n' .. table.concat(touched_list, '\n'))
  end
end
"""


def num(value: float) -> str:
    """A float as the scripts take it: Python's exact `repr`.

    NaN is refused here, before any script runs: Redis cannot score it, and a script failing
    half-way would leave what it wrote (Redis does not roll a script back).
    """
    value = float(value)
    if math.isnan(value):
        raise ValidationError("A time or number sent to Redis is NaN; pass a finite number.")
    return repr(value)


def opt_float(value: bytes | None) -> float | None:
    """A number a script returned, or None for its `false`."""
    return None if value is None else float(value)


class Scripts:
    """Runs the features' scripts (and plain commands) on one client, for one store.

    What the feature objects share: the client, the key prefix, this hub's origin id (the
    sender of its wake-ups) and its notifier.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        origin: str,
        where: str,
        notifier: Notifier,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.origin = origin
        self.where = where
        self.notifier = notifier
        self.command_timeout = command_timeout

    def bound(self) -> float:
        """Seconds the next round trip may take: to the deadline of the blocking call in
        progress plus `MARGIN`, and never more than `command_timeout`."""
        deadline = CALL_DEADLINE.get()
        if deadline is None:
            return self.command_timeout
        left = deadline - asyncio.get_running_loop().time()
        return min(max(left, 0.0) + MARGIN, self.command_timeout)

    @property
    def once_ms(self) -> int:
        """Milliseconds a call's token is kept on the server (see `COMMON`).

        redis-py retries a command only within `_bounded`, which ends every round trip,
        retries included, within `command_timeout`; so a rerun reaches the server within
        `command_timeout` of the first run, unless the server sat on a command it had received
        (frozen) for longer than `ONCE_MARGIN`.
        """
        return int((self.command_timeout + ONCE_MARGIN) * 1000)

    def register(self, lua: str) -> AsyncScript:
        """A script object for `lua` (loaded on the server on first use)."""
        return self.client.register_script(lua.replace("ONCE_MS", str(self.once_ms)))

    async def call(
        self,
        script: AsyncScript,
        op: str,
        now: float,
        args: Sequence[Any],
        token: str | None = None,
    ) -> Any:
        """The reply of `op` of `script`, with redis-py's errors mapped to ours.

        With a `token` (unique to this call: a new message id, or `new_id()`), a rerun of the
        call changes nothing and returns the first run's reply.
        """
        head = (self.prefix, self.origin, num(now), op if token is None else f"{op}\0{token}")
        return await self._bounded(self._eval(script, head, args))

    async def _eval(self, script: AsyncScript, head: tuple[str, ...], args: Sequence[Any]) -> Any:
        client = self.client
        try:
            return await client.evalsha(script.sha, 0, *head, *args)
        except rexc.NoScriptError:  # a restarted or flushed server: load it again
            script.sha = await client.script_load(script.script)
            return await client.evalsha(script.sha, 0, *head, *args)

    async def run(
        self,
        script: AsyncScript,
        op: str,
        now: float,
        args: Sequence[Any],
        token: str | None = None,
    ) -> Any:
        """Run `op` of `script`; notify this hub's waiters of the channels it touched (the
        script returns `{result, touched}`)."""
        result, touched = await self.call(script, op, now, args, token)
        if touched:
            self.notifier.notify([c.decode() for c in touched])
        return result

    async def command(self, awaitable: Awaitable[T]) -> T:
        """The result of a plain client command (or pipeline), with errors mapped to ours."""
        return await self._bounded(awaitable)

    async def report_undecodable(self, what: str, errors: Sequence[str]) -> None:
        """Log stored records that cannot be decoded (and were skipped) and count them in the
        store's `undecodable` counter; a failure to count is not the caller's failure."""
        if not errors:
            return
        logger.warning(
            "agentcomm: skipped %d %s that cannot be decoded: %s", len(errors), what, errors[0]
        )
        with contextlib.suppress(AgentCommError):
            await self.command(
                self.client.hincrby(self.prefix + "counters", "undecodable", len(errors))
            )

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result within `bound()` seconds, else BackendUnavailable.

        A round trip cut short closes its connection (redis-py drops a connection whose read
        was interrupted), so no late answer is ever read as the answer to another command.
        """
        bound = self.bound()
        cancels = _cancels()
        try:
            # the timer's own cancel never counts as swallowed: leaving the block undoes it
            async with asyncio.timeout(bound):
                result = await awaitable
        except TimeoutError as exc:  # before REDIS_ERRORS: TimeoutError is an OSError
            raise BackendUnavailable(
                f"Redis at {self.where} did not answer within {bound:.3g} s. The server may be "
                "overloaded, paused or unreachable; retry once it answers (the bound for calls "
                "without a timeout is the URL option command_timeout)."
            ) from exc
        except REDIS_ERRORS as exc:
            raise translate(exc, self.where) from exc
        _raise_swallowed_cancel(cancels)
        return result


def _cancels() -> int:
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


def _raise_swallowed_cancel(before: int) -> None:
    """Raise CancelledError if this task was cancelled during a command that returned anyway.

    redis-py 8 sends under `asyncio.wait_for(..., socket_timeout)`, which on Python 3.11
    returns the inner result and drops a cancel that lands as the send completes. A hub loop
    cancelled then would carry on (and wait for its next re-check): the cancel is delivered
    here instead, as if it had landed just after the command.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
