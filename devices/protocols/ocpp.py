"""OCPP 1.6J over websockets, either end: security profiles, the handshake, one decode path per frame.

`OcppSecurity` is the OCPP 1.6 security whitepaper's profiles: 0 (no authentication, refused
unless allowed), 1 (HTTP Basic authentication, username = charge point id, password per
charge point) and 2 (the same over TLS: wss://). `Handshake` is the websockets
`process_request` that checks every connection before it is accepted: the path names a known
charge point (404), the client offers the subprotocol "ocpp1.6" (400), the credentials match
(401); a refusal is counted and logged (never a password: the Authorization header is not).

`OcppPeer` is one connection, used by the central system and by the simulated charge points
alike. Every inbound frame goes through `handle`, the per-message boundary: `decode_frame`
(text, size, nesting, JSON via `edge.decode`, then the OCPP-J envelope), then the OCPP 1.6
JSON schema of the action (the library's schemas, `check_payload`), then the handler. A bad
frame is counted, logged on transitions (`edge.decode.Refusals`) and answered with a CALLERROR
when its message id can be read; it never ends the connection, let alone another one.
Requests (`request`) go out one at a time per connection, as OCPP-J asks, each under a timeout,
and their errors leave as `edge.errors`: DeviceTimeout, DeviceUnavailable, DeviceReplyError.

The library (`ocpp` 2.1) gives the payload classes, the schemas and the error codes; the
correlation of answers to requests is here (a future per request, failed at once when the
connection closes), so nothing depends on the library's private state.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
import ssl
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import orjson
import structlog
from ocpp.charge_point import camel_to_snake_case, remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import (
    FormationViolationError,
    InternalError,
    NotImplementedError,
    NotSupportedError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.messages import Call, CallError, CallResult, get_validator
from ocpp.v16 import call_result
from ocpp.v16.enums import Action
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.frames import CloseCode
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from edge import redact
from edge.decode import MAX_BYTES, MAX_DEPTH, Refusal, Refusals, decode_json, shown_id
from edge.errors import ConfigError, DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable

__all__ = [
    "SUBPROTOCOL",
    "BadFrame",
    "Handler",
    "Handshake",
    "OcppPeer",
    "OcppSecurity",
    "OcppStats",
    "check_payload",
    "decode_frame",
    "iso",
    "listen",
    "quiet_websockets",
]

log = structlog.get_logger(__name__)

SUBPROTOCOL = "ocpp1.6"
VERSION = "1.6"
MAX_UNIQUE_ID = 36  # OCPP-J: a message id is at most 36 characters
_ACTION = re.compile(r"[A-Za-z]{1,64}")
# Schemas whose numbers carry "multipleOf 0.1": validated with decimals (a float 0.3 is no multiple of 0.1)
_DECIMAL = frozenset({(2, "SetChargingProfile"), (2, "RemoteStartTransaction"), (3, "GetCompositeSchedule")})
_KNOWN_ACTIONS = frozenset(a.value for a in Action)

Handler = Callable[..., Awaitable[Any]]
"""An action's handler: the payload's fields as snake_case keywords; returns a `call_result` payload."""


@dataclass(frozen=True, slots=True)
class OcppSecurity:
    """OCPP 1.6 security profile of a central system.

    0: no authentication, plain ws:// (refused unless `allow_profile_0`); 1: ws:// with HTTP
    Basic authentication, username = charge point id, password from `passwords`; 2: the same
    over TLS (wss://) with the server certificate `cert_file` and its key `key_file` (PEM).
    """

    profile: int
    passwords: Mapping[str, str] = field(default_factory=dict)
    cert_file: Path | None = None
    key_file: Path | None = None
    allow_profile_0: bool = False

    def __post_init__(self) -> None:
        if self.profile not in (0, 1, 2):
            raise ConfigError(f"OCPP security profile {self.profile!r}: expected 0, 1 or 2", key="profile")
        if self.profile == 0 and not self.allow_profile_0:
            raise ConfigError(
                "OCPP security profile 0 (no authentication, no TLS) refused: use profile 1 or 2, "
                "or set allow_profile_0",
                key="allow_profile_0",
            )
        if self.profile == 2:
            for key, path in (("cert_file", self.cert_file), ("key_file", self.key_file)):
                if path is None or not Path(path).is_file():
                    raise ConfigError(f"security profile 2 (TLS) needs a {key}: {path!r} is no file", key=key)
        object.__setattr__(self, "passwords", MappingProxyType(dict(self.passwords)))
        redact.remember(*self.passwords.values())

    @property
    def scheme(self) -> str:
        """ "wss" for profile 2, else "ws"."""
        return "wss" if self.profile == 2 else "ws"

    def check_charge_points(self, ids: Collection[str]) -> None:
        """ConfigError naming the charge points without a password (profiles 1 and 2)."""
        if self.profile == 0:
            return
        missing = sorted(cp for cp in ids if not self.passwords.get(cp))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ConfigError(f"no password for charge point(s) {shown}", key="passwords")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (TLS 1.2 or newer) for profile 2, else None."""
        if self.profile != 2 or self.cert_file is None or self.key_file is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate: {exc}", key="cert_file") from exc
        return ctx


@dataclass(slots=True)
class OcppStats:
    """Counters of a central system (or a fleet of simulated charge points): frames, calls, refusals.

    `messages_in` / `messages_out` count frames by action for CALLs, and "CALLRESULT" /
    "CALLERROR" for answers. `calls` are requests sent, `call_errors` CALLERRORs received in
    answer to them, `call_timeouts` requests left unanswered.
    """

    messages_in: Counter[str] = field(default_factory=Counter)
    messages_out: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    call_errors: int = 0
    call_timeouts: int = 0
    boots: int = 0
    connections: int = 0
    refused_handshakes: int = 0
    refused_frames: int = 0
    writes: int = 0
    write_errors: int = 0


class BadFrame(NamedTuple):
    """A frame that is no OCPP-J message: why, and its message id when one could be read."""

    refusal: Refusal
    unique_id: str | None = None
    error: type[OCPPError] = FormationViolationError


@functools.lru_cache(maxsize=1024)
def _snake(key: str) -> str:
    return str(next(iter(camel_to_snake_case({key: None}))))


@functools.lru_cache(maxsize=1024)
def _camel(key: str) -> str:
    return str(next(iter(snake_to_camel_case({key: None}))))


def snake_keys(data: Any) -> Any:
    """The library's camelCase -> snake_case of every key (handler keywords), its key conversion
    cached: its regular expressions per key cost more than the rest of a message's handling."""
    if isinstance(data, dict):
        return {_snake(k): snake_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [snake_keys(v) for v in data]
    return data


def camel_keys(data: Any) -> Any:
    """The library's snake_case -> camelCase of every key (a payload as sent), cached likewise."""
    if isinstance(data, dict):
        return {_camel(k): camel_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [camel_keys(v) for v in data]
    return data


def decode_frame(raw: str | bytes, max_bytes: int = MAX_BYTES) -> Call | CallResult | CallError | BadFrame:
    """One frame as a library message (Call, CallResult, CallError), or a BadFrame; never raises.

    Size, UTF-8, nesting and JSON are `edge.decode`'s checks; then the OCPP-J envelope:
    [2, id, action, {payload}], [3, id, {payload}] or [4, id, code, description, {details}].
    """
    if isinstance(raw, bytes):
        return BadFrame(Refusal("binary_frame", f"{len(raw)} bytes; OCPP-J uses text frames"))
    data = decode_json(raw, max_bytes=max_bytes, max_depth=MAX_DEPTH)
    if isinstance(data, Refusal):
        return BadFrame(data)
    if not isinstance(data, list) or len(data) < 3 or data[0] not in (2, 3, 4):
        return BadFrame(Refusal("not_ocpp", "expected [2|3|4, message id, ...]"))
    kind, uid = data[0], data[1]
    if not isinstance(uid, str) or not 0 < len(uid) <= MAX_UNIQUE_ID:
        return BadFrame(Refusal("not_ocpp", f"message id must be 1-{MAX_UNIQUE_ID} characters"))
    if kind == 2:
        if len(data) != 4 or not isinstance(data[2], str) or not isinstance(data[3], dict):
            return BadFrame(Refusal("not_ocpp", "a CALL is [2, id, action, {payload}]"), uid, ProtocolError)
        if _ACTION.fullmatch(data[2]) is None:
            return BadFrame(Refusal("not_ocpp", f"action {shown_id(data[2])}"), uid, NotSupportedError)
        return Call(uid, data[2], data[3])
    if kind == 3:
        if len(data) != 3 or not isinstance(data[2], dict):
            return BadFrame(Refusal("not_ocpp", "a CALLRESULT is [3, id, {payload}]"))
        return CallResult(uid, data[2])
    if len(data) != 5 or not all(isinstance(x, str) for x in data[2:4]) or not isinstance(data[4], dict):
        return BadFrame(Refusal("not_ocpp", "a CALLERROR is [4, id, code, description, {details}]"))
    return CallError(uid, data[2][:50], data[3][:255], data[4])


def check_payload(kind: int, action: str, payload: dict[str, Any]) -> OCPPError | None:
    """None if `payload` fits the OCPP 1.6 schema of `action` (kind 2: request, 3: answer), else
    the OCPP error to answer with. `action` must be one of ours (a known action, never a path)."""
    decimal = (kind, action) in _DECIMAL
    try:
        validator = get_validator(kind, action, VERSION, parse_float=Decimal if decimal else float)
    except (OSError, ValueError):
        return NotImplementedError(description=f"no schema for {action}")
    data = json.loads(json.dumps(payload), parse_float=Decimal) if decimal else payload
    error = next(iter(validator.iter_errors(data)), None)
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path) or "payload"
    text = f"{where}: {str(error.message)[:160]}"
    cls: type[OCPPError] = {
        "type": TypeConstraintViolationError,
        "required": OccurenceConstraintViolationError,
        "maxLength": TypeConstraintViolationError,
        "enum": PropertyConstraintViolationError,
        "multipleOf": PropertyConstraintViolationError,
    }.get(str(error.validator), FormationViolationError)
    return cls(description=text)


class Handshake:
    """websockets' `process_request`: path, subprotocol and credentials of a connection.

    Accepted, the connection's `username` is the charge point id (profile 0 too). Refused,
    the client gets 404 (path or unknown charge point), 400 (no "ocpp1.6") or 401 (credentials).
    """

    def __init__(
        self,
        path: str,
        charge_points: Collection[str],
        security: OcppSecurity,
        stats: OcppStats,
        refusals: Refusals,
    ) -> None:
        self.prefix = path.rstrip("/") + "/"
        self.charge_points = frozenset(charge_points)
        self.security = security
        self.stats = stats
        self.refusals = refusals

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        where = urlsplit(request.path).path
        if not where.startswith(self.prefix):
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "", "bad_path", f"path {shown_id(where)}")
        cp_id = unquote(where[len(self.prefix) :])
        if cp_id not in self.charge_points:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "", "unknown_charge_point", shown_id(cp_id))
        offered = {p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")}
        if SUBPROTOCOL not in offered:
            return self._refuse(
                connection, HTTPStatus.BAD_REQUEST, cp_id, "no_subprotocol", "ocpp1.6 not offered"
            )
        if self.security.profile >= 1 and not self._authenticated(cp_id, request):
            return self._refuse(connection, HTTPStatus.UNAUTHORIZED, cp_id, "bad_credentials", "basic auth")
        connection.username = cp_id
        return None

    def _authenticated(self, cp_id: str, request: Request) -> bool:
        header = request.headers.get("Authorization")
        if header is None:
            return False
        try:
            username, password = parse_authorization_basic(header)
        except InvalidHeader:
            return False
        expected = self.security.passwords.get(cp_id, "")
        # both comparisons always run: the time taken says nothing about which one failed
        user_ok = hmac.compare_digest(username.encode(), cp_id.encode())
        pw_ok = hmac.compare_digest(password.encode(), expected.encode())
        return user_ok and pw_ok and bool(expected)

    def _refuse(
        self, connection: ServerConnection, status: HTTPStatus, cp_id: str, reason: str, detail: str
    ) -> Response:
        self.stats.refused_handshakes += 1
        peer = connection.remote_address
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self.refusals.refuse(f"{cp_id or '-'}@{host}", Refusal(reason, detail))
        response = connection.respond(status, f"{status.phrase}\n")
        if status is HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = build_www_authenticate_basic("ocpp")
        return response


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]],
    host: str,
    port: int,
    handshake: Handshake,
    *,
    timeout_s: float,
    max_bytes: int,
) -> Server:
    """A websockets server for OCPP-J: subprotocol ocpp1.6, every handshake through `handshake`,
    frames up to `max_bytes`, TLS for security profile 2. Port 0 binds a free port (see `sockets`)."""
    return await serve(
        handler,
        host,
        port,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        process_request=handshake,
        compression=None,  # small JSON frames: deflate costs more CPU than it saves bytes
        max_size=max_bytes,
        open_timeout=timeout_s,
        close_timeout=timeout_s,
        ssl=handshake.security.ssl_context(),
        server_header=None,
    )


class OcppPeer:
    """One OCPP-J connection: reads frames into handlers, sends requests and awaits their answers.

    `handlers` maps an action to its handler; an action without one is answered NotImplemented
    (a 1.6 action) or NotSupported. `on_frame` hears of every inbound frame (what feeds a
    charger's watchdog, or tells a central system a charger is alive).
    """

    def __init__(
        self,
        name: str,
        ws: Connection,
        handlers: Mapping[str, Handler],
        *,
        stats: OcppStats,
        refusals: Refusals,
        timeout_s: float,
        max_bytes: int = MAX_BYTES,
        on_frame: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.ws = ws
        self.handlers = handlers
        self.stats = stats
        self.refusals = refusals
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.on_frame = on_frame
        self.closed = False
        self.close_reason = ""
        self._pending: dict[str, asyncio.Future[CallResult | CallError]] = {}
        self._lock = asyncio.Lock()  # one CALL in flight per direction (OCPP-J)

    # -- inbound ---------------------------------------------------------------------

    async def serve(self) -> None:
        """Read frames until the connection closes; then fail the requests still waiting."""
        try:
            async for raw in self.ws:
                await self.handle(raw)
        except (ConnectionClosed, DeviceError):  # closed, or an answer could not be sent
            pass
        finally:
            self._closed(self._close_text())

    def _close_text(self) -> str:
        proto = self.ws.protocol
        codes = [f.code for f in (proto.close_rcvd, proto.close_sent) if f is not None]
        if CloseCode.MESSAGE_TOO_BIG in codes:
            self.stats.refused_frames += 1
            self.refusals.refuse(
                self.name, Refusal("payload_too_large", f"a frame over {self.max_bytes} bytes")
            )
            return "frame too large"
        return self.close_reason or f"connection closed ({codes[0] if codes else 'no close frame'})"

    def _closed(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(
                    DeviceUnavailable(f"connection closed: {self.close_reason}", endpoint=self.name)
                )
        self._pending.clear()

    async def handle(self, raw: str | bytes) -> None:
        """One inbound frame, whatever it holds: a bad one is refused, answered if it can be, counted."""
        if self.on_frame is not None:
            self.on_frame()
        msg = decode_frame(raw, self.max_bytes)
        if isinstance(msg, BadFrame):
            self._refuse(msg.refusal)
            if msg.unique_id is not None:
                await self._answer_error(msg.unique_id, msg.error(description=msg.refusal.detail[:200]))
            return
        if isinstance(msg, Call):  # counted by action; made-up actions in one bucket (bounded)
            self.stats.messages_in[msg.action if msg.action in _KNOWN_ACTIONS else "(unknown)"] += 1
            await self._on_call(msg)
            return
        fut = self._pending.get(msg.unique_id)
        if fut is None or fut.done():
            self._refuse(Refusal("unexpected_answer", f"no request {shown_id(msg.unique_id)} is waiting"))
            return
        self.stats.messages_in["CALLRESULT" if isinstance(msg, CallResult) else "CALLERROR"] += 1
        fut.set_result(msg)

    def _refuse(self, refusal: Refusal) -> None:
        self.stats.refused_frames += 1
        self.refusals.refuse(self.name, refusal)

    async def _on_call(self, msg: Call) -> None:
        handler = self.handlers.get(msg.action)
        if handler is None:
            known = msg.action in _KNOWN_ACTIONS
            self._refuse(Refusal("unsupported_action", shown_id(msg.action)))
            err = NotImplementedError if known else NotSupportedError
            await self._answer_error(msg.unique_id, err(description=f"{msg.action} is not handled here"))
            return
        invalid = check_payload(2, msg.action, msg.payload)
        if invalid is not None:
            self._refuse(Refusal("invalid_payload", f"{msg.action}: {invalid.description}"))
            await self._answer_error(msg.unique_id, invalid)
            return
        try:
            result = await handler(**snake_keys(msg.payload))
        except OCPPError as exc:  # the handler's verdict (e.g. a value it cannot take)
            await self._answer_error(msg.unique_id, exc)
            return
        except Exception as exc:  # a bug in a handler: answered, logged once per peer, never fatal
            self.refusals.crashed(self.name, exc)
            await self._answer_error(msg.unique_id, InternalError(description=type(exc).__name__))
            return
        payload = camel_keys(remove_nones(serialize_as_dict(result)))
        self.refusals.accepted(self.name)
        self.stats.messages_out["CALLRESULT"] += 1
        await self._send([3, msg.unique_id, payload])

    async def _answer_error(self, unique_id: str, exc: OCPPError) -> None:
        self.stats.messages_out["CALLERROR"] += 1
        await self._send([4, unique_id, exc.code, str(exc.description)[:255], dict(exc.details or {})])

    async def _send(self, frame: list[Any]) -> None:
        """One text frame, within the timeout; a peer that does not read is dropped."""
        text = orjson.dumps(frame).decode()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.ws.send(text)
        except TimeoutError as exc:
            await self.close("send timed out", abort=True)
            raise DeviceTimeout(f"send to {self.name}: no progress within {self.timeout_s} s") from exc
        except ConnectionClosed as exc:
            raise DeviceUnavailable(f"{self.name}: connection closed", endpoint=self.name) from exc

    # -- outbound ----------------------------------------------------------------------

    async def request(self, payload: Any, timeout_s: float | None = None) -> Any:
        """Send a CALL (a `ocpp.v16.call` payload) and return the answer's `call_result` payload.

        DeviceUnavailable when the connection is closed (or closes meanwhile), DeviceTimeout
        when no answer comes within `timeout_s` real seconds (default: the peer's), and
        DeviceReplyError for a CALLERROR or an answer that breaks the schema.
        """
        action = type(payload).__name__
        limit = self.timeout_s if timeout_s is None else timeout_s
        body = camel_keys(remove_nones(serialize_as_dict(payload)))
        invalid = check_payload(2, action, body)
        if invalid is not None:  # our bug: never sent
            raise DeviceReplyError(
                f"{action} request breaks the schema: {invalid.description}", endpoint=self.name
            )
        if self.closed:
            raise DeviceUnavailable(f"{self.name}: not connected ({self.close_reason})", endpoint=self.name)
        uid = uuid.uuid4().hex
        fut: asyncio.Future[CallResult | CallError] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(limit):
                async with self._lock:
                    self._pending[uid] = fut
                    self.stats.calls += 1
                    self.stats.messages_out[action] += 1
                    await self._send([2, uid, action, body])
                    answer = await fut
        except TimeoutError as exc:
            self.stats.call_timeouts += 1
            raise DeviceTimeout(
                f"{action} to {self.name}: no answer within {limit} s", endpoint=self.name
            ) from exc
        finally:
            self._pending.pop(uid, None)
        if isinstance(answer, CallError):
            self.stats.call_errors += 1
            raise DeviceReplyError(
                f"{action} to {self.name}: {answer.error_code}: {answer.error_description}"[:300],
                endpoint=self.name,
            )
        invalid = check_payload(3, action, answer.payload)
        if invalid is not None:
            raise DeviceReplyError(
                f"{action} answer breaks the schema: {invalid.description}", endpoint=self.name
            )
        try:
            return getattr(call_result, action)(**snake_keys(answer.payload))
        except TypeError as exc:  # a field the schema let pass but the payload class does not know
            raise DeviceReplyError(f"{action} answer: {exc}", endpoint=self.name) from exc

    async def close(self, reason: str, *, abort: bool = False) -> None:
        """Close the connection (within the timeout; `abort`: at once, no closing handshake)."""
        if not self.closed:
            self.close_reason = reason
        if abort:
            self.ws.transport.abort()
        else:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.ws.close(CloseCode.NORMAL_CLOSURE, reason[:120])
            except TimeoutError:
                self.ws.transport.abort()
        self._closed(reason)


def quiet_websockets(level: int = logging.INFO) -> None:
    """Keep websockets' loggers at `level` or quieter: at DEBUG they log every header (the Basic
    Authorization of a charge point among them) and every frame (idTags)."""
    logger = logging.getLogger("websockets")
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)


def iso(ts: float) -> str:
    """Clock seconds as an OCPP dateTime (UTC, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
