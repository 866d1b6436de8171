"""CTF correction of a simulated TMV tilt series at 3 µm defocus: FSC to the noise-free volume.

    python validation/tomo_ctf.py                       # 400² px of 5 Å, 1, 3 and 10 e⁻/Å² per tilt
    python validation/tomo_ctf.py --pixel 10 --size 200 --out validation/results/tomo_ctf_10A.txt

(about 6 min on 2 cores for the default, 1.5 min with ``--no-halves``; 20 s for the 10 Å one
with ``--no-halves``).

The series is the TMV example's (``examples/tomography_pipeline.py``: the default TMV scene,
200 kV, single-axis tilts −60..60° in 2° steps = 61 tilts, seed 0), built by the example's
``make_config`` and simulated by :func:`cutem.pipeline.simulate`, with the defocus set to
``--defocus`` (3 µm underfocus by default), the field the example's 2000 Å (``--size`` ×
``--pixel``) and each ``--dose`` per tilt (the example's is 1 e⁻/Å²). Each stack becomes contrast
(I / mean − 1, with the sign the example reads off the noise-free 0° image) and is
reconstructed by :func:`cutem.tomo.reconstruct` (WBP, Shepp-Logan: what ``cutem reconstruct``
runs) after one of

- ``none``: no CTF correction;
- ``phaseflip``: :func:`cutem.ctfcorrect.correct_ctf` mode ``phaseflip`` (defocus gradient
  across the tilted field, the ladder of the default tolerance), as ``cutem reconstruct
  --ctf phaseflip``;
- ``wiener``: the same, mode ``wiener`` with ``--wiener-snr`` (default 1, the CLI's);
- ``phaseflip flat``: the example's own ``to_contrast`` (one sign(CTF) at the axis defocus,
  no gradient), for comparison;
- ``phaseflip + halves`` (noisy series only): phase flipping, then the tomogram denoised from
  halves of the tilts (:func:`cutem.tomo_denoise.denoise_halves`), as ``cutem reconstruct
  --ctf phaseflip --denoise halves``.

Each tomogram is scored against the ground-truth potential (the example's ``ground_truth``)
with :func:`cutem.tomo.fsc` inside the example's soft mask around the particles and with
the masked mean removed (as ``validation/tomo_denoise.py``). Resolution at a threshold is
the first downward crossing of the FSC through it (linear in frequency between shells),
searched from the first shell where the FSC reaches the threshold (the lowest shells,
≥ 1000 Å, are dominated by the mask, the ice and the missing wedge and can start below it).
The first CTF zero is where χ(q) = π for the CTF of :mod:`cutem.ctfcorrect` at the
simulated voltage, Cs and amplitude contrast.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def first_zero_A(defocus_A, voltage_kV, cs_mm, amplitude_contrast):
    """Resolution (Å) of the first zero of sin χ: χ(q) = π, the smaller root in q²."""
    from cutem.electron import wavelength_A

    lam = wavelength_A(voltage_kV)
    a = math.pi * lam * defocus_A
    b = 0.5 * math.pi * cs_mm * 1e7 * lam ** 3
    c = math.pi - math.asin(min(max(amplitude_contrast, 0.0), 1.0))
    q2 = c / a if b == 0 else (a - math.sqrt(a * a - 4.0 * b * c)) / (2.0 * b)
    return 1.0 / math.sqrt(q2)


def crossing_A(freq, curve, threshold, from_A=500.0):
    """1/frequency of the first downward crossing of ``threshold`` at frequencies above
    1/``from_A``, searched from the first such shell where the curve reaches the threshold."""
    start = max(1, int(np.searchsorted(freq, 1.0 / from_A)))
    above = np.nonzero(curve[start:] >= threshold)[0]
    if len(above) == 0:
        return float("nan")
    for i in range(start + above[0] + 1, len(curve)):
        if curve[i] < threshold:
            f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
            f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
            return 1.0 / f
    return 1.0 / freq[-1]  # above the threshold up to Nyquist: report Nyquist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixel", type=float, default=5.0, help="pixel size (Å)")
    ap.add_argument("--size", type=int, default=400, help="image side (px)")
    ap.add_argument("--step", type=float, default=2.0, help="tilt step (°) over −60..60")
    ap.add_argument("--dose", default="1,3,10", help="e⁻/Å² per tilt; a comma-separated list simulates each")
    ap.add_argument("--fsc-from", type=float, default=500.0,
                    help="resolution crossings searched at frequencies above 1/this (Å)")
    ap.add_argument("--defocus", type=float, default=30000.0, help="underfocus (Å)")
    ap.add_argument("--wiener-snr", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-halves", action="store_true", help="skip the 'phaseflip + halves' rows (the slow ones)")
    ap.add_argument("--out", default=str(ROOT / "validation" / "results" / "tomo_ctf.txt"))
    args = ap.parse_args(argv)

    import tomography_pipeline as T

    from cutem import ctfcorrect, pipeline, tomo, tomo_denoise

    t_start = time.perf_counter()
    doses = [float(d) for d in args.dose.split(",")]
    base = T.make_config(args.size, args.pixel, args.step, args.seed)
    base = base.replace(optics=base.optics.replace(defocus_u_A=args.defocus, defocus_v_A=args.defocus))
    px = base.detector.pixel_size_A
    angles = np.asarray(base.geometry.tilt_angles_deg)
    axis = base.geometry.tilt_axis_deg
    op = base.optics
    nz = int(np.ceil(1.3 * max(base.sample.thickness_center_A, 1.0) / px / 2.0)) * 2
    series, t_sim = [], 0.0
    for dose in doses:
        cfg = base.replace(detector=base.detector.replace(dose_e_per_A2=dose))
        t0 = time.perf_counter()
        res = pipeline.simulate(cfg, progress=False)
        t_sim += time.perf_counter() - t0
        series.append((dose, np.asarray(res.images, np.float64), np.asarray(res.noise_free, np.float64)))
    noise_free = series[0][2]
    gt = T.ground_truth(base, nz)
    k0 = int(np.argmin(np.abs(angles)))
    proj0 = gt.sum(axis=0)
    # the example's sign for its own to_contrast (optics.ctf_2d's sign convention), and the
    # sign of the contrast whose phase-flipped 0° noise-free image (correct_ctf, sign(sin χ),
    # +1 below the first zero) correlates positively with the projected potential
    probe = T.to_contrast(noise_free[k0:k0 + 1], base, 1.0)[0]
    flat_sign = 1.0 if float((probe * proj0).sum()) >= 0 else -1.0
    probe = ctfcorrect.correct_ctf(noise_free[k0:k0 + 1] / noise_free[k0].mean() - 1.0, angles[k0:k0 + 1], axis,
                                   px, [op.defocus_u_A], op.voltage_kV, op.cs_mm, op.amplitude_contrast)[0]
    sign = 1.0 if float((probe * proj0).sum()) >= 0 else -1.0
    soft, _, _ = T.masks(gt, px)
    w = soft / soft.sum()

    def centred(v):
        return (v - (v * w).sum()) * soft

    def contrast(stack):
        return sign * np.stack([im / im.mean() - 1.0 for im in stack])

    defoci = np.full(len(angles), op.defocus_u_A)

    def corrected(stack, mode):
        if mode == "none":
            return contrast(stack)
        if mode == "phaseflip flat":
            return T.to_contrast(stack, base, flat_sign)
        return ctfcorrect.correct_ctf(contrast(stack), angles, axis, px, defoci, op.voltage_kV, op.cs_mm,
                                      op.amplitude_contrast, mode=mode, wiener_snr=args.wiener_snr)

    zero = first_zero_A(op.defocus_u_A, op.voltage_kV, op.cs_mm, op.amplitude_contrast)
    rows, curves, freq, ccs = [], {}, None, []
    cases = [(f"{d:g} e/A2", f"d{d:g}", im) for d, im, _ in series] + [("noise-free", "nf", noise_free)]
    for d, im, nf in series:
        ccs.append(f"{d:g} e/A2: {np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(im, nf)]):.3f}")
    def rec(st, a):
        return tomo.reconstruct(st, np.asarray(a), axis, nz, method="wbp", filter="shepp-logan")

    for data_name, short, stack in cases:
        modes = ("none", "phaseflip", "wiener", "phaseflip flat") + (() if short == "nf" or args.no_halves
                                                                    else ("phaseflip + halves",))
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "phaseflip + halves":   # cutem reconstruct --ctf phaseflip --denoise halves
                halves = tomo_denoise.half_tomograms(corrected(stack, "phaseflip"), angles, rec)
                vol = tomo_denoise.denoise_halves(halves)[0]
            else:
                vol = rec(corrected(stack, mode), angles)
            freq, f, _ = tomo.fsc(centred(vol), centred(gt), px)
            r5, r143 = crossing_A(freq, f, 0.5, args.fsc_from), crossing_A(freq, f, 0.143, args.fsc_from)
            beyond = float(np.mean(f[freq > 1.0 / zero]))
            name = f"{data_name}, {mode}"
            rows.append((name, r5, r143, r5 < zero, beyond, time.perf_counter() - t0))
            curves[f"{short} {mode.replace('phaseflip', 'flip').replace(' + ', '+')}"] = f
            print(f"{name:28s} FSC0.5 {r5:7.1f} A  FSC0.143 {r143:7.1f} A  FSC past zero {beyond:6.3f}"
                  f"  ({rows[-1][-1]:.0f} s)", flush=True)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines = [
        "# command: python validation/tomo_ctf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, numpy backend; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; total {time.perf_counter() - t_start:.0f} s "
        f"(simulation {t_sim:.0f} s)",
        f"# TMV example scene, {len(angles)} tilts {angles[0]:g}..{angles[-1]:g} deg, {args.size}^2 px of {px:g} A "
        f"(Nyquist {2 * px:g} A), volume {nz}x{args.size}x{args.size}, dose per tilt {args.dose} e/A^2 "
        f"(x{len(angles)} tilts in total), seed {args.seed}",
        f"# optics: {op.voltage_kV:g} kV, defocus {op.defocus_u_A:g} A underfocus, Cs {op.cs_mm:g} mm, "
        f"amplitude contrast {op.amplitude_contrast:g} (in the correction); "
        f"first CTF zero (chi = pi) at {zero:.1f} A",
        f"# per-tilt correlation noisy vs noise-free image, mean: {'; '.join(ccs)}",
        "# reconstruction: cutem.tomo.reconstruct wbp shepp-logan; correction: cutem.ctfcorrect.correct_ctf "
        f"(defocus gradient ladder, default tolerance; wiener snr {args.wiener_snr:g}); 'phaseflip flat': the "
        "example's to_contrast (one sign(CTF) per image, no gradient)",
        "# FSC vs the ground-truth potential in the example's soft mask (masked mean removed); resolution = "
        f"first downward crossing at frequencies above 1/{args.fsc_from:g} A, searched from the first shell "
        "there that reaches the threshold, interpolated; 'FSC past zero': mean FSC from the first zero to Nyquist",
        "",
        f"{'tomogram':28s} {'FSC0.5 A':>9s} {'FSC0.143 A':>10s} {'0.5 past 1st zero':>18s} "
        f"{'FSC past zero':>13s} {'time s':>7s}",
    ]
    lines += [f"{n:28s} {a:9.1f} {b:10.1f} {('yes' if z else 'no'):>18s} {m:13.3f} {t:7.0f}"
              for n, a, b, z, m, t in rows]
    lines += ["", f"first CTF zero: {zero:.1f} A", "", "FSC per shell:",
              f"{'freq 1/A':>9s} {'res A':>7s} " + " ".join(f"{k[:14]:>14s}" for k in curves)]
    lines += [f"{freq[i]:9.4f} {1 / freq[i]:7.1f} " + " ".join(f"{curves[k][i]:14.3f}" for k in curves)
              for i in range(1, len(freq))]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n".join(lines[:len(rows) + 11]))
    return rows, zero


if __name__ == "__main__":
    main()
