"""The city bench's table and JSON from its runs (bench/bench_city.py `one_run` results).

Headline rows are `median [min-max] n=runs`; failures are summed over the runs' start-ups and
windows, each kind a row of its own, so none is hidden. CPU by area: the daemon main thread's
CPU over the window split by the stack sampler's busy samples (bench/city_probes.py); per-device
costs divide an area's CPU by what that area handled in the window (lamp reads, uplinks, ...).
"""

from __future__ import annotations

import math
import os
from typing import Any

from bench.city_site import Knobs
from bench.common import Row, median, median_spread

TARGET_CPU_CORE = 50.0
TARGET_RSS_MB = 400.0
TARGET_STARTUP_S = 30.0
TARGET_LAG_P99_MS = 50.0
TARGET_CMD_P99_MS = 100.0
FAIL_KEYS = ("read_errors", "write_errors", "charger_write_errors", "charger_session_errors",
             "display_write_errors", "display_poll_errors", "cmd_failed", "cmd_expired",
             "storage_write_errors", "mqtt_dropped")  # fmt: skip
WAITED = ("controller", "lamp", "charger", "display", "truck")


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of `xs` (seconds) in ms; nan when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return 1000 * s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def _startup_failures(r: dict[str, Any]) -> dict[str, int]:
    ready = r["ready"]
    out = {key: int(ready.get(key, 0)) for key in FAIL_KEYS}
    out["devices never online"] = sum(
        max(0, reg - on) for kind, (on, reg) in ready["online"].items() if kind in WAITED
    )
    lamps = ready["online"].get("lamp")
    out["lamps without the first plan"] = max(0, lamps[1] - ready["lamps_applied"]) if lamps else 0
    out["start-up never complete (timed out or stalled)"] = 0 if r["started"] else 1
    return out


def _steady_failures(r: dict[str, Any]) -> dict[str, int]:
    s0, s1, t = r["s0"], r["s1"], r["trickle"]
    out = {key: int(s1[key]) - int(s0[key]) for key in FAIL_KEYS}
    out["devices offline at the end"] = sum(
        max(0, reg - on) for kind, (on, reg) in s1["online"].items() if kind in WAITED
    )
    out["operator commands failed"] = len(t.failures["command"])
    out["utility signals failed"] = len(t.failures["utility"])
    return out


def _areas(r: dict[str, Any]) -> dict[str, float]:
    """CPU seconds of the main thread in the window by area (idle samples left out)."""
    a0, a1 = r["s0"]["areas"], r["s1"]["areas"]
    counts = {k: a1.get(k, 0) - a0.get(k, 0) for k in a1}
    busy = sum(v for k, v in counts.items() if k != "idle")
    if busy <= 0:
        return {}
    return {k: r["main_cpu_s"] * v / busy for k, v in counts.items() if k != "idle" and v > 0}


def per_run(r: dict[str, Any]) -> dict[str, Any]:
    """The run's numbers (the JSON's and the table's), from one `one_run` result."""
    k: Knobs = r["knobs"]
    s0, s1, wall, t = r["s0"], r["s1"], r["wall"], r["trickle"]
    cores = os.cpu_count() or 1
    cpu = 100 * (r["daemon_cpu_s"] - r["sampler_cpu_s"]) / wall
    lags = s1["lags"][len(s0["lags"]) :]
    areas = _areas(r)
    d = {key: s1[key] - s0[key] for key in ("lamp_reads", "uplinks", "truck_states", "published",
                                            "states_published", "published_fast",
                                            "charger_notifications", "storage_written")}  # fmt: skip
    lamp_cpu = areas.get("lamps: Modbus driver", 0.0)
    su, st = _startup_failures(r), _steady_failures(r)
    plans_in_window = [p for p in s1["plans"] if p not in s0["plans"]]
    return {
        "daemon_cpu_pct_of_core": cpu,
        "daemon_cpu_pct_of_node": cpu / cores,
        "rss_mb": r["rss_mb"],
        "rss_anon_mb": r.get("rss_parts", {}).get("RssAnon", 0.0),
        "solver_rss_mb": r.get("solver_rss_mb", 0.0),
        "total_rss_mb": r.get("total_rss_mb", r["rss_mb"]),
        "rss_file_mb": r.get("rss_parts", {}).get("RssFile", 0.0),
        "startup_s": r["startup_s"],
        "startup_cpu_s": r["startup_cpu_s"],
        "startup_complete": bool(r["started"]),
        "startup_failures": sum(su.values()),
        "steady_failures": sum(st.values()),
        "startup_failure_kinds": su,
        "steady_failure_kinds": st,
        "loop_lag_p50_ms": pct(lags, 0.5),
        "loop_lag_p99_ms": pct(lags, 0.99),
        "gc_full_collections": len(s1["gc_pauses"][2]) - len(s0["gc_pauses"][2]),
        "gc_full_max_ms": 1000 * max(s1["gc_pauses"][2][len(s0["gc_pauses"][2]) :], default=0.0),
        "gc_young_max_ms": 1000
        * max((p for g in (0, 1) for p in s1["gc_pauses"][g][len(s0["gc_pauses"][g]) :]), default=0.0),
        "command_p50_ms": pct(t.durations["command"], 0.5),
        "command_p99_ms": pct(t.durations["command"], 0.99),
        "commands": len(t.durations["command"]) + len(t.failures["command"]),
        "utility_p50_ms": pct(t.durations["utility"], 0.5),
        "utility_p99_ms": pct(t.durations["utility"], 0.99),
        "utility_signals": len(t.durations["utility"]) + len(t.failures["utility"]),
        # every message the link handed the broker: outbox (QoS 1), devices' states (QoS 1), QoS 0
        "mqtt_out_per_s": (d["published"] + d["states_published"] + d["published_fast"]) / wall,
        "mqtt_out_split": (d["published"] / wall, d["states_published"] / wall, d["published_fast"] / wall),
        "lamp_reads_per_s": d["lamp_reads"] / wall,
        "uplinks_per_s": d["uplinks"] / wall,
        "truck_states_per_s": d["truck_states"] / wall,
        "charger_notifications_per_s": d["charger_notifications"] / wall,
        "history_rows": d["storage_written"],
        "plans_in_window": len(plans_in_window),
        "lamp_cpu_us_per_read": 1e6 * lamp_cpu / d["lamp_reads"] if d["lamp_reads"] else float("nan"),
        "daemon_cpu_us_per_lamp_read": 1e6 * (r["daemon_cpu_s"] - r["sampler_cpu_s"]) / d["lamp_reads"]
        if d["lamp_reads"]
        else float("nan"),
        "areas_pct": {a: 100 * v / wall for a, v in areas.items()},
        "other_threads_pct": 100 * (r["daemon_cpu_s"] - r["main_cpu_s"] - r["sampler_cpu_s"]) / wall,
        "sampler_pct": 100 * r["sampler_cpu_s"] / wall,
        "solver_worker_pct": 100 * r["solver_cpu_s"] / wall,
        "lamp_sims_pct": 100 * r["lamp_sim_cpu_s"] / wall,
        "field_sim_pct": 100 * r["field_sim_cpu_s"] / wall,
        "broker_pct": 100 * r["broker_cpu_s"] / wall,
        "plans": s1["plans"],
        "milestones": r["startup_milestones"],
        "devices": {kind: reg for kind, (_on, reg) in s1["online"].items()},
        "cores": cores,
        "lamps": k.lamps,
    }


def _dashboard_rows(results: list[dict[str, Any]]) -> list[Row]:
    """The dashboard probe of each run: targets from the issue (load < 5 s, p95 < 500 ms, CPU < 15 %)."""
    got = [r["dashboard"] for r in results if isinstance(r.get("dashboard"), dict)]
    failed = [str(r["dashboard"]) for r in results if isinstance(r.get("dashboard"), str)]
    rows: list[Row] = []
    if failed:
        rows.append(
            Row(
                "city dashboard",
                "probe failures",
                f"{len(failed)}: {failed[0][:100]}",
                target="0",
                verdict="MISS",
            )
        )
    if not got:
        return rows

    def col(key: str) -> list[float]:
        return [float(g[key]) for g in got if key in g]

    def row(metric: str, key: str, target: float | None = None, fmt: str = "{:.1f}") -> Row:
        vals = col(key)
        ok = "" if target is None or not vals else _ok(median(vals) < target)
        return Row(
            "city dashboard",
            metric,
            median_spread(vals, fmt),
            target=f"< {target:g}" if target else "",
            verdict=ok,
        )

    lost = sum(col("markers_lost"))
    rows += [
        row("initial load of the retained state, s", "initial_load_s", 5.0, "{:.2f}"),
        row("retained messages loaded", "retained_count", None, "{:.0f}"),
        row("publish -> visible p95 ms", "visible_p95_ms", 500.0),
        row("dashboard CPU % of a core (probe window)", "cpu_pct_of_core", 15.0),
        row("key -> screen updated p95 ms", "key_p95_ms"),
        Row("city dashboard", "markers lost", f"{lost:.0f} of {sum(col('markers_sent')):.0f}", target="0", verdict=_ok(lost == 0)),
    ]  # fmt: skip
    return rows


def _finite(x: float) -> float | None:
    """A number for the JSON line (strict JSON has no NaN: a metric with no samples is null)."""
    return x if math.isfinite(x) else None


def _ok(good: bool) -> str:
    return "ok" if good else "MISS"


def _waste_rows(what: str, plans: list[dict[str, Any]], k: Knobs) -> list[Row]:
    secs = [float(p.get("plan_s", float("nan"))) for p in plans]
    limit = k.waste_solver_s
    bins = plans[0].get("bins", 0)
    brief = " ".join(
        f"{p.get('status')}/{p.get('routes')}/{p.get('mandatory')}/{p.get('violations')}" for p in plans
    )
    return [
        Row("city plans", f"{what}: {bins} bins / {k.trucks} trucks, s (asked to in force)",
            median_spread(secs, "{:.2f}"), f"limit {limit:g} s", "", f"<= {limit * 1.1 + 1:.0f}",
            _ok(median(secs) <= limit * 1.1 + 1)),
        Row("city plans", f"{what}: status / routes / mandatory / violations", brief,
            verdict=_ok(all(p.get("violations", 1) == 0 for p in plans))),
    ]  # fmt: skip


def _plan_rows(runs: list[dict[str, Any]], k: Knobs) -> list[Row]:
    rows: list[Row] = []
    for domain, what in (
        ("lighting", "dimming plan"),
        ("charging", "charging re-plan"),
        ("waste", "collection plan"),
    ):
        plans = [[p for p in r["plans"] if p["domain"] == domain] for r in runs]
        made = [len(p) for p in plans]
        if not any(made):
            continue
        first = [p[0] for p in plans if p]
        if domain == "waste" and any(len(p) > 1 for p in plans):
            rows += _waste_rows(f"{what} at start-up (solver process started)", first, k)
            rows += _waste_rows(f"{what} again in the window", [p[-1] for p in plans if len(p) > 1], k)
            continue
        if domain == "waste":
            rows += _waste_rows(what, first, k)
            continue
        solve = [float(p.get("solve_seconds", float("nan"))) for p in first]
        size = (
            f"{first[0].get('lamps', '')} lamps"
            if domain == "lighting"
            else f"{first[0].get('sessions', '')} sessions"
        )
        if domain == "charging":  # [charging] plan_time_limit_s, default 2 s
            rows.append(Row("city plans", f"{what} ({size}): solve s", median_spread(solve, "{:.2f}"),
                            "limit 2 s", target="<= 2", verdict=_ok(median(solve) <= 2.0)))  # fmt: skip
        else:
            rows.append(Row("city plans", f"{what} ({size}): solve s", median_spread(solve, "{:.2f}")))
        statuses = " ".join(str(p[0].get("status")) for p in plans if p)
        fallback = any(p[0].get("status") == "fallback" for p in plans if p)
        rows.append(Row("city plans", f"{what}: status; plans made per run", f"{statuses}; {made}",
                        verdict=_ok(not fallback)))  # fmt: skip
    return rows


def rows_of(results: list[dict[str, Any]], k: Knobs) -> tuple[list[Row], dict[str, Any]]:
    """The table's rows and the JSON summary (medians) of the runs.

    Size exception: the table's rows in the order they print, one statement each.
    """
    runs = [per_run(r) for r in results]
    name = f"city {runs[0]['devices'].get('lamp', k.lamps)} lamps"

    def vals(key: str) -> list[float]:
        return [float(r[key]) for r in runs]

    def ms(key: str, fmt: str = "{:.1f}") -> str:
        return median_spread(vals(key), fmt)

    cores = runs[0]["cores"]
    cpu = median(vals("daemon_cpu_pct_of_core"))
    su, st = vals("startup_failures"), vals("steady_failures")
    incomplete = sum(1 for r in runs if not r["startup_complete"])
    rows = [
        Row(name, "daemon CPU % of one core (steady)", ms("daemon_cpu_pct_of_core"), target=f"< {TARGET_CPU_CORE:.0f}",
            verdict=_ok(cpu < TARGET_CPU_CORE)),
        Row(name, f"daemon CPU % of the node ({cores} cores)", ms("daemon_cpu_pct_of_node"),
            target=f"< {TARGET_CPU_CORE / 2:.0f}", verdict=_ok(cpu / cores < TARGET_CPU_CORE / 2)),
        Row(name, "daemon RSS MB (max in the window)", ms("rss_mb", "{:.0f}"), target=f"< {TARGET_RSS_MB:.0f}",
            verdict=_ok(median(vals("rss_mb")) < TARGET_RSS_MB)),
        Row(name, "  of it at the end: anonymous / file-backed (mapped code) MB",
            f"{ms('rss_anon_mb', '{:.0f}')} / {ms('rss_file_mb', '{:.0f}')}"),
        Row(name, "solver process RSS MB (max in the window; the optimizers' imports live there)",
            ms("solver_rss_mb", "{:.0f}")),
        Row(name, "daemon + solver process RSS MB (max of the sum)", ms("total_rss_mb", "{:.0f}")),
        Row(name, "start-up s (process start to all online + first plans applied)", ms("startup_s"),
            f"{ms('startup_cpu_s')} CPU s; {incomplete} runs never complete", target=f"< {TARGET_STARTUP_S:.0f}",
            verdict=_ok(median(vals("startup_s")) < TARGET_STARTUP_S and not incomplete)),
        Row(name, "start-up failures (sum of the rows below)", f"{sum(su):.0f} in {len(runs)} runs", target="0",
            verdict=_ok(sum(su) == 0)),
    ]  # fmt: skip
    for key in runs[0]["startup_failure_kinds"]:
        total = sum(r["startup_failure_kinds"][key] for r in runs)
        rows.append(Row(name, f"  start-up: {key}", str(total), target="0", verdict=_ok(total == 0)))
    rows.append(Row(name, "steady failures (sum of the rows below)", f"{sum(st):.0f} in {len(runs)} runs",
                    target="0", verdict=_ok(sum(st) == 0)))  # fmt: skip
    for key in runs[0]["steady_failure_kinds"]:
        total = sum(r["steady_failure_kinds"][key] for r in runs)
        rows.append(Row(name, f"  steady: {key}", str(total), target="0", verdict=_ok(total == 0)))
    lag99, cmd99 = median(vals("loop_lag_p99_ms")), median(vals("command_p99_ms"))
    rows += [
        Row(name, "event-loop lag p50 ms", ms("loop_lag_p50_ms", "{:.2f}")),
        Row(name, "event-loop lag p99 ms", ms("loop_lag_p99_ms"), target=f"< {TARGET_LAG_P99_MS:.0f}",
            verdict=_ok(lag99 < TARGET_LAG_P99_MS)),
        Row(name, "garbage collector in the window: full collections / longest full / longest young, ms",
            f"{median(vals('gc_full_collections')):.0f} / {median(vals('gc_full_max_ms')):.0f} / "
            f"{median(vals('gc_young_max_ms')):.1f}"),
        Row(name, f"command round trip p50 ms (n={sum(vals('commands')):.0f})", ms("command_p50_ms")),
        Row(name, "command round trip p99 ms", ms("command_p99_ms"), target=f"< {TARGET_CMD_P99_MS:.0f}",
            verdict=_ok(cmd99 < TARGET_CMD_P99_MS)),
        Row(name, f"utility signal round trip p50/p99 ms (n={sum(vals('utility_signals')):.0f})",
            f"{median(vals('utility_p50_ms')):.1f}/{median(vals('utility_p99_ms')):.1f}"),
        Row(name, "MQTT messages/s out (outbox / device states / QoS 0)", ms("mqtt_out_per_s"),
            " / ".join(f"{median([r['mqtt_out_split'][i] for r in runs]):.1f}" for i in range(3))),
        Row(name, "lamp reads/s", ms("lamp_reads_per_s", "{:.0f}"), f"{k.lamps / k.poll_s:.0f} nominal"),
        Row(name, "uplinks/s in; truck states/s in", f"{median(vals('uplinks_per_s')):.2f}; "
            f"{median(vals('truck_states_per_s')):.2f}"),
        Row(name, "history + plan + audit rows stored in the window; plans made in it",
            f"{median(vals('history_rows')):.0f}; {median(vals('plans_in_window')):.0f}"),
        Row(name, "daemon CPU µs per lamp read (whole daemon)", ms("daemon_cpu_us_per_lamp_read")),
        Row(name, "lamp driver CPU µs per lamp read (sampled)", ms("lamp_cpu_us_per_read")),
    ]  # fmt: skip
    areas = sorted(
        {a for r in runs for a in r["areas_pct"]},
        key=lambda a: -median([r["areas_pct"].get(a, 0.0) for r in runs]),
    )
    for a in areas:
        rows.append(
            Row(
                name,
                f"  CPU % of a core, sampled: {a}",
                median_spread([r["areas_pct"].get(a, 0.0) for r in runs]),
            )
        )
    rows += [
        Row(name, "  CPU % of a core: other daemon threads (storage, to_thread)", ms("other_threads_pct")),
        Row(name, "  CPU % of a core: bench stack sampler (subtracted above)", ms("sampler_pct")),
        Row(name, "solver process CPU % of a core (every domain's optimizer)", ms("solver_worker_pct")),
        Row(name, "simulators CPU % of a core: lamps / field / broker",
            f"{median(vals('lamp_sims_pct')):.0f} / {median(vals('field_sim_pct')):.0f} / {median(vals('broker_pct')):.0f}"),
    ]  # fmt: skip
    rows += _plan_rows(runs, k)
    rows += _dashboard_rows(results)
    for m in runs[0]["milestones"]:
        rows.append(
            Row(
                name,
                f"  start-up milestone s: {m}",
                median_spread([r["milestones"].get(m, float("nan")) for r in runs]),
            )
        )
    summary: dict[str, Any] = {key: _finite(median(vals(key))) for key in (
        "daemon_cpu_pct_of_core", "daemon_cpu_pct_of_node", "rss_mb", "solver_rss_mb", "total_rss_mb", "startup_s",
        "loop_lag_p50_ms",
        "loop_lag_p99_ms", "command_p50_ms", "command_p99_ms", "mqtt_out_per_s", "lamp_reads_per_s",
        "daemon_cpu_us_per_lamp_read", "lamp_cpu_us_per_read")}  # fmt: skip
    summary |= {"startup_incomplete_runs": incomplete, "startup_failures": int(sum(su)), "steady_failures": int(sum(st)), "runs": len(runs),
                "lamps": runs[0]["devices"].get("lamp", k.lamps), "window_s": k.window_s, "devices": runs[0]["devices"]}  # fmt: skip
    dash = [r["dashboard"] for r in results if isinstance(r.get("dashboard"), dict)]
    for key in ("initial_load_s", "visible_p95_ms", "cpu_pct_of_core"):
        summary[f"dashboard_{key}"] = _finite(median([float(d[key]) for d in dash if key in d]))
    return rows, summary
