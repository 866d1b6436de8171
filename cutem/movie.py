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
  RMS 1; drawn on at most 64² points and interpolated exactly, :func:`local_field`), zero
  at f = 0.

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
from adjoints.stage import unwrap

from . import detector as D
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


#: the local field is drawn on at most this many points per axis and interpolated exactly (:func:`local_field`)
FIELD_GRID = 64


def local_field(shape, rng):
    """(2, ny, nx) smooth random displacement field u(x) (x, y components, RMS 1 each).

    White noise low-passed by a Gaussian of σ = max(ny, nx)/8 pixels, whose transfer
    exp(−2π²σ²q²) at k cycles per field is below exp(−0.3 k²): nothing is left of it beyond
    a dozen cycles. So the noise is drawn on a coarse grid of min(n, :data:`FIELD_GRID`)
    points per axis that spans the field, low-passed there at the same physical frequencies,
    its Nyquist terms dropped (weight e^{−π²·64²/32} at most), and the band-limited periodic
    field it defines is evaluated on the full grid by its Fourier sum (zero-padded Fourier
    interpolation, exact): u = Re(E_y C E_xᵀ), a (ny × m)(m × m)(m × nx) product instead of
    two full-grid FFTs of (2, ny, nx) noise. The RMS is that of the Fourier coefficients
    (Parseval, exact on any grid that holds the band). A grid of at most FIELD_GRID points
    draws the same noise as the full-grid construction did."""
    ny, nx = (int(n) for n in shape)
    sig = max(ny, nx) / 8.0
    my, mx = min(ny, FIELD_GRID), min(nx, FIELD_GRID)
    ky = np.fft.fftfreq(my, d=1.0 / my)          # integer cycles per field
    kx = np.fft.rfftfreq(mx, d=1.0 / mx)
    lowpass = np.exp(-2 * (math.pi * sig) ** 2 * ((ky / ny)[:, None] ** 2 + (kx / nx)[None, :] ** 2))
    c = np.fft.rfft2(rng.standard_normal((2, my, mx))) * lowpass
    if my % 2 == 0:
        c[:, my // 2] = 0.0
    if mx % 2 == 0:
        c[:, :, mx // 2] = 0.0
    # the half spectrum's columns kx > 0 stand for ±kx: weight 2 in the real sum and in Parseval
    wx = np.where(kx > 0, 2.0, 1.0)
    power = (np.abs(c) ** 2 * wx).sum(axis=(1, 2))
    c *= wx[None, None, :] / np.sqrt(power)[:, None, None]
    ey = np.exp((2j * math.pi / ny) * np.outer(np.arange(ny), ky))       # (ny, my)
    ex = np.exp((2j * math.pi / nx) * np.outer(np.arange(nx), kx))       # (nx, mx/2 + 1)
    out = np.empty((2, ny, nx))
    for k in range(2):
        a = ey @ c[k]                                                    # (ny, mx/2 + 1)
        # Re(a exᵀ) = Re a · Re exᵀ − Im a · Im exᵀ, one real product
        np.matmul(np.concatenate([a.real, -a.imag], 1), np.concatenate([ex.real, ex.imag], 1).T, out=out[k])
    return out


def _bspline_dft(n):
    """DFT of the cubic B-spline's samples (1/6, 4/6, 1/6) on a periodic grid of n: (2 + cos 2πk/n)/3."""
    return (2.0 + np.cos(2 * math.pi * np.fft.fftfreq(n))) / 3.0


def displace(image, shift_px, local_px=None):
    """I(x − s − ℓ(x)) for a global shift ``shift_px`` (x, y) and an optional (2, ny, nx) local field (pixels).

    The global shift is a Fourier phase ramp, separable: e^{−2πi k_y s_y/n_y} on the rows times
    e^{−2πi k_x s_x/n_x} on the columns. With a local field the shifted image is interpolated
    by cubic B-splines with wrap-around, whose coefficients solve c ⊛ (1/6, 4/6, 1/6) = I along
    each axis; on a periodic grid that convolution is diagonal in Fourier space, so the
    coefficients are the same inverse FFT with the ramp divided by the B-spline's DFT per axis
    (:func:`_bspline_dft`; ``scipy.ndimage.spline_filter`` with ``grid-wrap`` solves the same
    system by recursive filtering, single-threaded, on a float64 copy). Everything in the
    image's precision."""
    xp = B.array_module(image)
    ny, nx = image.shape
    sx, sy = float(shift_px[0]), float(shift_px[1])
    if local_px is None and sx == 0.0 and sy == 0.0:
        return image.copy()
    ry = np.exp((-2j * math.pi * sy) * np.fft.fftfreq(ny))
    rx = np.exp((-2j * math.pi * sx) * np.fft.rfftfreq(nx))
    if local_px is not None:
        ry = ry / _bspline_dft(ny)
        rx = rx / _bspline_dft(nx)[:nx // 2 + 1]
    cdt = B.complex_dtype(image.dtype)
    spec = B.rfft2(image)
    spec *= xp.asarray(ry.astype(cdt))[:, None]
    spec *= xp.asarray(rx.astype(cdt))[None, :]
    # with a local field: the spline coefficients of the shifted image, else the image itself
    out = B.irfft2(spec, s=(ny, nx)).astype(image.dtype, copy=False)
    if local_px is None:
        return out
    ndimage = _ndimage(xp)
    lp = xp.asarray(local_px, dtype=image.dtype)
    yy = xp.arange(ny, dtype=image.dtype)[:, None]
    xx = xp.arange(nx, dtype=image.dtype)[None, :]
    n_blocks = B.threads() if xp is np else 1

    def rows(sl):
        coords = xp.stack([yy[sl] - lp[1, sl], xx - lp[0, sl]])
        return ndimage.map_coordinates(out, coords, order=3, mode="grid-wrap", prefilter=False, output=out.dtype)

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


def movie_tilt(model: ImageModel, seed: int, params=None, twins=True):
    """Frames of one tilt: (frames (N, ny, nx), noise-free frames, global shifts (N, 2) Å,
    local field u (2, ny, nx), exposures (N,)) as host arrays. ``params``: image-model inputs
    instead of the config's (:meth:`cutem.imaging.ImageModel.inputs`). ``twins=False``: the
    noise-free frames' sum (ny, nx) instead of the frames, as one MTF of the summed expected
    counts (the MTF is linear: the same sum to rounding, for one FFT pair instead of N)."""
    cfg, det = model.config, model.detector
    n = det.frames
    doses = tilt_doses(cfg)
    rng = np.random.default_rng(frame_seed(seed, model.tilt, -1))
    shifts = global_shifts(det, rng)
    u = local_field(det.shape, rng) if det.motion_local_A_per_frame > 0 else None
    u_img = None if u is None else model.xp.asarray(u.astype(model.dtype))   # in the image's precision, once
    frame_det = det.replace(dose_e_per_A2=det.dose_e_per_A2 / n)
    px = det.pixel_size_A
    exposures = np.array([mid_exposure(doses, model.tilt, f, n) for f in range(n)])
    frames = np.empty((n, *det.shape), model.dtype)
    clean = np.empty_like(frames) if twins else None
    counts_sum = None
    intensity = None
    for f in range(n):
        m = dataclasses.replace(model, detector=frame_det, exposure_e_per_A2=float(exposures[f]))
        if intensity is None or cfg.sample.damage:
            intensity = m.image_intensity(params)
        # ℓ_0 = 0: frame 0 needs no interpolation (the spline interpolates its own samples)
        local = None if u is None or f == 0 else u_img * model.dtype.type(det.motion_local_A_per_frame * f / px)
        moved = displace(intensity, shifts[f] / px, local)
        d = m.detect(moved, rng=B.default_rng(frame_seed(seed, model.tilt, f), model.xp), estimator="score",
                     noise_free=twins)
        frames[f] = B.to_numpy(d.image)
        if twins:
            clean[f] = B.to_numpy(d.noise_free)
        else:
            nb = unwrap(d.expected_counts)
            counts_sum = nb.copy() if counts_sum is None else counts_sum + nb
    if not twins:
        prm = D.detector_inputs(frame_det, model.xp, model.dtype)
        clean = B.to_numpy(D.MTF()(counts_sum, *(prm[k] for k in D.MTF_PARAM_NAMES)))
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
        frames, clean[k], shifts, u, exposures = movie_tilt(model, cfg.seed, twins=False)
        images[k] = frames.sum(0)
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
