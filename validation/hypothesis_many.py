"""The hypothesis suites of CI with many more examples.

Runs tests/test_hypothesis_config.py and tests/test_corrupt_files.py with
``CUTEM_HYPOTHESIS_SCALE`` (default 20: twenty times the CI number of examples of every
property, random rather than CI's derandomised draws), reads hypothesis' statistics and
prints/writes a table of the examples run per property to validation/results/hypothesis_many.txt.

Usage: ``python -m validation.hypothesis_many [--scale 20]``
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["tests/test_hypothesis_config.py", "tests/test_corrupt_files.py"]


def parse_statistics(text):
    """{test id: [passing, failing, invalid]} summed over hypothesis' phases."""
    stats, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^(tests/\S+::\S+):\s*$", line.strip())
        if m:
            cur = m.group(1)
            stats.setdefault(cur, [0, 0, 0])
            continue
        m = re.search(r"(\d+) passing examples?, (\d+) failing examples?, (\d+) invalid examples?", line)
        if m and cur:
            for i in range(3):
                stats[cur][i] += int(m.group(i + 1))
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--out", default=str(ROOT / "validation" / "results" / "hypothesis_many.txt"))
    args = ap.parse_args(argv)
    env = dict(os.environ, CUTEM_HYPOTHESIS_SCALE=str(args.scale))
    t0 = time.time()
    stats, summary, rc, tails = {}, [], 0, []
    for suite in SUITES:  # one process per file: a crash in one cannot hide the other's counts
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "--hypothesis-show-statistics", suite], cwd=ROOT, env=env, capture_output=True, text=True)
        stats.update(parse_statistics(r.stdout))
        summary += [f"{suite}: {ln.strip()}" for ln in r.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
        if r.returncode != 0:
            rc = rc or r.returncode
            tails.append(f"{suite}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    wall = time.time() - t0
    total = sum(v[0] for v in stats.values())
    failing = sum(v[1] for v in stats.values())
    lines = [f"# python -m validation.hypothesis_many --scale {args.scale:g}",
             f"# machine: {platform.machine()} {os.cpu_count()}-core CPU, no GPU; Python {platform.python_version()}; "
             f"{wall:.0f} s",
             f"# CI runs the same properties with CUTEM_HYPOTHESIS_SCALE=1 (derandomised); here x{args.scale:g}, random",
             "", f"{'property':<95} {'passing':>8} {'failing':>8} {'invalid':>8}"]
    for k, (p, f, i) in stats.items():
        lines.append(f"{k:<95} {p:>8d} {f:>8d} {i:>8d}")
    lines += ["", f"total passing examples: {total}   failing: {failing}", *summary]
    text = "\n".join(lines + tails) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
