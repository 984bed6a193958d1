"""Northbound MQTT API: retained state, telemetry, alarms, plans, and acknowledged commands.

Topic tree (`{prefix}` = `dos/v1`, `{site}` = the site id): `edge.topics.TOPICS`, the table the
AsyncAPI document (docs/asyncapi.json) and the dashboard's subscriptions come from. What the daemon
publishes goes out through `edge.app.north.North`, from the state store:

    {prefix}/{site}/status                          retained DaemonStatus (last will: offline)
    {prefix}/{site}/lights/{id}/state               retained LampState (QoS 1, via the outbox)
    {prefix}/{site}/lights/{id}/telemetry           LampTelemetry (QoS 0, periodic)
    {prefix}/{site}/controllers/{id}/state          retained ControllerState
    {prefix}/{site}/alarms/events                   AlarmMessage, raised and cleared
    {prefix}/{site}/alarms/active/{device}/{code}   retained while active (with the ack, once acked)
    {prefix}/{site}/alarms/history                  retained AlarmHistory: the latest raises, acks, clears
    {prefix}/{site}/plans/lighting                  retained PlanMessage
    {prefix}/{site}/commands/results                CommandResultMessage (operator, motion, failures)
    {prefix}/{site}/cmd/alarms/ack                  request: AlarmAck (an active alarm, with a comment)
    {prefix}/{site}/cmd/...                         a domain's requests (`edge.app.routes`)
    {prefix}/{site}/utility/{utility}/...           a utility's limits and signals (charging)

The incoming half is `edge.app.router.Router`: it checks every request once and hands it to
the route its domain's `build` returned; the API itself routes only alarm acknowledgements.
Field input (motion, car-park counters, LoRaWAN uplinks) is read by drivers, never here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import structlog

from devices.inventory import Inventory
from edge.app.north import North, Publisher
from edge.app.router import ACK_TOPIC_CHARS, Router
from edge.app.routes.base import Request, Route
from edge.errors import PayloadError
from edge.kernel import Controller, Kernel
from edge.payloads import Ack
from edge.topics import request_filters

__all__ = ["ACK_TOPIC_CHARS", "MqttApi"]

log = structlog.get_logger(__name__)


class MqttApi:
    """Publishes the state store north (`North`); routes requests to the domains' routes (`Router`)."""

    def __init__(
        self,
        kernel: Kernel,
        routes: Sequence[Route],
        *,
        inventory: Inventory,
        controllers: Mapping[str, Controller],
    ) -> None:
        """`routes`: what the domains' builds returned; `controllers`: theirs by domain name."""
        mq = kernel.settings.mqtt
        self.base = f"{mq.topic_prefix}/{kernel.settings.site.id}"
        self._pub: Publisher | None = None
        self._domains = frozenset(controllers)
        self.north = North(
            state=kernel.state, bus=kernel.bus, clock=kernel.clock, base=self.base, inventory=inventory,
            telemetry_interval_s=mq.telemetry_interval_s, alarm_ack=kernel.storage.ack_alarm,
            sender=f"{kernel.settings.site.id}@dos-edge", site_name=kernel.settings.site.name,
        )  # fmt: skip
        alarms = Route(("cmd", "alarms", "+"), self._alarm_route)
        self.router = Router(base=self.base, clock=kernel.clock, routes=[*routes, alarms],
                             publisher=lambda: self._pub, max_payload_bytes=mq.max_payload_bytes,
                             reply_prefix=mq.reply_prefix)  # fmt: skip
        self.on_message = self.router.on_message
        self.handle = self.router.handle
        self.close = self.router.close

    @property
    def refused(self) -> Counter[str]:
        """Refused requests by reason (the router counts them)."""
        return self.router.refused

    @property
    def subscriptions(self) -> list[str]:
        """The request topics, from the topic table (field input is read by drivers, not here)."""
        return [f for f in request_filters(self.base, self._domains) if "/field/" not in f]

    def status_topic(self) -> str:
        return f"{self.base}/status"

    async def _alarm_route(self, r: Request) -> Ack:
        if r.parts[2] != "ack":
            raise PayloadError("unknown_topic", f"alarm requests go to {self.base}/cmd/alarms/ack")
        return await self.north.ack_alarm(r.raw, r.msg)

    async def run(self, pub: Publisher) -> None:
        """Publish state, alarms, plans and results until cancelled (`North`, from the state store)."""
        self._pub = pub
        await self.north.run(pub)
