"""The cost of the metrics endpoint: the daemon bench with metrics off and on, back to back.

`bench_daemon` (5,000 lamps behind 50 Modbus controllers, polled every second, a command batch
over MQTT) runs in pairs: once with `[metrics]` off, once with it on and scraped every
`BENCH_DAEMON_SCRAPE_S` (15 s, a usual Prometheus interval; set 1 to stress it). The machine is
noisy, so the verdict is the ratio within each back-to-back pair, and the table gives their
median and spread; each run's own CPU figure is the median of its steady windows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import bench.bench_daemon as daemon_bench
from bench.common import Row, median, median_spread
from edge.net import free_port

PAIRS = int(os.environ.get("BENCH_METRICS_PAIRS", "3"))
TARGET_RATIO = 1.05  # metrics may cost at most 5 % of the daemon's CPU


def _daemon_cpu(quick: bool, port: int) -> tuple[float, int]:
    """One daemon bench in its own process (nothing carried from run to run): the median steady
    CPU % of a core, and the scrapes answered."""
    env = {**os.environ, "BENCH_DAEMON_METRICS_PORT": str(port)}
    cmd = [sys.executable, "-m", "bench", "daemon", *(["--quick"] if quick else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False).stdout
    cpu = re.search(r"daemon CPU % of a core, steady\s+([0-9.]+)", out)
    scrapes = re.search(r"metrics scrapes answered\s+([0-9]+)", out)
    if cpu is None:
        raise RuntimeError(f"the daemon bench printed no steady CPU: {out[-500:]}")
    return float(cpu.group(1)), int(scrapes.group(1)) if scrapes else 0


def run(quick: bool) -> list[Row]:
    pairs = 1 if quick else PAIRS
    off: list[float] = []
    on: list[float] = []
    scrapes = 0
    for _ in range(pairs):
        off.append(_daemon_cpu(quick, 0)[0])
        cpu, n = _daemon_cpu(quick, free_port())
        on.append(cpu)
        scrapes += n
    ratios = [b / a for a, b in zip(off, on, strict=True) if a > 0]
    r = median(ratios)
    return [
        Row("metrics", f"daemon CPU % of a core, metrics off / on (n={pairs} pairs)",
            f"{median_spread(off)} / {median_spread(on)}", "off, the run before",
            f"{r:.3f} [{min(ratios):.3f}-{max(ratios):.3f}]", f"<= {TARGET_RATIO}",
            "ok" if r <= TARGET_RATIO else "MISS"),
        Row("metrics", f"scrapes answered (every {daemon_bench.SCRAPE_S:g} s)", str(scrapes),
            target="> 0", verdict="ok" if scrapes > 0 else "MISS"),
    ]  # fmt: skip
