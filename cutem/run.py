"""Running a configured simulation to files: outputs, checkpoints, resume.

Outputs for base name ``NAME`` in the output folder: ``NAME.mrc`` (noisy image or tilt
stack, float32, pixel size in the header), ``NAME_noisefree.mrc``, ``NAME.tlt`` (tilt
angles, stack order), ``NAME.png`` (:mod:`cutem.preview`: filtered, noise-free, spectrum) and
``NAME_params.toml`` (the resolved parameters and seed; feeding it back reproduces the run),
``NAME_particles.star`` and for a tilt series the RELION 5 tilt-series STARs and IMOD
``.xf``/``.defocus`` (:mod:`cutem.groundtruth`: what was put where).
The outputs are one set (:func:`cutem.io.transaction`): every file is written under a
temporary name and all are renamed together when the last is complete, so the final names
hold either this run's whole set or the previous run's (a failed or killed run leaves it as it
was); files of the previous set that this run does not write (labels, movie frames, a tilt
series' tables) go in the same commit.

A tilt series checkpoints each finished tilt in ``.NAME.ckpt/`` (keyed by a hash of the
resolved parameters); an interrupted run re-started with the same parameters resumes from
there, and because tilt k draws its noise from its own stream (:func:`cutem.pipeline.tilt_seed`)
the result is the same as an uninterrupted run. The checkpoint folder is removed at the end,
and checkpoints of other parameters are removed at the start; a series is at most
:data:`MAX_TILTS` tilts, so the folder stays bounded.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from . import io
from .errors import InputError
from .config import RunConfig, to_toml, write_resolved
from .groundtruth import ground_truth_paths, write_ground_truth
from .movie import simulate_movies
from .pipeline import simulate
from .preview import write_preview


#: most tilts of one run: far beyond any real series (about 60--160 images), and it bounds the
#: checkpoint folder (one file per tilt)
MAX_TILTS = 1000


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


def _previous_set(out_dir, name):
    """Every file a run called ``name`` may write in ``out_dir`` (present or not)."""
    out = Path(out_dir)
    names = [*output_paths(out, name, True).values(), out / f"{name}_labels.mrc", out / f"{name}_frames.mrc",
             out / f"{name}_shifts.csv", out / f"{name}_local_shifts.csv"]
    return names + sorted(out.glob(f"{name}_frames_[0-9][0-9][0-9].mrc"))


def run_simulation(cfg: RunConfig, out_dir, device=None, progress=True, resume=True, log=None, labels=False):
    """Simulate ``cfg`` and write its outputs to ``out_dir``; returns (Result, paths).

    The whole input is checked first (:func:`cutem.validate.preflight`: files, values, grid,
    scene); ``log(message)`` receives its warnings and a note when checkpoints are resumed.
    ``labels``: also write ``NAME_labels.mrc`` (:mod:`cutem.groundtruth`).
    """
    from .validate import preflight

    n = len(cfg.geometry.tilt_angles_deg)
    if n > MAX_TILTS:
        raise InputError(f"geometry: {n} tilts exceed the {MAX_TILTS} one run takes; split the series")
    pre = preflight(cfg)
    if labels:
        _check_label_memory(pre.scene, cfg)
    for w in pre.warnings:
        if log is not None:
            log(w)
    paths = output_paths(out_dir, cfg.output, n > 1)
    io.check_not_inputs([*paths.values(), *_previous_set(out_dir, cfg.output)])  # before any work
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    io.recover(out_dir)  # a commit killed half-way is finished before anything else
    # temporaries of this name left by a killed run (SIGKILL, power loss): never renamed, remove
    for final in _previous_set(out_dir, cfg.output):
        for stale in io.stale_temporaries(final):
            stale.unlink(missing_ok=True)
    ckdir = _checkpoint_dir(out_dir, cfg.output)
    key = config_hash(cfg)
    if ckdir.is_dir():  # checkpoints of other parameters can never be resumed by this run
        for f in ckdir.iterdir():
            if not f.name.startswith((key, ".")):
                f.unlink(missing_ok=True)
        for k in range(n):
            for stale in io.stale_temporaries(ckdir / f"{key}_{k:04d}.npz"):
                stale.unlink(missing_ok=True)
    done = _load_checkpoints(ckdir, key, n) if (resume and n > 1) else {}

    def on_tilt(k, image, noise_free):
        if n == 1:
            return
        ckdir.mkdir(exist_ok=True)
        with io.atomic_path(ckdir / f"{key}_{k:04d}.npz", suffix=".npz", immediate=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, image=image, noise_free=noise_free)

    if done and log is not None:
        log(f"resuming: {len(done)} of {n} tilts from checkpoints in {ckdir}")
    with io.transaction() as tx:
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
        written = {f for _, f in tx.pending}
        for old in _previous_set(out_dir, cfg.output):
            if old not in written and old.exists():
                tx.remove(old)
    shutil.rmtree(ckdir, ignore_errors=True)
    return result, paths
