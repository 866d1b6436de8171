"""A digital twin of a real micrograph: a config whose simulated spectrum is the input's.

:func:`fit_twin` fits, to one power spectrum (or micrographs), everything the spectrum
constrains — defocus and astigmatism (started by :func:`cutem.fitting.ctf.fit_ctf`),
amplitude contrast, the envelopes (energy spread, illumination angle), the ice thickness
and its scattered-electron background, the detector MTF and the noise level — through the
exact gradients of the image model (:class:`cutem.fitting.specimen.SpecimenModel`: the
closed-form expected spectrum of the twin's scene rendered through
:class:`cutem.imaging.ImageModel` on the tape), and returns the config that
``cutem simulate`` runs as it is.

The twin's scene: flat amorphous ice of the fitted thickness and the field's particles as a
random potential (``Sample.ice_model = "amorphous"``, :mod:`cutem.ice`). The vitreous ice's
density fluctuations scatter at every q with the structure factor of water; the particles'
density, randomly placed, adds a continuum that falls as Porod's q⁻⁴
(:func:`cutem.ice.particle_continuum_spectrum`, its power fitted: ``particle_continuum_power``).
The CTF, envelopes and MTF shape both into the Thon rings above the shot noise. Without the
particles' term the model cannot follow the steep fall of a real spectrum below 1/15 Å⁻¹ (on
the 16 β-gal spectra, ``validation/twin_betagal.py``: the fit's own log-profile correlation,
median 0.852 without it, 0.978 with it; the fitted mean defocus ≈ 2 % short of CTFFIND's
without it, 0.2–0.9 % above with it). Its
expected spectrum is the closed form of :class:`cutem.fitting.specimen.SpecimenModel` (first
order in the phases). DQE(0) only rescales the noise relative to the dose and is fixed at 1:
the fitted dose is an effective one (dose × DQE). A B-factor (``Simulation.b_factor_A2``) damps
both fields' power by e^{−Bq²/2}: the signal's own envelope (residual motion, the specimen), fitted
(on the 16 β-gal spectra the simulated stacks' median ring score went 0.921 → 0.954 with it).
The detector's DQE falloff (``Detector.dqe_falloff`` κ: the shot noise's power rising as
1 + κ(q/Nyquist)² beside the MTF²-shaped signal, as a counting camera's does) is fitted too:
without it the real spectra's background stays about 1 % (in log) above the model's over the
top fifth of the band.

The closed form departs from the micrographs that ``cutem simulate`` makes of the twin (terms
beyond first order in the phases, the Poisson counts): after the fit, ``simulated_images``
micrographs of the fitted twin are simulated, the log ratio of their ring means to the closed
form's is added to the model's profile, and the fit is repeated
(:func:`simulated_profile_correction`; ``cutem fit-twin`` uses :data:`SIMULATED_IMAGES`).

The objective: the log ring-averaged spectrum over ``q_range``, model against data, each
with its mean over the range removed (the absolute scale of a summed spectrum is arbitrary),
least squares in log (L-BFGS-B, :func:`adjoints.fit.fit`).

:func:`profile_agreement` is the score of a twin: the correlation of the log radial profiles
of two spectra over a q range and of the same profiles with a quartic in q removed (rings only).
"""
from __future__ import annotations

import dataclasses
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
from ..params import Detector, Geometry, Optics, Sample, Simulation
from ..spectra import RadialBins, radial_average, to_centre, to_corner, welch_power_spectrum
from .ctf import fit_ctf
from .detector_model import detector_free_params, expand_ratios
from ..ice import PARTICLE_Q_REF, ice_power_spectrum
from .specimen import SpecimenModel

#: optics fields fitted (internal names of :data:`cutem.optics.PARAM_NAMES`) and their bounds/scales
_OPTICS_FREE = {"defocus_mean_A": (0.0, None, 100.0), "amplitude_contrast": (0.0, 0.5, 0.05),
                "energy_spread_eV": (0.0, 5.0, 0.5),
                "illumination_angle_mrad": (0.0, 1.0, 0.05)}
#: weight of the rings against the whole profile in the fit's loss (:func:`fit_twin`)
RING_WEIGHT = 2.0
#: micrographs of the fitted twin that ``cutem fit-twin`` simulates to correct the closed form
#: (:func:`simulated_profile_correction`); with it (and 1000 micrographs per twin instead of
#: 512) the 16 β-gal spectra's median ring score went 0.910 → 0.921 (validation/twin_betagal.py,
#: the results of commits de44255 and 7da0bb7)
SIMULATED_IMAGES = 256
_DETECTOR_FREE = ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "dose_e_per_A2")


@dataclass
class TwinFit:
    """Result of :func:`fit_twin`."""

    config: RunConfig            #: the twin
    params: dict                 #: fitted values (physical units: Å, eV, mrad, e⁻/Å², MTF fields)
    ctf: object                  #: the :class:`cutem.fitting.ctf.CTFFit` that started the fit
    loss: float                  #: mean squared log-profile residual at the optimum
    seconds: float
    iterations: int
    profile: dict = field(default_factory=dict)  #: q, data, model ring means (fit range)
    model_ps: np.ndarray | None = None           #: the twin's expected spectrum (DC at the centre; with
                                                 #: the simulated correction when it was made)


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


def twin_config(n, pixel_size_A, voltage_kV, cs_mm, params, images=1):
    """The twin's :class:`cutem.config.RunConfig` (``images`` micrographs of the same field,
    each its own shot noise: a stack at 0° tilt) at the values of ``params``."""
    p = params
    optics = Optics(voltage_kV=voltage_kV, cs_mm=cs_mm, cc_mm=p.get("cc_mm", 2.7),
                    defocus_u_A=p["defocus_u_A"], defocus_v_A=p["defocus_v_A"],
                    astigmatism_angle_deg=p["astigmatism_angle_deg"], amplitude_contrast=p["amplitude_contrast"],
                    energy_spread_eV=p["energy_spread_eV"], illumination_angle_mrad=p["illumination_angle_mrad"])
    det = Detector(nx=n, ny=n, pixel_size_A=pixel_size_A, dose_e_per_A2=p["dose_e_per_A2"], quantized=True,
                   dqe=p.get("dqe", 1.0), mtf_a=p["mtf_a"], mtf_b=p["mtf_b"], mtf_c=p["mtf_c"],
                   mtf_alpha=p["mtf_alpha"], mtf_beta=p["mtf_beta"], gain=1.0,
                   dqe_falloff=p.get("dqe_falloff", 0.0))
    t = p["thickness_A"]
    # a hole far wider than the field: the ice is flat over it
    sample = Sample(diameter_A=1e6, thickness_center_A=t, thickness_edge_A=t, ice=True,
                    ice_absorption=p.get("ice_absorption", 0.0), ice_model="amorphous",
                    particle_continuum_power=p.get("particle_continuum_power", 0.0))
    sim = Simulation(method="projection", inelastic_background=True, dtype="float32",
                     b_factor_A2=p.get("b_factor_A2", 0.0))
    return RunConfig(optics=optics, detector=det, sample=sample, geometry=Geometry(tilt_angles_deg=(0.0,) * images),
                     simulation=sim, output="twin")


def _ring_selection(shape, pixel_size_A, q_range):
    bins = RadialBins(shape, pixel_size_A)
    sel = np.nonzero((bins.q >= q_range[0]) & (bins.q <= q_range[1]))[0]
    return bins, sel


def fit_twin(data, pixel_size_A, voltage_kV, cs_mm, *, centred=True, q_range=(1 / 30, 1 / 5), maxiter=80,
             thickness_A=300.0, second_order_draws=8, simulated_images=0, log=None):
    """Fit the twin of a power spectrum or micrographs (module docstring); returns :class:`TwinFit`.

    ``data``: a 2D spectrum (``centred``: DC at the centre, as RELION writes it) or a stack of
    micrographs; ``q_range`` (1/Å): the rings fitted; ``thickness_A``: the ice thickness the
    fit starts from; ``second_order_draws``: ice draws of :func:`second_order_spectrum` (0: the
    first-order spectrum only); ``simulated_images``: micrographs of the fitted twin simulated
    (:func:`cutem.pipeline.simulate`, shot noise and all) to correct the closed form where the
    simulator departs from it (:func:`simulated_profile_correction`), then the fit repeated with the
    correction (0: none); ``log``: a callable for progress lines.
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
             "energy_spread_eV": 0.7, "illumination_angle_mrad": 0.1, "thickness_A": float(thickness_A),
             "dose_e_per_A2": 40.0, "mtf_a": 0.6, "mtf_b": 0.3, "mtf_c": 0.1, "mtf_alpha": 5.0, "mtf_beta": 40.0}
    # the particles' continuum starts at the ice's own power there
    start["particle_continuum_power"] = float(ice_power_spectrum(PARTICLE_Q_REF, thickness_A))
    cfg = twin_config(n, pixel_size_A, voltage_kV, cs_mm, start)
    model = SpecimenModel(cfg, free=("ice_thickness_A", "particle_continuum_power"))
    bins, sel = _ring_selection((n, n), pixel_size_A, q_range)
    data_log = np.log(np.maximum(bins.average(to_corner(ps))[sel], 1e-300))
    data_log = data_log - data_log.mean()
    sel_x = np.asarray(sel)

    # the astigmatism (u − v and its angle) is fit-ctf's, from the 2D spectrum: a ring average
    # hardly constrains it, and a free u − v would only damp the rings in place of the envelopes
    half = 0.5 * (ctf.defocus_u_A - ctf.defocus_v_A)
    start["defocus_mean_A"] = 0.5 * (ctf.defocus_u_A + ctf.defocus_v_A)
    free = [FreeParam(k, float(start[k]), lo, hi, "bounds", sc) for k, (lo, hi, sc) in _OPTICS_FREE.items()]
    free.append(FreeParam("ice_thickness_A", float(start["thickness_A"]), 50.0, 3000.0, "bounds", 100.0))
    p0 = start["particle_continuum_power"]
    free.append(FreeParam("particle_continuum_power", p0, 0.0, 1e3 * p0, "bounds", p0))
    # the signal's own envelope (residual motion, the specimen's B): without it the real rings'
    # modulation, deep below 1/15 Å⁻¹ and shallow above 1/7 Å⁻¹, is more than the optics'
    # envelopes can follow (README, issue 19)
    free.append(FreeParam("b_factor_A2", 10.0, 0.0, 1000.0, "bounds", 20.0))
    # the shot noise's power rising towards Nyquist beside the MTF²-shaped signal (a counting
    # camera's DQE falloff, cutem.detector): without it every real spectrum's background stays
    # ~1 % (in log) above the model's over the top fifth of the band
    free.append(FreeParam("dqe_falloff", 0.05, 0.0, 10.0, "bounds", 0.05))

    def with_defocus(theta):
        th = dict(theta)
        if "defocus_mean_A" in th:
            m = th.pop("defocus_mean_A")
            th.update(defocus_u_A=m + half, defocus_v_A=m - half)
        return th

    extra = [0.0, 0.0]      # the ice's second-order power (second_order_spectrum) and the dose it was made at
    sim_corr = [0.0]        # log(simulated / closed-form ring means), mean removed (simulated_profile_correction)

    def expected(theta):
        S, _ = model(with_defocus(theta))
        if extra[1]:
            # the second-order power is ∝ counts², i.e. dose² (the thickness is held, below)
            d = theta["dose_e_per_A2"] * (1.0 / extra[1])
            S = S + extra[0] * (d * d)
        return S

    def residuals(theta):
        prof = ops.log(radial_average(expected(theta), bins)[sel_x])
        return prof - ops.mean(prof) - data_log + sim_corr[0]

    # the rings (the residual with a quartic in q removed, as the score sees them) weigh
    # RING_WEIGHT times the whole profile (2: on three β-gal spectra, 1 loses the rings'
    # phases where the trend is hard to follow, 4 the trend; the profile score needs both)
    qs = bins.q[sel]
    X = np.vander(qs, 5)
    detrend = np.eye(len(qs)) - X @ np.linalg.pinv(X)

    def loss(theta, _step):
        r = residuals(theta)
        rd = ops.matmul(detrend, ops.reshape(r, (len(qs), 1)))
        return ops.mean(r * r) + ops.mean(rd * rd) * RING_WEIGHT

    # the dose sets the rings' power against the shot noise's (∝ dose² vs dose): a coarse scan
    # places it before the gradient fit (the loss is not convex in it across orders of magnitude)
    doses = (2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
    costs = [float(np.mean(np.asarray(unwrap(residuals({"dose_e_per_A2": d}))) ** 2)) for d in doses]
    start["dose_e_per_A2"] = doses[int(np.argmin(costs))]
    say(f"fit-twin: dose scan {dict(zip(doses, np.round(costs, 4)))}")
    det_free = detector_free_params(model.detector.replace(**{k: start[k] for k in _DETECTOR_FREE}), _DETECTOR_FREE)
    par = Parametrisation(free + det_free, {})
    res = fit(loss, par, "lbfgsb", maxiter=maxiter)

    def physical(vals):
        phys = {k: float(B.to_numpy(v)) for k, v in expand_ratios(with_defocus(vals)).items()}
        params = {k: v for k, v in start.items() if k != "defocus_mean_A"}
        params.update({k: v for k, v in phys.items() if k != "ice_thickness_A"})
        params["thickness_A"] = phys["ice_thickness_A"]
        params["dqe"] = float(model.detector.dqe)
        return params

    def refit(res, vals, held):
        """The fit repeated from ``vals`` with the parameters in ``held`` fixed there."""
        par = Parametrisation([dataclasses.replace(f, init=float(B.to_numpy(vals[f.name])))
                               for f in par0.free if f.name not in held], held)
        before = res.iterations
        res = fit(loss, par, "lbfgsb", maxiter=maxiter)
        res.iterations += before
        return res, {**dict(res.params), **held}

    par0 = par
    vals, held = dict(res.params), {}
    if second_order_draws:
        # the micrographs carry the ice's scattering beyond first order (it fills the troughs
        # below the first Thon maxima, where the linear transfer is small): estimated at the
        # first fit, then the fit is repeated from there with it added (scaled with the dose)
        p1 = physical(vals)
        extra[0] = second_order_spectrum(twin_config(n, pixel_size_A, voltage_kV, cs_mm, p1), second_order_draws)
        extra[1] = p1["dose_e_per_A2"]
        # the thickness is held at the first fit's: the second-order power was made there
        held = {"ice_thickness_A": p1["thickness_A"]}
        res, vals = refit(res, vals, held)
    if simulated_images:
        # the closed form is first order in the particles' phase and treats the counts as a
        # Gaussian field; the micrographs that `cutem simulate` makes of the twin are the score,
        # so their own spectrum corrects the closed form's ring profile (fixed at the fitted
        # values, then the fit repeated with it: the correction hardly moves with the parameters)
        p2 = physical(vals)
        S2 = np.asarray(unwrap(expected(vals)))
        sim_corr[0] = simulated_profile_correction(twin_config(n, pixel_size_A, voltage_kV, cs_mm, p2),
                                                   S2, bins, sel, int(simulated_images))
        say(f"fit-twin: simulated/closed-form profile, rms {float(np.std(sim_corr[0])):.4f} in log")
        res, vals = refit(res, vals, held)
    r = np.asarray(unwrap(residuals(vals)))
    S = np.asarray(unwrap(expected(vals)))
    if simulated_images:
        # the expected spectrum of the simulated micrographs: the closed form × the correction
        S = S * np.exp(_on_grid(bins, sel, sim_corr[0]))
    params = physical(vals)
    say(f"fit-twin: loss {res.loss:.3g} after {res.iterations} iterations, {time.perf_counter() - t0:.1f} s")
    prof = {"q": bins.q[sel], "data": data_log, "model": data_log + r}
    return TwinFit(twin_config(n, pixel_size_A, voltage_kV, cs_mm, params), params, ctf,
                   float(res.loss), time.perf_counter() - t0, int(res.iterations), prof, to_centre(S))


def simulated_profile_correction(cfg, S, bins, sel, images):
    """log(ring means of the micrographs that :func:`cutem.pipeline.simulate` makes of ``cfg``,
    ``images`` of them) − log(ring means of the closed-form spectrum ``S``) over the rings
    ``sel`` of ``bins``, its mean removed. The micrographs use seed ``cfg.seed + 1``, so that a
    user's ``cutem simulate`` of the twin (seed ``cfg.seed``) is an independent draw."""
    from ..pipeline import simulate
    from ..spectra import power_spectrum

    cfg = cfg.replace(geometry=Geometry(tilt_angles_deg=(0.0,) * int(images)), seed=(cfg.seed + 1) % 2**31)
    ps = power_spectrum(np.asarray(simulate(cfg).images, dtype=np.float64))
    d = np.log(np.maximum(bins.average(ps)[sel], 1e-300)) - np.log(np.maximum(bins.average(S)[sel], 1e-300))
    return d - d.mean()


def _on_grid(bins, sel, values):
    """The ring values ``values`` (rings ``sel`` of ``bins``) as a 2D array in FFT layout, 0 elsewhere."""
    ring = np.zeros(bins.nbins + 1)         # the last entry: frequencies outside every ring
    ring[sel] = values
    return ring[bins.index_np]


def second_order_spectrum(cfg, draws=8, seed=0):
    """The expected spectrum of a flat amorphous-ice twin ``cfg`` beyond the first order of
    :class:`cutem.fitting.specimen.SpecimenModel` (FFT layout, noise-free): the mean over
    ``draws`` ice draws g of |FFT[m(g)]|²/n − |FFT[T g]|²/n, m(g) the noise-free image and T g
    its linear part (central difference through the pipeline). The two share their draw, so the
    difference has far less noise than either (a control variate); its expectation is the
    power of the image's terms of second and higher order in the ice's phase."""
    from ..ice import ice_rng, unit_field
    from ..imaging import ImageModel

    cfg = cfg.replace(simulation=cfg.simulation.replace(dtype="float64"))
    base = ImageModel.from_config(cfg, 0, xp=np, dtype=np.float64)
    g0, px = base.grid, base.grid.pixel_size_A
    base = dataclasses.replace(base, particle_field=np.zeros(g0.shape))   # the ice's terms only
    n = float(np.prod(g0.detector_shape))

    def image(field):
        return np.asarray(dataclasses.replace(base, ice_field=field, _cache={}).render(estimator="none").image)

    def per(x):
        return np.abs(np.fft.fft2(x - x.mean())) ** 2 / n

    out = 0.0
    for j in range(int(draws)):
        g = unit_field(1, g0.shape, px, ice_rng(seed, 10_000 + j), cfg.simulation.b_factor_A2)
        eps = 1e-4 / np.abs(g).max()
        lin = (image(eps * g) - image(-eps * g)) / (2 * eps)
        out = out + (per(image(g)) - per(lin)) / draws
    return out


def write_twin(fit_result: TwinFit, path, images=64):
    """Write the twin to ``path`` (TOML, ``images`` micrographs per ``cutem simulate`` run, each
    its own ice draw and shot noise). Returns the config written."""
    from ..config import write_resolved

    path = Path(path)
    cfg = fit_result.config.replace(geometry=Geometry(tilt_angles_deg=(0.0,) * int(images)), output=path.stem)
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
    marked by the crop to its outer edge). Drawn with Pillow (:func:`cutem.plots.fit_image`)."""
    from PIL import Image

    from ..io import atomic_path
    from ..plots import fit_image

    q, a = log_profile(ps_real, pixel_size_A, q_range)
    _, b = log_profile(ps_twin, pixel_size_A, q_range)
    a, b = a - a.mean(), b - b.mean()
    prof = fit_image(q, a, b, a - b, title=title, xlabel="spatial frequency (1/A)",
                     ylabel=f"log radial PS (grey real, red {label})", residual_label=f"real - {label}")
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


__all__ = ["TwinFit", "fit_twin", "simulated_profile_correction", "SIMULATED_IMAGES", "write_twin", "twin_config",
           "profile_agreement", "log_profile", "input_spectrum", "write_report_png", "second_order_spectrum"]
