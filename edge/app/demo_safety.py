"""The demo's safety services: help-point calls handled by a scripted operator, and the storm.

Both run on the demo's broker through the API and the uplink topics, as a control room and a
LoRaWAN network server would: a press on a Modbus help point and one on the LoRaWAN button in
the park (the simulator: a register block, an uplink), acknowledgements and closes as requests; the storm and
flood scenario's sensors publish uplinks in both formats, and the rules do the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import orjson
import structlog

from edge.app.daemon import Daemon
from simulators.environment import StormScenario, StormSimulator, storm_sensors
from simulators.helppoints import HelpPointSimulator

log = structlog.get_logger(__name__)

UPLINK_EVERY_S = 300.0  # clock seconds between two uplinks of a storm sensor
STORM_SHARE = 0.85  # of the clock time left in a `--for N` run, the storm takes this much


def storm_for(d: Daemon, clock_s: float | None) -> StormScenario | None:
    """The storm, from now over `clock_s` clock seconds (its own 2 h at most, in real time when
    None); None for a site without environmental sensors."""
    if d.environment is None:
        return None
    duration = 7200.0
    scale = 1.0 if clock_s is None else max(1.0, duration / max(600.0, clock_s))
    return StormScenario(1, start=d.clock.now(), duration_s=duration, time_scale=scale)


async def run_storm(d: Daemon, url: str, scenario: StormScenario) -> None:
    """Play the storm's uplinks on the demo's broker, once."""
    sim = StormSimulator(storm_sensors(), scenario, d.clock, seed=1, duplicate_p=0.1)
    async with sim.connect_to(url, qos=1):  # a few messages a second: the embedded broker keeps them all
        rounds = int(2 * scenario.clock_duration_s / UPLINK_EVERY_S) + 10  # the storm, then calm
        await sim.run(UPLINK_EVERY_S, rounds=rounds)


async def help_calls(
    d: Daemon, hsim: HelpPointSimulator | None, url: str, at: Callable[[float], Awaitable[None]]
) -> None:
    """A call at a Modbus help point that the operator acknowledges and closes, and one on the
    LoRaWAN button in the park that nobody acknowledges in time (it escalates), closed later."""
    hp = d.helppoints
    if hp is None or hsim is None:
        return
    base = d.api.base
    host, _, port = url.split("://", 1)[1].rpartition(":")
    async with aiomqtt.Client(
        host, int(port), identifier=f"demo-control-room-{uuid.uuid4().hex[:6]}", timeout=5
    ) as c:

        async def request(incident: str, action: str, comment: str) -> None:
            body = {"action": action, "comment": comment, "by": "leitstelle-demo",
                    "response_topic": f"{base}/replies/demo"}  # fmt: skip
            await c.publish(f"{base}/cmd/helppoints/incidents/{incident}", orjson.dumps(body), qos=1)

        await at(0.25)
        hsim.press("HP-L0120")
        log.info("demo_help_call", helppoint="HP-L0120")
        await at(0.28)
        first = _incident_of(d, "HP-L0120")
        if first:
            await request(first, "ack", "Streife unterwegs")
        await at(0.35)
        hsim.press("HP-L0470")  # the LoRaWAN button in the park: an uplink (TTS) at once
        log.info("demo_help_call", helppoint="HP-L0470", via="lorawan")
        await at(0.45)
        if first:
            await request(first, "close", "Person betreut, Einsatz beendet")
        await at(0.6)
        second = _incident_of(d, "HP-L0470")
        if second:
            await request(second, "ack", "verspaetet gesehen")
            await request(second, "close", "Fehlalarm im Park")


def _incident_of(d: Daemon, helppoint: str) -> str:
    hp = d.helppoints
    if hp is None:
        return ""
    return next((i.id for i in hp.incidents.values() if i.helppoint == helppoint), "")


def helppoints_summary(d: Daemon) -> dict[str, Any]:
    """The demo's `help_points` section."""
    hp = d.helppoints
    if hp is None:
        return {}
    st = hp.stats
    mtta = st.mean_time_to_ack_s
    return {
        "help_points": len(hp.sites),
        "available": sum(1 for x in hp.sites if (dev := d.state.get(x)) is not None and dev.online),
        "calls": st.calls,
        "presses": st.presses,
        "acknowledged": st.acknowledged,
        "closed": st.closed,
        "escalated": st.escalated,
        "open": len(hp.incidents),
        "mean_time_to_ack_s": None if mtta is None else round(mtta, 1),
    }


def environment_summary(d: Daemon, storm: StormScenario | None) -> dict[str, Any]:
    """The demo's `environment` section, with the storm's timeline (clock minutes from its start)."""
    env = d.environment
    if env is None:
        return {}
    now = d.clock.now()
    sensors = env.engine.sensors(now)
    st = env.stats
    safety = d.api.north.safety
    t0 = storm.start if storm is not None else (st.timeline[0][0] if st.timeline else now)
    events = [(ts, what) for ts, what in st.timeline
              if not what.startswith("sensor ") or what.endswith(("stale", "implausible"))]  # fmt: skip
    events += [(ts, f"CAP {kind} {wid}") for ts, kind, wid in safety.cap_log]
    return {
        "sensors": len(sensors),
        "sensors_reporting": sum(1 for s in sensors.values() if s.last_ts is not None),
        "readings": st.readings,
        "warnings_proposed": st.proposed,
        "warnings_issued": st.issued,
        "warnings_withdrawn": st.withdrawn,
        "warnings_expired": st.expired,
        "warnings_live": [f"{w.id} ({w.status})" for w in env.warnings.values()],
        "cap_messages": safety.cap_messages,
        "timeline_min": [[round((ts - t0) / 60, 1), what] for ts, what in sorted(events)][:60],
    }
