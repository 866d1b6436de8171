"""cutem with and without TEM-simulator's image model on TEM-simulator's TMV example (issue 14).

    python -m validation.peers.temsim_model [--input input_TMV.txt] [--tilt K] [--reference ref.npy] [--out FILE]

Renders one tilt (``--tilt``: its index in the series; default the 0° tilt, index 1 of the TMV
example's −2°, 0°, 2°) noise-free (``ImageModel.noise_free``) with the pieces of TEM-simulator's model
switched on one at a time, starting from cutem's own model (the TOML defaults): implicit
hydrogens (``add_hydrogen``), the map blur B ≥ 200 × voxel² (``Simulation.b_factor_floor_A2``),
absorption from the cross sections (``absorption_model = "cross_section"``), the
scattered electrons as background (``inelastic_background``), the particle map clamped
from below by the ice (``solvent_model = "clamp"``) and TEM-simulator's pixel centres
(``grid_origin = "middle"``); the row marked ``= TEM-simulator input``
is what ``cutem simulate input_TMV.txt`` renders. Each row gives the mean and the
mean-normalised power in three radial bands relative to the first row; with ``--reference`` (a
noise-free image of the same tilt from DiffTEM or TEM-simulator, .npy or .mrc, same
orientation) also the correlation, the mean ratio and the band power ratios reference/cutem.

Grids: TEM-simulator's detector puts its pixel centres at (i − (n−1)/2)·pixel (its image's
offset is the detector centre; DiffTEM ``detector.py``, ``vvf_offset = 0``), cutem's own
(``Simulation.grid_origin = "fft"``, every TOML config) at (i − n/2)·pixel, so the specimen's
origin sits at pixel index n/2 − ½ there and n/2 here; a TEM-simulator input file gets
TEM-simulator's (``grid_origin = "middle"``). ``corr(ref)`` is taken with the reference on the
row's grid: for the rows on cutem's grid moved by +½ pixel in x and y (a Fourier shift), for the
others as it is; ``corr raw`` always as it is. The band powers do not depend on it.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from cutem.config import load_temsim
from cutem.imaging import ImageModel

DEFAULT_INPUT = Path("/work/shared/data/tmv/input_TMV.txt")
BANDS = {"low": (0.0, 0.02), "mid": (0.02, 0.25), "high": (0.25, 0.5)}  # cycles / pixel


def band_powers(img):
    """Mean-normalised power |F[I/mean − 1]|² summed over each of :data:`BANDS` (DC excluded)."""
    x = np.asarray(img, dtype=np.float64)
    x = x / x.mean() - 1.0
    p = np.abs(np.fft.fft2(x)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(x.shape[0]), np.fft.fftfreq(x.shape[1]), indexing="ij"))
    return {k: float(p[(f > max(lo, 1e-9)) & (f < hi)].sum()) for k, (lo, hi) in BANDS.items()}


def variants(cfg):
    """(name, config) from cutem's own model to TEM-simulator's, one piece at a time."""
    sim = cfg.simulation
    base_sim = dataclasses.replace(sim, absorption_model="ratio", inelastic_background=False, b_factor_floor_A2=0.0,
                                   solvent_model="displaced", grid_origin="fft")
    displaced = dataclasses.replace(sim, solvent_model="displaced", grid_origin="fft")
    no_h = tuple(dataclasses.replace(p, implicit_hydrogens=False) for p in cfg.particles)
    steps = [("cutem model (TOML defaults)", dataclasses.replace(cfg, simulation=base_sim, particles=no_h)),
             ("+ hydrogens", dataclasses.replace(cfg, simulation=base_sim)),
             ("+ B floor", dataclasses.replace(cfg, simulation=dataclasses.replace(
                 base_sim, b_factor_floor_A2=sim.b_factor_floor_A2))),
             ("+ cross-section absorption", dataclasses.replace(cfg, simulation=dataclasses.replace(
                 displaced, inelastic_background=False))),
             ("+ inelastic background", dataclasses.replace(cfg, simulation=displaced)),
             ("+ clamped particle map", dataclasses.replace(cfg, simulation=dataclasses.replace(
                 sim, grid_origin="fft"))),
             ("+ TEM-simulator's pixel centres (= TEM-simulator input)", cfg),
             ("TEM-simulator input without hydrogens", dataclasses.replace(cfg, particles=no_h)),
             ("TEM-simulator input without B floor", dataclasses.replace(cfg, simulation=dataclasses.replace(
                 sim, b_factor_floor_A2=0.0)))]
    return steps


def to_cutem_grid(ref):
    """The reference moved by +½ pixel in x and y onto cutem's own grid (module docstring, Grids):
    a Fourier shift."""
    x = np.asarray(ref, dtype=np.float64)
    fy = np.fft.fftfreq(x.shape[0])[:, None]
    fx = np.fft.fftfreq(x.shape[1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(x) * np.exp(-1j * np.pi * (fy + fx))))


def load_image(path):
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path)
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        d = np.asarray(m.data, dtype=np.float64)
    return d[0] if d.ndim == 3 else d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(DEFAULT_INPUT))
    ap.add_argument("--tilt", type=int, default=None, help="tilt index (default: the 0° tilt, else 0)")
    ap.add_argument("--reference", default=None, help="noise-free reference image of that tilt (.npy or .mrc)")
    ap.add_argument("--out", default=None, help="write the table here (else print)")
    a = ap.parse_args(argv)
    cfg = load_temsim(a.input)
    angles = list(cfg.geometry.tilt_angles_deg)
    tilt = a.tilt if a.tilt is not None else (angles.index(0.0) if 0.0 in angles else 0)
    ref = load_image(a.reference) if a.reference else None
    ref_aligned = to_cutem_grid(ref) if ref is not None else None
    rows, base = [], None
    for name, c in variants(cfg):
        img = np.asarray(ImageModel.from_config(c, tilt, dtype="float64").noise_free(), dtype=np.float64)
        bp = band_powers(img)
        if base is None:
            base = (img.mean(), bp)
        row = [name, f"{img.mean():.2f}", f"{img.mean() / base[0]:.3f}"]
        row += [f"{bp[k] / base[1][k]:.3g}" for k in BANDS]
        if ref is not None:
            rp = band_powers(ref)
            on_grid = ref if c.simulation.grid_origin == "middle" else ref_aligned
            corr = float(np.corrcoef(on_grid.ravel(), img.ravel())[0, 1])
            raw = float(np.corrcoef(ref.ravel(), img.ravel())[0, 1])
            row += [f"{corr:.3f}", f"{raw:.3f}", f"{ref.mean() / img.mean():.3f}"] + [f"{rp[k] / bp[k]:.3g}"
                                                                                      for k in BANDS]
        rows.append(row)
    head = ["model", "mean", "mean/first"] + [f"P_{k}/first" for k in BANDS]
    if ref is not None:
        head += ["corr(ref)", "corr raw", "mean ref/cutem"] + [f"P_{k} ref/cutem" for k in BANDS]
    lines = [f"# {Path(a.input).name}, tilt index {tilt} ({angles[tilt]:g}°), noise-free; bands (cycles/px): "
             + ", ".join(f"{k} {lo}-{hi}" for k, (lo, hi) in BANDS.items()),
             " | ".join(head)] + [" | ".join(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
