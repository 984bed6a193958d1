"""A small HTTP/1.1 client for the daemon's few northbound HTTP calls (an NGSI-LD broker).

One request per connection (`Connection: close`): no pooled socket to go stale behind a NAT or
a broker restart, and a request every few seconds needs no keep-alive. The whole exchange (connect,
send, read) runs under one timeout. The answer's body is read by `Content-Length`, chunked, or to
the end of the connection, and bounded (`MAX_BODY`). Redirects are not followed. `https://` uses
the system's trust store. A connection that fails or times out raises `UpstreamError` (with the URL
without credentials); an answer with any status is returned as a `Response`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from edge.errors import UpstreamError
from edge.redact import redact_url

__all__ = ["MAX_BODY", "Response", "request"]

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer: status, headers (names in lower case) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (orjson.JSONDecodeError, a ValueError, if it is not)."""
        return orjson.loads(self.body)


async def request(
    method: str,
    url: str,
    body: bytes = b"",
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Response:
    """Send one request and read its answer within `timeout_s`; UpstreamError if that fails."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {redact_url(url)!r}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = f"[{host}]" if ":" in host else host
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}:{port}", "Connection: close",
             f"Content-Length: {len(body)}"]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if any("\r" in x or "\n" in x for x in lines):
        raise ValueError("a header holds a line break")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    safe = redact_url(url)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None, limit=MAX_HEAD
            )
            try:
                writer.write(raw)
                await writer.drain()
                return await _read_response(reader)
            finally:
                writer.close()
                with contextlib.suppress(Exception):  # the answer is read; a lost close changes nothing
                    await writer.wait_closed()
    except TimeoutError as exc:
        raise UpstreamError(f"no answer within {timeout_s:g} s", url=safe) from exc
    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise UpstreamError(f"{type(exc).__name__}: {exc}", url=safe) from exc


async def _read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest.split(" ", 1)[0]
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    status = int(code)
    if status in {204, 304} or 100 <= status < 200:
        return Response(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, headers, await _read_chunked(reader))
    if (length := headers.get("content-length")) is not None:
        n = int(length)
        if not 0 <= n <= MAX_BODY:
            raise ValueError(f"body of {n} bytes")
        return Response(status, headers, await reader.readexactly(n))
    data = await reader.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ValueError("body too large")
    return Response(status, headers, data)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n")  # the empty trailer
            return bytes(out)
        if len(out) + size > MAX_BODY:
            raise ValueError("body too large")
        out += await reader.readexactly(size)
        await reader.readexactly(2)
