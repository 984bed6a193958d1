"""Small network helpers shared by servers, simulators and tests."""

from __future__ import annotations

import functools
import random
import socket
from pathlib import Path

_BELOW_EPHEMERAL = 20_000  # the lowest port `free_port` picks from
_TRIES = 50


@functools.cache
def _ephemeral_low() -> int:
    """The first port the OS hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`.

    For servers that cannot report a port-0 bind back (pymodbus, amqtt, asyncua). Picked below
    the ephemeral range: a port the OS picks for a bind to 0 comes from the range its outgoing
    connections take theirs from, so a client connecting meanwhile could hold it by the time the
    server listens (the city bench's field simulator failed so: "cannot listen on ...").
    """
    top = _ephemeral_low() - 1
    rnd = random.SystemRandom()
    for _ in range(_TRIES if top > _BELOW_EPHEMERAL else 0):
        port = rnd.randint(_BELOW_EPHEMERAL, top)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that were free a moment ago on `host` (`free_port` may pick a port
    twice: it is still free after the first pick; 16 signs' ports collided once in many runs)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports
