"""The city bench's operator and utility trickle: paced MQTT requests to the daemon, each timed.

One aiomqtt client (MQTT 5 with response topic and correlation data when the daemon speaks 5,
else `response_topic`/`correlation_id` in the JSON) sends, for `window_s` seconds:

- a `set_level` on a random lamp every `cmd_s` (levels 37 and 63 alternate: no plan step makes
  them, so every command changes the register and the daemon answers after the read-back);
- a utility curtailment of a random charging feeder every `utility_s` (`utility/dso/limits`).

Requests are paced, not sequential: a slow answer does not slow the trickle. A request with no
answer within REQUEST_TIMEOUT_S, or answered with ok=false, is a failure (counted, with reason).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

REQUEST_TIMEOUT_S = 5.0
LEVELS = (37, 63)


@dataclass(slots=True)
class Trickle:
    """Round trips (s) and failures by request kind."""

    durations: dict[str, list[float]] = field(default_factory=lambda: {"command": [], "utility": []})
    failures: dict[str, list[str]] = field(default_factory=lambda: {"command": [], "utility": []})
    rss: list[tuple[float, float]] = field(default_factory=list)  # (daemon, solver process) MB
    # (wall time sent, round trip s, topic) of every request: BENCH_CITY_TIMELINE lines them up
    # with the daemon's stack samples
    sent: list[tuple[float, float, str]] = field(default_factory=list)


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].partition(":")
    return host, int(port or 1883)


async def trickle(
    url: str,
    v5: bool,
    base: str,
    lamp_ids: list[str],
    feeders: list[str],
    *,
    window_s: float,
    cmd_s: float,
    utility_s: float,
    clock_now: Callable[[], float],
    sample: Callable[[], tuple[float, float]],
    seed: int,
) -> Trickle:
    """Run the trickle for `window_s`; `sample()` is called every 5 s (the daemon's RSS).

    Size exception: the closures share one client, its waiting table and the results.
    """
    import aiomqtt
    import orjson
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    rnd = random.Random(seed)
    host, port = host_port(url)
    run = uuid.uuid4().hex[:8]
    reply = f"{base}/replies/bench-{run}"
    out = Trickle()
    waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
    proto = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311

    async def read(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            if not isinstance(msg.payload, bytes):
                continue
            data = orjson.loads(msg.payload)
            got: Any = msg.properties
            corr = got.CorrelationData if v5 and got else None
            key = corr.decode() if corr else str(data.get("correlation_id", ""))
            fut = waiting.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(data)

    async def one(client: aiomqtt.Client, kind: str, topic: str, payload: dict[str, Any]) -> None:
        corr = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiting[corr] = fut
        props: Any = None
        if v5:
            props = cast(Any, Properties)(PacketTypes.PUBLISH)
            props.ResponseTopic = reply
            props.CorrelationData = corr.encode()
            body = orjson.dumps(payload)
        else:
            body = orjson.dumps({**payload, "response_topic": reply, "correlation_id": corr})
        t0 = time.perf_counter()
        await client.publish(topic, body, qos=1, properties=props)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                data = await fut
        except TimeoutError:
            waiting.pop(corr, None)
            out.failures[kind].append(f"{topic}: no answer within {REQUEST_TIMEOUT_S} s")
            return
        out.durations[kind].append(time.perf_counter() - t0)
        out.sent.append((time.time() - (time.perf_counter() - t0), time.perf_counter() - t0, topic))
        if not data.get("ok"):
            out.failures[kind].append(f"{topic}: {data.get('status')} {data.get('reason')}")

    async def pace(client: aiomqtt.Client, tg: asyncio.TaskGroup, every: float, make: Any, kind: str) -> None:
        end = time.monotonic() + window_s
        i = 0
        while time.monotonic() + every <= end and i < 1_000_000:
            await asyncio.sleep(every * rnd.uniform(0.5, 1.5))
            topic, payload = make(i)
            tg.create_task(one(client, kind, topic, payload), name=f"bench.{kind}.{i}")
            i += 1

    def command(i: int) -> tuple[str, dict[str, Any]]:
        return f"{base}/cmd/lights/{rnd.choice(lamp_ids)}", {"action": "set_level", "level": LEVELS[i % 2]}

    def utility(i: int) -> tuple[str, dict[str, Any]]:
        now = clock_now()
        target = rnd.choice(feeders)
        return f"{base}/utility/dso/limits", {
            "action": "curtail", "target": target, "limit_kw": 20.0 + 5 * (i % 3), "start": now, "end": now + 900,
        }  # fmt: skip

    async def sampler() -> None:
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            out.rss.append(sample())
            await asyncio.sleep(5.0)

    async with aiomqtt.Client(
        host, port, identifier=f"bench-city-{run}", protocol=proto, timeout=10
    ) as client:
        sock: Any = client._client.socket()  # paho's socket: no Nagle on the requester
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await client.subscribe(reply, qos=1)
        reader = asyncio.create_task(read(client), name="bench.reader")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sampler(), name="bench.rss")
                if lamp_ids and cmd_s > 0:
                    tg.create_task(pace(client, tg, cmd_s, command, "command"), name="bench.commands")
                if feeders and utility_s > 0:
                    tg.create_task(pace(client, tg, utility_s, utility, "utility"), name="bench.utility")
        finally:
            reader.cancel()
    return out
