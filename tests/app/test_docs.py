"""The committed API contract is what the payload models generate (docs cannot drift)."""

from __future__ import annotations

from pathlib import Path

from edge.app.docs import write_docs

DOCS = Path(__file__).parents[2] / "docs"


def test_generated_contract_matches_the_committed_docs(tmp_path: Path) -> None:
    """Run `edge docs` when this fails: a payload model changed without its schema."""
    for path in write_docs(tmp_path):
        committed = DOCS / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing"
        assert committed.read_text() == path.read_text(), f"{committed} is out of date"


def test_every_request_channel_has_a_reply() -> None:
    import json

    doc = json.loads((DOCS / "asyncapi.json").read_text())
    receive = [op for op in doc["operations"].values() if op["action"] == "receive"]
    assert receive
    for op in receive:
        if "motion" in op["summary"].lower():
            continue
        assert op["reply"]["messages"] == [{"$ref": "#/components/messages/ack"}]
