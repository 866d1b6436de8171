"""The detector as a fit model: its fields as free parameters, and its blank-image spectrum.

:func:`detector_free_params` turns detector fields into :class:`adjoints.fit.FreeParam`
(a, b, c as the ratios b/a, c/a, scale parameters log-transformed); :func:`expand_ratios`
maps the ratios back on the tape. :func:`blank_expected_ps` and :func:`blank_mean` are the
expected power spectrum and mean of blank micrographs; :func:`fit_errors` the 1σ errors of
a detector fit from its covariance, with the normalised a, b, c by the delta method.
"""
from __future__ import annotations

import numpy as np

import adjoints.backend as B
from adjoints import Var, ops
from adjoints.fit import FreeParam, gauss_newton_covariance, observed_information_covariance

from ..detector import MTF, MTF_PARAM_NAMES, PARAM_NAMES
from ..errors import InputError
from ..params import bounds

#: physical bounds of the detector parameters (cutem.params.Detector's ranges)
#: the declared ranges of the detector fields (:func:`cutem.params.bounds`); a, b, c keep a
#: small positive floor in a fit, since a + b + c divides the MTF
DETECTOR_BOUNDS = {n: bounds(f"detector.{n}") for n in ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p",
                                                       "mtf_q", "gain", "dqe", "readout_noise", "dose_e_per_A2")}
DETECTOR_BOUNDS.update({n: (max(DETECTOR_BOUNDS[n][0], 1e-6), DETECTOR_BOUNDS[n][1]) for n in ("mtf_a", "mtf_b", "mtf_c")})
DETECTOR_SCALES = {"mtf_a": 1.0, "mtf_b": 1.0, "mtf_c": 1.0, "mtf_alpha": 10.0, "mtf_beta": 10.0,
                   "mtf_p": 1.0, "mtf_q": 1.0, "gain": 1.0, "dqe": 1.0, "readout_noise": 1.0,
                   "dose_e_per_A2": 1.0}
_LOG_TRANSFORMED = ("mtf_alpha", "mtf_beta", "mtf_p", "mtf_q", "gain", "dose_e_per_A2")


def detector_theta(detector):
    """Every differentiable detector field of ``detector`` as floats."""
    return {k: float(getattr(detector, k)) for k in PARAM_NAMES}


def as_input(v):
    """A Var as it is, anything else as a float64 0-d array (a stage input)."""
    return v if isinstance(v, Var) else np.asarray(float(B.to_numpy(v)), dtype=np.float64)


def detector_free_params(detector, names, start=None):
    """:class:`FreeParam` list for detector fields ``names`` (start: dict of values, else the detector's).

    The MTF depends on a, b, c only through a/(a+b+c), b/(a+b+c), c/(a+b+c), so with all
    three free the loss is exactly flat along (a, b, c) → s·(a, b, c) and the problem is
    singular: a, b, c are then replaced by r_b = b/a and r_c = c/a (log-transformed, so
    positive) and :func:`expand_ratios` maps them back to a normalised (a, b, c) with
    a + b + c = 1. Scale parameters (α, β, p, q, gain, dose) are log-transformed
    (θ = θ₀·e^u): positive, and equally conditioned at every magnitude.
    """
    start = dict(start or {})
    names = list(names)
    out = []
    if all(k in names for k in ("mtf_a", "mtf_b", "mtf_c")):
        a, b, c = (max(float(start.get(k, getattr(detector, k))), 1e-6) for k in ("mtf_a", "mtf_b", "mtf_c"))
        out += [FreeParam("mtf_b_over_a", b / a, 0.0, None, "log", b / a),
                FreeParam("mtf_c_over_a", c / a, 0.0, None, "log", c / a)]
        names = [n for n in names if n not in ("mtf_a", "mtf_b", "mtf_c")]
    for n in names:
        if n not in DETECTOR_BOUNDS:
            raise InputError(f"unknown detector parameter {n!r}; free ones can be {sorted(DETECTOR_BOUNDS)}")
        v = float(start.get(n, getattr(detector, n)))
        lo, hi = DETECTOR_BOUNDS[n]
        v = min(max(v, lo), hi)
        if n in _LOG_TRANSFORMED:
            v = max(v, 1e-6)
            out.append(FreeParam(n, v, lo, hi, "log", v))
        else:
            out.append(FreeParam(n, v, lo, hi, "bounds", DETECTOR_SCALES[n]))
    return out


def expand_ratios(theta):
    """Replace r_b = b/a, r_c = c/a by the normalised a, b, c (on the tape)."""
    if "mtf_b_over_a" not in theta:
        return theta
    th = dict(theta)
    rb, rc = th.pop("mtf_b_over_a"), th.pop("mtf_c_over_a")
    s = rb + rc + 1.0
    th["mtf_a"], th["mtf_b"], th["mtf_c"] = 1.0 / s, rb / s, rc / s
    return th


def ratio_errors(vals, cov, names):
    """Delta-method errors of the normalised a, b, c from the covariance of (r_b, r_c)."""
    if "mtf_b_over_a" not in names:
        return {}
    i, j = names.index("mtf_b_over_a"), names.index("mtf_c_over_a")
    rb, rc = vals["mtf_b_over_a"], vals["mtf_c_over_a"]
    s = 1 + rb + rc
    G = np.array([[-1.0, -1.0], [1 + rc, -rb], [-rc, 1 + rb]]) / s ** 2
    C = cov[np.ix_([i, j], [i, j])]
    e = np.sqrt(np.maximum(np.diag(G @ C @ G.T), 0))
    return {"a_n": e[0], "b_n": e[1], "c_n": e[2], "mtf_a": e[0], "mtf_b": e[1], "mtf_c": e[2]}


def fit_errors(objective, loss, residuals, vals, names):
    """1σ errors at the optimum of a detector fit: the inverse Hessian of the likelihood
    (``objective == "whittle"``), else Gauss–Newton on the residuals; the normalised a, b, c
    added from the ratios. A report: a failure here gives no errors, never a failed fit."""
    try:
        if objective == "whittle":
            _, cov = observed_information_covariance(lambda th: loss(th, 0), vals, names)
        else:
            _, cov, _ = gauss_newton_covariance(residuals, vals, names)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return {}
    errs = {k: float(np.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(names)}
    errs.update({k: float(v) for k, v in ratio_errors(vals, cov, names).items()})
    return errs


def normalised_mtf_params(p):
    """(a, b, c)/(a + b + c): what the MTF actually depends on (besides α, β, p, q, gain)."""
    s = p["mtf_a"] + p["mtf_b"] + p["mtf_c"]
    return {"a_n": p["mtf_a"] / s, "b_n": p["mtf_b"] / s, "c_n": p["mtf_c"] / s}


def mtf_on_grid(shape, theta):
    """The detector's MTF (× gain) on the FFT grid as a taped value.

    Uses :class:`cutem.detector.MTF` on a unit impulse: the blurred impulse is the PSF
    IFFT[MTF], and its FFT is MTF(q) on the grid. (The MTF stage only blurs images; this
    is the smallest way to get the MTF itself on the tape.)
    """
    delta = np.zeros(shape, dtype=np.float64)
    delta[0, 0] = 1.0
    psf = MTF()(delta, *[as_input(theta[k]) for k in MTF_PARAM_NAMES])
    return ops.real(ops.fft2(psf))


def blank_expected_ps(shape, pixel_size_A, theta, intensity=1.0):
    """Expected power spectrum of blank micrographs (taped), FFT layout.

    For a uniform intensity I, N̄ = dose·pixel²·I; the counts are white with variance
    N̄/DQE (Poisson then the Wald DQE model), blurred by the MTF (which holds the gain),
    plus white readout noise σ²: S(q) = N̄/DQE · MTF(q)² + σ² (the convention of
    :func:`cutem.spectra.power_spectrum`). ``theta`` holds every detector parameter
    (Vars where free).
    """
    m = mtf_on_grid(shape, theta)
    nbar = theta["dose_e_per_A2"] * (float(pixel_size_A) ** 2 * float(intensity))
    s = (m * m) * (nbar / theta["dqe"])
    r = theta.get("readout_noise", 0.0)
    if isinstance(r, Var) or float(B.to_numpy(r)) > 0:
        s = s + r * r
    return s


def blank_mean(pixel_size_A, theta, intensity=1.0):
    """Expected mean of a blank micrograph: gain · N̄ (taped)."""
    return theta["gain"] * theta["dose_e_per_A2"] * (float(pixel_size_A) ** 2 * float(intensity))
