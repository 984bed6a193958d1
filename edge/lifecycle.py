"""One lifecycle for every long-lived component: open once, run named tasks, close for good.

Drivers, simulators, the dispatcher, the MQTT link: each used to write its own
`__aenter__`/`__aexit__` with a state enum and a TaskGroup. `Service` is that code once.
A subclass overrides `_start` (open connections, `spawn` its loops) and `_stop` (release
what `_start` took); the base keeps the state (httpx's UNOPENED/OPENED/CLOSED), owns the
TaskGroup, names every task `"{name}.{what}"`, and on exit cancels and awaits the tasks
(re-cancelling any that swallowed a cancel, see `edge.tasks`) before `_stop` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from enum import Enum
from types import TracebackType
from typing import Any, Self

from edge.tasks import close_task_group

__all__ = ["Service", "ServiceState"]


class ServiceState(Enum):
    """Where a component is in its life; it never goes back."""

    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class Service:
    """Base of every long-lived component: an async context manager that is not re-entrant."""

    #: Prefix of task names, e.g. "modbus" gives "modbus.poll[ctl-1]"; subclasses set it.
    service_name = "service"

    def __init__(self) -> None:
        self._state = ServiceState.UNOPENED
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def state(self) -> ServiceState:
        """UNOPENED, OPENED or CLOSED."""
        return self._state

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Start `coro` in this component's TaskGroup as task `"{service_name}.{what}"`."""
        if self._tg is None:
            coro.close()
            raise RuntimeError(f"{self.service_name} is {self._state.value}: start tasks while it is open")
        task = self._tg.create_task(coro, name=f"{self.service_name}.{what}")
        self._tasks.append(task)
        return task

    async def _start(self) -> None:
        """Open connections and `spawn` loops; raising here closes what was started."""

    async def _stop(self) -> None:
        """Release what `_start` took; runs after every task has ended."""

    async def __aenter__(self) -> Self:
        if self._state is not ServiceState.UNOPENED:
            raise RuntimeError(f"{self.service_name} is {self._state.value}; it cannot be opened again")
        self._state = ServiceState.OPENED
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        try:
            await self._start()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is ServiceState.CLOSED:
            return
        self._state = ServiceState.CLOSED
        tg, self._tg = self._tg, None
        try:
            await close_task_group(tg, self._tasks, exc_type, exc, tb)
        finally:
            self._tasks.clear()
            await self._stop()
