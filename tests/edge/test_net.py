"""`free_port`: a port a server can listen on, outside the range outgoing connections use."""

from __future__ import annotations

import asyncio

from edge.net import _ephemeral_low, free_port


async def test_a_picked_port_takes_a_server_and_is_not_an_ephemeral_one() -> None:
    ports = {free_port() for _ in range(20)}
    assert all(1024 < p < _ephemeral_low() for p in ports)
    assert len(ports) > 1  # picked at random, not one fixed port
    port = ports.pop()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    async with server:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5.0)
        writer.close()
        await writer.wait_closed()
