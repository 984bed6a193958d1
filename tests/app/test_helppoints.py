"""Help points end to end: a press in a lamp post raises the lamps around it, becomes an incident
on the API, is acknowledged and closed; a stuck button is one incident; an unacknowledged call
escalates; a post whose controller is silent shows its help point unavailable.

Real parts: the daemon, a broker, the lamp simulator serving the help-point block over Modbus
TCP, the help-point simulator pressing the button, an LED board for the notice, a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from harness import NIGHT, Site, one_controller_site, wait_for

from controllers.lighting import LEVEL_POINT
from devices.inventory import load_inventory
from devices.profiles.lorawan import default_profiles
from edge.app.daemon import running
from edge.app.demo import sim_controllers
from edge.clock import SimClock
from edge.settings import load_settings
from simulators.displays import DisplaySimulator, SimBoard
from simulators.helppoints import HelpPointSimulator, SimHelpPoint, block_ranges
from simulators.lighting import LightingSimulator
from simulators.lorawan import chirpstack_event, tts_uplink

LAMPS = 6
STEP = 0.0002  # about 22 m between posts


def write_site(
    tmp: Path, site: str, mqtt_url: str, db_url: str, board: str, ack_timeout_s: float, extra: str = ""
) -> Path:
    lamps = [(f"L{i + 1}", 51.51 + i * STEP, 7.45) for i in range(LAMPS)]
    return one_controller_site(tmp, site, mqtt_url, db_url, lamps, f"""
[displays]
min_update_s = 0
step_s = 0.1
displays = [ {{ id = "{board}", kind = "board", lat = 51.5101, lon = 7.4501 }} ]
[helppoints]
radius_m = 30
ack_timeout_s = {ack_timeout_s}
stuck_after_s = 5
poll_interval_s = 0.1
points = [
  {{ id = "HP1", post = "L1", slot = 0 }},
  {{ id = "HP5", post = "L5", slot = 1 }},{extra}
]
[logging]
level = "warning"
""", segment="kreuzstrasse")  # fmt: skip


@dataclass
class Watch:
    """The retained help-point topics as a control room sees them (last payload per topic)."""

    base: str
    topics: dict[str, bytes] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def incidents(self) -> dict[str, dict[str, Any]]:
        prefix = f"{self.base}/helppoints/incidents/"
        return {
            t[len(prefix) :]: orjson.loads(p) for t, p in self.topics.items() if t.startswith(prefix) and p
        }

    def json(self, sub: str) -> Any:
        raw = self.topics.get(f"{self.base}/{sub}")
        return orjson.loads(raw) if raw else None


@contextlib.asynccontextmanager
async def district(
    tmp: Path, mqtt_url: str, database_url: str, ack_timeout_s: float = 600.0
) -> AsyncIterator[Any]:
    token = uuid.uuid4().hex[:8]
    board = f"led-{token}"
    cfg = write_site(tmp, "hp" + token, mqtt_url, database_url, board, ack_timeout_s)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(NIGHT)
    points = [SimHelpPoint("HP1", "c1", 0), SimHelpPoint("HP5", "c1", 1)]
    host, port = mqtt_url.split("://")[1].split(":")
    async with (
        LightingSimulator(
            sim_controllers(inv, watchdog_s=300, extra=block_ranges(points)), clock, seed=3
        ) as sim,
        HelpPointSimulator(points, sim, clock) as hsim,
        DisplaySimulator(clock, boards=[SimBoard(board)], mqtt_url=mqtt_url) as dsim,
        running(settings, inv, clock) as d,
        aiomqtt.Client(host, int(port), identifier=f"t-{token}") as client,
        aiomqtt.Client(host, int(port), identifier=f"w-{token}") as watcher,
    ):
        await d.link.wait_connected(10)
        base = d.api.base
        watch = Watch(base)
        await watcher.subscribe(f"{base}/helppoints/#", qos=1)

        async def collect() -> None:
            async for msg in watcher.messages:
                watch.topics[str(msg.topic)] = bytes(msg.payload)  # type: ignore[arg-type]
                if str(msg.topic) == f"{base}/helppoints/events":
                    watch.events.append(orjson.loads(msg.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(collect(), name="test.watch")
        s = Site(d, sim, client, settings, inv, d.link.protocol == "5")
        try:
            await wait_for(
                lambda: all(sim.lamp(x)["level_cmd"] == d.lighting.planned_level(x) for x in inv.lamps),
                "the plan applied to every lamp",
                timeout_s=20,
            )
            await wait_for(lambda: watch.json("helppoints/HP1/state") is not None, "the help point's state")
            yield s, hsim, dsim, board, watch
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_press_raises_the_lamps_around_the_post_until_the_incident_is_closed(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    async with district(tmp_path, mqtt_url, database_url) as (s, hsim, dsim, board, watch):
        d, sim = s.daemon, s.sim
        planned = {x: d.lighting.planned_level(x) for x in s.inventory.lamps}
        assert planned["L3"] is not None
        assert planned["L3"] < 100, "the night plan dims: a raise is visible"
        state = watch.json("helppoints/HP1/state")
        assert state["online"] is True
        assert state["street"] == "kreuzstrasse"
        assert state["post"] == "L1"
        hsim.press("HP1")
        await wait_for(lambda: len(watch.incidents()) == 1, "the incident on the API")
        ((inc_id, inc),) = watch.incidents().items()
        assert inc["helppoint"] == "HP1"
        assert inc["status"] == "open"
        assert inc["street"] == "kreuzstrasse"
        assert inc["lamps"] == 2  # L1 (its post) and L2 (22 m); L3 is 44 m away
        await wait_for(lambda: sim.lamp("L1")["level_actual"] == 100 and sim.lamp("L2")["level_actual"] == 100,
                       "the lamps around the post at 100 %")  # fmt: skip
        assert sim.lamp("L3")["level_cmd"] == planned["L3"]
        eff = d.dispatcher.effective("L1", LEVEL_POINT)
        assert eff is not None
        assert eff.source == f"helppoint:{inc_id}"
        assert eff.priority.name == "SAFETY"
        assert d.alarms.is_active("HP1", "help_call")
        assert any(a.code == "help_call" and "kreuzstrasse" in a.detail for a in d.alarms.active())
        await wait_for(lambda: "NOTRUF" in dsim.shown(board), "the notice on the nearest display")
        # Acknowledge: the lamps stay up.
        ack = await s.request(f"cmd/helppoints/incidents/{inc_id}", {"action": "ack", "comment": "on my way"})
        assert ack["ok"] is True, ack
        await wait_for(
            lambda: watch.incidents().get(inc_id, {}).get("status") == "acknowledged", "acknowledged"
        )
        assert sim.lamp("L1")["level_cmd"] == 100
        # A close needs a comment; with one, the lamps go back to their plan and the topic empties.
        nack = await s.request(f"cmd/helppoints/incidents/{inc_id}", {"action": "close"})
        assert nack["ok"] is False
        assert "comment" in nack["reason"]
        ack = await s.request(
            f"cmd/helppoints/incidents/{inc_id}", {"action": "close", "comment": "person helped"}
        )
        assert ack["ok"] is True, ack
        await wait_for(lambda: not watch.incidents(), "the retained incident emptied")
        await wait_for(lambda: sim.lamp("L1")["level_cmd"] == planned["L1"] and sim.lamp("L2")["level_cmd"]
                       == planned["L2"], "the lamps back on their plan")  # fmt: skip
        assert not d.alarms.is_active("HP1", "help_call")
        await wait_for(lambda: "NOTRUF" not in dsim.shown(board), "the notice gone")
        closed = [e for e in watch.events if e["id"] == inc_id and e["status"] == "closed"]
        assert closed
        assert closed[-1]["close_comment"] == "person helped"
        assert closed[-1]["acked_by"]
        again = await s.request(f"cmd/helppoints/incidents/{inc_id}", {"action": "close", "comment": "x"})
        assert again["ok"] is False
        assert again["reason"].startswith("incident_closed")
        unknown = await s.request("cmd/helppoints/incidents/inc-0-0", {"action": "ack"})
        assert unknown["ok"] is False
        # the operator's handling of the call is in the audit, with who and the comments
        await s.flush_storage()
        rows = await asyncio.to_thread(d.storage.audit, None, inc_id)
        assert [(r.point, r.source, r.outcome) for r in rows] == [
            ("incident_ack", "operator:mqtt", "accepted"),
            ("incident_close", "operator:mqtt", "accepted"),
            ("incident_close", "operator:mqtt", "refused"),  # the second close: refused, audited
        ]
        # the lamps' raise and release are audited as the commands they are
        lamp_rows = await asyncio.to_thread(d.storage.audit, None, "L1")
        assert any(r.source == f"helppoint:{inc_id}" for r in lamp_rows)
        assert unknown["reason"].startswith("unknown_incident")


async def test_a_stuck_button_is_one_incident(tmp_path: Path, mqtt_url: str, database_url: str) -> None:
    async with district(tmp_path, mqtt_url, database_url) as (s, hsim, _dsim, _board, watch):
        d = s.daemon
        hsim.inject("HP5", "stuck")
        await wait_for(
            lambda: d.alarms.is_active("HP5", "button_stuck"), "the stuck-button alarm", timeout_s=15
        )
        hp = d.helppoints
        assert hp is not None
        assert hp.stats.calls == 1
        assert len(watch.incidents()) == 1
        ((inc_id, _),) = watch.incidents().items()
        hsim.press("HP5")  # pressed again while held: the same incident
        await wait_for(lambda: hp.incidents[inc_id].presses >= 2, "the second press counted")
        ack = await s.request(
            f"cmd/helppoints/incidents/{inc_id}", {"action": "close", "comment": "button stuck"}
        )
        assert ack["ok"] is True
        await wait_for(lambda: not watch.incidents(), "closed")
        hsim.press("HP5")  # still held down after the close: no new incident until released
        await asyncio.sleep(0)
        await wait_for(lambda: hp.stats.presses >= 3, "the press seen")
        assert hp.stats.calls == 1
        assert not hp.incidents
        hsim.clear("HP5", "stuck")
        await wait_for(lambda: not d.alarms.is_active("HP5", "button_stuck"), "released")
        hsim.press("HP5")
        await wait_for(lambda: hp.stats.calls == 2, "a new call after the release")


async def test_an_unacknowledged_call_escalates_and_a_silent_post_is_unavailable(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    async with district(tmp_path, mqtt_url, database_url, ack_timeout_s=2.0) as (s, hsim, _dsim, _b, watch):
        d = s.daemon
        hsim.press("HP1")
        await wait_for(lambda: d.alarms.is_active("HP1", "help_call_escalated"), "the escalation alarm")
        await wait_for(lambda: bool((watch.json("helppoints/escalations/control-room") or {}).get("incidents")),
                       "the escalation target's retained topic")  # fmt: skip
        esc = watch.json("helppoints/escalations/control-room")
        assert esc["incidents"][0]["helppoint"] == "HP1"
        assert esc["incidents"][0]["escalated_at"]
        hsim.inject("HP5", "selftest_failed")
        await wait_for(lambda: d.alarms.is_active("HP5", "selftest_failed"), "a maintenance alarm")
        s.sim.inject("c1", "comm_loss")
        await wait_for(lambda: (watch.json("helppoints/HP5/state") or {}).get("online") is False,
                       "help point unavailable", timeout_s=20)  # fmt: skip
        assert d.alarms.is_active("HP5", "unavailable")


async def test_an_open_call_survives_a_restart_and_a_lorawan_button_calls_too(
    tmp_path: Path, mqtt_url: str, database_url: str
) -> None:
    """The daemon stops with a call open: after the restart the call is still open on the API and
    its lamps are up again (the dispatcher's layers did not outlive the process). A LoRaWAN
    button's press (ChirpStack uplink) and its cancel (TTS uplink) reach the incidents too."""
    token = uuid.uuid4().hex[:8]
    eui = "e757b0" + token + "a9"
    extra = f'\n  {{ id = "HP9", post = "L3", via = "lorawan", dev_eui = "{eui}" }},'
    cfg = write_site(tmp_path, "hr" + token, mqtt_url, database_url, f"led-{token}", 600.0, extra)
    settings = load_settings(cfg)
    inv = load_inventory(settings.inventory_path())
    clock = SimClock(NIGHT)
    points = [SimHelpPoint("HP1", "c1", 0), SimHelpPoint("HP5", "c1", 1)]
    button = default_profiles()["helppoint_button"]
    host, port = mqtt_url.split("://")[1].split(":")
    async with (
        LightingSimulator(
            sim_controllers(inv, watchdog_s=300, extra=block_ranges(points)), clock, seed=3
        ) as sim,
        HelpPointSimulator(points, sim, clock) as hsim,
        aiomqtt.Client(host, int(port), identifier=f"t-{token}") as client,
    ):
        async with running(settings, inv, clock) as d:
            hp = d.helppoints
            assert hp is not None
            await wait_for(lambda: d.lighting.planned_level("L1") is not None, "a plan")
            hsim.press("HP1")
            await wait_for(lambda: sim.lamp("L1")["level_actual"] == 100, "the lamps up")
            payload = button.encode({"pressed": True, "cancelled": False, "tamper": False,
                                     "selftest_failed": False, "battery": 80, "press_count": 1})  # fmt: skip
            topic, body = chirpstack_event(eui, "hp9", f_cnt=3, f_port=6, payload=payload, ts=clock.now(),
                                           dedup_id=uuid.uuid4().hex)  # fmt: skip
            await client.publish(topic, body, qos=1)
            await wait_for(
                lambda: any(i.helppoint == "HP9" for i in hp.incidents.values()), "the LoRaWAN call"
            )
            cancel = button.encode({"pressed": False, "cancelled": True, "tamper": False,
                                    "selftest_failed": False, "battery": 80, "press_count": 1})  # fmt: skip
            topic, body = tts_uplink(eui, "hp9", f_cnt=4, f_port=6, payload=cancel, ts=clock.now(),
                                     dedup_id=uuid.uuid4().hex)  # fmt: skip
            await client.publish(topic, body, qos=1)
            await wait_for(lambda: any(i.caller_cancelled for i in hp.incidents.values() if i.helppoint == "HP9"),
                           "the caller's cancel on the call (it stays open for the operator)")  # fmt: skip
            open_ids = set(hp.incidents)
            assert len(open_ids) == 2
            await d.storage.flush()
        assert sim.lamp("L1")["level_cmd"] == 100  # the controller keeps the last level it was given
        async with running(settings, inv, clock) as d2:
            hp2 = d2.helppoints
            assert hp2 is not None
            assert set(hp2.incidents) == open_ids
            await wait_for(lambda: (eff := d2.dispatcher.effective("L1", LEVEL_POINT)) is not None
                           and eff.source.startswith("helppoint:"), "the call's lamps held again")  # fmt: skip
            inc = next(i for i in hp2.incidents.values() if i.helppoint == "HP1")
            await wait_for(lambda: d2.lighting.planned_level("L1") is not None, "the restarted daemon's plan")
            hp2.close(inc.id, "operator:test", "resolved after the restart")
            await wait_for(lambda: sim.lamp("L1")["level_cmd"] == d2.lighting.planned_level("L1"),
                           "back on the plan after the close")  # fmt: skip
