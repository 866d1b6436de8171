"""Running a configured simulation to files: outputs, checkpoints, resume.

Outputs for base name ``NAME`` in the output folder: ``NAME.mrc`` (noisy image or tilt
stack, float32, pixel size in the header), ``NAME_noisefree.mrc``, ``NAME.tlt`` (tilt
angles, stack order), ``NAME.png`` (:mod:`cutem.preview`: filtered, noise-free, spectrum) and
``NAME_params.toml`` (the resolved parameters and seed; feeding it back reproduces the run),
``NAME_particles.star`` and for a tilt series the RELION 5 tilt-series STARs and IMOD
``.xf``/``.defocus`` (:mod:`cutem.groundtruth`: what was put where).
Every file is written under a temporary name and renamed when complete.

A tilt series checkpoints each finished tilt in ``.NAME.ckpt/`` (keyed by a hash of the
resolved parameters); an interrupted run re-started with the same parameters resumes from
there, and because tilt k draws its noise from its own stream (:func:`cutem.pipeline.tilt_seed`)
the result is the same as an uninterrupted run. The checkpoint folder is removed at the end.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from . import io
from .config import RunConfig, to_toml, write_resolved
from .groundtruth import ground_truth_paths, write_ground_truth
from .movie import simulate_movies
from .pipeline import simulate
from .preview import write_preview


def output_paths(out_dir, name, tilt_series=False):
    out = Path(out_dir)
    return {"image": out / f"{name}.mrc", "noise_free": out / f"{name}_noisefree.mrc",
            "tlt": out / f"{name}.tlt", "png": out / f"{name}.png", "params": out / f"{name}_params.toml",
            **ground_truth_paths(out_dir, name, tilt_series)}


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(to_toml(cfg.replace(source="")).encode()).hexdigest()[:16]


def _checkpoint_dir(out_dir, name):
    return Path(out_dir) / f".{name}.ckpt"


def _load_checkpoints(ckdir: Path, key: str, n: int):
    done = {}
    if not ckdir.is_dir():
        return done
    for k in range(n):
        f = ckdir / f"{key}_{k:04d}.npz"
        if f.is_file():
            try:
                with np.load(f) as z:
                    done[k] = (z["image"], z["noise_free"])
            except Exception:  # a damaged checkpoint is recomputed, never trusted
                f.unlink(missing_ok=True)
    return done


def _check_label_memory(scene, cfg):
    """Refuse ``labels`` before any work when the label map would take over half the free memory."""
    import os

    from .errors import InputError
    from .groundtruth import label_bytes

    need = label_bytes(scene, cfg)
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX host: no check
        return
    if need > free / 2:
        raise InputError(f"label map needs {need / 2**30:.1f} GiB, over half of the {free / 2**30:.1f} GiB "
                         f"of free memory; drop --labels or bin the detector")


def run_simulation(cfg: RunConfig, out_dir, device=None, progress=True, resume=True, log=None, labels=False):
    """Simulate ``cfg`` and write its outputs to ``out_dir``; returns (Result, paths).

    The whole input is checked first (:func:`cutem.validate.preflight`: files, values, grid,
    scene); ``log(message)`` receives its warnings and a note when checkpoints are resumed.
    ``labels``: also write ``NAME_labels.mrc`` (:mod:`cutem.groundtruth`).
    """
    from .validate import preflight

    pre = preflight(cfg)
    if labels:
        _check_label_memory(pre.scene, cfg)
    for w in pre.warnings:
        if log is not None:
            log(w)
    n = len(cfg.geometry.tilt_angles_deg)
    paths = output_paths(out_dir, cfg.output, n > 1)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # temporaries of these outputs left by a killed run (SIGKILL, power loss): never renamed, remove
    for final in [*paths.values(), Path(out_dir) / f"{cfg.output}_labels.mrc"]:
        for stale in final.parent.glob(f".{final.name}.*"):
            stale.unlink(missing_ok=True)
    ckdir = _checkpoint_dir(out_dir, cfg.output)
    key = config_hash(cfg)
    done = _load_checkpoints(ckdir, key, n) if (resume and n > 1) else {}

    def on_tilt(k, image, noise_free):
        if n == 1:
            return
        ckdir.mkdir(exist_ok=True)
        with io.atomic_path(ckdir / f"{key}_{k:04d}.npz", suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, image=image, noise_free=noise_free)

    if done and log is not None:
        log(f"resuming: {len(done)} of {n} tilts from checkpoints in {ckdir}")
    if cfg.detector.frames > 1:  # movies: frames and shift tables written by cutem.movie, images = frame sums
        result = simulate_movies(cfg, out_dir, device=device, progress=progress, scene=pre.scene)
    else:
        result = simulate(cfg, device=device, progress=progress, done=done, on_tilt=on_tilt, scene=pre.scene)
    result.extra["resumed_tilts"] = sorted(done)
    stack = n > 1
    label = f"cutem {cfg.output} seed={cfg.seed}"
    io.write_mrc(paths["image"], result.images if stack else result.images[0], cfg.detector.pixel_size_A,
                 label=label)
    io.write_mrc(paths["noise_free"], result.noise_free if stack else result.noise_free[0],
                 cfg.detector.pixel_size_A, label=label + " noise-free")
    io.write_tlt(paths["tlt"], result.angles_deg)
    write_preview(paths["png"], result, cfg, pre.scene)
    paths.update(write_ground_truth(pre.scene, cfg, out_dir, cfg.output, labels=labels))
    write_resolved(paths["params"], cfg)
    shutil.rmtree(ckdir, ignore_errors=True)
    return result, paths
