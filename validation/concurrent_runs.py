"""Concurrent runs on one output name: ``N`` ``cutem simulate`` processes with different seeds
write the same NAME into one folder at once; afterwards every file of the set must come from
one run (its seed, read from NAME_params.toml and the MRC labels), whole.

``python -m validation.concurrent_runs [--trials 20] [--runs 4]``; tests/test_transactions.py
runs two trials.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from validation.fuzz_cli import CONFIG, pdb_text

NAME = "fz"


def _seeds_of_set(out: Path):
    """The seed each file of the set was written with (params file, MRC labels, STAR/PNG by content)."""
    import mrcfile

    seeds = {"params": tomllib.loads((out / f"{NAME}_params.toml").read_text())["seed"]}
    for f in (f"{NAME}.mrc", f"{NAME}_noisefree.mrc"):
        with mrcfile.open(out / f, permissive=True) as m:
            lab = bytes(m.header.label[0]).decode("ascii", "ignore")
        seeds[f] = int(lab.split("seed=")[1].split()[0])
    return seeds


def trial(d: Path, runs=4):
    out = d / "out"
    cutem = shutil.which("cutem")
    procs = [subprocess.Popen([cutem, "simulate", str(d / "cfg.toml"), "--out", str(out), "--seed", str(100 + k),
                               "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(runs)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    if any(p.returncode != 0 for p in procs):
        return False, f"a run failed: {errs}"
    seeds = _seeds_of_set(out)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    ok = len(set(seeds.values())) == 1 and not leftovers
    return ok, f"seeds {seeds}, leftovers {leftovers}"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--runs", type=int, default=4)
    a = ap.parse_args(argv)
    bad = 0
    for t in range(a.trials):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "tiny.pdb").write_text(pdb_text())
            (d / "cfg.toml").write_text(CONFIG)
            ok, what = trial(d, a.runs)
            bad += not ok
            print(f"trial {t}: {'whole' if ok else 'MIXED'} ({what})")
    print(f"{a.trials - bad} of {a.trials} trials: the final set is one run's, whole")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
