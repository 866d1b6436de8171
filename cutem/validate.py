"""Preflight checks of a run before any work starts.

The parameter objects (:mod:`cutem.params`) check each field on its own (ranges, finite
values); :mod:`cutem.config` names unknown keys. What they cannot see alone is checked here,
before a single image is computed:

- the output name (a plain file name: no folder separators, not hidden, not empty);
- every file the run will read exists and is a readable regular file (structures,
  transform files, coordinate files, the DQE curve);
- per-tilt lists: dose weights with a positive sum whose peak tilt stays inside the dose
  range; defocus offsets that, added to the nominal defocus, stay inside its range;
- options that cannot run together (a frequency-dependent DQE needs unquantised counts:
  the quantised detector draws integer Poisson counts, which noise shaping cannot follow);
- the simulation grid: not larger than :data:`MAX_GRID_PIXELS`;
- the scene (structures read, so unreadable/truncated files, unknown elements, zero atoms
  and non-finite coordinates are refused here with the file's own message): every particle
  is at least partly inside the field of view at some tilt (the potential leaves out atoms
  whose centre lies outside the periodic field, so a particle entirely outside would be
  silently missing), and no particle is larger than the field (the grid is too small for
  the scene). Particles that cross the edge are reported as warnings.

:func:`preflight` returns the scene it built, so the run does not read the structures twice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import RunConfig
from .errors import InputError
from .grid import Grid
from .params import Detector, Optics, allowed, in_range
from .specimen import scene_from_config, tilt_matrix

#: largest simulation grid (padded, oversampled), pixels: 16384² complex64 is 2 GiB per array
MAX_GRID_PIXELS = 16384 * 16384


@dataclass
class Preflight:
    """What :func:`preflight` found: the scene to simulate and warnings (one line each)."""

    scene: object
    warnings: list = field(default_factory=list)


def _check_file(path, what):
    if path is None or path == "":
        return
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p}: no such file")
    if not p.is_file():
        raise InputError(f"{what} {p}: not a regular file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {p}: not readable (permissions)")
    if p.stat().st_size == 0:
        raise InputError(f"{what} {p}: the file is empty")


def check_output_name(name):
    """The base name of the outputs must be a plain file name."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"output = {name!r}: the output base name must be a non-empty string")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise InputError(f"output = {name!r}: the output base name must be a plain file name "
                         "(no folders, not starting with '.'); use --out for the folder")
    if any(ord(c) < 32 for c in name):
        raise InputError(f"output = {name!r}: control characters in the output base name")


def check_files(cfg: RunConfig):
    """Every input file named by the config exists and is a readable, non-empty regular file."""
    for i, p in enumerate(cfg.particles):
        where = f"particles[{i}]" + ("" if p.name == f"particles[{i}]" else f" ({p.name})")
        _check_file(p.structure, f"{where}: structure file")
        _check_file(p.transforms, f"{where}: transform file")
        if p.placement == "file":
            _check_file(p.coords_file, f"{where}: coordinate file")
    if cfg.detector.dqe_curve:
        spec = str(cfg.detector.dqe_curve)
        # "file.csv:column" names a column of the CSV (cutem.detector.load_dqe_curve)
        path = spec if Path(spec).exists() or ":" not in spec else spec.rsplit(":", 1)[0]
        _check_file(path, "detector.dqe_curve")


def check_values(cfg: RunConfig):
    """Cross-field checks the parameter objects cannot make alone (each field's own type and
    range is checked by its object, from its declaration in :mod:`cutem.params`)."""
    g, o, d = cfg.geometry, cfg.optics, cfg.detector
    if g.dose_weights is not None:
        w = np.asarray(g.dose_weights, dtype=float)
        if w.sum() <= 0:
            raise InputError(f"geometry.dose_weights must have a positive sum, got {list(g.dose_weights)}")
        peak = d.dose_e_per_A2 * float(w.max() / w.mean())
        if not in_range(Detector, "dose_e_per_A2", peak):
            raise InputError(f"geometry.dose_weights give {peak:g} e-/A^2 on one tilt; the allowed range "
                             f"of Detector.dose_e_per_A2 is {allowed(Detector, 'dose_e_per_A2')}")
    for k, v in enumerate(g.defocus_offsets_A or ()):
        for name in ("defocus_u_A", "defocus_v_A"):
            total = getattr(o, name) + v
            if not in_range(Optics, name, total):
                raise InputError(f"optics.{name} + geometry.defocus_offsets_A[{k}] = {total:g} Å is outside "
                                 f"the allowed range {allowed(Optics, name)}")
    if d.dqe_curve and d.quantized:
        raise InputError("detector.dqe_curve (frequency-dependent DQE) needs quantized = false: the noise "
                         "shaping acts on Gaussian counts, not on integer Poisson draws")


def check_grid(cfg: RunConfig):
    """The padded, oversampled simulation grid must fit in memory."""
    grid = Grid.from_config(cfg)
    ny, nx = grid.shape
    if ny * nx > MAX_GRID_PIXELS:
        raise InputError(f"simulation grid {ny}x{nx} px (detector {cfg.detector.ny}x{cfg.detector.nx} x "
                         f"oversampling {cfg.simulation.oversampling} + padding {cfg.simulation.padding_A:g} Å) "
                         f"exceeds {MAX_GRID_PIXELS} px; lower oversampling, padding or the detector size")
    return grid


def check_scene(cfg: RunConfig, scene):
    """Particles inside the field of view, none larger than it; returns warnings."""
    warns = []
    d = cfg.detector
    hx, hy = 0.5 * d.nx * d.pixel_size_A, 0.5 * d.ny * d.pixel_size_A
    pad = cfg.simulation.padding_A
    angles = cfg.geometry.tilt_angles_deg
    mats = [tilt_matrix(a, cfg.geometry.tilt_axis_deg) for a in angles]
    field_desc = (f"field of view x, y in [{-hx:g}, {hx:g}] x [{-hy:g}, {hy:g}] Å "
                  f"({d.nx}x{d.ny} px of {d.pixel_size_A:g} Å)")
    radii = {}
    edge = []
    for j, p in enumerate(scene.particles):
        key = id(p.atoms)
        if key not in radii:
            if not np.isfinite(p.atoms.positions).all():
                raise InputError(f"particle {p.name}: non-finite atom coordinates")
            radii[key] = p.atoms.radius()
        r = radii[key]
        t = np.asarray(p.translation, dtype=float)
        if not np.isfinite(t).all():
            raise InputError(f"particle {p.name} #{j + 1}: non-finite position {tuple(t)}")
        if 2 * r > 2 * min(hx, hy) + 2 * pad:
            raise InputError(f"particle {p.name}: diameter {2 * r:.0f} Å is larger than the "
                             f"{2 * hx:g} x {2 * hy:g} Å field ({d.nx}x{d.ny} px of {d.pixel_size_A:g} Å): "
                             "the grid is too small for the scene; enlarge detector.nx/ny or pixel_size_A")
        xy = np.array([(T @ t)[:2] for T in mats])
        inside = (np.abs(xy[:, 0]) <= hx + r) & (np.abs(xy[:, 1]) <= hy + r)
        if not inside.any():
            raise InputError(f"particle {p.name} #{j + 1} at (x, y) = ({t[0]:.1f}, {t[1]:.1f}) Å lies outside the "
                             f"{field_desc} at every tilt; move it or enlarge the detector")
        crosses = (np.abs(xy[:, 0]) + r > hx) | (np.abs(xy[:, 1]) + r > hy)
        if crosses.any():
            edge.append(f"{p.name} #{j + 1}")
    if edge:
        shown = ", ".join(edge[:5]) + (f" and {len(edge) - 5} more" if len(edge) > 5 else "")
        warns.append(f"{len(edge)} particle(s) cross the edge of the {field_desc} at some tilt ({shown}): "
                     "atoms outside the field are left out" + ("" if pad > 0 else
                                                                "; set simulation.padding_A against wrap-around"))
    if cfg.particles and scene.n_atoms == 0:
        raise InputError("the scene has particles configured but no atoms")
    return warns


def preflight(cfg: RunConfig) -> Preflight:
    """Check ``cfg`` completely and build its scene; raises :class:`InputError` on bad input."""
    check_output_name(cfg.output)
    check_values(cfg)
    check_grid(cfg)
    check_files(cfg)
    scene = scene_from_config(cfg)
    warns = check_scene(cfg, scene)
    return Preflight(scene, warns)


__all__ = ["Preflight", "preflight", "check_output_name", "check_files", "check_values", "check_grid",
           "check_scene", "MAX_GRID_PIXELS"]
