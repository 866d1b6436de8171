"""Volume rendering: emission–absorption ray casting, maximum-intensity projection, slices.

Everything works on ``xp`` arrays (NumPy or CuPy, one code path): the rays of an
orthographic camera are marched through the volume in slabs of depth samples, the volume
is sampled by trilinear interpolation (a gather of the 8 corners), and the samples are
composited front to back.

View. A volume ``(nz, ny, nx)`` is seen through an orthographic camera whose rays at
azimuth = elevation = 0 run along +z (the beam direction at zero tilt), with image rows
along y and columns along x, so that the MIP at (0, 0) is ``volume.max(axis=0)`` exactly.
The camera is turned by R = R_y(azimuth) · R_x(elevation) about the volume's centre
(azimuth spins the volume about the vertical image axis, elevation tips it towards the
viewer).

Emission–absorption (Max, IEEE TVCG 1:99, 1995, eq. for the discrete front-to-back
composite): C ← C + T α c, T ← T (1 − α), with α = 1 − (1 − α_tf)^(Δs / 1 voxel)
(opacity corrected for the step Δs), c and α_tf from the transfer function of the
normalised value; the image is C + T · background.

Transfer functions: presets (``grey``, ``bone``, ``cryo``) or a text file of control
points, one per line ``value r g b alpha`` (all in [0, 1]; value is the normalised
intensity after the percentile window), ``#`` starts a comment, at least two points,
values increasing. Colours and opacity are interpolated linearly between points.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import adjoints.backend as B

from .errors import InputError

PRESETS = {
    # value, r, g, b, alpha
    "grey": [(0.0, 0.0, 0.0, 0.0, 0.0), (0.35, 0.35, 0.35, 0.35, 0.0), (1.0, 1.0, 1.0, 1.0, 0.6)],
    "bone": [(0.0, 0.0, 0.0, 0.0, 0.0), (0.45, 0.55, 0.35, 0.25, 0.0), (0.7, 0.9, 0.78, 0.6, 0.25),
             (1.0, 1.0, 1.0, 0.95, 0.9)],
    # cryo-ET tomograms: noise and ice transparent, dense protein opaque (blue → gold)
    "cryo": [(0.0, 0.0, 0.0, 0.0, 0.0), (0.55, 0.1, 0.2, 0.45, 0.0), (0.7, 0.2, 0.6, 0.95, 0.12),
             (0.85, 1.0, 0.8, 0.35, 0.45), (1.0, 1.0, 1.0, 0.9, 0.9)],
}
MODES = ("dvr", "mip", "slices")


class TransferFunction:
    """Piecewise-linear map from a normalised value in [0, 1] to (r, g, b, alpha)."""

    def __init__(self, points, name="custom"):
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 5 or pts.shape[0] < 2:
            raise InputError(f"transfer function {name}: needs at least two points of 5 numbers")
        if np.any(pts < 0) or np.any(pts > 1):
            raise InputError(f"transfer function {name}: values, colours and alpha must lie in [0, 1]")
        if np.any(np.diff(pts[:, 0]) <= 0):
            raise InputError(f"transfer function {name}: control-point values must increase")
        self.points = pts
        self.name = name

    def __call__(self, v):
        """RGBA of normalised values ``v`` (any shape) → array of shape v.shape + (4,)."""
        xp = B.array_module(v)
        pts = xp.asarray(self.points.astype(B.real_dtype(v.dtype)))
        return xp.stack([xp.interp(v, pts[:, 0], pts[:, k]) for k in range(1, 5)], axis=-1)

    @classmethod
    def load(cls, spec):
        """A preset name or a control-point file (see the module docstring)."""
        if spec in PRESETS:
            return cls(PRESETS[spec], spec)
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"transfer function {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a file")
        pts = []
        for i, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            try:
                vals = [float(p) for p in parts]
            except ValueError:
                raise InputError(f"transfer function {path}:{i}: {raw.strip()!r} is not 5 numbers") from None
            if len(vals) != 5:
                raise InputError(f"transfer function {path}:{i}: expected 'value r g b alpha', got {len(vals)} numbers")
            pts.append(vals)
        return cls(pts, str(path))

    def save(self, path):
        from .io import atomic_path

        lines = ["# value r g b alpha  (value: normalised intensity, all in [0, 1])"]
        lines += [" ".join(f"{x:.4f}" for x in p) for p in self.points]
        with atomic_path(path, suffix=".txt") as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n")


def normalise(volume, lo_pct=1.0, hi_pct=99.9, invert=False):
    """Map the volume to [0, 1] by a percentile window (``invert`` flips dark and bright)."""
    xp = B.array_module(volume)
    v = xp.asarray(volume, dtype=np.float32)
    if invert:
        v = -v
    lo, hi = (float(B.to_numpy(q)) for q in xp.percentile(v, xp.asarray([lo_pct, hi_pct])))
    if hi <= lo:
        hi = lo + 1.0
    return xp.clip((v - lo) / (hi - lo), 0.0, 1.0)


def view_matrix(azimuth_deg=0.0, elevation_deg=0.0):
    """R = R_y(azimuth) R_x(elevation) acting on (x, y, z) camera vectors."""
    a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return ry @ rx


def _frame_shape(shape):
    """Image (H, W) and depth samples K for a volume: the diagonal, with the parity of
    (ny, nx, nz) so that at the default view sample points hit voxel centres."""
    nz, ny, nx = shape
    diag = float(np.sqrt(nz * nz + ny * ny + nx * nx))

    def fit(n):
        m = int(np.ceil(diag))
        return m + ((m - n) % 2)

    return fit(ny), fit(nx), fit(nz)


def _trilinear(padded, pz, py, px):
    """Sample a zero-bordered volume at voxel coordinates (already +1 for the border)."""
    xp = B.array_module(padded)
    nz, ny, nx = padded.shape
    # outside the box every position clips onto the zero border; the floor is capped at
    # n − 2 so that a point on the far border reads corner n − 1 (zero) with weight 1
    pz, py, px = xp.clip(pz, 0, nz - 1), xp.clip(py, 0, ny - 1), xp.clip(px, 0, nx - 1)
    z0 = xp.minimum(xp.floor(pz), nz - 2)
    y0 = xp.minimum(xp.floor(py), ny - 2)
    x0 = xp.minimum(xp.floor(px), nx - 2)
    fz, fy, fx = pz - z0, py - y0, px - x0
    i = (z0.astype(np.int64) * ny + y0.astype(np.int64)) * nx + x0.astype(np.int64)
    flat = padded.reshape(-1)
    sy, sz = nx, ny * nx
    c00 = flat[i] * (1 - fx) + flat[i + 1] * fx
    c01 = flat[i + sy] * (1 - fx) + flat[i + sy + 1] * fx
    c10 = flat[i + sz] * (1 - fx) + flat[i + sz + 1] * fx
    c11 = flat[i + sz + sy] * (1 - fx) + flat[i + sz + sy + 1] * fx
    return (c00 * (1 - fy) + c01 * fy) * (1 - fz) + (c10 * (1 - fy) + c11 * fy) * fz


def _march(volume, azimuth_deg, elevation_deg, step, size, chunk):
    """Set up the rays of a view: returns ``((H, W), window, slabs)``.

    Only rays and depth samples that can meet the volume are marched: the volume's
    corners (with the one-voxel zero border that trilinear sampling reaches) are projected
    on the camera axes, giving a row/column ``window`` (two slices) of the frame and a depth
    range. ``slabs`` yields the sampled values of successive slabs of depth samples,
    (k, h_window, w_window), front to back. Sample positions are those of the full frame,
    so the window changes nothing but the work.
    """
    xp = B.array_module(volume)
    dt = np.float32
    padded = xp.zeros(tuple(n + 2 for n in volume.shape), dtype=dt)
    padded[1:-1, 1:-1, 1:-1] = volume
    h, w, k_default = _frame_shape(volume.shape)
    if size is not None:
        h, w = size
    nz, ny, nx = volume.shape
    cz, cy, cx = ((np.asarray(volume.shape) - 1) / 2.0)
    n_steps = max(int(np.ceil(k_default / step)), 1)
    r = view_matrix(azimuth_deg, elevation_deg)  # columns: camera x, y, z in volume (x, y, z)
    half = np.array([(nx + 1) / 2.0, (ny + 1) / 2.0, (nz + 1) / 2.0])
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    cam = corners @ r  # rows: (u, v, s) of each corner
    lo, hi = cam.min(axis=0) - 1.0, cam.max(axis=0) + 1.0
    u_all = np.arange(w) - (w - 1) / 2.0
    v_all = np.arange(h) - (h - 1) / 2.0
    s_all = (np.arange(n_steps) - (n_steps - 1) / 2.0) * step
    cols = np.flatnonzero((u_all >= lo[0]) & (u_all <= hi[0]))
    rows = np.flatnonzero((v_all >= lo[1]) & (v_all <= hi[1]))
    s_keep = s_all[(s_all >= lo[2]) & (s_all <= hi[2])].astype(dt)
    if len(cols) == 0 or len(rows) == 0 or len(s_keep) == 0:
        return (h, w), None, iter(())
    window = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    u = xp.asarray(u_all[window[1]].astype(dt))
    v = xp.asarray(v_all[window[0]].astype(dt))
    # base point of each ray per volume axis (x, y, z), plus s · direction
    base = [(r[ax, 0] * u[None, :] + r[ax, 1] * v[:, None]) for ax in range(3)]
    centre = (cx + 1, cy + 1, cz + 1)  # +1: the zero border

    def slabs():
        for k0 in range(0, len(s_keep), chunk):
            s = xp.asarray(s_keep[k0:k0 + chunk])[:, None, None]
            px = base[0][None] + r[0, 2] * s + centre[0]
            py = base[1][None] + r[1, 2] * s + centre[1]
            pz = base[2][None] + r[2, 2] * s + centre[2]
            yield _trilinear(padded, pz, py, px)

    return (h, w), window, slabs()


def mip(volume, azimuth_deg=0.0, elevation_deg=0.0, step=1.0, size=None, chunk=16):
    """Maximum-intensity projection (H, W) along the view direction (0 where no ray hits)."""
    xp = B.array_module(volume)
    (h, w), window, slabs = _march(volume, azimuth_deg, elevation_deg, step, size, chunk)
    out = xp.zeros((h, w), dtype=np.float32)
    sub = None
    for vals in slabs:
        m = vals.max(axis=0)
        sub = m if sub is None else xp.maximum(sub, m)
    if sub is not None:
        out[window] = sub
    return out


def dvr(volume, tf, azimuth_deg=0.0, elevation_deg=0.0, step=0.5, size=None, chunk=16,
        opacity=1.0, background=(0.0, 0.0, 0.0)):
    """Emission–absorption ray casting of a normalised volume ([0, 1]) → RGB (H, W, 3) in [0, 1].

    ``tf``: a :class:`TransferFunction`; ``opacity`` scales α_tf (per voxel length).
    Marching stops early when every ray's transmittance is below 1e-3.
    """
    xp = B.array_module(volume)
    (h, w), window, slabs = _march(volume, azimuth_deg, elevation_deg, step, size, chunk)
    colour = xp.zeros((h, w, 3), dtype=np.float32)
    trans = xp.ones((h, w), dtype=np.float32)
    c_sub = t_sub = None
    for vals in slabs:
        rgba = tf(vals)
        a = 1.0 - (1.0 - xp.clip(rgba[..., 3] * opacity, 0.0, 0.999999)) ** step
        if c_sub is None:
            c_sub = xp.zeros(vals.shape[1:] + (3,), dtype=np.float32)
            t_sub = xp.ones(vals.shape[1:], dtype=np.float32)
        for k in range(vals.shape[0]):
            wk = t_sub * a[k]
            c_sub += wk[..., None] * rgba[k, ..., :3]
            t_sub = t_sub * (1.0 - a[k])
        if float(B.to_numpy(t_sub.max())) < 1e-3:
            break
    if c_sub is not None:
        colour[window] = c_sub
        trans[window] = t_sub
    bg = xp.asarray(np.asarray(background, dtype=np.float32))
    return xp.clip(colour + trans[..., None] * bg, 0.0, 1.0)


def slices(volume, index=None):
    """Orthogonal central slices as one montage::

        [ xy (ny × nx) | zy (ny × nz) ]
        [ xz (nz × nx) |   blank      ]

    ``index`` = (z, y, x) of the slices (default: the centre). Separated by a 2-pixel gap
    of the minimum value.
    """
    xp = B.array_module(volume)
    nz, ny, nx = volume.shape
    iz, iy, ix = index if index is not None else (nz // 2, ny // 2, nx // 2)
    gap = 2
    fill = volume.min()
    out = xp.full((ny + gap + nz, nx + gap + nz), fill, dtype=volume.dtype)
    out[:ny, :nx] = volume[iz]
    out[:ny, nx + gap:] = volume[:, :, ix].T
    out[ny + gap:, :nx] = volume[:, iy, :]
    return out


def to_rgb8(image):
    """uint8 host copy of an RGB image in [0, 1]."""
    return (np.clip(B.to_numpy(image), 0, 1) * 255 + 0.5).astype(np.uint8)


def bin_volume(volume, max_size):
    """Average-bin by an integer factor so that no side exceeds ``max_size`` (previews)."""
    xp = B.array_module(volume)
    f = int(np.ceil(max(volume.shape) / float(max_size)))
    if f <= 1:
        return volume
    nz, ny, nx = (n // f * f for n in volume.shape)
    v = volume[:nz, :ny, :nx]
    return v.reshape(nz // f, f, ny // f, f, nx // f, f).mean(axis=(1, 3, 5)).astype(xp.float32)


def render(volume, mode="dvr", tf="grey", azimuth_deg=0.0, elevation_deg=0.0, invert=False,
           window=(1.0, 99.9), step=0.5, opacity=1.0, size=None):
    """One view as a host uint8 image: RGB (H, W, 3) for ``dvr``, grey (H, W) for ``mip``/``slices``."""
    if mode not in MODES:
        raise InputError(f"render mode must be one of {', '.join(MODES)}, not {mode!r}")
    if volume.ndim != 3:
        raise InputError(f"render: volume must be 3D, got shape {volume.shape}")
    v = normalise(volume, window[0], window[1], invert)
    if mode == "slices":
        return to_rgb8(slices(v))
    if mode == "mip":
        return to_rgb8(mip(v, azimuth_deg, elevation_deg, step=min(step, 1.0), size=size))
    tf = tf if isinstance(tf, TransferFunction) else TransferFunction.load(tf)
    return to_rgb8(dvr(v, tf, azimuth_deg, elevation_deg, step=step, size=size, opacity=opacity))


def orbit(volume, n_frames, mode="dvr", elevation_deg=15.0, progress=None, **kw):
    """``n_frames`` views at azimuths 0, 360/n, ... (uint8 frames)."""
    if n_frames < 1:
        raise InputError(f"orbit needs at least one frame, got {n_frames}")
    frames = []
    for i in range(int(n_frames)):
        frames.append(render(volume, mode, azimuth_deg=360.0 * i / n_frames, elevation_deg=elevation_deg, **kw))
        if progress is not None:
            progress(i)
    return frames


def save_gif(frames, path, frame_ms=80):
    """Animated GIF (looping) of uint8 frames (grey or RGB), written atomically."""
    from PIL import Image

    from .io import atomic_path

    imgs = [Image.fromarray(np.asarray(f)) for f in frames]
    with atomic_path(path, suffix=".gif") as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(frame_ms), loop=0)


def save_png(image, path):
    from .io import write_png

    write_png(path, np.asarray(image), stretch=False)


def side_by_side(images, gap=4, value=255):
    """Concatenate uint8 images (same height; grey images become RGB when mixed) horizontally."""
    ims = [np.asarray(i) for i in images]
    rgb = any(i.ndim == 3 for i in ims)
    if rgb:
        ims = [np.repeat(i[..., None], 3, -1) if i.ndim == 2 else i for i in ims]
    h = max(i.shape[0] for i in ims)
    parts = []
    for k, im in enumerate(ims):
        if im.shape[0] < h:
            pad = np.full((h - im.shape[0],) + im.shape[1:], value, np.uint8)
            im = np.concatenate([im, pad], 0)
        parts.append(im)
        if k < len(ims) - 1:
            parts.append(np.full((h, gap) + im.shape[2:], value, np.uint8))
    return np.concatenate(parts, 1)
