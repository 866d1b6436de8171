"""Detector: dose, shot noise, DQE, MTF, gain and readout noise, with two gradient estimators.

Public API (names are stable; other modules depend on them)
-----------------------------------------------------------
``PARAM_NAMES``
    The differentiable detector inputs, named as the fields of :class:`cutem.params.Detector`::

        ("dose_e_per_A2", "mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta",
         "mtf_p", "mtf_q", "gain", "dqe", "readout_noise")

``MTF_PARAM_NAMES`` = ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p", "mtf_q", "gain")

``detector_inputs(detector, xp=np, dtype=np.float64) -> dict``
    0-d arrays of :data:`PARAM_NAMES` from a :class:`cutem.params.Detector`.

``mtf(shape, params, xp=np, dtype=np.float64, rfft=False) -> array``
    The TEM-simulator MTF (gain included) on the FFT grid of ``shape`` (DC at [0, 0]);
    ``params`` is a Detector or a dict with the :data:`MTF_PARAM_NAMES` keys.

``detect(intensity, detector, rng=None, estimator="pathwise", params=None, draws=None, noise_free=False, dqe_curve=None, xp=None)``
    The whole detector on the tape (see the function). Returns a :class:`Detection`
    ``(image, noise_free, log_prob, expected_counts, draws)``.

``score_surrogate(loss, log_prob, baseline=0.0)``
    The surrogate whose tape gradient is the score-function estimate (see below).

Stages (``@register``, with ``cases``), in the order ``detect`` chains them:

``ExpectedCounts(pixel_size_A)``: ``(intensity, dose) -> N̄ = dose · pixel_size_A² · I``.
``PathwiseNoise(eps, noise_filter=None)``: ``(N̄, dqe) -> X`` (pathwise estimator).
``PoissonLogLikelihood(counts)``: ``(N̄) -> Σ N log N̄ − N̄`` (score estimator).
``WaldLogLikelihood(x, counts)``: ``(dqe) -> Σ log p_Wald(X | N, dqe)`` (score estimator).
``MTF()``: ``(counts, a, b, c, alpha, beta, p, q, gain) -> IFFT[MTF · FFT(counts)]``.
``ReadoutNoise(eps)``: ``(image, sigma) -> image + sigma · eps``.

Physics (PHYSICS.md; TEM-simulator: Rullgård et al., J. Microsc. 243:234, 2011, and its
source ``detector_apply_mtf``/``detector_apply_quantization``)
-------------------------------------------------------------------------------
- Expected electrons per pixel N̄ = dose · pixel_area · I (I = 1 in vacuum, so vacuum gives
  exactly dose × pixel area).
- Shot noise N ~ Poisson(N̄). DQE (TEM-simulator): X ~ Wald(mean N, variance (1/DQE − 1) N),
  so Var X = N̄/DQE and the DQE at zero frequency is ``dqe``.
- Frequency-dependent DQE by noise shaping (as InSilicoTEM, Vulović et al., J. Struct.
  Biol. 183:19, 2013): the noise X − N̄ is filtered by 1/sqrt(r(q)) with
  r(q) = DQE_curve(q)/DQE_curve(0), so the noise power after the MTF is
  N̄ · MTF(q)²/DQE(q) with DQE(q) = dqe · r(q) (``dqe`` stays DQE(0), the curve gives the
  shape; pathwise estimator only).
- A DQE falling as DQE(0)/(1 + κx²), x = |q|/q_Nyquist (``dqe_falloff`` κ; x reaches √2 in the
  corners), by the same shaping, amplitude sqrt(1 + κx²), in every estimator (with ``score``
  on the draws, so not on a tape): the noise power after the MTF is N̄ · MTF(q)² (1 + κx²)/dqe.
  A counting camera's noise spectrum is flatter than its MTF² (the counted events' positions
  are sharper than the blur of the signal; McMullan et al., Ultramicroscopy 147:156, 2014,
  K2 Summit at 300 kV: DQE 0.80 at 0, 0.23 at Nyquist, where its MTF is 0.39, so its noise power
  there is 0.52 of that at 0 against an MTF² of 0.15: ../shared/data/real/detector_mtf), which
  the real β-gal spectra's high-q background shows (``validation/twin_betagal.py``).
- MTF, x = |q| in cycles per pixel, y₁ = 1 + αx², y₂ = 1 + βx²:
  MTF = gain/(a+b+c) · [c + a T(p, y₁) + b T(q, y₂)], T(p, y) = 2ᵖ y⁻ᵖ / (2 + (2ᵖ − 2) y⁻ᵖ).
  It blurs the *counts* (applied after the noise draw) as a Fourier multiply. Reference
  (0.7, 0.2, 0.1, 10, 40), p = q = 1: MTF/gain = 0.3182 at Nyquist, 0.5879 at Nyquist/2.
- Output = the gain-scaled blurred counts + Gaussian readout noise (σ counts RMS; not in
  TEM-simulator).

Gradient estimators for the random stages
-----------------------------------------
*Pathwise* (``estimator="pathwise"``): the counts are reparametrised in their Gaussian
limit with a fixed standard-normal draw ε held by the stage,
X = N̄ + sqrt(N̄/dqe) · ε (Poisson then Wald: mean N̄, variance N̄/dqe; with dqe = 1 this is
N ≈ N̄ + sqrt(N̄) ε), so dX/dN̄ = 1 + ε/(2 sqrt(N̄ dqe)) and dX/ddqe = −sqrt(N̄) ε/(2 dqe^{3/2}).
The forward value is then continuous (not integer). Low variance; exact in the first two
moments, so exact in mean for any loss quadratic in the counts.

*Score function* (``estimator="score"``, what the paper's code used): the forward draws
true integer Poisson counts N (and Wald X when dqe < 1); these values carry no pathwise
gradient. ∇E[L] = E[(L − b) ∇log p(N, X)] + E[∇L|draw fixed], with
∂log p/∂N̄ = N/N̄ − 1 (Poisson) and the Wald score for dqe. On the tape this is a
*surrogate*: ``detect`` returns ``log_prob`` (a Var: Σ log p of the draw, constants
dropped), and the caller, after computing its loss L, differentiates
``score_surrogate(L, log_prob, b) = L + (L.value − b) · log_prob``, where the factor
(L − b) is a constant (no gradient flows through it). The gradient of the surrogate is
(L − b) · ∇log p (the score term for dose, intensity, dqe and everything upstream) plus the
ordinary pathwise gradient of L for what acts after the draw (MTF, gain, readout noise).
A good baseline b is the mean loss of other draws (leave-one-out). A plain
``tape.gradient(L, ...)`` in score mode gives only the post-draw part (zero for dose/I).

Random streams are explicit: ``rng`` is a seeded generator (or an int seed); the draws used
are returned (``Detection.draws``) and can be passed back (``draws=``) to hold them fixed.
"""
from __future__ import annotations

import csv
import math
from typing import NamedTuple

import numpy as np

import adjoints.backend as B
from adjoints import Stage, Var, active_tape, register, unwrap

PARAM_NAMES = ("dose_e_per_A2", "mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p",
               "mtf_q", "gain", "dqe", "readout_noise")
MTF_PARAM_NAMES = ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p", "mtf_q", "gain")
_LN2 = math.log(2.0)


def detector_inputs(detector, xp=np, dtype=np.float64) -> dict:
    """The differentiable detector parameters of ``detector`` as 0-d arrays."""
    return {k: xp.asarray(float(getattr(detector, k)), dtype=dtype) for k in PARAM_NAMES}


def _rdt(x):
    return B.real_dtype(x.dtype) if hasattr(x, "dtype") else np.dtype(np.float64)


# ---------------------------------------------------------------------------- MTF core
def _freq2_cycles(shape, xp, dtype, rfft=True):
    """x² (cycles/pixel)² on the (half) FFT grid."""
    qy, qx = B.freq_grid(shape, 1.0, xp, dtype, rfft=rfft)
    return qx * qx + qy * qy


def _t_term(p, y, derivs):
    """T(p, y) = 2ᵖ u / (2 + (2ᵖ − 2) u), u = y⁻ᵖ; with dT/dy and dT/dp."""
    xp = B.array_module(y)
    lny = xp.log(y)
    u = xp.exp(-p * lny)
    a = 2.0 ** p
    den = 2 + (a - 2) * u
    t = a * u / den
    if not derivs:
        return t, None, None
    dt_dy = -2 * a * p * u / (y * den * den)
    dt_dp = 2 * a * u / (den * den) * ((1 - u) * _LN2 - lny)
    return t, dt_dy, dt_dp


def _mtf_core(x2, prm, derivs=False):
    """MTF (gain included) on the grid x² and, optionally, its parameter derivatives.

    ``derivs``: False, True (all 8) or one bool per parameter (the derivatives wanted; the
    others come back None and cost nothing).
    """
    a, b, c, al, be, p, q, gain = prm
    want = (False,) * 8 if derivs is False else (True,) * 8 if derivs is True else tuple(derivs)
    y1 = 1 + al * x2
    y2 = 1 + be * x2
    # dT/dy, dT/dp are needed only for alpha, beta, p, q
    t1, t1y, t1p = _t_term(p, y1, want[3] or want[5])
    t2, t2y, t2q = _t_term(q, y2, want[4] or want[6])
    s = a + b + c
    inner = c + a * t1 + b * t2
    m = gain / s * inner
    if not any(want):
        return m, None
    k = gain / s
    make = (lambda: k * t1 - m / s,              # a
            lambda: k * t2 - m / s,              # b
            lambda: k - m / s,                   # c
            lambda: k * a * t1y * x2,            # alpha
            lambda: k * b * t2y * x2,            # beta
            lambda: k * a * t1p,                 # p
            lambda: k * b * t2q,                 # q
            lambda: inner / s)                   # gain
    return m, [f() if w else None for f, w in zip(make, want)]


def _mtf_params(params, xp, dtype):
    if isinstance(params, dict):
        vals = [params[k] for k in MTF_PARAM_NAMES]
    else:
        vals = [getattr(params, k) for k in MTF_PARAM_NAMES]
    return tuple(xp.asarray(unwrap(v), dtype=dtype) for v in vals)


def mtf(shape, params, xp=np, dtype=np.float64, rfft=False):
    """TEM-simulator MTF (× gain) on the FFT grid of ``shape`` (x in cycles per pixel).

    ``params``: a :class:`cutem.params.Detector` or a dict with :data:`MTF_PARAM_NAMES`.
    ``rfft=True`` gives the half grid (ny, nx//2 + 1).
    """
    m, _ = _mtf_core(_freq2_cycles(shape, xp, dtype, rfft), _mtf_params(params, xp, dtype))
    return m


def mtf_radial(x_cycles_per_pixel, params, xp=np, dtype=np.float64):
    """The MTF (× gain) at given radial frequencies x (cycles per pixel)."""
    x = xp.asarray(x_cycles_per_pixel, dtype=dtype)
    m, _ = _mtf_core(x * x, _mtf_params(params, xp, dtype))
    return m


def _half_weights(nx, xp, dtype):
    """Multiplicity of each rfft column in the full spectrum (1 for DC/Nyquist, else 2)."""
    w = xp.full(nx // 2 + 1, 2.0, dtype=dtype)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w


def _fourier_filter(x, filt):
    """irfft2(rfft2(x) · filt) over the last two axes (filt real, even: self-adjoint)."""
    return B.irfft2(B.rfft2(x) * filt, s=x.shape[-2:])


# ------------------------------------------------------------------------------ stages
@register
class ExpectedCounts(Stage):
    """N̄ = dose · pixel_size_A² · I: expected electrons per pixel.

    Inputs ``(intensity, dose_e_per_A2)``; VJPs dose·a·g and a·Σ I g (a = pixel area).
    """

    def __init__(self, pixel_size_A):
        self.pixel_area = float(pixel_size_A) ** 2

    def forward(self, ctx, intensity, dose):
        ctx.i, ctx.dose = intensity, dose
        return intensity * (dose * self.pixel_area)

    def vjp(self, ctx, g):
        return (g * (ctx.dose * self.pixel_area) if ctx.needs[0] else None,
                (g * ctx.i).sum() * self.pixel_area if ctx.needs[1] else None)

    @classmethod
    def cases(cls, xp, dtype, rng):
        i = xp.asarray(1 + 0.2 * rng.standard_normal((5, 6)), dtype=dtype)
        return [(cls(2.5), (i, xp.asarray(0.7, dtype=dtype)))]


@register
class PathwiseNoise(Stage):
    """Gaussian reparametrisation of Poisson shot noise and the Wald DQE model.

    X = N̄ + S[sqrt(N̄/dqe) · ε], with ε a fixed standard-normal draw (held by the stage)
    and S the optional noise-shaping filter (frequency-dependent DQE; real, even, on the
    rfft grid; identity when None). Inputs ``(n_bar, dqe)``.

    VJP: with z = sqrt(N̄/dqe) ε and g_z = S g (S self-adjoint),
    dL/dN̄ = g + g_z ε / (2 sqrt(N̄ dqe)), dL/ddqe = −Σ g_z z / (2 dqe).
    Pixels with N̄ ≤ 0 get no noise and only the direct cotangent.
    """

    def __init__(self, eps, noise_filter=None):
        self.eps = eps
        self.noise_filter = noise_filter

    def forward(self, ctx, n_bar, dqe):
        xp = B.array_module(n_bar)
        pos = n_bar > 0
        root = xp.sqrt(xp.where(pos, n_bar, 0) / dqe)
        z = root * self.eps
        ctx.pos, ctx.root, ctx.z, ctx.dqe = pos, root, z, dqe
        noise = z if self.noise_filter is None else _fourier_filter(z, self.noise_filter)
        return n_bar + noise

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        gz = g if self.noise_filter is None else _fourier_filter(g, self.noise_filter)
        g_nbar = g_dqe = None
        if ctx.needs[0]:
            # dz/dN̄ = ε/(2 sqrt(N̄ dqe)) = root·ε / (2 N̄)... written without dividing by 0:
            safe = xp.where(ctx.pos, ctx.root * ctx.dqe, 1)
            g_nbar = g + xp.where(ctx.pos, gz * self.eps / (2 * safe), 0)
        if ctx.needs[1]:
            g_dqe = -(gz * ctx.z).sum() / (2 * ctx.dqe)
        return g_nbar, g_dqe

    @classmethod
    def cases(cls, xp, dtype, rng):
        nb = xp.asarray(5 + 3 * rng.random((6, 8)), dtype=dtype)
        eps = xp.asarray(rng.standard_normal((6, 8)), dtype=dtype)
        curve = (np.array([0.0, 0.5, 1.0]), np.array([0.8, 0.5, 0.3]))
        filt = dqe_noise_filter((6, 8), curve, xp, dtype)
        eps2 = xp.asarray(rng.standard_normal((2, 6, 8)), dtype=dtype)
        nb2 = xp.asarray(5 + 3 * rng.random((2, 6, 8)), dtype=dtype)
        return [(cls(eps), (nb, xp.asarray(0.7, dtype=dtype))),
                (cls(eps, filt), (nb, xp.asarray(0.9, dtype=dtype))),
                (cls(eps2, filt), (nb2, xp.asarray(1.0, dtype=dtype)))]


@register
class PoissonLogLikelihood(Stage):
    """Σ [N log N̄ − N̄] for fixed integer counts N (log p of the draw up to −Σ log N!).

    Input ``(n_bar,)``; VJP (N/N̄ − 1) g — the score ∂log p/∂N̄ of the score-function
    estimator. A pixel with N̄ = 0 must have N = 0 (it contributes 0, score −1).
    """

    def __init__(self, counts):
        self.counts = counts

    def forward(self, ctx, n_bar):
        xp = B.array_module(n_bar)
        pos = n_bar > 0
        ctx.n_bar, ctx.pos = n_bar, pos
        logn = xp.log(xp.where(pos, n_bar, 1))
        return (xp.where(pos, self.counts * logn, 0) - n_bar).sum()

    def vjp(self, ctx, g):
        xp = B.array_module(ctx.n_bar)
        ratio = xp.where(ctx.pos, self.counts / xp.where(ctx.pos, ctx.n_bar, 1), 0)
        return ((ratio - 1) * g,)

    @classmethod
    def cases(cls, xp, dtype, rng):
        nb = 3 + 4 * rng.random((5, 6))
        counts = xp.asarray(rng.poisson(nb), dtype=dtype)
        return [(cls(counts), (xp.asarray(nb, dtype=dtype),))]


@register
class WaldLogLikelihood(Stage):
    """Σ log p_Wald(X | mean N, variance (1/dqe − 1) N) as a function of dqe (0 < dqe < 1).

    The Wald (inverse Gaussian) density with mean μ = N and shape λ = N² dqe/(1 − dqe):
    log p = ½ log λ − λ (X − N)²/(2 N² X) + const. Pixels with N = 0 (X = 0) carry no
    information and are skipped. VJP: Σ_pixels [1/(2λ) − (X − N)²/(2 N² X)] · N²/(1 − dqe)² · g.
    """

    def __init__(self, x, counts):
        self.x, self.counts = x, counts

    def _pieces(self, dqe):
        xp = B.array_module(self.counts)
        pos = (self.counts > 0) & (self.x > 0)
        n = xp.where(pos, self.counts, 1)
        x = xp.where(pos, self.x, 1)
        r = (x - n) ** 2 / (2 * n * n * x)
        return xp, pos, n, r

    def forward(self, ctx, dqe):
        xp, pos, n, r = self._pieces(dqe)
        lam = n * n * dqe / (1 - dqe)
        ctx.dqe = dqe
        return xp.where(pos, 0.5 * xp.log(lam) - lam * r, 0).sum()

    def vjp(self, ctx, g):
        xp, pos, n, r = self._pieces(ctx.dqe)
        d = ctx.dqe
        lam = n * n * d / (1 - d)
        dl = n * n / (1 - d) ** 2
        return ((xp.where(pos, (0.5 / lam - r) * dl, 0)).sum() * g,)

    @classmethod
    def cases(cls, xp, dtype, rng):
        counts = rng.poisson(6.0, (5, 6)).astype(np.float64)
        x = sample_wald(counts, 0.7, np.random.default_rng(3), np)
        return [(cls(xp.asarray(x, dtype=dtype), xp.asarray(counts, dtype=dtype)),
                 (xp.asarray(0.7, dtype=dtype),))]


_MTF_CACHE = B.GridCache(maxsize=4)


@register
class MTF(Stage):
    """Blur by the TEM-simulator MTF (gain included): out = IFFT[MTF(x) · FFT(counts)].

    Inputs ``(counts, a, b, c, alpha, beta, p, q, gain)`` (counts real (..., ny, nx), the
    rest 0-d). The MTF is real and even in q, so the blur is self-adjoint:
    dL/dcounts = IFFT[MTF · FFT(g)]. For a parameter θ,
    dL/dθ = Σ_q ∂MTF/∂θ(q) · Re(conj(G(q)) C(q)) / n (G, C the spectra of g and counts),
    evaluated on the rfft half grid with multiplicities; ∂MTF/∂θ in :func:`_mtf_core`.
    """

    def forward(self, ctx, counts, *prm):
        if len(prm) != 8:
            raise TypeError("MTF takes counts and 8 parameters (a, b, c, alpha, beta, p, q, gain)")
        xp = B.array_module(counts)
        rdt = _rdt(counts)
        shape = counts.shape[-2:]
        # the MTF grid is the same for every image of a run: memoised on its parameters
        key = (tuple(shape), xp.__name__, np.dtype(rdt).name, B.scalars_key(prm))
        m = _MTF_CACHE.get(key, lambda: _mtf_core(_freq2_cycles(shape, xp, rdt), prm)[0])
        spec = B.rfft2(counts)
        ctx.spec, ctx.m, ctx.prm, ctx.shape, ctx.rdt = spec, m, prm, shape, rdt
        return B.irfft2(spec * m, s=shape)

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        G = B.rfft2(g)
        g_counts = B.irfft2(G * ctx.m, s=ctx.shape) if ctx.needs[0] else None
        if not any(ctx.needs[1:]):
            return (g_counts,) + (None,) * 8
        n = ctx.shape[0] * ctx.shape[1]
        cross = (xp.conj(G) * ctx.spec).real
        cross = cross.reshape((-1,) + cross.shape[-2:]).sum(axis=0)
        cross = cross * _half_weights(ctx.shape[1], xp, ctx.rdt) / n
        _, d = _mtf_core(_freq2_cycles(ctx.shape, xp, ctx.rdt), ctx.prm, derivs=ctx.needs[1:])
        return (g_counts,) + tuple(None if di is None else xp.asarray((cross * di).sum(), dtype=ctx.rdt) for di in d)

    @classmethod
    def cases(cls, xp, dtype, rng):
        def prm(p, q):
            vals = [0.7, 0.2, 0.1, 10.0, 40.0, p, q, 10.0]
            return tuple(xp.asarray(v * (1 + 0.1 * rng.standard_normal()), dtype=dtype) for v in vals)
        c1 = xp.asarray(rng.poisson(20, (8, 10)), dtype=dtype)
        c2 = xp.asarray(rng.poisson(20, (2, 7, 9)), dtype=dtype)
        return [(cls(), (c1,) + prm(1.0, 1.0)), (cls(), (c2,) + prm(2.5, 0.7))]


@register
class ReadoutNoise(Stage):
    """image + sigma · eps with a fixed standard-normal draw eps; inputs ``(image, sigma)``."""

    def __init__(self, eps):
        self.eps = eps

    def forward(self, ctx, image, sigma):
        return image + sigma * self.eps

    def vjp(self, ctx, g):
        return g, (g * self.eps).sum() if ctx.needs[1] else None

    @classmethod
    def cases(cls, xp, dtype, rng):
        eps = xp.asarray(rng.standard_normal((4, 5)), dtype=dtype)
        return [(cls(eps), (xp.asarray(rng.standard_normal((4, 5)), dtype=dtype), xp.asarray(1.5, dtype=dtype)))]


# ------------------------------------------------------------------------ sampling
def sample_poisson(n_bar, rng, xp=None):
    """Poisson counts with mean ``n_bar`` (float array of integers, same dtype)."""
    xp = xp or B.array_module(n_bar)
    lam = xp.maximum(n_bar, 0).astype(np.float64)
    if xp is np:  # threaded over fixed row blocks (B.blocked_draw)
        return B.blocked_draw(rng, lambda g, sl: g.poisson(lam[sl]), lam.shape, n_bar.dtype)
    return rng.poisson(lam).astype(n_bar.dtype)


def sample_wald(counts, dqe, rng, xp=None):
    """X ~ Wald(mean N, variance (1/dqe − 1) N) per pixel (X = N where dqe = 1, 0 where N = 0).

    Michael, Schucany & Haas (Am. Stat. 30:88, 1976) transformation: with ν ~ N(0, 1),
    y = ν², x = μ + μ²y/(2λ) − μ/(2λ) sqrt(4μλy + μ²y²), take x with probability
    μ/(μ + x), else μ²/x; λ = μ²·dqe/(1 − dqe) is the shape for variance μ³/λ = (1/dqe − 1)μ.
    """
    xp = xp or B.array_module(counts)
    dqe = float(dqe)
    out_dtype = counts.dtype
    if dqe >= 1.0:
        return counts.copy()
    mu = xp.asarray(counts, dtype=np.float64)
    pos = mu > 0
    mu1 = xp.where(pos, mu, 1.0)
    lam = mu1 * mu1 * dqe / (1 - dqe)
    if xp is np:
        nu = B.blocked_draw(rng, lambda g, sl: g.standard_normal(mu[sl].shape), mu.shape, np.float64)
    else:
        nu = rng.standard_normal(mu.shape)
    y = nu * nu
    x = mu1 + mu1 * mu1 * y / (2 * lam) - mu1 / (2 * lam) * xp.sqrt(4 * mu1 * lam * y + mu1 * mu1 * y * y)
    x = xp.maximum(x, 1e-300)
    if xp is np:
        z = B.blocked_draw(rng, lambda g, sl: g.random(mu[sl].shape), mu.shape, np.float64)
    else:
        z = rng.random(mu.shape)
    x = xp.where(z <= mu1 / (mu1 + x), x, mu1 * mu1 / x)
    return xp.where(pos, x, 0.0).astype(out_dtype)


# ---------------------------------------------------------------------- DQE curves
def load_dqe_curve(spec):
    """A DQE curve from a CSV: ``"path"`` (first data column) or ``"path:Column name"``.

    The first column is the frequency as a fraction of Nyquist (0..1), e.g.
    ../shared/data/real/detector_mtf/McMullan2014_dqe.csv (McMullan et al.,
    Ultramicroscopy 147:156, 2014). Returns ``(x_frac_nyquist, dqe)`` sorted by x.
    """
    path, col = spec, None
    if ":" in spec and not spec.endswith(".csv"):
        path, col = spec.rsplit(":", 1)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, data = rows[0], [r for r in rows[1:] if r]
    j = 1 if col is None else header.index(col)
    x = np.array([float(r[0]) for r in data])
    y = np.array([float(r[j]) for r in data])
    order = np.argsort(x)
    return x[order], y[order]


def dqe_falloff_filter(shape, kappa, xp=np, dtype=np.float64):
    """Noise-shaping amplitude sqrt(1 + κx²), x = |q|/q_Nyquist, on the rfft half grid
    (``Detector.dqe_falloff``; module docstring)."""
    x2 = B.to_numpy(_freq2_cycles(shape, np, np.float64)) / 0.25
    return xp.asarray(np.sqrt(1.0 + float(kappa) * x2), dtype=dtype)


def dqe_noise_filter(shape, curve, xp=np, dtype=np.float64):
    """Noise-shaping amplitude 1/sqrt(r(q)), r = DQE(q)/DQE(0), on the rfft half grid.

    ``curve`` = (x as fraction of Nyquist, DQE); frequencies beyond Nyquist (the corners)
    take the value at Nyquist.
    """
    xs, ys = (np.asarray(c, dtype=np.float64) for c in curve)
    x = np.sqrt(B.to_numpy(_freq2_cycles(shape, np, np.float64))) / 0.5
    d0 = np.interp(0.0, xs, ys)
    r = np.interp(np.minimum(x, 1.0), xs, ys) / d0
    return xp.asarray(1.0 / np.sqrt(r), dtype=dtype)


# -------------------------------------------------------------------- convenience
class Detection(NamedTuple):
    image: object            #: the detector output (array or Var)
    noise_free: object       #: gain · MTF ⊛ N̄ (None unless asked)
    log_prob: object         #: score mode: Σ log p of the draw (Var/array); else None
    expected_counts: object  #: N̄ (array or Var)
    draws: dict              #: the random draws used (pass back as ``draws=`` to reuse)


def _as_rng(rng, xp):
    if rng is None or isinstance(rng, (int, np.integer)):
        return B.default_rng(rng, xp)
    return rng


def score_surrogate(loss, log_prob, baseline=0.0):
    """L + (L − b)·log p with (L − b) held constant: its gradient is the score estimate.

    ``loss`` and ``log_prob`` are Vars on the same tape; ``baseline`` a float.
    """
    weight = float(B.to_numpy(unwrap(loss))) - float(baseline)
    return loss + log_prob * weight


def detect(intensity, detector, rng=None, estimator="pathwise", params=None, draws=None,
           noise_free=False, dqe_curve=None, xp=None):
    """Counts on the detector for ``intensity`` (array or Var, (..., ny, nx), 1 = vacuum).

    Parameters
    ----------
    detector : :class:`cutem.params.Detector` (pixel size, dose, DQE, MTF, gain, readout).
    rng : seeded generator on the intensity's device, or an int seed.
    estimator : ``"pathwise"`` (Gaussian reparametrised counts, fixed ε) or ``"score"``
        (integer Poisson/Wald draws; use :func:`score_surrogate` with ``log_prob``) or
        ``"none"`` (no noise: the image is gain · MTF ⊛ N̄, without readout noise either,
        so that it is the deterministic expectation a closed-form spectrum adds σ² to).
    params : overrides for :func:`detector_inputs` (arrays or watched Vars), keyed by
        :data:`PARAM_NAMES`, e.g. ``{"mtf_a": tape.watch(a0)}``.
    draws : the ``Detection.draws`` of an earlier call, to reuse the same noise.
    noise_free : also return gain · MTF ⊛ N̄.
    dqe_curve : ``(x_frac_nyquist, dqe)`` for noise shaping (default: ``detector.dqe_curve``
        loaded with :func:`load_dqe_curve`); pathwise only.
    xp : array module to run on (default: the intensity's own); a plain array on another
        device is moved there once (a Var must already live there).
    """
    val = unwrap(intensity)
    if xp is not None and B.array_module(val) is not xp:
        if isinstance(intensity, Var):
            raise ValueError("detect: the intensity Var lives on another device than xp")
        intensity = val = B.asarray(val, xp)
    xp = B.array_module(val)
    rdt = _rdt(val)
    inputs = detector_inputs(detector, xp, rdt)
    if params:
        unknown = set(params) - set(PARAM_NAMES)
        if unknown:
            raise KeyError(f"unknown detector parameter(s) {sorted(unknown)}; known: {PARAM_NAMES}")
        inputs.update(params)
    if estimator not in ("pathwise", "score", "none"):
        raise ValueError(f"estimator must be pathwise, score or none, not {estimator!r}")
    if dqe_curve is None and detector.dqe_curve:
        dqe_curve = load_dqe_curve(detector.dqe_curve)
    draws = dict(draws) if draws else {}
    gen = None

    def gen_():
        nonlocal gen
        gen = gen or _as_rng(rng, xp)
        return gen

    n_bar = ExpectedCounts(detector.pixel_size_A)(intensity, inputs["dose_e_per_A2"])
    nb_val = unwrap(n_bar)
    falloff = (dqe_falloff_filter(nb_val.shape[-2:], detector.dqe_falloff, xp, rdt)
               if detector.dqe_falloff > 0 and estimator != "none" else None)
    if falloff is not None and estimator == "score" and active_tape() is not None:
        raise ValueError("detector.dqe_falloff shapes the score estimator's draws, which a tape cannot "
                         "differentiate through: use estimator='pathwise'")
    log_prob = None
    if estimator == "none":
        counts = n_bar
    elif estimator == "pathwise":
        if "eps" not in draws:
            draws["eps"] = gen_().standard_normal(nb_val.shape).astype(rdt)
        filt = None if dqe_curve is None else dqe_noise_filter(nb_val.shape[-2:], dqe_curve, xp, rdt)
        if falloff is not None:
            filt = falloff if filt is None else filt * falloff
        counts = PathwiseNoise(draws["eps"], filt)(n_bar, inputs["dqe"])
    else:
        if dqe_curve is not None:
            raise ValueError("the frequency-dependent DQE (noise shaping) needs estimator='pathwise'")
        if not detector.quantized:
            raise ValueError("estimator='score' needs quantized counts (Detector.quantized = True)")
        if "counts" not in draws:
            draws["counts"] = sample_poisson(nb_val, gen_(), xp)
        # log p of the draw only matters to a tape (the score-function surrogate)
        taped = active_tape() is not None
        log_prob = PoissonLogLikelihood(draws["counts"])(n_bar) if taped else None
        dqe_val = float(B.to_numpy(unwrap(inputs["dqe"])))
        if dqe_val < 1.0:
            if "wald" not in draws:
                draws["wald"] = sample_wald(draws["counts"], dqe_val, gen_(), xp)
            if taped:
                log_prob = log_prob + WaldLogLikelihood(draws["wald"], draws["counts"])(inputs["dqe"])
            counts = draws["wald"]
        else:
            counts = draws["counts"]
        if falloff is not None:
            counts = nb_val + _fourier_filter(counts - nb_val, falloff)
    mtf_in = tuple(inputs[k] for k in MTF_PARAM_NAMES)
    image = MTF()(counts, *mtf_in)
    sigma = inputs["readout_noise"]
    if estimator != "none" and (isinstance(sigma, Var) or float(B.to_numpy(sigma)) > 0):
        if "readout" not in draws:
            draws["readout"] = gen_().standard_normal(nb_val.shape).astype(rdt)
        image = ReadoutNoise(draws["readout"])(image, sigma)
    nf = MTF()(n_bar, *mtf_in) if noise_free else None
    return Detection(image, nf, log_prob, n_bar, draws)


__all__ = ["PARAM_NAMES", "MTF_PARAM_NAMES", "detector_inputs", "mtf", "mtf_radial", "detect",
           "score_surrogate", "Detection", "ExpectedCounts", "PathwiseNoise", "PoissonLogLikelihood",
           "WaldLogLikelihood", "MTF", "ReadoutNoise", "sample_poisson", "sample_wald",
           "load_dqe_curve", "dqe_noise_filter", "dqe_falloff_filter"]
