"""``cutem potential``: the projected potential (or 3D potential map) of a structure or a scene."""
from __future__ import annotations

import math
import time

import click

from cutem.params import SEED_RANGE, Detector, Geometry, Simulation

from .common import InFile, Number, OutPath, device_option, quiet_option

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
@click.argument("source", required=False, type=InFile("config"))
@click.option("--out", "out_path", default="potential.mrc", show_default=True, type=OutPath(),
              help="Output MRC file.")
@click.option("--volume", is_flag=True, help="Write the 3D potential map in V (voxel = pixel size) "
                                              "instead of the projected potential in V·Å.")
@click.option("--no-ice", is_flag=True, help="Leave the solvent (and support film) out.")
@click.option("--pixel-size", type=Number.of(Detector, "pixel_size_A"), default=None,
              help="Pixel size in Å (default: the config's detector pixel, 1 Å for a structure).")
@click.option("--shape", default=None, help="Grid NYxNX or N (default: the detector, or one that holds the particle).")
@click.option("--tilt", "tilt_deg", type=Number(-90.0, 90.0, "deg"), default=0.0, show_default=True, help="Tilt angle (degrees).")
@click.option("--tilt-axis", "tilt_axis_deg", type=Number.of(Geometry, "tilt_axis_deg"), default=0.0, show_default=True,
              help="In-plane angle of the tilt axis from x (degrees).")
@click.option("--slice-thickness", type=Number.of(Simulation, "slice_thickness_A"), default=None,
              help="Multislice: write one projected-potential slice per this many Å (a stack; default: "
                   "the config's slicing, one slice for a structure).")
@click.option("--transforms", type=InFile("text"), default=None,
              help="STRUCTURE only: a TEM-simulator transform file (pdb_transf_file_in).")
@click.option("--assembly", is_flag=True, help="STRUCTURE only: expand the biological assembly (BIOMT).")
@click.option("--infer-elements", is_flag=True, help="Take missing/unknown elements from atom names.")
@click.option("--no-hydrogens", is_flag=True, help="Drop hydrogen atoms of the file.")
@click.option("--implicit-hydrogens", is_flag=True,
              help="STRUCTURE without hydrogens: add each residue's bonded hydrogens at their heavy atoms.")
@click.option("--b-factor", type=Number.of(Simulation, "b_factor_A2"), default=None,
              help="Global B added to every atom (Å²; default: the config's simulation.b_factor_A2, 0 for a structure).")
@click.option("--seed", type=Number(*SEED_RANGE, integer=True), default=None, help="Seed for random particle placement (default: the config's).")
@device_option
@quiet_option
def potential(source, out_path, volume, no_ice, pixel_size, shape, tilt_deg, tilt_axis_deg, slice_thickness,
              transforms, assembly, infer_elements, no_hydrogens, implicit_hydrogens, b_factor, seed, device, quiet):
    """Projected potential (V·Å) of SOURCE: a PDB/mmCIF structure or a config (TOML or TEM-simulator
    input; none = the embedded TMV example), on the grid the simulation uses (its padding
    removed, at the simulation pixel size, written into the MRC header).

    It is the potential of the image model that ``cutem simulate`` renders for the same config:
    global B-factor, ice and slicing included."""
    import adjoints.backend as B
    from cutem.imaging import ImageModel, specimen_z_extent
    from cutem.io import write_mrc, write_volume
    from cutem.potential import ice_potential, ice_potential_V, potential_volume
    from cutem.specimen import Scene, scene_from_config
    from cutem.structure import load_particle

    t0 = time.perf_counter()
    grid = _parse_shape(shape)
    is_structure = source is not None and source.lower().endswith(_STRUCTURE_EXT)
    if is_structure:
        atoms = load_particle(source, transforms, assembly=0 if assembly else None, hydrogens=not no_hydrogens,
                              infer_elements=infer_elements, implicit_hydrogens=implicit_hydrogens)
        cfg = _structure_config(atoms, pixel_size or 1.0, grid)
        scene = Scene(sample=cfg.sample).add(atoms, name=source)
    else:
        if transforms or assembly:
            raise click.BadParameter("--transforms and --assembly apply to a structure file; a config names them "
                                     "itself", param_hint="SOURCE")
        from cutem.config import load_config

        cfg = load_config(source)
        if seed is not None:
            cfg = cfg.replace(seed=seed)
        if pixel_size or grid:
            cfg = _resampled(cfg, pixel_size, grid)
        scene = None
    sim = cfg.simulation
    if slice_thickness is not None:
        sim = sim.replace(method="multislice", slice_thickness_A=slice_thickness)
    cfg = cfg.replace(simulation=sim.replace(b_factor_A2=sim.b_factor_A2 if b_factor is None else b_factor),
                      sample=cfg.sample.replace(ice=cfg.sample.ice and not no_ice),
                      geometry=cfg.geometry.replace(tilt_angles_deg=(tilt_deg,), tilt_axis_deg=tilt_axis_deg,
                                                    dose_weights=None, defocus_offsets_A=None))
    scene = scene if scene is not None else scene_from_config(cfg)
    from cutem import memory
    from cutem.validate import check_grid

    check_grid(cfg)
    plan = memory.check(cfg, scene, device)  # refused here, before anything is allocated
    model = ImageModel.from_config(cfg, 0, scene=scene, device=device, atom_chunk=plan.atom_chunk)
    g = model.grid
    px = g.pixel_size_A
    label = source or "TMV example"
    if volume:
        ny, nx = g.field_shape
        z0, z1 = specimen_z_extent(cfg, g, tilt_deg, scene.z_extent(tilt_deg, tilt_axis_deg) if len(scene) else None)
        nz = int(math.ceil(max(abs(z0), abs(z1)) / px)) * 2 + 2
        memory.check_bytes(memory.volume_bytes(nz, ny, nx), f"the potential volume {nz}x{ny}x{nx}",
                           "a larger --pixel-size or a smaller --shape", device)
        with_ice = cfg.sample.ice
        vol = B.to_numpy(potential_volume(model.atoms, (nz, ny, nx), px, b_factor_A2=sim.b_factor_A2,
                                          solvent_V=ice_potential_V() if with_ice else 0.0))
        if with_ice:
            zr = (-nz / 2 * px - px / 2, (nz / 2) * px - px / 2)  # voxel k spans (k − nz/2 ± ½)·px
            ice = ice_potential(cfg.sample, (ny, nx), px, slice_thickness_A=px, z_range_A=zr, tilt_deg=tilt_deg,
                                tilt_axis_deg=tilt_axis_deg)
            vol = vol + B.to_numpy(ice)[:nz] / px
        write_volume(out_path, vol, px, label=f"cutem potential volume (V) of {label}")
        data, unit = vol, "V"
    else:
        data = B.to_numpy(g.crop(model.potential()[0]))
        write_mrc(out_path, data[0] if data.shape[0] == 1 else data, px, label=f"cutem projected potential (V*A) of {label}")
        unit = "V·Å"
    if not quiet:
        click.echo(f"{scene.n_atoms} atoms in {len(scene)} particle(s); {'x'.join(str(n) for n in data.shape)} "
                   f"at {px:g} Å; {unit} min {float(data.min()):.4g} mean {float(data.mean()):.4g} "
                   f"max {float(data.max()):.4g}; {time.perf_counter() - t0:.2f} s -> {out_path}")


def _structure_config(atoms, px, grid):
    """A one-particle config: the structure at the centre of a field that holds it, in ice
    just thicker than the particle, on a plain grid (no oversampling or padding)."""
    from cutem.config import RunConfig
    from cutem.params import Detector, Sample, Simulation

    r = atoms.radius()
    if grid is None:
        n = int(math.ceil((2 * r + 20.0) / px / 2)) * 2
        grid = (n, n)
    thick = 2 * r + 20.0
    return RunConfig(detector=Detector(nx=grid[1], ny=grid[0], pixel_size_A=px),
                     sample=Sample(diameter_A=1e7, thickness_center_A=thick, thickness_edge_A=thick),
                     simulation=Simulation(oversampling=1, padding_A=0.0))


def _resampled(cfg, pixel_size, grid):
    """``cfg`` with the detector at ``pixel_size`` (keeping its field of view) and/or ``grid`` pixels."""
    det = cfg.detector
    px = pixel_size or det.pixel_size_A
    if grid is None:
        grid = tuple(int(math.ceil(n * det.pixel_size_A / px)) for n in (det.ny, det.nx))
    return cfg.replace(detector=det.replace(pixel_size_A=px, ny=grid[0], nx=grid[1]),
                       simulation=cfg.simulation.replace(oversampling=1))


COMMANDS = [potential]
