"""The long variant of the topic fuzzer: tests/app/test_fuzz_topics.py with 5,000 messages.

`make test` runs the short variant (EDGE_FUZZ_EXAMPLES, 240 by default). This runs the same
test `RUNS` times in a child pytest with EDGE_FUZZ_EXAMPLES=5000 (600 with --quick) against
the broker and database the tests use (EDGE_TEST_MQTT_URL / EDGE_TEST_DATABASE_URL when set),
then reads the figures each run wrote to its `fuzz_summary.json`. The first run uses the
test's fixed seed, the others fresh ones (EDGE_FUZZ_RANDOM=1), so the runs cover different
messages. Counts that must stay 0 are summed over the runs; the others are per-run medians
with their spread. A run that writes no summary is counted as a failed run, with pytest's
output as a footnote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RUNS, Row, median_spread

ROOT = Path(__file__).resolve().parent.parent
MUST_BE_ZERO = (
    ("unanswered", "unanswered"),
    ("answered twice or more", "answered_twice_or_more"),
    ("misrouted answers", "misrouted"),
    ("crashes", "crashes"),
    ("physics violations", "physics_violations"),
)


def _one(examples: int, fresh_seed: bool) -> tuple[dict[str, Any] | None, float, str]:
    """One child pytest: (its summary or None, wall seconds, what went wrong)."""
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        env = os.environ | {"EDGE_FUZZ_EXAMPLES": str(examples)}
        if fresh_seed:
            env["EDGE_FUZZ_RANDOM"] = "1"
        else:
            env.pop("EDGE_FUZZ_RANDOM", None)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "tests/app/test_fuzz_topics.py", "-q", "-k", "every"]
        cmd += ["-p", "no:cacheprovider", f"--basetemp={tmp}"]
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=examples + 600, check=False
            )
        except subprocess.TimeoutExpired:
            return None, time.perf_counter() - t0, f"timed out after {examples + 600} s"
        secs = time.perf_counter() - t0
        found = sorted(Path(tmp).rglob("fuzz_summary.json"))
        why = (
            ""
            if proc.returncode == 0
            else f"pytest rc {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"
        )
        if not found:
            return None, secs, why or "no fuzz_summary.json"
        return json.loads(found[0].read_text()), secs, why


def run(quick: bool) -> list[Row]:
    examples = 600 if quick else 5000
    results = [_one(examples, fresh_seed=i > 0) for i in range(RUNS)]
    done = [s for s, _, _ in results if s is not None]
    failed = [why for _, _, why in results if why]
    rows = [
        Row("fuzz", "runs: ok / failed", f"{len(results) - len(failed)} / {len(failed)}",
            f"{RUNS} runs, seed fixed then fresh", "; ".join(failed), "0 failed",
            "ok" if not failed else "FAIL"),
        Row("fuzz", "messages sent per run", median_spread([s["sent"] for s in done], "{:.0f}"), f"{examples}"),
        Row("fuzz", "requests per run", median_spread([s["requests"] for s in done], "{:.0f}")),
        Row("fuzz", "answered once per run", median_spread([s["answered_once"] for s in done], "{:.0f}")),
        Row("fuzz", "refused (nack) per run", median_spread([s["refused"] for s in done], "{:.0f}")),
    ]  # fmt: skip
    reasons: dict[str, int] = {}
    for s in done:
        for k, v in s["refused_by_reason"].items():
            reasons[k] = reasons.get(k, 0) + int(v)
    rows.append(Row("fuzz", "refused by reason (all runs)", json.dumps(reasons)))
    for label, key in MUST_BE_ZERO:
        total = sum(int(s[key]) for s in done)
        good = total == 0 and len(done) == len(results)
        rows.append(
            Row("fuzz", f"{label} (all runs)", str(total), target="0", verdict="ok" if good else "FAIL")
        )
    rows.append(
        Row("fuzz", "wall time per run (s)", median_spread([secs for _, secs, _ in results], "{:.0f}"))
    )
    return rows
