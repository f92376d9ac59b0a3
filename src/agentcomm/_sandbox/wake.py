"""Wake-ups between the two sides, without busy polling.

Each side binds a Unix datagram socket in the shared directory (`host.wake`, `sandbox.wake`,
writable by every user so a sandbox running as another uid can send to it) and sends one
datagram to the other side's socket after each commit. When the sides do not share a kernel
(a VM file-sharing mount) the datagram cannot arrive; a waiter then notices the peer's commit by
a cheap `stat` of the peer's files (size, mtime, inode of the database and its `-wal`), checked
every 10 ms after activity and backing off to every 50 ms, and the caller bounds every wait by
its own idle interval, after which it reads the database anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

__all__ = ["Token", "Waker"]

Token = tuple[int, tuple[tuple[int, int, int], ...]]
TICK_MIN = 0.01
TICK_MAX = 0.05
#: AF_UNIX paths longer than this cannot be bound (Linux: 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


def _signature(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Waker:
    """Wake-ups for one side: its own socket, the peer's socket, the peer's files."""

    def __init__(self, directory: str, own_socket: str, peer_socket: str, peer_file: str) -> None:
        self.own_path = os.path.join(directory, own_socket)
        self.peer_path = os.path.join(directory, peer_socket)
        peer_db = os.path.join(directory, peer_file)
        self._watched = (peer_db, peer_db + "-wal")
        self._sock: socket.socket | None = None
        self._sender: socket.socket | None = None
        self._generation = 0
        self._waiters: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        #: True when the own socket is bound (else the side relies on polling alone).
        self.listening = False

    def start(self) -> None:
        """Bind the own socket (replacing a stale one) and listen on the running loop."""
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        if len(os.fsencode(self.own_path)) > MAX_SOCKET_PATH:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.own_path)
            sock.bind(self.own_path)
            os.chmod(self.own_path, 0o666)  # the other side may run as another user
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._readable)
        except OSError:
            sock.close()
            return
        self._sock = sock
        self.listening = True

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        self.wake()

    def wake(self) -> None:
        """Wake every waiter of this side (a datagram came, or the side closes)."""
        self._generation += 1
        for event in self._waiters:
            event.set()

    def ping(self) -> None:
        """Tell the peer something changed (never blocks, never fails)."""
        sender = self._sender
        if sender is None:
            return
        with contextlib.suppress(OSError):
            sender.sendto(b"!", self.peer_path)

    def token(self) -> Token:
        """Take before reading storage; `wait(token, ...)` returns at once if anything changed
        since."""
        return self._generation, _signature(self._watched)

    async def wait(self, token: Token, timeout: float) -> bool:
        """Wait until a wake-up or a change of the peer's files since `token`, at most
        `timeout` seconds; True when woken, False on timeout."""
        if self._closed or token[0] != self._generation:
            return True
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        event = asyncio.Event()
        self._waiters.add(event)
        tick = TICK_MIN
        try:
            while True:
                if _signature(self._watched) != token[1]:
                    return True
                remaining = end - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(tick, remaining))
                    return True
                tick = min(tick * 2, TICK_MAX)
        finally:
            self._waiters.discard(event)

    def close(self) -> None:
        """Stop listening, remove the own socket, and wake every waiter."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.own_path)
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        self.wake()
