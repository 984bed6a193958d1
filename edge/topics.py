"""The topic table: every topic of the MQTT API, written out once.

Each `Topic` is a pattern under `{prefix}/{site}` (`{name}` marks one level), who sends it
(`send`: the daemon publishes; `receive`: the daemon takes it), the payload model key(s) of
`edge.payloads.PUBLISHED_MODELS` ("a|b" for a choice), retained, QoS and a one-line summary.
From it come the AsyncAPI channels (`edge.app.docs`), the API's subscription filters
(`request_filters`), the dashboard's subscriptions (`dashboard_subscriptions`) and the
topics and QoS the northbound publisher uses (`edge.app.north`), so the four cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "TOPICS",
    "Topic",
    "by_name",
    "dashboard_subscriptions",
    "request_filters",
]

_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic of the API; `reply`: a request that is answered with an `Ack` (sensor input is not)."""

    name: str
    pattern: str
    direction: Literal["send", "receive"]
    payload: str
    retained: bool
    qos: Literal[0, 1]
    summary: str
    domain: str = "site"
    reply: bool = False
    content_type: str = "application/json"

    @property
    def params(self) -> list[str]:
        """The names of the pattern's variable levels, in order."""
        return _PARAM.findall(self.pattern)

    @property
    def filter(self) -> str:
        """The pattern as an MQTT topic filter (every variable level a `+`)."""
        return _PARAM.sub("+", self.pattern)

    def topic(self, base: str, **params: str) -> str:
        """The concrete topic under `base` (`{prefix}/{site}`) for these parameter values."""
        return f"{base}/{self.pattern.format(**params)}" if params else f"{base}/{self.pattern}"


def _send(name: str, pattern: str, payload: str, summary: str, *, retained: bool = True,
          qos: Literal[0, 1] = 1, domain: str = "site") -> Topic:  # fmt: skip
    return Topic(name, pattern, "send", payload, retained, qos, summary, domain)


def _receive(name: str, pattern: str, payload: str, summary: str, *, domain: str = "site",
             reply: bool = True) -> Topic:  # fmt: skip
    return Topic(name, pattern, "receive", payload, False, 1, summary, domain, reply)


# The order is the AsyncAPI document's (its channel ids are numbered by position).
TOPICS: tuple[Topic, ...] = (
    _send("status", "status", "daemon_status", "Daemon online/offline (retained; last will)."),
    _send("lamp_state", "lights/{lamp}/state", "lamp_state", "Retained lamp state, on change (QoS 1).",
          domain="lighting"),
    _send("lamp_telemetry", "lights/{lamp}/telemetry", "lamp_telemetry", "Lamp counters, periodic (QoS 0).",
          retained=False, qos=0, domain="lighting"),
    _send("controller_state", "controllers/{controller}/state", "controller_state",
          "Retained controller state."),
    _send("alarm_events", "alarms/events", "alarm", "Alarms raised and cleared (QoS 1).", retained=False,
          domain="alarms"),
    _send("alarm_active", "alarms/active/{device}/{code}", "alarm", "Retained while an alarm is active "
          "(with who acknowledged it and why, once acked); emptied when it clears.", domain="alarms"),
    _send("alarm_history", "alarms/history", "alarm_history",
          "Retained: the latest alarm events (raised, acknowledged, cleared), newest first.", domain="alarms"),
    _receive("alarm_ack", "cmd/alarms/ack", "alarm_ack",
             "Acknowledge an active alarm with a comment; refused (unknown_alarm) for one that is not active.",
             domain="alarms"),
    _send("plan", "plans/{domain}", "plan", "The current plan of a domain (retained)."),
    _send("command_results", "commands/results", "command_result",
          "Final outcome of operator and motion commands, and of any failed command.", retained=False),
    _send("acks", "acks", "ack", "Answers to requests that carried no response topic.", retained=False),
    _receive("cmd_light", "cmd/lights/{lamp}", "set_level|resume_schedule", "Command one lamp.",
             domain="lighting"),
    _receive("cmd_group", "cmd/groups/{group}", "set_level|resume_schedule", "Command every lamp of a group.",
             domain="lighting"),
    _receive("cmd_segment", "cmd/segments/{segment}", "set_level|resume_schedule",
             "Command every lamp of a road segment.", domain="lighting"),
    _receive("lighting_replan", "cmd/lighting/replan", "replan", "Re-plan the night now.", domain="lighting"),
    _receive("motion", "field/motion/{lamp}", "motion", "Motion seen at a bike-path lamp.",
             domain="lighting", reply=False),
    _send("charger_state", "chargers/{charger}/state", "charger_state",
          "Retained charge point state: status, car, setpoint, power, session, plan.", domain="charging"),
    _send("feeder_state", "feeders/{feeder}/state", "feeder_state",
          "Feeder load against its limit (lighting, setpoints, measured), on change (QoS 0; "
          "a move of the measured currents within 0.5 A or 1 % of the limit waits up to 30 s).",
          qos=0, domain="charging"),
    _receive("cmd_charger", "cmd/chargers/{charger}", "charger_pause|charger_limit|charger_release",
             "Pause, limit or release a charge point (the feeder interlock still applies).", domain="charging"),
    _receive("cmd_feeder", "cmd/feeders/{feeder}", "feeder_limit", "An operator limit on a feeder.",
             domain="charging"),
    _receive("charging_replan", "cmd/charging/replan", "replan", "Re-plan the charge load now.",
             domain="charging"),
    # The utility topics are taken on every site: one without charge points answers unknown_topic.
    _receive("utility_limits", "utility/{utility}/limits", "curtailment",
             "A grid operator's feeder or cabinet limit for a window (never below 4.2 kW per charging car)."),
    _receive("utility_signals", "utility/{utility}/signals", "price_curve", "A price or CO2 curve."),
    _send("display_state", "displays/{display}/state", "display_state",
          "Retained: what a display shows now (rendered text), online, brightness, pixel faults.",
          domain="displays"),
    _send("parking_state", "parking/{car_park}/state", "parking_state",
          "Retained car park occupancy (free spaces, open, fresh), on change (QoS 0).", qos=0, domain="displays"),
    _receive("carpark_report", "field/carparks/{car_park}", "carpark_report", "A car park's own counter.",
             domain="displays", reply=False),
    _send("guidance", "guidance", "guidance_plan",
          "Retained guidance decisions: per sign the car park, free spaces and travel minutes.",
          qos=0, domain="displays"),
    _send("warnings", "warnings/active", "warning", "Retained list of the warnings in force.", qos=0,
          domain="displays"),
    _receive("cmd_warning", "cmd/warnings/set", "warning|warning_clear",
             "A warning for displays (all when none are named) and a window; optionally lamps to full.",
             domain="displays"),
    _receive("cmd_display", "cmd/displays/{display}", "display_message|display_clear",
             "An operator's message on a display for a duration, or clear it.", domain="displays"),
    _send("bin_state", "waste/bins/{bin}/state", "bin_state",
          "Retained bin state: fill, predicted rate and threshold time, alarms, today's plan, operator flags.",
          domain="waste"),
    _send("truck_state", "waste/trucks/{truck}/state", "truck_state",
          "Retained truck state: status, position, load, route progress, odometer.", domain="waste"),
    _send("waste_plan", "waste/plan", "waste_plan",
          "Retained collection plan: why it was made, per truck the stops with ETAs and done flags.",
          domain="waste"),
    _send("waste_summary", "waste/summary", "waste_summary",
          "Retained day numbers: bins reporting, above threshold, emptied (sensor-confirmed), overflows, km.",
          domain="waste"),
    _receive("cmd_bin", "cmd/waste/bins/{bin}", "waste_bin_request",
             "Force a bin into today's plan (re-plans), exclude it from planning, or clear either.",
             domain="waste"),
    _receive("waste_replan", "cmd/waste/replan", "waste_replan",
             "Plan the collection again now, keeping what is done.", domain="waste"),
    _send("helppoint_state", "helppoints/{helppoint}/state", "helppoint_state",
          "Retained help point state: reachable (else 'help point unavailable'), button, self-test, battery, "
          "its open call.", domain="helppoints"),
    _send("incidents", "helppoints/incidents/{incident}", "incident",
          "Retained emergency call while it is open or acknowledged; emptied when it is closed.",
          domain="helppoints"),
    _send("incident_events", "helppoints/events", "incident",
          "Every change of an emergency call (opened, pressed again, acknowledged, noted, escalated, closed).",
          retained=False, domain="helppoints"),
    _send("escalations", "helppoints/escalations/{target}", "escalation",
          "Retained: the calls nobody acknowledged in time, for the escalation target.", domain="helppoints"),
    _receive("cmd_incident", "cmd/helppoints/incidents/{incident}", "incident_request",
             "Acknowledge, note or close an emergency call (a close needs a comment and lets the lamps go).",
             domain="helppoints"),
    _send("sensor_state", "environment/sensors/{sensor}/state", "sensor_state",
          "Retained environmental sensor state: readings, and whether rules may use them (ok, stale, "
          "implausible).", domain="environment"),
    _send("rules", "environment/rules", "rules", "Retained: every warning rule and whether it is firing.",
          domain="environment"),
    _send("env_warnings", "environment/warnings/{warning}", "env_warning",
          "Retained while a rule's warning is proposed or in force; emptied when it is withdrawn, rejected "
          "or over.", domain="environment"),
    _receive("cmd_env_warning", "cmd/environment/warnings/{warning}", "env_warning_request",
             "Confirm or reject a proposed warning, or withdraw one in force.", domain="environment"),
    Topic("cap", "alerts/cap/{warning}", "send", "cap", True, 1,
          "Retained CAP 1.2 XML per public warning (operator or rule): Alert, Update on a change, Cancel.",
          content_type="application/cap+xml"),
    # The city data platform's feed (`[ngsi] mode = "mqtt"`, docs/ngsi-ld.md), not the operators'.
    Topic("ngsi_entities", "ngsi/entities", "send", "ngsi_batch", False, 1,
          "NGSI-LD entities (FIWARE Smart Data Models, normalized) in batches, when the NGSI-LD exporter "
          "publishes over MQTT.", domain="ngsi", content_type="application/ld+json"),
)  # fmt: skip

_BY_NAME = {t.name: t for t in TOPICS}


def by_name(name: str) -> Topic:
    """The table's entry of that name (KeyError for a name it does not have)."""
    return _BY_NAME[name]


def request_filters(base: str, domains: Collection[str] | None = None) -> list[str]:
    """What the API subscribes to under `base`: `cmd/#` (so an unknown request still gets its
    nack) and the filters of the other topics it receives, for the enabled `domains` (None: all;
    the site-wide and lighting topics are always taken)."""
    filters = [
        t.filter
        for t in TOPICS
        if t.direction == "receive"
        and not t.pattern.startswith("cmd/")
        and (domains is None or t.domain in {"site", "lighting", *domains})
    ]
    # Filters that differ only in their last level are taken as one (`utility/+/+`): a request
    # on a sibling the API has no route for still gets its nack.
    parents = [f.rsplit("/", 1)[0] for f in filters]
    merged = [f"{p}/+" if parents.count(p) > 1 else f for f, p in zip(filters, parents, strict=True)]
    return [f"{base}/{f}" for f in dict.fromkeys(["cmd/#", *merged])]


def dashboard_subscriptions(base: str) -> list[str]:
    """What a dashboard subscribes to under `base`: every topic the daemon publishes (but the
    NGSI-LD feed, which is for the city's data platform).

    A client adds its own reply topic (`{base}/replies/{client}`): a broker's ACL grants each
    account only its own replies, so `replies/#` is not asked for.
    """
    return [f"{base}/{t.filter}" for t in TOPICS if t.direction == "send" and t.domain != "ngsi"]
