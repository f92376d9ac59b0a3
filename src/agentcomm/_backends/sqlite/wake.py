"""Cross-process wake-ups for hubs sharing one SQLite file: Unix datagram pings.

Each open hub binds a datagram socket in a directory next to the database (the directory is the
registry of listeners). After a commit, the writer sends the names of the channels it touched
to every other socket there; the receiving hub wakes its local waiters on those channels, which
then re-check the database. A ping is sent after the commit, so it never arrives before the
change is visible (the race inotify on the WAL file has). Sockets of dead processes are
removed by the first sender that finds nobody listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Callable

from ..._notify import ALL

_MAX_PAYLOAD = 2048
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def wake_dir_for(db_path: str) -> str:
    """The registry directory for a database file: beside it, or in the temp dir if too long."""
    real = os.path.realpath(db_path)
    beside = real + ".wake"
    if len(beside) + 40 <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(real.encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"agentcomm-{os.getuid()}", digest)


class WakeBus:
    """This hub's listening socket plus a sender to every other hub on the same database."""

    def __init__(self, directory: str, on_wake: Callable[[set[str]], None]) -> None:
        self._dir = directory
        self._on_wake = on_wake
        self._sock: socket.socket | None = None
        self._path = ""
        self._send_sock: socket.socket | None = None
        self._peers: list[str] = []
        self._dir_mtime = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def available(self) -> bool:
        """Whether this platform has Unix datagram sockets."""
        return hasattr(socket, "AF_UNIX")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the listening socket and start reading it on `loop`."""
        if not self.available:
            return
        self._path = os.path.join(self._dir, f"{os.getpid()}-{os.urandom(6).hex()}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for _ in range(10):  # another hub may remove the empty directory as we create it
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            try:
                sock.bind(self._path)
                break
            except FileNotFoundError:
                continue
        self._sock = sock
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setblocking(False)
        self._send_sock = sender
        self._loop = loop
        loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop listening and remove this hub's socket from the registry."""
        if self._sock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        for s in (self._sock, self._send_sock):
            if s is not None:
                s.close()
        self._sock = self._send_sock = None
        if self._path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = ""
            with contextlib.suppress(OSError):  # the last hub out removes the registry
                os.rmdir(self._dir)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        channels: set[str] = set()
        while True:
            try:
                data = sock.recv(_MAX_PAYLOAD + 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if data == b"*":
                channels.add(ALL)
            else:
                channels.update(data.decode("utf-8", "replace").split("\n"))
        if channels:
            self._on_wake(channels)

    def _refresh_peers(self) -> None:
        try:
            mtime = os.stat(self._dir).st_mtime_ns
        except FileNotFoundError:
            self._peers = []
            return
        if mtime == self._dir_mtime:
            return
        self._dir_mtime = mtime
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            names = []
        own = os.path.basename(self._path)
        self._peers = [
            os.path.join(self._dir, n) for n in names if n.endswith(".sock") and n != own
        ]

    def ping(self, channels: set[str]) -> None:
        """Tell every other hub on this database that `channels` changed (writer thread)."""
        sender = self._send_sock
        if sender is None:
            return
        self._refresh_peers()
        if not self._peers:
            return
        payload = "\n".join(channels).encode()
        if len(payload) > _MAX_PAYLOAD:
            payload = b"*"
        for peer in self._peers:
            try:
                sender.sendto(payload, peer)
            except (ConnectionRefusedError, FileNotFoundError):
                # nobody listens there any more: a crashed process left its socket behind
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(peer)
                self._dir_mtime = -1
            except (BlockingIOError, OSError):
                # the peer's buffer is full: it has wake-ups pending and will re-check anyway
                pass
