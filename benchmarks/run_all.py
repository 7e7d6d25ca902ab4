"""``make bench``: every benchmark, one after the other, then one table of the headline figures
with their targets (each script also prints its own figures and ratios as it goes).

    .venv/bin/python -m benchmarks.run_all [--quick]

``--quick`` shrinks every run (for a smoke test of the scripts; its figures are not the ones
the targets are about).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks import common
from benchmarks.common import say, table

FULL = [
    ("receiver", []),
    ("workers", []),
    ("freshness", []),
    ("backfill", []),
]
QUICK = [
    ("receiver", ["--seconds", "3", "--rounds", "1", "--rate-seconds", "3", "--rate-rounds", "1", "--bodies", "300"]),
    ("workers", ["--jobs", "2000", "--issues", "500", "--forking-jobs", "50"]),
    ("freshness", ["--seconds", "5", "--bulk", "300"]),
    ("backfill", ["--issues", "2000", "--latency-ms", "20", "--memory-issues", "5000"]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="benchmark names (receiver, workers, freshness, backfill)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.only:
        plan = [p for p in plan if p[0] in args.only]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    say(
        f"jira-mirror benchmarks — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {platform.node()}, "
        f"{os.cpu_count()} cores, load average {' '.join(load)}, Python {platform.python_version()}"
        + (" (QUICK: figures not comparable with the targets)" if args.quick else "")
    )
    results = tempfile.NamedTemporaryFile(prefix="jm-bench-", suffix=".jsonl", delete=False)
    results.close()
    env = dict(os.environ, BENCH_RESULTS_FILE=results.name, PYTHONUNBUFFERED="1")
    failed = []
    started = time.monotonic()
    for name, extra in plan:
        say("")
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *extra], cwd=common.ROOT, env=env).returncode
        if code != 0:
            failed.append(name)
            say(f"!! benchmarks.{name} exited {code}")
    with open(results.name) as f:
        figures = [json.loads(line) for line in f if line.strip()]
    os.unlink(results.name)
    rows = []
    for fig in figures:
        value = fig["value"]
        shown = (
            "—" if value is None else (f"{value:,.2f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}")
        )
        met = {True: "met", False: "NOT MET", None: ""}[fig["met"]]
        rows.append([fig["figure"], f"{shown} {fig['unit']}".strip(), fig["target"], met, fig["note"]])
    say("")
    say(f"== summary ({(time.monotonic() - started) / 60:.1f} min)")
    say(table(rows, ["figure", "value", "target", "", "notes"]))
    if failed:
        say(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
