"""Generate the MQTT API contract from the payload models: JSON Schemas and AsyncAPI 3.0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge import __version__
from edge.app.ngsi_models import NgsiBatch
from edge.payloads import API_VERSION
from edge.payloads import PUBLISHED_MODELS as KERNEL_MODELS
from edge.topics import TOPICS
from optimizer.displays import GuidancePlan

# The contract: the kernel's payloads and the domain models published as they are.
PUBLISHED_MODELS: dict[str, type[BaseModel]] = {
    **KERNEL_MODELS,
    "guidance_plan": GuidancePlan,
    "ngsi_batch": NgsiBatch,
}

# Messages that are not JSON (CAP alerts are XML), by payload key, from the topic table.
CONTENT_TYPES = {t.payload: t.content_type for t in TOPICS if t.content_type != "application/json"}

# (channel address, message keys, action, summary) per topic of `edge.topics.TOPICS`, in its order:
# `send` = the daemon publishes.
CHANNELS: list[tuple[str, str, str, str]] = [
    (f"dos/{API_VERSION}/{{site}}/{t.pattern}", t.payload, t.direction, t.summary) for t in TOPICS
]


def schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema() for name, model in PUBLISHED_MODELS.items()}


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the topic tree (`edge.topics.TOPICS`)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    acks = next(f"ch{i}_acks" for i, t in enumerate(TOPICS) if t.name == "acks")
    for i, t in enumerate(TOPICS):
        address = CHANNELS[i][0]
        cid = f"ch{i}_" + t.pattern.replace("/", "_").replace("{", "").replace("}", "")
        channels[cid] = {
            "address": address,
            "description": t.summary,
            "parameters": {p: {"description": p} for p in ["site", *t.params]},
            "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in t.payload.split("|")},
        }
        op: dict[str, Any] = {
            "action": t.direction,
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": t.summary,
        }
        if t.reply:  # sensor input (motion, car-park counters) is not answered
            op["reply"] = {
                "address": {
                    "location": "$message.header#/responseTopic",
                    "description": "MQTT 5 response topic, under dos/v1/{site}/replies/ (else the "
                    "request is refused on acks: response_topic_refused); correlation data is echoed. "
                    "MQTT 3.1.1 clients put "
                    "`response_topic` and `correlation_id` in the JSON instead. Retained requests "
                    "are refused (retained_request).",
                },
                "channel": {"$ref": f"#/channels/{acks}"},
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
                name: {"name": name, "payload": {"$ref": f"schemas/{name}.json"}}
                | ({"contentType": CONTENT_TYPES[name]} if name in CONTENT_TYPES else {})
                for name in PUBLISHED_MODELS
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
