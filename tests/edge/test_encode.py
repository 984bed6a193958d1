"""Outbound JSON (`edge.decode.encode_json`): the same text as orjson, in bytes of its own size."""

from __future__ import annotations

import tracemalloc

import orjson

from edge.decode import encode_json


def test_payload_is_compact_json() -> None:
    body = {"device_id": "L-0001", "level_cmd": 40.0, "failures": [], "online": True}
    assert encode_json(body) == orjson.dumps(body)
    assert orjson.loads(encode_json(body)) == body


def test_payloads_kept_in_flight_hold_their_own_size_not_a_buffer() -> None:
    """A city keeps tens of thousands of retained states until the broker acknowledges them:
    each must cost about its length, not orjson's 4 KiB working buffer."""
    bodies = [{"device_id": f"L-{i:05d}", "level_cmd": 40.0, "power_w": 12.5} for i in range(1000)]
    tracemalloc.start()
    try:
        kept = [encode_json(b) for b in bodies]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    length = sum(len(p) for p in kept)
    assert held < 2 * length + 64 * len(kept)  # the text and a bytes header each, not 4 MiB
