"""PyVRP searches in helper processes beside the caller's own: more of the machine for one plan.

PyVRP holds the GIL while it searches (two threads get no more iterations than one), so a second
core helps only from a second process. `Helpers` starts one process per job, hands it the
instance through a pipe from a background thread (the caller's own search is not
held up by the copy), and collects what each sends back until a deadline. Every helper stops its
search by that deadline (`time.monotonic()`, one clock for all processes on the machine); one that
has not answered in time is terminated, and every helper is ended and reaped when the `with`
block is left, also on an exception. A helper whose caller dies (a killed solver process) ends
itself: its watchdog thread sees the job pipe close. Nothing here reads files or the network.

A job may add a short OR-Tools guided local search after its PyVRP search (`polish_s`): on
instances with many tight windows, where that pays (docs/routing.md), and to re-insert what a
repair had to drop. A helper sends its PyVRP routes first and the polished ones after, so a polish
that runs late costs nothing but itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType

from optimizer.common import PlanStatus
from optimizer.routing_check import make_plan
from optimizer.routing_greedy import repair
from optimizer.routing_model import RoutingInstance
from optimizer.routing_pyvrp import finish_routes, pyvrp_model, pyvrp_search

GRACE_S = 0.25  # how long after the deadline a helper's answer is still awaited
_MIN_SEARCH_S = 0.05  # a helper that starts with less than this left does not search
_WATCH_S = 0.2  # how often a helper checks that its parent lives
_NICE = 10  # a helper's niceness (and its autogroup's): it takes only CPU that others leave
_HARD_STOP_S = 5.0  # a helper still running this long after its deadline ends itself


@dataclass(frozen=True, slots=True)
class HelperJob:
    """One helper's search: a seed, a deadline on `time.monotonic()`, an optional polish."""

    instance: RoutingInstance  # the helper builds PyVRP's data itself: half the bytes, off the caller's GIL
    seed: int
    deadline: float
    iterations: int | None = None  # also stop PyVRP after so many iterations (deterministic)
    polish_s: float = 0.0  # OR-Tools GLS after PyVRP: always if `polish`, else only to repair
    polish: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    """Routes (instance nodes per vehicle id) one engine found, and whether it called them feasible."""

    routes: dict[str, list[int]]
    feasible: bool
    label: str


def default_workers() -> int:
    """Processes one solve may use: two where the machine has two cores for this process, else one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def run_job(job: HelperJob, send: Callable[[Candidate], None]) -> None:
    """A helper's work (also callable in-process): PyVRP until the deadline less the polish time,
    its routes sent; then, if asked or if they needed a repair, OR-Tools from them until the deadline."""
    left = job.deadline - time.monotonic()
    if left < _MIN_SEARCH_S:
        return
    model = pyvrp_model(job.instance)
    left = job.deadline - time.monotonic()
    body, ok = pyvrp_search(model, left - job.polish_s, job.seed, iterations=job.iterations)
    routes = finish_routes(job.instance, model, body)
    label = f"pyvrp-ils:seed{job.seed}"
    send(Candidate(routes, ok, label))
    clean = ok and not make_plan(job.instance, routes, PlanStatus.FEASIBLE, label, 0.0).violations
    if job.polish_s <= 0 or (clean and not job.polish):
        return
    from optimizer.routing_ortools import FIRST, META, OrToolsModel

    start = routes if clean else repair(job.instance, routes)
    ortools = OrToolsModel(job.instance)
    left = job.deadline - time.monotonic()
    if left < _MIN_SEARCH_S:
        return
    polished, status = ortools.search(
        left, FIRST.AUTOMATIC, META.GUIDED_LOCAL_SEARCH, start=start, solution_limit=job.iterations
    )
    if polished is not None:
        send(Candidate(polished, True, f"{label}+ortools-gls:{status}"))


def _helper_main(job_fd: int, result_fd: int) -> None:
    """A helper process: one job in, candidates out, then None. It ends when the caller closes the
    job pipe (done waiting, or dead), or well after its deadline, whatever it is doing then."""
    _yield_to_others()
    jobs = Connection(job_fd, writable=False)
    results = Connection(result_fd, readable=False)
    try:
        job: HelperJob = jobs.recv()
    except (EOFError, OSError):  # the caller gave up before we started
        return
    hard_stop = job.deadline + _HARD_STOP_S

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            while time.monotonic() < hard_stop and not jobs.poll(_WATCH_S):
                pass
        os._exit(0)  # nobody reads our answer any more

    threading.Thread(target=watch, name="routing-helper-watchdog", daemon=True).start()
    with contextlib.suppress(OSError):  # the caller closed the pipe: it no longer waits for us
        run_job(job, results.send)
        results.send(None)


def _yield_to_others() -> None:
    """Run at a low priority: the helper should use a core nobody else wants (on a quiet machine,
    the whole second core), never take CPU from the caller's own search or the daemon's loop.
    Both the process and its session's autogroup (the share the kernel gives a session first)."""
    with contextlib.suppress(OSError):
        os.nice(_NICE)
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
        f.write(str(_NICE))


def _feed(conn: Connection, job: HelperJob) -> None:
    with contextlib.suppress(OSError, ValueError):  # the helper ended or the caller closed first
        conn.send(job)


@dataclass(slots=True)
class _Helper:
    proc: subprocess.Popen[bytes]
    jobs: Connection  # the caller's end: the job goes out here; closing it ends the helper
    results: Connection


class Helpers:
    """Helper processes searching beside the caller; `with` guarantees none outlives the block.

    Each is a fresh interpreter (`python -m optimizer.routing_parallel`) with two pipes, not a
    multiprocessing child: spawn would first re-run the caller's main module in it (the daemon's,
    a script's), which costs time and is unsafe for a script without a main guard. It runs in a
    session of its own: with the kernel's autogroup scheduling (sched_autogroup_enabled=1), a
    busy machine shares CPU between sessions first, so in the caller's session a helper would
    take its CPU from the caller's own search (and from the daemon's event loop), not from the
    idle or the other core. Measured on a loaded 2-core machine: auto's search here and its
    helper together got the CPU time PyVRP alone got (docs/routing.md). In its own session it
    lowers its priority (`_yield_to_others`), so on a busy machine it does not slow the caller.
    """

    def __init__(self, jobs: list[HelperJob]) -> None:
        self.jobs = jobs
        self.helpers: list[_Helper] = []
        self.errors: list[str] = []

    def __enter__(self) -> Helpers:
        root = str(Path(__file__).resolve().parent.parent)  # where this `optimizer` package lives
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        for job in self.jobs:
            job_r, job_w = os.pipe()
            res_r, res_w = os.pipe()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "optimizer.routing_parallel", str(job_r), str(res_w)],
                    pass_fds=(job_r, res_w), cwd=root, env=env, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            except OSError as exc:  # no processes to be had: the caller searches alone
                self.errors.append(f"{type(exc).__name__}: {exc}")
                os.close(job_w)
                os.close(res_r)
                break
            finally:
                os.close(job_r)  # the helper's ends: it has its own copies
                os.close(res_w)
            h = _Helper(proc, Connection(job_w, readable=False), Connection(res_r, writable=False))
            self.helpers.append(h)
            threading.Thread(
                target=_feed, args=(h.jobs, job), name=f"routing-feed-{job.seed}", daemon=True
            ).start()
        return self

    def collect(self, until: float) -> list[Candidate]:
        """Every candidate the helpers send until each says it is done or `until` (monotonic) passes."""
        out: list[Candidate] = []
        for h in self.helpers:
            while True:
                try:
                    if not h.results.poll(max(0.0, until - time.monotonic())):
                        break
                    msg = h.results.recv()
                except (EOFError, OSError):  # the helper died: what it sent before still counts
                    break
                if msg is None:
                    break
                out.append(msg)
        return out

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End every helper (terminate, then kill) and wait for it; close the pipes."""
        for h in self.helpers:
            h.jobs.close()
            if h.proc.poll() is None:
                h.proc.terminate()
        for h in self.helpers:
            try:
                h.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                h.proc.kill()
                h.proc.wait(timeout=1.0)
            h.results.close()
        self.helpers = []


if __name__ == "__main__":
    from optimizer.routing_parallel import _helper_main as main  # the importable copy, not __main__'s

    main(int(sys.argv[1]), int(sys.argv[2]))
