"""Fitting on the tape: parametrisations, a driver (L-BFGS-B / Adam) and covariances.

Nothing here knows what the parameters mean; the objective is any function of a dict of
Vars that returns a scalar Var (or a residual vector for the covariances).

* :class:`FreeParam` / :class:`Parametrisation`: any subset of named physical
  parameters free, each kept physical either by L-BFGS-B box bounds (``"bounds"``, the
  optimiser sees θ/scale) or by a smooth map of an unconstrained variable u
  (``"log"``: θ = s·exp(u); ``"softplus"``: θ = lo + s·log(1+e^u); ``"logit"``:
  θ = lo + (hi−lo)·σ(u)). The map is applied on the tape, so the chain rule is exact.
* :func:`fit`: ``method="lbfgsb"`` (scipy's L-BFGS-B through
  :func:`adjoints.optim.minimize_lbfgsb`) or ``"adam"`` (:class:`adjoints.optim.Adam`);
  the objective gets the evaluation number so a stochastic objective can draw fresh noise
  (or the same noise, "common random numbers", when asked).
* Uncertainties: :func:`gauss_newton_covariance` — Cov ≈ s² (JᵀJ)⁻¹ with the exact
  Jacobian J of the residual vector (:func:`jacobian`, one reverse pass per residual on
  one tape); :func:`observed_information_covariance` — the inverse Hessian of a negative
  log-likelihood.

Bad arguments raise :class:`ValueError` (the caller's application turns them into its own
input errors).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import backend as B
from . import ops
from .optim import Adam, minimize_lbfgsb
from .stage import Tape, Var, unwrap

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
            raise ValueError(f"parameter {self.name}: transform must be one of {_TRANSFORMS}, not {self.transform!r}")
        if self.transform == "logit" and (self.lower is None or self.upper is None):
            raise ValueError(f"parameter {self.name}: a logit transform needs lower and upper bounds")
        if self.transform == "log" and self.init <= 0:
            raise ValueError(f"parameter {self.name}: a log transform needs a positive start, got {self.init}")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError(f"parameter {self.name}: lower bound {self.lower} >= upper bound {self.upper}")
        if not self.scale > 0:
            raise ValueError(f"parameter {self.name}: scale must be > 0")

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
        if self.transform == "log":   # θ = s·e^u: physical bounds become bounds on u
            lo = math.log(self.lower / self.scale) if self.lower is not None and self.lower > 0 else None
            hi = math.log(self.upper / self.scale) if self.upper is not None and self.upper > 0 else None
            return (lo, hi)
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
            raise ValueError(f"a parameter is listed twice among {names}")
        self.fixed = dict(fixed or {})
        clash = set(names) & set(self.fixed)
        if clash:
            raise ValueError(f"parameter {sorted(clash)[0]} is both free and fixed")
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
        """Plain floats of the free parameters (clamped to their bounds against round-off)."""
        out = {}
        for p in self.free:
            v = float(B.to_numpy(unwrap(p.to_physical(float(B.to_numpy(unwrap(u[p.name])))))))
            if p.lower is not None:
                v = max(v, p.lower)
            if p.upper is not None:
                v = min(v, p.upper)
            out[p.name] = v
        return out

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


def value_and_grad_internal(loss_fn, param: Parametrisation, step_box=None):
    """``(u) -> (loss, grads)`` with the physical map on the tape.

    ``loss_fn(theta, step)`` receives the physical dict (free entries are Vars) and the
    evaluation number ``step`` (counted in ``step_box["n"]``).
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


def fit(loss_fn, param: Parametrisation, method="lbfgsb", maxiter=200, lr=0.1, tol=None):
    """Minimise ``loss_fn(theta, step)`` over the free parameters of ``param``.

    Parameters
    ----------
    loss_fn : callable(theta: dict, step: int) -> scalar Var
    method : ``"lbfgsb"`` (exact gradients, box bounds) or ``"adam"`` (``maxiter``
        steps of size ``lr`` on the internal variables, projected into their box).
    """
    if method not in ("lbfgsb", "adam"):
        raise ValueError(f"fit: method must be lbfgsb or adam, not {method!r}")
    t0 = time.perf_counter()
    box = {"n": 0}
    vg = value_and_grad_internal(loss_fn, param, box)
    history = []
    if method == "lbfgsb":
        def counted(u):
            val, g = vg(u)
            history.append(float(B.to_numpy(val)))
            return val, g

        u, res = minimize_lbfgsb(counted, param.initial(), bounds=param.bounds(), maxiter=maxiter, tol=tol)
        loss, _ = vg(u)
        return FitResult(param.physical_values(u), float(B.to_numpy(loss)), int(res.nit), int(res.nfev),
                         time.perf_counter() - t0, "L-BFGS-B", history, str(res.message), u)
    opt = Adam(lr=lr)
    u = param.initial()
    for _ in range(int(maxiter)):
        loss, g = vg(u)
        history.append(float(B.to_numpy(loss)))
        u = param.clip(opt.step(u, g))
    loss, _ = vg(u)
    return FitResult(param.physical_values(u), float(B.to_numpy(loss)), int(maxiter), box["n"],
                     time.perf_counter() - t0, f"Adam(lr={lr})", history, "", u)


def jacobian(residual_fn, theta_values: dict, names):
    """Exact Jacobian ∂r_i/∂θ_j of ``residual_fn(theta) -> Var vector`` on one tape.

    One reverse pass per residual (seeded with a unit vector); the tape is recorded once.
    Returns ``(r, J)`` as NumPy float64 arrays.
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
    cov = s2 * np.linalg.pinv(J.T @ J)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return dict(zip(names, se)), cov, r


def observed_information_covariance(loss_fn, theta_values: dict, names, rel_step=1e-4):
    """(std errors, covariance) from the inverse Hessian of a negative log-likelihood.

    The Hessian is central differences of the exact (tape) gradient, column by column
    (2p gradient evaluations), symmetrised; steps ``rel_step``·max(|θ_j|, 1e-3). For a
    likelihood at its minimum, H⁻¹ is the observed-information estimate of the covariance
    (no residual-variance factor).
    """
    def grad(vals):
        with Tape() as tape:
            watched = {k: tape.watch(np.asarray(float(vals[k]), dtype=np.float64)) for k in names}
            full = dict(vals)
            full.update(watched)
            L = loss_fn(full)
            gs = tape.gradient(L, [watched[k] for k in names])
        return np.array([float(B.to_numpy(g)) for g in gs])

    p = len(names)
    H = np.zeros((p, p))
    for j, k in enumerate(names):
        h = rel_step * max(abs(float(theta_values[k])), 1e-3)
        up, dn = dict(theta_values), dict(theta_values)
        up[k] = float(theta_values[k]) + h
        dn[k] = float(theta_values[k]) - h
        H[:, j] = (grad(up) - grad(dn)) / (2 * h)
    H = 0.5 * (H + H.T)
    cov = np.linalg.pinv(H)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return dict(zip(names, se)), cov
