"""The dashboard at city size: initial load, publish -> visible, CPU and key response, against a bare subscriber.

A child process publishes a site (`bench.tui_site.Site`: Dortmund's size by default, 53,800 lamps,
538 controllers, 680 chargers, 64 displays, 20 car parks, 2,000 bins, 20 trucks; a tenth with
`--quick`; each size by env `BENCH_TUI_<FIELD>`, e.g. `BENCH_TUI_LAMPS=5000`) through a real
broker: its retained state, then live updates at the city's rates (`Site.rates`). Each run,
`bench.tui_probe.dashboard_probe` runs the dashboard headless in its own process: it loads the
retained state, and once loaded the publisher starts its live phase; the probe times its own
markers from publish to a rendered frame, its CPU over the window, and key press -> screen updated
on the 53,800-row lamps table and the Map. The reference in the same run is a bare aiomqtt
subscriber (`reference_probe`) under the same traffic. Every number is the median [min-max] of
`bench.common.RUNS` runs; lost markers, lost messages and failed runs are counted in the table.

The broker: `EDGE_TEST_MQTT_URL` if set, else a private `mosquitto` on a free port.
Window: env `BENCH_TUI_WINDOW_S` (default 30 s, 10 s with `--quick`).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

from bench.common import RUNS, Row, median, median_spread
from bench.tui_probe import KEYS_S, dashboard_probe, reference_probe
from bench.tui_site import Site, publisher

__all__ = ["dashboard_probe", "reference_probe", "run"]

TARGET_LOAD_S = 5.0
TARGET_VISIBLE_MS = 500.0
TARGET_CPU = 15.0
TARGET_KEY_MS = 200.0


@contextlib.contextmanager
def _broker() -> Iterator[tuple[str, str]]:
    """(url, name): EDGE_TEST_MQTT_URL, else a private mosquitto on a free port."""
    shared = os.environ.get("EDGE_TEST_MQTT_URL")
    if shared:
        yield shared, "broker from EDGE_TEST_MQTT_URL"
        return
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if binary is None:
        raise RuntimeError("no mosquitto: install it or set EDGE_TEST_MQTT_URL")
    from edge.net import free_port

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        # As docs/mosquitto/mosquitto.conf, without accounts.
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "max_queued_messages 120000\nlog_dest none\n"
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("mosquitto did not start") from None
                    time.sleep(0.05)
            yield f"mqtt://127.0.0.1:{port}", "mosquitto"
        finally:
            proc.terminate()
            proc.wait(5)


@contextlib.contextmanager
def _publisher(url: str, base: str, site: Site) -> Iterator[tuple[Connection, int]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=publisher, args=(child, url, base, site), name="bench-tui-pub", daemon=True)
    proc.start()
    try:
        if not parent.poll(300):
            raise RuntimeError("the publisher did not publish the snapshot in 300 s")
        _, retained = parent.recv()
        yield parent, retained
        parent.send(None)
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def _one(
    kind: str, url: str, site: str, conn: Connection, window_s: float, retained: int
) -> dict[str, float]:
    """One probe run with the publisher's live phase started once the probe has loaded."""
    import threading

    ctx = mp.get_context("spawn")
    loaded, done = ctx.Event(), ctx.Event()
    probe = dashboard_probe if kind == "dashboard" else reference_probe
    box: dict[str, object] = {}

    def go() -> None:
        try:
            box["result"] = probe(
                url, site, window_s=window_s, expect_retained=retained, loaded=loaded, traffic_done=done
            )
        except (RuntimeError, TimeoutError) as exc:
            box["error"] = str(exc)

    thread = threading.Thread(target=go, name=f"bench-tui-{kind}")
    thread.start()
    published = 0
    deadline = time.monotonic() + 300
    while not loaded.wait(0.2) and thread.is_alive() and time.monotonic() < deadline:
        pass
    if loaded.is_set():
        conn.send(window_s + (KEYS_S if kind == "dashboard" else 0.0) - 1.0)
        published = int(conn.recv()[1])
    done.set()
    thread.join()
    result = box.get("result")
    if not isinstance(result, dict):
        return {"failed": 1.0}
    result["published"] = float(published)
    result["lost"] = float(max(0, published - int(result["live_received"])))
    return result


def _runs(quick: bool) -> tuple[Site, str, list[dict[str, float]], list[dict[str, float]], int]:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    site = Site.from_env(quick)
    window_s = float(os.environ.get("BENCH_TUI_WINDOW_S", "10" if quick else "30"))
    site_id = f"bench{uuid.uuid4().hex[:8]}"
    ours: list[dict[str, float]] = []
    ref: list[dict[str, float]] = []
    with _broker() as (url, broker_name), _publisher(url, f"dos/v1/{site_id}", site) as (conn, retained):
        for _ in range(RUNS):
            ref.append(_one("bare", url, site_id, conn, window_s, retained))
            ours.append(_one("dashboard", url, site_id, conn, window_s, retained))
    return site, broker_name, ours, ref, retained


def _values(results: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in results if key in r and math.isfinite(r[key])]


def run(quick: bool) -> list[Row]:
    """Targets: load < 5 s, publish -> visible p95 < 500 ms, CPU < 15 % of a core, keys p95 < 200 ms."""
    site, broker_name, ours, ref, retained = _runs(quick)
    name = f"tui {site.describe()}, {broker_name}"

    def row(metric: str, key: str, fmt: str, target: float | None = None, unit: str = "") -> Row:
        o, r = _values(ours, key), _values(ref, key)
        ratio = f"{median(o) / median(r):.1f}x" if o and r and median(r) > 0 else ""
        verdict = (
            "" if target is None else ("yes" if o and median(o) < target and len(o) == len(ours) else "NO")
        )
        return Row(name, metric, median_spread(o, fmt), median_spread(r, fmt) if r else "", ratio,
                   f"< {target:g}{unit}" if target is not None else "", verdict)  # fmt: skip

    def count(key: str, results: list[dict[str, float]]) -> str:
        return f"{sum(int(r.get(key, 0)) for r in results)}"

    return [
        row(f"initial load of {retained} retained messages, s", "initial_load_s", "{:.2f}", TARGET_LOAD_S, " s"),
        row("initial load CPU, s", "initial_load_cpu_s", "{:.2f}"),
        row("publish -> visible p50, ms", "visible_p50_ms", "{:.0f}"),
        row("publish -> visible p95, ms", "visible_p95_ms", "{:.0f}", TARGET_VISIBLE_MS, " ms"),
        row("CPU over the window, % of one core", "cpu_pct_of_core", "{:.1f}", TARGET_CPU, " %"),
        row("key press -> screen updated p50, ms", "key_p50_ms", "{:.0f}"),
        row("key press -> screen updated p95, ms", "key_p95_ms", "{:.0f}", TARGET_KEY_MS, " ms"),
        row("key press -> screen updated max, ms", "key_max_ms", "{:.0f}"),
        row("CPU per key press, ms", "key_cpu_mean_ms", "{:.0f}"),
        row("live messages published per run", "published", "{:.0f}"),
        Row(name, "markers lost (all runs)", count("markers_lost", ours), count("markers_lost", ref), "", "0",
            "yes" if count("markers_lost", ours) == "0" else "NO"),
        Row(name, "live messages lost (all runs)", count("lost", ours), count("lost", ref), "", "0",
            "yes" if count("lost", ours) == "0" else "NO"),
        Row(name, "failed runs, bad payloads", f"{count('failed', ours)}, {count('bad_payloads', ours)}",
            count("failed", ref), "", "0, 0",
            "yes" if count("failed", ours) == "0" and count("bad_payloads", ours) == "0" else "NO"),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench.common import print_table

    print_table(run(quick=True))
