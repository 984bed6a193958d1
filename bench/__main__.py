"""Run every benchmark module and print one table of results.

Each module in `bench/` named `bench_*.py` exposes `run(quick: bool) -> list[Row]`.
Numbers are compared against a reference measured in the same run (a ratio),
because shared machines are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback

import bench
from bench.common import Row, print_table

ONLY_WHEN_NAMED = frozenset({"bench_city"})
"""Left out of the all-benches run: the city bench takes about 20 minutes per repeat."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all but city)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    mods = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    if args.names:
        unknown = [n for n in args.names if f"bench_{n}" not in mods and n not in mods]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(mods)}")
        mods = [m for m in mods if m in args.names or m.removeprefix("bench_") in args.names]
    else:
        mods = [m for m in mods if m not in ONLY_WHEN_NAMED]
    rows: list[Row] = []
    crashed = 0
    tails: list[str] = []
    for name in mods:
        t0 = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            rows.extend(module.run(args.quick))
        except Exception as exc:  # a bench that crashes is a row of the table, not only a traceback
            traceback.print_exc()
            crashed += 1
            why = f"{type(exc).__name__}: {exc}"
            rows.append(
                Row(name.removeprefix("bench_"), "run", "crashed", why, target="no crash", verdict="FAIL")
            )
        else:
            tail = getattr(module, "json_tail", None)  # a bench whose last line must be its JSON
            if callable(tail) and (line := tail()):
                tails.append(str(line))
        print(f"  {name} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print_table(rows)
    for line in tails:
        print(line)
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
