"""``cutem potential``: the projected potential (or 3D potential map) of a structure or a scene."""
from __future__ import annotations

import math
import time

import click

from .common import device_option, quiet_option

_STRUCTURE_EXT = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")


def _parse_shape(text):
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts if p]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not N or NYxNX", param_hint="--shape") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 8 or max(vals) > 65536:
        raise click.BadParameter(f"{text!r}: two sizes in [8, 65536] (NYxNX) or one", param_hint="--shape")
    return tuple(vals)


@click.command()
@click.argument("source", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_path", default="potential.mrc", show_default=True, type=click.Path(dir_okay=False),
              help="Output MRC file.")
@click.option("--volume", is_flag=True, help="Write the 3D potential map in V (voxel = pixel size) "
                                              "instead of the projected potential in V·Å.")
@click.option("--no-ice", is_flag=True, help="Leave the solvent (and support film) out.")
@click.option("--pixel-size", type=float, default=None,
              help="Pixel size in Å (default: the config's detector pixel, 1 Å for a structure).")
@click.option("--shape", default=None, help="Grid NYxNX or N (default: the detector, or one that holds the particle).")
@click.option("--tilt", "tilt_deg", type=float, default=0.0, show_default=True, help="Tilt angle (degrees).")
@click.option("--tilt-axis", "tilt_axis_deg", type=float, default=0.0, show_default=True,
              help="In-plane angle of the tilt axis from x (degrees).")
@click.option("--slice-thickness", type=float, default=None,
              help="Multislice: write one projected-potential slice per this many Å (a stack).")
@click.option("--transforms", type=click.Path(dir_okay=False), default=None,
              help="STRUCTURE only: a TEM-simulator transform file (pdb_transf_file_in).")
@click.option("--assembly", is_flag=True, help="STRUCTURE only: expand the biological assembly (BIOMT).")
@click.option("--infer-elements", is_flag=True, help="Take missing/unknown elements from atom names.")
@click.option("--no-hydrogens", is_flag=True, help="Drop hydrogen atoms of the file.")
@click.option("--implicit-hydrogens", is_flag=True,
              help="STRUCTURE without hydrogens: add each residue's bonded hydrogens at their heavy atoms.")
@click.option("--b-factor", type=float, default=0.0, show_default=True, help="Global B added to every atom (Å²).")
@click.option("--spread-order", type=click.Choice(["1", "3"]), default="3", show_default=True,
              help="Scatter: 1 bilinear (fast), 3 cubic B-spline (closer to the exact Fourier sum).")
@click.option("--seed", type=int, default=None, help="Seed for random particle placement (default: the config's).")
@device_option
@quiet_option
def potential(source, out_path, volume, no_ice, pixel_size, shape, tilt_deg, tilt_axis_deg, slice_thickness,
              transforms, assembly, infer_elements, no_hydrogens, implicit_hydrogens, b_factor, spread_order, seed,
              device, quiet):
    """Projected potential (V·Å) of SOURCE: a PDB/mmCIF structure or a config (TOML or TEM-simulator
    input; none = the embedded TMV example). The pixel size goes into the MRC header."""
    import numpy as np

    import adjoints.backend as B
    from cutem import potential as P
    from cutem import specimen as Sp
    from cutem import structure as S
    from cutem.errors import InputError
    from cutem.io import write_mrc, write_volume
    from cutem.params import Sample

    t0 = time.perf_counter()
    grid = _parse_shape(shape)
    if pixel_size is not None and not (pixel_size > 0 and math.isfinite(pixel_size)):
        raise click.BadParameter("must be a positive number of Å", param_hint="--pixel-size")
    xp = B.get_xp(device)
    is_structure = source is not None and source.lower().endswith(_STRUCTURE_EXT)
    if is_structure:
        atoms = S.load_particle(source, transforms, assembly=0 if assembly else None,
                                hydrogens=not no_hydrogens, infer_elements=infer_elements,
                                implicit_hydrogens=implicit_hydrogens)
        r = atoms.radius()
        px = pixel_size or 1.0
        thick = 2 * r + 20.0
        sample = Sample(diameter_A=1e7, thickness_center_A=thick, thickness_edge_A=thick, ice=not no_ice)
        scene = Sp.Scene(sample=sample).add(atoms, name=source)
        if grid is None:
            n = int(math.ceil((2 * r + 20.0) / px / 2)) * 2
            grid = (n, n)
    else:
        if transforms or assembly:
            raise InputError("--transforms and --assembly apply to a structure file; a config names them itself")
        from cutem.config import load_config

        cfg = load_config(source)
        if seed is not None:
            cfg = cfg.replace(seed=seed)
        if no_ice:
            cfg = cfg.replace(sample=cfg.sample.replace(ice=False))
        scene = Sp.scene_from_config(cfg)
        px = pixel_size or cfg.detector.pixel_size_A
        if grid is None:
            grid = (cfg.detector.ny, cfg.detector.nx)
            if pixel_size:  # keep the field of view of the detector
                grid = tuple(int(math.ceil(n * cfg.detector.pixel_size_A / px)) for n in grid)
    ny, nx = grid
    if volume:
        atoms = scene.atoms(tilt_deg, tilt_axis_deg)
        with_ice = scene.sample is not None and scene.sample.ice
        z0, z1 = P.scene_z_range(scene, grid, px, tilt_deg, tilt_axis_deg)
        nz = int(math.ceil(max(abs(z0), abs(z1)) / px)) * 2 + 2
        solvent = P.ice_potential_V() if with_ice else 0.0
        vol = B.to_numpy(P.potential_volume(atoms, (nz, ny, nx), px, b_factor_A2=b_factor, solvent_V=solvent))
        if with_ice:
            zr = (-nz / 2 * px - px / 2, (nz / 2) * px - px / 2)  # voxel k spans (k − nz/2 ± ½)·px
            ice = P.ice_potential(scene.sample, grid, px, slice_thickness_A=px, z_range_A=zr, tilt_deg=tilt_deg,
                                  tilt_axis_deg=tilt_axis_deg)
            vol = vol + B.to_numpy(ice)[:nz] / px
        write_volume(out_path, vol, px, label=f"cutem potential volume (V) of {source or 'TMV example'}")
        data, unit = vol, "V"
    else:
        v = P.scene_potential(scene, grid, px, tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg,
                              slice_thickness_A=slice_thickness, ice=not no_ice, b_factor_A2=b_factor, xp=xp,
                              spread_order=int(spread_order))
        data = B.to_numpy(v)
        write_mrc(out_path, data[0] if data.shape[0] == 1 else data, px,
                  label=f"cutem projected potential (V*A) of {source or 'TMV example'}")
        unit = "V·Å"
    if not quiet:
        click.echo(f"{scene.n_atoms} atoms in {len(scene)} particle(s); {'x'.join(str(n) for n in data.shape)} "
                   f"at {px:g} Å; {unit} min {float(data.min()):.4g} mean {float(data.mean()):.4g} "
                   f"max {float(data.max()):.4g}; {time.perf_counter() - t0:.2f} s -> {out_path}")


COMMANDS = [potential]
