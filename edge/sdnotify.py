"""systemd's service notifications: READY=1 once the daemon runs, WATCHDOG=1 while its loop does.

Under `Type=notify` with `WatchdogSec=`, systemd sets `NOTIFY_SOCKET` and `WATCHDOG_USEC`. The
keep-alive is sent from a task on the event loop every third of the watchdog interval, so a loop
that is frozen or stuck stops the keep-alives and systemd restarts the service (`Restart=`):
a thread would keep pinging for a dead loop. Without `NOTIFY_SOCKET` (a terminal, a test, the
demo) nothing is sent. An abstract socket name starts with "@".
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger(__name__)


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send one notification (e.g. "READY=1"); False when not under systemd or it failed."""
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("sd_notify_failed", message=message, error=str(exc))
        return False
    return True


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """A third of systemd's watchdog timeout (`WATCHDOG_USEC`), None when there is none."""
    usec = (env if env is not None else os.environ).get("WATCHDOG_USEC", "")
    return int(usec) / 3e6 if usec.isdigit() and int(usec) > 0 else None


async def keep_alive(env: dict[str, str] | None = None) -> None:
    """READY=1, then WATCHDOG=1 from the event loop until cancelled (then STOPPING=1)."""
    if not notify("READY=1", env):
        return
    every = watchdog_interval_s(env)
    try:
        while every is not None:
            await asyncio.sleep(every)
            notify("WATCHDOG=1", env)
        await asyncio.Event().wait()
    finally:
        notify("STOPPING=1", env)
