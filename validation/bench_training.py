"""Training speed of the U-Net denoiser: patches per second and peak memory, CPU (and GPU).

    python validation/bench_training.py [--steps 10] [--sim]

For each network configuration one Adam step (forward, tape backward, update) is timed
on a batch of random patches cut from an in-memory pool (so the simulator is not in
the timing); ``--sim`` also times one simulated training image (the cost that
``refresh_every`` spreads over the steps). Peak memory: host allocations traced by
``tracemalloc`` (NumPy reports its buffers to it) during the timed steps; on the GPU the
peak of CuPy's memory pool. Writes validation/results/bench_training.txt.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import adjoints.backend as B
from adjoints.nn import UNet, UNetConfig
from cutem.denoise import DEFAULT_NET, TrainConfig, Trainer

CONFIGS = [
    ("default (depth 3, width 16, 1 conv)", DEFAULT_NET, TrainConfig().batch, TrainConfig().patch),
    ("depth 3, width 16, batch 8 of 64²", DEFAULT_NET, 8, 64),
    ("depth 2, width 16, 1 conv", UNetConfig(depth=2, width=16, convs=1), 8, 64),
    ("small (depth 2, width 8, 1 conv)", UNetConfig(depth=2, width=8, convs=1), 8, 64),
    ("deep (depth 3, width 16, 2 convs)", UNetConfig(depth=3, width=16, convs=2), 8, 64),
]


def _pool_source(rng, n=192):
    img = rng.poisson(20.0, (n, n)).astype(np.float32)
    return img, np.full((n, n), 20.0, np.float32)


def bench(xp, cfg, batch, patch, steps):
    tr = Trainer(UNet(cfg), _pool_source, TrainConfig(steps=10**6, batch=batch, patch=patch, pool=4,
                                                        refresh_every=10**6), xp=xp)
    for _ in range(2):  # warm-up (pool fill, allocator, BLAS threads)
        tr.step()
    gpu = xp is not np
    if gpu:
        pool = xp.get_default_memory_pool()
        xp.cuda.Device().synchronize()
        pool.free_all_blocks()
        base = pool.used_bytes()
        peak = base
    else:
        tracemalloc.start()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.step()
        if gpu:
            xp.cuda.Device().synchronize()
            peak = max(peak, pool.total_bytes())
    dt = time.perf_counter() - t0
    if gpu:
        mem = peak
    else:
        mem = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return steps * batch / dt, dt / steps, mem / 2**20, tr.net.n_params()


def sim_time(n_images=2):
    from cutem.denoise import SimulatorPairs

    src = SimulatorPairs()
    rng = np.random.default_rng(0)
    src(rng)
    t0 = time.perf_counter()
    for _ in range(n_images):
        src(rng)
    return (time.perf_counter() - t0) / n_images, src.image_size


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sim", action="store_true", help="also time one simulated training image")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_training.txt"))
    args = ap.parse_args(argv)
    cmd = "python validation/bench_training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# {cmd.strip()}",
             f"# machine: {platform.machine()} {os.cpu_count()}-core CPU, GPU: "
             f"{'yes' if B.cuda_available() else 'none'}; numpy {np.__version__}; threads {B.threads()}",
             f"{'backend':<7}  {'network':<38} {'batch':>5} {'patch':>5} {'weights':>8} "
             f"{'s/step':>7} {'patches/s':>9} {'peak MiB':>8}"]
    backends = [("numpy", np)] + ([("cupy", B.get_xp("gpu"))] if B.cuda_available() else [])
    for bname, xp in backends:
        for name, cfg, batch, patch in CONFIGS:
            pps, sps, mem, npar = bench(xp, cfg, batch, patch, args.steps)
            lines.append(f"{bname:<7}  {name:<38} {batch:>5} {patch:>5} {npar:>8} {sps:>7.3f} {pps:>9.1f} {mem:>8.1f}")
            print(lines[-1], flush=True)
    if not B.cuda_available():
        lines.append("(no GPU on this machine: GPU rows not measured)")
    la = os.getloadavg()
    lines.append(f"load average at the end: {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} (1/5/15 min; "
                 f"above {os.cpu_count()} the machine was shared and the times are inflated)")
    if args.sim:
        t, n = sim_time()
        k = TrainConfig().refresh_every
        lines.append(f"simulator: one {n}x{n} crowded training image (default SimulatorPairs: TMV fragments only, numpy) in {t:.2f} s; "
                     f"with refresh_every={k} that adds {t / k:.3f} s per step")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
