"""Simulate a TMV tilt series, denoise it, reconstruct raw and denoised, compare, render.

    python examples/tomography_pipeline.py            # small: 96² px of 15 Å, 13 tilts
    python examples/tomography_pipeline.py --full     # 200² px of 10 Å, -60..60° in 2° steps
    python examples/tomography_pipeline.py --tiny     # CI size (seconds)

Steps
-----
1. The TEM-simulator TMV scene (cutem's default configuration: three TMV fragments in
   50-100 nm of ice, 200 kV, 5 µm underfocus, TEM-simulator's detector, 1 e⁻/Å² per
   image) is simulated as a single-axis tilt series (:func:`cutem.pipeline.simulate`).
2. Each tilt is denoised by the model-based denoiser (:func:`cutem.denoise.model_denoise`,
   the paper's method: the noise-free intensity whose simulated noisy images match the
   observation, with a TV prior). ``--denoise lowpass`` uses a Gaussian low-pass instead
   (a labelled baseline, not the paper's method).
3. Images become contrast (I / mean − 1), are phase-flipped with the known CTF (the sign of
   the flipped contrast relative to the potential is read off the noise-free 0° image),
   and are reconstructed by weighted back-projection (:func:`cutem.tomo.wbp`).
4. The ground truth is the scene's 3D potential at the same sampling
   (:func:`cutem.potential.potential_volume`, atoms minus the ice they displace). Reported:
   FSC with the ground truth inside a soft mask around the particles, its mean over the
   mid-resolution band (0.25-0.5 of Nyquist), and the contrast-to-noise ratio of the
   particles against the surrounding ice.
   The raw tilts are also denoised in the tomogram from halves of the tilts
   (:func:`cutem.tomo_denoise.denoise_halves`, what ``cutem reconstruct --denoise halves``
   runs): the row ``halves``.
5. Ground truth, raw and denoised tomograms are rendered side by side (emission-absorption
   ray casting and central slices) to PNG.

Outputs go to ``--out-dir`` (MRC stacks with .tlt files, volumes, PNGs, a results table).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# percentiles of each volume mapped to the transfer function's 0..1: the median (ice) at 0,
# the top 0.05 % at 1 (the particles fill ~0.1 % of the volume), the same rule for every volume
RENDER_WINDOW = (50.0, 99.95)
SIZES = {
    # name: (pixels, pixel size Å, tilt step °, denoise iterations)
    "tiny": (48, 28.0, 20.0, 15),
    "small": (96, 15.0, 10.0, 150),
    "full": (200, 10.0, 2.0, 200),
}


def make_config(n_px, pixel_A, step_deg, seed=0):
    from cutem.config import default_config
    from cutem.params import Geometry

    cfg = default_config()
    count = int(round(120.0 / step_deg)) + 1
    return cfg.replace(
        detector=cfg.detector.replace(nx=n_px, ny=n_px, pixel_size_A=pixel_A),
        simulation=cfg.simulation.replace(oversampling=2),
        geometry=Geometry.series(-60.0, step_deg, count, tilt_axis_deg=cfg.geometry.tilt_axis_deg),
        seed=seed)


def ground_truth(cfg, nz):
    """Potential (V) of the untilted scene on the reconstruction grid, atoms minus displaced ice."""
    from cutem import pipeline
    from cutem.potential import ice_potential_V, potential_volume

    scene = pipeline.build_scene(cfg)
    atoms = scene.atoms(0.0, cfg.geometry.tilt_axis_deg)
    solvent = ice_potential_V() if cfg.sample.ice else 0.0
    return np.asarray(potential_volume(atoms, (nz, cfg.detector.ny, cfg.detector.nx), cfg.detector.pixel_size_A,
                                       solvent_V=solvent, dtype=np.float64))


def denoise_series(images, cfg, method, iterations, beta=0.25, checkpoint=None, progress=True):
    """Denoised stack and a label saying which method produced it."""
    from cutem import pipeline

    if method == "model":
        from cutem.denoise import model_denoise

        out = np.empty_like(images)
        for k in range(len(images)):
            _, _, det = pipeline.tilt_settings(cfg, k)
            out[k] = model_denoise(images[k], det, beta=beta, iterations=iterations, seed=k).image
            if progress:
                print(f"  denoised tilt {k + 1}/{len(images)}", end="\r", flush=True)
        if progress:
            print()
        return out, (f"model-based denoiser (cutem.denoise.model_denoise: Poisson+DQE+MTF detector model, "
                     f"TV prior beta={beta:g}, {iterations} Adam iterations per tilt)")
    if method == "learned":
        from cutem.denoise import denoise_stack, inference_options, load_denoiser

        if not checkpoint:
            raise SystemExit("--denoise learned needs --checkpoint (a cutem train-denoiser result)")
        net, params, info = load_denoiser(checkpoint)
        return (np.asarray(denoise_stack(net, params, images, **inference_options(info)), dtype=np.float32),
                f"learned U-Net denoiser from {checkpoint}")
    from scipy.ndimage import gaussian_filter

    return (np.stack([gaussian_filter(im, 1.5, mode="wrap") for im in images]),
            "FALLBACK: Gaussian low-pass (sigma 1.5 px), not the paper's denoiser")


def to_contrast(images, cfg, flip_sign):
    """I / mean − 1 per image, phase-flipped with sign(CTF) and multiplied by ``flip_sign``."""
    from cutem.optics import ctf_2d

    out = np.empty(images.shape, np.float64)
    for k, im in enumerate(images):
        c = im / im.mean() - 1.0
        ctf = np.asarray(ctf_2d(im.shape, cfg.detector.pixel_size_A, cfg.optics))
        out[k] = flip_sign * np.fft.ifft2(np.fft.fft2(c) * np.sign(ctf)).real
    return out


def masks(gt, px):
    """(soft FSC mask, particle voxels, background ice voxels) from the ground truth."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    smooth = gaussian_filter(gt, 1.0)
    particles = smooth > 0.15 * smooth.max()
    near = binary_dilation(particles, iterations=2)
    soft = np.clip(gaussian_filter(near.astype(float), 1.5) * 2.0, 0.0, 1.0)
    far = ~binary_dilation(particles, iterations=4)
    nz = gt.shape[0]
    slab = np.zeros(gt.shape, bool)
    slab[nz // 4: nz - nz // 4] = True  # the ice layer around the particles' plane
    return soft, particles, far & slab


def mid_band_mean(freq, curve, px):
    nyq = 0.5 / px
    band = (freq >= 0.25 * nyq) & (freq <= 0.5 * nyq)
    return float(np.mean(curve[band]))


def labelled(img, text):
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.asarray(img)).convert("RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 8 + 7 * len(text), 14], fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def main(argv=None):
    ap = argparse.ArgumentParser(description="TMV tilt series → denoise → reconstruct → FSC/CNR → render")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="200² px of 10 Å, -60..60° in 2° steps (61 tilts)")
    size.add_argument("--tiny", action="store_true", help="CI size")
    ap.add_argument("--denoise", choices=["model", "learned", "lowpass"], default="model")
    ap.add_argument("--iterations", type=int, default=None, help="model denoiser: iterations per tilt")
    ap.add_argument("--beta", type=float, default=0.25, help="model denoiser: TV prior weight")
    ap.add_argument("--checkpoint", default=None, help="learned denoiser: checkpoint (HDF5)")
    ap.add_argument("--out-dir", default="tomography_out")
    ap.add_argument("--docs-dir", default=None, help="where the PNGs go (default: --out-dir)")
    ap.add_argument("--results", default=None, help="also write the results table here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="only re-analyse/re-render the volumes in --out-dir")
    args = ap.parse_args(argv)

    from cutem import io, pipeline, tomo, tomo_denoise
    from cutem import render as R

    say = (lambda *a: None) if args.quiet else print
    out = Path(args.out_dir)
    docs = Path(args.docs_dir) if args.docs_dir else out
    if args.reuse:  # re-analyse and re-render the volumes of an earlier run in --out-dir
        from cutem import io as _io

        gt, px = _io.read_mrc(out / "ground_truth.mrc", ndim=3)
        vols = {k: _io.read_mrc(out / f"tomogram_{k}.mrc", ndim=3)[0]
                for k in ("raw", "denoised", "halves", "noise-free")}
        prev = (out / "results.txt").read_text().splitlines() if (out / "results.txt").is_file() else []
        header = [ln for ln in prev if ln.startswith("#")] or ["# (re-analysed volumes)"]
        return analyse(vols, gt.astype(np.float64), px, header, out, docs, args.results, say)
    name = "full" if args.full else "tiny" if args.tiny else "small"
    n_px, px, step, iters = SIZES[name]
    iters = args.iterations or iters
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    cfg = make_config(n_px, px, step, args.seed)
    angles = np.asarray(cfg.geometry.tilt_angles_deg)
    axis = cfg.geometry.tilt_axis_deg

    say(f"[1/5] simulating {len(angles)} tilts of {n_px}² px at {px} Å ...")
    t = time.perf_counter()
    res = pipeline.simulate(cfg, progress=not args.quiet)
    t_sim = time.perf_counter() - t
    io.write_mrc(out / "tilts_raw.mrc", res.images, px, label=f"cutem example tilt_axis_deg={axis:g}")
    io.write_tlt(out / "tilts_raw.tlt", angles)

    say(f"[2/5] denoising ({args.denoise}) ...")
    t = time.perf_counter()
    den, den_label = denoise_series(res.images, cfg, args.denoise, iters, args.beta, args.checkpoint,
                                    progress=not args.quiet)
    t_den = time.perf_counter() - t
    io.write_mrc(out / "tilts_denoised.mrc", den, px, label=f"cutem example tilt_axis_deg={axis:g}")
    io.write_tlt(out / "tilts_denoised.tlt", angles)

    say("[3/5] ground truth and reconstructions ...")
    ice = max(cfg.sample.thickness_center_A, 1.0)
    nz = int(np.ceil(1.3 * ice / px / 2.0)) * 2
    gt = ground_truth(cfg, nz)
    # sign of the phase-flipped contrast against the potential, from the noise-free 0° image
    k0 = int(np.argmin(np.abs(angles)))
    probe = to_contrast(res.noise_free[k0:k0 + 1], cfg, 1.0)[0]
    flip_sign = 1.0 if float((probe * gt.sum(axis=0)).sum()) >= 0 else -1.0
    vols = {}
    t = time.perf_counter()
    for key, stack in (("raw", res.images), ("denoised", den), ("noise-free", res.noise_free)):
        c = to_contrast(stack, cfg, flip_sign)
        vols[key] = tomo.wbp(c, angles, axis, nz, filter="shepp-logan")
        io.write_volume(out / f"tomogram_{key}.mrc", vols[key], px, label=f"cutem example WBP {key}")
    t_rec = time.perf_counter() - t
    t = time.perf_counter()
    halves = tomo_denoise.half_tomograms(to_contrast(res.images, cfg, flip_sign), angles,
                                         lambda st, a: tomo.wbp(st, np.asarray(a), axis, nz, filter="shepp-logan"))
    vols["halves"] = tomo_denoise.denoise_halves(halves)[0].astype(np.float32)
    io.write_volume(out / "tomogram_halves.mrc", vols["halves"], px, label="cutem example WBP halves denoised")
    t_halves = time.perf_counter() - t
    vols["noise-free"] = vols.pop("noise-free")  # last in the table
    io.write_volume(out / "ground_truth.mrc", gt, px, label="cutem example ground-truth potential (V)")

    import os
    import platform

    def cc(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    cc_raw = np.mean([cc(a, b) for a, b in zip(res.images, res.noise_free)])
    cc_den = np.mean([cc(a, b) for a, b in zip(den, res.noise_free)])
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    header = ["# command: python examples/tomography_pipeline.py " + cmd,
              f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, numpy backend (no GPU)",
              f"# TMV default scene, {len(angles)} tilts {angles.min():g}..{angles.max():g} deg, {n_px}x{n_px} px "
              f"of {px:g} A, volume {nz}x{n_px}x{n_px}, seed {args.seed}",
              f"# denoiser: {den_label}",
              f"# per-tilt correlation with the noise-free image, mean over tilts: raw {cc_raw:.3f}, "
              f"denoised {cc_den:.3f}",
              "# reconstruction: WBP (shepp-logan) of phase-flipped contrast; FSC vs ground-truth potential "
              "in a soft mask around the particles",
              "# halves: the raw tilts denoised in the tomogram from halves of the tilts "
              "(cutem.tomo_denoise.denoise_halves)",
              f"# times: simulate {t_sim:.1f} s, denoise {t_den:.1f} s, reconstruct {t_rec:.1f} s, "
              f"halves {t_halves:.1f} s, "
              f"total {time.perf_counter() - t_all:.1f} s"]
    return analyse(vols, gt, px, header, out, docs, args.results, say)


def analyse(vols, gt, px, header, out, docs, results=None, say=print):
    """FSC/CNR table (written to out/results.txt and ``results``) and the renderings."""
    from cutem import render as R
    from cutem import tomo

    say("[4/5] FSC and CNR ...")
    soft, particles, background = masks(gt, px)
    rows = {}
    w = soft / soft.sum()

    def centred(v):  # remove the mean inside the mask (WBP of mean-free images has no DC)
        return (v - (v * w).sum()) * soft

    for key, v in vols.items():
        freq, f, n = tomo.fsc(centred(v), centred(gt), px)
        rows[key] = (f, mid_band_mean(freq, f, px), tomo.contrast_to_noise(v, particles, background))

    say("[5/5] rendering ...")
    panels_dvr, panels_sl = [], []
    for key, v in (("ground truth", gt), ("raw", vols["raw"]), ("denoised", vols["denoised"]),
                   ("denoised from halves", vols["halves"])):
        panels_dvr.append(labelled(R.render(v, "dvr", "cryo", 30.0, 25.0, window=RENDER_WINDOW), key))
        panels_sl.append(labelled(R.render(v, "slices", window=(1.0, 99.9)), key))
    docs.mkdir(parents=True, exist_ok=True)
    R.save_png(R.side_by_side(panels_dvr), docs / "tomography_dvr.png")
    R.save_png(R.side_by_side(panels_sl), docs / "tomography_slices.png")

    lines = list(header) + ["", f"{'tomogram':12s} {'FSC mid-band':>13s} {'CNR':>8s}"]
    for key, (f, mid, cnr) in rows.items():
        lines.append(f"{key:12s} {mid:13.3f} {cnr:8.2f}")
    lines += ["", "FSC per shell (1/A):", f"{'freq':>8s} " + " ".join(f"{k:>11s}" for k in rows)]
    for i in range(1, len(freq)):
        lines.append(f"{freq[i]:8.4f} " + " ".join(f"{rows[k][0][i]:11.3f}" for k in rows))
    text = "\n".join(lines) + "\n"
    (out / "results.txt").write_text(text)
    if results:
        Path(results).parent.mkdir(parents=True, exist_ok=True)
        Path(results).write_text(text)
    say(text)
    return {k: {"fsc_mid": v[1], "cnr": v[2]} for k, v in rows.items()}


if __name__ == "__main__":
    main()
    sys.exit(0)
