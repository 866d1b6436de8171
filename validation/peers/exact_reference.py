"""Whose projected potential is right? cutem, abTEM and cryoJAX against the exact sum.

The exact band-limited projected potential of a set of atoms on a grid is the Fourier sum
V̂(q) = Σⱼ K f_Zⱼ(q/2) e^{−2πi q·rⱼ} at every grid frequency below Nyquist, evaluated atom by
atom with no scatter, no grouping and no interpolation (:func:`cutem.potential.exact_fourier_potential`,
float64). abTEM's infinite projection spreads each atom bilinearly onto the grid and divides
its spectrum by one sinc (the transfer function of bilinear spreading is sinc²), so what it
approximates is the pixel-averaged potential, the exact spectrum times sinc(q_x px)·sinc(q_y px);
cryoJAX's Gaussians integrated over pixels approximate the same. Each code is compared with
the reference it approximates (cutem: point values; abTEM, cryoJAX: pixel averages), by the
relative L2 of the spectra below half Nyquist (where all three claim accuracy) and over the
full band, with B = 0 (the peers have no B-factors) and the scenes of validation/bench.py.

Run:  python validation/peers/exact_reference.py [--cases tmv1_512_projection,tmv3_1024_projection]
(needs the peers environment of validation/peers/setup.sh). Writes
validation/results/peers_exact_reference.txt.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from validation.peers import compare as C  # noqa: E402

OUT = ROOT / "validation" / "results" / "peers_exact_reference.txt"


def pixel_average(v):
    fy = np.fft.fftfreq(v.shape[0])[:, None]
    fx = np.fft.fftfreq(v.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(v) * np.sinc(fy) * np.sinc(fx)).real


def run_case(case, python):
    from cutem.potential import exact_fourier_potential, projected_potential
    from cutem.structure import Atoms

    rows = []
    with tempfile.TemporaryDirectory() as d:
        npz = Path(d) / "atoms.npz"
        cfg, atoms = C.write_atoms(case, npz)
        n, px = cfg.detector.nx, cfg.detector.pixel_size_A
        a0 = Atoms(atoms.positions, atoms.elements, atoms.species, np.zeros(atoms.n), atoms.occupancies)
        t0 = time.perf_counter()
        exact = exact_fourier_potential(a0, (n, n), px)[0]
        t_exact = time.perf_counter() - t0
        exact_avg = pixel_average(exact)
        ours = projected_potential(a0, (n, n), px, dtype=np.float64)[0]
        rows.append((case, "cutem (cubic B-spline)", "point values", ours, exact))
        for code in ("abtem", "cryojax"):
            out = Path(d) / f"{code}.npz"
            info = C.run_one(python, code, npz, out, repeats=0)
            if "error" in info:
                rows.append((case, code, f"NOT RUN: {info['error']}", None, None))
                continue
            pot = np.load(out)["potential"].astype(np.float64)
            pot = pot.T if code == "abtem" else pot / C.CRYOJAX_PER_VOLT
            label = f"{code} {info.get('version', '')}"
            rows.append((case, label, "pixel averages", pot, exact_avg))
    lines = []
    for case_, name, ref_name, v, ref in rows:
        if v is None:
            lines.append(f"{case_:24s} {name:26s} {ref_name}")
            continue
        lines.append(f"{case_:24s} {name:26s} {ref_name:15s} {100 * C.spectra_diff(v, ref):9.3f}% "
                     f"{100 * C.spectra_diff(v, ref, half=False):9.2f}% {100 * (v.mean() / ref.mean() - 1):+9.4f}%")
    return lines, atoms.n, t_exact


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="tmv1_512_projection,tmv3_1024_projection")
    ap.add_argument("--peers-python", default="/tmp/peers-venv/bin/python")
    args = ap.parse_args(argv)
    out = [f"# command: python validation/peers/exact_reference.py --cases {args.cases}",
           f"# machine: {platform.machine()}, 2-core CPU, no GPU, python {platform.python_version()}, "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
           "# B = 0, vacuum, 1 Å pixels; reference: the exact band-limited Fourier sum (float64), and its",
           "# pixel average (× sinc·sinc) for the codes that average over pixels (module docstring)",
           f"{'case':24s} {'code':26s} {'reference':15s} {'L2 <Nyq/2':>10s} {'L2 full':>10s} {'mean':>10s}"]
    for case in args.cases.split(","):
        lines, n, t = run_case(case, args.peers_python)
        out += lines
        out.append(f"#   {case}: {n} atoms, exact sum {t:.1f} s")
    text = "\n".join(out) + "\n"
    print(text, end="")
    OUT.write_text(text)


if __name__ == "__main__":
    main()
