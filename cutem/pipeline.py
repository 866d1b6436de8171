"""The microscope: a scene becomes a micrograph or a tilt series, on the tape.

One image (PHYSICS.md; TEM-simulator, Rullgård et al., J. Microsc. 243:234, 2011):

1. atoms rotated for the tilt (:meth:`cutem.specimen.Scene.atoms`; atoms, not voxels),
2. projected potential per slice in V·Å (:mod:`cutem.potential`), atoms + ice (the ice
   that particles displace is subtracted, so solvent is not counted twice),
3. exit wave: phase object exp(iσV − μ) or multislice (:mod:`cutem.propagation`),
4. image wave through the lens (:mod:`cutem.optics`; defocus at the specimen centre plane),
5. intensity |ψ|², averaged over the ``oversampling²`` sub-pixels of each detector pixel,
6. detector: dose × pixel area × I, shot noise, DQE, MTF, gain, readout (:mod:`cutem.detector`).

The simulation grid is the detector grid refined ``Simulation.oversampling`` times and
padded by ``Simulation.padding_A`` on every side (cropped before binning), so the phase
grating is sampled finer than the detector and the periodic FFT field does not wrap
particles at the edge into the image.

Everything here runs on NumPy or CuPy (``xp``); :func:`image_model` records on an active
:class:`adjoints.Tape`, so :func:`value_and_grad_image` gives gradients for any optics or
detector parameter, the atom positions, B-factors and the potential scale.

Random streams: tilt k of a run with seed s draws its noise from its own generator,
seeded by ``SeedSequence([s, k])``, so a tilt series can be resumed tilt by tilt and
gives bit-identical output on the same backend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import adjoints.backend as B
from adjoints import ops
from adjoints.stage import Var, unwrap

from . import detector as D
from . import optics as O
from .config import RunConfig
from .errors import InputError
from .memory import check as memory_check
from .memory import projected_potential_chunked
from .potential import ice_potential, ice_potential_V, projected_potential
from .propagation import exit_wave


@dataclass
class Grid:
    """The simulation grid derived from the detector and the simulation settings."""

    shape: tuple            #: (ny, nx) of the padded, oversampled grid
    pixel_size_A: float     #: its pixel size
    pad: int                #: padding pixels on each side (of the fine grid)
    oversampling: int
    detector_shape: tuple

    @classmethod
    def from_config(cls, cfg: RunConfig):
        det, sim = cfg.detector, cfg.simulation
        os_ = sim.oversampling
        px = det.pixel_size_A / os_
        pad = int(math.ceil(sim.padding_A / px)) if sim.padding_A > 0 else 0
        shape = (det.ny * os_ + 2 * pad, det.nx * os_ + 2 * pad)
        return cls(shape, px, pad, os_, (det.ny, det.nx))


def tilt_seed(seed: int, k: int) -> int:
    """The noise seed of tilt ``k`` in a run with ``seed`` (independent streams per tilt)."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def tilt_settings(cfg: RunConfig, k: int):
    """(tilt angle in degrees, Optics, Detector) of tilt ``k``: defocus offset and dose per tilt."""
    g = cfg.geometry
    angle = float(g.tilt_angles_deg[k])
    optics = cfg.optics
    if g.defocus_offsets_A is not None:
        off = float(g.defocus_offsets_A[k])
        optics = optics.replace(defocus_u_A=optics.defocus_u_A + off, defocus_v_A=optics.defocus_v_A + off)
    detector = cfg.detector
    if g.dose_weights is not None:
        w = np.asarray(g.dose_weights, dtype=float)
        if np.any(w < 0) or w.sum() <= 0:
            raise InputError("geometry.dose_weights must be non-negative with a positive sum")
        detector = detector.replace(dose_e_per_A2=detector.dose_e_per_A2 * w[k] / w.mean())
    return angle, optics, detector


def _z_range(atoms, cfg: RunConfig, tilt_deg):
    """Extent of the slice stack: the ice layer's path at the centre, and all atoms."""
    s = cfg.sample
    t = max(s.thickness_center_A, s.thickness_edge_A) if s.ice else 0.0
    t /= max(math.cos(math.radians(tilt_deg)), 0.05)
    z = atoms.positions[:, 2] if len(atoms) else np.zeros(1)
    lo, hi = min(-t / 2, float(z.min()) - 1.0), max(t / 2, float(z.max()) + 1.0)
    return lo, hi


def specimen_potential(atoms, cfg: RunConfig, grid: Grid, tilt_deg, xp, dtype, scale=1.0, atom_chunk=None):
    """(V, V_abs) per slice in V·Å for the atoms of one tilt plus the ice layer.

    One slice for the projection approximation; slices of ``slice_thickness_A`` tiling the
    ice layer (and every atom) for multislice. ``V_abs`` is None without absorption.
    ``atom_chunk``: atoms per potential call (:mod:`cutem.memory`; None = all at once).
    """
    sim, s = cfg.simulation, cfg.sample
    multislice = sim.method == "multislice"
    dz = sim.slice_thickness_A if multislice else None
    zr = _z_range(atoms, cfg, tilt_deg)
    solvent = ice_potential_V() if s.ice else 0.0
    v = projected_potential_chunked(atoms, grid.shape, grid.pixel_size_A, slice_thickness_A=dz, z_range_A=zr,
                                    b_factor_A2=sim.b_factor_A2, xp=xp, dtype=dtype, solvent_V=solvent,
                                    scale=scale, atom_chunk=atom_chunk)
    v_abs = v * sim.absorption if sim.absorption > 0 else None
    if s.ice:
        vi = ice_potential(s, grid.shape, grid.pixel_size_A, slice_thickness_A=dz, z_range_A=zr,
                           tilt_deg=tilt_deg, tilt_axis_deg=cfg.geometry.tilt_axis_deg, xp=xp, dtype=dtype)
        v = v + vi
        if s.ice_absorption > 0:
            v_abs = (v_abs if v_abs is not None else 0) + s.ice_absorption * vi
    return v, v_abs


def _bin(intensity, grid: Grid):
    """Crop the padding and average each detector pixel's oversampling² sub-pixels."""
    val = unwrap(intensity)
    ny, nx = grid.detector_shape
    o = grid.oversampling
    if grid.pad:
        intensity = ops.crop(intensity, (ny * o, nx * o))
    if o == 1:
        return intensity
    lead = val.shape[:-2]
    r = ops.reshape(intensity, lead + (ny, o, nx, o))
    nd = len(lead)
    return ops.mean(r, axis=(nd + 1, nd + 3))


def image_model(v, v_abs, cfg: RunConfig, grid: Grid, optics, detector, *, rng=None, estimator="score",
                params=None, draws=None):
    """Potential slices → detector image, recorded on the active tape.

    ``v`` (and ``v_abs``) are arrays or Vars (n_slices, ny, nx) in V·Å on the simulation grid.
    ``params`` overrides optics (:data:`cutem.optics.PARAM_NAMES`) and detector
    (:data:`cutem.detector.PARAM_NAMES`) inputs with arrays or watched Vars.
    ``estimator``: ``"score"`` draws integer Poisson (and Wald) counts as a real detector
    does; ``"pathwise"`` the Gaussian reparametrisation; ``"none"`` no noise.
    Returns :class:`cutem.detector.Detection` (``image``, ``noise_free``, ...).
    """
    params = params or {}
    op = {k: p for k, p in params.items() if k in O.PARAM_NAMES}
    dp = {k: p for k, p in params.items() if k in D.PARAM_NAMES}
    unknown = set(params) - set(op) - set(dp)
    if unknown:
        raise KeyError(f"unknown parameter(s) {sorted(unknown)}")
    sim = cfg.simulation
    dz = sim.slice_thickness_A if sim.method == "multislice" else None
    method = "projection" if unwrap(v).shape[0] == 1 else "multislice"
    wave = exit_wave(v, optics.voltage_kV, grid.pixel_size_A, method=method, slice_thickness_A=dz,
                     v_abs_slices=v_abs)
    wave = O.apply_optics(wave, optics, grid.pixel_size_A, params=op)
    intensity = _bin(ops.abs2(wave), grid)
    if estimator == "score" and not detector.quantized:
        estimator = "none"
    return D.detect(intensity, detector, rng=rng, estimator=estimator, params=dp, draws=draws, noise_free=True)


@dataclass
class Result:
    """A simulated micrograph or tilt series (host arrays, float32)."""

    images: np.ndarray           #: (n_tilts, ny, nx) detector counts × gain
    noise_free: np.ndarray       #: (n_tilts, ny, nx) gain · MTF ⊛ N̄
    angles_deg: tuple
    pixel_size_A: float
    config: RunConfig
    atoms_count: int = 0
    extra: dict = field(default_factory=dict)


def build_scene(cfg: RunConfig):
    """The :class:`cutem.specimen.Scene` of a run (:func:`cutem.specimen.scene_from_config`)."""
    from .specimen import scene_from_config

    return scene_from_config(cfg)


def simulate_tilt(scene, cfg: RunConfig, k: int, xp=None, grid=None, atom_chunk=None):
    """Tilt ``k`` of the run: (noisy image, noise-free image) as device arrays (ny, nx)."""
    xp = xp or np
    grid = grid or Grid.from_config(cfg)
    dtype = np.dtype(cfg.simulation.dtype)
    angle, optics, detector = tilt_settings(cfg, k)
    atoms = scene.atoms(angle, cfg.geometry.tilt_axis_deg)
    v, v_abs = specimen_potential(atoms, cfg, grid, angle, xp, dtype, atom_chunk=atom_chunk)
    rng = B.default_rng(tilt_seed(cfg.seed, k), xp)
    det = image_model(v, v_abs, cfg, grid, optics, detector, rng=rng, estimator="score")
    return det.image, det.noise_free


def simulate(cfg: RunConfig, device=None, progress=False, done=None, on_tilt=None, scene=None):
    """Simulate every tilt of ``cfg``; returns a :class:`Result` (host float32 arrays).

    ``done`` maps tilt index → (image, noise_free) already computed (resume); ``on_tilt``
    is called as ``on_tilt(k, image, noise_free)`` after each new tilt (checkpointing).
    ``scene``: the scene of ``cfg`` if already built (:func:`cutem.validate.preflight`).
    """
    xp = B.get_xp(device)
    grid = Grid.from_config(cfg)
    scene = scene if scene is not None else build_scene(cfg)
    # refuse before any work when the run cannot fit; chunk the atoms when only they do not
    plan = memory_check(cfg, scene, "gpu" if xp is not np else "cpu")
    n = len(cfg.geometry.tilt_angles_deg)
    ny, nx = grid.detector_shape
    images = np.empty((n, ny, nx), np.float32)
    clean = np.empty((n, ny, nx), np.float32)
    done = done or {}
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="tilts", unit="tilt", leave=False)
    for k in it:
        if k in done:
            images[k], clean[k] = done[k]
            continue
        img, nf = simulate_tilt(scene, cfg, k, xp, grid, atom_chunk=plan.atom_chunk)
        images[k] = B.to_numpy(img)
        clean[k] = B.to_numpy(nf)
        if on_tilt is not None:
            on_tilt(k, images[k], clean[k])
    return Result(images, clean, tuple(cfg.geometry.tilt_angles_deg), cfg.detector.pixel_size_A, cfg,
                  atoms_count=scene.n_atoms)


#: names :func:`value_and_grad_image` differentiates besides the optics and detector inputs
SPECIMEN_PARAMS = ("potential", "positions", "b_factors", "potential_scale", "thickness_center_A",
                   "thickness_edge_A")


def specimen_potential_on_tape(atoms, cfg: RunConfig, grid: Grid, tilt_deg, xp, dtype, inputs):
    """(V, V_abs) like :func:`specimen_potential`, built from the potential *stages*, so that
    atom positions (microscope frame, Å), B-factors, the potential scale and the ice
    thicknesses in ``inputs`` (arrays or watched Vars) get gradients."""
    from .potential import IcePotentialStage, ProjectedPotentialStage

    sim, s = cfg.simulation, cfg.sample
    dz = sim.slice_thickness_A if sim.method == "multislice" else None
    zr = _z_range(atoms, cfg, tilt_deg)
    solvent = ice_potential_V() if s.ice else 0.0
    st = ProjectedPotentialStage(atoms, grid.shape, grid.pixel_size_A, slice_thickness_A=dz, z_range_A=zr,
                                 b_factor_A2=sim.b_factor_A2, solvent_V=solvent)
    v_atoms = st(inputs["positions"], inputs["b_factors"], inputs["potential_scale"])
    v_abs = v_atoms * sim.absorption if sim.absorption > 0 else None
    v = v_atoms
    if s.ice:
        ist = IcePotentialStage(s, grid.shape, grid.pixel_size_A, slice_thickness_A=dz, z_range_A=zr,
                                tilt_deg=tilt_deg, tilt_axis_deg=cfg.geometry.tilt_axis_deg)
        vi = ist(inputs["thickness_center_A"], inputs["thickness_edge_A"])
        v = v + vi
        if s.ice_absorption > 0:
            v_abs = vi * s.ice_absorption if v_abs is None else v_abs + vi * s.ice_absorption
    return v, v_abs


def value_and_grad_image(cfg: RunConfig, loss, wrt, *, tilt=0, scene=None, estimator="pathwise", draws=None,
                         seed=None, device=None):
    """Loss of one simulated image and its gradient for the parameters named in ``wrt``.

    ``loss(image_var) -> scalar Var``. ``wrt`` names optics or detector inputs
    (:data:`cutem.optics.PARAM_NAMES`, :data:`cutem.detector.PARAM_NAMES`) and the specimen
    (:data:`SPECIMEN_PARAMS`: ``"potential"`` — the projected-potential slices themselves —,
    ``"positions"`` (n, 3) Å in the microscope frame of the tilt, ``"b_factors"`` (n,) Å²,
    ``"potential_scale"``, ``"thickness_center_A"``, ``"thickness_edge_A"``). The noise draw
    is fixed by ``seed`` (default: the tilt's own stream) or ``draws``; ``estimator`` is
    ``"pathwise"`` or ``"score"`` (then the score-function surrogate is differentiated).
    Returns ``(loss value, {name: gradient}, detection)``.
    """
    from adjoints import Tape

    xp = B.get_xp(device)
    grid = Grid.from_config(cfg)
    scene = scene or build_scene(cfg)
    angle, optics, detector = tilt_settings(cfg, tilt)
    atoms = scene.atoms(angle, cfg.geometry.tilt_axis_deg)
    dtype = np.dtype(cfg.simulation.dtype)
    base = {**O.optics_inputs(optics, xp, dtype), **D.detector_inputs(detector, xp, dtype)}
    spec = {"positions": xp.asarray(atoms.positions, dtype=dtype), "b_factors": xp.asarray(atoms.b_factors, dtype=dtype),
            "potential_scale": xp.asarray(1.0, dtype=dtype),
            "thickness_center_A": xp.asarray(cfg.sample.thickness_center_A, dtype=dtype),
            "thickness_edge_A": xp.asarray(cfg.sample.thickness_edge_A, dtype=dtype)}
    for name in wrt:
        if name not in base and name not in SPECIMEN_PARAMS:
            raise KeyError(f"cannot differentiate with respect to {name!r}; known: "
                           f"{sorted(base) + list(SPECIMEN_PARAMS)}")
    rng = B.default_rng(tilt_seed(cfg.seed if seed is None else seed, tilt), xp)
    with Tape() as tape:
        watched, params = {}, {}
        for name in wrt:
            if name in base:
                params[name] = watched[name] = tape.watch(base[name])
            elif name in spec:
                spec[name] = watched[name] = tape.watch(spec[name])
        if any(n in spec for n in watched):
            v, v_abs = specimen_potential_on_tape(atoms, cfg, grid, angle, xp, dtype, spec)
        else:
            v, v_abs = specimen_potential(atoms, cfg, grid, angle, xp, dtype)
        if "potential" in wrt:
            v = watched["potential"] = tape.watch(unwrap(v))
        det = image_model(v, v_abs, cfg, grid, optics, detector, rng=rng, estimator=estimator,
                          params=params, draws=draws)
        val = loss(det.image)
        target = D.score_surrogate(val, det.log_prob) if (estimator == "score" and det.log_prob is not None) else val
        grads = tape.gradient(target, list(watched.values()))
    return unwrap(val), dict(zip(watched, grads)), det
