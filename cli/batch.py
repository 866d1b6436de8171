"""``cutem simulate-batch``: many micrographs or tilt series on Dask, with a manifest."""
from __future__ import annotations

import click

from cutem.params import SEED_RANGE

from .common import BaseName, InFile, Number, OutPath, device_option, quiet_option


def _scheduler(ctx, param, value):
    if value in ("processes", "threads", "sync") or value.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return value
    raise click.BadParameter(f"{value!r}: processes, threads, sync or a scheduler address (tcp://host:8786)",
                             param_hint="--scheduler")


@click.command("simulate-batch")
@click.argument("config", required=False, type=InFile("config"))
@click.option("--out", "out_dir", default="batch", show_default=True, type=OutPath("dir"),
              help="Output folder (holds manifest.csv).")
@click.option("--table", type=InFile("text"), default=None,
              help="CSV parameter table: one item per row; columns particles, defocus_A, dose_e_per_A2, "
                   "ice_thickness_A, seed or section.field.")
@click.option("--count", "-n", type=Number(1, 10 ** 6, integer=True), default=None, help="Number of items drawn from the ranges.")
@click.option("--seed", type=Number(*SEED_RANGE, integer=True), default=0, show_default=True, help="Batch seed (item seeds derive from it).")
@click.option("--particles", default=None, help="Particles per item, LO:HI (integers, random placement "
                                                "and orientations).")
@click.option("--defocus", default=None, help="Defocus range in Å, LO:HI.")
@click.option("--dose", default=None, help="Dose range in e-/Å², LO:HI.")
@click.option("--ice", default=None, help="Ice thickness range (centre) in Å, LO:HI.")
@click.option("--scheduler", default="processes", show_default=True, callback=_scheduler,
              help="processes | threads | sync, or a dask.distributed scheduler address (tcp://host:8786).")
@click.option("--workers", type=Number(1, 4096, integer=True), default=None, help="Local workers (default: all cores).")
@click.option("--name", type=BaseName(), default=None, help="Base name of the items' files (default: the config's output).")
@device_option
@quiet_option
def simulate_batch(config, out_dir, table, count, seed, particles, defocus, dose, ice, scheduler, workers, name,
                   device, quiet):
    """Simulate a batch over CONFIG (TOML; none = the TMV example): one Dask task per item.

    Items come from --table, or --count items with parameters drawn from the ranges.
    Re-running the same command skips the items already complete.
    """
    from cutem import batch as Bt
    from cutem.config import load_config
    from cutem.errors import InputError

    cfg = load_config(config)
    ranges = {}
    for opt, key, integer in (("particles", "particles", True), ("defocus", "defocus_A", False),
                              ("dose", "dose_e_per_A2", False), ("ice", "ice_thickness_A", False)):
        val = locals()[opt]
        if val is not None:
            ranges[key] = Bt.parse_range(val, opt, integer)
    if table:
        if ranges or count is not None:
            raise InputError("give either --table or --count with ranges, not both")
        items = Bt.items_from_table(cfg, table, seed, name)
    else:
        items = Bt.items_from_ranges(cfg, 1 if count is None else count, seed, ranges, name)
    res = Bt.run_batch(items, out_dir, scheduler=scheduler, workers=workers, device=device, progress=not quiet,
                       log=None if quiet else (lambda m: click.echo(m, err=True)))
    if not quiet:
        click.echo(f"{res.done} item(s) simulated, {res.skipped} already complete, {res.total} in all, "
                   f"{res.seconds:.1f} s -> {res.manifest}")


COMMANDS = [simulate_batch]
