"""``cutem train-denoiser`` and ``cutem denoise``."""
from __future__ import annotations

from pathlib import Path

import click

from cutem.params import Detector, Optics, Sample

from .common import InFile, Number, NumberList, OutPath, device_option, fail, quiet_option

_COUNT = Number(1, 10 ** 7, integer=True)


@click.command("train-denoiser")
@click.argument("config", required=False, type=InFile("config"))
@click.option("-o", "--out", "out", default="denoiser.h5", show_default=True, type=OutPath(),
              help="Checkpoint / model file (HDF5); written every --checkpoint-every steps.")
@click.option("--steps", type=_COUNT, default=None, help="Adam steps [default 1200].")
@click.option("--batch", type=Number(1, 4096, integer=True), default=None, help="Patches per step [default 4].")
@click.option("--patch", type=Number(8, 4096, "px", integer=True), default=None, help="Patch side in pixels [default 96].")
@click.option("--lr", type=Number(0.0, 10.0, open="lo"), default=None, help="Initial learning rate [default 2e-3].")
@click.option("--loss", type=click.Choice(["l2", "l1"]), default=None, help="Training loss [default l2].")
@click.option("--depth", type=Number(1, 8, integer=True), default=3, show_default=True, help="U-Net levels below the top.")
@click.option("--width", type=Number(1, 1024, integer=True), default=16, show_default=True, help="U-Net channels at the top level.")
@click.option("--convs", type=Number(1, 8, integer=True), default=1, show_default=True, help="3x3 convolutions per level and side.")
@click.option("--residual/--no-residual", default=False, show_default=True,
              help="Predict a correction added to the input instead of the image itself.")
@click.option("--noise2noise", is_flag=True, help="Targets are a second independent noisy draw.")
@click.option("--image-size", type=Number(16, 65536, "px", integer=True), default=192, show_default=True, help="Side of each simulated image (pixels).")
@click.option("--pixel-size", type=Number.of(Detector, "pixel_size_A"), default=None,
              help="Pixel size in Å [default: config or 2.0].")
@click.option("--twin", "twin", type=InFile("config"), default=None,
              help="Train for one instrument: a `cutem fit-twin` result (or any run config); dose, defocus "
                   "and ice are drawn within ±30 % of its values unless given below.")
@click.option("--boxes", type=Number(16, 4096, "px", integer=True), default=None,
              help="Train on boxed particles of this side, one centred (cutem.denoise.ParticleBoxPairs; the "
                   "packaged model for particle stacks); the patch is the whole box.")
@click.option("--dose", type=NumberList(Number.of(Detector, "dose_e_per_A2")), default=None, help="Dose range, e-/Å² per image [default 5,60].")
@click.option("--defocus", type=NumberList(Number.of(Optics, "defocus_u_A")), default=None, help="Defocus range, Å (underfocus +) [default 5000,40000].")
@click.option("--ice", type=NumberList(Number.of(Sample, "thickness_center_A")), default=None, help="Ice thickness range, Å [default 150,600].")
@click.option("--particles", type=NumberList(Number(0, 1000, integer=True)), default="40,80", show_default=True,
              help="Particles per image (range; a crowded field: fewer when the field is full).")
@click.option("--structure", "structures", multiple=True,
              help="PDB/mmCIF file to draw particles from, or 'tmv' for the packaged TMV fragment "
                   "(repeatable; default: tmv).")
@click.option("--mtf", "mtf_file", type=InFile("toml"),
              help="Detector parameters from a `cutem fit-mtf` result (TOML).")
@click.option("--pool", type=Number(1, 10 ** 5, integer=True), default=None, help="Simulated images kept for patch sampling [default 16].")
@click.option("--refresh-every", type=_COUNT, default=None, help="Steps between new simulations [default 10].")
@click.option("--checkpoint-every", type=_COUNT, default=None, help="Steps between checkpoints [default 250].")
@click.option("--resume", is_flag=True, help="Continue from --out if it exists.")
@click.option("--export", "export_path", type=OutPath(), default=None,
              help="Also write a small inference-only model file (weights and settings, no optimiser "
                   "state or image pool) here at the end.")
@click.option("--seed", type=Number(0, 2 ** 63 - 1, integer=True), default=0, show_default=True)
@device_option
@quiet_option
def train_denoiser(config, out, steps, batch, patch, lr, loss, depth, width, convs, residual, noise2noise, image_size,
                   pixel_size, twin, boxes, dose, defocus, ice, particles, structures, mtf_file, pool, refresh_every,
                   checkpoint_every, resume, export_path, seed, device, quiet):
    """Train a U-Net denoiser on simulated (noisy, noise-free) pairs generated on the fly.

    Without CONFIG, --twin or --pixel-size the images span real instruments (pixel sizes
    0.8-4 Å, 200/300 kV, Cs 1.4-2.7 mm, the K2, Falcon II/3EC and DE-20 detectors and
    cutem's default one, amorphous ice with or without the inelastic background, carbon edges:
    cutem.denoise.InstrumentPairs),
    as for the packaged model. CONFIG (TOML or TEM-simulator file) or --twin fixes optics,
    detector and sample to one instrument; the ranges below are drawn per image.
    """
    import time

    import adjoints.backend as B
    from adjoints.nn import UNetConfig
    from cutem.denoise import InstrumentPairs, ParticleBoxPairs, SimulatorPairs, TrainConfig, detector_from_toml, train

    xp = B.get_xp(device)
    kw = {k: v for k, v in dict(steps=steps, batch=batch, patch=patch, lr=lr, loss=loss, pool=pool,
                                refresh_every=refresh_every, checkpoint_every=checkpoint_every).items()
          if v is not None}
    if boxes:
        if patch not in (None, boxes):
            fail(f"--boxes {boxes} trains on whole boxes: leave --patch out (or give --patch {boxes})")
        kw["patch"] = boxes
    # negated pairs only for boxes: RELION's particle stacks are contrast-inverted, micrographs are not
    cfg = TrainConfig(seed=seed, noise2noise=noise2noise, negate=bool(boxes), **kw)
    try:
        net_cfg = UNetConfig(depth=depth, width=width, convs=convs, residual=residual)
    except ValueError as exc:
        fail(str(exc))
    if config and twin:
        fail("give CONFIG or --twin, not both")
    base = None
    if config or twin:
        from cutem.config import load_config

        base = load_config(config or twin)
    if twin:
        def around(v):
            return (0.7 * v, 1.3 * v)

        dose = dose or around(base.detector.dose_e_per_A2)
        defocus = defocus or around(0.5 * (base.optics.defocus_u_A + base.optics.defocus_v_A))
        ice = ice or around(base.sample.thickness_center_A)
    dose, defocus, ice = dose or (5.0, 60.0), defocus or (5000.0, 40000.0), ice or (150.0, 600.0)
    detector = detector_from_toml(mtf_file, base.detector if base else None) if mtf_file else None
    from cutem import memory
    from cutem.config import default_config

    memory.check_bytes(memory.train_bytes(base or default_config(), image_size, cfg.pool, cfg.batch, cfg.patch, width,
                                          depth, convs, device=device),
                       f"training on {image_size}x{image_size} images (pool {cfg.pool}, batch {cfg.batch} of "
                       f"{cfg.patch}x{cfg.patch})", "a smaller --image-size, --pool, --batch or --patch", device)
    n_lo, n_hi = particles
    from cutem.denoise import default_structures

    structs = []
    for s in structures:
        if s.lower() == "tmv":
            structs += default_structures()
        else:
            structs.append((str(InFile("config").check(s, "--structure")), None))
    kw = dict(image_size=image_size, dose_range=tuple(dose), defocus_range=tuple(defocus), ice_range=tuple(ice),
              particles_range=(int(n_lo), int(n_hi)), structures=structs or None, noise2noise=noise2noise, xp=xp)
    if boxes:
        if base is not None or pixel_size is not None:
            fail("--boxes spans the instruments itself: give no CONFIG, --twin or --pixel-size with it")
        kw.pop("image_size")
        kw.pop("particles_range")  # 0-6 neighbours around the centred particle
        source = ParticleBoxPairs(box=boxes, **kw)
    elif base is None and pixel_size is None and detector is None:
        source = InstrumentPairs(**kw)
    else:
        source = SimulatorPairs(base=base, pixel_size_A=pixel_size, detector=detector, **kw)
    if resume and Path(out).is_file():
        import json

        import h5py

        with h5py.File(out, "r") as f:
            stored = json.loads(f.attrs.get("source", "{}"))
        if stored and stored != json.loads(json.dumps(source.describe())):
            click.echo(f"warning: {out} was trained on other simulation settings than these options give; "
                       "continuing with the new settings", err=True)
        click.echo(f"resuming from {out}", err=True)
    t0 = time.perf_counter()
    tr = train(source, net_cfg, cfg, checkpoint=out, resume=resume, xp=xp, progress=not quiet,
               source_info=source.describe())
    dt = time.perf_counter() - t0
    import numpy as np

    msg = (f"trained {tr.step_count} steps ({tr.net.n_params()} weights) in {dt:.0f} s; "
           f"final loss {np.mean(tr.history[-50:]):.4f}; model: {out}")
    if export_path:
        from cutem.denoise import export_model

        export_model(out, export_path)
        msg += f"; exported {export_path}"
    click.echo(msg)


@click.command()
@click.argument("input", type=InFile("mrc"))
@click.option("-o", "--out", default=None, type=OutPath(suffixes=(".png",)), help="Output MRC [default: INPUT_denoised.mrc]; a PNG preview is written beside it.")
@click.option("--method", type=click.Choice(["learned", "model"]), default="learned", show_default=True)
@click.option("--model", "model_path", type=InFile("h5"),
              help="Trained network (learned method) [default: the packaged model, trained on simulations "
                   "spanning 0.8-4 Å pixels, 200/300 kV, four real detectors and cutem's default].")
@click.option("--tile", type=Number(8, 8192, "px", integer=True), default=256, show_default=True, help="Tile side for the network.")
@click.option("--overlap", type=Number(0, 8192, "px", integer=True), default=64, show_default=True, help="Tile overlap in pixels.")
@click.option("--detector", "det_file", type=InFile("toml"),
              help="Model method: detector parameters (fit-mtf result or run config TOML).")
@click.option("--gain", type=Number.of(Detector, "gain"), default=None, help="Model method: counts per electron (overrides --detector).")
@click.option("--beta", type=Number(0.0, 1e6), default=16.0, show_default=True, help="Model method: smoothness weight.")
@click.option("--iterations", type=_COUNT, default=300, show_default=True, help="Model method: Adam iterations.")
@click.option("--draws", type=Number(1, 1000, integer=True), default=4, show_default=True, help="Model method: noisy simulations per iteration.")
@click.option("--estimator", type=click.Choice(["pathwise", "score"]), default="pathwise", show_default=True)
@click.option("--no-png", is_flag=True, help="Do not write the PNG preview.")
@device_option
@quiet_option
def denoise(input, out, method, model_path, tile, overlap, det_file, gain, beta, iterations, draws, estimator,
            no_png, device, quiet):
    """Denoise a micrograph, a tilt-series stack or a stack of boxed particles (MRC or .mrcs,
    each section on its own); writes MRC (pixel size kept) + PNG. Micrographs and tilt series as
    recorded (protein dark); particle stacks in either convention (white in RELION's)."""
    import numpy as np
    from tqdm import tqdm

    import adjoints.backend as B
    from cutem.denoise import (denoise_particles, denoise_stack, detector_from_toml, inference_options,
                               load_denoiser, model_denoise)
    from cutem.io import read_mrc, write_mrc, write_png

    from cutem import memory

    if overlap >= tile:
        fail(f"--tile {tile} / --overlap {overlap}: need overlap < tile")
    data, px = read_mrc(input, ndim=(2, 3), name="input")
    need = (memory.denoise_bytes(data.shape, tile, overlap) if method == "learned"
            else 8 * data.size + 96 * draws * data.shape[-1] * data.shape[-2])
    memory.check_bytes(need, f"denoising {'x'.join(map(str, data.shape))}", "a smaller --tile or --draws, or "
                       "fewer sections", device)
    xp = B.get_xp(device)
    if method == "learned":
        from cutem.denoise import default_model_path

        particles = Path(input).suffix.lower() == ".mrcs"  # RELION's particle stacks
        net, params, info = load_denoiser(model_path or str(default_model_path(particles)), xp)
        opts = inference_options(info, boxes=particles)
        if particles:   # centred boxes: the stack's own radial envelope (cutem.denoise.denoise_particles)
            result = denoise_particles(net, params, data, progress=not quiet, **opts)
        else:
            result = denoise_stack(net, params, data, tile=tile, overlap=overlap, progress=not quiet, **opts)
    else:
        det = detector_from_toml(det_file) if det_file else None
        if gain is not None:
            det = det.replace(gain=gain) if det is not None else None
        secs = data[None] if data.ndim == 2 else data
        res = []
        for s in tqdm(secs, disable=quiet or len(secs) == 1, desc="sections", unit="image"):
            r = model_denoise(s, detector=det, gain=gain or 1.0, beta=beta, iterations=iterations, draws=draws,
                              estimator=estimator, xp=xp, progress=not quiet)
            res.append(r.image)
        result = np.stack(res) if data.ndim == 3 else res[0]
    suffix = ".mrcs" if Path(input).suffix.lower() == ".mrcs" else ".mrc"  # a particle stack stays one
    out = Path(out) if out else Path(input).with_name(Path(input).stem + "_denoised" + suffix)
    write_mrc(out, result, px, label=f"cutem denoise --method {method}")
    msg = f"wrote {out} ({'x'.join(map(str, result.shape))}, {px:g} Å/px)"
    if not no_png:
        png = out.with_suffix(".png")
        write_png(png, result if result.ndim == 2 else result[len(result) // 2])
        msg += f" and {png}"
    click.echo(msg)


COMMANDS = [train_denoiser, denoise]
