"""Cramér–Rao bounds of blank-image detector fits: the Whittle Fisher information.

:func:`blank_whittle_fisher` is the Fisher matrix of the model that
:func:`cutem.fitting.mtf.fit_mtf_blank` fits; :func:`blank_crb` the standard deviations
no unbiased estimator can beat.
"""
from __future__ import annotations

import numpy as np

from ..detector import MTF_PARAM_NAMES, _freq2_cycles, _mtf_core
from ..errors import InputError
from .detector_model import detector_theta, normalised_mtf_params, ratio_errors

_DEFAULT_FREE = ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "gain")


def blank_whittle_fisher(shape, pixel_size_A, detector, free=_DEFAULT_FREE, n_images=1, intensity=1.0,
                         include_mean=True):
    """Fisher information of blank micrographs for the detector parameters ``free``.

    Model (the one :func:`~cutem.fitting.mtf.fit_mtf_blank` fits): the periodogram P(q) of a
    blank image is, for q ≠ 0, exponential with mean S(q) = N̄/DQE · MTF(q)² + σ_r²
    (Whittle 1957; real images: P(q) = P(−q), self-conjugate frequencies χ²₁), and the
    image mean is Gaussian with mean μ = gain·N̄ and variance S(0)/n_pixels (MTF(0) = gain).
    For ``n_images`` independent images

        I_ij = (n/2) Σ_{q ≠ 0, full plane} ∂_i log S ∂_j log S + n·n_pixels/S(0) · ∂_i μ ∂_j μ

    (the ½ counts each pair ±q once and gives self-conjugate frequencies the χ²₁ half
    weight; the mean's own variance dependence on θ, one scalar, is left out). The
    derivatives of the MTF are the analytic ones of :func:`cutem.detector._mtf_core`.
    With a, b, c all free they are replaced by r_b = b/a and r_c = c/a (as the fit does:
    the MTF depends on a, b, c only through their ratios).

    Returns ``(names, I)``: the parameter names (``mtf_b_over_a``, ``mtf_c_over_a`` for the
    ratios) and the Fisher matrix in those parameters.
    """
    theta = detector_theta(detector)
    x2 = _freq2_cycles(tuple(shape), np, np.float64, rfft=False)
    prm = tuple(float(theta[k]) for k in MTF_PARAM_NAMES)
    m, d = _mtf_core(x2, prm, derivs=True)
    dm = dict(zip(MTF_PARAM_NAMES, d))
    nbar = theta["dose_e_per_A2"] * float(pixel_size_A) ** 2 * float(intensity)
    dqe, sr = theta["dqe"], theta["readout_noise"]
    S = nbar / dqe * m * m + sr * sr
    dlogS = {k: 2 * nbar / dqe * m * dm[k] / S for k in MTF_PARAM_NAMES}
    dlogS["dose_e_per_A2"] = (m * m / dqe * float(pixel_size_A) ** 2 * float(intensity)) / S
    dlogS["dqe"] = -(nbar / dqe ** 2 * m * m) / S
    dlogS["readout_noise"] = 2 * sr / S
    dmu = {k: 0.0 for k in dlogS}
    dmu["gain"] = nbar
    dmu["dose_e_per_A2"] = theta["gain"] * float(pixel_size_A) ** 2 * float(intensity)
    names = list(free)
    if all(k in names for k in ("mtf_a", "mtf_b", "mtf_c")):
        a, b, c = theta["mtf_a"], theta["mtf_b"], theta["mtf_c"]
        rb, rc = b / a, c / a
        s2 = (1 + rb + rc) ** 2
        # a, b, c = (1, r_b, r_c)/(1 + r_b + r_c): the MTF is invariant to the common scale
        dlogS["mtf_b_over_a"] = (-dlogS["mtf_a"] + (1 + rc) * dlogS["mtf_b"] - rc * dlogS["mtf_c"]) / s2
        dlogS["mtf_c_over_a"] = (-dlogS["mtf_a"] - rb * dlogS["mtf_b"] + (1 + rb) * dlogS["mtf_c"]) / s2
        dmu["mtf_b_over_a"] = dmu["mtf_c_over_a"] = 0.0
        names = ["mtf_b_over_a", "mtf_c_over_a"] + [k for k in names if k not in ("mtf_a", "mtf_b", "mtf_c")]
    unknown = [k for k in names if k not in dlogS]
    if unknown:
        raise InputError(f"blank_whittle_fisher: no derivative for {unknown[0]!r}")
    mask = np.ones(x2.shape)
    mask[0, 0] = 0.0
    J = np.stack([(np.broadcast_to(dlogS[k], x2.shape) * mask).ravel() for k in names], axis=1)
    info = 0.5 * float(n_images) * (J.T @ J)
    if include_mean:
        g = np.array([dmu[k] for k in names])
        s0 = nbar / dqe * float(m[0, 0]) ** 2 + sr * sr
        info = info + float(n_images) * x2.size / s0 * np.outer(g, g)
    return names, info


def blank_crb(shape, pixel_size_A, detector, free=_DEFAULT_FREE, n_images=1, relative=True, **kw):
    """Cramér–Rao standard deviations from :func:`blank_whittle_fisher`: sqrt(diag I⁻¹), with
    the normalised a_n, b_n, c_n by the delta method from (r_b, r_c); relative to the true
    values when ``relative``. Returns {name: σ} (also the raw names of the fit)."""
    names, info = blank_whittle_fisher(shape, pixel_size_A, detector, free, n_images, **kw)
    cov = np.linalg.inv(info)
    theta = detector_theta(detector)
    vals = dict(theta)
    if "mtf_b_over_a" in names:
        vals["mtf_b_over_a"] = theta["mtf_b"] / theta["mtf_a"]
        vals["mtf_c_over_a"] = theta["mtf_c"] / theta["mtf_a"]
    out = {k: float(np.sqrt(cov[i, i])) for i, k in enumerate(names)}
    out.update({k: float(v) for k, v in ratio_errors(vals, cov, names).items()})
    if relative:
        nn = normalised_mtf_params(theta)
        ref = dict(vals)
        ref.update(nn)
        if "mtf_b_over_a" in names:     # the ratio fit's a, b, c are the normalised ones
            ref.update({"mtf_a": nn["a_n"], "mtf_b": nn["b_n"], "mtf_c": nn["c_n"]})
        out = {k: v / abs(ref[k]) for k, v in out.items()}
    return out
