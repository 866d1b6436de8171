"""Benchmark: reconstruct a 512×512×200 volume from 61 tilts (−60..60°, 2°).

    python -m validation.bench_tomo [--device cpu|gpu] [--sirt-iterations N] [--out FILE]

A phantom of random Gaussian blobs is projected with :class:`cutem.tomo.Project`
(axis along y, 90°, the IMOD convention, and along x, 0°), then reconstructed by WBP and
by SIRT. Times are wall-clock seconds including the one-off build of the sparse Radon
matrix (reported separately too); the target is WBP under 20 s on 2 CPU cores, CTF
correction (phase flip in strips, 300 kV, 3 µm, 4 Å pixels) under 2× that.
Also reports the reconstruction error inside the blobs' support against the phantom
(relative RMS, low-passed phantom not used: the missing wedge is part of the error).
Writes the table to validation/results/bench_tomo.txt (or --out).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def phantom(shape, n_blobs=60, seed=0):
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    vol = np.zeros(shape, np.float32)
    z = np.arange(nz)[:, None, None]
    y = np.arange(ny)[None, :, None]
    x = np.arange(nx)[None, None, :]
    for _ in range(n_blobs):
        s = rng.uniform(4, 12)
        cz, cy, cx = rng.uniform(0.25, 0.75) * nz, rng.uniform(0.1, 0.9) * ny, rng.uniform(0.1, 0.9) * nx
        lz, ly, lx = (slice(max(int(c - 3 * s), 0), int(c + 3 * s) + 1) for c in (cz, cy, cx))
        vol[lz, ly, lx] += np.exp(-((z[lz] - cz) ** 2 + (y[:, ly] - cy) ** 2 + (x[:, :, lx] - cx) ** 2)
                                  / (2 * s * s)).astype(np.float32)
    return vol


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sirt-iterations", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs=3, default=(200, 512, 512))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_tomo.txt"))
    args = ap.parse_args(argv)

    import adjoints.backend as B
    from cutem import tomo

    xp = B.get_xp(args.device)
    sync = (lambda: xp.cuda.Device().synchronize()) if xp is not np else (lambda: None)
    shape = tuple(args.shape)
    angles = np.arange(-60.0, 60.1, 2.0)
    vol = phantom(shape)
    support = vol > 0.1 * vol.max()
    rows = []

    def timed(label, f):
        sync()
        t = time.perf_counter()
        out = f()
        sync()
        dt = time.perf_counter() - t
        rows.append((label, dt))
        print(f"{label:55s} {dt:8.2f} s", flush=True)
        return out

    def err(rec):
        rec = B.to_numpy(rec)
        # least-squares scale (WBP of a limited range is not quantitative), then relative RMS
        a = float((rec[support] * vol[support]).sum() / (rec[support] ** 2).sum())
        return float(np.sqrt(((a * rec[support] - vol[support]) ** 2).mean() / (vol[support] ** 2).mean()))

    t = time.perf_counter()
    tomo.radon_matrix(shape[0], shape[1], angles, np.float32)
    rows.append(("build sparse Radon matrix (one-off, host)", time.perf_counter() - t))
    print(f"{rows[-1][0]:55s} {rows[-1][1]:8.2f} s", flush=True)
    errs = {}
    for axis in (90.0, 0.0):
        P = tomo.Project(angles, axis)
        v = xp.asarray(vol)
        stack = timed(f"project phantom, axis {axis:g}° (incl. plan)", lambda: P.apply(v)[0])
        rec = timed(f"WBP {shape[2]}x{shape[1]}x{shape[0]}, 61 tilts, axis {axis:g}° (total)",
                    lambda: tomo.wbp(stack, angles, axis, shape[0], "shepp-logan"))
        errs[f"WBP axis {axis:g}"] = err(rec)
        del rec
    from cutem import ctfcorrect

    host = B.to_numpy(stack)
    timed("CTF phase flip in strips, 61 tilts (4 Å px, 3 µm)",
          lambda: ctfcorrect.correct_ctf(host, angles, 0.0, 4.0, np.full(len(angles), 30000.0)))
    res = timed(f"SIRT (CG, at most {args.sirt_iterations} iterations), axis 0° (total)",
                lambda: tomo.sirt(stack, angles, 0.0, shape[0], args.sirt_iterations))
    errs[f"SIRT {args.sirt_iterations} it axis 0"] = err(res.volume)
    rw = res.residual_weighted
    monotone = all(b < a for a, b in zip(rw, rw[1:]))

    lines = ["# validation/bench_tomo.py — single-axis tomography benchmark",
             f"# command: python -m validation.bench_tomo --device {args.device} "
             f"--sirt-iterations {args.sirt_iterations}",
             f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"device {B.resolve_device(args.device)}, numpy {np.__version__}, python {platform.python_version()}",
             f"# volume (nz, ny, nx) = {shape}, 61 tilts -60..60 step 2, float32",
             "# (no GPU was lent to this session; run with --device gpu where one is)",
             "", f"{'step':55s} {'seconds':>8s}"]
    lines += [f"{label:55s} {dt:8.2f}" for label, dt in rows]
    lines += ["", "relative RMS error in the phantom's support (after a least-squares scale):"]
    lines += [f"  {k:30s} {v:.3f}" for k, v in errs.items()]
    lines += [f"SIRT weighted residual: first {rw[0]:.4g}, last {rw[-1]:.4g}, monotone decrease: {monotone}"]
    wbp_cpu = [dt for label, dt in rows if label.startswith("WBP")]
    ctf = [dt for label, dt in rows if label.startswith("CTF")]
    lines += [f"WBP under 20 s: {all(d < 20 for d in wbp_cpu)} (max {max(wbp_cpu):.1f} s); "
              f"CTF correction under 2x WBP: {ctf[0] < 2 * max(wbp_cpu)} ({ctf[0]:.1f} s)"]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
