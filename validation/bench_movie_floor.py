"""A lower bound on the time of a movie (issue 14): the primitives every frame must run.

A movie of N frames (cutem.movie) records N images with their own shot noise, each blurred
by the detector's MTF, and with local beam-induced motion each interpolated on its own
displaced grid. Whatever else is shared between frames, these are not: N independent
Poisson fields (cutem.detector.sample_poisson, on the engine's threads), N MTF blurs (one
rfft2 + irfft2 pair each, B.rfft2/B.irfft2 in float32), and N cubic B-spline interpolations
(scipy.ndimage.map_coordinates, order 3, grid-wrap, on row blocks over the threads, as
cutem.movie.displace runs it). The global shift's phase ramp (with the spline prefilter
folded in) costs one more FFT pair per frame, and the noise-free image that cutem writes
beside the frames one MTF pair per movie (the MTF of the summed expected counts); both are
listed, not counted in the floor. With exposure damage every frame also has its own
specimen, so its own exit wave and optics (not listed: they depend on the specimen and the
optics options). So the floor is N × (Poisson + MTF pair + interpolation), to set against
1.5 × the still image's time.

Run:  python validation/bench_movie_floor.py [--n 4096] [--frames 10] [--repeats 3] [--still-s 1.61]
Writes validation/results/bench_movie_floor.txt (the command, the machine, the load, the table).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def best_of(fn, repeats):
    t = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def primitives(n, repeats, seed=0):
    """Seconds per frame of each primitive at n² float32 (best of ``repeats``)."""
    import adjoints.backend as B
    from cutem.detector import sample_poisson
    from cutem.movie import _ndimage, local_field

    rng = np.random.default_rng(seed)
    mean = (4.0 * (1 + 0.1 * rng.standard_normal((n, n)))).astype(np.float32)   # 40 e⁻/Å² over 10 frames
    img = rng.random((n, n)).astype(np.float32)
    spec_filter = np.exp(-np.add.outer(np.fft.fftfreq(n) ** 2, np.fft.rfftfreq(n) ** 2)).astype(np.float32)
    u = (2.0 * local_field((n, n), rng)).astype(np.float32)   # a few pixels of local motion
    ndimage = _ndimage(np)
    yy = np.arange(n, dtype=np.float32)[:, None]
    xx = np.arange(n, dtype=np.float32)[None, :]

    def poisson():
        sample_poisson(mean, B.default_rng(seed + 1))

    def fft_pair():
        s = B.rfft2(img)
        s *= spec_filter
        B.irfft2(s, s=(n, n))

    def interpolate():
        def rows(sl):
            coords = np.stack([yy[sl] - u[1, sl], xx - u[0, sl]])
            return ndimage.map_coordinates(img, coords, order=3, mode="grid-wrap", prefilter=False,
                                           output=np.float32)

        edges = np.linspace(0, n, B.threads() + 1).astype(int)
        list(B.pool().map(rows, [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]))

    return {"poisson": best_of(poisson, repeats), "mtf_fft_pair": best_of(fft_pair, repeats),
            "cubic_interpolation": best_of(interpolate, repeats)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--still-s", type=float, default=1.61,
                    help="the still image's warm time to compare with (tmv30_4096_projection, "
                         "validation/results/bench_options.txt)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_movie_floor.txt"))
    args = ap.parse_args(argv)
    import adjoints.backend as B
    from validation.bench import device_name

    load0 = os.getloadavg()[0]
    t = primitives(args.n, args.repeats)
    n_f = args.frames
    floor = n_f * sum(t.values())
    rows = [(k, v, n_f * v) for k, v in t.items()]
    lines = [f"{'primitive':<22}{'s / frame':>12}{f'× {n_f} frames':>16}"]
    lines += [f"{k:<22}{v:>12.3f}{tot:>16.3f}" for k, v, tot in rows]
    lines += [f"{'floor (sum)':<22}{sum(t.values()):>12.3f}{floor:>16.3f}",
              f"{'+ shift/prefilter':<22}{t['mtf_fft_pair']:>12.3f}{n_f * t['mtf_fft_pair']:>16.3f}"
              "   (the phase ramp's FFT pair per frame; not in the floor)",
              f"{'+ noise-free sum':<22}{'':>12}{t['mtf_fft_pair']:>16.3f}"
              "   (one MTF pair per movie; not in the floor)",
              "",
              f"1.5 × still ({args.still_s} s) = {1.5 * args.still_s:.2f} s; the floor of {n_f} frames is "
              f"{floor:.2f} s = {floor / args.still_s:.1f} × the still"]
    cmd = " ".join(["python", "validation/bench_movie_floor.py", *(argv if argv is not None else sys.argv[1:])])
    head = [f"command: {cmd}",
            f"machine: {device_name('cpu')}, {platform.platform()}, python {platform.python_version()}, "
            f"numpy {np.__version__}; {B.threads()} engine threads ({B.fft_backend_name(np)})",
            f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at the start {load0:.1f}, "
            f"at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine slows every number)",
            f"grid {args.n}², float32, best of {args.repeats}; Poisson means ~4 counts/pixel (40 e⁻/Å² over 10 "
            f"frames), local motion ~2 px RMS", ""]
    text = "\n".join(head + lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)
    return t


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
