"""The simulators' MQTT plumbing, once: the fault listener and the bulk publishing client.

Every simulator that takes faults at run time over MQTT (lights, displays; waste takes them
on its fleet session) decodes them the same way: one JSON object, size and depth checked
by `edge.decode`, validated by the simulator's own pydantic `FaultMessage`, applied by a
callback that raises ValueError for an unknown target or fault. A bad message is refused
with a log line and never ends the session. Broker URLs are parsed by
`edge.mqtt.BrokerAddress` and reconnects wait on `edge.backoff.Backoff`, as in the daemon.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TypeVar

import aiomqtt
import structlog
from pydantic import BaseModel

from edge.backoff import Backoff
from edge.decode import Refusal, decode
from edge.mqtt import BrokerAddress

__all__ = ["MAX_FAULT_PAYLOAD", "apply_fault_payload", "bulk_client", "run_fault_listener"]

log = structlog.get_logger(__name__)

MAX_FAULT_PAYLOAD = 4096
FAULT_TIMEOUT_S = 10.0

F = TypeVar("F", bound=BaseModel)


def apply_fault_payload(payload: bytes | str, model: type[F], apply: Callable[[F], None]) -> bool:
    """Decode one fault message into `model` and `apply` it; False (and a log line) if refused.

    `apply` raises ValueError for a target or fault the simulator does not know; that is a
    refusal too, so nothing a publisher sends can raise out of a listener.
    """
    if len(payload) > MAX_FAULT_PAYLOAD:
        log.warning("sim_fault_refused", reason="oversized", size=len(payload))
        return False
    msg = decode(payload, model, max_bytes=MAX_FAULT_PAYLOAD, max_depth=4)
    if isinstance(msg, Refusal):
        log.warning("sim_fault_refused", reason=str(msg).splitlines()[0][:200])
        return False
    try:
        apply(msg)
    except ValueError as exc:
        log.warning("sim_fault_refused", reason=str(exc).splitlines()[0])
        return False
    return True


async def run_fault_listener(
    url: str, topic: str, apply: Callable[[bytes | str], object], *, name: str
) -> None:
    """Feed every message on `topic` to `apply` until cancelled; reconnect with backoff.

    `name` prefixes the client identifier (`sim-faults-lights-…`), so two simulators on one
    broker never kick each other off.
    """
    address = BrokerAddress.parse(url)
    backoff = Backoff(base_s=0.5, max_s=30.0)
    while True:
        try:
            async with address.client(f"sim-faults-{name}", timeout_s=FAULT_TIMEOUT_S, pending=10) as client:
                await client.subscribe(topic, qos=1, timeout=FAULT_TIMEOUT_S)
                if backoff.attempt:
                    log.info("sim_fault_mqtt_connected", where=address.where)
                backoff.reset()
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes | str):
                        log.warning("sim_fault_refused", reason="payload is not bytes")
                        continue
                    try:  # one bad message must not end the fault session
                        apply(payload)
                    except Exception:
                        log.exception("sim_fault_failed")
        except aiomqtt.MqttError as exc:
            if backoff.attempt == 0:
                log.warning("sim_fault_mqtt_down", where=address.where, error=str(exc))
            await backoff.wait()


def bulk_client(address: BrokerAddress, identifier: str, *, timeout_s: float) -> aiomqtt.Client:
    """A client for bursts of publishes (uplink rounds, truck events): MQTT 3.1.1, no Nagle.

    The embedded test broker speaks only 3.1.1; a burst must not raise aiomqtt's warning per
    pending call, and many small publishes must not wait on Nagle's algorithm.
    """
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=timeout_s,
        max_inflight_messages=1000,
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        tls_context=address.ssl_context(),
    )
    client.pending_calls_threshold = 1 << 20
    return client


async def open_client(client: aiomqtt.Client, timeout_s: float) -> None:
    """Connect `client` within `timeout_s` (aiomqtt's own timeout does not cover every stall)."""
    async with asyncio.timeout(timeout_s):
        await client.__aenter__()
