"""Movies: each image recorded as a stack of frames, with beam-induced motion and per-frame damage.

Model (``[detector] frames = N``). The dose d_k of tilt k is split evenly over N frames
(d_k/N each, so the frames' expected counts sum to the still image's: Poisson counts of
means μ/N add up to Poisson counts of mean μ). Frame f is the image of the specimen at
its mid-exposure E_{k,f} = Σ_{j<k} d_j + (f + ½) d_k/N (:func:`cutem.damage.mid_exposure`;
with ``Sample.damage`` its atoms' potential is filtered at that exposure, otherwise every
frame shares one intensity), displaced by the beam-induced motion of that frame, and
detected with its own noise stream (``SeedSequence([seed, k, f + 1])``; readout noise is
per frame, as on a real camera, so it adds N times the variance of a still).

Beam-induced motion (the two-part description of motion-correction programs such as
MotionCor2, Zheng et al., Nat. Methods 14:331, 2017: a global shift per frame plus a
smooth local deformation), in Å, seeded by ``SeedSequence([seed, k, 0])``:

- global: g_f = v·f·(cos φ, sin φ) + Σ_{i=1..f} σ_j ξ_i, with the drift speed
  v = ``motion_drift_A_per_frame``, φ uniform, ξ_i standard normal 2-vectors and σ_j =
  ``motion_jitter_A_per_frame`` (a random walk); g_0 = 0;
- local: ℓ_f(x) = s·f·u(x), s = ``motion_local_A_per_frame``, u a smooth random vector
  field (white noise low-passed by a Gaussian of σ = field/8, each component scaled to
  RMS 1), zero at f = 0.

Frame f records I_f(x) = I(x − g_f − ℓ_f(x)) (the specimen content moved by g_f + ℓ_f):
the global part as a Fourier phase ramp (exact for a band-limited periodic field), the local
part by cubic interpolation with wrap-around. The motion acts on the intensity at the
detector, before its MTF and noise, which is exact for a rigid shift of the specimen
(the optics are shift-invariant) and first-order for the slowly varying local part.

Outputs (:func:`simulate_movies`, called by :func:`cutem.run.run_simulation`):
``NAME_frames.mrc`` (one tilt) or ``NAME_frames_KKK.mrc`` per tilt: the (N, ny, nx) frames,
float32 (or rounded to int16 with ``frames_as_counts``: counts × gain, after the MTF);
``NAME_shifts.csv``: tilt, frame,
exposure_e_per_A2, shift_x_A, shift_y_A (the global g_f); ``NAME_local_shifts.csv``: tilt,
frame, x_A, y_A, shift_x_A, shift_y_A — the whole displacement g_f + ℓ_f at the centres of a
5×5 grid of patches (x, y from the image centre). The micrograph written as ``NAME.mrc`` is
the sum of the frames (what the camera integrates, not motion-corrected), and
``NAME_noisefree.mrc`` the sum of their noise-free images.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

import adjoints.backend as B

from . import io
from .damage import mid_exposure
from .imaging import ImageModel, tilt_doses
from .memory import check as memory_check
from .pipeline import Result
from .specimen import scene_from_config

PATCHES = 5


def frame_seed(seed: int, k: int, f: int) -> int:
    """Noise seed of frame ``f`` of tilt ``k`` (its own stream; ``f = -1``: the motion's)."""
    return int(np.random.SeedSequence([int(seed), int(k), int(f) + 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_shifts(det, rng):
    """(N, 2) global shifts g_f in Å (x, y) of the module docstring; g_0 = 0."""
    n = det.frames
    phi = rng.uniform(0.0, 2 * math.pi)
    f = np.arange(n, dtype=np.float64)[:, None]
    drift = det.motion_drift_A_per_frame * f * np.array([[math.cos(phi), math.sin(phi)]])
    steps = det.motion_jitter_A_per_frame * rng.standard_normal((n, 2))
    steps[0] = 0.0
    return drift + np.cumsum(steps, axis=0)


def local_field(shape, rng):
    """(2, ny, nx) smooth random displacement field u(x) (x, y components, RMS 1 each)."""
    ny, nx = shape
    sig = max(ny, nx) / 8.0
    qy = np.fft.fftfreq(ny)[:, None]
    qx = np.fft.fftfreq(nx)[None, :]
    lowpass = np.exp(-2 * (math.pi * sig) ** 2 * (qx * qx + qy * qy))
    u = np.fft.ifft2(np.fft.fft2(rng.standard_normal((2, ny, nx))) * lowpass).real
    return u / np.sqrt((u * u).mean(axis=(1, 2), keepdims=True))


def displace(image, shift_px, local_px=None):
    """I(x − s − ℓ(x)) for a global shift ``shift_px`` (x, y) and an optional (2, ny, nx) local field (pixels)."""
    xp = B.array_module(image)
    ny, nx = image.shape
    qy = xp.fft.fftfreq(ny)[:, None]
    qx = xp.fft.rfftfreq(nx)[None, :]
    ramp = xp.exp((-2j * math.pi) * (qx * float(shift_px[0]) + qy * float(shift_px[1])))
    out = B.irfft2(B.rfft2(image) * ramp.astype(B.complex_dtype(image.dtype)), s=(ny, nx))
    out = out.astype(image.dtype, copy=False)
    if local_px is None:
        return out
    ndimage = _ndimage(xp)
    yy, xx = xp.meshgrid(xp.arange(ny, dtype=image.dtype), xp.arange(nx, dtype=image.dtype), indexing="ij")
    lp = xp.asarray(local_px, dtype=image.dtype)
    coords = xp.stack([yy - lp[1], xx - lp[0]])
    # float64 spline coefficients, as map_coordinates' own prefilter makes them
    coef = ndimage.spline_filter(out, order=3, mode="grid-wrap", output=np.float64)
    n_blocks = B.threads() if xp is np else 1

    def rows(sl):
        return ndimage.map_coordinates(coef, coords[:, sl], order=3, mode="grid-wrap", prefilter=False,
                                       output=out.dtype)

    if n_blocks <= 1:
        return rows(slice(None))
    # the interpolation releases the GIL: row blocks on the threads (bit-identical to one call)
    edges = np.linspace(0, ny, n_blocks + 1).astype(int)
    parts = list(B.pool().map(rows, [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]))
    return xp.concatenate(parts, axis=0)


def _ndimage(xp):
    if xp is np:
        from scipy import ndimage
    else:  # pragma: no cover - GPU
        from cupyx.scipy import ndimage
    return ndimage


def patch_centres_A(shape, pixel_size_A):
    """(PATCHES², 2) centres (x, y) in Å from the image centre of a PATCHES×PATCHES grid, and their pixel indices."""
    ny, nx = shape
    iy = ((np.arange(PATCHES) + 0.5) * ny / PATCHES).astype(int)
    ix = ((np.arange(PATCHES) + 0.5) * nx / PATCHES).astype(int)
    IY, IX = np.meshgrid(iy, ix, indexing="ij")
    xy = np.stack([(IX.ravel() - nx / 2) * pixel_size_A, (IY.ravel() - ny / 2) * pixel_size_A], 1)
    return xy, IY.ravel(), IX.ravel()


def movie_tilt(model: ImageModel, seed: int, params=None):
    """Frames of one tilt: (frames (N, ny, nx), noise-free frames, global shifts (N, 2) Å,
    local field u (2, ny, nx), exposures (N,)) as host arrays. ``params``: image-model inputs
    instead of the config's (:meth:`cutem.imaging.ImageModel.inputs`)."""
    cfg, det = model.config, model.detector
    n = det.frames
    doses = tilt_doses(cfg)
    rng = np.random.default_rng(frame_seed(seed, model.tilt, -1))
    shifts = global_shifts(det, rng)
    u = local_field(det.shape, rng) if det.motion_local_A_per_frame > 0 else None
    frame_det = det.replace(dose_e_per_A2=det.dose_e_per_A2 / n)
    px = det.pixel_size_A
    exposures = np.array([mid_exposure(doses, model.tilt, f, n) for f in range(n)])
    frames = np.empty((n, *det.shape), model.dtype)
    clean = np.empty_like(frames)
    intensity = None
    for f in range(n):
        m = dataclasses.replace(model, detector=frame_det, exposure_e_per_A2=float(exposures[f]))
        if intensity is None or cfg.sample.damage:
            intensity = m.image_intensity(params)
        local = None if u is None else u * (det.motion_local_A_per_frame * f / px)
        moved = displace(intensity, shifts[f] / px, local)
        d = m.detect(moved, rng=B.default_rng(frame_seed(seed, model.tilt, f), model.xp), estimator="score")
        frames[f] = B.to_numpy(d.image)
        clean[f] = B.to_numpy(d.noise_free)
    return frames, clean, shifts, u, exposures


def _write_frames(path, frames, pixel_size_A, as_counts, label):
    if not as_counts:
        io.write_mrc(path, frames, pixel_size_A, label=label)
        return
    import mrcfile

    counts = np.rint(frames)
    if counts.min() < -32768 or counts.max() > 32767:
        raise RuntimeError(f"frame counts exceed int16 for {path}; write float32 frames instead")
    with io.atomic_path(path, suffix=".mrc") as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(counts.astype(np.int16))
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size_A
            mrc.update_header_stats()
            mrc.add_label(label[:80])


def _write_csv(path, header, rows):
    with io.atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)


def simulate_movies(cfg, out_dir, device=None, progress=False, scene=None):
    """Every tilt of ``cfg`` as a movie (module docstring): writes the frame stacks and the
    ground-truth shift tables to ``out_dir`` and returns a :class:`cutem.pipeline.Result`
    whose images are the frame sums; ``result.extra["movie_files"]`` lists what was written."""
    xp = B.get_xp(device)
    scene = scene if scene is not None else scene_from_config(cfg)
    plan = memory_check(cfg, scene, "gpu" if xp is not np else "cpu")
    n_tilts = len(cfg.geometry.tilt_angles_deg)
    det = cfg.detector
    out = Path(out_dir)
    images = np.empty((n_tilts, *det.shape), np.dtype(cfg.simulation.dtype))
    clean = np.empty_like(images)
    glob_rows, local_rows, files = [], [], []
    it = range(n_tilts)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="movies", unit="tilt", leave=False)
    for k in it:
        model = ImageModel.from_config(cfg, k, scene=scene, xp=xp, atom_chunk=plan.atom_chunk)
        frames, nf, shifts, u, exposures = movie_tilt(model, cfg.seed)
        images[k], clean[k] = frames.sum(0), nf.sum(0)
        path = out / (f"{cfg.output}_frames.mrc" if n_tilts == 1 else f"{cfg.output}_frames_{k:03d}.mrc")
        _write_frames(path, frames, det.pixel_size_A, det.frames_as_counts,
                      f"cutem {cfg.output} seed={cfg.seed} tilt {k} frames")
        files.append(path)
        xy, iy, ix = patch_centres_A(det.shape, det.pixel_size_A)
        for f in range(det.frames):
            glob_rows.append([k, f, f"{exposures[f]:.6g}", f"{shifts[f, 0]:.6f}", f"{shifts[f, 1]:.6f}"])
            loc = np.zeros((len(xy), 2)) if u is None else det.motion_local_A_per_frame * f * u[:, iy, ix].T
            for (x, y), (lx, ly) in zip(xy, loc):
                local_rows.append([k, f, f"{x:.3f}", f"{y:.3f}", f"{shifts[f, 0] + lx:.6f}",
                                   f"{shifts[f, 1] + ly:.6f}"])
    shifts_path, local_path = out / f"{cfg.output}_shifts.csv", out / f"{cfg.output}_local_shifts.csv"
    _write_csv(shifts_path, ["tilt", "frame", "exposure_e_per_A2", "shift_x_A", "shift_y_A"], glob_rows)
    _write_csv(local_path, ["tilt", "frame", "x_A", "y_A", "shift_x_A", "shift_y_A"], local_rows)
    result = Result(images, clean, tuple(cfg.geometry.tilt_angles_deg), det.pixel_size_A, cfg,
                    atoms_count=scene.n_atoms)
    result.extra["movie_files"] = [*files, shifts_path, local_path]
    return result


__all__ = ["simulate_movies", "movie_tilt", "global_shifts", "local_field", "displace", "frame_seed",
           "patch_centres_A"]
