"""Running a configured simulation to files: outputs, checkpoints, resume.

Outputs for base name ``NAME`` in the output folder: ``NAME.mrc`` (noisy image or tilt
stack, float32, pixel size in the header), ``NAME_noisefree.mrc``, ``NAME.tlt`` (tilt
angles, stack order), ``NAME.png`` (preview of the tilt nearest 0°) and
``NAME_params.toml`` (the resolved parameters and seed; feeding it back reproduces the run).
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
from .movie import simulate_movies
from .pipeline import simulate


def output_paths(out_dir, name):
    out = Path(out_dir)
    return {"image": out / f"{name}.mrc", "noise_free": out / f"{name}_noisefree.mrc",
            "tlt": out / f"{name}.tlt", "png": out / f"{name}.png", "params": out / f"{name}_params.toml"}


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


def run_simulation(cfg: RunConfig, out_dir, device=None, progress=True, resume=True, log=None):
    """Simulate ``cfg`` and write its outputs to ``out_dir``; returns (Result, paths).

    The whole input is checked first (:func:`cutem.validate.preflight`: files, values, grid,
    scene); ``log(message)`` receives its warnings and a note when checkpoints are resumed.
    """
    from .validate import preflight

    pre = preflight(cfg)
    for w in pre.warnings:
        if log is not None:
            log(w)
    paths = output_paths(out_dir, cfg.output)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # temporaries of these outputs left by a killed run (SIGKILL, power loss): never renamed, remove
    for final in paths.values():
        for stale in final.parent.glob(f".{final.name}.*"):
            stale.unlink(missing_ok=True)
    n = len(cfg.geometry.tilt_angles_deg)
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
    k0 = int(np.argmin(np.abs(np.asarray(result.angles_deg))))
    io.write_png(paths["png"], result.images[k0])
    write_resolved(paths["params"], cfg)
    shutil.rmtree(ckdir, ignore_errors=True)
    return result, paths
