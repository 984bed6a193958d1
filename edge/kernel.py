"""What every domain builds on: the kernel's running parts, and the shape of a domain.

The application (`edge.app`) makes one `Kernel`, then calls each domain's
`build(kernel, site) -> Domain | None` (`edge.app.domains.BUILDS`). A domain registers its
device ids with the state store and its drivers and safety policies with the dispatcher
(both before they start), and returns its services (drivers, ingests: entered in order),
its controllers and its API routes. The daemon then loops over the domains; it names none of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edge.alarms import Alarms
from edge.bus import EventBus
from edge.clock import Clock
from edge.dispatcher import Dispatcher
from edge.lag import LagMonitor
from edge.settings import Settings
from edge.solvers import Solvers
from edge.state import StateStore
from edge.storage import Storage

__all__ = ["Controller", "Domain", "Kernel"]


@dataclass(frozen=True, slots=True)
class Kernel:
    """The kernel's parts, handed to every domain's `build` and every controller."""

    settings: Settings
    clock: Clock
    bus: EventBus
    state: StateStore
    dispatcher: Dispatcher
    alarms: Alarms
    storage: Storage
    lag: LagMonitor
    # Where optimizers run (edge/solvers.py); tools and tests that build a kernel of their own
    # get threads, the daemon its solver process.
    solvers: Solvers = field(default_factory=lambda: Solvers(processes=False))


@runtime_checkable
class Controller(Protocol):
    """A domain's decision loop: reads the state store, plans, submits commands."""

    name: str

    async def run(self) -> None:
        """Decide until cancelled."""
        ...

    def request_replan(self) -> None:
        """Plan again at the next step (an operator or utility asked, or inputs changed)."""
        ...

    def views(self) -> Mapping[str, Any]:
        """Read-only views of what it decided (its plans), by name, for the API, TUI and tests."""
        ...


@dataclass(slots=True)
class Domain:
    """One built domain: what the daemon enters, runs and routes, in that order."""

    name: str
    services: Sequence[AbstractAsyncContextManager[Any]] = ()
    controllers: Sequence[Controller] = ()
    routes: Sequence[Any] = field(default_factory=tuple)
    # Its parts by name (the drivers, the ingest), for the demo, the TUI and tests to look at.
    handles: Mapping[str, object] = field(default_factory=dict)
