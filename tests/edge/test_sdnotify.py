"""systemd notifications over a real unix datagram socket, as systemd receives them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from pathlib import Path

from edge.sdnotify import keep_alive, notify, watchdog_interval_s


async def test_ready_then_keep_alives_from_the_loop_then_stopping() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "150000"}  # a keep-alive every 50 ms
            loop = asyncio.get_running_loop()
            task = asyncio.create_task(keep_alive(env), name="test.keep_alive")
            got = [(await asyncio.wait_for(loop.sock_recv(sock, 64), 5)).decode() for _ in range(3)]
            assert got == ["READY=1", "WATCHDOG=1", "WATCHDOG=1"]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            last = ""
            while last != "STOPPING=1":  # the keep-alives queued before the cancel come first
                last = (await asyncio.wait_for(loop.sock_recv(sock, 64), 5)).decode()


def test_nothing_is_sent_outside_systemd_and_a_bad_socket_is_no_crash() -> None:
    assert notify("READY=1", {}) is False
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000"}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify.sock"}) is False


async def test_without_systemd_the_keep_alive_ends_at_once() -> None:
    await asyncio.wait_for(keep_alive({}), 1)
