"""A run: every tilt of a configuration rendered through its image model.

Each tilt is one :class:`cutem.imaging.ImageModel` (the microscope composed once: grid,
specimen, exit wave, transfer, detector); this module only loops over tilts, keeps the
results on the host, and differentiates one image (:func:`value_and_grad_image`).

Random streams: tilt k of a run with seed s draws its noise from its own generator,
seeded by ``SeedSequence([s, k])`` (:func:`cutem.imaging.tilt_seed`), so a tilt series can be
resumed tilt by tilt and gives bit-identical output on the same backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import adjoints.backend as B
from adjoints import Tape
from adjoints.stage import unwrap

from . import detector as D
from .config import RunConfig
from .imaging import SPECIMEN_PARAMS, ImageModel, tilt_seed, tilt_settings
from .memory import check as memory_check
from .specimen import scene_from_config


@dataclass
class Result:
    """A simulated micrograph or tilt series (host arrays of the config's ``simulation.dtype``)."""

    images: np.ndarray           #: (n_tilts, ny, nx) detector counts × gain
    noise_free: np.ndarray       #: (n_tilts, ny, nx) gain · MTF ⊛ N̄
    angles_deg: tuple
    pixel_size_A: float
    config: RunConfig
    atoms_count: int = 0
    extra: dict = field(default_factory=dict)


def build_scene(cfg: RunConfig):
    """The :class:`cutem.specimen.Scene` of a run (:func:`cutem.specimen.scene_from_config`)."""
    return scene_from_config(cfg)


def simulate_tilt(scene, cfg: RunConfig, k: int, xp=None, atom_chunk=None):
    """Tilt ``k`` of the run: (noisy image, noise-free image) as device arrays (ny, nx)."""
    xp = xp or np
    model = ImageModel.from_config(cfg, k, scene=scene, xp=xp, atom_chunk=atom_chunk)
    det = model.render(rng=B.default_rng(tilt_seed(cfg.seed, k), xp), estimator="score")
    return det.image, det.noise_free


def simulate(cfg: RunConfig, device=None, progress=False, done=None, on_tilt=None, scene=None):
    """Simulate every tilt of ``cfg``; returns a :class:`Result` (host arrays).

    ``done`` maps tilt index → (image, noise_free) already computed (resume); ``on_tilt``
    is called as ``on_tilt(k, image, noise_free)`` after each new tilt (checkpointing).
    ``scene``: the scene of ``cfg`` if already built (:func:`cutem.validate.preflight`).
    """
    xp = B.get_xp(device)
    scene = scene if scene is not None else build_scene(cfg)
    # refuse before any work when the run cannot fit; chunk the atoms when only they do not
    plan = memory_check(cfg, scene, "gpu" if xp is not np else "cpu")
    n = len(cfg.geometry.tilt_angles_deg)
    ny, nx = cfg.detector.ny, cfg.detector.nx
    dtype = np.dtype(cfg.simulation.dtype)
    images = np.empty((n, ny, nx), dtype)
    clean = np.empty((n, ny, nx), dtype)
    done = done or {}
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="tilts", unit="tilt", leave=False)
    for k in it:
        if k in done:
            images[k], clean[k] = done[k]
            continue
        img, nf = simulate_tilt(scene, cfg, k, xp, atom_chunk=plan.atom_chunk)
        images[k] = B.to_numpy(img)
        clean[k] = B.to_numpy(nf)
        if on_tilt is not None:
            on_tilt(k, images[k], clean[k])
    return Result(images, clean, tuple(cfg.geometry.tilt_angles_deg), cfg.detector.pixel_size_A, cfg,
                  atoms_count=scene.n_atoms)


def value_and_grad_image(cfg: RunConfig, loss, wrt, *, tilt=0, scene=None, estimator="pathwise", draws=None,
                         seed=None, device=None):
    """Loss of one simulated image and its gradient for the parameters named in ``wrt``.

    ``loss(image_var) -> scalar Var``. ``wrt`` names inputs of the image model
    (:meth:`cutem.imaging.ImageModel.inputs`): optics (:data:`cutem.optics.PARAM_NAMES`),
    detector (:data:`cutem.detector.PARAM_NAMES`) and specimen (:data:`SPECIMEN_PARAMS`:
    ``"potential"`` — the projected-potential slices themselves —, ``"positions"`` (n, 3) Å in
    the microscope frame of the tilt, ``"b_factors"`` (n,) Å², ``"potential_scale"``,
    ``"thickness_center_A"``, ``"thickness_edge_A"``). The noise draw is fixed by ``seed``
    (default: the tilt's own stream) or ``draws``; ``estimator`` is ``"pathwise"`` or
    ``"score"`` (then the score-function surrogate is differentiated).
    Returns ``(loss value, {name: gradient}, detection)``.
    """
    xp = B.get_xp(device)
    ImageModel.check_names(wrt)
    scene = scene if scene is not None else build_scene(cfg)
    # refuse before any work when the forward and backward cannot fit
    memory_check(cfg, scene, "gpu" if xp is not np else "cpu", gradient=tuple(wrt))
    model = ImageModel.from_config(cfg, tilt, scene=scene, xp=xp)
    rng = B.default_rng(tilt_seed(cfg.seed if seed is None else seed, tilt), xp)
    with Tape() as tape:
        watched = model.watch(tape, wrt)
        det = model.render(watched, rng=rng, estimator=estimator, draws=draws)
        val = loss(det.image)
        target = D.score_surrogate(val, det.log_prob) if (estimator == "score" and det.log_prob is not None) else val
        grads = tape.gradient(target, list(watched.values()))
    return unwrap(val), dict(zip(watched, grads)), det


__all__ = ["Result", "build_scene", "simulate", "simulate_tilt", "value_and_grad_image", "ImageModel",
           "SPECIMEN_PARAMS", "tilt_seed", "tilt_settings"]
