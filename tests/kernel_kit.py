"""A `Kernel` for tests that build a controller on a few real parts (bus, state, dispatcher).

Storage is constructed but never opened (nothing in these tests writes rows); the lag monitor
is never entered, so it never reports lag.
"""

from __future__ import annotations

from edge.alarms import Alarms
from edge.bus import EventBus
from edge.clock import Clock
from edge.dispatcher import Dispatcher
from edge.kernel import Kernel
from edge.lag import LagMonitor
from edge.settings import Settings
from edge.state import StateStore
from edge.storage import Storage


def make_kernel(
    clock: Clock,
    bus: EventBus,
    state: StateStore,
    dispatcher: Dispatcher,
    *,
    alarms: Alarms | None = None,
    settings: Settings | None = None,
) -> Kernel:
    """The kernel a domain's controllers are built from, on the test's own parts."""
    return Kernel(
        settings=settings or Settings(),
        clock=clock,
        bus=bus,
        state=state,
        dispatcher=dispatcher,
        alarms=alarms or Alarms(bus, clock),
        storage=Storage("sqlite://"),
        lag=LagMonitor(limit_s=0.5, hold_s=5.0),
    )
