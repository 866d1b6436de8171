"""A real micrograph with an ice contaminant, denoised: rings, contrast and particles (issue 19).

    python validation/real_micrograph.py [--model M.h5] [--topaz-python PY]
        [--input ../shared/data/real/micrograph/Ucsf_stack_1142_DW.mrc]
        [--out validation/results/real_micrograph.txt] [--figure docs/real_micrograph.png]

The criteria, measured on each denoised image D (cutem's learned denoiser through
``cutem.denoise.denoise_stack``, the code of ``cutem denoise``; a Gaussian low-pass; Topaz's
pretrained 'unet' when ``--topaz-python`` is given):

- the contaminant C: the largest connected region of the raw image smoothed with σ = 4 px
  that lies below the midpoint between the ice's median and the image's 0.5th percentile
  (it is found on the raw image, so every method is measured on the same region);
- background: pixels at least 60 px from C (distance transform); m_b, s_b: the median and
  the standard deviation of D there;
- overshoot: the largest mean of D over 2 px wide shells 1-41 px outside C, minus m_b, in
  units of s_b: a bright ring around the dark contaminant is a positive overshoot; a
  denoiser passes with ≤ 2;
- contrast kept: (m_b − median of D inside C, ≥ 10 px from its edge) over the same of the
  raw image (1 = the contaminant's darkness kept);
- particles kept: the 40 darkest local minima of the raw image smoothed with σ = 3 px in
  the background (≥ 15 px apart), their depth below m_b in D over their depth in that
  smoothed raw image, median (1 = as dark as a light blur leaves them; a denoiser that
  flattens the ice to grey scores near 0).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "real" / "micrograph" / "Ucsf_stack_1142_DW.mrc"

def regions(raw):
    from scipy import ndimage as ndi

    s = ndi.gaussian_filter(raw.astype(np.float64), 4)
    ice = np.median(s)
    lab, n = ndi.label(s < 0.5 * (ice + np.percentile(s, 0.5)))
    if n == 0:
        raise SystemExit("no contaminant found (nothing darker than the midpoint to the 0.5th percentile)")
    sizes = ndi.sum(np.ones_like(s), lab, index=np.arange(1, n + 1))
    C = lab == 1 + int(np.argmax(sizes))
    d_out = ndi.distance_transform_edt(~C)
    d_in = ndi.distance_transform_edt(C)
    return C, d_out, d_in


def particle_sites(raw, d_out, n=40, sep=15):
    from scipy import ndimage as ndi

    s = ndi.gaussian_filter(raw.astype(np.float64), 3)
    mins = (s == ndi.minimum_filter(s, size=2 * sep + 1)) & (d_out >= 60)
    ys, xs = np.nonzero(mins)
    order = np.argsort(s[ys, xs])[:n]
    return ys[order], xs[order], s


def measure(D, raw, C, d_out, d_in, sites):
    D = np.asarray(D, np.float64)
    bg = d_out >= 60
    m_b, s_b = float(np.median(D[bg])), float(D[bg].std())
    shells = [float(D[(d_out >= r) & (d_out < r + 2)].mean()) for r in range(1, 41, 2)]
    over = (max(shells) - m_b) / s_b
    core = d_in >= 10
    raw_b = float(np.median(raw[bg]))
    contrast = (m_b - float(np.median(D[core]))) / (raw_b - float(np.median(raw[core])))
    ys, xs, smooth = sites
    depth = (m_b - D[ys, xs]) / np.maximum(float(np.median(smooth[bg])) - smooth[ys, xs], 1e-12)
    return dict(overshoot=over, contrast=contrast, particles=float(np.median(depth)), m_b=m_b, s_b=s_b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=str(DEFAULT_INPUT))
    ap.add_argument("--model", default=None)
    ap.add_argument("--topaz-python", default=None)
    ap.add_argument("--gaussian", type=float, default=2.0, help="σ (px) of the Gaussian row")
    ap.add_argument("--out", default=str(ROOT / "validation" / "results" / "real_micrograph.txt"))
    ap.add_argument("--figure", default=str(ROOT / "docs" / "real_micrograph.png"))
    a = ap.parse_args(argv)
    from scipy.ndimage import gaussian_filter

    from cutem.denoise import default_model_path, denoise_stack, inference_options, load_denoiser
    from cutem.io import read_mrc

    raw, _px = read_mrc(a.input, ndim=(2,), name="input")
    raw = raw.astype(np.float32)
    C, d_out, d_in = regions(raw)
    sites = particle_sites(raw, d_out)
    model = a.model or str(default_model_path())
    net, params, info = load_denoiser(model)
    outs = {"raw": raw, f"Gaussian σ={a.gaussian:g} px": gaussian_filter(raw.astype(np.float64), a.gaussian),
            f"cutem learned ({Path(model).name})": denoise_stack(net, params, raw, **inference_options(info))}
    if a.topaz_python:
        from validation.real_particles import run_topaz

        outs["Topaz-Denoise pretrained 'unet'"] = run_topaz(a.topaz_python, raw[None])[0][0]
    lines = ["# A real micrograph with an ice contaminant (micrograph_cleaner_em test data), denoised",
             f"# command: python validation/real_micrograph.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"# machine: {os.uname().machine}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}; "
             f"contaminant {C.mean() * 100:.1f} % of the image; criteria in the script's docstring",
             f"{'method':40s} {'overshoot/σ':>11s} {'contrast':>9s} {'particles':>9s}  pass (overshoot ≤ 2)"]
    for name, D in outs.items():
        r = measure(D, raw, C, d_out, d_in, sites)
        lines.append(f"{name:40s} {r['overshoot']:11.2f} {r['contrast']:9.3f} {r['particles']:9.3f}  "
                     f"{'yes' if r['overshoot'] <= 2 else 'NO'}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(a.out)
    if a.figure:
        figure(a.figure, outs)


def figure(path, outs):
    """The images side by side, each shown between its own 0.5th and 99.5th percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(outs), figsize=(3.2 * len(outs), 3.4))
    for ax, (name, D) in zip(np.atleast_1d(axes), outs.items()):
        lo, hi = np.percentile(D, [0.5, 99.5])
        ax.imshow(D, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
