"""Train the two packaged denoisers (cutem/data/denoiser.h5, denoiser_particles.h5) on
simulations only, with the commands a user would type (issue 19).

    python validation/train_default_denoiser.py [--steps N] [--which micrograph|particles|both]

Structures: the packaged TMV fragment and 1HVR plus adenylate kinase and 4E43 from
../shared/data/pdb (the benchmark's test structures 1HVR/1F2N are scored on other
instruments and fields). Micrographs: ``cutem train-denoiser`` without a configuration, i.e.
:class:`cutem.denoise.InstrumentPairs` (pixel sizes 0.8-4 Å, 200/300 kV, four real
detectors, amorphous ice, damage, carbon edges, contaminants). Particle stacks: the same
instruments as whole 64² boxes with a centred particle (``--boxes 64``). The log of each
run (command, machine, time, final loss) goes to validation/results/denoiser_training.txt.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PDB = ROOT.parent / "shared" / "data" / "pdb"


def command(which, steps, out, export):
    structs = ["--structure", "tmv", "--structure", str(ROOT / "cutem" / "data" / "pdb" / "1hvr.pdb"),
               "--structure", str(PDB / "adk_open.pdb"), "--structure", str(PDB / "4E43.pdb")]
    cmd = [sys.executable, "-m", "cutem.cli", "train-denoiser", "-o", str(out), "--export", str(export),
           "--steps", str(steps), "-q", "--device", "cpu", *structs]
    if which == "particles":
        cmd += ["--boxes", "64", "--batch", "8", "--pool", "32", "--refresh-every", "4"]
    else:
        # without negated pairs the default 2e-3 diverged at step ~500 (loss 0.06 -> 13; the log)
        cmd += ["--lr", "1e-3"]
    return cmd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--which", choices=("micrograph", "particles", "both"), default="both")
    ap.add_argument("--work", default="/tmp/cutem_default_denoiser")
    a = ap.parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    log = ROOT / "validation" / "results" / "denoiser_training.txt"
    for which in (("micrograph", "particles") if a.which == "both" else (a.which,)):
        name = "denoiser.h5" if which == "micrograph" else "denoiser_particles.h5"
        cmd = command(which, a.steps, Path(a.work) / f"ckpt_{name}", ROOT / "cutem" / "data" / name)
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if res.returncode:
            sys.exit(res.stderr)
        with open(log, "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.uname().machine}, "
                    f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n$ {' '.join(cmd[1:])}\n"
                    f"{res.stdout.strip()}\nwall {dt:.0f} s\n\n")
        print(res.stdout.strip())


if __name__ == "__main__":
    main()
