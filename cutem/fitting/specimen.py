"""Micrographs of a known specimen: the closed-form expected spectrum and its fit.

:class:`SpecimenModel` renders the expected power spectrum and mean of micrographs of the
scene of a config (on the tape, no noise draw); :func:`fit_mtf_specimen` fits detector,
ice-thickness and defocus parameters to micrographs with it; :func:`specimen_config_with`
puts the fitted values back into the config.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

import adjoints.backend as B
from adjoints import Var, ops, unwrap
from adjoints.fit import FreeParam, Parametrisation, fit

from .. import detector as D
from .. import optics as O
from ..errors import InputError
from ..electron import interaction_constant
from ..grid import Grid
from ..ice import particle_kernel, spectral_kernel
from ..imaging import ImageModel, stack_z_range, tilt_settings
from ..optics import optics_inputs
from ..params import bounds
from ..specimen import scene_from_config
from ..spectra import RadialBins, frequency_grid, power_spectrum
from .detector_model import (DETECTOR_BOUNDS, as_input, detector_free_params, detector_theta, expand_ratios,
                             fit_errors, mtf_on_grid)
from .losses import log_mean_residual, spectrum_objective
from .mtf import MTFFit


#: pseudo-parameters of :func:`fit_mtf_specimen` besides the detector fields
SPECIMEN_FIT_NAMES = ("ice_thickness_A", "thickness_center_A", "thickness_edge_A", "defocus_A",
                      "defocus_u_A", "defocus_v_A", "particle_continuum_power", "b_factor_A2", "dqe_falloff")
#: the declared ranges (:func:`cutem.params.bounds`); the pseudo-names take their field's
_SPECIMEN_BOUNDS = {k: bounds(f) for k, f in (("ice_thickness_A", "sample.thickness_center_A"),
                                              ("thickness_center_A", "sample.thickness_center_A"),
                                              ("thickness_edge_A", "sample.thickness_edge_A"),
                                              ("defocus_A", "optics.defocus_u_A"), ("defocus_u_A", "optics.defocus_u_A"),
                                              ("defocus_v_A", "optics.defocus_v_A"),
                                              ("particle_continuum_power", "sample.particle_continuum_power"),
                                              ("b_factor_A2", "simulation.b_factor_A2"),
                                              ("dqe_falloff", "detector.dqe_falloff"))}


class SpecimenModel:
    """Expected power spectrum and mean of micrographs of a fixed specimen (taped).

    The scene of ``cfg`` (atoms and ice, tilt ``tilt``) goes through the deterministic part
    of the microscope on the tape — its :class:`cutem.imaging.ImageModel` rendered with
    ``estimator="none"`` (the potential computed once; the ice through its stage when the
    thickness is free): the noise-free image
    m(r) = gain·MTF ⊛ N̄. The shot noise (Poisson, then the Wald DQE model) is independent
    per pixel with variance N̄(r)/DQE, so after the MTF its spectrum is white times MTF².
    The expected periodogram of one micrograph is therefore, in closed form (no noise draw,
    no pathwise or score estimator needed: every moment used is exact),

        S(q) = |FFT[m − m̄]|²/n + MTF(q)² · mean(N̄)(1 + κx²)/DQE + σ_readout²,

    and the expected image mean is gain·mean(N̄).

    Amorphous ice (``Sample.ice_model = "amorphous"``, :mod:`cutem.ice`): its fluctuation
    sqrt(L)·g is a zero-mean Gaussian field, so its expected contribution is, to first order
    in g (the weak-phase limit), the spectrum of the image's linear response to it. Over flat
    ice the whole microscope linearised about the ice's uniform exit wave — phase object
    exp(iσV), lens, |ψ|², the ice's scattering filter, binning, detector — is a
    shift-invariant linear map T of g (analytically, for a lens H = E e^{−iχ}:
    δI = −2σ|ψ₀|² Im(H ⊛ δV), power 4σ²|ψ₀|² E² sin²χ · P(q) before the ice filter and
    detector), so E|FFT[T g]|² = |FFT[T k]|² for the kernel k with |FFT k|² = E|FFT g|²
    (:func:`cutem.ice.spectral_kernel`). That response is computed by the pipeline itself as a
    central difference (m(+εk) − m(−εk))/(2ε) (second order cancels; ε: 1e-4 rad of phase), and
    its periodogram is added to S; the mean of the two renders is m at g = 0 to O(ε²).
    The particles' continuum (``Sample.particle_continuum_power`` P_ref, :func:`cutem.ice.particle_field`)
    is a second independent Gaussian field: its expected spectrum is P_ref times the periodogram
    of the response to :func:`cutem.ice.particle_kernel` (another central-difference pair, with
    no ice fluctuation), linear in P_ref, so P_ref can be fitted (``particle_continuum_power``).
    Exact to first order in σ·δV: the quadratic terms (a few % of the ring power at 300 Å of
    ice) are left out. Projection approximation only (one slice). Parameters (``theta``) are the detector
    fields (:data:`cutem.detector.PARAM_NAMES`, Vars where free), optics fields
    (:data:`cutem.optics.PARAM_NAMES`), ``defocus_A`` (u = v), ``thickness_center_A``,
    ``thickness_edge_A`` and ``ice_thickness_A`` (both thicknesses shifted together by the
    same amount, keeping the config's centre–edge difference), and ``b_factor_A2``
    (``Simulation.b_factor_A2``, which damps both random fields' power by e^{−Bq²/2}): the two
    fields' terms are multiplied by e^{−(B − B_cfg)q²/2} on the detector grid, exact for a
    shift-invariant T and an unbinned detector (the kernels are made at the config's B).
    """

    def __init__(self, cfg, tilt=0, scene=None, free=()):
        cfg = cfg.replace(simulation=cfg.simulation.replace(dtype="float64"))
        self.cfg = cfg
        s = cfg.sample
        self.thickness_free = any(k in free for k in ("ice_thickness_A", "thickness_center_A", "thickness_edge_A"))
        z_range = None
        scene = scene if scene is not None else scene_from_config(cfg)
        if self.thickness_free:
            if not s.ice:
                raise InputError("fit: the ice thickness is free but [sample] ice = false")
            if (s.ice_absorption <= 0 and cfg.simulation.method == "projection"
                    and not cfg.simulation.inelastic_background):
                raise InputError("fit: the ice thickness is not identifiable with [sample] ice_absorption = 0 "
                                 "(a uniform ice layer is then a pure phase: the image does not depend on it); "
                                 "set ice_absorption > 0 or inelastic_background")
            if cfg.simulation.method == "multislice":
                # the slice stack must hold the thickest ice the fit may try
                t = min(1e5, max(s.thickness_center_A, s.thickness_edge_A) * 3 + 1000)
                big = cfg.replace(sample=s.replace(thickness_center_A=t, thickness_edge_A=t))
                angle = tilt_settings(cfg, tilt)[0]
                z_range = stack_z_range(big, Grid.from_config(cfg), angle,
                                        scene.z_extent(angle, cfg.geometry.tilt_axis_deg) if len(scene) else None)
        self.model = ImageModel.from_config(cfg, tilt, scene=scene, xp=np, dtype=np.float64, z_range_A=z_range)
        self.grid, self.angle = self.model.grid, self.model.angle_deg
        self.particles_pair = None
        if s.particle_continuum_power > 0 or "particle_continuum_power" in free:
            # its spectrum is a term of its own (below): the other renders see none of it
            self.model = dataclasses.replace(self.model, particle_field=np.zeros(self.grid.shape), _cache={})
            self.particles_pair = self._particles_pair()
        self.pair = self._amorphous_pair(cfg) if s.ice and s.ice_model == "amorphous" else None
        self.optics, self.detector, self.atoms = self.model.optics, self.model.detector, self.model.atoms
        # |q|² (1/Å²), the B envelope's, and (|q|/Nyquist)², the DQE falloff's
        self.q2 = frequency_grid(self.grid.detector_shape, self.detector.pixel_size_A)[2] ** 2
        self.x2 = self.q2 * (2.0 * self.detector.pixel_size_A) ** 2

    def _amorphous_pair(self, cfg):
        """The model with the ice's fluctuation replaced by ±ε·k (:func:`cutem.ice.spectral_kernel`),
        for the amorphous ice's expected spectrum (class docstring)."""
        if self.model.n_slices != 1:
            raise InputError("fit: the expected spectrum of amorphous ice is for the projection approximation "
                             "(one slice); set [simulation] method = \"projection\"")
        g = self.grid
        k = spectral_kernel(g.shape, g.pixel_size_A, cfg.simulation.b_factor_A2)[None]
        # ε: a phase of 1e-4 rad at the kernel's peak through 1000 Å of ice, far inside the linear regime
        eps = 1e-4 / (interaction_constant(self.model.optics.voltage_kV) * np.abs(k).max() * math.sqrt(1000.0))
        self.ice_eps = eps
        return tuple(dataclasses.replace(self.model, ice_field=sgn * eps * k, _cache={}) for sgn in (1.0, -1.0))

    def _particles_pair(self):
        """The model with the particles' continuum replaced by ±ε·k (:func:`cutem.ice.particle_kernel`,
        at P_ref = 1) and no ice fluctuation: its linear response, whose power × P_ref is the
        continuum's expected spectrum (first order, as the ice's)."""
        if self.model.n_slices != 1:
            raise InputError("fit: the particles' continuum is for the projection approximation (one slice)")
        g = self.grid
        k = particle_kernel(g.shape, g.pixel_size_A, self.cfg.simulation.b_factor_A2)
        eps = 1e-4 / (interaction_constant(self.model.optics.voltage_kV) * np.abs(k).max())
        self.particles_eps = eps
        no_ice = np.zeros((1,) + tuple(g.shape))
        return tuple(dataclasses.replace(self.model, particle_field=sgn * eps * k, ice_field=no_ice, _cache={})
                     for sgn in (1.0, -1.0))

    def theta0(self):
        """Every parameter the model knows, at the config's values (floats)."""
        th = detector_theta(self.detector)
        th.update({k: float(v) for k, v in optics_inputs(self.optics).items()})
        s = self.cfg.sample
        th.update({"thickness_center_A": s.thickness_center_A, "thickness_edge_A": s.thickness_edge_A,
                   "ice_thickness_A": s.thickness_center_A, "particle_continuum_power": s.particle_continuum_power,
                   "b_factor_A2": self.cfg.simulation.b_factor_A2, "dqe_falloff": self.detector.dqe_falloff,
                   "defocus_A": 0.5 * (self.optics.defocus_u_A + self.optics.defocus_v_A)})
        return th

    def __call__(self, theta):
        """(S (2D, FFT layout), expected image mean), both taped, for ``theta``."""
        th = dict(self.theta0())
        th.update(expand_ratios(theta))
        if "defocus_A" in theta:
            th["defocus_u_A"] = th["defocus_v_A"] = th["defocus_A"]
        params = {k: as_input(th[k]) for k in tuple(O.PARAM_NAMES) + tuple(D.PARAM_NAMES)}
        if self.thickness_free:
            tc, te = th["thickness_center_A"], th["thickness_edge_A"]
            if "ice_thickness_A" in theta:
                # centre and edge shifted together, keeping the config's difference
                s = self.cfg.sample
                tc = th["ice_thickness_A"]
                te = tc + (s.thickness_edge_A - s.thickness_center_A)
            params.update(thickness_center_A=as_input(tc), thickness_edge_A=as_input(te))
        ny, nx = self.grid.detector_shape
        n = ny * nx
        if self.pair is None:
            det = self.model.render(params, estimator="none")
            img, counts = det.image, det.expected_counts
            S = 0.0
        else:
            dp, dm = (m.render(params, estimator="none") for m in self.pair)
            img, counts = (dp.image + dm.image) * 0.5, (dp.expected_counts + dm.expected_counts) * 0.5
            lin = (dp.image - dm.image) * (0.5 / self.ice_eps)
            S = ops.abs2(ops.fft2(lin - ops.mean(lin))) * (1.0 / n)
        if self.particles_pair is not None:
            pp, pm = (m.render(params, estimator="none") for m in self.particles_pair)
            lin = (pp.image - pm.image) * (0.5 / self.particles_eps)
            S = S + ops.abs2(ops.fft2(lin - ops.mean(lin))) * (th["particle_continuum_power"] * (1.0 / n))
        if "b_factor_A2" in theta and (self.pair is not None or self.particles_pair is not None):
            # the random fields' power ∝ e^{−Bq²/2} (cutem.ice._amplitude); the kernels hold the config's B
            S = S * ops.exp((th["b_factor_A2"] - self.cfg.simulation.b_factor_A2) * (-0.5 * self.q2))
        mean_img = ops.mean(img)
        S = ops.abs2(ops.fft2(img - mean_img)) * (1.0 / n) + S
        if self.detector.quantized:
            m = mtf_on_grid((ny, nx), th)
            noise = (m * m) * (ops.mean(counts) / th["dqe"])
            k = th["dqe_falloff"]
            if isinstance(k, Var) or float(B.to_numpy(k)) > 0:
                # DQE(q) = DQE(0)/(1 + κx²), x = |q|/Nyquist (cutem.detector: the noise shaping)
                noise = noise * (k * self.x2 + 1.0)
            S = S + noise
        r = th.get("readout_noise", 0.0)
        if isinstance(r, Var) or float(B.to_numpy(r)) > 0:
            S = S + r * r
        return S, mean_img


def _specimen_free_params(model, free, start):
    th0 = model.theta0()
    start = dict(start or {})
    det_names = [k for k in free if k not in SPECIMEN_FIT_NAMES]
    out = detector_free_params(model.detector, det_names, start)
    for k in free:
        if k in SPECIMEN_FIT_NAMES:
            v = float(start.get(k, th0[k]))
            lo, hi = _SPECIMEN_BOUNDS[k]
            # defocus: a first L-BFGS step of ~100 Å stays inside one Thon-ring basin
            scale = 100.0 if "defocus" in k else max(100.0, abs(v))
            out.append(FreeParam(k, v, lo, hi, "bounds", scale))
    return out


def fit_mtf_specimen(images, cfg, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "gain"), start=None,
                     objective="log_radial", tilt=0, scene=None, method="lbfgsb", maxiter=300, lr=0.05,
                     mean_weight=1.0, tol=1e-12):
    """Fit detector (and specimen/optics) parameters to micrographs of a known specimen.

    The model is :class:`SpecimenModel`: the **closed-form expected power spectrum** of the
    scene described by ``cfg`` (a cutem TOML or TEM-simulator input file loaded with
    :func:`cutem.config.load_config`), S(q) = |FFT[gain·MTF⊛N̄ − mean]|²/n + MTF²·mean(N̄)/DQE,
    computed on the tape through the pipeline's stages, so the gradients are exact and the
    objective is deterministic (L-BFGS-B converges without any gradient estimator).
    ``images`` are micrographs of that same scene and tilt (the mean periodogram is used).

    Objectives (plus, in both, ``mean_weight`` × the squared standardised log ratio of the
    expected and observed image means, which separates the gain from N̄/DQE):

    * ``"log_radial"`` — count-weighted log ring-averaged spectrum (:func:`log_radial_residuals`),
      as :func:`fit_mtf_blank`;
    * ``"whittle"`` — the 2D Whittle negative log-likelihood (:func:`whittle_nll`).

    Free names: detector fields (a, b, c are fitted as b/a, c/a, see
    :func:`detector_free_params`), ``ice_thickness_A`` (centre and edge shifted together),
    ``thickness_center_A``, ``thickness_edge_A``, ``defocus_A`` (u = v), ``defocus_u_A``,
    ``defocus_v_A``. The ice thickness acts through the ice's absorption (its attenuation
    of the beam, ``Sample.ice_absorption`` > 0): it sets the mean intensity, which the image
    mean (gain·N̄) and the shot-noise level (gain²·N̄/DQE) measure together.

    Errors: ``"log_radial"``: Gauss–Newton on its residuals at the fitted point (exact
    Jacobian); ``"whittle"``: inverse observed information (Hessian of the negative
    log-likelihood, :func:`observed_information_covariance`).
    Returns :class:`MTFFit` (``detector`` with the fitted detector fields; fitted specimen
    and optics values in ``fit.params``).
    """
    if objective not in ("log_radial", "whittle"):
        raise InputError(f"fit_mtf_specimen: objective must be log_radial or whittle, not {objective!r}")
    imgs = np.asarray(B.to_numpy(images), dtype=np.float64)
    if imgs.ndim == 2:
        imgs = imgs[None]
    det = cfg.detector
    if imgs.shape[-2:] != (det.ny, det.nx):
        raise InputError(f"fit_mtf_specimen: micrographs are {imgs.shape[-1]}x{imgs.shape[-2]} but the config's "
                         f"detector is {det.nx}x{det.ny}")
    unknown = [k for k in free if k not in SPECIMEN_FIT_NAMES and k not in DETECTOR_BOUNDS]
    if unknown:
        raise InputError(f"fit_mtf_specimen: cannot fit {unknown[0]!r}; free names are detector fields "
                         f"{sorted(DETECTOR_BOUNDS)} and {list(SPECIMEN_FIT_NAMES)}")
    model = SpecimenModel(cfg, tilt, scene, free)
    nimg, shape = imgs.shape[0], imgs.shape[-2:]
    ps = power_spectrum(imgs)
    mean = float(imgs.mean())
    px = det.pixel_size_A
    bins = RadialBins(shape, px, qmax=np.sqrt(2) * 0.5 / px + 1e-9)
    data = bins.average(ps)
    w = bins.count_np * nimg / 2.0
    w[bins.q <= 0] = 0.0
    th0 = model.theta0()
    th0.update(start or {})
    # shot noise of the image mean: Var = gain·mean/DQE per pixel (counts), at the start gain
    sd_logmean = math.sqrt(max(th0["gain"] * abs(mean) / th0["dqe"], 1e-300) / (nimg * shape[0] * shape[1])) \
        / abs(mean) if mean else 1.0
    use_mean = mean > 0 and mean_weight > 0
    par = Parametrisation(_specimen_free_params(model, free, start), {})
    mean_res = log_mean_residual(mean, mean_weight, sd_logmean) if use_mean else None
    residuals, loss = spectrum_objective(model, ps, data, nimg, bins, w, objective, mean_res)
    res = fit(loss, par, method, maxiter=maxiter, lr=lr, tol=tol)
    vals = dict(res.params)
    errs = fit_errors(objective, loss, residuals, vals, par.names)
    phys = expand_ratios(vals)
    det_names = [k for k in free if k not in SPECIMEN_FIT_NAMES]
    res.params = {k: float(phys[k]) for k in free}
    det_fit = det.replace(**{k: res.params[k] for k in det_names})
    S, _ = model(vals)
    model_prof = bins.average(np.asarray(unwrap(S)))
    with np.errstate(divide="ignore", invalid="ignore"):   # the DC ring of mean-free data is 0
        resid = np.log(model_prof) - np.log(data)
    profile = {"x": bins.q * px, "data": data, "model": model_prof, "residual": resid, "weights": w}
    return MTFFit(det_fit, res, errs, profile)


def specimen_config_with(cfg, params):
    """``cfg`` with fitted values of :func:`fit_mtf_specimen` put back (detector, sample, optics)."""
    det_kw = {k: v for k, v in params.items() if k in DETECTOR_BOUNDS}
    cfg = cfg.replace(detector=cfg.detector.replace(**det_kw))
    s = cfg.sample
    if "ice_thickness_A" in params:
        d = params["ice_thickness_A"] - s.thickness_center_A
        s = s.replace(thickness_center_A=params["ice_thickness_A"], thickness_edge_A=max(0.0, s.thickness_edge_A + d))
    s = s.replace(**{k: params[k] for k in ("thickness_center_A", "thickness_edge_A") if k in params})
    o = cfg.optics
    if "defocus_A" in params:
        o = o.replace(defocus_u_A=params["defocus_A"], defocus_v_A=params["defocus_A"])
    o = o.replace(**{k: params[k] for k in ("defocus_u_A", "defocus_v_A") if k in params})
    return cfg.replace(sample=s, optics=o)
