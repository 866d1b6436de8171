"""``cutem simulate``: a micrograph or tilt series from a config (or the embedded default)."""
from __future__ import annotations

import time

import click

from .common import (BaseName, InFile, Number, OutPath, apply_settings, device_option, is_structure, quiet_option,
                     set_option)
from cutem.params import SEED_RANGE


@click.command()
@click.argument("config", required=False, type=InFile("config"))
@click.option("--out", "out_dir", default="out", show_default=True, type=OutPath("dir"),
              help="Output folder.")
@click.option("--seed", type=Number(*SEED_RANGE, integer=True), default=None, help="Random seed (default: the config's, else 0).")
@click.option("--name", type=BaseName(), default=None, help="Base name of the output files (default: from the config).")
@click.option("--count", type=Number(1, 10 ** 6, integer=True), default=None,
              help="With a structure file: this many copies at random positions (default 1, at the centre).")
@set_option
@click.option("--labels", is_flag=True,
              help="Also write NAME_labels.mrc: per pixel (tilt series: per tomogram voxel) the particle's "
                   "row in NAME_particles.star.")
@click.option("--no-resume", is_flag=True, help="Ignore checkpoints of an interrupted run.")
@click.option("--infer-elements", is_flag=True,
              help="Take missing/unknown elements of the structures from their atom names.")
@device_option
@quiet_option
def simulate(config, out_dir, seed, name, count, settings, labels, no_resume, infer_elements, device, quiet):
    """Simulate CONFIG: a TOML or TEM-simulator input file, or a structure (PDB/mmCIF) in
    ice with everyday cryo-EM settings (cutem.config.config_for_structure); none = the TMV example.

    Writes NAME.mrc (noisy), NAME_noisefree.mrc, NAME.tlt, NAME.png, NAME_particles.star (what
    was put where, RELION 5 columns; for a tilt series also NAME_tomograms.star,
    NAME_tiltseries.star, NAME.xf, NAME.defocus) and NAME_params.toml (the resolved parameters
    with the seed: feed it back to repeat the run exactly).
    """
    from cutem.config import config_for_structure, load_config
    from cutem.run import run_simulation

    t0 = time.perf_counter()
    if config is not None and is_structure(config):
        cfg = config_for_structure(config, count=count or 1, seed=seed or 0)
    elif count is not None:
        raise click.BadParameter("only with a structure file (a config says its own particles)", param_hint="--count")
    else:
        cfg = load_config(config)
    cfg = apply_settings(cfg, settings)
    if seed is not None:
        cfg = cfg.replace(seed=seed)
    if name:
        cfg = cfg.replace(output=name)
    if infer_elements:
        from dataclasses import replace

        cfg = cfg.replace(particles=tuple(replace(p, infer_elements=True) for p in cfg.particles))
    if cfg.ignored and not quiet:
        click.echo(f"note: TEM-simulator keys not used by cutem: {', '.join(cfg.ignored)}", err=True)
    log = None if quiet else (lambda msg: click.echo(f"note: {msg}", err=True))
    result, paths = run_simulation(cfg, out_dir, device=device, progress=not quiet, resume=not no_resume,
                                   log=log, labels=labels)
    if not quiet:
        n = len(result.angles_deg)
        click.echo(f"{n} image{'s' if n > 1 else ''} of {cfg.detector.ny}x{cfg.detector.nx} px at "
                   f"{cfg.detector.pixel_size_A:g} A, {result.atoms_count} atoms, "
                   f"{time.perf_counter() - t0:.1f} s -> {paths['image']}")


COMMANDS = [simulate]
