"""IMOD's side files of a tilt series: ``.xf``, ``.tlt``/``.rawtlt``, ``.mdoc``, ``.defocus``.

Conventions (from IMOD's manual pages, https://bio3d.colorado.edu/imod/doc/man/):

* An aligned IMOD stack (``.ali``, and what AreTomo writes) has the tilt axis parallel to
  the image's y axis (array rows), through the image centre. cutem reads such a stack with
  ``tilt_axis_deg = 90``; a positive tilt is a right-handed rotation of the specimen about
  +y, so a point (x, z) projects to x cos θ + z sin θ (IMOD's projection model in
  ``tiltalign``).
* ``.xf``: one line per view, ``A11 A12 A21 A22 DX DY``; the view is transformed (as
  ``newstack -xform`` does) by x' = A (x − c) + c + d with c the image centre, mapping the
  raw image onto the aligned one. The raw stack (``.st``) goes with the ``.xf``; the
  aligned stack (``.ali``) already has it applied.
* ``.tlt`` (refined) or ``.rawtlt`` (as recorded): one angle in degrees per line.
* SerialEM ``.mdoc``: ``[ZValue = k]`` sections with ``TiltAngle = …`` and
  ``ExposureDose = …`` (e/Å² of that image).
* ``.defocus`` (``ctfplotter``): lines ``view_start view_end angle_start angle_end
  defocus_nm`` (views numbered from 1, defocus positive for underfocus, in nm); in version 2
  the first line carries the version number as a sixth value; version 3 files start with a
  line of flags and carry ``defocus1 defocus2 astigmatism_angle`` (the mean of the two is
  used here).

This module reads and writes these files only; it knows no microscopy.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import atomic_path


def read_xf(path):
    """(n_views, 2, 3) affine transforms [[A11, A12, DX], [A21, A22, DY]] from an ``.xf``."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = [float(t) for t in line.split()]
        except ValueError:
            raise InputError(f"{path}, line {i}: not six numbers (A11 A12 A21 A22 DX DY)") from None
        if len(v) != 6:
            raise InputError(f"{path}, line {i}: {len(v)} values, an .xf line has six (A11 A12 A21 A22 DX DY)")
        rows.append([[v[0], v[1], v[4]], [v[2], v[3], v[5]]])
    if not rows:
        raise InputError(f"{path}: no transforms")
    return np.array(rows)


def write_xf(path, xf):
    """Write (n_views, 2, 3) transforms as an IMOD ``.xf`` (atomically)."""
    xf = np.asarray(xf, dtype=np.float64)
    with atomic_path(path, suffix=".xf") as tmp:
        Path(tmp).write_text("".join(
            f"{m[0, 0]:12.7f}{m[0, 1]:12.7f}{m[1, 0]:12.7f}{m[1, 1]:12.7f}{m[0, 2]:12.3f}{m[1, 2]:12.3f}\n"
            for m in xf))


def xf_for_axis(n_views, tilt_axis_deg):
    """Transforms that turn a stack whose tilt axis lies at ``tilt_axis_deg`` from image x
    so that it lies along y, as IMOD expects of an aligned stack (a rotation by
    90° − tilt_axis_deg about the centre, no shift). ``cutem simulate`` can write these
    beside its stack so ``newstack -xform NAME.xf`` gives an IMOD-aligned stack."""
    phi = math.radians(90.0 - float(tilt_axis_deg))
    c, s = math.cos(phi), math.sin(phi)
    return np.repeat(np.array([[[c, -s, 0.0], [s, c, 0.0]]]), int(n_views), axis=0)


def apply_xf(stack, xf):
    """Each image of ``stack`` (n, ny, nx) transformed by its ``.xf`` line (bilinear,
    zero outside), the centre at pixel ((nx − 1)/2, (ny − 1)/2): the aligned stack."""
    from scipy.ndimage import affine_transform

    stack = np.asarray(stack)
    if len(xf) != stack.shape[0]:
        raise InputError(f".xf has {len(xf)} transforms for a stack of {stack.shape[0]} images")
    ny, nx = stack.shape[1:]
    c = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    out = np.empty_like(stack)
    for i, m in enumerate(xf):
        a, d = m[:, :2], m[:, 2]
        ainv = np.linalg.inv(a)
        # output (x', y') samples the input at x = A⁻¹ (x' − c − d) + c; ndimage works in (row, col)
        mat = ainv[::-1, ::-1]
        off_xy = c - ainv @ (c + d)
        out[i] = affine_transform(stack[i], mat, offset=off_xy[::-1], order=1, mode="constant", cval=0.0)
    return out


def xf_axis_deg(xf):
    """Tilt-axis angle from image x in the raw stack that an ``.xf`` aligns (mean over views)."""
    rot = np.degrees(np.arctan2(xf[:, 1, 0], xf[:, 0, 0]))
    mean = np.degrees(np.angle(np.mean(np.exp(1j * np.radians(rot)))))
    return 90.0 - float(mean)


def read_mdoc(path):
    """``{"tilt_deg": [...], "dose_e_per_A2": [...] or None}`` in ``ZValue`` order from a SerialEM ``.mdoc``."""
    sections, cur = {}, None
    for line in Path(path).read_text(errors="replace").splitlines():
        m = re.match(r"\s*\[\s*ZValue\s*=\s*(\d+)\s*\]", line)
        if m:
            cur = sections.setdefault(int(m.group(1)), {})
            continue
        if cur is None or "=" not in line:
            continue
        key, val = (t.strip() for t in line.split("=", 1))
        if key in ("TiltAngle", "ExposureDose"):
            try:
                cur[key] = float(val.split()[0])
            except (ValueError, IndexError):
                raise InputError(f"{path}: {key} = {val!r} is not a number") from None
    if not sections or any("TiltAngle" not in s for s in sections.values()):
        raise InputError(f"{path}: no [ZValue] sections with a TiltAngle entry")
    order = sorted(sections)
    dose = [sections[k].get("ExposureDose") for k in order]
    return {"tilt_deg": np.array([sections[k]["TiltAngle"] for k in order]),
            "dose_e_per_A2": None if any(d is None for d in dose) else np.array(dose)}


def read_defocus(path, n_views):
    """Per-view defocus in Å (positive = underfocus) from a ``ctfplotter`` ``.defocus`` file.

    Each entry covers views ``view_start..view_end`` (from 1); views that no entry covers
    take the nearest covered view's value. Raises :class:`InputError` if nothing is covered.
    """
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise InputError(f"{path}: empty defocus file")
    try:
        first = [float(t) for t in lines[0]]
        version = int(first[-1]) if len(first) in (6, 7) and first[-1] in (2.0, 3.0) else 2
        entries = lines[1:] if version >= 3 else [lines[0][:5]] + lines[1:]
        out = np.full(int(n_views), np.nan)
        for ent in entries:
            v = [float(t) for t in ent]
            v0, v1 = int(v[0]), int(v[1])
            d_nm = 0.5 * (v[4] + v[5]) if version >= 3 and len(v) >= 6 else v[4]
            out[max(v0, 1) - 1:min(v1, n_views)] = d_nm * 10.0
    except (ValueError, IndexError):
        raise InputError(f"{path}: not a ctfplotter defocus file (view_start view_end angle_start "
                         f"angle_end defocus_nm per line)") from None
    ok = np.isfinite(out)
    if not ok.any():
        raise InputError(f"{path}: no entry covers views 1..{n_views}")
    idx = np.arange(n_views)
    return np.interp(idx, idx[ok], out[ok]) if not ok.all() else out


def write_defocus(path, angles_deg, defocus_A):
    """A version-2 ``.defocus`` file, one entry per view (defocus in nm)."""
    with atomic_path(path, suffix=".defocus") as tmp:
        lines = [f"{i + 1} {i + 1} {a:.2f} {a:.2f} {d / 10.0:.1f}" for i, (a, d) in enumerate(zip(angles_deg, defocus_A))]
        lines[0] += " 2"
        Path(tmp).write_text("\n".join(lines) + "\n")
