"""Denoising and reconstruction of the TMV example's tilt series, against its noise-free volume.

    python validation/tomo_denoise.py --out validation/results/tomo_denoise.txt \
        [--model validation/results/denoiser_default.h5 ...] [--skip fit,n2n-net]

The series is the one of ``python examples/tomography_pipeline.py --full`` (the TMV default
scene, 61 tilts −60..60°, 200² px of 10 Å, 1 e⁻/Å² per tilt, seed 0), simulated again here,
and scored as the example scores it (its ``masks``, ``mid_band_mean`` and centring): FSC with
the ground-truth potential in a soft mask around the particles, averaged over 0.25–0.5 of
Nyquist, and the CNR of the particles against the ice around them. Rows:

- ``wbp raw`` / ``sirt raw``: the raw tilts (phase-flipped contrast) by WBP (Shepp-Logan) and
  SIRT (:func:`cutem.tomo.sirt`, stopped on held-out tilts); ``fit raw``: the contrast before
  flipping, fitted by :func:`cutem.tomo_fit.fit_reconstruct` with the CTF in the model (TV prior,
  λ chosen on held-out tilts);
- ``wbp learned:NAME``: every tilt denoised by a learned U-Net (``--model``, a
  ``cutem train-denoiser`` result) before the same WBP;
- ``n2n wiener`` / ``n2n net``: even/odd tilts reconstructed apart and combined by
  :func:`cutem.tomo_denoise.halves_wiener` or :func:`cutem.tomo_denoise.even_odd_network`;
  ``..., specimen mask``: both halves multiplied by a mask made from their mean
  (:func:`cutem.tomo_denoise.specimen_mask`) first, and the masked mean for comparison;
- ``halves two-stage``: :func:`cutem.tomo_denoise.denoise_halves` (what ``cutem reconstruct
  --denoise halves`` runs), also on further noise draws of the series (``--draws``);
  ``halves, even/odd split only`` and ``halves, mask on wrong side``: the same with one split,
  and with the specimen mask made on the other side of the contrast;
  ``cli halves[, --invert]``: ``cutem reconstruct --denoise halves`` itself on the raw tilts
  as written, with its own phase flip (in strips), in the images' contrast and inverted;
- ``oracle wiener, ...``: the local Wiener gain from the true spectra (noise-free and raw WBP)
  inside the specimen mask or the ground-truth mask: the bound of the even/odd Wiener;
- ``wbp noise-free``: the noise-free tilts (the ceiling of the geometry and the CTF).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def oracle_wiener(noisy, clean, sigma=2.0):
    """``noisy`` filtered by the local Wiener gain S/(S + N) of its true spectra: S of ``clean``,
    N of ``noisy − clean``, each averaged over neighbouring Fourier voxels as
    :func:`cutem.tomo_denoise.halves_wiener` averages its estimates."""
    from scipy.ndimage import gaussian_filter

    fn, fc = np.fft.fftn(noisy), np.fft.fftn(clean)
    s = gaussian_filter(np.abs(fc) ** 2, sigma, mode="wrap")
    n = gaussian_filter(np.abs(fn - fc) ** 2, sigma, mode="wrap")
    return np.fft.ifftn(fn * s / np.maximum(s + n, 1e-300)).real


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "validation" / "results" / "tomo_denoise.txt"))
    ap.add_argument("--model", action="append", default=[], help="learned denoiser(s) applied per tilt")
    ap.add_argument("--prior-weight", type=float, default=None, help="fit: λ (default: held-out tilts)")
    ap.add_argument("--fit-iterations", type=int, default=40)
    ap.add_argument("--n2n-steps", type=int, default=300)
    ap.add_argument("--skip", default="", help="comma-separated rows to skip: fit, sirt, n2n-net, cli")
    ap.add_argument("--docs", default=None, help="write tomo_denoise_slices.png (central slices) here")
    ap.add_argument("--cache", default=None, help="an .npz of the simulated series to reuse (written if absent)")
    ap.add_argument("--draws", default="1,2", type=lambda t: [int(x) for x in t.split(",") if x],
                    help="seeds of further noise draws scored by the two-stage denoiser (default 1,2; '' for none)")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    import tomography_pipeline as T

    from cutem import pipeline, tomo, tomo_denoise, tomo_fit
    from cutem.denoise import denoise_stack, inference_options, load_denoiser

    n_px, px, step, _ = T.SIZES["full"]
    cfg = T.make_config(n_px, px, step, 0)
    angles = np.asarray(cfg.geometry.tilt_angles_deg)
    axis = cfg.geometry.tilt_axis_deg
    nz = int(np.ceil(1.3 * max(cfg.sample.thickness_center_A, 1.0) / px / 2.0)) * 2
    if args.cache and Path(args.cache).is_file():
        d = np.load(args.cache)
        images, noise_free, gt = d["images"], d["noise_free"], d["gt"]
    else:
        res = pipeline.simulate(cfg, progress=False)
        images, noise_free, gt = res.images, res.noise_free, T.ground_truth(cfg, nz)
        if args.cache:
            np.savez(args.cache, images=images, noise_free=noise_free, gt=gt)
    k0 = int(np.argmin(np.abs(angles)))
    probe = T.to_contrast(noise_free[k0:k0 + 1], cfg, 1.0)[0]
    flip = 1.0 if float((probe * gt.sum(axis=0)).sum()) >= 0 else -1.0
    soft, particles, background = T.masks(gt, px)
    w = soft / soft.sum()

    def centred(v):
        return (v - (v * w).sum()) * soft

    rows, times, notes, volumes = {}, {}, [], {"ground truth": gt}

    def score(name, v, t0):
        volumes[name] = v
        freq, f, _ = tomo.fsc(centred(v), centred(gt), px)
        rows[name] = (T.mid_band_mean(freq, f, px), tomo.contrast_to_noise(v, particles, background), f)
        times[name] = time.perf_counter() - t0
        print(f"{name:28s} FSC mid {rows[name][0]:.3f}  CNR {rows[name][1]:.2f}  ({times[name]:.0f} s)", flush=True)
        return freq

    def wbp(stack, a=angles):
        return tomo.wbp(stack, a, axis, nz, filter="shepp-logan")

    raw = T.to_contrast(images, cfg, flip)
    t0 = time.perf_counter()
    freq = score("wbp raw", wbp(raw), t0)
    if "sirt" not in skip:
        t0 = time.perf_counter()
        s = tomo.sirt(raw, angles, axis, nz)
        score("sirt raw", s.volume, t0)
        notes.append(f"sirt: {s.iterations} CG iterations (held-out tilts)")
    if "fit" not in skip:
        # the CTF is in the forward model, so the fit sees the contrast before phase flipping;
        # its sign is that of the flipped data (the sign the potential has in them)
        t0 = time.perf_counter()
        ctf = flip * tomo_fit.tilt_ctfs(images.shape[1:], px, cfg.optics, [cfg.optics.defocus_u_A] * len(angles))
        contrast = np.stack([im / im.mean() - 1.0 for im in images])
        r = tomo_fit.fit_reconstruct(contrast, angles, axis, nz, ctf=ctf, prior="tv", prior_weight=args.prior_weight,
                                     iterations=args.fit_iterations)
        score("fit raw (CTF in the model)", r.volume, t0)
        notes.append(f"fit: CTF per tilt in the model, TV prior, lambda {r.prior_weight:g}"
                     + (f" (held-out misfit {', '.join(f'{k:g}: {v:.4f}' for k, v in r.heldout.items())})"
                        if r.heldout else " (given)") + f", {r.iterations} L-BFGS-B iterations, no positivity")
    cc = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(images, noise_free)]
    notes.append(f"per-tilt correlation with the noise-free image, mean: raw {np.mean(cc):.3f}")
    for path in args.model:
        net, params, info = load_denoiser(path)
        t0 = time.perf_counter()
        den = denoise_stack(net, params, images.astype(np.float32), **inference_options(info))
        cc = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(den, noise_free)]
        score(f"wbp learned:{Path(path).stem}", wbp(T.to_contrast(den, cfg, flip)), t0)
        notes.append(f"learned {Path(path).name}: per-tilt correlation {np.mean(cc):.3f}")
    t0 = time.perf_counter()
    rec = lambda st, a: wbp(st, np.asarray(a))  # noqa: E731
    halves = tomo_denoise.half_tomograms(raw, angles, rec)
    even, odd = halves[0]
    t_halves = time.perf_counter() - t0
    score("n2n wiener", tomo_denoise.halves_wiener([(even, odd)], sigma=2.0)[0], t0)
    t0 = time.perf_counter()
    mask = tomo_denoise.specimen_mask(0.5 * (even + odd))
    score("wbp raw, specimen mask", 0.5 * (even + odd) * mask, t0)
    t0 = time.perf_counter()
    score("n2n wiener, specimen mask", tomo_denoise.halves_wiener([(even, odd)], sigma=2.0, mask=mask)[0], t0)
    notes.append("specimen mask: tomo_denoise.specimen_mask of the even/odd mean (95th percentile of a "
                 "sigma-2 smoothing; the percentile chosen on this series among 80-99); the CNR of a "
                 "masked tomogram is inflated (the ice around the particles is masked towards 0)")
    t0 = time.perf_counter() - t_halves
    score("halves two-stage", tomo_denoise.denoise_halves(halves)[0], t0)
    notes.append(f"halves two-stage: tomo_denoise.denoise_halves of {len(halves)} splits of the tilts into "
                 "halves (the first even/odd), in their specimen mask: Wiener, TV (weight 2 x the filtered "
                 "noise's std, chosen on this series among 1-4), Wiener gain of the TV-denoised halves")
    # what each part gives: the even/odd split alone, and the mask on the wrong side of the
    # contrast (what halves_specimen_mask guards against)
    t0 = time.perf_counter()
    score("halves, even/odd split only", tomo_denoise.denoise_halves(halves[:1])[0], t0)
    t0 = time.perf_counter()
    pairs_mean = sum(a + b for a, b in halves) / (2 * len(halves))
    score("halves, mask on wrong side",
          tomo_denoise.denoise_halves(halves, mask=tomo_denoise.specimen_mask(-pairs_mean))[0], t0)
    if "cli" not in skip:
        # the user's path: the tilts as cutem writes them, `cutem reconstruct` with its own CTF
        # phase flip in strips, in the images' contrast (dark protein) and inverted
        import subprocess
        import tempfile

        from cutem import io

        o = cfg.optics
        with tempfile.TemporaryDirectory() as tmp:
            stack = Path(tmp) / "ts.mrc"
            io.write_mrc(stack, images.astype(np.float32), px, label=f"cutem tilt_axis_deg={axis:g}")
            io.write_tlt(Path(tmp) / "ts.tlt", angles)
            for extra in ([], ["--invert"]):
                t0 = time.perf_counter()
                cmd = ["reconstruct", str(stack), "--thickness", str(nz), "--ctf", "phaseflip", "--defocus-A",
                       f"{0.5 * (o.defocus_u_A + o.defocus_v_A):g}", "--voltage", f"{o.voltage_kV:g}", "--cs",
                       f"{o.cs_mm:g}", "--amplitude-contrast", f"{o.amplitude_contrast:g}", "--denoise", "halves",
                       *extra, "-q", "--out", str(Path(tmp) / "rec.mrc")]
                subprocess.run([sys.executable, "-c", "from cutem.cli import entry; entry()", *cmd], check=True,
                               capture_output=True)
                v = io.read_mrc(Path(tmp) / "rec.mrc")[0].astype(np.float64)
                # without --invert the protein is dark: the FSC is scored on the negated volume
                score("cli halves" + (", --invert" if extra else ""), v if extra else -v, t0)
        notes.append("cli: cutem reconstruct ts.mrc --ctf phaseflip --defocus-A ... --denoise halves [--invert] on "
                     "the raw tilts as written; without --invert the protein is dark and the negated volume is scored")
    if args.draws:
        other = []
        for seed in args.draws:
            imgs = pipeline.simulate(cfg.replace(seed=seed), progress=False).images
            h = tomo_denoise.half_tomograms(T.to_contrast(imgs, cfg, flip), angles, rec)
            freq_, f_, _ = tomo.fsc(centred(tomo_denoise.denoise_halves(h)[0]), centred(gt), px)
            other.append(f"seed {seed} {T.mid_band_mean(freq_, f_, px):.3f}")
            print("halves two-stage,", other[-1], flush=True)
        notes.append("halves two-stage on other noise draws of the same series (FSC mid-band): " + ", ".join(other))
    # the bound of the local Wiener filter: its gain from the true signal and noise spectra
    # (the noise-free tilts' WBP and the raw WBP's departure from it) instead of the halves'
    t_clean = time.perf_counter()
    clean = wbp(T.to_contrast(noise_free, cfg, flip))
    t_clean = time.perf_counter() - t_clean
    full = volumes["wbp raw"]
    for name, m in (("specimen mask", mask), ("truth mask", soft)):
        t0 = time.perf_counter()
        score(f"oracle wiener, {name}", oracle_wiener(full * m, clean * m), t0)
    notes.append("oracle wiener: the local Wiener gain (sigma 2) from the true spectra, the bound of "
                 "the even/odd Wiener at its sigma 2 inside that mask (the truth mask: the FSC's own, from "
                 "the ground truth)")
    if "n2n-net" not in skip:
        t0 = time.perf_counter()
        den, tr = tomo_denoise.even_odd_network(even, odd, steps=args.n2n_steps)
        score("n2n net", den, t0)
        notes.append(f"n2n net: U-Net depth 2 width 8, {args.n2n_steps} steps, final loss {np.mean(tr.history[-50:]):.3f}")
    score("wbp noise-free", clean, time.perf_counter() - t_clean)   # made above, for the oracle rows

    lines = ["# command: python validation/tomo_denoise.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, numpy backend; shared, so times are rough",
             f"# TMV example series (examples/tomography_pipeline.py --full): {len(angles)} tilts, {n_px}^2 px of "
             f"{px:g} A, volume {nz}x{n_px}x{n_px}; FSC vs the ground-truth potential in the example's soft mask, "
             "mean over 0.25-0.5 Nyquist; CNR particles vs surrounding ice"]
    lines += ["# " + n for n in notes]
    lines += ["", f"{'tomogram':28s} {'FSC mid-band':>12s} {'CNR':>7s} {'time s':>7s}"]
    lines += [f"{k:28s} {v[0]:12.3f} {v[1]:7.2f} {times[k]:7.0f}" for k, v in rows.items()]
    lines += ["", "FSC per shell (1/A):", f"{'freq':>8s} " + " ".join(f"{k[:14]:>14s}" for k in rows)]
    lines += [f"{freq[i]:8.4f} " + " ".join(f"{rows[k][2][i]:14.3f}" for k in rows) for i in range(1, len(freq))]
    text = "\n".join(lines) + "\n"
    if args.docs:
        from cutem import render as R

        panels = [T.labelled(R.render(v, "slices", window=(1.0, 99.9)), k[:22]) for k, v in volumes.items()
                  if k in ("ground truth", "wbp raw", "sirt raw", "fit raw (CTF in the model)",
                           "n2n wiener, specimen mask", "halves two-stage")
                  or k.startswith("wbp learned")]
        R.save_png(R.side_by_side(panels), Path(args.docs) / "tomo_denoise_slices.png")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return {k: {"fsc_mid": v[0], "cnr": v[1]} for k, v in rows.items()}


if __name__ == "__main__":
    main()
