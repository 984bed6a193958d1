"""A TCP proxy on 127.0.0.1 that a test can cut and restore, to take a server away from one
client without stopping the server (the shared PostgreSQL keeps serving other tests)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from edge.net import free_port


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. `cut()` closes every connection and refuses new
    ones (connection refused, as for a server that is down); `hold()` keeps every connection open
    but passes nothing on (a server that hangs); `restore()` listens and passes data again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def __aenter__(self) -> Self:
        await self.restore()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cut()

    def hold(self) -> None:
        """Pass nothing on, in either direction, until `restore()` (connections stay open)."""
        self.flowing.clear()

    async def restore(self) -> None:
        """Listen again on the same port, and pass data on again."""
        self.flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._conns):
            w.close()
        for task in list(self._pumps):
            task.cancel()
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps.clear()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(5):
                up_r, up_w = await asyncio.open_connection(*self.target)
        except (OSError, TimeoutError):
            writer.close()
            return
        self._conns |= {writer, up_w}
        pumps = [
            asyncio.create_task(_pump(reader, up_w, self.flowing), name="proxy.up"),
            asyncio.create_task(_pump(up_r, writer, self.flowing), name="proxy.down"),
        ]
        self._pumps.update(pumps)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._pumps.difference_update(pumps)
        for w in (writer, up_w):
            w.close()
            self._conns.discard(w)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
