"""Fitting the simulator to data: objectives on the tape, parametrisations, drivers.

Everything differentiable here goes through the tape of :mod:`adjoints`, so the
gradients the optimisers see are the exact (hand-derived) ones of the stages used:
the MTF and noise stages of :mod:`cutem.detector`, the CTF stage of
:mod:`cutem.optics` and the :class:`cutem.spectra.RadialAverage` stage.

Pieces
------
* :class:`FreeParam` / :class:`Parametrisation`: any subset of named physical
  parameters free, each kept physical either by L-BFGS-B box bounds (``"bounds"``, the
  optimiser sees θ/scale) or by a smooth map of an unconstrained variable u
  (``"log"``: θ = s·exp(u); ``"softplus"``: θ = lo + s·log(1+e^u); ``"logit"``:
  θ = lo + (hi−lo)·σ(u)). The map is applied on the tape, so the chain rule is exact.
* Objectives (functions of Vars returning a scalar Var): :func:`pixel_loss`,
  :func:`focal_frequency_loss` (Jiang, Dai, Wu, Loy, "Focal Frequency Loss for Image
  Reconstruction and Synthesis", ICCV 2021, Eq. 2–3: spectrum weight
  w = |F_s − F_r|^α normalised to [0, 1] and not differentiated),
  :func:`log_radial_ps_loss`, :func:`ps2d_loss`, :func:`correlation_loss`.
* Drivers: :func:`fit` with ``method="lbfgsb"`` (scipy's L-BFGS-B through
  :func:`adjoints.minimize_lbfgsb`) or ``"adam"`` (:class:`adjoints.Adam`); the
  objective gets the iteration number so a stochastic objective can draw fresh noise
  (or the same noise, "common random numbers", when asked).
* Uncertainties: :func:`gauss_newton_covariance` — Cov ≈ s² (JᵀJ)⁻¹ with the exact
  Jacobian J of the residual vector, one reverse pass per residual on one tape.
* Application models: :func:`blank_expected_ps` (expected spectrum of blank
  micrographs), :func:`fit_mtf_blank`, :func:`fit_mtf_curve`, :func:`fit_ctf`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

import adjoints.backend as B
from adjoints import Adam, Tape, Var, minimize_lbfgsb, ops, unwrap

from .errors import InputError


# ========================================================================= parameters
_TRANSFORMS = ("bounds", "log", "softplus", "logit", "none")


@dataclass
class FreeParam:
    """One free parameter: its start value, physical bounds and how they are kept.

    ``scale`` is the parameter's typical size; the optimiser works on θ/scale (or on u
    of the smooth maps), so that parameters of very different units (defocus in Å,
    amplitude contrast) are equally well conditioned.
    """

    name: str
    init: float
    lower: float | None = None
    upper: float | None = None
    transform: str = "bounds"
    scale: float = 1.0

    def __post_init__(self):
        if self.transform not in _TRANSFORMS:
            raise InputError(f"parameter {self.name}: transform must be one of {_TRANSFORMS}, not {self.transform!r}")
        if self.transform == "logit" and (self.lower is None or self.upper is None):
            raise InputError(f"parameter {self.name}: a logit transform needs lower and upper bounds")
        if self.transform in ("log",) and (self.init <= 0):
            raise InputError(f"parameter {self.name}: a log transform needs a positive start, got {self.init}")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise InputError(f"parameter {self.name}: lower bound {self.lower} >= upper bound {self.upper}")
        if not self.scale > 0:
            raise InputError(f"parameter {self.name}: scale must be > 0")

    # ---- the map u -> θ (numbers, or Vars on the tape) -----------------------------
    def to_physical(self, u):
        t, s = self.transform, self.scale
        if t in ("bounds", "none"):
            return u * s
        if t == "log":
            return ops.exp(u) * s if isinstance(u, Var) else np.exp(u) * s
        if t == "softplus":
            lo = self.lower or 0.0
            if isinstance(u, Var):
                return ops.log(ops.exp(u) + 1.0) * s + lo
            return lo + s * np.logaddexp(0.0, u)
        # logit
        lo, hi = self.lower, self.upper
        if isinstance(u, Var):
            return (hi - lo) / (ops.exp(-u) + 1.0) + lo
        return lo + (hi - lo) / (1.0 + np.exp(-u))

    def to_internal(self, theta):
        theta = float(theta)
        t, s = self.transform, self.scale
        if t in ("bounds", "none"):
            return theta / s
        if t == "log":
            return math.log(max(theta, 1e-300) / s)
        if t == "softplus":
            z = max((theta - (self.lower or 0.0)) / s, 1e-12)
            return z + math.log(-math.expm1(-z))  # inverse softplus
        lo, hi = self.lower, self.upper
        f = min(max((theta - lo) / (hi - lo), 1e-9), 1 - 1e-9)
        return math.log(f / (1 - f))

    def internal_bounds(self):
        if self.transform != "bounds":
            return (None, None)
        lo = None if self.lower is None else self.lower / self.scale
        hi = None if self.upper is None else self.upper / self.scale
        return (lo, hi)


class Parametrisation:
    """A set of :class:`FreeParam` plus fixed values: maps internal vectors to physical dicts."""

    def __init__(self, free, fixed=None, dtype=np.float64, xp=np):
        self.free = list(free)
        names = [p.name for p in self.free]
        if len(set(names)) != len(names):
            raise InputError(f"a parameter is listed twice among {names}")
        self.fixed = dict(fixed or {})
        clash = set(names) & set(self.fixed)
        if clash:
            raise InputError(f"parameter {sorted(clash)[0]} is both free and fixed")
        self.dtype, self.xp = dtype, xp

    @property
    def names(self):
        return [p.name for p in self.free]

    def initial(self):
        """Internal start values: {name: 0-d array}."""
        return {p.name: self.xp.asarray(p.to_internal(p.init), dtype=self.dtype) for p in self.free}

    def bounds(self):
        return {p.name: p.internal_bounds() for p in self.free}

    def physical(self, u):
        """{name: θ} for internal ``u`` (Vars stay Vars), fixed values merged in."""
        out = dict(self.fixed)
        for p in self.free:
            out[p.name] = p.to_physical(u[p.name])
        return out

    def physical_values(self, u):
        """Plain floats of the free parameters."""
        return {p.name: float(B.to_numpy(unwrap(p.to_physical(float(B.to_numpy(unwrap(u[p.name])))))))
                for p in self.free}

    def clip(self, u):
        """Project internal values into their box (Adam with ``"bounds"`` transforms)."""
        out = {}
        for p in self.free:
            lo, hi = p.internal_bounds()
            v = u[p.name]
            if lo is not None or hi is not None:
                v = self.xp.clip(v, -np.inf if lo is None else lo, np.inf if hi is None else hi)
            out[p.name] = v
        return out


# ========================================================================= objectives
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
    from .spectra import radial_average

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


# ============================================================================ drivers
@dataclass
class FitResult:
    params: dict                 #: fitted physical values of the free parameters
    loss: float
    iterations: int
    evaluations: int
    seconds: float
    method: str
    history: list = field(default_factory=list)  #: loss per iteration (Adam) or evaluation
    message: str = ""
    internal: dict | None = None

    def summary(self):
        vals = ", ".join(f"{k}={v:.6g}" for k, v in self.params.items())
        return (f"{self.method}: loss {self.loss:.6g} after {self.iterations} iterations "
                f"({self.evaluations} evaluations, {self.seconds:.2f} s): {vals}")


def value_and_grad_internal(loss_fn, param: Parametrisation, step_box=None):
    """``(u) -> (loss, grads)`` with the physical map on the tape.

    ``loss_fn(theta, step)`` receives the physical dict (free entries are Vars) and the
    evaluation number ``step``.
    """
    counter = step_box if step_box is not None else {"n": 0}

    def vg(u):
        with Tape() as tape:
            uw = {k: tape.watch(v) for k, v in u.items()}
            theta = param.physical(uw)
            loss = loss_fn(theta, counter["n"])
        counter["n"] += 1
        if not isinstance(loss, Var):
            xp = B.array_module(loss)
            return loss, {k: xp.zeros_like(v) for k, v in u.items()}
        grads = tape.gradient(loss, [uw[k] for k in u])
        return loss.value, dict(zip(u, grads))

    return vg


def fit(loss_fn, param: Parametrisation, method="lbfgsb", maxiter=200, lr=0.1, tol=None,
        callback=None, progress=None):
    """Minimise ``loss_fn(theta, step)`` over the free parameters of ``param``.

    Parameters
    ----------
    loss_fn : callable(theta: dict, step: int) -> scalar Var
    method : ``"lbfgsb"`` (exact gradients, box bounds) or ``"adam"`` (``maxiter``
        steps of size ``lr`` on the internal variables, projected into their box).
    callback : called as ``callback(iteration, theta_values, loss)``.
    """
    t0 = time.perf_counter()
    box = {"n": 0}
    vg = value_and_grad_internal(loss_fn, param, box)
    u0 = param.initial()
    history = []
    if method == "lbfgsb":
        last = {}

        def counted(u):
            val, g = vg(u)
            history.append(float(B.to_numpy(val)))
            last["u"] = u
            return val, g

        niter = {"n": 0}

        def cb(_x):
            niter["n"] += 1
            if progress is not None:
                progress.update(1)
            if callback is not None:
                callback(niter["n"], param.physical_values(last["u"]), history[-1])

        u, res = minimize_lbfgsb(counted, u0, bounds=param.bounds(), maxiter=maxiter, tol=tol, callback=cb)
        loss, _ = vg(u)
        out = FitResult(param.physical_values(u), float(B.to_numpy(loss)), int(res.nit), int(res.nfev),
                        time.perf_counter() - t0, "L-BFGS-B", history, str(res.message), u)
        return out
    if method == "adam":
        opt = Adam(lr=lr)
        u = u0
        loss = None
        for it in range(int(maxiter)):
            loss, g = vg(u)
            history.append(float(B.to_numpy(loss)))
            u = param.clip(opt.step(u, g))
            if progress is not None:
                progress.update(1)
            if callback is not None:
                callback(it + 1, param.physical_values(u), history[-1])
        loss, _ = vg(u)
        return FitResult(param.physical_values(u), float(B.to_numpy(loss)), int(maxiter), box["n"],
                         time.perf_counter() - t0, f"Adam(lr={lr})", history, "", u)
    raise InputError(f"fit: method must be lbfgsb or adam, not {method!r}")


def jacobian(residual_fn, theta_values: dict, names):
    """Exact Jacobian ∂r_i/∂θ_j of ``residual_fn(theta) -> Var vector`` on one tape.

    One reverse pass per residual (seeded with a unit vector); the tape is recorded once.
    """
    with Tape() as tape:
        watched = {k: tape.watch(np.asarray(float(theta_values[k]), dtype=np.float64)) for k in names}
        full = dict(theta_values)
        full.update(watched)
        r = residual_fn(full)
    rv = unwrap(r)
    xp = B.array_module(rv)
    n = int(np.size(rv))
    J = np.zeros((n, len(names)))
    for i in range(n):
        seed = xp.zeros_like(rv)
        seed.reshape(-1)[i] = 1.0
        gs = tape.gradient(r, [watched[k] for k in names], seed=seed)
        J[i] = [float(B.to_numpy(g)) for g in gs]
    return B.to_numpy(rv).astype(np.float64).ravel(), J


def gauss_newton_covariance(residual_fn, theta_values: dict, names):
    """(std errors, covariance, residuals) from Cov = s²(JᵀJ)⁻¹, s² = RSS/(n − p).

    The residuals are assumed independent with a common variance (estimated from the
    residuals themselves); the Jacobian is exact (tape).
    """
    r, J = jacobian(residual_fn, theta_values, names)
    n, p = J.shape
    s2 = float(r @ r) / max(n - p, 1)
    JTJ = J.T @ J
    cov = s2 * np.linalg.pinv(JTJ)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return dict(zip(names, se)), cov, r
