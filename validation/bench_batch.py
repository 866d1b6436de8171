"""Batch benchmark (issue 8): 200 micrographs (256², TMV, random parameters) through Dask.

The same batch (same seeds, so the same images) is run twice into fresh folders: serially
(``--scheduler sync``: one item at a time in this process, FFTs on all cores) and with the
local process scheduler on every core (one task per micrograph, one FFT thread per task).
Reports both wall times, their ratio (issue target: parallel < 0.6 × serial), whether the two
runs wrote identical images, and the machine's load average (other jobs slow both runs).

Items: 256×256 px at 2 Å, 1–3 TMV fragments at random positions and orientations,
defocus 1–3 µm, dose 20–60 e⁻/Å², ice 250–400 Å, 300 kV, the default detector.

Run:  python validation/bench_batch.py [--count 200]
Writes validation/results/bench_batch.txt.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TMV = HERE.parent / "cutem" / "data" / "tmv"

TOML = f"""seed = 0
output = "mic"
[optics]
voltage_kV = 300.0
defocus_u_A = 20000.0
defocus_v_A = 20000.0
[detector]
nx = 256
ny = 256
pixel_size_A = 2.0
dose_e_per_A2 = 40.0
[sample]
diameter_A = 100000.0
thickness_center_A = 300.0
thickness_edge_A = 300.0
[geometry]
tilt_angles_deg = [0.0]
[[particles]]
name = "TMV"
structure = "{TMV / '2OM3_model1.pdb'}"
transforms = "{TMV / '2OM3_transf.txt'}"
placement = "random"
count = 1
"""
RANGES = {"particles": (1, 3), "defocus_A": (10000.0, 30000.0), "dose_e_per_A2": (20.0, 60.0),
          "ice_thickness_A": (250.0, 400.0)}


def _threads(res):
    """'FFT n, BLAS [..] (k processes)' or each distinct setting with its process count."""
    kinds = {}
    for fft, blas in res.workers.values():
        kinds[(fft, blas)] = kinds.get((fft, blas), 0) + 1
    return "; ".join(f"FFT {f}, BLAS {list(b)} ({n} process{'es' if n > 1 else ''})" for (f, b), n in kinds.items())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args(argv)
    from cutem import batch as Bt
    from cutem import io
    from cutem.config import load_config

    work = Path(tempfile.mkdtemp(prefix="cutem-bench-batch-"))
    try:
        (work / "base.toml").write_text(TOML)
        cfg = load_config(work / "base.toml")
        items = Bt.items_from_ranges(cfg, args.count, args.seed, RANGES)
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        serial = Bt.run_batch(items, work / "serial", scheduler="sync", progress=False)
        t_serial = time.perf_counter() - t0
        load1 = os.getloadavg()
        t0 = time.perf_counter()
        par = Bt.run_batch(items, work / "parallel", scheduler="processes", progress=False)
        t_par = time.perf_counter() - t0
        load2 = os.getloadavg()
        import mrcfile

        busy_serial = sum(float(r["seconds"]) for r in Bt.read_manifest(work / "serial").values())
        busy_par = sum(float(r["seconds"]) for r in Bt.read_manifest(work / "parallel").values())
        cpu_serial = sum(t["cpu_seconds"] for t in serial.tasks.values())
        cpu_par = sum(t["cpu_seconds"] for t in par.tasks.values())

        same = 0
        for it in items:
            name = it.config.output + ".mrc"
            with mrcfile.open(work / "serial" / name) as a, mrcfile.open(work / "parallel" / name) as b:
                same += bool(np.array_equal(a.data, b.data))
        t_skip0 = time.perf_counter()
        again = Bt.run_batch(items, work / "parallel", scheduler="processes", progress=False)
        t_skip = time.perf_counter() - t_skip0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"command: python validation/bench_batch.py --count {args.count} --seed {args.seed}",
        f"machine: {os.cpu_count()}-core CPU, no GPU, {platform.platform()}, python {platform.python_version()}",
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"items: {args.count} micrographs 256x256 at 2 A, TMV 1-3 fragments, random orientations, "
        f"ranges {RANGES}",
        "",
        f"serial (dask sync scheduler, FFTs on all cores):      {t_serial:8.1f} s  ({serial.done} items, "
        f"load average before {load0[0]:.1f})",
        f"parallel (dask process scheduler, {os.cpu_count()} workers):       {t_par:8.1f} s  ({par.done} items, "
        f"load average before {load1[0]:.1f}, after {load2[0]:.1f})",
        f"parallel / serial = {t_par / t_serial:.2f}  (target < 0.6)",
        f"sum of the items' own seconds: serial {busy_serial:.1f} s, parallel {busy_par:.1f} s "
        f"(an item takes {busy_par / busy_serial:.2f}x as long while another runs beside it: the two "
        f"vCPUs and other jobs' load limit the speed-up to {busy_par / t_par:.2f} items at a time)",
        f"CPU seconds of the items (all threads of the process running them): serial {cpu_serial:.1f} s, "
        f"parallel {cpu_par:.1f} s ({cpu_par / cpu_serial:.2f}x)",
        f"threads (FFT, BLAS per library) of the processes that ran items: serial {_threads(serial)}, "
        f"parallel {_threads(par)}",
        f"identical images serial vs parallel: {same} of {args.count}",
        f"re-run of the finished batch: {again.done} simulated, {again.skipped} skipped, {t_skip:.1f} s",
    ]
    text = "\n".join(lines) + "\n"
    out = HERE / "results" / "bench_batch.txt"
    with io.atomic_path(out, suffix=".txt") as tmp:
        Path(tmp).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
