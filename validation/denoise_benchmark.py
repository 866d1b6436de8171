"""Denoising benchmark on a held-out simulated test set of crowded fields: PSNR and SSIM of every method.

    cutem train-denoiser -o denoiser_ckpt.h5 \
        --structure tmv --structure ../shared/data/pdb/adk_open.pdb --structure ../shared/data/pdb/4E43.pdb
    python -c "from cutem.denoise import export_model; export_model('denoiser_ckpt.h5', 'validation/results/denoiser_default.h5')"
    python validation/denoise_benchmark.py --model validation/results/denoiser_default.h5

Test set: crowded fields, as in cryo-EM data collected for high particle counts (and as
``cutem train-denoiser`` trains on by default): 40-80 particles asked for per 576 Å
field, placed where their bounding spheres do not overlap in 3D until the field is full,
so the particles' bounding discs cover ~90% of the image and an image's mean is a poor
estimate of it. New scenes from generator seeds the training never uses, with TMV (the
packaged fragment) and the proteins of ../shared/data/pdb, two of which (1hvr, 1f2n) the
default model never saw, at doses 10, 20 and 40 e⁻/Å² per image (training draws doses
uniformly in [5, 60]) and defocus values drawn from a range 10% wider than training's.
Reference: the simulator's noise-free twin (gain · MTF ⊛ expected counts).

Methods: the noisy input; a flat image at the input's mean (the honesty check: a method
that does not beat it has learnt nothing about the particles); Gaussian low-pass and median
filter (width chosen on separate validation images, per dose); BM3D (Dabov et al., IEEE
TIP 16:2080, 2007; the ``bm3d`` package, with σ = the known detector noise RMS × a
multiplier chosen on the validation images; the row is skipped with a note when the
package is missing); the model-based denoiser (:func:`cutem.denoise.model_denoise`, the
test detector, β chosen on the validation images; pathwise and score-function gradients);
the learned U-Net. Nothing is tuned on the test images. PSNR and SSIM from scikit-image
with data_range = the reference's max − min, averaged over the test images; "PSNR
particles" is the same PSNR over the particle mask only (pixels within 6 Å of an atom's
projection: the ice between the particles left out).
Writes validation/results/denoise_benchmark.txt with the command at the top.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, median_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import adjoints.backend as B
from cutem.denoise import SimulatorPairs, default_structures, denoise_stack, inference_options, load_denoiser, model_denoise

HERE = Path(__file__).resolve().parent
PDB = HERE.parent.parent / "shared" / "data" / "pdb"


def metrics(ref, img, mask=None):
    """(PSNR, SSIM, PSNR over ``mask``) with data_range = the reference's max − min."""
    dr = float(ref.max() - ref.min())
    pm = float("nan")
    if mask is not None and mask.any():
        pm = 10 * np.log10(dr * dr / float(np.mean((ref[mask] - img[mask]) ** 2)))
    return (peak_signal_noise_ratio(ref, img, data_range=dr),
            structural_similarity(ref, img, data_range=dr), pm)


def test_structures():
    s = list(default_structures())
    for name in ("adk_open.pdb", "4E43.pdb", "1hvr.pdb", "1f2n.pdb"):
        if (PDB / name).is_file():
            s.append((str(PDB / name), None))
    return s


def particle_mask(atoms, shape, pixel_size, radius_A=6.0):
    """Pixels within ``radius_A`` of an atom's projection (pixel (i, j) is centred at
    x = (j − nx/2)·px, y = (i − ny/2)·px, cutem.potential)."""
    from scipy.ndimage import binary_dilation

    ny, nx = shape
    xy = np.asarray(atoms.positions)[:, :2]
    j = np.floor(xy[:, 0] / pixel_size + nx / 2 + 0.5).astype(int)
    i = np.floor(xy[:, 1] / pixel_size + ny / 2 + 0.5).astype(int)
    ok = (i >= 0) & (i < ny) & (j >= 0) & (j < nx)
    hit = np.zeros(shape, bool)
    hit[i[ok], j[ok]] = True
    r = int(np.ceil(radius_A / pixel_size))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return binary_dilation(hit, structure=(yy * yy + xx * xx) * pixel_size ** 2 <= radius_A ** 2)


def make_set(n, dose, seed, image_size, pixel_size, defocus, structures, particles):
    """``n`` (noisy, noise-free, particle mask) triples at one dose, and the detector."""
    src = SimulatorPairs(image_size=image_size, pixel_size_A=pixel_size, dose_range=(dose, dose),
                         defocus_range=defocus, structures=structures, particles_range=particles)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        noisy, clean = src(rng)
        out.append((noisy, clean, particle_mask(src.last_atoms, noisy.shape, pixel_size)))
    return out, src.detector.replace(dose_e_per_A2=dose, pixel_size_A=pixel_size)


def bm3d_available():
    try:
        import bm3d  # noqa: F401

        return True
    except Exception:
        return False


def noise_sigma(noisy, det):
    """The detector noise RMS in counts: gain·sqrt(N̄/dqe · mean(MTF²/gain²)) (Poisson + Wald,
    blurred by the MTF), with N̄ from the image mean."""
    from cutem.denoise import mtf_transfer

    T = mtf_transfer(noisy.shape, det, np, np.float64)
    n_bar = float(noisy.mean()) / det.gain
    return det.gain * np.sqrt(n_bar / det.dqe * float((T * T).mean()))


def run_bm3d(noisy, sigma_mult, det):
    """BM3D on the image with the known noise RMS × ``sigma_mult`` (the MTF correlates the
    noise, so the white-noise σ is a starting point that the validation images refine)."""
    import bm3d

    sig = noise_sigma(noisy, det)
    return bm3d.bm3d(noisy.astype(np.float64), sigma_psd=sigma_mult * sig)


def choose(images, fn, grid):
    """The grid value with the best mean PSNR on validation images."""
    scores = [np.mean([metrics(c, fn(n, g))[0] for n, c, _m in images]) for g in grid]
    return grid[int(np.argmax(scores))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="trained denoiser (cutem train-denoiser)")
    ap.add_argument("--doses", default="10,20,40")
    ap.add_argument("--defocus-range", default=None,
                    help="test defocus LO,HI in Å (default: 10%% wider than the model's training range); "
                         "give it to score two models on the same test images")
    ap.add_argument("--n-test", type=int, default=6)
    ap.add_argument("--n-val", type=int, default=2)
    ap.add_argument("--model-iterations", type=int, default=200)
    ap.add_argument("--particles", default="40,80", help="particles asked for per test image (range)")
    ap.add_argument("--out", default=str(HERE / "results" / "denoise_benchmark.txt"))
    args = ap.parse_args(argv)
    cmd = "python validation/denoise_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])

    net, params, info = load_denoiser(args.model)
    import json

    src_info = json.loads(info.get("source", "{}"))
    tcfg = json.loads(info.get("train_config", "{}"))
    size = int(src_info.get("image_size", 192))
    px = float(src_info.get("pixel_size_A", 3.0))
    d_lo, d_hi = src_info.get("defocus_range", [5000.0, 30000.0])
    test_defocus = (tuple(float(v) for v in args.defocus_range.split(",")) if args.defocus_range
                    else (0.9 * d_lo, 1.1 * d_hi))
    structures = test_structures()
    particles = tuple(int(v) for v in args.particles.split(","))
    doses = [float(d) for d in args.doses.split(",")]
    have_bm3d = bm3d_available()

    header = [f"# {cmd.strip()}",
              f"# machine: {platform.machine()} {os.cpu_count()}-core CPU, GPU: {'yes' if B.cuda_available() else 'none'}",
              f"# model: {args.model}: {json.loads(info['unet_config'])}, trained {info.get('step')} steps "
              f"(batch {tcfg.get('batch')}, patch {tcfg.get('patch')}), training structures "
              f"{[Path(s[0]).name for s in src_info.get('structures', [])]}, doses {src_info.get('dose_range')}, "
              f"defocus {src_info.get('defocus_range')}",
              f"# test: {args.n_test} images per dose ({size}x{size}, {px} Å/px), structures "
              f"{[Path(s[0]).name for s in structures]}, {particles[0]}-{particles[1]} particles asked for "
              f"(crowded: placed until the field is full), defocus U{test_defocus}, seeds 900000+ "
              f"(validation for parameter choice: {args.n_val} more images per dose, seeds 800000+)",
              f"{'method':<34} {'dose':>5} {'PSNR dB':>8} {'± sd':>5} {'SSIM':>6} {'± sd':>5} {'PSNR particles':>14} "
              f"{'s/image':>8}  chosen"]
    lines = list(header)
    print("\n".join(lines), flush=True)
    summary = {}
    for dose in doses:
        t0 = time.perf_counter()
        test, det = make_set(args.n_test, dose, 900000 + int(dose), size, px, test_defocus, structures, particles)
        val, _ = make_set(args.n_val, dose, 800000 + int(dose), size, px, test_defocus, structures, particles)
        cover = np.mean([m.mean() for _n, _c, m in test])
        print(f"# dose {dose}: simulated {len(test) + len(val)} images in {time.perf_counter() - t0:.0f} s; "
              f"particle mask covers {100 * cover:.0f}% of the test images",
              flush=True)
        methods = []
        methods.append(("noisy input", lambda n: n, ""))
        methods.append(("flat image (its mean), reference", lambda n: np.full_like(n, n.mean()), ""))
        sg = choose(val, lambda n, s: gaussian_filter(n, s), [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0])
        methods.append(("Gaussian low-pass", lambda n, s=sg: gaussian_filter(n, s), f"sigma={sg} px"))
        ms = choose(val, lambda n, k: median_filter(n, k), [3, 5, 7, 11, 21, 31, 41, 61])
        methods.append(("median filter", lambda n, k=ms: median_filter(n, k), f"size={ms}"))
        if have_bm3d:
            bs = choose(val, lambda n, k: run_bm3d(n, k, det), [1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
            methods.append(("BM3D", lambda n, k=bs: run_bm3d(n, k, det), f"sigma = {bs} x noise RMS"))
        it = args.model_iterations

        def md(n, beta, est="pathwise"):
            return model_denoise(n, detector=det, beta=beta, iterations=it, estimator=est).image

        beta = choose(val, md, [1.0, 4.0, 16.0, 64.0, 256.0])
        methods.append(("model-based (pathwise)", lambda n, b=beta: md(n, b), f"beta={beta}, {it} it"))
        methods.append(("model-based (score function)", lambda n, b=beta: md(n, b, "score"), f"beta={beta}, {it} it"))
        methods.append(("learned U-Net", lambda n: denoise_stack(net, params, n, **inference_options(info)), ""))
        for name, fn, note in methods:
            ps, ss, pm, ts = [], [], [], []
            for noisy, clean, mask in test:
                t1 = time.perf_counter()
                out = fn(noisy)
                ts.append(time.perf_counter() - t1)
                p, s_, m = metrics(clean, np.asarray(out, dtype=np.float64), mask)
                ps.append(p)
                ss.append(s_)
                pm.append(m)
            summary[(name, dose)] = float(np.mean(ps))
            lines.append(f"{name:<34} {dose:>5.0f} {np.mean(ps):>8.2f} {np.std(ps):>5.2f} {np.mean(ss):>6.3f} "
                         f"{np.std(ss):>5.3f} {np.mean(pm):>14.2f} {np.mean(ts):>8.2f}  {note}")
            print(lines[-1], flush=True)
        if not have_bm3d:
            lines.append(f"{'BM3D':<34} {dose:>5.0f}  skipped: the bm3d package is not installed")
    for dose in doses:
        if ("BM3D", dose) in summary:
            gap = summary[("learned U-Net", dose)] - summary[("BM3D", dose)]
            lines.append(f"# dose {dose:g}: learned U-Net − BM3D = {gap:+.2f} dB PSNR")
        for ref in ("Gaussian low-pass", "flat image (its mean), reference"):
            gap = summary[("learned U-Net", dose)] - summary[(ref, dose)]
            lines.append(f"# dose {dose:g}: learned U-Net − {ref.split(' (')[0].split(',')[0]} = {gap:+.2f} dB PSNR")
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[len(header):]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
