"""Detector MTF (and gain, dose, DQE) fits: to blank micrographs, to a measured MTF curve,
and through a simulation objective.

:func:`fit_mtf_blank` fits the expected spectrum of blank micrographs
(:func:`~cutem.fitting.detector_model.blank_expected_ps`), :func:`fit_mtf_curve` the
TEM-simulator MTF form to a measured curve, :func:`fit_mtf_simulated` any
:class:`~cutem.fitting.objectives.SimulationObjective`. All return :class:`MTFFit`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import adjoints.backend as B
from adjoints import ops, unwrap
from adjoints.fit import FitResult, Parametrisation, fit

from ..detector import MTF, MTF_PARAM_NAMES
from ..errors import InputError
from ..params import Detector
from ..spectra import RadialBins, power_spectrum
from .detector_model import (as_input, blank_expected_ps, blank_mean, detector_free_params, detector_theta,
                             expand_ratios, fit_errors)
from .losses import log_mean_residual, spectrum_objective


@dataclass
class MTFFit:
    detector: object             #: cutem.params.Detector with the fitted values
    fit: FitResult
    errors: dict                 #: 1-σ standard errors (Gauss–Newton), incl. a_n, b_n, c_n
    profile: dict                #: x (cycles/pixel), data, model, residual


def fit_mtf_blank(images=None, detector=None, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "gain"),
                  start=None, ps=None, mean=None, intensity=1.0, method="lbfgsb", maxiter=200, lr=0.1,
                  qmax_cycles=None, mean_weight=1.0, weighting="count", n_images=1, tol=1e-12,
                  objective="log_radial"):
    """Fit detector parameters to blank micrographs (or their power spectrum).

    Objective: the log radially averaged power-spectrum loss between the data and the
    expected spectrum :func:`~cutem.fitting.detector_model.blank_expected_ps` (rings of one
    Fourier pixel, DC excluded, out to the corner unless ``qmax_cycles``), plus
    ``mean_weight`` × the squared log ratio of the expected and observed image means (this
    pins the gain independently of N̄/DQE). Deterministic, so L-BFGS-B converges in a few
    dozen iterations; errors from Gauss–Newton with the exact Jacobian.

    Parameters
    ----------
    images : (n, ny, nx) or (ny, nx) blank micrographs; or give ``ps`` (FFT layout,
        as :func:`cutem.spectra.power_spectrum` makes it) and ``mean``.
    detector : :class:`cutem.params.Detector` with the fixed values (pixel size, dose,
        DQE, ...) and, for parameters not in ``start``, the start values.
    free : detector fields to fit.
    objective : ``"log_radial"`` (above) or ``"whittle"``: the 2D Whittle negative
        log-likelihood of the mean periodogram (:func:`~cutem.fitting.losses.whittle_nll`,
        every frequency to the corner, ``qmax_cycles`` ignored) plus the image mean's
        Gaussian term; its errors are the inverse observed information
        (:func:`adjoints.fit.observed_information_covariance`). The Cramér–Rao bound of
        this model is :func:`cutem.fitting.crb.blank_crb`.
    """
    if objective not in ("log_radial", "whittle"):
        raise InputError(f"fit_mtf_blank: objective must be log_radial or whittle, not {objective!r}")

    if detector is None:
        detector = Detector()
    imgs = None
    if images is not None:
        imgs = np.asarray(B.to_numpy(images), dtype=np.float64)
        if imgs.ndim == 2:
            imgs = imgs[None]
        ps = power_spectrum(imgs)
        mean = float(imgs.mean())
    if ps is None:
        raise InputError("fit_mtf_blank: give images or a power spectrum")
    ps = np.asarray(ps, dtype=np.float64)
    shape = ps.shape
    px = detector.pixel_size_A
    qmax = None if qmax_cycles is None else qmax_cycles / px
    bins = RadialBins(shape, px, qmax=qmax if qmax is not None else np.sqrt(2) * 0.5 / px + 1e-9)
    data = bins.average(ps)
    # weights ∝ samples per ring: the log of a mean of n periodogram values (each
    # exponentially distributed about S) has variance ≈ 1/n, so this is the efficient
    # (approximately maximum-likelihood, Whittle) weighting
    # (the loss is then ≈ χ² with one degree of freedom per ring: O(#rings) at the optimum,
    # which also keeps L-BFGS-B's relative stopping rule meaningful)
    nimg = imgs.shape[0] if imgs is not None else int(n_images)
    # (q and −q carry the same periodogram value, hence the ½)
    w = bins.count_np * nimg / 2.0 if weighting == "count" else np.ones(bins.nbins)
    w[bins.q <= 0] = 0.0
    # the image mean: Var(mean) = S(0)/n_pixels for correlated noise; S(0) from the first ring
    sd_logmean = math.sqrt(max(float(data[1]), 1e-300) / (nimg * shape[0] * shape[1])) / mean if mean else 1.0
    theta0 = detector_theta(detector)
    fixed = {k: v for k, v in theta0.items() if k not in free}
    par = Parametrisation(detector_free_params(detector, free, start), fixed)
    use_mean = mean is not None and mean > 0 and mean_weight > 0

    def model(theta):
        theta = expand_ratios(theta)
        return blank_expected_ps(shape, px, theta, intensity), blank_mean(px, theta, intensity)

    mean_res = log_mean_residual(mean, mean_weight, sd_logmean) if use_mean else None
    residuals, loss = spectrum_objective(model, ps, data, nimg, bins, w, objective, mean_res)
    res = fit(loss, par, method, maxiter=maxiter, lr=lr, tol=tol)
    vals = dict(fixed)
    vals.update(res.params)
    errs = fit_errors(objective, loss, residuals, vals, par.names)
    phys = expand_ratios(vals)
    res.params = {k: float(phys[k]) for k in free}
    det = detector.replace(**res.params)
    model = bins.average(np.asarray(unwrap(blank_expected_ps(shape, px, phys, intensity))))
    with np.errstate(divide="ignore", invalid="ignore"):   # the DC ring of mean-free data is 0
        resid = np.log(model) - np.log(data)
    profile = {"x": bins.q * px, "data": data, "model": model, "residual": resid, "weights": w}
    return MTFFit(det, res, errs, profile)


def fit_mtf_curve(freq_cycles, mtf_values, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p", "mtf_q"),
                  start=None, detector=None, weights=None, maxiter=500, n_starts=8, seed=0):
    """Fit the TEM-simulator MTF form to a measured curve (x in cycles/pixel, MTF(0) = 1).

    Least squares on the curve values (gain fixed at 1 since measured MTFs are
    normalised) with L-BFGS-B from ``n_starts`` starts (the first ``start``/the
    detector's values, the rest random in the bounds); the best fit is kept. The model
    is :class:`cutem.detector.MTF` evaluated on a one-row grid finely sampling
    0..0.5 cycles/pixel and interpolated linearly (exact at the grid points), so its
    gradient is the stage's exact one.
    """
    x = np.asarray(freq_cycles, dtype=np.float64)
    y = np.asarray(mtf_values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 3:
        raise InputError("fit_mtf_curve: frequency and MTF must be 1D arrays of the same length (>= 3)")
    if np.any(x < 0) or np.any(x > 0.5 + 1e-9):
        raise InputError("fit_mtf_curve: frequencies must be in cycles per pixel, 0..0.5")
    detector = detector or Detector(mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, gain=1.0)
    n = 2048
    # linear interpolation matrix from the line (0..0.5 cycles/pixel) to the data frequencies
    pos = x * n
    i0 = np.clip(np.floor(pos).astype(int), 0, n // 2 - 1)
    f = pos - i0
    Wi = np.zeros((len(x), n // 2 + 1))
    Wi[np.arange(len(x)), i0] = 1 - f
    Wi[np.arange(len(x)), i0 + 1] = f
    wts = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = np.sqrt(wts / wts.sum())
    delta = np.zeros((1, n))
    delta[0, 0] = 1.0

    def model_line(theta):
        theta = expand_ratios(theta)
        psf = MTF()(delta, *[as_input(theta[k]) for k in MTF_PARAM_NAMES])
        return ops.real(ops.fft2(psf))[0, : n // 2 + 1]

    def residuals(theta):
        m = ops.matmul(Wi, ops.reshape(model_line(theta), (n // 2 + 1, 1)))
        return (ops.reshape(m, (len(x),)) - y) * sw

    def loss(theta, _s):
        r = residuals(theta)
        return ops.sum(r * r)

    theta0 = detector_theta(detector)
    theta0["gain"] = 1.0
    fixed = {k: v for k, v in theta0.items() if k not in free}
    rng = np.random.default_rng(seed)
    best = None
    for k in range(max(1, n_starts)):
        if k == 0:
            st = start
        else:
            st = {"mtf_a": rng.uniform(0.05, 1), "mtf_b": rng.uniform(0.05, 1), "mtf_c": rng.uniform(0, 0.3),
                  "mtf_alpha": 10 ** rng.uniform(-0.5, 2.5), "mtf_beta": 10 ** rng.uniform(-0.5, 3),
                  "mtf_p": rng.uniform(0.3, 4), "mtf_q": rng.uniform(0.3, 4)}
        par = Parametrisation(detector_free_params(detector.replace(gain=1.0), free, st), fixed)
        res = fit(loss, par, "lbfgsb", maxiter=maxiter, tol=1e-14)
        if best is None or res.loss < best[0].loss:
            best = (res, par)
    res, par = best
    vals = dict(fixed)
    vals.update(res.params)
    errs = fit_errors("least_squares", loss, residuals, vals, par.names)
    model = Wi @ np.asarray(unwrap(model_line(vals)))
    phys = expand_ratios(vals)
    res.params = {k: float(phys[k]) for k in free}
    det = detector.replace(gain=1.0, **res.params)
    profile = {"x": x, "data": y, "model": model, "residual": model - y}
    return MTFFit(det, res, errs, profile)


def fit_mtf_simulated(objective, detector, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "gain"),
                      start=None, method="adam", maxiter=100, lr=0.05):
    """Fit detector parameters with a :class:`~cutem.fitting.objectives.SimulationObjective`
    (stochastic or CRN).

    Uncertainties come from the expected-spectrum model at the fitted values
    (:func:`fit_mtf_blank`'s Gauss–Newton), and the profile shows that model against the
    references' spectrum.
    """
    theta0 = detector_theta(detector)
    fixed = {k: v for k, v in theta0.items() if k not in free}
    par = Parametrisation(detector_free_params(detector, free, start), fixed)
    res = fit(objective, par, method, maxiter=maxiter, lr=lr)
    if objective.losses:          # report the loss, not the score surrogate's value
        res.loss = objective.losses[-1]
    vals = dict(fixed)
    vals.update(res.params)
    phys = expand_ratios(vals)
    res.params = {k: float(phys[k]) for k in free}
    det = detector.replace(**res.params)
    # errors and profile from the expected-spectrum model at the fitted point (no refit)
    ref = fit_mtf_blank(objective.refs, det, free=free, maxiter=0)
    return MTFFit(det, res, ref.errors, ref.profile)
