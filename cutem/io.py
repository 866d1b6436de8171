"""Files: MRC images/stacks/volumes, .tlt angle lists, PNG previews, STAR tables (``starfile``).

Every writer goes through :func:`atomic_path`: the data is written to a temporary
name in the target folder and renamed over the final name only when complete, so an
interrupted run never leaves a partial file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_mrc(path, data, pixel_size_A, origin_A=None, label=None):
    """Write a float32 MRC (2D image, 3D stack or volume) with the voxel size in the header.

    A stack (ny, nx) per section is written as an image stack (ispg 0, mz = 1 ... the
    mrcfile convention ``set_image_stack``); pass ``volume=True`` through
    :func:`write_volume` for a volume.
    """
    _write_mrc(path, data, pixel_size_A, stack=np.ndim(data) == 3, origin_A=origin_A, label=label)


def write_volume(path, data, voxel_size_A, origin_A=None, label=None):
    """Write a 3D float32 MRC volume (z, y, x) with the voxel size in the header."""
    _write_mrc(path, data, voxel_size_A, stack=False, origin_A=origin_A, label=label)


def _write_mrc(path, data, pixel_size_A, stack, origin_A=None, label=None):
    import mrcfile

    from adjoints.backend import to_numpy

    arr = np.ascontiguousarray(to_numpy(data), dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise RuntimeError(f"refusing to write non-finite values to {path}")
    with atomic_path(path, suffix=".mrc") as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            # mrcfile stamps label 0 with the creation time; the same run must give
            # bit-identical files, so the labels are cutem's own only
            m.header.label[:] = b""
            m.header.nlabl = 0
            m.set_data(arr)
            if stack and arr.ndim == 3:
                m.set_image_stack()
            elif arr.ndim == 3:
                m.set_volume()
            m.voxel_size = float(pixel_size_A)
            if origin_A is not None:
                m.header.origin = tuple(float(o) for o in origin_A)
            if label:
                m.add_label(str(label)[:80])
            m.update_header_stats()


def read_mrc(path, ndim=None, name="input"):
    """Read an MRC as float32 ``(data, pixel_size_A)``; checks mode and dimensionality.

    ``ndim`` (2, 3 or (2, 3)) states what the command accepts; anything else is an
    :class:`InputError` naming the file.
    """
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} {path}: no such file")
    try:
        with mrcfile.open(path, permissive=True) as m:
            if m.data is None:
                raise InputError(f"{name} {path}: not a readable MRC file")
            if m.data.dtype.kind not in "fiu":
                raise InputError(f"{name} {path}: MRC mode {m.header.mode} ({m.data.dtype}) is not a real image mode")
            data = np.asarray(m.data, dtype=np.float32)
            px = float(m.voxel_size.x)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name} {path}: not a readable MRC file ({type(exc).__name__}: {exc})") from None
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed and data.ndim not in allowed:
        raise InputError(f"{name} {path}: has {data.ndim} dimensions {data.shape}, expected "
                         f"{' or '.join(str(a) + 'D' for a in allowed)}")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{name} {path}: contains NaN or infinite values")
    return data, (px if np.isfinite(px) and px > 0 else 1.0)  # header without a usable size: 1 Å


def write_tlt(path, angles_deg):
    """IMOD-style .tlt: one tilt angle in degrees per line, in stack order."""
    with atomic_path(path, suffix=".tlt") as tmp:
        Path(tmp).write_text("".join(f"{a:.3f}\n" for a in angles_deg))


def read_tlt(path):
    try:
        vals = [float(line.split()[0]) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise InputError(f"tilt file {path}: unreadable ({exc})") from None
    return np.array(vals)


def to_uint8(image, lo_pct=0.5, hi_pct=99.5):
    """Contrast-stretched 8-bit copy of an image (percentile window)."""
    from adjoints.backend import to_numpy

    a = np.asarray(to_numpy(image), dtype=np.float64)
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path, image, stretch=True):
    """Write an 8-bit grey (2D) or RGB(A) (3D uint8) PNG preview."""
    from PIL import Image

    arr = to_uint8(image) if stretch and np.ndim(image) == 2 else np.asarray(image)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_star(path, tables):
    """Write STAR data blocks with ``starfile`` (teamtomo), atomically.

    ``tables``: ``{block: DataFrame or dict}`` (a dict of scalars is a simple block, a
    DataFrame or a dict of equal-length lists a loop); columns are RELION names without
    the leading underscore.
    """
    import pandas as pd
    import starfile

    blocks = {}
    for name, t in tables.items():
        if isinstance(t, dict) and any(isinstance(v, (list, tuple, np.ndarray)) for v in t.values()):
            t = pd.DataFrame(t)
        blocks[name] = t
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
        # starfile stamps the clock into its header line; the same run must give the same bytes
        lines = Path(tmp).read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("# Created by the starfile"):
            lines[0] = "# written by cutem with starfile (teamtomo)\n"
        Path(tmp).write_text("".join(lines))


def read_star(path, name="STAR file"):
    """Read every data block of a STAR file with ``starfile``: ``{block: DataFrame or dict}``."""
    import starfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} {path}: no such file")
    try:
        tables = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(f"{name} {path}: not a readable STAR file ({type(exc).__name__}: {exc})") from None
    if not tables:
        raise InputError(f"{name} {path}: no data blocks")
    return tables
