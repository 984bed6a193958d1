"""The small HTTP client: bodies by length, chunked or to the end; a silent or absent server is an
UpstreamError naming the URL without its password. Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from edge.errors import UpstreamError
from edge.http_client import request
from edge.net import free_port


@contextlib.asynccontextmanager
async def serve(answer: bytes | None) -> AsyncIterator[int]:
    """A server that reads one request and writes `answer` (None: never answers)."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if answer is None:
                await release.wait()
            else:
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        release.set()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\n["a"',
        b'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n["\r\n2\r\na"\r\n0\r\n\r\n',
        b'HTTP/1.1 201 Created\r\nConnection: close\r\n\r\n["a"',
    ],
    ids=["length", "chunked", "to-the-end"],
)
async def test_a_body_is_read_by_length_chunks_or_to_the_end(answer: bytes) -> None:
    """The same body, however the server frames it."""
    async with serve(answer) as port:
        resp = await request("POST", f"http://127.0.0.1:{port}/x?y=1", b"[]", timeout_s=5)
    assert resp.status == 201
    assert resp.body == b'["a"'


async def test_a_silent_server_times_out_and_a_closed_port_fails_fast() -> None:
    """No answer within the timeout, or nobody listening: UpstreamError, the password masked."""
    async with serve(None) as port:
        with pytest.raises(UpstreamError, match=r"no answer within 0\.2 s") as err:
            await request("POST", f"http://user:hunter22@127.0.0.1:{port}/", timeout_s=0.2)
    assert "hunter22" not in str(err.value)
    with pytest.raises(UpstreamError, match="ConnectionRefusedError"):
        await request("GET", f"http://127.0.0.1:{free_port()}/", timeout_s=5)
