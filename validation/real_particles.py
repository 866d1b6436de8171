"""Denoisers on real particles, scored against a class-average pseudo ground truth (issue 19).

    python validation/real_particles.py [--model cutem/data/denoiser.h5] [--topaz-python PY]
                                        [--score-tool ../shared/tools/real_particles_score.py]
                                        [--out validation/results/real_particles.txt]

The particles, the pseudo ground truth (each particle's 2D class average in its frame, times its
CTF) and the two scores (corr inside a 28 px circle; mean FRC over 1/40-1/10 1/Å) are those of
the score tool (``../shared/tools/real_particles_score.py``, its docstring); its 'dev' split is
the 1,157 particles of micrographs 00021-00025 of EMPIAR-10204. Rows:

- raw particles;
- Gaussian low-pass, σ chosen on these particles by corr, and in a second row by frc (the
  best a Gaussian can do on each score), once as ``scipy.ndimage.gaussian_filter`` (reflecting
  edges) and once as a periodic Fourier multiplier in float64: the two differ in FRC because
  the score casts to float32 and the reflecting filter is not a ring-wise multiplier;
- BM3D (``bm3d`` package, Mäkinen et al., IEEE TIP 29:8339, 2020) with its noise σ chosen by
  corr on a random 200 of these particles (``--bm3d-choose-on``), on the particle in units of its background σ (RELION normalised it);
- cutem's learned denoisers, the given models (default: the two packaged ones): the particle
  model as ``cutem denoise particles.mrcs`` runs it (:func:`cutem.denoise.denoise_particles`:
  the network over the 16 symmetries, a low-pass, the stack's radial envelope) and the
  network alone; the micrograph model alone (trained on protein-dark micrographs, it is given
  the stack negated and its result negated back, over the 8 symmetries of the square);
- diagnostics, not baselines: a Gaussian times a centred disc, and a Gaussian times the
  stack's envelope (:func:`cutem.denoise.particle_envelope`), i.e. what the envelope gives
  without the network;
- Topaz-Denoise's pretrained 'unet' (Bepler et al., Nat. Commun. 11:5208, 2020) when
  ``--topaz-python`` names a Python with ``topaz-em`` installed (its own environment; no ML
  framework is imported here).

Choosing σ on the scored particles favours the baselines, not cutem. Standard errors are the
tool's bootstrap over particles; the table states which rows beat the best baseline by more
than three of them.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_TOOL = ROOT.parent / "shared" / "tools" / "real_particles_score.py"
TOPAZ_SCRIPT = """
import sys, numpy as np
from topaz.denoise import Denoise, denoise_image
x = np.load(sys.argv[1]).astype(np.float32)
model = Denoise("unet")  # the pretrained general model (unet_L2_v0.2.2)
out = np.stack([denoise_image(p, [model]) for p in x])  # per-image mean/std normalisation, Topaz's default
np.save(sys.argv[2], out.astype(np.float32))
"""


def load_tool(path):
    spec = importlib.util.spec_from_file_location("real_particles_score", str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fourier_gaussian(stack, sigma):
    from cutem.denoise import fourier_lowpass

    return fourier_lowpass(stack, sigma)


def scipy_gaussian(stack, sigma):
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(x.astype(np.float64), sigma) for x in stack])


def bm3d_stack(stack, sigma):
    import bm3d

    return np.stack([bm3d.bm3d(x.astype(np.float64), sigma_psd=sigma) for x in stack])


def best_by(tool, stack, fn, grid, which, key="corr"):
    best = None
    for s in grid:
        r = tool.score(fn(stack, s), which)
        if best is None or r[key] > best[1][key]:
            best = (s, r)
    return best


def cutem_rows(model, stack, tool, which, particles=False):
    """(score, seconds) of a cutem model on the particles: with ``particles`` as ``cutem denoise
    particles.mrcs`` runs it (:func:`cutem.denoise.denoise_particles`: the network, a low-pass and
    the stack's envelope), else the network alone over the 16 symmetries (8 and the stack
    negated for a model trained on one contrast convention)."""
    from cutem.denoise import denoise_particles, denoise_stack, inference_options, load_denoiser

    net, params, info = load_denoiser(model)
    opts = inference_options(info, boxes=True)
    # a model trained on one convention (micrographs: protein dark) sees RELION's white particles negated
    sign = 1.0 if opts["symmetries"] == 16 else -1.0
    t = time.perf_counter()
    out = (denoise_particles(net, params, stack, **opts) if particles
           else sign * denoise_stack(net, params, sign * stack, **opts))
    dt = time.perf_counter() - t
    return tool.score(out, which), dt


def run_topaz(python, stack):
    """(Topaz's pretrained 'unet' on each image of ``stack``, seconds), in Topaz's own Python."""
    with tempfile.TemporaryDirectory() as d:
        src, dst, script = Path(d, "in.npy"), Path(d, "out.npy"), Path(d, "topaz_stack.py")
        np.save(src, np.asarray(stack, np.float32))
        script.write_text(TOPAZ_SCRIPT)
        t = time.perf_counter()
        subprocess.run([python, str(script), str(src), str(dst)], check=True)
        return np.load(dst), time.perf_counter() - t


def topaz_row(python, stack, tool, which):
    out, dt = run_topaz(python, stack)
    return tool.score(out, which), dt


def gt_band_drop(tool, which):
    """Ring power of the pseudo ground truth at 1/28 Å⁻¹ over that at 1/23 Å⁻¹ (rings 8 and 10
    of the 64-px box): how sharply the class averages are band-limited."""
    G = tool.pseudo_gt(which).astype(np.float64)
    P = (np.abs(tool.periodic_fft2(G)) ** 2).mean(0)
    return float(P[tool.RING == 8].mean() / P[tool.RING == 10].mean())


def masked_gaussian(stack, sigma=3.25, radius=16.0, edge=8.0, n=64):
    """The Gaussian times a centred soft disc: what knowing the particle's centre is worth
    (a mask, not a denoiser)."""
    yy, xx = np.mgrid[:n, :n] - n // 2
    r = np.hypot(yy, xx)
    m = 0.5 + 0.5 * np.cos(np.pi * np.clip(r - radius, 0, edge) / edge)
    return fourier_gaussian(stack, sigma) * m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None,
                    help="cutem denoiser model(s) to score (default: the packaged model)")
    ap.add_argument("--topaz-python", default=None, help="a Python with topaz-em installed")
    ap.add_argument("--score-tool", default=str(DEFAULT_TOOL))
    ap.add_argument("--which", default="dev")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--bm3d-choose-on", type=int, default=200, help="particles BM3D's σ is chosen on")
    ap.add_argument("--out", default=str(ROOT / "validation" / "results" / "real_particles.txt"))
    a = ap.parse_args(argv)
    from cutem.denoise import default_model_path

    models = a.model or [str(default_model_path(particles=True)), str(default_model_path())]
    tool = load_tool(a.score_tool)
    _, raw = tool.load_particles()
    stack = raw[tool.split_index(a.which)]
    rows = []

    def add(name, r, setting="", sec=None):
        rows.append((name, r, setting, sec))
        print(f"{name:34s} corr {r['corr']:.4f}±{r['corr_se']:.4f}  frc {r['frc']:.4f}±{r['frc_se']:.4f}  {setting}",
              flush=True)

    add("raw particles", tool.score(stack, a.which))
    sigmas = (1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75)
    for key in ("corr", "frc"):
        s, r = best_by(tool, stack, scipy_gaussian, sigmas, a.which, key)
        add("Gaussian (scipy.ndimage)", r, f"sigma={s:g} px, best {key}")
        s, r = best_by(tool, stack, fourier_gaussian, sigmas, a.which, key)
        add("Gaussian (periodic, Fourier)", r, f"sigma={s:g} px, best {key}")
    if not a.no_bm3d:
        t = time.perf_counter()
        # σ chosen on a random subset (BM3D takes ~0.5 s per particle), then run on all
        sub = np.sort(np.random.default_rng(0).choice(len(stack), min(a.bm3d_choose_on, len(stack)), replace=False))

        def on_subset(x, s):
            full = np.array(x, dtype=np.float64)
            full[sub] = bm3d_stack(x[sub], s)
            return full

        scores = {s: tool.score(on_subset(stack, s), a.which)["corr_per_particle"][sub].mean() for s in (1.0, 2.0, 3.0)}
        s = max(scores, key=scores.get)
        add("BM3D", tool.score(bm3d_stack(stack, s), a.which),
            f"sigma_psd={s:g} (of 1, 2, 3 by corr on {len(sub)} of the particles)", time.perf_counter() - t)
    if a.topaz_python:
        r, dt = topaz_row(a.topaz_python, stack, tool, a.which)
        add("Topaz-Denoise pretrained 'unet'", r, "", dt)
    baselines = list(rows)
    add("Gaussian σ=3.25 × centred disc r=16 px (a mask)", tool.score(masked_gaussian(stack), a.which),
        "diagnostic, not a baseline")
    from cutem.denoise import particle_envelope

    add("Gaussian σ=3.25 × the stack's envelope", tool.score(fourier_gaussian(stack, 3.25) * particle_envelope(stack),
                                                            a.which), "diagnostic, not a baseline")
    n_diag = len(rows)
    for m in models:
        for particles in ((True, False) if "particles" in Path(m).name else (False,)):
            r, dt = cutem_rows(m, stack, tool, a.which, particles)
            add(f"cutem {'denoise .mrcs' if particles else 'network alone'} ({Path(m).name})", r, "", dt)

    lines = ["# Denoisers on real β-galactosidase particles (EMPIAR-10204), class-average pseudo ground truth",
             f"# command: python validation/real_particles.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"# machine: {os.uname().machine}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}; "
             f"score tool {Path(a.score_tool).name}, split '{a.which}' ({len(stack)} particles, 64² at 3.54 Å/px)",
             "# corr: Pearson correlation with the pseudo ground truth inside r ≤ 28 px; frc: mean FRC over "
             "1/40-1/10 1/Å; ± bootstrap standard errors; σ of the baselines chosen on these particles by corr or frc",
             f"{'method':34s} {'corr':>7s} {'± se':>7s} {'frc':>7s} {'± se':>7s} {'s':>7s}  setting"]
    for name, r, setting, sec in rows:
        lines.append(f"{name:34s} {r['corr']:7.4f} {r['corr_se']:7.4f} {r['frc']:7.4f} {r['frc_se']:7.4f} "
                     f"{'' if sec is None else f'{sec:7.1f}':>7s}  {setting}")
    lines.append(f"# pseudo ground truth: ring power at 1/28 Å⁻¹ over 1/23 Å⁻¹ = {gt_band_drop(tool, a.which):.1f}")
    for name, r, _, _ in rows[n_diag:]:
        for key in ("corr", "frc"):
            best = max(baselines[1:], key=lambda b: b[1][key])
            margin = (r[key] - best[1][key]) / max(r[key + "_se"], best[1][key + "_se"])
            d = r[key + "_per_particle"] - best[1][key + "_per_particle"]
            paired = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
            lines.append(f"# {name}: {key} − best baseline ({best[0]}, {best[2]}) = {r[key] - best[1][key]:+.4f} "
                         f"= {margin:+.1f} standard errors (the larger of the two rows'; paired: {paired:+.1f})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(a.out)
    print("\n".join(lines[-2 * (len(rows) - n_diag):]))


if __name__ == "__main__":
    main()
