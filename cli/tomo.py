"""``cutem reconstruct``: a tomogram from a tilt stack (WBP or SIRT)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from .common import device_option, fail, quiet_option


def _axis_from_header(path):
    """``tilt_axis_deg=<value>`` from the MRC labels, or None."""
    import mrcfile

    try:
        with mrcfile.open(path, permissive=True, header_only=True) as m:
            labels = [bytes(lab).decode("ascii", "ignore").strip() for lab in m.header.label[: int(m.header.nlabl)]]
    except Exception:
        return None
    for lab in labels:
        for tok in lab.replace(",", " ").split():
            if tok.startswith("tilt_axis_deg="):
                try:
                    return float(tok.split("=", 1)[1])
                except ValueError:
                    return None
    return None


def _siblings(path, suffix):
    """Files beside a stack that ``cutem simulate`` writes: NAME<suffix> for NAME.mrc and
    NAME_noisefree.mrc."""
    p = Path(path)
    stems = [p.stem] + ([p.stem[: -len("_noisefree")]] if p.stem.endswith("_noisefree") else [])
    return [p.with_name(st + suffix) for st in stems]


def _axis_from_params(path):
    """``[geometry] tilt_axis_deg`` of the ``NAME_params.toml`` that ``cutem simulate`` writes."""
    import tomllib

    for cand in _siblings(path, "_params.toml"):
        if cand.is_file():
            try:
                geo = tomllib.loads(cand.read_text()).get("geometry", {})
            except (OSError, tomllib.TOMLDecodeError):
                continue
            return float(geo.get("tilt_axis_deg", 0.0)), cand
    return None, None


@click.command()
@click.argument("tilts", type=click.Path(dir_okay=False))
@click.option("--tlt", "tlt_path", type=click.Path(dir_okay=False), default=None,
              help="Tilt angles, one per line in degrees (default: TILTS with .tlt).")
@click.option("--tilt-axis", "axis_deg", type=float, default=None,
              help="In-plane angle of the tilt axis from image x, degrees (default: the stack's "
                   "'tilt_axis_deg=' header label, else [geometry] of NAME_params.toml beside it, else 0).")
@click.option("--method", type=click.Choice(["wbp", "sirt"]), default="wbp", show_default=True)
@click.option("--filter", "filt", type=click.Choice(["ram-lak", "shepp-logan", "cosine", "hamming", "hann"]),
              default="shepp-logan", show_default=True, help="WBP ramp apodisation.")
@click.option("--cutoff", type=float, default=1.0, show_default=True,
              help="WBP filter cutoff as a fraction of Nyquist.")
@click.option("--iterations", type=int, default=20, show_default=True, help="SIRT iterations.")
@click.option("--relaxation", type=float, default=1.0, show_default=True, help="SIRT step λ in (0, 2).")
@click.option("--positivity", is_flag=True, help="SIRT: clip negative values each iteration.")
@click.option("--invert", is_flag=True, help="Negate the images first (dark particles → positive density).")
@click.option("--thickness", type=int, default=None, help="Volume depth nz in voxels (default: image rows).")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Output volume (.mrc).")
@device_option
@quiet_option
def reconstruct(tilts, tlt_path, axis_deg, method, filt, cutoff, iterations, relaxation, positivity,
                invert, thickness, out, device, quiet):
    """Reconstruct a tomogram (nz, ny, nx) from a single-axis tilt stack.

    The voxel size is the stack's pixel size. For WBP each image is mean-subtracted first
    (the ramp filter removes the mean anyway; this avoids ringing from the padding).
    """
    import numpy as np
    from tqdm import tqdm

    import adjoints.backend as B
    from cutem import io, tomo

    stack, px = io.read_mrc(tilts, ndim=3, name="tilt stack")
    if tlt_path:
        tlt = Path(tlt_path)
    else:
        tlt = next((c for c in _siblings(tilts, ".tlt") if c.is_file()), Path(tilts).with_suffix(".tlt"))
    if not tlt.is_file():
        fail(f"tilt file {tlt}: no such file (give --tlt)")
    angles = io.read_tlt(tlt)
    if len(angles) != stack.shape[0]:
        fail(f"tilt file {tlt}: {len(angles)} angles for {stack.shape[0]} images in {tilts}")
    if np.any(np.abs(angles) > 90):
        fail(f"tilt file {tlt}: angles must lie in [-90, 90]")
    if axis_deg is None:
        axis_deg = _axis_from_header(tilts)
    if axis_deg is None:
        axis_deg, _ = _axis_from_params(tilts)
    if axis_deg is None:
        axis_deg = 0.0
    if thickness is not None and thickness < 1:
        fail(f"--thickness = {thickness} must be a positive number of voxels")
    xp = B.get_xp(device)
    data = xp.asarray(stack)
    if invert:
        data = -data
    if method == "wbp":
        data = data - data.mean(axis=(1, 2), keepdims=True)
    t0 = time.perf_counter()
    bar = tqdm(total=iterations, disable=quiet or method != "sirt", desc="SIRT")
    vol = tomo.reconstruct(data, angles, axis_deg, thickness, method, filt, cutoff, iterations,
                           relaxation, positivity, progress=lambda k, r: bar.update(1))
    bar.close()
    dt = time.perf_counter() - t0
    io.write_volume(out, vol, px, label=f"cutem reconstruct {method} tilt_axis_deg={axis_deg:g}")
    click.echo(f"wrote {out}: {tuple(vol.shape)} voxels of {px:g} Å, {method}, {len(angles)} tilts, "
               f"axis {axis_deg:g}°, {dt:.1f} s")


COMMANDS = [reconstruct]
