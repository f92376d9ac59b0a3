"""What every feature's Lua shares: the prelude of each script, and the runner that calls them.

Every state change of the Redis backend is one script call, so it is atomic against every
other hub on the same server and costs one round trip. Each feature has one script beside it
(`mailbox_lua.py`, whose functions are in `mailbox_lua_functions.py`, `topics_lua.py`,
`shared_memory_lua.py`, `references_lua.py`, `pools_lua.py`, `leases_lua.py`), dispatching on
an operation name; each starts with `COMMON` and, when its rows carry payloads, the reference
holds of `ref_holds.py`.

A script is a `Lua`: parts whose definitions (state and functions) are set up once and whose
`begin` resets that state on each call, then a body run on each call. On Redis 7 and newer
each script is a Functions library (`FUNCTION LOAD` once per server, by the first hub that
finds it missing; then one `FCALL` per operation), so a call runs no definitions; before 7,
or with the URL option `scripts=eval`, or for a user who may not load or call functions, the
same text runs whole under `EVALSHA`. A library's name holds a hash of its code: hubs of
different versions on one server call their own.

ARGV is always `prefix, origin, now, op, ...`; `op` may carry a token (`op NUL ms NUL token`)
for a call that must not apply twice when redis-py runs it again after a dropped connection.
Timestamps travel as the strings Python wrote (`repr` of a float) and are stored as such, so
no float ever goes through Lua's 14-digit `tostring`. After a change a script PUBLISHes
`origin \\n channel \\n channel ...` on `<prefix>wake`; each hub skips its own messages (it
notified its waiters already) and wakes the rest. A reply is published whole, as
`\\1 correlation-id \\n reply`, for the hub waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc

from ..._deadline import CALL_DEADLINE
from ..._errors import AgentCommError, BackendUnavailable, ValidationError
from ..._notify import Notifier
from .errors import REDIS_ERRORS, translate

T = TypeVar("T")

logger = logging.getLogger("agentcomm")
log = logging.getLogger("agentcomm.redis")

#: Seconds a round trip may take beyond the deadline of the blocking call that makes it (a
#: `receive(timeout=1)` against a frozen server raises BackendUnavailable after at most
#: 1 + MARGIN s); no round trip takes longer than the URL's `command_timeout` either.
MARGIN = 1.0

#: The bound of a round trip outside a call with a deadline (`?command_timeout=` in the URL).
DEFAULT_COMMAND_TIMEOUT = 5.0

#: Seconds a call's token outlives `command_timeout` (see `Scripts.once_ms`).
ONCE_MARGIN = 30.0

#: The prelude of every script: its state (set at the start of each call) and the functions
#: every feature uses.
COMMON_DEFS = r"""
local P, ORIGIN, NOW_S, OP, now, ONCE, ONCE_MS
local touched, touched_list

-- the script's reply, recorded for a rerun when the call has a token (a `false` reply, which
-- only the calls that changed nothing give, is not)
local function once_done(reply)
  if ONCE and reply then redis.call('SET', ONCE, cmsgpack.pack(reply), 'PX', ONCE_MS) end
  return reply
end

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

#: The start of every call: the arguments every script takes, and a rerun of a call with a
#: token answered from the first run's record.
COMMON_BEGIN = r"""
P, ORIGIN, NOW_S, OP = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
now = tonumber(NOW_S)
ONCE, ONCE_MS = false, false
touched, touched_list = {}, {}

-- "op NUL ms NUL token": a call that must not apply twice. redis-py runs a script again on a
-- new connection when the old one drops, also after the server ran it; the first run records
-- its reply under the token for `ms` milliseconds (longer than any retry of the call can come:
-- see `Scripts.once_ms`) and a rerun returns that reply and changes nothing
if string.find(OP, '\0', 1, true) then
  local op, ms, token = string.match(OP, '^([^%z]*)%z(%d+)%z(.+)$')
  if not token then error({err = 'BADARG the call token is malformed'}) end
  OP, ONCE_MS, ONCE = op, ms, P .. 'once:' .. token
  local done = redis.call('GET', ONCE)
  if done then return cmsgpack.unpack(done) end
end

arg_num(NOW_S, 'now')
"""


class Part(NamedTuple):
    """A piece of a script: `defs` declares its state and defines its functions (once per
    library load on Redis 7+, on every call under EVALSHA); `begin` (re)sets that state at
    the start of every call."""

    defs: str
    begin: str = ""


COMMON = Part(COMMON_DEFS, COMMON_BEGIN)


class Lua(NamedTuple):
    """One feature's script: its parts (`COMMON` first) and its body, which runs on every
    call after the parts' `begin`s, dispatches on `OP` and returns the reply."""

    name: str
    parts: tuple[Part, ...]
    body: str

    def eval_text(self) -> str:
        """The script as EVALSHA runs it: everything, on every call."""
        return "".join(p.defs for p in self.parts) + self.begins() + self.body

    def begins(self) -> str:
        return "".join(p.begin for p in self.parts)

    def library(self) -> tuple[str, str]:
        """The script as a Redis Functions library (Redis 7+): (its function's name, its
        code). The definitions run once, when the library is loaded; each FCALL runs the
        `begin`s and the body. The name holds a hash of the code, so hubs of different
        versions on one server each call their own."""
        code = (
            "\nlocal ARGV\n"
            + "".join(p.defs for p in self.parts)
            + "\nlocal function main(_, argv)\nARGV = argv\n"
            + self.begins()
            + self.body
            + "\nend\n"
        )
        name = f"agentcomm_{self.name}_{hashlib.sha1(code.encode()).hexdigest()[:16]}"
        head = f"#!lua name={name}\n"
        return name, head + code + f"redis.register_function('{name}', main)\n"


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


class Script:
    """One feature's script, as this client calls it: by FCALL of its library's function
    (Redis 7+), else by EVALSHA of its text."""

    def __init__(self, lua: Lua) -> None:
        self.lua = lua
        self.text = lua.eval_text()
        self.sha = hashlib.sha1(self.text.encode()).hexdigest().encode()
        function, self.code = lua.library()
        self.function = function.encode()


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
        functions: bool = True,
    ) -> None:
        self.client = client
        # redis-py's own, untyped: every command a script call sends
        self._execute: Callable[..., Awaitable[Any]] = client.execute_command
        #: whether calls go by FCALL to a Functions library (Redis 7+); turned off for good on
        #: a server or user that cannot load or call functions (EVALSHA then)
        self.functions = functions
        self.prefix = prefix
        self.origin = origin
        self._prefix_bytes, self._origin_bytes = prefix.encode(), origin.encode()
        self.where = where
        self.notifier = notifier
        self.command_timeout = command_timeout
        self._watchdog = Watchdog()

    def bound(self, now: float) -> float:
        """Seconds a round trip starting at loop time `now` may take: to the deadline of the
        blocking call in progress plus `MARGIN`, and never more than `command_timeout`."""
        deadline = CALL_DEADLINE.get()
        if deadline is None:
            return self.command_timeout
        return min(max(deadline - now, 0.0) + MARGIN, self.command_timeout)

    @property
    def once_ms(self) -> int:
        """Milliseconds a call's token is kept on the server (see `COMMON`).

        redis-py retries a command only within `_bounded`, which ends every round trip,
        retries included, within `command_timeout`; so a rerun reaches the server within
        `command_timeout` of the first run, unless the server sat on a command it had received
        (frozen) for longer than `ONCE_MARGIN`.
        """
        return int((self.command_timeout + ONCE_MARGIN) * 1000)

    def register(self, lua: Lua) -> Script:
        """A script object for `lua` (loaded on the server on first use)."""
        return Script(lua)

    async def call(
        self,
        script: Script,
        op: str,
        now: float,
        args: Sequence[Any],
        token: str | None = None,
    ) -> Any:
        """The reply of `op` of `script`, with redis-py's errors mapped to ours.

        With a `token` (unique to this call: a new message id, or `new_id()`), a rerun of the
        call changes nothing and returns the first run's reply.
        """
        if token is not None:
            op = f"{op}\0{self.once_ms}\0{token}"
        return await self._bounded(self._eval(script, num(now), op, args))

    async def _eval(self, script: Script, now: str, op: str, args: Sequence[Any]) -> Any:
        # the constant arguments go as bytes: redis-py passes bytes through as they are
        execute = self._execute
        prefix, origin = self._prefix_bytes, self._origin_bytes
        if self.functions:
            try:
                return await execute("FCALL", script.function, b"0", prefix, origin, now, op, *args)
            except rexc.ResponseError as exc:
                if not await self._fcall_failed(script, exc):
                    raise
            if self.functions:  # loaded now
                return await execute("FCALL", script.function, b"0", prefix, origin, now, op, *args)
        try:
            return await execute("EVALSHA", script.sha, b"0", prefix, origin, now, op, *args)
        except rexc.NoScriptError:  # a restarted or flushed server: load it again
            await execute("SCRIPT", "LOAD", script.text)
            return await execute("EVALSHA", script.sha, b"0", prefix, origin, now, op, *args)

    async def _fcall_failed(self, script: Script, exc: rexc.ResponseError) -> bool:
        """Whether an FCALL failed before running anything because its library is not loaded
        (it is loaded now) or because this server or user cannot run functions (calls use
        EVALSHA from now on); False for an error of the call itself."""
        words = str(exc).lower()
        if "function not found" in words:
            try:
                await self._execute("FUNCTION", "LOAD", script.code)
            except rexc.ResponseError as load_exc:
                if "already exists" not in str(load_exc):  # else another hub was first
                    self._no_functions(load_exc)
            return True
        if "unknown command" in words or (
            isinstance(exc, rexc.NoPermissionError) and "fcall" in words
        ):
            self._no_functions(exc)
            return True
        return False

    def _no_functions(self, exc: BaseException) -> None:
        self.functions = False
        log.info(
            "Redis at %s cannot load or call functions (%s); using EVALSHA scripts", self.where, exc
        )

    async def run(
        self,
        script: Script,
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
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel (asyncio.timeout raises)
            async with asyncio.timeout(self.command_timeout):
                return await awaitable
        now = task.get_loop().time()
        bound = self.bound(now)
        cancels = task.cancelling()
        watchdog = self._watchdog
        watchdog.enter(task, now + bound)
        try:
            result = await awaitable
        except BaseException as exc:
            if watchdog.leave(task):  # the watchdog cancelled this round trip
                if task.uncancel() <= cancels:
                    raise BackendUnavailable(
                        f"Redis at {self.where} did not answer within {bound:.3g} s. The server "
                        "may be overloaded, paused or unreachable; retry once it answers (the "
                        "bound for calls without a timeout is the URL option command_timeout)."
                    ) from exc
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise asyncio.CancelledError from exc  # cancelled by someone else too
            if isinstance(exc, REDIS_ERRORS):
                raise translate(exc, self.where) from exc
            raise
        if watchdog.leave(task):  # it expired as the answer came: the answer stands
            task.uncancel()
        if task.cancelling() > cancels:
            _raise_swallowed_cancel()
        return result


class Watchdog:
    """Cancels the round trips that outlive their bound (see `Scripts._bounded`).

    One timer for every round trip in flight, armed at the earliest deadline, instead of an
    `asyncio.timeout` (a timer handle made, pushed on the loop's heap and cancelled) per call:
    a call only records its task and deadline. When the timer fires it cancels the overdue
    tasks and re-arms for the next deadline, or stays unarmed when nothing is in flight.
    """

    def __init__(self) -> None:
        self._inflight: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires

    def enter(self, task: asyncio.Task[Any], deadline: float) -> None:
        """`task` starts a round trip that must end by `deadline` (loop time)."""
        self._inflight[task] = deadline
        if deadline < self._at:
            self._arm(task.get_loop(), deadline)

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """`task`'s round trip ended; whether the watchdog cancelled it."""
        del self._inflight[task]
        if self._expired and task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._fire, loop)
        self._at = at

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._at = None, math.inf
        now = loop.time()
        upcoming = math.inf
        for task, deadline in self._inflight.items():
            if deadline <= now:
                if task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            elif deadline < upcoming:
                upcoming = deadline
        if upcoming < math.inf:
            self._arm(loop, upcoming)


def _raise_swallowed_cancel() -> None:
    """Raise CancelledError: this task was cancelled during a command that returned anyway.

    redis-py 8 sends under `asyncio.wait_for(..., socket_timeout)`, which on Python 3.11
    returns the inner result and drops a cancel that lands as the send completes. A hub loop
    cancelled then would carry on (and wait for its next re-check): the cancel is delivered
    here instead, as if it had landed just after the command.
    """
    raise asyncio.CancelledError
