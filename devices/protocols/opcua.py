"""One OPC UA client session: security, batched requests, subscriptions, reconnect with backoff.

A fresh asyncua client for every session (no library auto-reconnect: its state would
outlive a broken session). Every request runs under a timeout and asyncua's errors become
`edge.errors` here; a timeout or transport error ends the session (a late answer must not
meet the next request). `run` starts sessions forever, waiting an `edge.backoff` delay
after each loss; the caller's session function re-reads and re-subscribes, so
subscriptions come back with the session. Security is Basic256Sha256 SignAndEncrypt, or
none only when the caller allows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from devices.protocols.link import LinkTiming
from edge.errors import ConfigError, DeviceError, DeviceReplyError, DeviceTimeout, DeviceUnavailable
from edge.events import Value
from edge.tasks import cancel_swallowed

__all__ = [
    "BATCH",
    "CLIENT_APPLICATION_URI",
    "ClientSecurity",
    "OpcUaSession",
    "RoutedSubscription",
    "cert_file",
    "chunks",
    "good_value",
    "quiet_asyncua",
    "string_node_id",
]

CLIENT_APPLICATION_URI = "urn:dos-edge:edge:opcua-client"
BATCH = 1000  # nodes per read, write or create-monitored-items request
PATIENT_SILENCE = 3  # timeouts of silence (no answer to anything) before a patient call ends the session
_T = TypeVar("_T")


def cert_file(path: Path) -> CertProperties:
    """A certificate or key file's bytes, read here rather than by asyncua.

    asyncua opens paths in a worker thread; a connect cancelled mid-open strands the file
    object, and its ResourceWarning surfaces later in unrelated code. Bytes cannot leak.
    """
    return CertProperties(path.read_bytes(), extension=path.suffix.lstrip(".").lower() or None)


def quiet_asyncua(level: int = logging.WARNING) -> None:
    """Keep asyncua's loggers at `level` or quieter (never louder than configured)."""
    logger = logging.getLogger("asyncua")
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)


def string_node_id(identifier: str, ns: int) -> ua.NodeId:
    """ns=<ns>;s=<identifier>."""
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


def chunks(items: Sequence[_T], size: int = BATCH) -> Iterator[Sequence[_T]]:
    """`items` in slices of at most `size` (one request each)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def good_value(dv: ua.DataValue | None) -> Any:
    """The value a DataValue carries, or None when it is no measurement (none, or a bad status)."""
    if dv is None or dv.Value is None or (dv.StatusCode is not None and dv.StatusCode.value):
        return None
    return dv.Value.Value


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """Basic256Sha256 SignAndEncrypt: our certificate and key, and the server's certificate."""

    cert_path: Path
    key_path: Path
    server_cert_path: Path

    def check_files(self) -> None:
        """ConfigError naming the key of the first certificate file that does not exist."""
        for key, path in (
            ("security.cert_path", self.cert_path),
            ("security.key_path", self.key_path),
            ("security.server_cert_path", self.server_cert_path),
        ):
            if not Path(path).is_file():
                raise ConfigError(f"no such file: {path}", key=key)


class RoutedSubscription(Subscription):
    """A subscription that hands each publish response over as one batch per device.

    It bypasses asyncua's per-notification event objects (a task or queue item per value):
    client handles index straight into `routes` ((device id, point) per handle).
    `deliver(batch, count)` gets {device: {point: value}} and the number of values.
    """

    def __init__(
        self,
        session: OpcUaSession,
        client: Client,
        params: ua.CreateSubscriptionParameters,
        routes: Sequence[tuple[str, str]],
        deliver: Callable[[dict[str, dict[str, Value]], int], None],
    ) -> None:
        super().__init__(client.uaclient.session, params, None, queue_maxsize=1)
        self.session = session
        self.routes = routes
        self.deliver = deliver

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = self.session.last_answer = time.monotonic()  # the server answers
        message = publish_result.NotificationMessage
        if message.NotificationData is None:
            return
        self.last_sequence_number = int(message.SequenceNumber)
        routes = self.routes
        batch: dict[str, dict[str, Value]] = {}
        count = 0
        for notif in message.NotificationData:
            if isinstance(notif, ua.DataChangeNotification):
                for item in notif.MonitoredItems:
                    handle = item.ClientHandle
                    value = good_value(item.Value) if 0 <= handle < len(routes) else None
                    if value is None:
                        continue  # a bad value is no measurement
                    device_id, point = routes[handle]
                    values = batch.get(device_id)
                    if values is None:
                        values = batch[device_id] = {}
                    values[point] = value
                    count += 1
            elif isinstance(notif, ua.StatusChangeNotification):
                self.session.lose(f"subscription status {notif.Status}")
        self.deliver(batch, count)


class OpcUaSession:
    """Sessions to one OPC UA server, one at a time; `client` is the current one (or None)."""

    def __init__(
        self,
        name: str,
        url: str,
        timing: LinkTiming,
        security: ClientSecurity | None,
    ) -> None:
        self.name = name
        self.url = url
        self.timeout_s = timing.timeout_s
        self.backoff = timing.backoff()
        self.security = security
        self.client: Client | None = None
        self.connected = asyncio.Event()  # set while `client` is connected: writes wait for it
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.last_answer = time.monotonic()  # any request answered (see `call`)

    def lose(self, reason: str) -> None:
        """End the current session (`run` replaces the client)."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def _on_connection_lost(self, exc: Exception) -> None:
        self.lose(f"connection lost: {type(exc).__name__}: {exc}")

    async def call(
        self,
        what: str,
        coro: Coroutine[Any, Any, _T],
        timeout_s: float | None = None,
        *,
        patient: bool = False,
    ) -> _T:
        """Await one request under a timeout (default `timeout_s`); errors become DeviceErrors.

        A refused request (a bad status code) is a DeviceReplyError and keeps the session;
        a transport error ends it, and so does a timeout, unless the call is `patient` (a
        setpoint write): OPC UA matches answers to requests by handle, so a late answer on a
        busy server says nothing about the session while the server answers other requests.
        A patient call's timeout ends the session only when nothing at all (no request, no
        publish response) was answered since it was sent and for PATIENT_SILENCE timeouts. (City bench: 680 setpoints sent together
        to a busy server, three timing out "in a row" dropped all 680 charge points, and
        re-subscribing them loaded the server more: the session was given up again and again.)
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        sent = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                result = await coro
        except TimeoutError as exc:
            quiet_s = time.monotonic() - self.last_answer
            if not patient or (self.last_answer < sent and quiet_s >= PATIENT_SILENCE * self.timeout_s):
                self.lose(f"{what} timed out in flight ({quiet_s:.1f} s without an answer)")
            raise DeviceTimeout(f"{what}: no answer within {limit} s", endpoint=self.name) from exc
        except UaStatusCodeError as exc:
            self.last_answer = time.monotonic()
            raise DeviceReplyError(f"{what}: {exc}", endpoint=self.name) from exc
        except (UaError, OSError, ConnectionError, EOFError) as exc:
            self.lose(f"{what}: {type(exc).__name__}")
            raise DeviceUnavailable(f"{what}: {type(exc).__name__}: {exc}", endpoint=self.name) from exc
        self.last_answer = time.monotonic()
        return result

    async def _new_client(self) -> Client:
        client = Client(self.url, timeout=self.timeout_s, watchdog_intervall=max(0.2, self.timeout_s))
        client.session_timeout = 600_000  # what asyncua servers grant; asking more only logs a warning
        client.application_uri = CLIENT_APPLICATION_URI
        client.name = client.description = "DOS Edge"
        client.connection_lost_callback = self._on_connection_lost
        sec = self.security
        if sec is not None:
            try:
                await client.set_security(
                    SecurityPolicyBasic256Sha256,
                    certificate=cert_file(sec.cert_path),
                    private_key=cert_file(sec.key_path),
                    server_certificate=cert_file(sec.server_cert_path),
                    mode=ua.MessageSecurityMode.SignAndEncrypt,
                )
            except (OSError, ValueError, UaError) as exc:
                raise ConfigError(f"cannot load certificates: {exc}", key="security") from exc
        return client

    async def open(self) -> Client:
        """A fresh client, connected; it is `client` until the session ends."""
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.last_answer = time.monotonic()
        client = await self._new_client()
        self.client = client
        try:
            await self.call("connect", client.connect())
        finally:
            if cancel_swallowed():  # asyncua connects inside wait_for (see `cancel_swallowed`)
                raise asyncio.CancelledError
        self.connected.set()
        return client

    async def wait_lost(self) -> NoReturn:
        """Wait until the session is lost, then raise DeviceUnavailable with the reason."""
        await self.lost.wait()
        raise DeviceUnavailable(self.lost_reason or "session lost", endpoint=self.name)

    async def close(self) -> None:
        """Close the session's client; a dead transport is only torn down, not talked to."""
        client, self.client = self.client, None
        self.connected.clear()
        if client is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                if client.uaclient.state.value == "connected":
                    await client.disconnect()
                else:
                    await client.close_session()
        except (TimeoutError, UaError, OSError, ConnectionError):
            pass
        finally:
            client.disconnect_socket()

    async def run(self, session: Callable[[], Awaitable[None]], on_down: Callable[[str], None]) -> NoReturn:
        """Run `session` forever; after each end close the client, report, back off, start afresh.

        `session` opens (`open`), sets up, resets the backoff once it is up, and returns or
        raises when the session is lost. A ConfigError (certificates) ends the loop.
        """
        while True:
            try:
                await session()
                reason = self.lost_reason or "session ended"
            except DeviceError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except (UaError, OSError, ConnectionError) as exc:  # anything the boundary missed
                reason = f"{type(exc).__name__}: {exc}"
            except BaseException:  # a ConfigError (certificates) or cancellation: closed, then out
                await self.close()
                raise
            # Down first, then close: no write is sent to a session that is being closed.
            on_down(reason)
            await self.close()
            await self.backoff.wait()

    # -- batched requests ------------------------------------------------------------

    async def read_values(self, client: Client, nodes: Sequence[ua.NodeId], what: str) -> list[ua.DataValue]:
        """Read the Value attribute of `nodes`, BATCH per request."""
        out: list[ua.DataValue] = []
        for chunk in chunks(nodes):
            out.extend(
                await self.call(what, client.uaclient.read_attributes(list(chunk), AttributeIds.Value))
            )
        return out

    async def write_values(
        self, client: Client, nodes: Sequence[ua.NodeId], dvs: Sequence[ua.DataValue], what: str
    ) -> list[ua.StatusCode]:
        """Write the Value attribute of `nodes`, BATCH per request; one status per node."""
        out: list[ua.StatusCode] = []
        for n_chunk, v_chunk in zip(chunks(nodes), chunks(dvs), strict=True):
            out.extend(
                await self.call(
                    what, client.uaclient.write_attributes(list(n_chunk), list(v_chunk), AttributeIds.Value)
                )
            )
        return out

    async def subscribe(
        self,
        client: Client,
        publishing_interval_ms: float,
        nodes: Sequence[ua.NodeId],
        routes: Sequence[tuple[str, str]],
        deliver: Callable[[dict[str, dict[str, Value]], int], None],
    ) -> RoutedSubscription:
        """One subscription monitoring `nodes` (client handle = index into `routes`)."""
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_interval_ms,
            RequestedLifetimeCount=10_000,
            RequestedMaxKeepAliveCount=client.get_keepalive_count(publishing_interval_ms),
            MaxNotificationsPerPublish=0,  # no limit: one response per interval
            PublishingEnabled=True,
            Priority=0,
        )
        sub = RoutedSubscription(self, client, params, routes, deliver)
        await self.call("create_subscription", sub.init())
        requests = [
            ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=handle, SamplingInterval=0.0, QueueSize=1, DiscardOldest=True
                ),
            )
            for handle, node in enumerate(nodes)
        ]
        for chunk in chunks(requests):
            results = await self.call("create_monitored_items", sub.create_monitored_items(list(chunk)))
            bad = [r for r in results if isinstance(r, ua.StatusCode)]
            if bad:
                raise DeviceReplyError(f"{len(bad)} monitored items refused: {bad[0]}", endpoint=self.name)
        return sub
