"""A dispatcher point's priority layers: what each priority asks of one device point.

Kept apart from the dispatcher (which owns every `Point`) for size. A city has a point per lamp,
54,000 of them, mostly holding one layer (the plan's): the layers are a tuple, highest priority
first, 48 bytes against a dict's 230, and the winning layer is the first whose hold has not ended.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edge.events import Command, Priority


@dataclass(slots=True)
class Point:
    # One command per priority, highest first. A tuple, not a dict: a city's 54,000 points
    # mostly hold one layer (the plan's), 48 bytes against a dict's 230.
    layers: tuple[Command, ...] = ()
    written: float | None = None  # last value confirmed by read-back
    confirmed_id: str = ""  # the command that value came from
    in_flight: Command | None = None  # one writer per point: others wait for it
    again: bool = False  # something changed while a write was in flight

    def layer(self, priority: Priority) -> Command | None:
        """The command of a priority layer, if it has one."""
        for cmd in self.layers:
            if cmd.priority == priority:
                return cmd
        return None

    def put(self, cmd: Command) -> None:
        """Set its priority's layer to `cmd` (replacing what was there)."""
        layers = self.layers
        if not layers or (len(layers) == 1 and layers[0].priority == cmd.priority):
            self.layers = (cmd,)  # the plan's point: one layer
            return
        rest = [c for c in layers if c.priority != cmd.priority]
        rest.append(cmd)
        rest.sort(key=_by_priority, reverse=True)
        self.layers = tuple(rest)

    def pop_layer(self, priority: Priority) -> Command | None:
        """Remove a priority layer; its command, or None if it had none."""
        got = self.layer(priority)
        if got is not None:
            self.layers = tuple(c for c in self.layers if c is not got)
        return got

    def effective(self, now: float) -> Command | None:
        """The winning layer: the highest priority whose hold has not ended."""
        for cmd in self.layers:
            if cmd.hold_until is None or cmd.hold_until > now:
                return cmd
        return None

    def drop_ended_holds(self, now: float) -> list[Command]:
        """Remove the layers whose hold has ended (re-arming what surfaces); returns them."""
        ended = [c for c in self.layers if c.hold_until is not None and c.hold_until <= now]
        if ended:
            self.layers = tuple(c for c in self.layers if all(c is not e for e in ended))
            self.rearm(now)
        return ended

    def rank(self, now: float) -> int:
        """Write order: a plan's own write (1) after everything else (0), so an operator's command
        or a safety shed never waits behind thousands of plan writes."""
        top = self.effective(now)
        return int(top is not None and top.priority is Priority.PLAN and not top.source.startswith("safety"))

    def rearm(self, now: float) -> None:
        """A layer that surfaces again after a hold is a standing intent: give it a fresh TTL."""
        top = self.effective(now)
        if top is not None and top.expires_at <= now:
            ttl = max(1.0, top.expires_at - top.issued_at)
            self.put(replace(top, issued_at=now, expires_at=now + ttl))


def _by_priority(cmd: Command) -> int:
    return int(cmd.priority)
