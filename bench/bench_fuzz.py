"""The long variant of the topic fuzzer: tests/app/test_fuzz_topics.py with 5,000 messages.

`make test` runs the short variant (EDGE_FUZZ_EXAMPLES, 240 by default). This runs the same
test in a child pytest with EDGE_FUZZ_EXAMPLES=5000 (600 with --quick) against the broker and
database the tests use (EDGE_TEST_MQTT_URL / EDGE_TEST_DATABASE_URL when set), then reads the
figures the test wrote to its `fuzz_summary.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row

ROOT = Path(__file__).resolve().parent.parent


def run(quick: bool) -> list[Row]:
    examples = 600 if quick else 5000
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        env = os.environ | {"EDGE_FUZZ_EXAMPLES": str(examples)}
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "tests/app/test_fuzz_topics.py", "-q", "-k", "every"]
        cmd += ["-p", "no:cacheprovider", f"--basetemp={tmp}"]
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=examples + 600,
            check=False,
        )
        secs = time.perf_counter() - t0
        found = sorted(Path(tmp).rglob("fuzz_summary.json"))
        if not found:
            tail = (proc.stdout + proc.stderr)[-2000:]
            return [
                Row(
                    "fuzz", "run", "no summary", verdict="FAIL", target=f"pytest rc {proc.returncode}: {tail}"
                )
            ]
        s = json.loads(found[0].read_text())
    ok = proc.returncode == 0

    def row(metric: str, value: object, target: str = "", good: bool | None = None) -> Row:
        verdict = "" if good is None else ("ok" if good else "FAIL")
        return Row("fuzz", metric, str(value), target=target, verdict=verdict)

    return [
        row("messages sent", s["sent"], f"{examples}"),
        row("requests", s["requests"]),
        row("answered once", s["answered_once"]),
        row("refused (nack)", s["refused"]),
        row("refused by reason", json.dumps(s["refused_by_reason"])),
        row("unanswered", s["unanswered"], "0", s["unanswered"] == 0),
        row("answered twice or more", s["answered_twice_or_more"], "0", s["answered_twice_or_more"] == 0),
        row("misrouted answers", s["misrouted"], "0", s["misrouted"] == 0),
        row("crashes", s["crashes"], "0", s["crashes"] == 0),
        row("physics violations", s["physics_violations"], "0", s["physics_violations"] == 0),
        row("wall time", f"{secs:.0f} s", "", ok),
    ]
