"""Generate the MQTT API contract from the payload models: JSON Schemas and AsyncAPI 3.0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge import __version__
from edge.payloads import API_VERSION
from edge.payloads import PUBLISHED_MODELS as KERNEL_MODELS
from optimizer.displays import GuidancePlan

# The contract: the kernel's payloads and the domain models published as they are.
PUBLISHED_MODELS: dict[str, type[BaseModel]] = {**KERNEL_MODELS, "guidance_plan": GuidancePlan}

# (channel address, message key, action, summary): `send` = the daemon publishes.
CHANNELS: list[tuple[str, str, str, str]] = [
    ("dos/v1/{site}/status", "daemon_status", "send", "Daemon online/offline (retained; last will)."),
    ("dos/v1/{site}/lights/{lamp}/state", "lamp_state", "send", "Retained lamp state, on change (QoS 1)."),
    ("dos/v1/{site}/lights/{lamp}/telemetry", "lamp_telemetry", "send",
     "Lamp counters, periodic (QoS 0)."),
    ("dos/v1/{site}/controllers/{controller}/state", "controller_state", "send",
     "Retained controller state."),
    ("dos/v1/{site}/alarms/events", "alarm", "send", "Alarms raised and cleared (QoS 1)."),
    ("dos/v1/{site}/alarms/active/{device}/{code}", "alarm", "send", "Retained while an alarm is active "
     "(with who acknowledged it and why, once acked); emptied when it clears."),
    ("dos/v1/{site}/alarms/history", "alarm_history", "send",
     "Retained: the latest alarm events (raised, acknowledged, cleared), newest first."),
    ("dos/v1/{site}/cmd/alarms/ack", "alarm_ack", "receive",
     "Acknowledge an active alarm with a comment; refused (unknown_alarm) for one that is not active."),
    ("dos/v1/{site}/plans/{domain}", "plan", "send", "The current plan of a domain (retained)."),
    ("dos/v1/{site}/commands/results", "command_result", "send",
     "Final outcome of operator and motion commands, and of any failed command."),
    ("dos/v1/{site}/acks", "ack", "send", "Answers to requests that carried no response topic."),
    ("dos/v1/{site}/cmd/lights/{lamp}", "set_level|resume_schedule", "receive", "Command one lamp."),
    ("dos/v1/{site}/cmd/groups/{group}", "set_level|resume_schedule", "receive",
     "Command every lamp of a group."),
    ("dos/v1/{site}/cmd/segments/{segment}", "set_level|resume_schedule", "receive",
     "Command every lamp of a road segment."),
    ("dos/v1/{site}/cmd/lighting/replan", "replan", "receive", "Re-plan the night now."),
    ("dos/v1/{site}/field/motion/{lamp}", "motion", "receive", "Motion seen at a bike-path lamp."),
    ("dos/v1/{site}/chargers/{charger}/state", "charger_state", "send",
     "Retained charge point state: status, car, setpoint, power, session, plan."),
    ("dos/v1/{site}/feeders/{feeder}/state", "feeder_state", "send",
     "Feeder load against its limit (lighting, setpoints, measured), every 2 s."),
    ("dos/v1/{site}/cmd/chargers/{charger}", "charger_pause|charger_limit|charger_release", "receive",
     "Pause, limit or release a charge point (the feeder interlock still applies)."),
    ("dos/v1/{site}/cmd/feeders/{feeder}", "feeder_limit", "receive", "An operator limit on a feeder."),
    ("dos/v1/{site}/cmd/charging/replan", "replan", "receive", "Re-plan the charge load now."),
    ("dos/v1/{site}/utility/{utility}/limits", "curtailment", "receive",
     "A grid operator's feeder or cabinet limit for a window (never below 4.2 kW per charging car)."),
    ("dos/v1/{site}/utility/{utility}/signals", "price_curve", "receive", "A price or CO2 curve."),
    ("dos/v1/{site}/displays/{display}/state", "display_state", "send",
     "Retained: what a display shows now (rendered text), online, brightness, pixel faults."),
    ("dos/v1/{site}/parking/{car_park}/state", "parking_state", "send",
     "Retained car park occupancy (free spaces, open, fresh), every 5 s."),
    ("dos/v1/{site}/field/carparks/{car_park}", "carpark_report", "receive", "A car park's own counter."),
    ("dos/v1/{site}/guidance", "guidance_plan", "send",
     "Retained guidance decisions: per sign the car park, free spaces and travel minutes."),
    ("dos/v1/{site}/warnings/active", "warning", "send", "Retained list of the warnings in force."),
    ("dos/v1/{site}/cmd/warnings/set", "warning|warning_clear", "receive",
     "A warning for displays (all when none are named) and a window; optionally lamps to full."),
    ("dos/v1/{site}/cmd/displays/{display}", "display_message|display_clear", "receive",
     "An operator's message on a display for a duration, or clear it."),
    ("dos/v1/{site}/waste/bins/{bin}/state", "bin_state", "send",
     "Retained bin state: fill, predicted rate and threshold time, alarms, today's plan, operator flags."),
    ("dos/v1/{site}/waste/trucks/{truck}/state", "truck_state", "send",
     "Retained truck state: status, position, load, route progress, odometer."),
    ("dos/v1/{site}/waste/plan", "waste_plan", "send",
     "Retained collection plan: why it was made, per truck the stops with ETAs and done flags."),
    ("dos/v1/{site}/waste/summary", "waste_summary", "send",
     "Retained day numbers: bins reporting, above threshold, emptied (sensor-confirmed), overflows, km."),
    ("dos/v1/{site}/cmd/waste/bins/{bin}", "waste_bin_request", "receive",
     "Force a bin into today's plan (re-plans), exclude it from planning, or clear either."),
    ("dos/v1/{site}/cmd/waste/replan", "waste_replan", "receive",
     "Plan the collection again now, keeping what is done."),
]  # fmt: skip


def schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema() for name, model in PUBLISHED_MODELS.items()}


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the topic tree."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for i, (address, keys, action, summary) in enumerate(CHANNELS):
        cid = f"ch{i}_" + address.split("{site}/", 1)[1].replace("/", "_").replace("{", "").replace("}", "")
        params = {p.split("}")[0]: {"description": p.split("}")[0]} for p in address.split("{")[1:]}
        channels[cid] = {
            "address": address,
            "description": summary,
            "parameters": params,
            "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in keys.split("|")},
        }
        op: dict[str, Any] = {"action": action, "channel": {"$ref": f"#/channels/{cid}"}, "summary": summary}
        if action == "receive" and "motion" not in keys:
            op["reply"] = {
                "address": {
                    "location": "$message.header#/responseTopic",
                    "description": "MQTT 5 response topic, under dos/v1/{site}/replies/ (else the "
                    "request is refused on acks: response_topic_refused); correlation data is echoed. "
                    "MQTT 3.1.1 clients put "
                    "`response_topic` and `correlation_id` in the JSON instead. Retained requests "
                    "are refused (retained_request).",
                },
                "channel": {"$ref": f"#/channels/{next(c for c in channels if c.endswith('_acks'))}"}
                if any(c.endswith("_acks") for c in channels)
                else None,
                "messages": [{"$ref": "#/components/messages/ack"}],
            }
        operations[f"op{i}"] = op
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "DOS Edge MQTT API",
            "version": f"{API_VERSION} (daemon {__version__})",
            "description": "Versioned topic tree of the DOS Edge daemon. Payloads are JSON; schemas in "
            "docs/schemas/. Requests are answered with an ack or a nack carrying the reason.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {
                name: {"name": name, "payload": {"$ref": f"schemas/{name}.json"}} for name in PUBLISHED_MODELS
            }
        },
    }


def write_docs(out: Path) -> list[Path]:
    """Write docs/schemas/*.json and docs/asyncapi.json; returns the paths written."""
    written = []
    (out / "schemas").mkdir(parents=True, exist_ok=True)
    for name, schema in schemas().items():
        p = out / "schemas" / f"{name}.json"
        p.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(p)
    p = out / "asyncapi.json"
    p.write_text(json.dumps(asyncapi(), indent=2) + "\n", encoding="utf-8")
    written.append(p)
    return written
