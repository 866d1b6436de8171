"""Objectives on the tape: functions of Vars that return a scalar Var (or a residual vector).

:func:`pixel_loss`, :func:`focal_frequency_loss` (Jiang, Dai, Wu, Loy, "Focal Frequency
Loss for Image Reconstruction and Synthesis", ICCV 2021, Eq. 2–3), :func:`log_radial_ps_loss`
and its residuals, :func:`ps2d_loss`, :func:`correlation_loss` (the CTFFIND score),
:func:`whittle_nll`, and :func:`spectrum_objective`, which pairs the residuals and the loss
of a power-spectrum fit for the drivers of :mod:`adjoints.fit`.
"""
from __future__ import annotations

import math

import numpy as np

import adjoints.backend as B
from adjoints import Var, ops, unwrap

from ..spectra import radial_average


def pixel_loss(sim, ref):
    """Mean squared pixel difference of paired images (sim on the tape, ref data)."""
    d = sim - ref
    return ops.mean(d * d)


def focal_frequency_loss(sim, ref, alpha=1.0):
    """Focal frequency loss (Jiang et al., ICCV 2021, Eq. 2–3).

    With F = FFT(x)/sqrt(N) of simulated and reference images,
    L = mean_{u,v} w(u,v) |F_s − F_r|², w = |F_s − F_r|^α / max |F_s − F_r|^α, where the
    weight matrix is computed from the current values and treated as a constant (the
    paper's "no gradient" spectrum weight). Averages over any leading (batch) axes.
    """
    fs = ops.fft2(sim, norm="ortho")
    fr = B.fft2(unwrap(ref), norm="ortho") if not isinstance(ref, Var) else ops.fft2(ref, norm="ortho")
    d = fs - fr
    d2 = ops.abs2(d)
    xp = B.array_module(unwrap(d2))
    w = xp.sqrt(unwrap(d2)) ** alpha
    mx = w.reshape(w.shape[:-2] + (-1,)).max(axis=-1)[..., None, None]
    w = w / xp.maximum(mx, 1e-30)
    return ops.mean(d2 * w)


def log_radial_ps_loss(model_ps, data_profile, bins, weights=None, floor=0.0):
    """Mean (weighted) squared difference of log ring-averaged spectra.

    ``model_ps`` is a 2D model spectrum (Var, FFT layout), ``data_profile`` the data's
    ring means for the same :class:`~cutem.spectra.RadialBins`; ``weights`` (per bin,
    zero to exclude e.g. the DC bin) default to all bins but DC.
    """
    res = log_radial_residuals(model_ps, data_profile, bins, weights, floor)
    return ops.mean(res * res)


def log_radial_residuals(model_ps, data_profile, bins, weights=None, floor=0.0):
    """Residual vector sqrt(w)·(log R[model] − log data) (for Gauss–Newton)."""
    xp = B.array_module(unwrap(model_ps))
    prof = radial_average(model_ps, bins)
    if floor:
        prof = prof + floor
    data = xp.asarray(data_profile)
    if weights is None:
        weights = np.ones(bins.nbins)
        weights[bins.q <= 0] = 0.0
    w = np.asarray(weights, dtype=np.float64)
    sel = np.nonzero(w > 0)[0]
    sel_x = xp.asarray(sel)
    r = ops.log(prof[sel_x]) - xp.log(data[sel_x])
    return r * xp.asarray(np.sqrt(w[sel]))


def ps2d_loss(model_ps, data_ps, mask=None, log=True):
    """Mean squared difference of 2D spectra (log or linear) over ``mask``."""
    xp = B.array_module(unwrap(model_ps))
    if log:
        d = ops.log(model_ps) - xp.log(xp.asarray(data_ps))
    else:
        d = model_ps - xp.asarray(data_ps)
    if mask is not None:
        m = xp.asarray(mask, dtype=unwrap(model_ps).dtype)
        return ops.sum(d * d * m) / float(B.to_numpy(m.sum()))
    return ops.mean(d * d)


def correlation_loss(model, data, mask=None):
    """1 − Pearson correlation of model and data over ``mask`` (scale- and offset-free).

    The CTFFIND score (Rohou & Grigorieff, J. Struct. Biol. 192:216, 2015, Eq. 8) is
    this correlation between a background-subtracted spectrum and CTF².
    """
    xp = B.array_module(unwrap(model))
    if mask is not None:
        idx = xp.asarray(np.nonzero(B.to_numpy(mask).ravel())[0])
        m = ops.reshape(model, (-1,))[idx]
        d = xp.asarray(data).ravel()[idx]
    else:
        m = ops.reshape(model, (-1,))
        d = xp.asarray(data).ravel()
    d = d - d.mean()
    d = d / xp.sqrt((d * d).sum())
    mc = m - ops.mean(m)
    num = ops.sum(mc * d)
    den = ops.sqrt(ops.sum(mc * mc))
    return 1.0 - num / den


def whittle_nll(model_ps, data_ps, n_images=1, mask=None):
    """Whittle negative log-likelihood of averaged periodograms (taped), full FFT plane.

    Each periodogram value P(q) of a stationary (or, for a fixed specimen, deterministic
    plus white-noise) image is, for q ≠ 0 away from the self-conjugate frequencies,
    exponentially distributed with mean S(q) (Whittle, "Curve and periodogram smoothing",
    JRSS B 19:38, 1957), and P(q) = P(−q). For the mean of ``n_images`` periodograms
    −log L = n Σ_{half plane} [log S + P/S] + const; summing the full plane with a factor ½
    counts each pair (q, −q) once and gives the self-conjugate frequencies (DC excluded
    by ``mask``, Nyquist row/column) the half weight of a χ²₁ variable.
    """
    xp = B.array_module(unwrap(model_ps))
    P = xp.asarray(data_ps)
    if mask is None:
        mask = np.ones(P.shape)
        mask[0, 0] = 0.0
    m = xp.asarray(mask, dtype=unwrap(model_ps).dtype) * (0.5 * float(n_images))
    return ops.sum((ops.log(model_ps) + P / model_ps) * m)


def log_mean_residual(mean, weight, sd_logmean):
    """Residual of the log image mean against the observed ``mean`` (σ = ``sd_logmean``)."""
    def r(mu):
        return (ops.log(mu) - math.log(mean)) * (math.sqrt(weight) / sd_logmean)
    return r


def spectrum_objective(model, ps, data, nimg, bins, w, objective, mean_residual=None):
    """(residuals, loss) of a power-spectrum fit.

    ``model(theta)`` → (expected 2D power spectrum S, expected image mean) on the tape; ``ps``
    the observed mean periodogram of ``nimg`` images and ``data`` its ring average. ``"log_radial"``:
    loss = Σ residuals² with the weighted log ring residuals (and the mean's); ``"whittle"``:
    the 2D Whittle negative log-likelihood n Σ_q [log S + P/S]/2 (DC left out) plus half the
    squared mean residual, minus a constant that makes it O(1) per frequency at the optimum.
    """
    def residuals(theta):
        S, mu = model(theta)
        r = log_radial_residuals(S, data, bins, w)
        if mean_residual is not None:
            r = ops.concat([r, ops.reshape(mean_residual(mu), (1,))])
        return r

    if objective == "log_radial":
        def loss(theta, _step):
            r = residuals(theta)
            return ops.sum(r * r)
        return residuals, loss
    mask = np.ones(ps.shape)
    mask[0, 0] = 0.0
    const = 0.5 * nimg * float(np.sum(mask * (np.log(np.where(mask > 0, np.maximum(ps, 1e-300), 1.0)) + 1.0)))

    def loss(theta, _step):
        S, mu = model(theta)
        L = whittle_nll(S, ps, nimg, mask) - const
        if mean_residual is not None:
            rm = mean_residual(mu)
            L = L + rm * rm * 0.5
        return L
    return residuals, loss
