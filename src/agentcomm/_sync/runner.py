"""The event loop a blocking hub runs its async implementation on, in a thread of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .._errors import AsyncMisuse, HubClosed

__all__ = ["LoopThread"]

_T = TypeVar("_T")

#: Seconds `LoopThread.close()` gives the tasks still running to end after being cancelled, the
#: async generators to close, and then the thread to finish.
CANCEL_GRACE = 1.0
JOIN_GRACE = 2.0


class LoopThread:
    """An asyncio event loop running in a daemon thread; `run()` blocks on a coroutine there.

    Calls may come from any thread, also one running an event loop of its own (Jupyter): the
    caller only waits for a `concurrent.futures.Future`. `close()` is idempotent and bounded.
    """

    def __init__(self, name: str = "agentcomm-sync") -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this loop's thread (where blocking would deadlock)."""
        return threading.get_ident() == self._thread.ident

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run `coro` on the loop and wait for its result (or exception) in this thread.

        A cancel of the caller (KeyboardInterrupt) cancels the coroutine; a coroutine cut off
        by `close()` raises HubClosed.
        """
        if self.in_loop_thread():
            coro.close()
            raise AsyncMisuse(
                "A blocking agentcomm.sync call was made on the sync hub's own event loop (from "
                "a callback the hub runs, such as update()'s function). Do not call the "
                "blocking API there: return a value, or pass a coroutine function and use the "
                "async API."
            )
        with self._lock:
            if self._closed:
                coro.close()
                raise HubClosed(
                    "This sync hub was closed; open a new one with agentcomm.sync.connect()."
                )
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise HubClosed("The sync hub was closed while this call was waiting.") from None
        except BaseException:
            future.cancel()  # KeyboardInterrupt and the like end the call too
            raise

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and end its thread (bounded)."""
        if self.in_loop_thread():
            raise AsyncMisuse("A sync hub cannot be closed from its own event loop.")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        done = asyncio.run_coroutine_threadsafe(self._wind_down(), self.loop)
        with contextlib.suppress(Exception):
            done.result(timeout=3 * CANCEL_GRACE + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(JOIN_GRACE)
        if not self._thread.is_alive():
            self.loop.close()

    async def _wind_down(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.loop.shutdown_asyncgens(), CANCEL_GRACE)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.loop.shutdown_default_executor(), CANCEL_GRACE)
