"""Who holds a lamp at 100 % at safety priority, and until when.

The dispatcher keeps one command per priority and point. Three things raise lamps to full at
safety priority: a cyclist on a bike path (a short hold), a public warning (until its end) and
an emergency call (until it is closed). With one command per lamp, the last raise replaced the
others, and its release or the end of its hold let the lamp fall to its plan while another
still needed it: a cyclist passing an open call, a flood warning withdrawn over a call's lamps,
a call closed under a warning. Here every holder is kept; the lamp's command is always the
holder that lasts longest (it covers every other's window), sent again when that one lets go.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.clock import Clock

Submit = Callable[[str, str, float, str], object]  # (lamp, source, hold_s, reason): a safety raise to 100 %
Release = Callable[[str, str], bool]  # (lamp, source): drop the safety layer if that source holds it


class FullHolds:
    """The holders of every lamp held at full; see the module docstring."""

    def __init__(self, submit: Submit, release: Release, clock: Clock) -> None:
        self._submit = submit
        self._release = release
        self._clock = clock
        self._holders: dict[str, dict[str, tuple[float, str]]] = {}  # lamp -> source -> (until, reason)
        self._current: dict[str, tuple[str, float]] = {}  # lamp -> (source, until) of its command

    def hold(self, lamp: str, source: str, hold_s: float, reason: str) -> None:
        """`source` holds `lamp` at full for `hold_s` clock seconds from now (again: a new end)."""
        now = self._clock.now()
        holders = self._holders.setdefault(lamp, {})
        holders[source] = (now + max(1.0, hold_s), reason)
        self._apply(lamp, now)

    def let_go(self, lamp: str, source: str) -> bool:
        """`source` no longer needs `lamp`: the next holder's command, or the plan if none is left."""
        holders = self._holders.get(lamp)
        if holders is None or holders.pop(source, None) is None:
            return False
        self._apply(lamp, self._clock.now())
        return True

    def holders(self, lamp: str) -> dict[str, float]:
        """Who holds the lamp now, and until when."""
        now = self._clock.now()
        return {src: until for src, (until, _) in self._holders.get(lamp, {}).items() if until > now}

    def _apply(self, lamp: str, now: float) -> None:
        holders = self._holders.get(lamp, {})
        for src in [s for s, (until, _) in holders.items() if until <= now]:
            del holders[src]  # its hold ended: the dispatcher dropped (or drops) that command itself
        current = self._current.get(lamp)
        if not holders:
            self._holders.pop(lamp, None)
            self._current.pop(lamp, None)
            if current is not None and current[1] > now:
                self._release(lamp, current[0])
            return
        src, (until, reason) = max(holders.items(), key=lambda kv: kv[1][0])
        if current != (src, until):
            self._submit(lamp, src, until - now, reason)
            self._current[lamp] = (src, until)
