"""The whole city on one daemon: Dortmund's inventory through the real daemon, start-up and steady state.

`python -m bench city [--quick]`. Processes (all `spawn`), so each number belongs to one of them:

- lamp simulators (BENCH_CITY_LAMP_SIM_PROCS processes): BENCH_CITY_LAMPS lamps behind controllers
  of BENCH_CITY_LAMPS_PER_CONTROLLER (`LightingSimulator`, Modbus TCP on free ports);
- one field simulator: BENCH_CITY_CHARGERS charge points on one OPC UA server, BENCH_CITY_BOARDS
  displays (BENCH_CITY_SIGNS of them Modbus VMS signs, the rest MQTT LED boards),
  BENCH_CITY_CARPARKS car-park counters (every BENCH_CITY_CARPARK_S), BENCH_CITY_BINS bins whose
  LoRaWAN uplinks come every BENCH_CITY_UPLINK_MIN_S..MAX_S and BENCH_CITY_TRUCKS trucks reporting
  every BENCH_CITY_TRUCK_S (edge/app/demo.py's simulators, scaled);
- the daemon (`edge.app.daemon.running`, uvloop, SQLite in the run's temp dir, logging at
  warning), polling lamps every BENCH_CITY_POLL_S, re-planning charging every
  BENCH_CITY_REPLAN_S and snapshotting history every BENCH_CITY_HISTORY_S, with the bench's
  probes in its process (bench/city_probes.py: loop lag, plan timings, start-up milestones,
  stack samples for CPU by area);
- this process: the operator and utility trickle over MQTT (bench/city_client.py: a set_level
  every BENCH_CITY_CMD_S, a curtailment every BENCH_CITY_UTILITY_S, each timed to its answer),
  and psutil from outside: the daemon's CPU and RSS, its solver worker's, the simulators' and
  the broker's.

Start-up: from the daemon process's start until every lamp, controller, charge point, display
and truck is online, the lighting plan is applied to every lamp (read back), the charging plan
made, every display showing and the waste plan made, with nothing pending. Bins report every
15-60 min by design, so they are not waited for (the plan takes them as the estimator has them).
Then the steady window (BENCH_CITY_WINDOW_S, default 600 s; 60 s with --quick, where every count
is a tenth). BENCH_CITY_RUNS whole runs (default BENCH_RUNS, 3); the headline rows are
median [min-max]. The broker is a Mosquitto of the bench's own (set_tcp_nodelay) when the binary
exists, else 127.0.0.1:1883 (its retained topics cleared after), else embedded amqtt.
The last stdout line is one JSON object with the medians (`python -m bench city` prints it
after the table). Every failed read, write, command or request is a counted row: never hidden.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from bench.bench_daemon import (
    _clear_retained,
    _mosquitto_up,
    _private_mosquitto,
    _serve_broker,
    _stop,
    _wait_recv,
)
from bench.city_report import rows_of
from bench.city_site import (
    START,
    Knobs,
    clock_at,
    lamp_rows,
    seed_bin_history,
    write_bins,
    write_inventory,
    write_site,
)
from bench.common import Row, py_spy, spy_stop

MOSQUITTO_URL = "mqtt://127.0.0.1:1883"
TIMELINE = os.environ.get("BENCH_CITY_TIMELINE", "")  # a file prefix: requests and per-second samples
PROFILE_DIR = os.environ.get(
    "BENCH_CITY_PROFILE", ""
)  # py-spy the daemon (start-up, steady) into this folder
_LAST_JSON: list[str] = []


def json_tail() -> str | None:
    """The JSON line of the last `run` (bench/__main__.py prints it after the table)."""
    return _LAST_JSON[-1] if _LAST_JSON else None


def _cpu(p: Any) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except Exception:  # the process is gone
        return 0.0


def _thread_cpu(p: Any, tid: int) -> float:
    with contextlib.suppress(Exception):
        for th in p.threads():
            if th.id == tid:
                return float(th.user_time + th.system_time)
    return 0.0


def _children_rss_mb(p: Any) -> float:
    """The daemon's child processes' RSS (its solver process), MB."""
    with contextlib.suppress(Exception):
        return sum(c.memory_info().rss for c in p.children(recursive=True)) / 2**20
    return 0.0


def _children_cpu(p: Any) -> float:
    with contextlib.suppress(Exception):
        return sum(_cpu(c) for c in p.children(recursive=True))
    return 0.0


def _start_lamps(ctx: Any, stop: Any, k: Knobs, t0: float, procs: list[SpawnProcess]) -> list[Any]:
    """The lamp simulator processes, one after the other: each picks free ports for its controllers,
    and two picking at once collide (a port free for one is taken by the other)."""
    n = k.controllers
    parts = max(1, min(k.lamp_sim_procs, n))
    endpoints: list[Any] = []
    for i in range(parts):
        lo, hi = i * n // parts, (i + 1) * n // parts
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_lamps_entry, args=(child, stop, n, k.lamps_per_controller, lo, hi, k.poll_s, t0),
                        name=f"bench-city-lamps-{i}")  # fmt: skip
        p.start()
        procs.append(p)
        endpoints += _wait_recv(parent, p, 300, "lamp simulator")
    return endpoints


def _lamps_entry(*args: Any) -> None:
    from bench.city_procs import serve_lamps

    serve_lamps(*args)


def _field_entry(*args: Any) -> None:
    from bench.city_procs import serve_field

    serve_field(*args)


def _daemon_entry(*args: Any) -> None:
    from bench.city_procs import run_daemon

    run_daemon(*args)


def _broker(ctx: Any, stop: Any, tmp: Path, procs: list[SpawnProcess]) -> tuple[str, str, Any]:
    private = _private_mosquitto(tmp)
    if private is not None:
        return f"mqtt://127.0.0.1:{private[1]}", "mosquitto (own, set_tcp_nodelay)", private[0]
    if _mosquitto_up():
        return MOSQUITTO_URL, "mosquitto", None
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_serve_broker, args=(child, stop), name="bench-city-broker")
    p.start()
    procs.append(p)
    return str(_wait_recv(parent, p, 30, "embedded broker")), "amqtt", None


def one_run(k: Knobs, seed: int) -> dict[str, Any]:
    """One whole run: start-up and the steady window; returns what the report needs."""
    import psutil

    from edge.net import free_ports

    run_id = uuid.uuid4().hex[:8]
    site_id = f"city-{run_id}"
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs: list[SpawnProcess] = []
    daemon: SpawnProcess | None = None
    dconn: Any = None
    res: dict[str, Any] = {"knobs": k, "notes": []}
    with tempfile.TemporaryDirectory(prefix="bench-city-") as tmp_s:
        tmp = Path(tmp_s)
        url, broker_name, mosq = _broker(ctx, stop, tmp, procs)
        res["broker"] = broker_name
        try:
            t0 = time.time()
            n_before = len(procs)
            endpoints = _start_lamps(ctx, stop, k, t0, procs)
            sim_procs = procs[n_before:]
            n_lamp_procs = len(sim_procs)
            opc_port, *sign_ports = free_ports(1 + k.signs)
            rows = lamp_rows(endpoints, k.chargers)
            write_inventory(tmp / "inventory.csv", rows, f"opc.tcp://127.0.0.1:{opc_port}/dos-edge/chargers")
            res["bins"] = write_bins(tmp / "bins.csv", k.bins if k.trucks else 0)
            res["seeded_rows"] = seed_bin_history(f"sqlite:///{tmp / 'edge.db'}", tmp / "bins.csv", START)
            config = write_site(tmp, k, site_id, url, opc_port, sign_ports)
            fparent, fchild = ctx.Pipe()
            field = ctx.Process(target=_field_entry, args=(fchild, stop, str(config), t0, _knob_dict(k)),
                                name="bench-city-field")  # fmt: skip
            field.start()
            procs.append(field)
            _wait_recv(fparent, field, 120, "field simulator")
            sims = [psutil.Process(p.pid) for p in [*sim_procs, field]]
            dconn, dchild = ctx.Pipe()
            daemon = ctx.Process(target=_daemon_entry, args=(dchild, str(config), t0, k.start_timeout_s, k.sample_hz),
                                 name="bench-city-daemon")  # fmt: skip
            t_start = time.time()
            daemon.start()
            dp = psutil.Process(daemon.pid)
            spy = py_spy(PROFILE_DIR, daemon.pid, "city-startup")
            try:
                kind, ready = _wait_recv(dconn, daemon, k.start_timeout_s + 120, "daemon")
            finally:
                spy_stop(spy)
            t_ready = time.time() - t_start
            res["startup_cpu_s"] = _cpu(dp)  # (at "ready": the north's catch-up included)
            res["started"] = kind == "ready"
            res["ready"] = ready
            res["startup_milestones"] = {m: ready["t0"] - t_start + v for m, v in ready["milestones"].items()}
            # Start-up ends when everything is online and applied ("settled"); the daemon says
            # "ready" only once the north has published the states too, and the window starts then.
            res["startup_s"] = res["startup_milestones"].get("settled", t_ready)
            lamp_ids = [lamp_id for *_, lamps in endpoints for _, lamp_id in lamps]
            feeders = sorted({str(r["feeder"]) for r in rows if r["kind"] == "charger"})
            _steady(res, k, url, f"dos/v1/{site_id}", dconn, daemon, dp, sims, mosq, lamp_ids, feeders, t0, seed,
                    n_lamp_procs)  # fmt: skip
            res["dashboard"] = _dashboard(url, site_id, k)
            dconn.send("stop")
            with contextlib.suppress(RuntimeError):
                _wait_recv(dconn, daemon, 60, "daemon stop")
            _stop(daemon, 30)
            if daemon.exitcode not in (0, None):
                res["notes"].append(f"daemon exit code {daemon.exitcode}")
            if broker_name == "mosquitto":
                res["cleared"] = _clear_retained(url, f"dos/v1/{site_id}", run_id)
        finally:
            stop.set()
            if daemon is not None and daemon.is_alive() and dconn is not None:
                with contextlib.suppress(OSError, ValueError):
                    dconn.send("stop")
            _stop(daemon)
            for p in procs:
                _stop(p)
            if mosq is not None:
                mosq.terminate()
                mosq.wait(10)
    return res


def _dashboard(url: str, site_id: str, k: Knobs) -> dict[str, float] | str | None:
    """The operator dashboard against this daemon, after the steady window (so it does not
    load the daemon's numbers): retained load, publish -> visible, its CPU, key response.
    A failure is the run's result (a string), never only a traceback."""
    if k.dashboard_s <= 0:
        return None
    from bench.bench_tui import dashboard_probe

    try:
        # loaded when it has folded a message per lamp and its lamps table shows them all (the
        # "half a second adds under 2 %" default stopped at 19,000 of 53,800 at full size)
        return dashboard_probe(url, site_id, window_s=k.dashboard_s, expect_retained=k.lamps)
    except Exception as exc:  # the probe's own failure is a row of the table
        return f"{type(exc).__name__}: {exc}"


def _knob_dict(k: Knobs) -> dict[str, Any]:
    return {f: getattr(k, f) for f in k.__dataclass_fields__}


def _stats(conn: Any, proc: SpawnProcess) -> dict[str, Any]:
    conn.send("stats")
    s: dict[str, Any] = _wait_recv(conn, proc, 60, "daemon stats")
    return s


def _steady(res: dict[str, Any], k: Knobs, url: str, base: str, dconn: Any, daemon: SpawnProcess, dp: Any,
            sims: list[Any], mosq: Any, lamp_ids: list[str], feeders: list[str], t0: float, seed: int,
            n_lamp_procs: int) -> None:  # fmt: skip
    """The steady window: counters, CPU and RSS before and after the trickle."""
    import psutil
    import uvloop

    from bench.city_client import trickle

    broker = psutil.Process(mosq.pid) if mosq is not None else None
    s0 = _stats(dconn, daemon)
    tid = s0["sampler_tid"]
    dconn.send("replan_waste")  # a collection re-plan inside the window (an operator's request)
    _wait_recv(dconn, daemon, 60, "daemon replan")
    c0 = (_cpu(dp), _thread_cpu(dp, tid), _thread_cpu(dp, dp.pid), _children_cpu(dp),
          [_cpu(p) for p in sims], _cpu(broker) if broker else 0.0, time.perf_counter())  # fmt: skip
    spy = py_spy(PROFILE_DIR, dp.pid, "city-steady")
    try:
        out = uvloop.run(trickle(
            url,
            s0["protocol"] == "5",
            base,
            lamp_ids,
            feeders,
            window_s=k.window_s,
            cmd_s=k.cmd_s,
            utility_s=k.utility_s,
            clock_now=lambda: clock_at(t0, time.time()),
            sample=lambda: (dp.memory_info().rss / 2**20, _children_rss_mb(dp)),
            seed=seed,
        ))  # fmt: skip
    finally:
        spy_stop(spy)
    s1 = _stats(dconn, daemon)
    if TIMELINE:  # the requests, to line up with the daemon's per-second samples
        Path(TIMELINE + ".requests.json").write_text(json.dumps(out.sent))
    c1 = (_cpu(dp), _thread_cpu(dp, tid), _thread_cpu(dp, dp.pid), _children_cpu(dp),
          [_cpu(p) for p in sims], _cpu(broker) if broker else 0.0, time.perf_counter())  # fmt: skip
    wall = c1[6] - c0[6]
    res.update(
        s0=s0, s1=s1, wall=wall, trickle=out,
        daemon_cpu_s=c1[0] - c0[0], sampler_cpu_s=c1[1] - c0[1], main_cpu_s=c1[2] - c0[2],
        solver_cpu_s=c1[3] - c0[3],
        lamp_sim_cpu_s=sum(b - a for a, b in zip(c0[4][:n_lamp_procs], c1[4][:n_lamp_procs], strict=True)),
        field_sim_cpu_s=sum(b - a for a, b in zip(c0[4][n_lamp_procs:], c1[4][n_lamp_procs:], strict=True)),
        broker_cpu_s=c1[5] - c0[5], rss_mb=max([dp.memory_info().rss / 2**20, *(a for a, _ in out.rss)]),
        solver_rss_mb=max([_children_rss_mb(dp), *(b for _, b in out.rss)]),
        total_rss_mb=max([dp.memory_info().rss / 2**20 + _children_rss_mb(dp), *(a + b for a, b in out.rss)]),
        rss_parts=_rss_parts(dp.pid),
    )  # fmt: skip


def _rss_parts(pid: int) -> dict[str, float]:
    """The daemon's RSS at the window's end, MB: anonymous (heap, the interpreter's and the
    libraries' allocations) and file-backed (mapped code of the interpreter and the libraries,
    shared with any other process that maps them)."""
    parts: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                parts[key] = float(rest.split()[0]) / 1024
    except OSError:
        pass
    return parts


def run(quick: bool) -> list[Row]:
    """BENCH_CITY_RUNS whole runs of the city; rows with median [min-max]; stashes the JSON line."""
    k = Knobs.from_env(quick)
    results = []
    crashed: list[str] = []
    for i in range(k.runs):
        print(f"  city run {i + 1}/{k.runs}: {k.lamps} lamps, window {k.window_s:.0f} s ...", file=sys.stderr,
              flush=True)  # fmt: skip
        try:
            results.append(one_run(k, seed=i + 1))
        except Exception as exc:  # a run that cannot start is counted in the table; the others still report
            if k.runs == 1:
                raise
            traceback.print_exc(file=sys.stderr)
            crashed.append(f"run {i + 1}: {type(exc).__name__}: {exc}"[:200])
    if not results:
        raise RuntimeError(f"every city run crashed: {crashed}")
    for i, r in enumerate(results):
        for when, s in (("start-up", r["ready"]), ("end", r.get("s1") or {})):
            reasons = sorted((s.get("failed_reasons") or {}).items(), key=lambda x: -x[1])[:8]
            if reasons:
                print(f"  run {i + 1} failed commands until {when}: {reasons}", file=sys.stderr)
        trickle = r.get("trickle")
        for kind, failed in trickle.failures.items() if trickle is not None else ():
            if failed:
                counted = Counter(re.sub(r"/[^/: ]+:", "/…:", f) for f in failed).most_common(5)
                print(f"  run {i + 1} {kind} requests failed: {counted}", file=sys.stderr)
    rows, summary = rows_of(results, k)
    summary["runs_crashed"] = len(crashed)
    rows.insert(0, Row("city", "runs crashed (not in the medians)", f"{len(crashed)} of {k.runs}",
                       "; ".join(crashed), target="0", verdict="ok" if not crashed else "FAIL"))  # fmt: skip
    _LAST_JSON.append(json.dumps(summary, sort_keys=True))
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.bench_city [--quick]`: the table, then the JSON line."""
    from bench.common import print_table

    args = sys.argv[1:] if argv is None else argv
    rows = run("--quick" in args)
    print_table(rows)
    print(json_tail())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
