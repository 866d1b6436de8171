"""Batch benchmark (issue 8): 200 micrographs (256², TMV, random parameters) through Dask.

The same batch (same seeds, so the same images) is run twice into fresh folders: serially
(``--scheduler sync``: one item at a time in this process, FFTs and the thread pool on all
cores, as a batch without Dask would run) and with the local process scheduler on every core
(one task per micrograph, one FFT thread per task). Both runs are warm (one extra item runs in
this process first; the forked workers inherit its imports and caches). Reports both wall
times, their ratio (issue target: parallel < 0.6 × serial), the items' wall and CPU seconds,
the FFT/BLAS threads each process ran with, the driver's CPU, whether the two runs wrote
identical images, the load average and the CPU that other jobs used meanwhile (the machine is
shared: other jobs slow both runs, the serial one more, since it has fewer runnable threads).

Then (``--phases N``, default 40) N items per setting are timed phase by phase (scene, potential,
wave + optics, detector, file writing) in fresh processes through ``run_simulation``: with its
defaults, with one BLAS thread (what a sync batch runs), with one FFT and one BLAS thread, and
two of those side by side (what two process workers do).

Items: 256×256 px at 2 Å, 1–3 TMV fragments at random positions and orientations,
defocus 1–3 µm, dose 20–60 e⁻/Å², ice 250–400 Å, 300 kV, the default detector.

Run:  python validation/bench_batch.py [--count 200] [--seed 8] [--phases 40]
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


def _cpu_clock():
    """(CPU seconds of the whole machine, of this process and its reaped children)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:9]]
    machine = (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    t = os.times()
    return machine, t.user + t.system + t.children_user + t.children_system


def _others(c0, c1, wall):
    """Other jobs' share of the machine between two _cpu_clock() readings."""
    other = max(0.0, (c1[0] - c0[0]) - (c1[1] - c0[1]))
    return f"other jobs {other:.1f} CPU-s = {other / wall:.2f} of the {os.cpu_count()} cores"


def _threads(res):
    """'FFT n, BLAS [..] (k processes)' or each distinct setting with its process count."""
    kinds = {}
    for fft, blas in res.workers.values():
        kinds[(fft, blas)] = kinds.get((fft, blas), 0) + 1
    return "; ".join(f"FFT {f}, BLAS {list(b)} ({n} process{'es' if n > 1 else ''})" for (f, b), n in kinds.items())


PHASES = (("preflight", "cutem.validate", "preflight", "scene (structures read, particles placed, checks)"),
          ("potential", "cutem.imaging:ImageModel", "potential", "projected potential + ice"),
          ("wave+optics", "cutem.imaging:ImageModel", "exit_wave", "exit wave"),
          ("wave+optics", "cutem.imaging:ImageModel", "intensity", "lens, |ψ|², binning"),
          ("detector", "cutem.imaging:ImageModel", "detect", "detector"),
          ("write", "cutem.io", "write_mrc", ""), ("write", "cutem.io", "write_png", ""),
          ("write", "cutem.io", "write_tlt", ""), ("write", "cutem.run", "write_resolved", ""))


def phase_worker(count, offset, seed):
    """Run items offset..offset+count-1 one after another in this process (after one warm-up
    item) through :func:`cutem.run.run_simulation` (as ``cutem simulate`` does: the threads as
    the environment sets them, no batch) with timers around the pipeline's phases; print one
    JSON line of ms per item (wall and CPU of the whole process) per phase."""
    import importlib
    import json

    from cutem import batch as Bt
    from cutem.config import load_config

    acc = {}

    def wrap(mod, name, label):
        f = getattr(mod, name)

        def g(*a, **k):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return f(*a, **k)
            finally:
                w = acc.setdefault(label, [0.0, 0.0])
                w[0] += time.perf_counter() - t0
                w[1] += time.process_time() - c0
        setattr(mod, name, g)

    from cutem.run import run_simulation
    for label, where, name, _ in PHASES:
        mod, _, cls = where.partition(":")   # "module" or "module:Class" (a method)
        obj = importlib.import_module(mod)
        wrap(getattr(obj, cls) if cls else obj, name, label)
    work = Path(tempfile.mkdtemp(prefix="cutem-bench-phases-"))
    try:
        (work / "base.toml").write_text(TOML)
        items = Bt.items_from_ranges(load_config(work / "base.toml"), offset + count + 1, seed, RANGES)
        run_simulation(items[-1].config, work, progress=False)  # warm-up: plans, caches
        acc.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        for it in items[offset:offset + count]:
            run_simulation(it.config, work, progress=False)
        acc["TOTAL"] = [time.perf_counter() - t0, time.process_time() - c0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import adjoints.backend as B

    print(json.dumps({"ms": {k: [1e3 * v[0] / count, 1e3 * v[1] / count] for k, v in acc.items()},
                      "fft_threads": B.threads(), "blas_threads": Bt.blas_threads()}))


def phases(count, seed):
    """Per-item phase times: one process with cutem's defaults; one process with 1 FFT and 1
    BLAS thread; two such processes side by side (what two process workers do)."""
    import json
    import subprocess

    def start(offset, env):
        return subprocess.Popen([sys.executable, __file__, "--phase-worker", str(count), str(offset), str(seed)],
                                env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)

    one = {"CUTEM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    runs = []
    for label, envs in (("one process, run_simulation defaults", [{}]),
                        ("one process, BLAS 1 thread (= a sync batch)", [{"OPENBLAS_NUM_THREADS": "1"}]),
                        ("one process, 1 FFT + 1 BLAS thread", [one]),
                        ("two such processes side by side (= 2 workers)", [one, one])):
        load = os.getloadavg()[0]
        procs = [start(k * count, e) for k, e in enumerate(envs)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        ms = {k: [sum(o["ms"][k][j] for o in outs) / len(outs) for j in (0, 1)] for k in outs[0]["ms"]}
        runs.append((label, load, outs[0]["fft_threads"], outs[0]["blas_threads"], ms))
    names = ["preflight", "potential", "wave+optics", "detector", "write", "TOTAL"]
    lines = [f"per item, ms wall / ms CPU (all threads of the process), {count} items each after a warm-up item:",
             f"{'':72s}" + "".join(f"{n:>16s}" for n in names) + "   load"]
    for label, load, fft, blas, ms in runs:
        lines.append(f"{label + f' [FFT {fft}, BLAS {blas}]':72s}"
                     + "".join(f"{ms[n][0]:8.1f}/{ms[n][1]:<7.1f}" for n in names) + f"   {load:.1f}")
    other = {lab: ms["TOTAL"][0] - sum(ms[n][0] for n in names[:-1]) for lab, _, _, _, ms in runs}
    lines.append("rest of run_simulation (atoms rotated for the tilt, memory plan, config hash, stale-file sweep), ms wall: "
                 + ", ".join(f"{v:.1f}" for v in other.values()))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--phases", type=int, default=40, help="items per phase-timing run (0: skip)")
    ap.add_argument("--phase-worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase_worker:
        return phase_worker(*args.phase_worker)
    from cutem import batch as Bt
    from cutem import io
    from cutem.config import load_config

    work = Path(tempfile.mkdtemp(prefix="cutem-bench-batch-"))
    try:
        (work / "base.toml").write_text(TOML)
        cfg = load_config(work / "base.toml")
        items = Bt.items_from_ranges(cfg, args.count, args.seed, RANGES)
        # warm-up outside both timings: the first item of a process pays lazy imports and
        # caches (0.6 s); the forked workers of the parallel run inherit them from this process,
        # so the serial run must not pay them either
        spare = Bt.items_from_ranges(cfg, args.count + 1, args.seed, RANGES)[-1]
        t0 = time.perf_counter()
        Bt.run_batch([spare], work / "warm-up", scheduler="sync", progress=False)
        t_warm = time.perf_counter() - t0
        load0, k0 = os.getloadavg(), _cpu_clock()
        t0 = time.perf_counter()
        serial = Bt.run_batch(items, work / "serial", scheduler="sync", progress=False)
        t_serial = time.perf_counter() - t0
        load1, k1 = os.getloadavg(), _cpu_clock()
        t0, c0 = time.perf_counter(), time.process_time()
        par = Bt.run_batch(items, work / "parallel", scheduler="processes", progress=False)
        t_par, cpu_driver = time.perf_counter() - t0, time.process_time() - c0
        load2, k2 = os.getloadavg(), _cpu_clock()
        import mrcfile

        busy_serial = sum(float(r["seconds"]) for r in Bt.read_manifest(work / "serial").values())
        busy_par = sum(float(r["seconds"]) for r in Bt.read_manifest(work / "parallel").values())
        cpu_serial = sum(t["cpu_seconds"] for t in serial.tasks.values())
        cpu_par = sum(t["cpu_seconds"] for t in par.tasks.values())

        same = 0
        for it in items:
            ok = True
            for name in (it.config.output + ".mrc", it.config.output + "_noisefree.mrc"):
                with mrcfile.open(work / "serial" / name) as a, mrcfile.open(work / "parallel" / name) as b:
                    ok = ok and bool(np.array_equal(a.data, b.data))
            same += ok
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
        f"load average before {load0[0]:.1f}; {_others(k0, k1, t_serial)})",
        f"parallel (dask process scheduler, {os.cpu_count()} workers):       {t_par:8.1f} s  ({par.done} items, "
        f"load average before {load1[0]:.1f}, after {load2[0]:.1f}; {_others(k1, k2, t_par)})",
        f"parallel / serial = {t_par / t_serial:.2f}  (target < 0.6; both warm: one extra item ran in this process "
        f"first, {t_warm:.2f} s, its imports and caches are inherited by the forked workers)",
        f"sum of the items' own seconds: serial {busy_serial:.1f} s, parallel {busy_par:.1f} s "
        f"(an item takes {busy_par / busy_serial:.2f}x as long while another runs beside it: the two "
        f"vCPUs and other jobs' load limit the speed-up to {busy_par / t_par:.2f} items at a time)",
        f"CPU seconds of the items (all threads of the process running them): serial {cpu_serial:.1f} s, "
        f"parallel {cpu_par:.1f} s ({cpu_par / cpu_serial:.2f}x)",
        f"threads (FFT, BLAS per library) of the processes that ran items: serial {_threads(serial)}, "
        f"parallel {_threads(par)}",
        f"driver process during the parallel run (Dask scheduling, manifest rewrites): {cpu_driver:.2f} s CPU",
        f"identical images (noisy and noise-free, bit for bit) serial vs parallel: {same} of {args.count}",
        f"re-run of the finished batch: {again.done} simulated, {again.skipped} skipped, {t_skip:.1f} s",
    ]
    if args.phases:
        lines += ["", *phases(args.phases, args.seed)]
    text = "\n".join(lines) + "\n"
    out = HERE / "results" / "bench_batch.txt"
    with io.atomic_path(out, suffix=".txt") as tmp:
        Path(tmp).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
