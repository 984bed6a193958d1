"""Fuzz every topic the daemon listens on, against the daemon, the simulators and a real broker.

The topics come from the daemon itself: the filters its MQTT clients SUBSCRIBE to (the API
link and the board and fleet drivers), and under `cmd/#` the request channels of the API
contract (`edge.app.docs.CHANNELS`) plus levels it has no route for. Hypothesis generates the
messages (see tests/fuzz_strategies.py) in batches; after each batch the test checks:
- the daemon is up (its task alive, its link connected, its status topic not offline);
- each request was answered exactly once: on its response topic when that lies under
  `{base}/replies/`, else with a nack on `{base}/acks`, never on a foreign topic;
- no device was written out of range, no lighting floor broken, no feeder over its limit,
  read from the simulators (sampled every 50 ms while the batch runs).

A second test leaves garbage and a valid command retained on every topic, restarts the daemon,
and checks it comes up, refuses the retained command (`retained_request`) and never acts on it.

A failing batch does not stop the run: the test fuzzes on (starting the daemon again if it
died, at most MAX_RESTARTS times) and asserts on everything at the last batch, each failure
naming the single messages it was about (every message has its own correlation id and its own
expected answer, so no shrinking is needed, and none is done: the daemon's state carries over
between batches, so a replayed batch is not the same experiment).

Short variant in `make test`: EDGE_FUZZ_EXAMPLES messages (default 240, a fixed seed).
Long variant: `EDGE_FUZZ_EXAMPLES=5000 pytest tests/app/test_fuzz_topics.py -k every` or
`make bench ARGS=fuzz`; EDGE_FUZZ_RANDOM=1 draws a fresh seed. The figures (sent, answered,
refused by reason, unanswered, misrouted, crashes) are printed, attached to the junit report
as properties, and written with examples per failure to `fuzz_summary.json` in the test's
tmp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import orjson
import pytest
from fuzz_site import FEEDER, FEEDER_LIMIT_A, WAIT_S, District, SubscriptionSpy, district
from fuzz_strategies import Case, FuzzContext, allowed_reply, cases, publishable
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.profiles.displays import BoardStatus, default_led_board_profile, status_payload
from devices.profiles.lorawan import default_profiles
from devices.profiles.waste import TruckEvent, TruckState
from edge.app.api import ACK_TOPIC_CHARS
from edge.app.daemon import site_bins
from edge.app.docs import CHANNELS, PUBLISHED_MODELS
from edge.decode import decode_json
from simulators.lorawan import chirpstack_event, tts_uplink

TZ = ZoneInfo("Europe/Berlin")
NIGHT = datetime(2026, 11, 26, 23, 0, tzinfo=TZ).timestamp()
EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "240"))
BATCH = 24
MAX_RESTARTS = 5
ANSWER_WAIT_S = 8.0  # > the API's result timeout (2 x write_timeout + 1 s) on a loaded machine
RETAINED_CP2_A = 11.0  # the retained limit for CP2: a value nothing else sets
pytestmark = pytest.mark.timeout(max(240, EXAMPLES))


@dataclass
class Answer:
    dest: str
    ok: bool | None
    reason: str
    status: str


@dataclass
class Tally:
    """The run's figures: what was sent, how it was answered, what broke."""

    sent: int = 0
    requests: int = 0
    input_only: int = 0  # field and device input: no answer is due
    answered: int = 0  # exactly once, where it belongs
    acked: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    duplicated: int = 0
    misrouted: int = 0  # answered on a foreign topic, or a refused response topic not nacked on acks
    crashes: int = 0
    physics: int = 0
    by_filter: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    stray: int = 0  # answers no case owns
    lost_in_crash: int = 0  # requests unanswered because the daemon had died
    storage_errors: int = 0  # batches whose audit rows the database refused
    restarts: int = 0

    def table(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "requests": self.requests,
            "input_only": self.input_only,
            "answered_once": self.answered,
            "acked_ok": self.acked,
            "refused": self.answered - self.acked,
            "refused_by_reason": dict(self.refused.most_common()),
            "unanswered": self.unanswered,
            "answered_twice_or_more": self.duplicated,
            "misrouted": self.misrouted,
            "crashes": self.crashes,
            "restarts_after_crash": self.restarts,
            "lost_in_crash": self.lost_in_crash,
            "physics_violations": self.physics,
            "storage_errors": self.storage_errors,
            "stray_answers": self.stray,
            "by_filter": dict(self.by_filter),
            "by_kind": dict(self.by_kind),
        }


class Matcher:
    """Which case an answer belongs to: by correlation data, else by the request's topic.

    A request with MQTT 5 correlation data, or with a `correlation_id` in a JSON body the daemon
    can read, gets it back on its answer, always. Others (a body too large, too deep or not JSON,
    or no correlation at all) are matched to the oldest open uncorrelated request on the topic
    the answer names, which a refusal cuts to its first `ACK_TOPIC_CHARS` characters (a topic
    may be 64 kB long). A correlated request is never taken for an uncorrelated answer.
    """

    def __init__(self) -> None:
        self.by_topic: dict[str, list[int]] = defaultdict(list)

    @staticmethod
    def key(topic: str) -> str:
        return topic[:ACK_TOPIC_CHARS]

    def expect(self, case: Case, *, correlated: bool) -> None:
        """A request was sent; `correlated` if its answer must carry its correlation back."""
        if not correlated:
            self.by_topic[self.key(case.topic)].append(case.n)

    def match(self, request_topic: str, corr: str) -> int | None:
        """The case number this answer is for, or None for an answer no case owns."""
        waiting = self.by_topic.get(self.key(request_topic), [])
        if corr.startswith("fz-") and corr[3:].isdigit():
            n = int(corr[3:])
            if n in waiting:
                waiting.remove(n)
            return n
        if waiting:  # no correlation (3.1.1, body unread): the oldest open uncorrelated request there
            return waiting.pop(0)
        return None


def reason_code(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or "(none)"


class FuzzRun:
    """A running district, the test's own client on the broker, and the answers it has seen."""

    def __init__(self, site: District, client: aiomqtt.Client, ctx: FuzzContext) -> None:
        self.site = site
        self.client = client
        self.ctx = ctx
        self.tally = Tally()
        self.answers: dict[int, list[Answer]] = defaultdict(list)
        self.matcher = Matcher()
        self.status_online: bool | None = None
        self.physics: list[str] = []
        self.physics_at: float | None = None  # when the first physics violation of a batch was seen
        self.sent_log: deque[tuple[float, Case]] = deque(maxlen=400)
        self.judged: dict[int, Case] = {}  # requests answered once when their batch was judged
        self.retained: set[str] = set()
        self.failures: dict[str, list[str]] = defaultdict(list)
        self.batches = 0
        self._counter = itertools.count(1)
        self.crash_base = 0

    def next_n(self) -> int:
        return next(self._counter)

    def json_correlated(self, case: Case) -> bool:
        """A 3.1.1 style request whose `correlation_id` the daemon can read (its body decodes)."""
        if case.json_reply is None:
            return False
        body = decode_json(case.payload, max_bytes=self.ctx.max_payload)
        return isinstance(body, dict) and isinstance(body.get("correlation_id"), str)

    # -- observing --------------------------------------------------------------------------------

    async def collect(self) -> None:
        """Sort every message the test client receives into answers per case."""
        base = self.ctx.base
        async for msg in self.client.messages:
            topic = msg.topic.value
            raw = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            try:
                data = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                data = None
            if topic == f"{base}/status" and isinstance(data, dict) and "online" in data:
                self.status_online = bool(data["online"])
                continue
            if not isinstance(data, dict) or "request_topic" not in data:
                continue  # not an answer (an alarm event, a device's own traffic)
            corr_b = msg.properties.CorrelationData if msg.properties is not None and hasattr(msg.properties, "CorrelationData") else None  # fmt: skip
            corr = (
                corr_b.decode("utf-8", "replace")
                if isinstance(corr_b, bytes)
                else str(data.get("correlation_id") or "")
            )
            ans = Answer(topic, data.get("ok"), str(data.get("reason", "")), str(data.get("status", "")))
            n = self.matcher.match(str(data["request_topic"]), corr)
            if n is None:
                self.tally.stray += 1
                if len(self.failures["stray (not judged)"]) < 8:
                    self.failures["stray (not judged)"].append(f"{topic[:80]}: {raw[:200]!r}")
                continue
            self.answers[n].append(ans)

    async def watch_physics(self) -> None:
        """Sample the simulators every 50 ms: out-of-range values, floors, feeder load."""
        while True:
            if self.site.daemon is not None:
                self.site.couple()
                for v in self.site.physics_violations():
                    if v not in self.physics:
                        self.physics.append(v)
                        if self.physics_at is None:
                            self.physics_at = time.monotonic()
            await asyncio.sleep(0.05)

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, case: Case) -> None:
        props = None
        if self.ctx.v5 and case.json_reply is None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = case.corr.encode()
            if case.response_topic is not None:
                props.ResponseTopic = case.response_topic
        if case.retain:
            self.retained.add(case.topic)
        if case.request:
            self.matcher.expect(case, correlated=props is not None or self.json_correlated(case))
        await self.client.publish(case.topic, case.payload, qos=1, retain=case.retain, properties=props)
        self.sent_log.append((time.monotonic(), case))

    async def run_batch(self, batch: list[Case]) -> dict[str, list[str]]:
        """Send a batch, wait for its answers, and return what went wrong (by category)."""
        t = self.tally
        for case in batch:
            await self.send(case)
            t.sent += 1
            t.by_filter[case.filter] += 1
            t.by_kind[case.kind] += 1
        due = [c for c in batch if c.request]
        deadline = time.monotonic() + ANSWER_WAIT_S
        while time.monotonic() < deadline and any(not self.answers.get(c.n) for c in due):
            if self.site.alive() is not None:
                break
            await asyncio.sleep(0.02)
        if self.site.alive() is not None and self.site.runner is not None:  # let a dying daemon say why
            await asyncio.wait([self.site.runner], timeout=2.0)
        bad = self.judge(batch)
        if self.site.daemon is not None and self.site.alive() is None:
            try:  # what the daemon audited of this batch must reach the database
                async with asyncio.timeout(WAIT_S):
                    await self.site.d.storage.flush()
            except Exception as exc:
                self.tally.storage_errors += 1
                bad["storage"].append(f"{type(exc).__name__}: {str(exc)[:300]}")
        return bad

    def late_duplicates(self) -> list[str]:
        """Requests answered again after their batch was judged: the rest of the run is the window
        for a duplicate to show up, not a sleep after each batch."""
        late = [(case, got) for n, case in self.judged.items() if len(got := self.answers.get(n, [])) > 1]
        self.tally.duplicated += len(late)
        return [f"{case!r} answered {len(got)} times: {[a.dest for a in got]}" for case, got in late]

    def judge(self, batch: list[Case]) -> dict[str, list[str]]:
        t = self.tally
        bad: dict[str, list[str]] = defaultdict(list)
        acks = f"{self.ctx.base}/acks"
        why = self.site.alive()
        if why is None and self.status_online is False:
            why = "status topic says offline"
        if why is not None:
            t.crashes += 1
            sent = [
                (c.topic[:60], c.kind, len(c.payload)) for c in batch if c.kind in {"deep", "tokens", "utf8"}
            ]
            bad["down"].append(f"{why}; suspects in the batch: {sent}")
        for case in batch:
            got = self.answers.get(case.n, [])
            if not case.request:
                t.input_only += 1
                continue
            t.requests += 1
            reply = case.response_topic or case.json_reply
            if not got and why is not None:
                t.lost_in_crash += 1
                continue
            if not got:
                t.unanswered += 1
                bad["unanswered"].append(repr(case))
                continue
            if len(got) > 1:
                t.duplicated += 1
                bad["duplicated"].append(f"{case!r} answered {len(got)} times: {[a.dest for a in got]}")
            a = got[0]
            if reply is not None and not allowed_reply(self.ctx, reply):
                # refused response topic: one nack on acks, nothing on the foreign topic
                if any(x.dest != acks or x.ok is not False for x in got):
                    t.misrouted += 1
                    bad["misrouted"].append(
                        f"{case!r} answered {[(x.dest[:80], x.ok, x.reason[:60]) for x in got]}"
                    )
                    continue
            elif any(x.dest not in {reply, acks} for x in got):
                t.misrouted += 1
                bad["misrouted"].append(f"{case!r} answered on {[x.dest[:80] for x in got]}")
                continue
            if len(got) == 1:
                self.judged[case.n] = case
                t.answered += 1
                if a.ok:
                    t.acked += 1
                else:
                    t.refused[reason_code(a.reason)] += 1
        d = self.site.d if self.site.daemon is not None else None
        crashes = 0
        if d is not None:  # the API's and every device driver's per-message boundary
            crashes = d.api.refused["internal_error"] + int(d.link.stats["handler_errors"])
            if d.fleet is not None:
                crashes += d.fleet.refused["internal_error"]
            if d.display_driver is not None:
                crashes += d.display_driver.refusals.by_reason["internal_error"]
        if crashes > self.crash_base:
            bad["crashed"].append(f"{crashes - self.crash_base} request handler crash(es) in this batch")
            t.crashes += crashes - self.crash_base
            self.crash_base = crashes
        if self.physics:
            t.physics += len(self.physics)
            # State carries over between messages, so a shrunk example may not show it again:
            # name the requests sent in the 5 s before it was first seen.
            at = self.physics_at or time.monotonic()
            recent = [
                c
                for ts, c in self.sent_log
                if at - 5.0 <= ts <= at and c.request and c.kind in {"model", "mutated"}
            ]
            bad["physics"].extend(self.physics)
            bad["physics"].append(
                f"requests in the 5 s before: {[(c.topic, c.payload[:200]) for c in recent]}"
            )
            self.physics = []
            self.physics_at = None
        return bad


# ----- the context: topics, ids and models from the running daemon --------------------------------


def request_channels(base: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """The API's request channels with their payload models (from the contract the docs are made of)."""
    out = []
    for address, keys, action, _ in CHANNELS:
        if action == "receive":
            models = tuple(PUBLISHED_MODELS[k] for k in keys.split("|") if k in PUBLISHED_MODELS)
            out.append((address.replace("dos/v1/{site}", base), models))
    return tuple(out)


def device_samples(s: District) -> list[tuple[str, Callable[[float], tuple[str, bytes]]]]:
    """Real messages for the device-side filters, as the devices' own encoders write them."""
    lp = default_profiles()
    bins = {b.dev_eui: b.id for b in site_bins(s.settings)}
    bays = {e: f"bay{i}" for cp in s.settings.displays.car_parks for i, e in enumerate(cp.sensors)}
    board_profile = default_led_board_profile()
    out: list[tuple[str, Callable[[float], tuple[str, bytes]]]] = []
    for flt in s.settings.displays.lorawan_topics + s.settings.waste.lorawan_topics:
        for eui, name in list(bins.items())[:2] + list(bays.items())[:2]:
            prof = lp["bin_ultrasonic"] if name in bins.values() else lp["parking_magnetic"]
            values: dict[str, Any] = (
                {"distance_mm": 600, "battery": 90, "lid_open": False, "tilt": False, "fire": False,
                 "temperature": 12.0, "battery_v": 3.6}
                if name in bins.values() else {"occupied": False}
            )  # fmt: skip
            make = chirpstack_event if flt.startswith("application/") else tts_uplink

            def sample(now: float, eui: str = eui, name: str = name, prof: Any = prof, values: Any = values,
                       make: Any = make) -> tuple[str, bytes]:  # fmt: skip
                msg: tuple[str, bytes] = make(
                    eui,
                    name,
                    f_cnt=int(now) % 60000,
                    f_port=prof.f_ports[0],
                    payload=prof.encode(values),
                    ts=now,
                    dedup_id=f"fz-{int(now * 1000)}",
                )
                return msg

            out.append((flt, sample))
    board = s.board

    def board_status(now: float) -> tuple[str, bytes]:
        st_ = BoardStatus(online=True, brightness=60, pixel_faults=0, message_id=1, text="x", ts=now)
        return board_profile.topic(board_profile.status_topic, board), status_payload(board_profile, st_)

    out.append((board_profile.topic(board_profile.status_topic, board), board_status))
    return out


def context(s: District, spy: SubscriptionSpy) -> FuzzContext:
    d = s.d
    base = d.api.base
    filters = tuple(sorted(spy.filters))
    assert set(d.api.subscriptions) <= set(filters), "the spy saw every API subscription"
    inv = s.inventory
    trucks = tuple(t.id for t in s.settings.waste.trucks)
    displays = tuple(x.id for x in s.settings.displays.displays)
    ids: dict[str, tuple[str, ...]] = {
        "lamp": tuple(inv.lamps), "group": tuple(inv.groups), "segment": tuple(inv.segments),
        "charger": tuple(inv.chargers), "feeder": ("lc",), "utility": ("dso", "tso"), "display": displays,
        "car_park": ("p1", "p2"), "bin": tuple(d.waste.bins) if d.waste is not None else (), "truck": trucks,
        "device": (*inv.lamps, *inv.chargers), "code": ("lamp_failure", "controller_offline"),
        "target": ("lc", "cab"), "id": ("w1",), "displays": displays,
    }  # fmt: skip
    t_gen = s.clock.now()
    device_models: list[tuple[str, tuple[Any, ...]]] = []
    for flt in filters:
        if topic_matches_sub(flt, "fleet/x/state"):
            device_models.append((flt, (TruckState,)))
        elif topic_matches_sub(flt, "fleet/x/event"):
            device_models.append((flt, (TruckEvent,)))
    return FuzzContext(
        base=base,
        filters=filters,
        channels=request_channels(base),
        device_models=tuple(device_models),
        device_samples=tuple(device_samples(s)),
        ids=ids,
        now=lambda: t_gen,  # fixed: generation must not depend on when it runs
        max_payload=s.settings.mqtt.max_payload_bytes,
        v5=d.link.protocol == "5",
    )


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1].rsplit("@", 1)[-1]
    host, _, port = hostport.partition(":")
    return host, int(port or 1883)


@contextlib.asynccontextmanager
async def fuzz_run(
    tmp_path: Path, mqtt_url: str, database_url: str, spy: SubscriptionSpy
) -> AsyncIterator[FuzzRun]:
    """A district with its daemon up, the test's client subscribed to answers, observers running."""
    async with district(tmp_path, mqtt_url, database_url, NIGHT) as s:
        d = await s.start()
        try:
            await wait_until(
                lambda: (
                    d.lighting.plan is not None
                    and all(
                        s.lights.lamp(x)["level_cmd"] == d.lighting.planned_level(x)
                        for x in s.inventory.lamps
                    )
                ),
                "the plan applied to every lamp",
            )
            now = s.clock.now()
            # A car draws after its handshake (PREPARING_S, 30 s in the simulator; 5 s here, so
            # the cars charge while the fuzzing runs). The daemon leaves a charger at its own
            # default (its maximum) until a car comes, and sets it within the handshake.
            await s.chargers.arrive("CP0", 20.0, now + 10 * 3600, phases=1, preparing_s=5.0)
            await s.chargers.arrive("CP1", 20.0, now + 10 * 3600, phases=1, preparing_s=5.0)
            await wait_until(lambda: settled(s), "both cars charging within the feeder limit")
            s.peak_over_a, s.over_since = 0.0, None
            ctx = context(s, spy)
            host, port = _host_port(mqtt_url)
            proto = aiomqtt.ProtocolVersion.V5 if ctx.v5 else aiomqtt.ProtocolVersion.V311
            async with aiomqtt.Client(
                host, port, identifier=f"fuzz-{s.settings.site.id}", protocol=proto, timeout=10,
                max_queued_outgoing_messages=10_000,
            ) as client:  # fmt: skip
                client.pending_calls_threshold = 10_000
                run = FuzzRun(s, client, ctx)
                subs = [f"{ctx.base}/replies/#", f"{ctx.base}/acks", f"{ctx.base}/status"]
                # foreign topics the main filters do not cover (overlaps would deliver twice)
                subs += [
                    t
                    for t in ctx.foreign_reply_topics()
                    if publishable(t) and not any(topic_matches_sub(f, t) for f in subs)
                ]
                await client.subscribe([(t, 1) for t in dict.fromkeys(subs)])
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        tg.create_task(run.collect(), name="fuzz.collect"),
                        tg.create_task(run.watch_physics(), name="fuzz.physics"),
                    ]
                    try:
                        yield run
                    finally:
                        for task in tasks:
                            task.cancel()
                        await s.stop()
                        for topic in run.retained:  # retained garbage must not outlive the test
                            await client.publish(topic, b"", qos=1, retain=True)
        finally:
            await s.stop()


def settled(s: District) -> bool:
    """The daemon has set the chargers the cars came to, and the circuit is within its limit."""
    s.couple()
    load = max(s.chargers.feeder(FEEDER)["load_a"])  # type: ignore[call-overload]
    setpoints = sum(float(s.chargers.cp(c)["current_limit_a"]) for c in ("CP0", "CP1"))
    return setpoints <= FEEDER_LIMIT_A and bool(load <= FEEDER_LIMIT_A)


async def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not cond():  # noqa: ASYNC110 - simulator registers have no event
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def report(run: FuzzRun, tmp_path: Path, record_property: Callable[[str, object], None], secs: float) -> None:
    """Print the figures, attach them to the junit report, and write them to fuzz_summary.json."""
    table = run.tally.table() | {
        "feeder_peak_over_limit_a": round(run.site.peak_over_a, 1),
        "seconds": round(secs, 1),
        "filters": list(run.ctx.filters),
    }
    table["examples"] = {k: v[:8] for k, v in run.failures.items()}
    (tmp_path / "fuzz_summary.json").write_text(json.dumps(table, indent=2))
    for key in ("sent", "requests", "answered_once", "refused", "unanswered", "misrouted", "crashes"):
        record_property(f"fuzz_{key}", table[key])
    record_property("fuzz_refused_by_reason", json.dumps(table["refused_by_reason"]))
    brief = {k: v for k, v in table.items() if k not in {"by_filter", "filters", "examples"}}
    print("\nfuzz summary:", json.dumps(brief))


@pytest.fixture
async def fuzz(
    tmp_path: Path,
    mqtt_url: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> AsyncIterator[FuzzRun]:
    """The running district for the whole hypothesis run (one task owns it, start to stop)."""
    spy = SubscriptionSpy()
    spy.install(monkeypatch.setattr)
    ready: asyncio.Future[FuzzRun] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def own() -> None:
        try:
            async with fuzz_run(tmp_path, mqtt_url, database_url, spy) as run:
                ready.set_result(run)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    t0 = time.monotonic()
    owner = asyncio.create_task(own(), name="fuzz.site")
    try:
        run = await ready
        yield run
        report(run, tmp_path, record_property, time.monotonic() - t0)
    finally:
        stop.set()
        await asyncio.gather(owner, return_exceptions=True)


BATCHES = max(1, EXAMPLES // BATCH)


@settings(
    max_examples=BATCHES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("EDGE_FUZZ_RANDOM") is None,
    # Every batch runs against the same daemon, so a batch's failure need not come back when it
    # is replayed alone: instead of shrinking, each failure names the single messages it was
    # about (each message stands alone: its own correlation id and expected answer).
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
async def test_fuzz_every_topic(fuzz: FuzzRun, data: st.DataObject) -> None:
    """Hypothesis messages on every subscribed topic: the daemon stays up, answers every request
    once where it may, and no device leaves its range, no floor breaks, no feeder overloads."""
    run = fuzz
    batch = data.draw(st.lists(cases(run.ctx, run.next_n), min_size=BATCH, max_size=BATCH), label="batch")
    bad = await run.run_batch(batch)
    for category, items in bad.items():
        run.failures[category].extend(items)
    run.batches += 1
    if bad.get("down"):
        # Start it again (the simulators keep running) to learn what else fails; the run fails anyway.
        run.tally.restarts += 1
        assert run.tally.restarts <= MAX_RESTARTS, (
            f"the daemon went down: {run.failures['down'][-MAX_RESTARTS:]}"
        )
        await run.site.stop()
        await run.site.start()
        run.status_online = None
        run.crash_base = 0  # the new daemon counts from zero
    if run.batches < BATCHES:
        return  # fuzz on: the figures of the whole run are worth more than the first failure
    f = run.failures
    f["duplicated"].extend(run.late_duplicates())
    assert not f.get("down"), f"the daemon went down {len(f['down'])} time(s): {f['down'][:3]}"
    assert not f.get("physics"), f"a device left its safe range: {f['physics'][:4]}"
    assert not f.get("crashed"), f"a handler crashed: {f['crashed'][:4]}"
    assert not f.get("storage"), f"storage refused what the daemon wrote: {f['storage'][:4]}"
    assert not f.get("misrouted"), (
        f"{len(f['misrouted'])} answered where they must not, e.g. {f['misrouted'][:4]}"
    )
    assert not f.get("duplicated"), (
        f"{len(f['duplicated'])} answered more than once, e.g. {f['duplicated'][:4]}"
    )
    assert not f.get("unanswered"), (
        f"{len(f['unanswered'])} requests without an answer, e.g. {f['unanswered'][:4]}"
    )


def test_matcher_pairs_answers_with_requests() -> None:
    """The harness's own matching: an oversize 3.1.1 request on a 3 kB topic is answered on acks
    naming the first 300 characters of its topic and no correlation (the daemon cannot read the
    body); that answer is its own, and an uncorrelated answer never takes a correlated request."""

    def case(n: int, topic: str) -> Case:
        return Case(n, topic, "#", b"{}", False, True, None, None, "json")

    long_topic = "dos/v1/s/utility/" + "x" * 3000 + "/limits"
    m = Matcher()
    m.expect(case(1, long_topic), correlated=False)
    assert m.match(long_topic[:ACK_TOPIC_CHARS], "") == 1, "a cut topic names its request"
    assert m.match(long_topic[:ACK_TOPIC_CHARS], "") is None, "one answer per request"
    short = "dos/v1/s/cmd/waste/replan"
    m.expect(case(2, short), correlated=True)  # readable body, or MQTT 5 correlation data
    m.expect(case(3, short), correlated=False)
    assert m.match(short, "") == 3, "the uncorrelated answer is the uncorrelated request's"
    assert m.match(short, "fz-2") == 2
    assert m.match(short, "") is None, "a second uncorrelated answer is a stray, not a match"


async def test_retained_garbage_and_commands_at_start(
    tmp_path: Path, mqtt_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage retained on every topic the daemon subscribes to (a 2,000-level array on the board's
    status among it) and retained commands: the daemon starts and stays up, refuses each retained
    command once with `retained_request`, and never acts on one."""
    spy = SubscriptionSpy()
    spy.install(monkeypatch.setattr)
    async with district(tmp_path, mqtt_url, database_url, NIGHT) as s:
        d = await s.start()
        try:
            await wait_until(
                lambda: (
                    d.lighting.plan is not None
                    and all(
                        s.lights.lamp(x)["level_cmd"] == d.lighting.planned_level(x)
                        for x in s.inventory.lamps
                    )
                ),
                "the plan applied to every lamp",
            )
            planned = d.lighting.planned_level("B1")
            assert planned is not None
            assert planned < 100, "B1 is dimmed at night, so a retained set_level 100 would show"
            ctx = context(s, spy)
        finally:
            await s.stop()
        base = ctx.base
        cp2 = float(s.chargers.cp("CP2")["current_limit_a"])
        assert cp2 != RETAINED_CP2_A, f"CP2 is at {cp2} A already: a retained limit would not show"
        garbage = [b"[" * 2000 + b"]" * 2000, b"\xff\xfe{", b'{"level": NaN, "ts": 1e999}', b"{" * 2000]
        retained: dict[str, bytes] = {}
        for i, flt in enumerate(ctx.filters):
            if flt.endswith("#"):
                topic = flt[:-1] + "junk/" + "x" * 80
            else:
                topic = "/".join("ret" if lvl == "+" else lvl for lvl in flt.split("/"))
            retained[topic] = garbage[i % len(garbage)]
        for sample_filter, sample in ctx.device_samples:
            topic, _ = sample(0.0)
            if topic_matches_sub(sample_filter, topic) and "status" in topic:
                retained[topic] = garbage[0]  # issue 10 #1: a 2,000-level array on a board's status
        commands: dict[str, dict[str, Any]] = {
            f"{base}/cmd/lights/B1": {"action": "set_level", "level": 100},
            # 11 A: neither the simulator's start value (the charger's 16 A maximum), nor its 6 A
            # fail-safe, nor the 0 A the daemon may write to a charger without a car.
            f"{base}/cmd/chargers/CP2": {"action": "limit", "current_a": RETAINED_CP2_A},
            f"{base}/cmd/displays/{s.board}": {"action": "message", "lines": ["RETAINED"]},
        }
        host, port = _host_port(mqtt_url)
        proto = aiomqtt.ProtocolVersion.V5 if ctx.v5 else aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client(
            host, port, identifier=f"ret-{s.settings.site.id}", protocol=proto
        ) as client:
            answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
            await client.subscribe([(f"{base}/replies/#", 1), (f"{base}/acks", 1)])

            async def collect() -> None:
                async for msg in client.messages:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        data = orjson.loads(msg.payload) if isinstance(msg.payload, bytes) else None
                        if isinstance(data, dict) and "request_topic" in data:
                            answers[str(data["request_topic"])].append(data)

            try:
                for topic, body in retained.items():
                    await client.publish(topic, body, qos=1, retain=True)
                for n, (topic, cmd) in enumerate(commands.items()):
                    props = None
                    payload = dict(cmd)
                    if ctx.v5:
                        props = Properties(PacketTypes.PUBLISH)
                        props.ResponseTopic = f"{base}/replies/ret{n}"
                        props.CorrelationData = f"ret-{n}".encode()
                    else:
                        payload |= {"response_topic": f"{base}/replies/ret{n}", "correlation_id": f"ret-{n}"}
                    await client.publish(topic, orjson.dumps(payload), qos=1, retain=True, properties=props)
                async with asyncio.TaskGroup() as tg:
                    collector = tg.create_task(collect(), name="retained.collect")
                    d = await s.start()
                    # Not a watch window: every retained command is answered (its nack is the
                    # daemon's decision), so once all answers are in, nothing may have been acted on.
                    await wait_until(
                        lambda: s.alive() is not None or all(answers.get(t) for t in commands),
                        "an answer to every retained command",
                    )
                    acted: list[str] = []
                    if s.lights.lamp("B1")["level_cmd"] == 100:
                        acted.append("B1 set to 100 %")
                    if float(s.chargers.cp("CP2")["current_limit_a"]) == RETAINED_CP2_A:
                        acted.append(f"CP2 limited to {RETAINED_CP2_A} A")
                    if "RETAINED" in s.displays.shown(s.board):
                        acted.append("the board shows RETAINED")
                    down = s.alive()
                    if down is not None and s.runner is not None:  # let a dying daemon say why
                        await asyncio.wait([s.runner], timeout=2.0)
                        down = s.alive() or down
                    collector.cancel()
            finally:
                await s.stop()
                for topic in [*retained, *commands]:
                    await client.publish(topic, b"", qos=1, retain=True)
        assert down is None, f"the daemon went down on retained garbage: {down}"
        assert not acted, f"retained commands were acted on: {sorted(set(acted))}"
        for topic in commands:
            got = answers.get(topic, [])
            assert len(got) == 1, f"{topic}: {len(got)} answers to a retained command (want one nack): {got}"
            assert got[0]["ok"] is False
            assert "retained_request" in got[0]["reason"], got[0]
