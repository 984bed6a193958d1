"""The command dispatcher: the only code that writes to devices.

Every command passes a safety policy (refuse or clamp, with a reason), lands in a
per-point priority array (operator override > safety > plan, each with an optional
hold time), and the winning value is written by a worker with a timeout and confirmed
by read-back. Every verdict, final result and distinct failed attempt is audited and published.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from edge.bus import EventBus
from edge.clock import Clock
from edge.device_truth import IN_FORCE, READBACK_TOLERANCE, drifted, in_force, reconcile_copy
from edge.driver import Driver, PayloadDriver
from edge.errors import DeviceError, DeviceReplyError, DeviceTimeout
from edge.events import Command, CommandResult, Outcome, Priority, Value
from edge.layers import Point
from edge.lifecycle import Service, ServiceState
from edge.policy import DispatcherView, SafetyPolicy, Verdict
from edge.state import StateStore
from edge.tasks import TimeSlice, paced
from edge.write_queue import URGENT, WriteQueue

log = structlog.get_logger(__name__)

Key = tuple[str, str]


class _View:
    """The dispatcher's read-only view (see `DispatcherView`)."""

    __slots__ = ("_dispatcher", "_store")

    def __init__(self, dispatcher: Dispatcher, state: StateStore) -> None:
        self._dispatcher = dispatcher
        self._store = state

    def effective_value(self, device_id: str, point: str) -> float | None:
        eff = self._dispatcher.effective(device_id, point)
        return None if eff is None else eff.value

    def in_flight_value(self, device_id: str, point: str) -> float | None:
        return self._dispatcher.in_flight_value(device_id, point)

    def value(self, device_id: str, point: str) -> Value | None:
        return self._store.value(device_id, point)

    def online(self, device_id: str) -> bool | None:
        dev = self._store.get(device_id)
        return None if dev is None else dev.online

    def updated_at(self, device_id: str) -> float | None:
        dev = self._store.get(device_id)
        return None if dev is None else dev.updated_at


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the audit trail: a verdict on submit, or a command's final result."""

    command: Command
    outcome: Outcome
    value: float | None
    reason: str
    ts: float


AuditSink = Callable[[AuditRecord], None]


@dataclass(slots=True)
class DispatcherStats:
    submitted: int = 0
    accepted: int = 0
    clamped: int = 0
    refused: int = 0
    sent: int = 0
    confirmed: int = 0
    failed: int = 0
    expired: int = 0
    superseded: int = 0
    repeated_failures: int = 0  # retries that failed as the attempt before (not audited again)
    unchanged: int = 0  # confirmed without a write: the device reports the value already (IN_FORCE)

    def count(self, outcome: Outcome) -> None:
        """Count a final result (refusals are counted where they are decided)."""
        name = {Outcome.CONFIRMED: "confirmed", Outcome.FAILED: "failed",
                Outcome.EXPIRED: "expired", Outcome.SUPERSEDED: "superseded"}.get(outcome)  # fmt: skip
        if name is not None:
            setattr(self, name, getattr(self, name) + 1)


_ID_PREFIX = secrets.token_hex(4)  # this process's: ids stay unique across restarts
_ID_COUNTER = itertools.count()
SWEEP_SHARE = 0.8  # the reconcile sweep is paced over this share of its interval (`edge.tasks.paced`)


def new_command_id() -> str:
    """16 hex digits: a random prefix per process and a counter. A city's plan step makes
    54,000 commands: a uuid4 each (a system call for 16 random bytes) showed in the profiles."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


def make_command(
    device_id: str,
    point: str,
    value: float,
    priority: Priority,
    source: str,
    *,
    now: float,
    ttl_s: float,
    hold_s: float | None = None,
    reason: str = "",
    payload: str = "",
) -> Command:
    """A new command issued `now`: it must be applied within `ttl_s` and holds for `hold_s` (clock s)."""
    return Command(
        id=new_command_id(),
        device_id=device_id,
        point=point,
        value=value,
        priority=priority,
        source=source,
        issued_at=now,
        expires_at=now + ttl_s,
        hold_until=None if hold_s is None else now + hold_s,
        reason=reason,
        payload=payload,
    )


def _reissued(cmd: Command, verdict: Verdict, now: float) -> Command:
    """`cmd` at the value a re-check allows, issued `now` with its time to live again."""
    ttl = max(1.0, cmd.expires_at - cmd.issued_at)
    asked = cmd.requested if cmd.requested is not None else cmd.value
    return replace(
        cmd, value=verdict.value, reason=verdict.reason, issued_at=now, expires_at=now + ttl,
        requested=asked, limit=verdict.limit,
    )  # fmt: skip


class Dispatcher(Service):
    """Arbitrates, validates, writes and confirms commands; async context manager."""

    service_name = "dispatcher"

    def __init__(
        self,
        *,
        bus: EventBus,
        clock: Clock,
        state: StateStore,
        drivers: Sequence[Driver],
        policies: Mapping[str, SafetyPolicy],
        audit: AuditSink,
        write_timeout_s: float = 2.0,
        workers: int = 32,
        reserved_workers: int | None = None,
        reconcile_interval_s: float = 30.0,
    ) -> None:
        """`reserved_workers` (default an eighth, from one to 16) never take a plan's own write,
        so an operator's or a safety command finds a worker while a plan step fills the rest."""
        super().__init__()
        self._bus = bus
        self._clock = clock
        self._store = state
        self._drivers = list(drivers)
        self._policies = dict(policies)
        self._audit = audit
        self._write_timeout = write_timeout_s
        self._n_workers = workers
        self._reconcile_interval = reconcile_interval_s
        self._points: dict[Key, Point] = {}
        reserved = min(16, max(1, workers // 8)) if reserved_workers is None else reserved_workers
        self._writes: WriteQueue[Key] = WriteQueue(self._rank, max(1, workers - reserved))
        self._held: set[Key] = set()  # points with a layer that holds until a time (the hold loop's)
        self._waiters: dict[str, asyncio.Future[CommandResult]] = {}
        self._driver_of: dict[str, Driver | None] = {}
        self._last_error: dict[str, str] = {}
        self._watchers: list[Callable[[str, str], None]] = []
        self.stats = DispatcherStats()
        self.view: DispatcherView = _View(self, state)

    def register_policy(self, kind: str, policy: SafetyPolicy) -> None:
        """Add the safety policy for a device kind before the dispatcher starts.
        A domain builds its policy after the kernel (and so this dispatcher) exists, from parts
        that need the kernel; the policy is complete when registered, never bound later."""
        if self.state is not ServiceState.UNOPENED:
            raise RuntimeError(f"policy for {kind!r} registered after the dispatcher started")
        if kind in self._policies:
            raise ValueError(f"a safety policy for {kind!r} is registered already")
        self._policies[kind] = policy

    def add_driver(self, driver: Driver) -> None:
        """Add a domain's driver before the dispatcher starts (its `build` makes it)."""
        if self.state is not ServiceState.UNOPENED:
            raise RuntimeError("driver added after the dispatcher started")
        self._drivers.append(driver)

    async def _start(self) -> None:
        for i in range(self._n_workers):
            self.spawn(self._worker(), f"worker[{i}]")
        self.spawn(self._hold_loop(), "holds")
        self.spawn(self._reconcile_loop(), "reconcile")

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until no write is queued or in flight (graceful shutdown)."""
        async with asyncio.timeout(timeout):
            while len(self._writes) or any(p.in_flight for p in self._points.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    def submit(self, cmd: Command) -> Verdict:
        """Validate and record a command; the write happens in the background."""
        now = self._clock.now()
        self.stats.submitted += 1
        verdict = self._validate(cmd, now)
        if verdict.outcome is not Outcome.REFUSED and cmd.expires_at <= now:
            verdict = Verdict(Outcome.REFUSED, cmd.value, "expired_on_arrival")
        if verdict.limit:
            cmd = replace(cmd, limit=verdict.limit)
        if verdict.outcome is Outcome.REFUSED:
            self.stats.refused += 1
            self._audit(AuditRecord(cmd, Outcome.REFUSED, None, verdict.reason, now))
            self._finish(CommandResult(cmd, Outcome.REFUSED, None, verdict.reason, now), count=False)
            return verdict
        # The audit keeps what was asked (value and reason) beside what the policy allows.
        self._audit(AuditRecord(cmd, verdict.outcome, verdict.value, verdict.reason, now))
        if verdict.outcome is Outcome.CLAMPED:
            self.stats.clamped += 1
            cmd = replace(
                cmd, value=verdict.value, reason=verdict.reason, requested=cmd.value
            )  # limit: above
        else:
            self.stats.accepted += 1
        key = (cmd.device_id, cmd.point)
        point = self._points.setdefault(key, Point())  # a Point of no layers is cheap
        if cmd.hold_until is not None:
            self._held.add(key)
        old = point.layer(cmd.priority)
        point.put(cmd)
        if old is not None and old is not point.in_flight and old.id in self._waiters:
            self._finish(CommandResult(old, Outcome.SUPERSEDED, None, f"replaced by {cmd.id}", now))
        top = point.effective(now)
        if top is not None and top.id != cmd.id:
            held = f"held by {top.source} ({top.priority.name.lower()})"
            self._finish(CommandResult(cmd, Outcome.SUPERSEDED, None, held, now))
            reason = ", ".join(filter(None, [verdict.reason, held]))
            return Verdict(verdict.outcome, verdict.value, reason, verdict.limit)
        self._enqueue(key)
        return verdict

    async def submit_and_wait(self, cmd: Command, timeout: float) -> CommandResult:  # noqa: ASYNC109
        """Submit and wait for the final result (confirmed, refused, failed, expired ...)."""
        fut: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiters[cmd.id] = fut
        self.submit(cmd)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return CommandResult(cmd, Outcome.FAILED, None, "no result within timeout", self._clock.now())
        finally:
            self._waiters.pop(cmd.id, None)

    def release(self, device_id: str, point: str, priority: Priority, source: str, only: str = "") -> bool:
        """Drop a priority layer (with `only`: if that source's command holds it); the next takes over."""
        p = self._points.get((device_id, point))
        held = None if p is None else p.layer(priority)
        if p is None or held is None or (only and held.source != only):
            return False
        cmd, _ = held, p.pop_layer(priority)
        now = self._clock.now()
        self._audit(AuditRecord(cmd, Outcome.EXPIRED, None, f"released by {source}", now))
        p.rearm(now)
        self._enqueue((device_id, point))
        return True

    def effective(self, device_id: str, point: str) -> Command | None:
        """The command that currently wins on a point, if any."""
        p = self._points.get((device_id, point))
        return None if p is None else p.effective(self._clock.now())

    def pending(self) -> int:
        return len(self._writes)

    def _validate(self, cmd: Command, now: float) -> Verdict:
        """The policy's verdict on a command (the TTL is checked by whoever delivers it)."""
        if not math.isfinite(cmd.value):
            return Verdict(Outcome.REFUSED, cmd.value, "value_not_finite")
        dev = self._store.get(cmd.device_id)
        if dev is None or self._driver(cmd.device_id) is None:
            return Verdict(Outcome.REFUSED, cmd.value, "unknown_device" if dev is None else "no_driver")
        policy = self._policies.get(dev.kind)
        if policy is None:
            return Verdict(Outcome.REFUSED, cmd.value, f"no_safety_policy_for_{dev.kind}")
        return policy.check(cmd, now, self.view)

    def _driver(self, device_id: str) -> Driver | None:
        if device_id not in self._driver_of:
            self._driver_of[device_id] = next((d for d in self._drivers if d.handles(device_id)), None)
        return self._driver_of[device_id]

    def watch(self, fn: Callable[[str, str], None]) -> None:
        """Call `fn(device_id, point)` whenever a point's winning command may have changed, so an
        index of the commands in force (the lamps' load on a feeder) stays exact without a scan."""
        self._watchers.append(fn)

    def _enqueue(self, key: Key) -> None:
        """The point's winning command may have changed: tell the watchers, queue a write."""
        for fn in self._watchers:
            fn(*key)
        self._writes.put(key)

    def _rank(self, key: Key) -> int:
        point = self._points.get(key)
        return URGENT if point is None else point.rank(self._clock.now())

    def _finish(self, result: CommandResult, *, count: bool = True) -> None:
        retrying = result.outcome is Outcome.FAILED and result.command.expires_at > result.ts
        if retrying and self._last_error.get(result.command.id) == result.reason:
            self.stats.repeated_failures += 1  # a device down, retried to the TTL: recorded once
            return
        if count:
            self.stats.count(result.outcome)
        if result.outcome is not Outcome.REFUSED:
            self._audit(
                AuditRecord(result.command, result.outcome, result.applied_value, result.reason, result.ts)
            )
        self._bus.publish(result)
        if result.outcome is Outcome.FAILED and result.command.expires_at > result.ts:
            # Not final: the write is retried until the TTL; remember why it failed.
            self._last_error[result.command.id] = result.reason
            return
        fut = self._waiters.get(result.command.id)
        if fut is not None and not fut.done():
            last = self._last_error.pop(result.command.id, "")
            if last and result.outcome is Outcome.EXPIRED:
                result = replace(result, reason=f"{result.reason} (last error: {last})")
            fut.set_result(result)
        else:
            self._last_error.pop(result.command.id, None)

    # ----- writing ----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            key, plan = await self._writes.get()
            try:
                await self._take(key)
            finally:
                if plan:
                    self._writes.plan_done()

    async def _take(self, key: Key) -> None:
        """Bring one point to its winning command: expire, re-check, confirm or write it."""
        point = self._points.get(key)
        if point is None:
            return
        if point.in_flight is not None:
            point.again = True  # the writer re-queues the point when it is done
            return
        now = self._clock.now()
        self._drop_expired_holds(point, now)
        cmd = point.effective(now)
        if cmd is None or point.confirmed_id == cmd.id:
            return  # nothing to do, or already in force
        if cmd.expires_at <= now:
            point.pop_layer(cmd.priority)
            self._finish(CommandResult(cmd, Outcome.EXPIRED, None, "time to live passed", now))
            self._enqueue(key)  # a lower layer may take over
            return
        checked = self._recheck(point, cmd, now)
        if checked is None:
            point.rearm(now)
            self._enqueue(key)  # refused now: the next layer down takes over
            return
        if in_force(point.written, checked, self._store.get(checked.device_id)):
            point.confirmed_id = checked.id
            self.stats.unchanged += 1
            self._finish(CommandResult(checked, Outcome.CONFIRMED, point.written, IN_FORCE, now))
            return
        await self._write(key, point, checked)

    async def _write(self, key: Key, point: Point, cmd: Command) -> None:
        driver = self._driver(cmd.device_id)
        assert driver is not None  # checked on submit
        point.in_flight = cmd
        self.stats.sent += 1
        try:
            if cmd.payload:
                if not isinstance(driver, PayloadDriver):
                    raise DeviceReplyError(f"{cmd.point} takes no structured value", endpoint=cmd.device_id)
                readback = await driver.write_payload(
                    cmd.device_id, cmd.point, cmd.payload, self._write_timeout
                )
            else:
                readback = await driver.write(cmd.device_id, cmd.point, cmd.value, self._write_timeout)
        except DeviceTimeout as exc:
            result = CommandResult(cmd, Outcome.FAILED, None, f"timeout: {exc}", self._clock.now())
        except DeviceError as exc:
            result = CommandResult(
                cmd, Outcome.FAILED, None, f"{type(exc).__name__}: {exc}", self._clock.now()
            )
        else:
            ok = math.isclose(readback, cmd.value, abs_tol=READBACK_TOLERANCE)
            if ok:
                point.written = readback
                point.confirmed_id = cmd.id
            reason = "" if ok else f"read back {readback:g}, expected {cmd.value:g}"
            outcome = Outcome.CONFIRMED if ok else Outcome.FAILED
            result = CommandResult(cmd, outcome, readback, reason, self._clock.now())
        finally:
            point.in_flight = None
        if result.outcome is Outcome.FAILED and point.layer(cmd.priority) is not cmd:
            # Replaced while it was being written: it will not be retried, so it ends here.
            result = CommandResult(
                cmd, Outcome.SUPERSEDED, None, f"replaced while writing ({result.reason})", result.ts
            )
        self._finish(result)
        if point.again or point.effective(self._clock.now()) is not cmd:
            point.again = False
            self._enqueue(key)  # a newer command arrived while this one was written
        if result.outcome is Outcome.FAILED:
            # Try again after a pause (the worker is free meanwhile: a device that is down must not
            # hold a share of the pool); the worker expires the command once its TTL has passed.
            asyncio.get_running_loop().call_later(min(1.0, self._write_timeout), self._enqueue, key)

    def _recheck(self, point: Point, cmd: Command, now: float) -> Command | None:
        """Run the safety policy again right before a write: limits move (dusk, curtailment,
        other devices' setpoints), and a layer that surfaces after a hold was checked long ago.
        Returns the command to write (clamped if need be), or None if it is refused now."""
        verdict = self._validate(cmd, now)
        if verdict.outcome is Outcome.REFUSED:
            cmd = replace(cmd, limit=verdict.limit)
            point.pop_layer(cmd.priority)
            self.stats.refused += 1
            self._audit(AuditRecord(cmd, Outcome.REFUSED, None, f"re-checked: {verdict.reason}", now))
            self._finish(
                CommandResult(cmd, Outcome.REFUSED, None, f"re-checked: {verdict.reason}", now), count=False
            )
            return None
        if verdict.outcome is Outcome.CLAMPED and not math.isclose(verdict.value, cmd.value, abs_tol=1e-9):
            self.stats.clamped += 1
            self._audit(
                AuditRecord(cmd, Outcome.CLAMPED, verdict.value, f"re-checked: {verdict.reason}", now)
            )
            asked = cmd.requested if cmd.requested is not None else cmd.value
            cmd = replace(
                cmd, value=verdict.value, reason=verdict.reason, requested=asked, limit=verdict.limit
            )
            point.put(cmd)
            for fn in self._watchers:
                fn(cmd.device_id, cmd.point)
        return cmd

    async def recheck_all(self) -> int:
        """Re-run the policies on every point's winning command; apply what changes at once.

        A command accepted by day may break a floor at night, a setpoint may no longer fit a
        lowered limit: a refused one is dropped (the next layer takes over with a fresh TTL),
        a clamped one is re-issued at the allowed value. Returns how many points changed.
        """
        now = self._clock.now()
        n = 0
        slice_ = TimeSlice()  # thousands of points: keep command latency low
        for key, point in list(self._points.items()):
            await slice_.tick()
            n += self._recheck_held(key, point, now)
        return n

    def _recheck_held(self, key: Key, point: Point, now: float) -> bool:
        """One point of `recheck_all`: True if its winning command was refused or clamped."""
        if point.in_flight is not None:
            return False
        if self._drop_expired_holds(point, now):
            self._enqueue(key)
        cmd = point.effective(now)
        if cmd is None:
            return False
        verdict = self._validate(cmd, now)
        if verdict.outcome is Outcome.REFUSED:
            point.pop_layer(cmd.priority)
            self._audit(AuditRecord(cmd, Outcome.REFUSED, None, f"re-checked: {verdict.reason}", now))
            point.rearm(now)
        elif not math.isclose(verdict.value, cmd.value, abs_tol=1e-9):
            self._audit(
                AuditRecord(cmd, Outcome.CLAMPED, verdict.value, f"re-checked: {verdict.reason}", now)
            )
            point.put(_reissued(cmd, verdict, now))
            point.confirmed_id = ""
        else:
            return False
        self._enqueue(key)
        return True

    def in_flight_value(self, device_id: str, point: str) -> float | None:
        """The value being written right now, if any (the interlock counts it as load)."""
        p = self._points.get((device_id, point))
        return None if p is None or p.in_flight is None else p.in_flight.value

    def _drop_expired_holds(self, point: Point, now: float) -> bool:
        """Drop layers whose hold has ended; True if any was dropped (the point needs a write)."""
        ended = point.drop_ended_holds(now)
        for cmd in ended:
            self._audit(AuditRecord(cmd, Outcome.EXPIRED, None, "hold ended", now))
        return bool(ended)

    async def _hold_loop(self) -> None:
        """Hand a point back to the next layer when a hold (override, motion) ends."""
        while True:
            await asyncio.sleep(0.2)
            now = self._clock.now()
            for key in list(self._held):  # only points with a hold: not every lamp of a city
                point = self._points.get(key)
                holds = [] if point is None else [c.hold_until for c in point.layers]
                if not any(h is not None for h in holds):
                    self._held.discard(key)
                elif point is not None and any(h is not None and h <= now for h in holds):
                    self._drop_expired_holds(point, now)
                    self._enqueue(key)

    async def _reconcile_loop(self) -> None:
        """Every point once per reconcile interval: its winning command re-checked against the
        policies (as by `recheck_all`), and, once confirmed (the write path owns it before),
        re-written if its device reports another value (a rebooted controller, a fail-safe
        level). Paced over SWEEP_SHARE of the interval (`edge.tasks.paced`)."""
        counter, span = itertools.count(), self._reconcile_interval * SWEEP_SHARE
        while True:
            await asyncio.sleep(self._reconcile_interval)
            async for key in paced(list(self._points), span):
                if (point := self._points.get(key)) is None:
                    continue
                now = self._clock.now()
                self._recheck_held(key, point, now)
                cmd = point.effective(now)
                if cmd is None or point.in_flight is not None or key in self._writes:
                    continue
                if point.confirmed_id == cmd.id and drifted(cmd, self._store.get(cmd.device_id)):
                    point.put(reconcile_copy(cmd, now, counter))
                    self._enqueue(key)
