"""The solver process: optimizers run beside the daemon, and a dead process costs no plan."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

from edge.solvers import SOLVER_NICE, Solvers
from tests.harness import wait_for


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_call_runs_in_the_solver_process_and_its_imports_stay_there() -> None:
    async with Solvers() as solvers:
        solvers.warm("json:dumps")
        pid = await solvers.run("os:getpid")
        assert pid != os.getpid()
        assert solvers.pids() == [pid]
        assert await solvers.run("os:getpid") == pid  # one process, kept
        assert await solvers.run("builtins:len", [1, 2]) == 2
        assert solvers.stats.in_thread == 0
    await wait_for(lambda: _ended(pid), "the solver process ended with the context", timeout_s=10)


async def test_the_solver_process_yields_the_cpu_to_the_daemon() -> None:
    """A plan that keeps a core busy must not delay the daemon's polls and commands: the solver
    process runs at a lower priority than the daemon, which keeps its own."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    async with Solvers() as solvers:
        pid = await solvers.run("os:getpid")
        assert psutil.Process(pid).nice() == min(19, ours + SOLVER_NICE)
        assert await solvers.run("os:getpriority", os.PRIO_PROCESS, 0) == min(19, ours + SOLVER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours


async def test_without_processes_calls_run_in_a_thread() -> None:
    async with Solvers(processes=False) as solvers:
        assert await solvers.run("os:getpid") == os.getpid()
        assert solvers.pids() == []
        assert solvers.stats.in_thread == 1


async def test_arguments_that_cannot_cross_run_in_a_thread() -> None:
    async with Solvers() as solvers:
        assert await solvers.run("builtins:len", [lambda: 1]) == 1
        assert solvers.stats.in_thread == 1


async def test_a_killed_process_costs_the_call_a_thread_and_the_next_call_a_new_process() -> None:
    async with Solvers() as solvers:
        first = await solvers.run("os:getpid")
        call = asyncio.create_task(solvers.run("time:sleep", 0.5))
        await asyncio.sleep(0.05)  # the sleep is in the process (its call is queued there)
        os.kill(first, signal.SIGKILL)
        assert await call is None  # slept in a thread instead
        assert solvers.stats.process_failures == 1
        second = await solvers.run("os:getpid")
        assert second not in (first, os.getpid())


async def test_leaving_ends_a_solve_still_running() -> None:
    """The daemon stops while a plan is being made: the process ends with it, at once, and the
    call is not run again in a thread."""
    solvers = Solvers()
    async with solvers:
        pid = await solvers.run("os:getpid")
        call = asyncio.create_task(solvers.run("time:sleep", 60))
        await asyncio.sleep(0.05)
    await wait_for(lambda: _ended(pid), "the solver process ended", timeout_s=10)
    with pytest.raises(BrokenProcessPool):
        await call


async def test_a_target_that_is_not_module_colon_function_is_refused() -> None:
    async with Solvers(processes=False) as solvers:
        with pytest.raises(ValueError, match="not 'module:function'"):
            await solvers.run("os.getpid")


async def test_a_cancelled_call_still_queued_when_the_process_dies_is_no_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The solver process dies while one plan runs and others, whose callers were cancelled (the
    daemon stopping), wait behind it: the executor's thread ends cleanly. CPython 3.11's failed
    on each cancelled call with an InvalidStateError, which pytest counted as an error of
    whichever test ran then."""
    failed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failed.append(args.exc_value))
    async with Solvers() as solvers:
        pid = await solvers.run("os:getpid")
        running = asyncio.create_task(solvers.run("time:sleep", 3))
        queued = [asyncio.create_task(solvers.run("os:getpid")) for _ in range(3)]
        await asyncio.sleep(0.2)
        for q in queued:
            q.cancel()
        for q in queued:
            with pytest.raises(asyncio.CancelledError):
                await q
        os.kill(pid, signal.SIGKILL)
        assert await running is None  # slept in a thread instead
        await wait_for(
            lambda: not any(type(t).__name__ == "_ExecutorManagerThread" for t in threading.enumerate()),
            "the executor's thread ended",
            timeout_s=10,
        )
    assert failed == []
