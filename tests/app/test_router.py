"""The API's router (edge/app/router.py): one set of checks, then the route a domain's build returned.

A request reaches the handler whose pattern matches its topic, with its payload decoded and the
MQTT 3.1.1 reply fields taken out; a topic no domain routes, a retained request or a bad id is
refused and counted before any handler runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.app.router import Router
from edge.app.routes.base import Request, Route
from edge.clock import ManualClock
from edge.payloads import Ack

BASE = "dos/test-site"


@dataclass(frozen=True)
class Msg:
    """A received message as the router sees it."""

    topic: str
    payload: bytes = b"{}"
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    retain: bool = False


def router(seen: list[Request]) -> Router:
    async def things(r: Request) -> Ack:
        seen.append(r)
        return Ack(ok=True, status="accepted", request_topic=r.topic, ts=0.0)

    return Router(
        base=BASE,
        clock=ManualClock(0.0),
        routes=[Route(("cmd", "things", "+"), things)],
        publisher=lambda: None,
    )


async def test_a_request_reaches_its_route_with_the_reply_fields_taken_out() -> None:
    """`cmd/things/T1` runs the things route once, with the payload minus `correlation_id`."""
    seen: list[Request] = []
    r = router(seen)
    ack = await r.handle(Msg(f"{BASE}/cmd/things/T1", b'{"x": 1, "correlation_id": "c1"}'))
    assert ack.ok is True
    assert ack.correlation_id == "c1"
    assert [(s.parts, s.raw) for s in seen] == [(("cmd", "things", "T1"), {"x": 1})]
    assert (r.requests, r.acks, r.nacks) == (1, 1, 0)


async def test_what_no_route_takes_is_refused_and_counted_before_any_handler() -> None:
    """An unrouted topic, a retained request, a bad id and a reply outside the prefix are nacked."""
    seen: list[Request] = []
    r = router(seen)
    cases = {
        "unknown_topic": Msg(f"{BASE}/cmd/other/T1"),
        "retained_request": Msg(f"{BASE}/cmd/things/T1", retain=True),
        "invalid_id": Msg(f"{BASE}/cmd/things/" + "T" * 80),
        "response_topic_refused": Msg(f"{BASE}/cmd/things/T1", response_topic=f"{BASE}/status"),
    }
    for reason, msg in cases.items():
        ack = await r.handle(msg)
        assert ack.ok is False, reason
        assert ack.reason.startswith(reason), (reason, ack.reason)
    assert seen == []
    assert dict(r.refused) == dict.fromkeys(cases, 1)
    assert (r.requests, r.nacks) == (4, 4)
