"""The safety services' north: incidents, rule warnings and CAP alerts from plan events.

SafetyNorth is fed the plan events its controllers publish and a recording `send`; every CAP
message is validated against the OASIS CAP 1.2 schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import xmlschema

from edge.app.north_safety import CANCELLED_KEPT, SafetyNorth
from edge.clock import ManualClock
from edge.events import PlanEvent

CAP_XSD = Path(__file__).resolve().parents[1] / "fixtures" / "cap" / "CAP-v1.2.xsd"
T0 = 1_800_000_000.0


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []

    async def __call__(self, name: str, payload: bytes, **params: str) -> None:
        self.messages.append((name, payload, params))

    def cap(self, warning: str) -> list[bytes]:
        return [p for n, p, k in self.messages if n == "cap" and k.get("warning") == warning]


def _warning(wid: str, **over: Any) -> dict[str, Any]:
    w = {"id": wid, "severity": "severe", "lines": ["STURM"], "start": T0, "end": T0 + 3600,
         "source": "operator:anna", "public": True, "area": [51.51, 7.45, 1500.0]}  # fmt: skip
    return w | over


async def test_an_operator_warning_is_alerted_updated_and_cancelled_as_valid_cap() -> None:
    clock, sent = ManualClock(T0), Sent()
    north = SafetyNorth(sent, clock, sender="demo@dos-edge", site_name="Demo")
    await north.plan(PlanEvent("warnings", T0, {"warnings": [_warning("storm-1")]}))
    clock.advance(60)
    await north.plan(PlanEvent("warnings", T0, {"warnings": [_warning("storm-1", end=T0 + 7200)]}))
    await north.plan(
        PlanEvent("warnings", T0, {"warnings": [_warning("storm-1", end=T0 + 7200)]})
    )  # no change
    clock.advance(60)
    await north.plan(PlanEvent("warnings", T0, {"warnings": []}))
    msgs = sent.cap("storm-1")
    assert [m.split(b"<msgType>")[1].split(b"<")[0] for m in msgs] == [b"Alert", b"Update", b"Cancel"]
    schema = xmlschema.XMLSchema(CAP_XSD)
    for m in msgs:
        schema.validate(m.decode())
    alert_id = msgs[0].split(b"<identifier>")[1].split(b"<")[0]
    assert alert_id in msgs[1].split(b"<references>")[1].split(b"<")[0]  # the update names the alert
    assert b"withdrawn" in msgs[2]  # ended before its end time: withdrawn, not expired


async def test_a_help_point_notice_is_not_a_public_alert_and_cancels_stay_bounded() -> None:
    clock, sent = ManualClock(T0), Sent()
    north = SafetyNorth(sent, clock, sender="demo@dos-edge", site_name="Demo")
    await north.plan(PlanEvent("warnings", T0, {"warnings": [_warning("helppoint-inc-1", public=False)]}))
    assert not sent.cap("helppoint-inc-1")
    for k in range(CANCELLED_KEPT + 3):
        await north.plan(PlanEvent("warnings", T0, {"warnings": [_warning(f"w{k}")]}))
        await north.plan(PlanEvent("warnings", T0, {"warnings": []}))
    emptied = [k["warning"] for n, p, k in sent.messages if n == "cap" and p == b""]
    assert emptied == ["w0", "w1", "w2"]  # the oldest retained Cancels, and no others


async def test_a_rule_warning_is_drafted_while_proposed_and_its_incidents_topics_follow() -> None:
    clock, sent = ManualClock(T0), Sent()
    north = SafetyNorth(sent, clock, sender="demo@dos-edge", site_name="Demo")
    rule_w = _warning("env-flood-1", source="rule:flood", status="proposed", rule="flood")
    await north.plan(PlanEvent("environment", T0, {"warnings": [rule_w], "rules": [], "finished": []}))
    issued = rule_w | {"status": "issued"}
    await north.plan(PlanEvent("environment", T0, {"warnings": [issued], "rules": [], "finished": []}))
    # the displays show it a step behind; that is not a change of the alert
    await north.plan(PlanEvent("warnings", T0, {"warnings": [_warning("env-flood-1", end=T0 + 99)]}))
    clock.advance(4000)
    done = issued | {"status": "expired"}
    await north.plan(PlanEvent("environment", T0, {"warnings": [], "rules": [], "finished": [done]}))
    msgs = sent.cap("env-flood-1")
    kinds = [(m.split(b"<status>")[1][:6], m.split(b"<msgType>")[1].split(b"<")[0]) for m in msgs]
    assert kinds == [(b"Draft<", b"Alert"), (b"Actual", b"Alert"), (b"Actual", b"Cancel")]
    assert b"expired" in msgs[-1]
    live = [(p, k) for n, p, k in sent.messages if n == "env_warnings"]
    assert live[-1] == (b"", {"warning": "env-flood-1"})  # emptied when it ended
    # incidents: retained while open, an event per change, emptied on close
    inc = {"id": "inc-1", "helppoint": "HP1", "status": "open"}
    await north.plan(
        PlanEvent("helppoints", T0, {"incidents": [inc], "closed": [], "escalations": {"cr": []}})
    )
    closed = inc | {"status": "closed"}
    await north.plan(
        PlanEvent("helppoints", T0, {"incidents": [], "closed": [closed], "escalations": {"cr": []}})
    )
    incs = [(p, k) for n, p, k in sent.messages if n == "incidents"]
    assert orjson.loads(incs[0][0])["status"] == "open"
    assert incs[-1] == (b"", {"incident": "inc-1"})
    events = [orjson.loads(p)["status"] for n, p, k in sent.messages if n == "incident_events"]
    assert events == ["open", "closed"]
