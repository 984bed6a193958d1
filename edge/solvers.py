"""The solver process: every domain's optimizer runs in one spawned process beside the daemon.

Why a process: OR-Tools' searches hold the GIL in places for seconds (in a thread they would
stall the event loop, and with it every poll and command), and OR-Tools' Python layer imports
pandas and numpy: about 55 MB of the daemon's RSS at city size (measured: `import cp_model` alone
took the RSS from 93 to 145 MB) for code that runs a few times a night. One process serves every
domain, so those imports are paid once, beside the daemon rather than in it.

`await solvers.run("optimizer.lighting:solve", inst)` calls the function there; the arguments
and the result are pickled, and the caller checks the plan it gets (optimizer code is pure and
each plan has a solver-independent check). Targets are named as strings: the kernel imports no
domain, and the daemon need not import a solver module at all.

Calls run one at a time, in the order asked (one worker: a second one would double the
imports). The process runs at a lower priority (`SOLVER_NICE`): a plan can wait a few ms, a
command or a poll cannot. The collection plan keeps a core busy for up to its time limit (and
its routing helper the other one); at the daemon's priority it took the CPU the lamps' answers
and the operator's commands were waiting for (a `set_level` round trip of 97 ms in the city
bench, against 4 ms at the median). A process that dies (killed, out of memory) costs that call
a run in a thread, in the daemon, and the next call gets a fresh process. Leaving the context ends the process, with
any solve still running in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Self

import structlog

__all__ = ["SOLVER_NICE", "SolverStats", "Solvers"]

SOLVER_NICE = 10  # the solver process's niceness above the daemon's (a CFS weight ~9x smaller)

log = structlog.get_logger(__name__)


def resolve(target: str) -> Any:
    """The function `module:name` names (imported now)."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"solver target {target!r} is not 'module:function'")
    return getattr(importlib.import_module(module), name)


def _call(target: str, args: tuple[Any, ...]) -> Any:
    """Import the target's module (once) and call it."""
    return resolve(target)(*args)


def _call_pickled(target: str, payload: bytes) -> Any:
    """In the solver process: the arguments come pickled once, by `run`."""
    return _call(target, pickle.loads(payload))


def _lower_priority(nice: int) -> None:
    """In the solver process, first: yield the CPU to the daemon and the devices it talks to.
    Only the process's niceness: it shares the daemon's session (and so its autogroup), whose
    weight stays as it was."""
    with contextlib.suppress(OSError):
        os.nice(nice)


def _import(modules: tuple[str, ...]) -> None:
    """In the solver process: make the imports ahead of the first plan."""
    for module in modules:
        importlib.import_module(module)


@dataclass(slots=True)
class SolverStats:
    calls: int = 0
    in_thread: int = 0  # calls that ran in the daemon (no process, or it died)
    process_failures: int = 0


class Solvers:
    """One solver process for every optimizer; an async context manager.

    `processes=False` runs every call in a thread of the daemon (for tools and tests that
    call optimizers directly; the daemon uses the process).
    """

    def __init__(self, *, processes: bool = True) -> None:
        self.processes = processes
        self.stats = SolverStats()
        self._pool: ProcessPoolExecutor | None = None
        self._warm: tuple[str, ...] = ()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self.stop()

    def warm(self, *targets: str) -> None:
        """Import the modules of `targets` ("module:function") in the solver process now (started
        if it is not), so the first plan does not wait for them."""
        modules = tuple(t.partition(":")[0] for t in targets)
        self._warm = tuple(dict.fromkeys((*self._warm, *modules)))
        pool = self._process()
        if pool is not None:
            with contextlib.suppress(BrokenProcessPool, RuntimeError):
                pool.submit(_import, modules)

    def pids(self) -> list[int]:
        """The solver process's pid, if one runs (benches measure its CPU and memory)."""
        procs = getattr(self._pool, "_processes", None) or {}  # private, so guarded
        return [p.pid for p in procs.values() if p.pid is not None]

    async def run(self, target: str, *args: Any) -> Any:
        """`module:function(*args)` in the solver process (in a thread if there is none)."""
        self.stats.calls += 1
        pool = self._process()
        payload = None if pool is None else _pickled(target, args)
        if pool is not None and payload is not None:
            try:
                done = asyncio.wrap_future(pool.submit(_call_pickled, target, payload))
                done.add_done_callback(_retrieve)
                # Never cancelled from here (a caller cancelled gets its CancelledError at once): a
                # call cancelled while still queued when the process ends made CPython 3.11's
                # executor thread fail (InvalidStateError in `terminate_broken`).
                return await asyncio.shield(done)
            except BrokenProcessPool as exc:
                if self._closed:
                    raise  # ended with the daemon: not run again
                # The worker died (killed, out of memory): this call in a thread, a new process next.
                self.stats.process_failures += 1
                log.warning("solver_process_failed", target=target, error=str(exc)[:200])
                self.stop()
        self.stats.in_thread += 1
        return await asyncio.to_thread(_call, target, args)

    def _process(self) -> ProcessPoolExecutor | None:
        if not self.processes or self._closed:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority,
                initargs=(SOLVER_NICE,),
            )
            if self._warm:
                self._pool.submit(_import, self._warm)
        return self._pool

    def stop(self) -> None:
        """End the solver process now, with a solve still running in it (the interpreter would
        otherwise wait for that solve at exit)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            with contextlib.suppress(OSError, ValueError, AttributeError):  # already gone
                proc.terminate()


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Take a shielded call's outcome that nobody awaits any more (no "never retrieved" log)."""
    if not done.cancelled():
        done.exception()


def _pickled(target: str, args: tuple[Any, ...]) -> bytes | None:
    """The arguments pickled (once: the pool then sends bytes), None if they cannot cross to the
    process (a test's provider may be a closure)."""
    try:
        return pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        log.warning("solver_args_not_picklable", target=target, error=str(exc)[:200])
        return None
