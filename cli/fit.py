"""``cutem fit-mtf`` and ``cutem fit-ctf``: fit the simulator's detector and optics to data.

The fits run in float64 on the CPU (:mod:`cutem.fitting` takes no device), so neither command
has a ``--device``; ``fit-mtf`` shows no progress bar, so it has no ``--quiet``.
"""
from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np

from cutem.params import Detector, Optics, Sample

from .common import InFile, Number, OutPath, fail, ordered, quiet_option

_MTF_FREE = "mtf_a,mtf_b,mtf_c,mtf_alpha,mtf_beta,gain"
_CURVE_FREE = "mtf_a,mtf_b,mtf_c,mtf_alpha,mtf_beta,mtf_p,mtf_q"


def _read_mtf_star(path):
    from cutem.io import read_star

    for block, t in read_star(path, name="MTF STAR").items():
        if hasattr(t, "columns") and {"rlnResolutionInversePixel", "rlnMtfValue"} <= set(t.columns):
            try:
                return (np.asarray(t["rlnResolutionInversePixel"], float), np.asarray(t["rlnMtfValue"], float))
            except (TypeError, ValueError):
                fail(f"MTF STAR {path}: non-numeric values in block {block}")
    fail(f"MTF STAR {path}: no table with _rlnResolutionInversePixel and _rlnMtfValue")


def _report_lines(title, params, errors, extra=()):
    lines = [title, f"{'parameter':<16} {'value':>12} {'± 1σ':>12}"]
    for k, v in params.items():
        e = errors.get(k)
        lines.append(f"{k:<16} {v:>12.6g} {('%.3g' % e) if e is not None and math.isfinite(e) else '-':>12}")
    lines += list(extra)
    return lines


@click.command("fit-mtf")
@click.argument("inputs", nargs=-1, required=True, type=InFile("data"))
@click.option("--config", "config_path", type=InFile("config"),
              help="TOML or TEM-simulator file: the fixed detector values (pixel size, dose, DQE) "
                   "and the start; its [detector] is what the output replaces.")
@click.option("--kind", type=click.Choice(["auto", "micrographs", "specimen", "spectrum", "curve"]), default="auto",
              show_default=True, help="What the inputs are (auto: .star = MTF curve; MRC = micrographs of the "
                                      "--config's specimen when it has particles, else blank micrographs).")
@click.option("--dc", type=click.Choice(["centre", "corner"]), default="centre", show_default=True,
              help="Where DC sits in an input power spectrum.")
@click.option("--free", default=None,
              help=f"Comma-separated names to fit [micrographs, specimen: {_MTF_FREE}; curve: {_CURVE_FREE}]. "
                   "With a specimen also ice_thickness_A (centre and edge together), thickness_center_A, "
                   "thickness_edge_A, defocus_A (u = v), defocus_u_A, defocus_v_A.")
@click.option("--ps-objective", type=click.Choice(["log_radial", "whittle"]), default="log_radial",
              show_default=True, help="Micrographs (blank or with a specimen): log radial power-spectrum loss or "
                                      "the 2D Whittle likelihood of the periodogram.")
@click.option("--tilt", type=Number(0, 10 ** 6, integer=True), default=0, show_default=True, help="Specimen: which tilt of the config the "
                                                                      "micrographs show.")
@click.option("--method", type=click.Choice(["lbfgsb", "adam"]), default="lbfgsb", show_default=True)
@click.option("--maxiter", type=Number(1, 10 ** 6, integer=True), default=300, show_default=True)
@click.option("--lr", type=Number(0.0, 10.0, open="lo"), default=0.05, show_default=True, help="Adam step (internal units).")
@click.option("--pixel-size", "pixel_size", type=Number.of(Detector, "pixel_size_A"), default=None,
              help="Å per pixel (default: config, then header).")
@click.option("--objective", type=click.Choice(["expected", "simulated"]), default="expected", show_default=True,
              help="Micrographs: fit the expected spectrum (deterministic), or compare with simulated "
                   "micrographs (stochastic; see --loss, --estimator, --crn).")
@click.option("--loss", "loss_name", type=click.Choice(["log_ps", "ps2d", "ffl", "pixel"]), default="log_ps",
              show_default=True, help="Simulated objective: log radial / 2D spectrum, focal frequency, pixel loss.")
@click.option("--estimator", type=click.Choice(["pathwise", "score"]), default="pathwise", show_default=True,
              help="Gradient estimator of the random stages (simulated objective).")
@click.option("--crn/--fresh-noise", default=True, show_default=True,
              help="Common random numbers: the same noise draw at every iteration.")
@click.option("--seed", type=Number(0, 2 ** 63 - 1, integer=True), default=0, show_default=True)
@click.option("-o", "--out", "out", default="mtf_fit", show_default=True,
              type=OutPath("prefix", (".toml", ".png", ".txt")),
              help="Output prefix: PREFIX.toml, PREFIX.png, PREFIX.txt.")
def fit_mtf(inputs, config_path, kind, dc, free, ps_objective, tilt, method, maxiter, lr, pixel_size, objective,
            loss_name, estimator, crn, seed, out):
    """Fit the detector's MTF (and gain) to micrographs, a power spectrum or an MTF curve.

    Micrographs with a specimen (--config: a cutem TOML or TEM-simulator input file with
    the particles, ice and optics the micrographs show): the closed-form expected power
    spectrum of that scene through the simulator (cutem.fitting.fit_mtf_specimen) is fitted,
    with the ice thickness and defocus optionally free.

    Blank micrographs (MRC images or stacks, uniform illumination): the log radially
    averaged power spectrum is fitted with the expected spectrum N̄/DQE·MTF² and the image
    mean with gain·N̄ (dose, DQE and pixel size from --config). A measured MTF curve
    (RELION STAR: frequency in 1/pixel, MTF): least squares on the curve, gain 1.
    Writes a TOML `cutem simulate` accepts, a PNG of data vs fit, and a report.
    """
    from cutem import fitting
    from cutem.config import RunConfig, load_config, write_resolved
    from cutem.io import read_mrc
    from cutem.plots import plot_fit_png
    from cutem.spectra import to_corner

    cfg = load_config(config_path) if config_path else RunConfig()
    det = cfg.detector
    if kind == "auto":
        kind = "curve" if all(str(p).lower().endswith(".star") for p in inputs) else \
            ("specimen" if config_path and cfg.particles else "micrographs")
    if kind == "specimen" and not config_path:
        fail("fit-mtf: micrographs with a specimen need --config (the scene the simulator should reproduce)")
    out = Path(out)
    cfg_out = None
    if kind == "curve":
        if len(inputs) != 1:
            fail("fit-mtf: give one MTF STAR file")
        x, y = _read_mtf_star(inputs[0])
        names = tuple((free or _CURVE_FREE).split(","))
        res = fitting.fit_mtf_curve(x, y, free=names, detector=det.replace(gain=1.0))
        xlabel, ylabel, logy, rlabel = "spatial frequency (cycles/pixel)", "MTF", False, "fit − data"
        rms = float(np.sqrt(np.mean(res.profile["residual"] ** 2)))
        extra = [f"RMS(fit − data) = {rms:.4g} over {len(x)} points (0..{x.max():.3g} cycles/pixel)"]
    else:
        names = tuple((free or _MTF_FREE).split(","))
        if pixel_size:
            det = det.replace(pixel_size_A=float(pixel_size))
        if kind == "spectrum":
            if len(inputs) != 1:
                fail("fit-mtf: give one power-spectrum MRC")
            ps, _ = read_mrc(inputs[0], ndim=2, name="power spectrum")
            ps = np.asarray(ps, dtype=np.float64)
            ps = to_corner(ps) if dc == "centre" else ps
            names = tuple(n for n in names if n != "gain") if free is None else names
            res = fitting.fit_mtf_blank(None, det.replace(nx=ps.shape[1], ny=ps.shape[0]), free=names, ps=ps,
                                        mean=None, method=method, maxiter=maxiter, lr=lr, weighting="uniform")
        else:
            stack = []
            for p in inputs:
                data, px = read_mrc(p, ndim=(2, 3), name="micrograph")
                data = np.asarray(data, dtype=np.float64)
                stack += [data] if data.ndim == 2 else list(data)
                if pixel_size is None and not config_path:
                    det = det.replace(pixel_size_A=float(px))
            shapes = {s.shape for s in stack}
            if len(shapes) != 1:
                fail(f"fit-mtf: micrographs must share one shape, got {sorted(shapes)}")
            imgs = np.stack(stack)
            if kind == "specimen":
                if (imgs.shape[2], imgs.shape[1]) != (det.nx, det.ny):
                    fail(f"fit-mtf: micrographs are {imgs.shape[2]}x{imgs.shape[1]} but the config's detector is "
                         f"{det.nx}x{det.ny}")
                if not 0 <= tilt < len(cfg.geometry.tilt_angles_deg):
                    fail(f"fit-mtf: --tilt {tilt} outside the config's {len(cfg.geometry.tilt_angles_deg)} tilts")
                if pixel_size:
                    cfg = cfg.replace(detector=det)
                res = fitting.fit_mtf_specimen(imgs, cfg, free=names, objective=ps_objective, tilt=tilt,
                                               method=method, maxiter=maxiter, lr=lr)
                cfg_out = fitting.specimen_config_with(cfg, res.fit.params)
            elif objective == "simulated":
                det = det.replace(nx=imgs.shape[2], ny=imgs.shape[1])
                if method == "lbfgsb" and not (crn and estimator == "pathwise"):
                    fail("fit-mtf: L-BFGS-B needs a deterministic objective: --estimator pathwise --crn "
                         "(or use --method adam)")
                obj = fitting.SimulationObjective(imgs, det, loss=loss_name, estimator=estimator, crn=crn,
                                                  seed=seed)
                res = fitting.fit_mtf_simulated(obj, det, free=names, method=method, maxiter=maxiter, lr=lr)
            else:
                det = det.replace(nx=imgs.shape[2], ny=imgs.shape[1])
                res = fitting.fit_mtf_blank(imgs, det, free=names, method=method, maxiter=maxiter, lr=lr,
                                            objective=ps_objective)
        xlabel, ylabel, logy, rlabel = "spatial frequency (cycles/pixel)", "radial power spectrum", True, "log(fit/data)"
        extra = []
    f = res.fit
    params = dict(f.params)
    errs = dict(res.errors)
    if all(k in params for k in ("mtf_a", "mtf_b", "mtf_c")):
        nn = fitting.normalised_mtf_params(params)
        for k in ("a_n", "b_n", "c_n"):
            params[k] = nn[k]
    lines = _report_lines(f"cutem fit-mtf ({kind}, {f.method}): {f.iterations} iterations, {f.evaluations} "
                          f"evaluations, {f.seconds:.2f} s, loss {f.loss:.6g} [{f.message}]", params, errs,
                          extra + [("errors: inverse observed information of the Whittle likelihood (Hessian "
                                    "from exact gradients)")
                                   if (kind in ("specimen", "micrographs") and ps_objective == "whittle"
                                       and objective == "expected")
                                   else "errors: Gauss–Newton, exact Jacobian (tape), residual variance from the fit",
                                   "a_n, b_n, c_n = a, b, c / (a + b + c): the MTF depends only on these"])
    cfg_out = (cfg_out or cfg.replace(detector=res.detector)).replace(
        source=f"cutem fit-mtf {' '.join(map(str, inputs))}")
    write_resolved(out.with_suffix(".toml"), cfg_out)
    p = res.profile
    plot_fit_png(out.with_suffix(".png"), p["x"][1:] if kind != "curve" else p["x"],
                 p["data"][1:] if kind != "curve" else p["data"],
                 p["model"][1:] if kind != "curve" else p["model"],
                 p["residual"][1:] if kind != "curve" else p["residual"],
                 title=f"cutem fit-mtf: {Path(inputs[0]).name}", xlabel=xlabel, ylabel=ylabel, logy=logy,
                 residual_label=rlabel)
    from cutem.io import atomic_path

    with atomic_path(out.with_suffix(".txt"), suffix=".txt") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))
    click.echo(f"wrote {out.with_suffix('.toml')}, {out.with_suffix('.png')}, {out.with_suffix('.txt')}")


@click.command("fit-ctf")
@click.argument("inputs", nargs=-1, required=True, type=InFile("mrc", min_side=32))
@click.option("--kind", type=click.Choice(["spectrum", "micrograph"]), default="spectrum", show_default=True,
              help="Inputs are power spectra or micrographs (a micrograph's spectrum is the mean periodogram "
                   "of 512-pixel tiles).")
@click.option("--dc", type=click.Choice(["centre", "corner"]), default="centre", show_default=True,
              help="Where DC sits in an input power spectrum.")
@click.option("--pixel-size", "pixel_size", type=Number.of(Detector, "pixel_size_A"), default=None,
              help="Å per pixel of the image (spectrum sampling); default: the MRC header.")
@click.option("--voltage", "voltage_kV", type=Number.of(Optics, "voltage_kV"), default=300.0, show_default=True, help="kV")
@click.option("--cs", "cs_mm", type=Number.of(Optics, "cs_mm"), default=2.7, show_default=True, help="mm")
@click.option("--amplitude-contrast", type=Number.of(Optics, "amplitude_contrast"), default=0.1, show_default=True, help="start (or fixed) value")
@click.option("--fix-amplitude-contrast", is_flag=True, help="Do not fit the amplitude contrast.")
@click.option("--resolution-range", nargs=2, type=Number(0.0, 1e4, "Å", open="lo"), callback=ordered(descending=True), default=(30.0, 5.0), show_default=True,
              help="Fit range: lowest and highest resolution in Å.")
@click.option("--defocus-range", nargs=2, type=Number.of(Optics, "defocus_u_A"), callback=ordered(), default=(2000.0, 50000.0), show_default=True,
              help="Defocus search range in Å.")
@click.option("--max-astigmatism", type=Number(0.0, 1e5, "Å"), default=1500.0, show_default=True, help="Å, for the 2D grid")
@click.option("-o", "--out", "out", default="ctf_fit.star", show_default=True, type=OutPath(),
              help="STAR file; one PNG per input beside it (<out stem>_<input stem>.png).")
@quiet_option
def fit_ctf(inputs, kind, dc, pixel_size, voltage_kV, cs_mm, amplitude_contrast, fix_amplitude_contrast,
            resolution_range, defocus_range, max_astigmatism, out, quiet):
    """Defocus, astigmatism and amplitude contrast from power spectra or micrographs.

    A 1D search over defocus on the radial profile, a 2D grid over astigmatism, then
    L-BFGS-B through the CTF stage's exact gradient. Writes RELION columns
    (rlnDefocusU/V in Å, rlnDefocusAngle in degrees, rlnAmplitudeContrast, ...) and PNGs.
    """
    from tqdm import tqdm

    from cutem import fitting
    from cutem.io import read_mrc, write_star
    from cutem.plots import plot_fit_png
    from cutem.spectra import welch_power_spectrum

    lo_A, hi_A = resolution_range
    if not lo_A > hi_A > 0:
        fail(f"fit-ctf: --resolution-range must be low > high > 0 Å, got {lo_A} {hi_A}")
    out = Path(out)
    rows = []
    for path in tqdm(inputs, disable=quiet or len(inputs) < 2, desc="fit-ctf"):
        data, px = read_mrc(path, ndim=2, name="input")
        px = float(pixel_size or px)
        data = np.asarray(data, dtype=np.float64)
        if kind == "micrograph":
            ps, centred = welch_power_spectrum(data, tile=512), False
        else:
            if data.shape[0] != data.shape[1]:
                fail(f"fit-ctf: power spectrum {path} must be square, got {data.shape}")
            ps, centred = data, dc == "centre"
        r = fitting.fit_ctf(ps, px, voltage_kV, cs_mm, centred=centred, q_range=(1 / lo_A, 1 / hi_A),
                            amplitude_contrast=amplitude_contrast, fit_amplitude=not fix_amplitude_contrast,
                            defocus_range_A=tuple(defocus_range), max_astigmatism_A=max_astigmatism)
        rows.append([str(path), r.defocus_u_A, r.defocus_v_A, r.astigmatism_A, r.astigmatism_angle_deg,
                     r.amplitude_contrast, voltage_kV, cs_mm, r.score, 1.0 / (1.0 / hi_A)])
        p = r.profile
        png = out.with_name(f"{out.stem}_{Path(path).stem}.png")
        plot_fit_png(png, p["q"], p["data"], p["model"], p["data"] - p["model"],
                     title=(f"{Path(path).name}: U {r.defocus_u_A:.0f} Å, V {r.defocus_v_A:.0f} Å, "
                            f"angle {r.astigmatism_angle_deg:.1f}°, w {r.amplitude_contrast:.3f}"),
                     xlabel="spatial frequency (1/Å)", ylabel="radial power spectrum", logy=True,
                     residual_label="data − fit")
        e = r.errors
        click.echo(f"{Path(path).name}: defocus U {r.defocus_u_A:.1f} ± {e.get('defocus_u_A', float('nan')):.1f} Å, "
                   f"V {r.defocus_v_A:.1f} ± {e.get('defocus_v_A', float('nan')):.1f} Å, angle "
                   f"{r.astigmatism_angle_deg:.1f} ± {e.get('astigmatism_angle_deg', float('nan')):.1f}°, amplitude "
                   f"contrast {r.amplitude_contrast:.3f}, score {r.score:.3f} ({r.seconds:.1f} s, "
                   f"{r.iterations} iterations; search: {r.search_defocus_A:.0f} Å)")
    cols = ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle",
            "rlnAmplitudeContrast", "rlnVoltage", "rlnSphericalAberration", "rlnCtfFigureOfMerit",
            "rlnCtfMaxResolution"]
    write_star(out, {"micrographs": {c: [r[i] for r in rows] for i, c in enumerate(cols)}})
    click.echo(f"wrote {out}")


@click.command("fit-twin")
@click.argument("input_path", metavar="INPUT", type=InFile("mrc"))
@click.option("--voltage", "voltage_kV", type=Number.of(Optics, "voltage_kV"), required=True, help="kV")
@click.option("--cs", "cs_mm", type=Number.of(Optics, "cs_mm"), required=True, help="mm")
@click.option("--pixel-size", "pixel_size", type=Number.of(Detector, "pixel_size_A"), required=True,
              help="Å per pixel of the micrograph (the spectrum's sampling).")
@click.option("--kind", type=click.Choice(["auto", "spectrum", "micrograph"]), default="auto", show_default=True,
              help="INPUT is a power spectrum (DC at the centre, as RELION writes it) or micrographs "
                   "(auto: a 3D stack is micrographs, a 2D image with its maximum at the centre a spectrum).")
@click.option("--resolution-range", nargs=2, type=Number(0.0, 1e4, "Å", open="lo"), callback=ordered(descending=True),
              default=(30.0, 5.0), show_default=True, help="Rings fitted: lowest and highest resolution in Å.")
@click.option("--images", type=Number(1, 100000, integer=True), default=64, show_default=True,
              help="Micrographs per `cutem simulate` run of the twin (a stack: the spectrum's noise falls "
                   "as 1/sqrt(images)).")
@click.option("--thickness", "thickness_A", type=Number.of(Sample, "thickness_center_A"),
              default=300.0, show_default=True, help="Ice thickness (Å) the fit starts from.")
@click.option("--maxiter", type=Number(1, 100000, integer=True), default=80, show_default=True)
@click.option("--out", "out", type=OutPath(), default="twin.toml", show_default=True,
              help="The twin config; beside it OUT.png (report), OUT.txt.")
@quiet_option
def fit_twin(input_path, voltage_kV, cs_mm, pixel_size, kind, resolution_range, images, thickness_A, maxiter, out,
             quiet):
    """A digital twin of a micrograph: fit the image model to INPUT's power spectrum and write a
    config that `cutem simulate` runs as it is.

    Fitted through the image model's exact gradients (cutem.fitting.twin): defocus and
    astigmatism (started by fit-ctf), amplitude contrast, energy spread and illumination
    envelopes, ice thickness (amorphous ice: its density fluctuations ring the spectrum) with its
    scattered-electron background, a B-factor envelope on the signal, detector MTF, its DQE
    falloff (noise power rising towards Nyquist) and the noise level (an effective dose), then
    refitted with the closed form corrected by the spectrum of 256 micrographs simulated of the
    fitted twin. The PNG overlays the real and twin log radial profiles and shows the two
    spectra side by side.
    """
    from cutem.fitting.twin import SIMULATED_IMAGES, fit_twin as fit, profile_agreement, write_report_png, write_twin
    from cutem.io import atomic_path, read_mrc

    lo_A, hi_A = resolution_range
    if not lo_A > hi_A > 0:
        fail(f"fit-twin: --resolution-range must be low > high > 0 Å, got {lo_A} {hi_A}")
    if pixel_size <= 0 or voltage_kV <= 0 or cs_mm < 0:
        fail("fit-twin: --pixel-size and --voltage must be > 0 and --cs >= 0")
    data, _ = read_mrc(input_path, name="input")
    data = np.asarray(data, dtype=np.float64)
    if kind == "auto":
        c = tuple(n // 2 for n in data.shape)
        kind = "spectrum" if data.ndim == 2 and data[c] >= data.max() else "micrograph"
    if kind == "micrograph" and data.ndim == 2:
        data = data[None]
    q_range = (1.0 / lo_A, 1.0 / hi_A)
    log = None if quiet else (lambda msg: click.echo(msg, err=True))
    r = fit(data, pixel_size, voltage_kV, cs_mm, q_range=q_range, maxiter=maxiter, thickness_A=thickness_A,
            simulated_images=SIMULATED_IMAGES, log=log)
    out = Path(out)
    write_twin(r, out, images=images)
    from cutem.fitting.twin import input_spectrum

    ps = input_spectrum(data, centred=True)
    corr, rings = profile_agreement(ps, r.model_ps, pixel_size, q_range)
    write_report_png(out.with_suffix(".png"), ps, r.model_ps, pixel_size, q_range,
                     title=f"{Path(input_path).name}: twin (expected) corr {corr:.3f}, rings {rings:.3f}")
    lines = _report_lines(f"# cutem fit-twin {input_path} ({r.seconds:.1f} s, {r.iterations} iterations, "
                          f"loss {r.loss:.3g})", r.params, {},
                          [f"log-profile correlation (twin expected vs input) {corr:.4f}, "
                           f"detrended {rings:.4f} over {lo_A:g}-{hi_A:g} Å"])
    with atomic_path(out.with_suffix(".txt"), suffix=".txt") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    if not quiet:
        click.echo("\n".join(lines))
        click.echo(f"wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.txt')}")


COMMANDS = [fit_mtf, fit_ctf, fit_twin]
