"""Alarm bookkeeping shared by controllers: raise and clear on transitions only.

Across restarts (issue 10, finding 8) the alarm table, the controllers and the retained
`alarms/active/{device}/{code}` topics must agree:
- At start the open rows are `restore`d as *pending confirmation*: active, so they can be
  acknowledged and are not raised a second time, but not yet confirmed by a reading.
- A controller that raises a pending alarm again confirms it (no new row, no new event); one
  that clears it clears it as usual.
- Whatever a device's first readings after the start have not re-raised is cleared by
  `reconcile` once the device has sent `confirm_readings` readings (5: polled devices, enough
  for the lighting controller's 3-reading debounce), or its own count from
  `confirm_readings_of` (2 for LoRaWAN sensors that report every 10-60 minutes: their
  controller evaluates every reading, and the second one comes long after the first).
  Alarms of devices that send no readings (feeders, car parks, the daemon itself) are
  settled by the component that evaluates them (the charging and display controllers'
  periodic checks, the storage writer's health report, the next waste plan).
- `sweep_retained` clears retained alarm topics of alarms that are no longer open, before
  the restored alarms are announced again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterable, Mapping

import aiomqtt
import structlog

from edge.bus import EventBus, Subscription
from edge.clock import Clock
from edge.events import AlarmEvent, Severity, Telemetry
from edge.mqtt import BrokerAddress, TlsFiles
from edge.mqtt_session import received

log = structlog.get_logger(__name__)

DAEMON_DEVICE = "edge"  # the device id of alarms about the daemon itself (storage health)
NOT_CONFIRMED = "not confirmed by the readings after a restart"


class Alarms:
    """Publishes an AlarmEvent when an alarm changes state, never for repetitions."""

    def __init__(
        self,
        bus: EventBus,
        clock: Clock,
        *,
        confirm_readings: int = 5,
        confirm_readings_of: Mapping[str, int] | None = None,
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._active: dict[tuple[str, str], AlarmEvent] = {}
        self._pending: dict[str, dict[str, AlarmEvent]] = {}  # device -> code -> restored alarm
        self._readings: dict[str, int] = {}
        self._confirm_readings = max(1, confirm_readings)
        self._confirm_of = dict(confirm_readings_of or {})
        self.raised = 0
        self.cleared = 0
        self.restored = 0
        self.reconciled = 0

    def confirm_after(self, device_ids: Iterable[str], readings: int) -> None:
        """Devices whose restored alarms settle after `readings` fresh readings (a domain's
        `build`: LoRaWAN sensors report every 10-60 minutes, so 2, not the default)."""
        self._confirm_of |= dict.fromkeys(device_ids, max(1, readings))

    def set(self, device_id: str, code: str, active: bool, severity: Severity, detail: str = "") -> None:
        """Raise (active=True) or clear an alarm; repeated calls in the same state do nothing.

        Raising a restored alarm confirms it (it is already open and announced)."""
        key = (device_id, code)
        if active and self._unpend(device_id, code):
            return
        if active == (key in self._active):
            return
        event = AlarmEvent(device_id, code, severity, active, self._clock.now(), detail)
        if active:
            self._active[key] = event
            self.raised += 1
        else:
            del self._active[key]
            self._unpend(device_id, code)
            self.cleared += 1
        self._bus.publish(event)

    def is_active(self, device_id: str, code: str) -> bool:
        return (device_id, code) in self._active

    def active(self) -> list[AlarmEvent]:
        return list(self._active.values())

    def pending(self) -> list[AlarmEvent]:
        """Restored alarms not yet confirmed by a controller."""
        return [ev for codes in self._pending.values() for ev in codes.values()]

    def _unpend(self, device_id: str, code: str) -> bool:
        codes = self._pending.get(device_id)
        if codes is None or codes.pop(code, None) is None:
            return False
        if not codes:
            del self._pending[device_id]
        return True

    # ----- restart ------------------------------------------------------------------------

    def restore(self, events: Iterable[AlarmEvent]) -> int:
        """Take the alarms that were open when the daemon stopped, pending confirmation.

        Call before the controllers run; nothing is published until `announce_restored`."""
        n = 0
        for ev in events:
            key = (ev.device_id, ev.code)
            if key in self._active:
                continue
            restored = dataclasses.replace(ev, active=True, restored=True)
            self._active[key] = self._pending.setdefault(ev.device_id, {})[ev.code] = restored
            n += 1
        self.restored += n
        if n:
            log.info("alarms_restored", pending=n)
        return n

    def announce_restored(self) -> int:
        """Publish the restored alarms still active (marked `restored`: storage keeps their rows,
        the API republishes their retained topics but no new raise events)."""
        events = [ev for ev in self._active.values() if ev.restored]
        for ev in events:
            self._bus.publish(ev)
        return len(events)

    async def reconcile(self, sub: Subscription) -> None:
        """Clear pending alarms a device's first readings did not re-raise; ends when none is left.

        `sub` is a Telemetry subscription taken before the drivers started (so no reading is
        missed); it is unsubscribed on return."""
        try:
            while self._pending:
                ev = await sub.get()
                if isinstance(ev, Telemetry) and not ev.derived:
                    self.reading(ev.device_id)
        except EOFError:
            return
        finally:
            self._bus.unsubscribe(sub)

    def reading(self, device_id: str) -> None:
        """Count a fresh reading of a device; at `confirm_readings` its unconfirmed alarms clear."""
        if device_id not in self._pending:
            return
        n = self._readings.get(device_id, 0) + 1
        self._readings[device_id] = n
        if n < self._confirm_of.get(device_id, self._confirm_readings):
            return
        for code, ev in list(self._pending[device_id].items()):
            self.set(device_id, code, False, ev.severity, NOT_CONFIRMED)
            self.reconciled += 1


async def sweep_retained(
    url: str,
    base: str,
    keep: Iterable[tuple[str, str]],
    *,
    timeout_s: float = 5.0,
    tls: TlsFiles | None = None,
) -> list[str]:
    """Clear retained `{base}/alarms/active/{device}/{code}` topics of alarms not in `keep`.

    Subscribes briefly to learn what the broker retains. A marker message published on the
    same connection arrives after the retained ones, so no fixed wait is needed. Returns
    the topics cleared; a broker that cannot be reached is logged and skipped (the daemon
    starts anyway and the retained topics of open alarms are republished)."""
    prefix = f"{base}/alarms/active/"
    wanted = set(keep)
    marker = f"{prefix}_sweep/{uuid.uuid4().hex}"
    strays: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            client = BrokerAddress.parse(url, tls=tls).client(
                "edge-alarm-sweep", timeout_s=timeout_s, pending=1000
            )
            async with client:
                await client.subscribe(f"{prefix}#", qos=1)
                await client.publish(marker, b"", qos=1)
                async for msg in received(client):
                    topic = str(msg.topic)
                    if topic == marker:
                        break
                    if not msg.retain or not msg.payload or not topic.startswith(prefix):
                        # (some brokers, amqtt among them, also replay retained topics outside
                        # the filter: clearing those would wipe other clients' messages)
                        continue
                    device, _, code = topic.removeprefix(prefix).rpartition("/")
                    if (device, code) not in wanted:
                        strays.append(topic)
                for topic in strays:
                    await client.publish(topic, b"", qos=1, retain=True)
    except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
        log.warning("alarm_sweep_failed", error=str(exc) or type(exc).__name__, cleared=0)
        return []
    if strays:
        log.info("alarm_retained_strays_cleared", count=len(strays))
    return strays
