"""``cutem render``: volume rendering of a tomogram or potential to PNG / animated GIF."""
from __future__ import annotations

import time
from pathlib import Path

import click

from .common import InFile, Number, OutPath, device_option, fail, ordered, quiet_option


def _tf_spec(ctx, param, value):
    """A preset name, else a text file of control points."""
    from cutem.render import PRESETS

    if value in PRESETS:
        return value
    return InFile("text").convert(value, param, ctx)


@click.command()
@click.argument("volume", type=InFile("mrc"))
@click.option("--mode", type=click.Choice(["dvr", "mip", "slices"]), default="dvr", show_default=True,
              help="Emission-absorption ray casting, maximum-intensity projection or orthogonal slices.")
@click.option("--tf", "tf_spec", default="cryo", show_default=True, callback=_tf_spec,
              help="Transfer function: a preset (grey, bone, cryo) or a file of 'value r g b alpha' lines.")
@click.option("--azimuth", type=Number(-360.0, 360.0, "deg"), default=30.0, show_default=True, help="Degrees about the vertical axis.")
@click.option("--elevation", type=Number(-90.0, 90.0, "deg"), default=20.0, show_default=True, help="Degrees of tip towards the viewer.")
@click.option("--orbit", "n_orbit", type=Number(0, 3600, integer=True), default=0,
              help="Render N views round the vertical axis (GIF when --out ends in .gif, else name_###.png).")
@click.option("--invert", is_flag=True, help="Dark is dense (raw tomograms of phase contrast images).")
@click.option("--window", nargs=2, type=Number(0.0, 100.0, "%"), callback=ordered(), default=(1.0, 99.9), show_default=True,
              help="Percentiles mapped to 0 and 1 before the transfer function.")
@click.option("--opacity", type=Number(0.0, 1e3, open="lo"), default=1.0, show_default=True, help="Scale of the TF opacity.")
@click.option("--step", type=Number(0.0, 4.0, "voxels", open="lo"), default=0.5, show_default=True, help="Ray step in voxels.")
@click.option("--max-size", type=Number(0, 65536, integer=True), default=256, show_default=True,
              help="Bin the volume by an integer factor so no side exceeds this (0: never).")
@click.option("--out", "out", type=OutPath(), required=True, help="x.png or x.gif")
@device_option
@quiet_option
def render(volume, mode, tf_spec, azimuth, elevation, n_orbit, invert, window, opacity, step, max_size,
           out, device, quiet):
    """Render a volume (MRC) to PNG, or an orbit to an animated GIF / PNG sequence."""
    from tqdm import tqdm

    import adjoints.backend as B
    from cutem import io
    from cutem import render as R

    if window[0] == window[1]:
        fail(f"--window {window[0]} {window[1]}: need low < high")
    tf = R.TransferFunction.load(tf_spec) if mode == "dvr" else None
    from cutem import memory

    data, px = io.read_mrc(volume, ndim=3, name="volume")
    side = max(data.shape) if not max_size else min(max(data.shape), max_size)
    memory.check_bytes(memory.render_bytes(data.shape, mode, max_size) + 4 * side * side * max(1, n_orbit),
                       f"rendering a {'x'.join(map(str, data.shape))} volume", "a smaller --max-size or fewer "
                       "--orbit views", device)
    xp = B.get_xp(device)
    vol = xp.asarray(data)
    if max_size:
        vol = R.bin_volume(vol, max_size)
    kw = dict(tf=tf, invert=invert, window=window, opacity=opacity, step=step)
    t0 = time.perf_counter()
    outp = Path(out)
    if n_orbit:
        bar = tqdm(total=n_orbit, disable=quiet, desc="orbit")
        frames = R.orbit(vol, n_orbit, mode, elevation_deg=elevation, progress=lambda i: bar.update(1), **kw)
        bar.close()
        if outp.suffix.lower() == ".gif":
            R.save_gif(frames, outp)
            written = str(outp)
        else:
            for i, f in enumerate(frames):
                R.save_png(f, outp.with_name(f"{outp.stem}_{i:03d}.png"))
            written = f"{outp.with_name(outp.stem + '_000.png')} .. _{n_orbit - 1:03d}.png"
    else:
        if outp.suffix.lower() not in (".png",):
            fail(f"--out {out}: a single view is written as .png")
        img = R.render(vol, mode, tf, azimuth, elevation, invert, window, step, opacity)
        R.save_png(img, outp)
        written = str(outp)
    click.echo(f"wrote {written} ({mode}, volume {tuple(vol.shape)}, {time.perf_counter() - t0:.1f} s)")


COMMANDS = [render]
