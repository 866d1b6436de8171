"""``cutem reconstruct``: a tomogram from a tilt stack (WBP, SIRT or a fit of the forward model)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from cutem.params import Detector, Geometry, Optics

from .common import InFile, Number, OutPath, device_option, fail, quiet_option


CONVENTIONS = """\b
Conventions. A stack without cutem's header label is read as IMOD writes an aligned stack:
tilt axis along the image's y axis (rows) through the centre, positive tilt a right-handed
rotation about +y (a point (x, z) projects to x cos θ + z sin θ). Overrides, first found wins:
--tilt-axis; the stack's label 'tilt_axis_deg=A' (cutem writes it); [geometry] tilt_axis_deg
of NAME_params.toml beside it (cutem simulate); NAME.xf beside a stack not named .ali (the
raw stack of IMOD: each view is transformed by its line, A11 A12 A21 A22 DX DY, then read
with the axis along y). Angles: --tlt, else NAME.tlt, NAME.rawtlt, or the TiltAngle
entries of NAME.mdoc / NAME.mrc.mdoc (SerialEM). Output: an MRC volume with sections along
the beam (array (nz, ny, nx), x and y those of the images, z = depth, the axis at voxel
n/2 of each dimension); IMOD's tilt writes sections perpendicular to the axis (XZY): the
same volume with its y and z axes swapped."""


def _label_tokens(path):
    """``(is_cutem, {key: value})`` from the MRC labels of ``path``."""
    import mrcfile

    try:
        with mrcfile.open(path, permissive=True, header_only=True) as m:
            labels = [bytes(lab).decode("ascii", "ignore").strip() for lab in m.header.label[: int(m.header.nlabl)]]
    except Exception:
        return False, {}
    toks = {}
    for lab in labels:
        for tok in lab.replace(",", " ").split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                toks[k] = v
    return any(lab.startswith("cutem") for lab in labels), toks


def _siblings(path, suffix):
    """Files beside a stack: NAME<suffix> for NAME.mrc, NAME.mrc<suffix>, and NAME<suffix>
    for the NAME_noisefree.mrc that ``cutem simulate`` writes."""
    p = Path(path)
    stems = [p.stem] + ([p.stem[: -len("_noisefree")]] if p.stem.endswith("_noisefree") else [])
    return [p.with_name(st + suffix) for st in stems] + [p.with_name(p.name + suffix)]


def _first(path, suffix):
    return next((c for c in _siblings(path, suffix) if c.is_file()), None)


def _axis_from_params(path):
    """``[geometry] tilt_axis_deg`` of the ``NAME_params.toml`` that ``cutem simulate`` writes."""
    import tomllib

    cand = _first(path, "_params.toml")
    if cand is None:
        return None
    try:
        geo = tomllib.loads(cand.read_text()).get("geometry", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return float(geo.get("tilt_axis_deg", 0.0))


def resolve_geometry(tilts, n_images, tlt_path=None, axis_deg=None):
    """``(angles_deg, axis_deg, xf_or_None, dose_or_None, source)`` of a stack by the rules of
    :data:`CONVENTIONS`; ``source`` says in words where the axis came from."""
    import numpy as np

    from cutem import imod, io

    dose = None
    if tlt_path:
        angles = io.read_tlt(tlt_path)
        where = tlt_path
    else:
        tlt = _first(tilts, ".tlt") or _first(tilts, ".rawtlt")
        mdoc = _first(tilts, ".mdoc")
        if tlt is not None:
            angles, where = io.read_tlt(tlt), tlt
        elif mdoc is not None:
            info = imod.read_mdoc(mdoc)
            angles, dose, where = info["tilt_deg"], info["dose_e_per_A2"], mdoc
        else:
            fail(f"no tilt angles for {tilts}: no NAME.tlt, NAME.rawtlt or NAME.mdoc beside it (give --tlt)")
    if len(angles) != n_images:
        fail(f"tilt angles {where}: {len(angles)} angles for {n_images} images in {tilts}")
    if np.any(np.abs(angles) > 90):
        fail(f"tilt angles {where}: angles must lie in [-90, 90]")
    is_cutem, toks = _label_tokens(tilts)
    xf = None
    if axis_deg is not None:
        source = "--tilt-axis"
    elif "tilt_axis_deg" in toks:
        try:
            axis_deg, source = float(toks["tilt_axis_deg"]), "header label"
        except ValueError:
            fail(f"{tilts}: header label tilt_axis_deg={toks['tilt_axis_deg']!r} is not a number")
    elif (params := _axis_from_params(tilts)) is not None:
        axis_deg, source = params, "NAME_params.toml"
    elif is_cutem:
        axis_deg, source = 0.0, "cutem label (cutem's default axis along x)"
    elif Path(tilts).suffix != ".ali" and (xf_path := _first(tilts, ".xf")) is not None:
        xf = imod.read_xf(xf_path)
        if len(xf) != n_images:
            fail(f"{xf_path}: {len(xf)} transforms for {n_images} images in {tilts}")
        axis_deg, source = 90.0, f"IMOD raw stack aligned by {xf_path.name}"
    else:
        axis_deg, source = 90.0, "IMOD convention (axis along y)"
    return np.asarray(angles, dtype=np.float64), float(axis_deg), xf, dose, source


@click.command(epilog=CONVENTIONS)
@click.argument("tilts", type=InFile("mrc"))
@click.option("--tlt", "tlt_path", type=InFile("text"), default=None,
              help="Tilt angles, one per line in degrees (default: NAME.tlt, NAME.rawtlt or NAME.mdoc).")
@click.option("--tilt-axis", "axis_deg", type=Number.of(Geometry, "tilt_axis_deg"), default=None,
              help="In-plane angle of the tilt axis from image x, degrees (default: see Conventions; "
                   "90, IMOD's, for a stack that is not cutem's).")
@click.option("--method", type=click.Choice(["wbp", "sirt", "fit"]), default="wbp", show_default=True,
              help="sirt: SIRT's weighted least squares by conjugate gradients, stopped where the "
                   "odd tilts are best predicted from the even ones. fit: the volume that best explains "
                   "the tilts through the forward model (projector, with --ctf model the CTF per tilt, "
                   "with --mtf the detector MTF) under a smoothness prior, by L-BFGS with exact gradients.")
@click.option("--filter", "filt", type=click.Choice(["ram-lak", "shepp-logan", "cosine", "hamming", "hann"]),
              default="shepp-logan", show_default=True, help="WBP ramp apodisation.")
@click.option("--cutoff", type=Number(0.0, 1.0, "of Nyquist", open="lo"), default=1.0, show_default=True,
              help="WBP filter cutoff as a fraction of Nyquist.")
@click.option("--iterations", type=Number(1, 10000, integer=True), default=50, show_default=True,
              help="SIRT / fit: most iterations.")
@click.option("--prior", type=click.Choice(["tv", "laplacian"]), default="tv", show_default=True,
              help="fit: smoothness prior (Charbonnier total variation, or quadratic gradient).")
@click.option("--prior-weight", type=Number(0.0, 1e6), default=None,
              help="fit: prior weight λ (dimensionless; default: chosen from 0.3, 1, 3, 10 where the odd "
                   "tilts are best predicted from a fit to the even ones).")
@click.option("--mtf", "mtf_path", type=InFile("text"), default=None,
              help="fit: detector parameters (a cutem fit-mtf result, TOML) whose MTF is in the model.")
@click.option("--relaxation", type=Number(0.0, 2.0, open="both"), default=1.0, show_default=True,
              help="SIRT with --positivity: step λ in (0, 2).")
@click.option("--positivity", is_flag=True,
              help="SIRT: the classic projected iteration (clip negatives), --iterations steps; "
                   "fit: the volume is bounded below by 0.")
@click.option("--invert", is_flag=True, help="Negate the images first (dark particles → positive density).")
@click.option("--thickness", type=Number(1, 65536, "voxels", integer=True), default=None,
              help="Volume depth nz in voxels (default: image rows).")
@click.option("--ctf", "ctf_mode", type=click.Choice(["none", "phaseflip", "wiener", "model"]), default="none",
              show_default=True, help="CTF correction per tilt, in strips parallel to the tilt axis "
                                      "(the defocus gradient of the tilted field); model (with --method "
                                      "fit): the CTF at each tilt's defocus is part of the forward model.")
@click.option("--defocus", "defocus_path", type=InFile("text"), default=None,
              help="IMOD ctfplotter .defocus file (default: NAME.defocus beside the stack).")
@click.option("--defocus-A", "defocus_A", type=Number.of(Optics, "defocus_u_A"), default=None,
              help="One defocus for every tilt at the axis, Å, + = underfocus (else .defocus, else "
                   "[optics] of NAME_params.toml, else fitted per tilt).")
@click.option("--voltage", "voltage_kV", type=Number.of(Optics, "voltage_kV"), default=None, help="kV (default: params file, else 300).")
@click.option("--cs", "cs_mm", type=Number.of(Optics, "cs_mm"), default=None, help="Cs in mm (default: params file, else 2.7).")
@click.option("--amplitude-contrast", type=Number.of(Optics, "amplitude_contrast"), default=None,
              help="Amplitude contrast fraction (default: params file, else 0.07).")
@click.option("--wiener-snr", type=Number(0.0, 1e6, open="lo"), default=1.0, show_default=True,
              help="Wiener: signal-to-noise ratio of the constant 1/SNR term.")
@click.option("--dose-per-tilt", type=Number.of(Detector, "dose_e_per_A2"), default=None,
              help="Exposure filter (Grant & Grigorieff 2015): e/Å² per image, accumulated in stack "
                   "order (default: ExposureDose of NAME.mdoc when present, else no filter).")
@click.option("--denoise", type=click.Choice(["none", "halves"]), default="none", show_default=True,
              help="halves (wbp, sirt): reconstruct two splits of the tilts into interleaved halves (the "
                   "first even/odd) and denoise from them: the local Wiener gain of the halves in a mask "
                   "of the specimen, total variation, and the Wiener gain of the TV-denoised halves "
                   "(cutem.tomo_denoise.denoise_halves; at least 4 tilts; the specimen's side, "
                   "brighter or darker, is read from where the halves agree best).")
@click.option("--out", "out", type=OutPath(), required=True, help="Output volume (.mrc).")
@device_option
@quiet_option
def reconstruct(tilts, tlt_path, axis_deg, method, filt, cutoff, iterations, prior, prior_weight, mtf_path,
                relaxation, positivity, invert, thickness, ctf_mode, defocus_path, defocus_A, voltage_kV, cs_mm, amplitude_contrast,
                wiener_snr, dose_per_tilt, denoise, out, device, quiet):
    """Reconstruct a tomogram (nz, ny, nx) from a single-axis tilt stack.

    The voxel size is the stack's pixel size.
    """
    import numpy as np

    import adjoints.backend as B
    from cutem import ctfcorrect, imod, io, tomo

    from cutem import memory

    stack, px = io.read_mrc(tilts, ndim=3, name="tilt stack")
    angles, axis_deg, xf, mdoc_dose, source = resolve_geometry(tilts, stack.shape[0], tlt_path, axis_deg)
    if ctf_mode == "model" and method != "fit":
        fail("--ctf model puts the CTF into the forward model of --method fit; use phaseflip or wiener "
             f"with --method {method}")
    if mtf_path is not None and method != "fit":
        fail(f"--mtf puts the detector MTF into the forward model of --method fit, not --method {method}")
    if denoise == "halves" and method == "fit":
        fail("--denoise halves reconstructs halves of the tilts by wbp or sirt; --method fit has its own prior")
    n, ny, nx = stack.shape
    if denoise == "halves" and n < 4:
        fail(f"--denoise halves needs at least 4 tilts, the stack has {n}")
    nz = thickness or max(ny, nx)
    need = memory.reconstruct_bytes(n, ny, nx, nz, method)
    if denoise == "halves":
        need += memory.denoise_halves_bytes(nz, ny, nx)
    memory.check_bytes(need, f"reconstructing {nz}x{ny}x{nx} voxels from {n} tilts"
                       + (" and denoising from halves" if denoise == "halves" else ""),
                       "a smaller --thickness or a binned stack", device)
    detector = None
    if mtf_path is not None:
        from cutem.denoise import detector_from_toml

        detector = detector_from_toml(mtf_path)
    if xf is not None:
        stack = imod.apply_xf(stack, xf)
    t0 = time.perf_counter()
    ctf = None
    if invert:
        stack = -stack
    if ctf_mode != "none":
        optics = _optics_for(tilts, voltage_kV, cs_mm, amplitude_contrast)
        if defocus_A is not None:
            defocus = np.full(len(angles), float(defocus_A))
        elif (dpath := Path(defocus_path) if defocus_path else _first(tilts, ".defocus")) is not None:
            if not dpath.is_file():
                fail(f"defocus file {dpath}: no such file")
            defocus = imod.read_defocus(dpath, len(angles))
        elif optics.get("defocus_A") is not None:
            defocus = np.full(len(angles), optics["defocus_A"])
        else:
            defocus = ctfcorrect.fit_defocus_per_tilt(stack, px, optics["voltage_kV"], optics["cs_mm"],
                                                      optics["amplitude_contrast"])
        if ctf_mode == "model":
            from cutem.params import Optics
            from cutem.tomo_fit import tilt_ctfs

            ctf = tilt_ctfs(stack.shape[1:], px, Optics(voltage_kV=optics["voltage_kV"], cs_mm=optics["cs_mm"],
                                                        amplitude_contrast=optics["amplitude_contrast"]), defocus)
        else:
            stack = ctfcorrect.correct_ctf(stack, angles, axis_deg, px, defocus, optics["voltage_kV"],
                                           optics["cs_mm"], optics["amplitude_contrast"], mode=ctf_mode,
                                           wiener_snr=wiener_snr)
    exposure = None
    if dose_per_tilt is not None:
        exposure = dose_per_tilt * (np.arange(len(angles)) + 0.5)
    elif mdoc_dose is not None:
        exposure = np.cumsum(mdoc_dose) - 0.5 * mdoc_dose
    if exposure is not None:
        stack = ctfcorrect.exposure_filter(stack, px, exposure)
    xp = B.get_xp(device)
    data = xp.asarray(stack)
    from tqdm import tqdm

    if method == "fit":
        from cutem.tomo_fit import fit_reconstruct

        res = fit_reconstruct(data, angles, axis_deg, thickness, ctf=ctf, mtf=detector, prior=prior,
                              prior_weight=prior_weight, positivity=positivity, iterations=iterations)
        vol, method = res.volume, f"fit prior={prior} lambda={res.prior_weight:g} lbfgs_iterations={res.iterations}"
    elif denoise == "halves":
        from cutem import tomo_denoise

        def rec(sub, sub_angles):
            return tomo.reconstruct(sub, sub_angles, axis_deg, thickness, method, filt, cutoff, iterations,
                                    relaxation, positivity)

        halves = tomo_denoise.half_tomograms(data, angles, rec)
        mask, sign = tomo_denoise.halves_specimen_mask(halves)
        vol = tomo_denoise.denoise_halves(halves, mask=mask)[0].astype(np.float32)
        method = (f"{method} denoised from {len(halves)} splits into halves (specimen "
                  f"{'brighter' if sign > 0 else 'darker'} than its surroundings)")
    else:
        bar = tqdm(total=iterations, disable=quiet or method != "sirt", desc="SIRT")
        vol = tomo.reconstruct(data, angles, axis_deg, thickness, method, filt, cutoff, iterations,
                               relaxation, positivity, progress=lambda k, r: bar.update(1))
        bar.close()
    dt = time.perf_counter() - t0
    io.write_volume(out, vol, px, label=f"cutem reconstruct {method} tilt_axis_deg={axis_deg:g}")
    click.echo(f"wrote {out}: {tuple(vol.shape)} voxels of {px:g} Å, {method}, {len(angles)} tilts, "
               f"axis {axis_deg:g}° ({source}), ctf {ctf_mode}, {dt:.1f} s")


def _optics_for(tilts, voltage_kV, cs_mm, amplitude_contrast):
    """Optics for CTF correction: the options, else [optics] of NAME_params.toml, else defaults."""
    import tomllib

    opt = {}
    cand = _first(tilts, "_params.toml")
    if cand is not None:
        try:
            opt = tomllib.loads(cand.read_text()).get("optics", {})
        except (OSError, tomllib.TOMLDecodeError):
            opt = {}
    du, dv = opt.get("defocus_u_A"), opt.get("defocus_v_A")
    return {"voltage_kV": float(voltage_kV if voltage_kV is not None else opt.get("voltage_kV", 300.0)),
            "cs_mm": float(cs_mm if cs_mm is not None else opt.get("cs_mm", 2.7)),
            "amplitude_contrast": float(amplitude_contrast if amplitude_contrast is not None
                                        else opt.get("amplitude_contrast", 0.07)),
            "defocus_A": None if du is None else 0.5 * (float(du) + float(dv if dv is not None else du))}


COMMANDS = [reconstruct]
