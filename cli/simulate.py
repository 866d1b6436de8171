"""``cutem simulate``: a micrograph or tilt series from a config (or the embedded default)."""
from __future__ import annotations

import time

import click

from .common import device_option, quiet_option


@click.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the config's, else 0).")
@click.option("--name", default=None, help="Base name of the output files (default: from the config).")
@click.option("--no-resume", is_flag=True, help="Ignore checkpoints of an interrupted run.")
@click.option("--infer-elements", is_flag=True,
              help="Take missing/unknown elements of the structures from their atom names.")
@device_option
@quiet_option
def simulate(config, out_dir, seed, name, no_resume, infer_elements, device, quiet):
    """Simulate CONFIG (TOML or a TEM-simulator input file; none = the TMV example).

    Writes NAME.mrc (noisy), NAME_noisefree.mrc, NAME.tlt, NAME.png and NAME_params.toml
    (the resolved parameters with the seed: feed it back to repeat the run exactly).
    """
    from cutem.config import load_config
    from cutem.run import run_simulation

    t0 = time.perf_counter()
    cfg = load_config(config)
    if seed is not None:
        if seed < 0:
            raise click.BadParameter("must be >= 0", param_hint="--seed")
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
                                   log=log)
    if not quiet:
        n = len(result.angles_deg)
        click.echo(f"{n} image{'s' if n > 1 else ''} of {cfg.detector.ny}x{cfg.detector.nx} px at "
                   f"{cfg.detector.pixel_size_A:g} A, {result.atoms_count} atoms, "
                   f"{time.perf_counter() - t0:.1f} s -> {paths['image']}")


COMMANDS = [simulate]
