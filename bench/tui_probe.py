"""The dashboard probe: the operator dashboard, headless in its own process, against a live broker.

`dashboard_probe(url, site_id, window_s=...)` spawns a process that runs `tui.app.DashboardApp`
on the Lights view at 160x50 with a Textual driver that renders every frame as a terminal driver
does and keeps what it would write, and returns what it measured (see its docstring). The probe
times publish -> visible with marker updates it publishes itself: twice a second the state of a
probe lamp (`0probe`, first in the table by id) with a numbered segment name, not retained, QoS 1;
a marker is visible when it is in a written frame. `reference_probe` is the same through a bare
aiomqtt subscriber that only parses every payload (orjson): the reference in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import aiomqtt
import orjson

PROBE_DEVICE = "0probe"
PROBE_EVERY_S = 0.5
KEYS_S = 15.0  # the key phase lasts this long (padded), so a caller knows how long to keep traffic up
SIZE = (160, 50)
MARK = re.compile(r"probe-(\d{6})")
# The keys an operator presses on the Lights view, then the Map and back; each is timed.
KEYS = (
    *["pagedown"] * 8, *["down"] * 5, *["pageup"] * 4, "end", "home",
    "slash", "s", "e", "g", "backspace", "backspace", "backspace", "escape",
    "s", "s", "3", "2",
)  # fmt: skip


_Events = tuple[Event | None, Event | None]  # (loaded, traffic_done)


@dataclass
class Markers:
    """Markers sent (seq -> publish time) and seen (seq -> first time visible)."""

    sent: dict[int, float] = field(default_factory=dict)
    seen: dict[int, float] = field(default_factory=dict)

    def latencies_ms(self) -> list[float]:
        """Per marker: ms until it, or a later marker, was visible (inf: never; a newer state supersedes)."""
        out = []
        first = float("inf")
        for seq in sorted(self.sent, reverse=True):
            first = min(first, self.seen.get(seq, float("inf")))
            out.append((first - self.sent[seq]) * 1000)
        return out[::-1]


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank; nan for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _send_markers(url: str, base: str, markers: Markers, stop: asyncio.Event) -> None:
    """Publish the probe lamp's state with a new marker every PROBE_EVERY_S until `stop`."""
    from bench.tui_site import lamp_state
    from tui.client import BrokerUrl

    addr = BrokerUrl.parse(url)
    seq = int(time.time()) % 1000 * 1000
    async with aiomqtt.Client(
        addr.host, addr.port, identifier=f"bench-tui-mark-{uuid.uuid4().hex[:6]}", timeout=10,
        username=addr.username, password=addr.password,
    ) as client:  # fmt: skip
        while not stop.is_set():
            seq += 1
            topic, payload = lamp_state(base, 0, 50.0, segment=f"probe-{seq:06d}", device=PROBE_DEVICE)
            markers.sent[seq] = time.monotonic()
            await asyncio.wait_for(client.publish(topic, payload, qos=1), 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_EVERY_S)


def _capture_driver(seen: dict[int, float], writes: list[float], frame: asyncio.Event) -> type[Any]:
    """A driver that renders every frame as a terminal driver would, notes when each marker first
    shows, and keeps the time of the last write in `writes[0]` (and sets `frame`)."""
    from textual.drivers.headless_driver import HeadlessDriver

    class CaptureDriver(HeadlessDriver):
        @property
        def is_headless(self) -> bool:
            return False  # so the app renders its frames into escape sequences for write()

        def write(self, data: str) -> None:
            writes[0] = time.monotonic()
            frame.set()
            if "probe-" in data:
                now = time.monotonic()
                for m in MARK.finditer(data):
                    seen.setdefault(int(m.group(1)), now)

    return CaptureDriver


async def _loaded(
    count: Callable[[], int], expect: int | None, timeout_s: float, pause: Callable[[float], Awaitable[None]]
) -> None:
    """Until `count()` reaches `expect`; without one, until half a second adds under 2 % (the retained burst is over)."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        n = count()
        if expect is not None and n >= expect:
            return
        if expect is None and n > 0 and n - last < max(20, 0.02 * n):
            return
        last = n
        await pause(0.5 if expect is None else 0.05)
    raise TimeoutError(f"initial load: {count()} of {expect} messages in {timeout_s:g} s")


async def _traffic_over(done: Event | None, pause: Callable[[float], Awaitable[None]]) -> None:
    """Until the caller's traffic is over (if it said when), then a drain of 2 s."""
    deadline = time.monotonic() + 120
    while done is not None and not done.is_set() and time.monotonic() < deadline:
        await pause(0.1)
    await pause(2.0)


async def _dashboard(
    url: str, site: str, window_s: float, expect: int | None, events: _Events
) -> dict[str, float]:
    """(in the probe's process) Load, measure the window, press the keys, count what came in."""
    from tui.app import DashboardApp
    from tui.client import DashboardClient

    markers = Markers()
    client = DashboardClient(url, site, request_timeout_s=10)
    app = DashboardApp(url, site, client=client)
    writes, frame = [0.0], asyncio.Event()
    app.driver_class = _capture_driver(markers.seen, writes, frame)
    out: dict[str, float] = {}
    c0, t0 = time.process_time(), time.monotonic()
    async with app.run_test(headless=False, size=SIZE) as pilot:
        await pilot.press("2")
        lights = app.query_one("#lights")

        def count() -> int:
            shown = len(getattr(lights, "shown_keys", ()))
            return app.model.messages if shown >= len(app.model.lamps) else 0

        await _loaded(count, expect, 300, pilot.pause)
        out["initial_load_s"], out["initial_load_cpu_s"] = time.monotonic() - t0, time.process_time() - c0
        out["retained_count"] = app.model.messages
        if events[0] is not None:
            events[0].set()
        received0 = client.received
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_send_markers(url, client.base, markers, stop), name="bench.tui.markers")
            c1, t1 = time.process_time(), time.monotonic()
            await pilot.pause(window_s)
            out["cpu_pct_of_core"] = 100 * (time.process_time() - c1) / (time.monotonic() - t1)
            stop.set()
        await pilot.pause(1.0)  # the last markers: one target's time to show
        keys_end = time.monotonic() + KEYS_S
        out.update(await _keys(app, writes, frame))
        await pilot.pause(max(0.0, keys_end - time.monotonic()))
        await _traffic_over(events[1], pilot.pause)
        out["live_received"] = client.received - received0 - len(markers.sent)
    lat = markers.latencies_ms()
    out["visible_p50_ms"], out["visible_p95_ms"] = pct(lat, 0.5), pct(lat, 0.95)
    out["markers_sent"], out["markers_lost"] = len(lat), sum(1 for v in lat if v == float("inf"))
    out["bad_payloads"] = app.model.bad_total
    return out


async def _keys(app: Any, writes: list[float], frame: asyncio.Event) -> dict[str, float]:
    """Each of KEYS sent as the terminal driver sends it, timed until the first frame written after the
    app and every widget on screen handled it (not Pilot.press: it also waits for the process to idle)."""
    from textual import events
    from textual.pilot import Pilot

    pilot = Pilot(app)
    wall, cpu = [], []
    for key in KEYS:
        c, t = time.process_time(), time.monotonic()
        char = {"slash": "/"}.get(key, key if len(key) == 1 else None)
        app._driver.send_message(events.Key(key, char))
        await pilot._wait_for_screen()
        frame.clear()
        async with asyncio.timeout(10):
            await frame.wait()
        wall.append((writes[0] - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        await asyncio.sleep(0.05)  # an operator's pace, and the next key's clock starts clean
    return {
        "key_p50_ms": statistics.median(wall), "key_p95_ms": pct(wall, 0.95), "key_max_ms": max(wall),
        "key_cpu_mean_ms": statistics.fmean(cpu),
    }  # fmt: skip


async def _bare(
    url: str, site: str, window_s: float, expect: int | None, events: _Events
) -> dict[str, float]:
    """(in the probe's process) The reference: a bare subscriber that parses every payload."""
    from tui.client import BrokerUrl

    addr = BrokerUrl.parse(url)
    base = f"dos/v1/{site}"
    probe_topic = f"{base}/lights/{PROBE_DEVICE}/state"
    markers = Markers()
    received = [0]
    out: dict[str, float] = {}
    async with aiomqtt.Client(
        addr.host, addr.port, identifier=f"bench-tui-bare-{uuid.uuid4().hex[:6]}", timeout=30,
        username=addr.username, password=addr.password,
    ) as client:  # fmt: skip
        client.pending_calls_threshold = 10_000_000

        async def read() -> None:
            async for message in client.messages:
                received[0] += 1
                payload = message.payload
                if isinstance(payload, bytes) and payload:
                    obj = orjson.loads(payload)
                    if message.topic.value == probe_topic and (
                        m := MARK.fullmatch(str(obj.get("segment", "")))
                    ):
                        markers.seen.setdefault(int(m.group(1)), time.monotonic())

        c0, t0 = time.process_time(), time.monotonic()
        await client.subscribe(f"{base}/#", qos=0)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read(), name="bench.tui.bare")
            await _loaded(lambda: received[0], expect, 300, asyncio.sleep)
            out["initial_load_s"], out["initial_load_cpu_s"] = time.monotonic() - t0, time.process_time() - c0
            out["retained_count"] = received[0]
            if events[0] is not None:
                events[0].set()
            received0, stop = received[0], asyncio.Event()
            marking = tg.create_task(_send_markers(url, base, markers, stop), name="bench.tui.bare.markers")
            c1, t1 = time.process_time(), time.monotonic()
            await asyncio.sleep(window_s)
            out["cpu_pct_of_core"] = 100 * (time.process_time() - c1) / (time.monotonic() - t1)
            stop.set()
            await marking
            await _traffic_over(events[1], asyncio.sleep)
            out["live_received"] = received[0] - received0 - len(markers.sent)
            reader.cancel()
    lat = markers.latencies_ms()
    out["visible_p50_ms"], out["visible_p95_ms"] = pct(lat, 0.5), pct(lat, 0.95)
    out["markers_sent"], out["markers_lost"] = len(lat), sum(1 for v in lat if v == float("inf"))
    return out


def _child(
    conn: Connection,
    kind: str,
    url: str,
    site: str,
    window_s: float,
    expect: int | None,
    events: _Events,
) -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run = _dashboard if kind == "dashboard" else _bare
    try:
        conn.send(("ok", asyncio.run(run(url, site, window_s, expect, events))))
    except BaseException as exc:  # reported to the parent, which counts it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _spawn(
    kind: str, url: str, site: str, window_s: float, expect: int | None, events: _Events
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child, args=(child, kind, url, site, window_s, expect, events), name=f"bench-tui-{kind}"
    )
    proc.start()
    try:
        if not parent.poll(window_s + 400):
            raise TimeoutError(f"the {kind} probe did not answer in time")
        status, result = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    if status != "ok":
        raise RuntimeError(f"the {kind} probe failed: {result}")
    return dict(result)


def dashboard_probe(
    url: str,
    site_id: str,
    *,
    window_s: float,
    expect_retained: int | None = None,
    loaded: Event | None = None,
    traffic_done: Event | None = None,
) -> dict[str, float]:
    """Run the operator dashboard headless in its own (spawned) process against the broker at `url`
    (`mqtt://[user:pass@]host:port`) for site `site_id`, and return what it measured.

    The dashboard connects, loads the retained state (done when it has folded `expect_retained`
    messages and its lamps table shows every lamp; without `expect_retained`, when half a second
    adds under 2 % more: the retained burst is over), shows the Lights view at 160x50, then for
    `window_s` seconds publishes a probe lamp's state twice a second (`lights/0probe/state`, not
    retained: the probe lamp stays in this dashboard only) and notes when each marker is in a
    rendered frame; then presses `KEYS` (paging, filtering, sorting, Map and back). `loaded` (a
    multiprocessing Event) is set when the load is done, so a caller can start its traffic then;
    if the caller sets `traffic_done` when its traffic is over, the probe waits for it (at most
    120 s) and 2 s more before it counts what came in (`live_received`).

    Returns (floats): `initial_load_s`, `initial_load_cpu_s`, `retained_count` (messages folded by
    then), `cpu_pct_of_core` (the process over the window), `visible_p50_ms`, `visible_p95_ms`
    (publish -> visible; inf if a marker and every later one never showed), `markers_sent`,
    `markers_lost`, `key_p50_ms`, `key_p95_ms`, `key_max_ms` (key press -> screen updated, wall),
    `key_cpu_mean_ms`, `live_received` (messages after the load, the probe's own not counted),
    `bad_payloads`. Raises RuntimeError or TimeoutError if the dashboard failed or hung.
    """
    return _spawn("dashboard", url, site_id, window_s, expect_retained, (loaded, traffic_done))


def reference_probe(
    url: str,
    site_id: str,
    *,
    window_s: float,
    expect_retained: int | None = None,
    loaded: Event | None = None,
    traffic_done: Event | None = None,
) -> dict[str, float]:
    """The same measurement through a bare aiomqtt subscriber that parses every payload (no key numbers)."""
    return _spawn("bare", url, site_id, window_s, expect_retained, (loaded, traffic_done))
