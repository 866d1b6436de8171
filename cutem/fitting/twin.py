"""A digital twin of a real micrograph: a config whose simulated spectrum is the input's.

:func:`fit_twin` fits, to one power spectrum (or micrographs), everything the spectrum
constrains — defocus and astigmatism (started by :func:`cutem.fitting.ctf.fit_ctf`),
amplitude contrast, the envelopes (energy spread, illumination angle), the ice thickness
and its scattered-electron background, the detector MTF and the noise level — through the
exact gradients of the image model (:class:`cutem.fitting.specimen.SpecimenModel`: the
closed-form expected spectrum of the twin's scene rendered through
:class:`cutem.imaging.ImageModel` on the tape), and returns the config that
``cutem simulate`` runs as it is.

The twin's scene. cutem's ice is a continuum (its potential is a smooth slab,
:class:`cutem.potential.IcePotentialStage`): alone it gives no Thon rings. What rings a real
spectrum is the specimen's disordered structure (the ice's molecules and the particles), whose
projected potential is, at the resolutions of a CTF fit, that of randomly placed atoms: power
n·|f(q)|²·e^{−Bq²/2} per unit area. The twin holds such a cloud (:func:`write_scatterers`:
``SCATTERER_DENSITY`` oxygen atoms per Å² of field, uniform and independent, so the image of
the field is periodic like the FFT's), in ice of the fitted thickness. With a fixed cloud the
signal power relative to the shot noise scales as dose·n, so the spectrum measures that product
only: the density is fixed and the dose is fitted as the noise level (the twin's dose is an
effective one, not the real exposure). Likewise DQE(0) only rescales the noise and is fixed.

The objective: the log ring-averaged spectrum over ``q_range``, model against data, each
with its mean over the range removed (the absolute scale of a summed spectrum is arbitrary),
least squares in log (L-BFGS-B, :func:`adjoints.fit.fit`).

:func:`profile_agreement` is the score of a twin: the correlation of the log radial profiles
of two spectra over a q range and of the same profiles with a quartic in q removed (rings only).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import adjoints.backend as B
from adjoints import ops, unwrap
from adjoints.fit import FreeParam, Parametrisation, fit

from ..config import RunConfig
from ..errors import InputError
from ..params import Detector, Geometry, Optics, ParticleSpec, Sample, Simulation
from ..spectra import RadialBins, radial_average, to_centre, to_corner, welch_power_spectrum
from .ctf import fit_ctf
from .detector_model import detector_free_params, expand_ratios
from .specimen import SpecimenModel

#: copies of the twin's particle per Å² of field (module docstring)
PARTICLE_DENSITY = 5e-4
#: optics fields fitted (internal names of :data:`cutem.optics.PARAM_NAMES`) and their bounds/scales
_OPTICS_FREE = {"defocus_u_A": (0.0, None, 100.0), "defocus_v_A": (0.0, None, 100.0),
                "amplitude_contrast": (0.0, 0.5, 0.05), "energy_spread_eV": (0.0, 5.0, 0.5),
                "illumination_angle_mrad": (0.0, 1.0, 0.05)}
_DETECTOR_FREE = ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "dose_e_per_A2")


@dataclass
class TwinFit:
    """Result of :func:`fit_twin`."""

    config: RunConfig            #: the twin (its copies' file named as :func:`write_twin` writes it)
    params: dict                 #: fitted values (physical units: Å, eV, mrad, e⁻/Å², MTF fields)
    ctf: object                  #: the :class:`cutem.fitting.ctf.CTFFit` that started the fit
    loss: float                  #: mean squared log-profile residual at the optimum
    seconds: float
    iterations: int
    profile: dict = field(default_factory=dict)  #: q, data, model ring means (fit range)
    model_ps: np.ndarray | None = None           #: the twin's expected spectrum (DC at the centre)
    scatterers: np.ndarray | None = None         #: (m, 6) the particle's copies the fit rendered


def input_spectrum(data, centred=True, tile=512):
    """A 2D power spectrum (DC at the centre) from ``data``: a spectrum (2D, ``centred`` or
    DC at [0, 0]) is returned centred; micrographs (a 3D stack) are averaged over overlapping
    square tiles of up to ``tile`` pixels (:func:`cutem.spectra.welch_power_spectrum`)."""
    a = np.asarray(B.to_numpy(data), dtype=np.float64)
    if a.ndim == 2:
        return a if centred else to_centre(a)
    if a.ndim != 3:
        raise InputError(f"fit-twin: input must be a 2D spectrum or a stack of micrographs, got shape {a.shape}")
    ps = np.mean([welch_power_spectrum(im, tile=tile) for im in a], axis=0)
    return to_centre(ps)


def scatterer_transforms(n_pixels, pixel_size_A, thickness_A, seed=0):
    """(m, 6) copies ``x y z phi theta psi`` (Å, degrees) of the twin's particle over an
    ``n_pixels``² field: uniform positions in the ice, uniform random orientations."""
    L = n_pixels * pixel_size_A
    m = max(1, int(round(PARTICLE_DENSITY * L * L)))
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-0.5 * L, 0.5 * L, (m, 2))
    z = rng.uniform(-0.25, 0.25, m) * float(thickness_A)
    phi, psi = rng.uniform(0.0, 360.0, (2, m))
    theta = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, m)))
    return np.column_stack([xy, z, phi, theta, psi])


def particle_structure():
    """The twin's particle: the PDB file cutem ships (1HVR, HIV-1 protease, 22 kDa)."""
    from importlib import resources

    return str(resources.files("cutem.data").joinpath("pdb", "1hvr.pdb"))


def twin_config(n, pixel_size_A, voltage_kV, cs_mm, structure, copies, params, images=1):
    """The twin's :class:`cutem.config.RunConfig` (``images`` micrographs of the same field,
    each its own shot noise: a stack at 0° tilt) at the values of ``params``."""
    p = params
    optics = Optics(voltage_kV=voltage_kV, cs_mm=cs_mm, cc_mm=p.get("cc_mm", 2.7),
                    defocus_u_A=p["defocus_u_A"], defocus_v_A=p["defocus_v_A"],
                    astigmatism_angle_deg=p["astigmatism_angle_deg"], amplitude_contrast=p["amplitude_contrast"],
                    energy_spread_eV=p["energy_spread_eV"], illumination_angle_mrad=p["illumination_angle_mrad"])
    det = Detector(nx=n, ny=n, pixel_size_A=pixel_size_A, dose_e_per_A2=p["dose_e_per_A2"], quantized=True,
                   dqe=p.get("dqe", 1.0), mtf_a=p["mtf_a"], mtf_b=p["mtf_b"], mtf_c=p["mtf_c"],
                   mtf_alpha=p["mtf_alpha"], mtf_beta=p["mtf_beta"], gain=1.0)
    t = p["thickness_A"]
    # a hole far wider than the field: the ice is flat over it
    sample = Sample(diameter_A=1e6, thickness_center_A=t, thickness_edge_A=t, ice=True,
                    ice_absorption=p.get("ice_absorption", 0.0))
    sim = Simulation(method="projection", inelastic_background=True, dtype="float32")
    part = ParticleSpec(name="specimen", structure=str(structure), placement="list",
                        positions_A=tuple(tuple(float(v) for v in c[:3]) for c in copies),
                        orientations_deg=tuple(tuple(float(v) for v in c[3:]) for c in copies))
    return RunConfig(optics=optics, detector=det, sample=sample, geometry=Geometry(tilt_angles_deg=(0.0,) * images),
                     simulation=sim, particles=(part,), output="twin")


def _ring_selection(shape, pixel_size_A, q_range):
    bins = RadialBins(shape, pixel_size_A)
    sel = np.nonzero((bins.q >= q_range[0]) & (bins.q <= q_range[1]))[0]
    return bins, sel


def fit_twin(data, pixel_size_A, voltage_kV, cs_mm, *, centred=True, q_range=(1 / 30, 1 / 5), maxiter=80,
             thickness_A=300.0, scatterer_path=None, seed=0, log=None):
    """Fit the twin of a power spectrum or micrographs (module docstring); returns :class:`TwinFit`.

    ``data``: a 2D spectrum (``centred``: DC at the centre, as RELION writes it) or a stack of
    micrographs; ``q_range`` (1/Å): the rings fitted; ``thickness_A``: the ice thickness the
    fit starts from; ``scatterer_path``: where the cloud is written (a temporary file if None);
    ``log``: a callable for progress lines.
    """
    t0 = time.perf_counter()
    say = log or (lambda msg: None)
    ps = input_spectrum(data, centred)
    n = ps.shape[0]
    if ps.shape != (n, n) or n % 2:
        raise InputError(f"fit-twin: the spectrum must be square with an even size, got {ps.shape}")
    nyq = 0.5 / pixel_size_A
    if not 0 < q_range[0] < q_range[1] <= nyq:
        raise InputError(f"fit-twin: q range {q_range} 1/Å must lie in (0, Nyquist = {nyq:.4g}]")
    if not np.all(np.isfinite(ps)) or np.any(ps[n // 2 + 1:, :] < 0):
        raise InputError("fit-twin: the spectrum has non-finite or negative values")
    ctf = fit_ctf(ps, pixel_size_A, voltage_kV, cs_mm, centred=True, q_range=q_range)
    say(f"fit-ctf: defocus {ctf.defocus_u_A:.0f}/{ctf.defocus_v_A:.0f} Å at {ctf.astigmatism_angle_deg:.1f}°, "
        f"w {ctf.amplitude_contrast:.3f}")
    start = {"defocus_u_A": ctf.defocus_u_A, "defocus_v_A": ctf.defocus_v_A,
             "astigmatism_angle_deg": ctf.astigmatism_angle_deg, "amplitude_contrast": ctf.amplitude_contrast,
             "energy_spread_eV": 0.7, "illumination_angle_mrad": 0.02, "thickness_A": float(thickness_A),
             "dose_e_per_A2": 40.0, "mtf_a": 0.6, "mtf_b": 0.3, "mtf_c": 0.1, "mtf_alpha": 5.0, "mtf_beta": 40.0}
    pos = scatterer_transforms(n, pixel_size_A, thickness_A, seed)
    cfg = twin_config(n, pixel_size_A, voltage_kV, cs_mm, particle_structure(), pos, start)
    model = SpecimenModel(cfg, free=("ice_thickness_A",))
    bins, sel = _ring_selection((n, n), pixel_size_A, q_range)
    data_log = np.log(np.maximum(bins.average(to_corner(ps))[sel], 1e-300))
    data_log = data_log - data_log.mean()
    sel_x = np.asarray(sel)

    # the dose (noise level) starts where the rings' power is a few per cent of the noise's,
    # as on real spectra: S(d) = a·d (noise) + b·d² (signal), so two evaluations place it
    d0 = start["dose_e_per_A2"]
    s1, s2 = (float(np.mean(bins.average(np.asarray(unwrap(model({"dose_e_per_A2": d})[0])))[sel]))
              for d in (d0, 2 * d0))
    sig, noise = 0.5 * (s2 - 2 * s1), 2 * s1 - 0.5 * s2
    if sig > 0 and noise > 0:
        start["dose_e_per_A2"] = d0 * min(max(0.05 * noise / sig, 1e-3), 1e4)

    det_free = detector_free_params(model.detector.replace(**{k: start[k] for k in _DETECTOR_FREE}), _DETECTOR_FREE)
    free = [FreeParam(k, float(start[k]), lo, hi, "bounds", sc) for k, (lo, hi, sc) in _OPTICS_FREE.items()]
    free.append(FreeParam("ice_thickness_A", float(start["thickness_A"]), 50.0, 3000.0, "bounds", 100.0))
    par = Parametrisation(free + det_free, {})

    def residuals(theta):
        S, _ = model(theta)
        prof = ops.log(radial_average(S, bins)[sel_x])
        return prof - ops.mean(prof) - data_log

    def loss(theta, _step):
        r = residuals(theta)
        return ops.mean(r * r)

    res = fit(loss, par, "lbfgsb", maxiter=maxiter)
    vals = dict(res.params)
    phys = {k: float(B.to_numpy(v)) for k, v in expand_ratios(vals).items()}
    r = np.asarray(unwrap(residuals(vals)))
    S, _ = model(vals)
    S = np.asarray(unwrap(S))
    params = dict(start)
    params.update({k: v for k, v in phys.items() if k != "ice_thickness_A"})
    params["thickness_A"] = phys["ice_thickness_A"]
    params["dqe"] = float(model.detector.dqe)
    say(f"fit-twin: loss {res.loss:.3g} after {res.iterations} iterations, {time.perf_counter() - t0:.1f} s")
    prof = {"q": bins.q[sel], "data": data_log, "model": data_log + r}
    return TwinFit(twin_config(n, pixel_size_A, voltage_kV, cs_mm, "particle.pdb", pos, params), params, ctf,
                   float(res.loss), time.perf_counter() - t0, int(res.iterations), prof, to_centre(S), pos)


def write_twin(fit_result: TwinFit, path, images=64):
    """Write the twin: ``path`` (TOML, ``images`` micrographs per ``cutem simulate`` run) and
    beside it the particle (``<stem>_particle.pdb``), named relative to the TOML so the two move
    together. Returns the config written."""
    import shutil

    from ..config import write_resolved

    path = Path(path)
    pdb = path.with_name(path.stem + "_particle.pdb")
    shutil.copyfile(particle_structure(), pdb)
    cfg = fit_result.config
    part = cfg.particles[0].replace(structure=pdb.name)
    cfg = cfg.replace(particles=(part,), geometry=Geometry(tilt_angles_deg=(0.0,) * int(images)), output=path.stem)
    write_resolved(path, cfg)
    return cfg


def log_profile(ps, pixel_size_A, q_range=(1 / 30, 1 / 5), centred=True):
    """(q, log ring means) of a 2D spectrum over ``q_range``."""
    ps = np.asarray(ps, dtype=np.float64)
    bins, sel = _ring_selection(ps.shape, pixel_size_A, q_range)
    p = bins.average(to_corner(ps) if centred else ps)[sel]
    return bins.q[sel], np.log(np.maximum(p, 1e-300))


def profile_agreement(ps_a, ps_b, pixel_size_A, q_range=(1 / 30, 1 / 5), centred=True):
    """(correlation of the log radial profiles, correlation with a quartic in q removed from each)
    of two spectra of the same sampling over ``q_range`` (the twin's score)."""
    if np.shape(ps_a) != np.shape(ps_b):
        raise InputError(f"profile_agreement: spectra of shapes {np.shape(ps_a)} and {np.shape(ps_b)}")
    q, a = log_profile(ps_a, pixel_size_A, q_range, centred)
    _, b = log_profile(ps_b, pixel_size_A, q_range, centred)

    def detrend(y):
        return y - np.polyval(np.polyfit(q, y, 4), q)

    return float(np.corrcoef(a, b)[0, 1]), float(np.corrcoef(detrend(a), detrend(b))[0, 1])


def write_report_png(path, ps_real, ps_twin, pixel_size_A, q_range=(1 / 30, 1 / 5), title="", label="twin"):
    """A PNG: the log radial profiles of ``ps_real`` and ``ps_twin`` (both centred) over ``q_range``
    with their difference, beside the two spectra (log, the same grey scale, ``q_range`` ring
    marked by the crop to its outer edge). Drawn with Pillow (:func:`cutem.plots.plot_fit_png`)."""
    import tempfile

    from PIL import Image

    from ..io import atomic_path
    from ..plots import plot_fit_png

    q, a = log_profile(ps_real, pixel_size_A, q_range)
    _, b = log_profile(ps_twin, pixel_size_A, q_range)
    a, b = a - a.mean(), b - b.mean()
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "profile.png"
        plot_fit_png(f, q, a, b, a - b, title=title, xlabel="spatial frequency (1/A)",
                     ylabel=f"log radial PS (grey real, red {label})", residual_label=f"real - {label}")
        prof = Image.open(f).convert("RGB")
    n = ps_real.shape[0]
    h = min(n // 2, int(math.ceil(q_range[1] * n * pixel_size_A)) + 4)   # crop to the fitted rings

    def tile(ps):
        c = np.log(np.maximum(np.asarray(ps, dtype=np.float64), 1e-300))[n // 2 - h:n // 2 + h, n // 2 - h:n // 2 + h]
        c[h, h] = np.median(c)        # DC
        return c

    ta, tb = tile(ps_real), tile(ps_twin)
    tb = tb - np.median(tb) + np.median(ta)          # the scale of a summed spectrum is arbitrary
    lo, hi = np.percentile(ta, [1, 99])
    side = prof.height
    imgs = [Image.fromarray((255 * np.clip((t - lo) / (hi - lo), 0, 1)).astype(np.uint8)).resize((side, side))
            for t in (ta, tb)]
    out = Image.new("RGB", (prof.width + 2 * side + 20, side), "white")
    out.paste(prof, (0, 0))
    out.paste(imgs[0].convert("RGB"), (prof.width + 10, 0))
    out.paste(imgs[1].convert("RGB"), (prof.width + side + 20, 0))
    with atomic_path(path, suffix=".png") as tmp:
        out.save(tmp, format="PNG")


__all__ = ["TwinFit", "fit_twin", "write_twin", "twin_config", "profile_agreement", "log_profile",
           "input_spectrum", "write_report_png", "scatterer_transforms", "particle_structure", "PARTICLE_DENSITY"]
