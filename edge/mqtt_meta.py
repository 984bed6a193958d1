"""MQTT 3.1.1 request metadata: what MQTT 5 carries as properties (response topic,
correlation data), a 3.1.1 client puts in the JSON body as `response_topic` and
`correlation_id`. The link reads it from requests and writes it into responses.
"""

from __future__ import annotations

import orjson

from edge.decode import decode_json, encode_json


def metadata_from_json(payload: bytes, max_bytes: int) -> tuple[str | None, bytes | None]:
    """3.1.1 request metadata: `response_topic` and `correlation_id` in a JSON object."""
    obj = decode_json(payload, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        return None, None
    topic = obj.get("response_topic")
    correlation = obj.get("correlation_id")
    return (
        topic if isinstance(topic, str) else None,
        correlation.encode() if isinstance(correlation, str) else None,
    )


def metadata_into_json(payload: bytes, response_topic: str | None, correlation: bytes | None) -> bytes:
    """Add `response_topic`/`correlation_id` to a JSON object payload (3.1.1 only).

    A key the payload has as null is filled too: an `Ack` always carries `correlation_id`, null
    unless its handler set it, and a nack written before the body was read (a refused response
    topic, a retained request) would otherwise reach a 3.1.1 client without its correlation.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if not isinstance(obj, dict):
        return payload
    if response_topic is not None and obj.get("response_topic") is None:
        obj["response_topic"] = response_topic
    if correlation is not None and obj.get("correlation_id") is None:
        obj["correlation_id"] = correlation.decode("utf-8", "backslashreplace")
    return encode_json(obj)
