"""The committed API contract is what the payload models generate (docs cannot drift)."""

from __future__ import annotations

import json
from pathlib import Path

from edge.app.docs import write_docs
from edge.topics import TOPICS

DOCS = Path(__file__).parents[2] / "docs"


def test_generated_contract_matches_the_committed_docs(tmp_path: Path) -> None:
    """Run `edge docs` when this fails: a payload model changed without its schema."""
    for path in write_docs(tmp_path):
        committed = DOCS / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing"
        assert committed.read_text() == path.read_text(), f"{committed} is out of date"


def test_every_request_is_answered_on_acks_and_sensor_input_is_not() -> None:
    """Each request channel of the table has the ack reply (on the acks channel); motion and
    car-park counters (sensor input) have none."""
    doc = json.loads((DOCS / "asyncapi.json").read_text())
    ops = {op["channel"]["$ref"]: op for op in doc["operations"].values()}
    receive = [t for t in TOPICS if t.direction == "receive"]
    assert receive
    for i, t in enumerate(TOPICS):
        if t.direction != "receive":
            continue
        op = next(o for ref, o in ops.items() if ref.startswith(f"#/channels/ch{i}_"))
        if not t.reply:
            assert "reply" not in op, t.pattern
            continue
        assert op["reply"]["messages"] == [{"$ref": "#/components/messages/ack"}], t.pattern
        assert op["reply"]["channel"] == {"$ref": "#/channels/ch10_acks"}, t.pattern
    assert {t.pattern for t in receive if not t.reply} == {"field/motion/{lamp}", "field/carparks/{car_park}"}
