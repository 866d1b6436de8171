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


def _errors(residuals, vals, names):
    """1σ errors of the fitted parameters, of a/(a+b+c)-style normalised MTF weights and of
    the b/a, c/a ratios, from the Gauss–Newton covariance; returns (errs, cov, residuals)."""
    se, cov, r = gauss_newton_covariance(residuals, vals, names)
    errs = {k: float(v) for k, v in se.items()}
    errs.update({k: float(v) for k, v in _normalised_errors(vals, cov, names).items()})
    errs.update({k: float(v) for k, v in _ratio_errors(vals, cov, names).items()})
    return errs, cov, r


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


def observed_information_covariance(loss_fn, theta_values: dict, names, rel_step=1e-4):
    """(std errors, covariance) from the inverse Hessian of a negative log-likelihood.

    The Hessian is central differences of the exact (tape) gradient, column by column
    (2p gradient evaluations), symmetrised; steps ``rel_step``·max(|θ_j|, 1e-3). For a
    likelihood (e.g. :func:`whittle_nll`) at its minimum, H⁻¹ is the observed-information
    estimate of the covariance (no residual-variance factor).
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


def _errors_from_cov(vals, cov, names):
    errs = {k: float(np.sqrt(max(cov[i, i], 0.0))) for i, k in enumerate(names)}
    errs.update({k: float(v) for k, v in _normalised_errors(vals, cov, names).items()})
    errs.update({k: float(v) for k, v in _ratio_errors(vals, cov, names).items()})
    return errs


# ================================================================== CTF from spectra
@dataclass
class CTFFit:
    """Result of :func:`fit_ctf` (defocus in Å, angle in degrees, RELION conventions)."""

    defocus_u_A: float
    defocus_v_A: float
    astigmatism_angle_deg: float
    amplitude_contrast: float
    score: float                 #: correlation of background-subtracted data and CTF² (0..1)
    search_defocus_A: float      #: best mean defocus of the 1D search
    seconds: float
    iterations: int
    q_range: tuple
    errors: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)  #: q, data and model radial profiles for plots
    extra: dict = field(default_factory=dict)    #: refined ``extra_free`` optics inputs (not validated)

    @property
    def defocus_mean_A(self):
        return 0.5 * (self.defocus_u_A + self.defocus_v_A)

    @property
    def astigmatism_A(self):
        return self.defocus_u_A - self.defocus_v_A


def _ctf_inputs(voltage_kV, cs_mm, xp=np, dtype=np.float64, **over):
    from .optics import optics_inputs
    from .params import Optics

    p = optics_inputs(Optics(voltage_kV=voltage_kV, cs_mm=cs_mm), xp, dtype)
    for k, v in over.items():
        p[k] = v if isinstance(v, Var) else xp.asarray(v, dtype=dtype)
    return p


def ctf_squared_profile(q, defocus_A, voltage_kV, cs_mm, amplitude_contrast, oversample=8):
    """CTF² (no envelope) of a round (non-astigmatic) CTF at frequencies ``q`` (1/Å).

    Evaluated with :class:`cutem.optics.CTF2D` on a one-row grid along x, finely sampled,
    and interpolated to ``q`` (a small helper: the optics module works on 2D grids).
    """
    from .optics import CTF2D, PARAM_NAMES

    qmax = float(np.max(q)) * 1.01
    n = int(oversample * len(q)) * 2 + 2
    px = 0.5 / qmax   # the line's Nyquist is q_max
    st = CTF2D((1, n), px, voltage_kV, None, nyquist_cut=False, envelope=False)
    inputs = _ctf_inputs(voltage_kV, cs_mm, defocus_u_A=defocus_A, defocus_v_A=defocus_A,
                         amplitude_contrast=amplitude_contrast)
    c, _ = st.apply(*[inputs[k] for k in PARAM_NAMES])
    line_q = np.fft.fftfreq(n, d=px)[: n // 2]
    return np.interp(q, line_q, np.asarray(c)[0, : n // 2] ** 2)


def _envelope_fit(y, basis, c):
    """Linear least squares y ≈ Φb + (Φe)·c, relative residuals; returns (rss, b, e)."""
    A = np.hstack([basis, basis * c[:, None]]) / y[:, None]
    coef, *_ = np.linalg.lstsq(A, np.ones_like(y), rcond=None)
    r = A @ coef - 1.0
    k = basis.shape[1]
    return float(r @ r), coef[:k], coef[k:]


def fit_ctf(ps, pixel_size_A, voltage_kV, cs_mm, centred=True, q_range=(1 / 30, 1 / 5),
            amplitude_contrast=0.1, fit_amplitude=True, defocus_range_A=(2000.0, 50000.0),
            defocus_step_A=None, degree=6, max_astigmatism_A=1500.0, maxiter=100, extra_free=()):
    """Defocus (u, v), astigmatism angle and amplitude contrast from a power spectrum.

    Steps (each guards the next against a wrong Thon-ring basin):

    1. Radial profile p(q) of the spectrum over ``q_range``; for every mean defocus on a
       grid (step ≈ a quarter of the basin width at q_max), the best linear model
       p ≈ B(q) + E(q)·CTF²(q; Δf) with B, E Legendre polynomials of ``degree`` (a linear
       least-squares fit per candidate, relative residuals); keep the Δf of least
       residual, then repeat on a 10× finer grid around it.
    2. 2D: the spectrum minus B(|q|), divided by E(|q|), on the annulus ``q_range``;
       a grid over astigmatism (Δf_u − Δf_v up to ``max_astigmatism_A``) and angle
       (15° steps), scored by correlation with CTF²(q; Δf_u, Δf_v, θ) from
       :class:`cutem.optics.CTF2D`.
    3. L-BFGS-B on (Δf_u, Δf_v, θ[, w]) minimising 1 − correlation, with the exact
       gradient of the CTF stage through the tape.

    Parameters
    ----------
    ps : 2D power spectrum (``centred``: DC at the centre, else at [0, 0]).
    pixel_size_A : its sampling (Å per pixel of the image it came from).
    extra_free : more optics inputs to refine in step 3: ``"cs_A"`` (start: ``cs_mm``,
        bounds ±50 %) and/or ``"phase_shift_rad"`` (phase plate, start 0). Not validated:
        Cs trades off with defocus over usual fit ranges (a synthetic 300 kV spectrum with
        Cs 2.7 mm, fitted to 1/4.5 Å⁻¹, gave 3.7 mm), so keep Cs fixed unless the range
        reaches far beyond the first few rings.
    Returns
    -------
    :class:`CTFFit` (U ≥ V, angle of the U axis from image x in [0, 180)).
    """
    from .optics import CTF2D, PARAM_NAMES
    from .spectra import RadialBins, smooth_basis, to_centre, to_corner

    t0 = time.perf_counter()
    ps = np.asarray(B.to_numpy(ps), dtype=np.float64)
    if ps.ndim != 2:
        raise InputError(f"fit_ctf: the power spectrum must be 2D, got shape {ps.shape}")
    ps = to_corner(ps) if centred else ps
    qlo, qhi = float(q_range[0]), float(q_range[1])
    nyq = 0.5 / pixel_size_A
    if not 0 < qlo < qhi <= nyq * 1.0001:
        raise InputError(f"fit_ctf: q range ({qlo:.4g}, {qhi:.4g}) 1/Å must lie in (0, Nyquist = {nyq:.4g}]")
    lam = _wavelength(voltage_kV)
    bins = RadialBins(ps.shape, pixel_size_A)
    prof = bins.average(ps)
    sel = (bins.q >= qlo) & (bins.q <= qhi)
    q, y = bins.q[sel], prof[sel]
    if np.any(y <= 0):
        raise InputError("fit_ctf: the power spectrum has non-positive ring means in the fit range")
    Phi = smooth_basis(q, qlo, qhi, degree)

    # -- 1. 1D search over the mean defocus
    basin = 1.0 / (lam * qhi ** 2)         # Δf change that moves the outer ring by one period
    step = defocus_step_A or max(basin / 4.0, 1.0)

    def score1d(df):
        c = ctf_squared_profile(q, df, voltage_kV, cs_mm, amplitude_contrast)
        return _envelope_fit(y, Phi, c)[0]

    grid = np.arange(defocus_range_A[0], defocus_range_A[1] + step, step)
    s = np.array([score1d(d) for d in grid])
    d0 = grid[int(np.argmin(s))]
    fine = np.arange(d0 - step, d0 + step, step / 10.0)
    s2 = np.array([score1d(d) for d in fine])
    d1 = float(fine[int(np.argmin(s2))])
    c1 = ctf_squared_profile(q, d1, voltage_kV, cs_mm, amplitude_contrast)
    _, bco, eco = _envelope_fit(y, Phi, c1)

    # -- 2. normalised 2D data on the annulus. Frequencies beyond q_max are not used, so
    # the spectrum is cropped about DC (a Fourier crop: same frequency spacing, a
    # coarser pixel), which makes every CTF evaluation below cheaper.
    ny, nx = ps.shape
    half = [min(n // 2, int(math.ceil(qhi * n * pixel_size_A)) + 2) for n in (ny, nx)]
    ps = to_corner(to_centre(ps)[ny // 2 - half[0]: ny // 2 + half[0], nx // 2 - half[1]: nx // 2 + half[1]])
    crop_px = (pixel_size_A * ny / ps.shape[0], pixel_size_A * nx / ps.shape[1])
    if abs(crop_px[0] - crop_px[1]) > 1e-9 * crop_px[0]:
        raise InputError(f"fit_ctf: non-square spectra ({ny}x{nx}) must be cropped square first")
    pixel_size_A = crop_px[0]
    qy, qx = B.freq_grid(ps.shape, pixel_size_A, np, np.float64)
    qa = np.sqrt(qx ** 2 + qy ** 2)
    mask = (qa >= qlo) & (qa <= qhi)
    P2 = smooth_basis(qa[mask], qlo, qhi, degree)
    bg, env = P2 @ bco, P2 @ eco
    env = np.where(np.abs(env) > 1e-12 * np.max(np.abs(env)), env, 1e-12 * np.max(np.abs(env)))
    data = np.zeros_like(ps)
    data[mask] = (ps[mask] - bg) / env
    stage = CTF2D(ps.shape, pixel_size_A, voltage_kV, None, nyquist_cut=False, envelope=False)
    idx = np.nonzero(mask.ravel())[0]
    dsel = data.ravel()[idx]
    dsel = dsel - dsel.mean()
    dsel = dsel / math.sqrt(np.sum(dsel * dsel))

    def model(theta):
        inp = _ctf_inputs(voltage_kV, cs_mm, **theta)
        c = stage(*[inp[k] for k in PARAM_NAMES])
        return c * c

    def corr_plain(du, dv, ang, w):
        m = np.asarray(model({"defocus_u_A": du, "defocus_v_A": dv, "astigmatism_angle_rad": ang,
                              "amplitude_contrast": w})).ravel()[idx]
        m = m - m.mean()
        # elementwise sums, not BLAS dot: threaded BLAS is slow on a busy small machine
        return float(np.sum(m * dsel) / math.sqrt(np.sum(m * m)))

    best = (corr_plain(d1, d1, 0.0, amplitude_contrast), d1, d1, 0.0)
    astig_grid = np.arange(step / 2, max_astigmatism_A + 1e-9, step / 2)
    for da in astig_grid:
        for ang in np.deg2rad(np.arange(0, 180, 15.0)):
            sc = corr_plain(d1 + da / 2, d1 - da / 2, ang, amplitude_contrast)
            if sc > best[0]:
                best = (sc, d1 + da / 2, d1 - da / 2, ang)

    # -- 3. gradient refinement
    free = [FreeParam("defocus_u_A", best[1], 0.0, None, "bounds", 1000.0),
            FreeParam("defocus_v_A", best[2], 0.0, None, "bounds", 1000.0),
            FreeParam("astigmatism_angle_rad", best[3], None, None, "bounds", 0.1)]
    fixed = {}
    if fit_amplitude:
        free.append(FreeParam("amplitude_contrast", amplitude_contrast, 0.0, 0.5, "bounds", 0.1))
    else:
        fixed["amplitude_contrast"] = amplitude_contrast
    for name in extra_free:
        if name == "cs_A":
            free.append(FreeParam("cs_A", cs_mm * 1e7, 0.5 * cs_mm * 1e7, 1.5 * cs_mm * 1e7, "bounds", 1e7))
        elif name == "phase_shift_rad":
            free.append(FreeParam("phase_shift_rad", 0.0, -math.pi, math.pi, "bounds", 0.1))
        else:
            raise InputError(f"fit_ctf: extra_free may hold cs_A and phase_shift_rad, not {name!r}")
    par = Parametrisation(free, fixed)
    res = fit(lambda th, _: correlation_loss(model(th), data, mask), par, "lbfgsb", maxiter=maxiter)
    th = dict(res.params)
    w = th.get("amplitude_contrast", amplitude_contrast)
    du, dv, ang = th["defocus_u_A"], th["defocus_v_A"], th["astigmatism_angle_rad"]
    if du < dv:
        du, dv, ang = dv, du, ang + math.pi / 2
    ang_deg = math.degrees(ang) % 180.0
    # uncertainties: Gauss–Newton on the normalised residuals (data ≈ s·CTF² + o)
    errs = {}
    try:
        names = par.names
        mtheta = dict(fixed)
        mtheta.update(th)

        def resid(theta):
            m = ops.reshape(model(theta), (-1,))[B.array_module(dsel).asarray(idx)]
            mm = unwrap(m)
            scale = float(np.dot(mm - mm.mean(), dsel)) / float(np.dot(mm - mm.mean(), mm - mm.mean()))
            return (m - float(mm.mean())) * scale - dsel
        # one pass per residual is too many for a 2D annulus: use a random subset of pixels
        # pixels, rescaled by sqrt(n_sub/n): Cov ≈ s²(JᵀJ)⁻¹ and JᵀJ grows with n
        nsub = min(120, len(idx))
        sub = np.random.default_rng(0).choice(len(idx), size=nsub, replace=False)

        def resid_sub(theta):
            return resid(theta)[np.asarray(sub)]
        se, _, _ = gauss_newton_covariance(resid_sub, mtheta, names)
        errs = {k: float(v) * math.sqrt(nsub / len(idx)) for k, v in se.items() if k not in extra_free}
        if "astigmatism_angle_rad" in errs:
            errs["astigmatism_angle_deg"] = math.degrees(errs.pop("astigmatism_angle_rad"))
    except Exception:  # uncertainties are a report, never a reason to fail the fit
        errs = {}
    # radial profiles for plots: data and the fitted model (B + E·<CTF²>_ring)
    cfit = np.asarray(model({"defocus_u_A": du, "defocus_v_A": dv, "astigmatism_angle_rad": ang,
                             "amplitude_contrast": w}))
    cring = RadialBins(cfit.shape, pixel_size_A).average(cfit)
    cring = np.interp(q, RadialBins(cfit.shape, pixel_size_A).q, cring)
    _, bco2, eco2 = _envelope_fit(y, Phi, cring)
    profile = {"q": q, "data": y, "model": Phi @ bco2 + (Phi @ eco2) * cring, "background": Phi @ bco2,
               "search_grid": grid, "search_score": s}
    return CTFFit(float(du), float(dv), float(ang_deg), float(w), float(1.0 - res.loss), d1,
                  time.perf_counter() - t0, res.iterations, (qlo, qhi), errs, profile,
                  {k: float(th[k]) for k in extra_free})


def _wavelength(voltage_kV):
    from .electron import wavelength_A

    return wavelength_A(voltage_kV)


# ============================================================== detector / MTF models
MTF_SHAPE_NAMES = ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p", "mtf_q")
#: physical bounds of the detector parameters (cutem.params.Detector's ranges)
DETECTOR_BOUNDS = {"mtf_a": (1e-6, 1.0), "mtf_b": (1e-6, 1.0), "mtf_c": (1e-6, 1.0),  # > 0: a+b+c divides
                   "mtf_alpha": (0.0, 1e4), "mtf_beta": (0.0, 1e4), "mtf_p": (1e-3, 10.0),
                   "mtf_q": (1e-3, 10.0), "gain": (1e-6, 1e6), "dqe": (1e-3, 1.0),
                   "readout_noise": (0.0, 1e6), "dose_e_per_A2": (1e-9, 1e5)}
DETECTOR_SCALES = {"mtf_a": 1.0, "mtf_b": 1.0, "mtf_c": 1.0, "mtf_alpha": 10.0, "mtf_beta": 10.0,
                   "mtf_p": 1.0, "mtf_q": 1.0, "gain": 1.0, "dqe": 1.0, "readout_noise": 1.0,
                   "dose_e_per_A2": 1.0}


_LOG_TRANSFORMED = ("mtf_alpha", "mtf_beta", "mtf_p", "mtf_q", "gain", "dose_e_per_A2")
RATIO_NAMES = ("mtf_b_over_a", "mtf_c_over_a")


def detector_free_params(detector, names, start=None, ratios=True):
    """:class:`FreeParam` list for detector fields ``names`` (start: dict of values, else the detector's).

    The MTF depends on a, b, c only through a/(a+b+c), b/(a+b+c), c/(a+b+c), so with all
    three free the loss is exactly flat along (a, b, c) → s·(a, b, c) and the problem is
    singular. With ``ratios`` (default) a, b, c are replaced by r_b = b/a and r_c = c/a
    (log-transformed, so positive) and :func:`expand_ratios` maps them back to a
    normalised (a, b, c) with a + b + c = 1. Scale parameters (α, β, p, q, gain, dose) are
    log-transformed (θ = θ₀·e^u): positive, and equally conditioned at every magnitude.
    """
    start = dict(start or {})
    names = list(names)
    out = []
    if ratios and all(k in names for k in ("mtf_a", "mtf_b", "mtf_c")):
        a, b, c = (max(float(start.get(k, getattr(detector, k))), 1e-6) for k in ("mtf_a", "mtf_b", "mtf_c"))
        out += [FreeParam("mtf_b_over_a", b / a, 0.0, None, "log", b / a),
                FreeParam("mtf_c_over_a", c / a, 0.0, None, "log", c / a)]
        names = [n for n in names if n not in ("mtf_a", "mtf_b", "mtf_c")]
    for n in names:
        if n not in DETECTOR_BOUNDS:
            raise InputError(f"unknown detector parameter {n!r}; free ones can be {sorted(DETECTOR_BOUNDS)}")
        v = float((start or {}).get(n, getattr(detector, n)))
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


def _ratio_errors(vals, cov, names):
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


def mtf_on_grid(shape, theta):
    """The detector's MTF (× gain) on the FFT grid as a taped value.

    Uses :class:`cutem.detector.MTF` on a unit impulse: the blurred impulse is the PSF
    IFFT[MTF], and its FFT is MTF(q) on the grid. (The MTF stage only blurs images; this
    is the smallest way to get the MTF itself on the tape.)
    """
    from .detector import MTF, MTF_PARAM_NAMES

    xp = np
    delta = xp.zeros(shape, dtype=np.float64)
    delta[0, 0] = 1.0
    psf = MTF()(delta, *[_as_input(theta[k]) for k in MTF_PARAM_NAMES])
    return ops.real(ops.fft2(psf))


def _as_input(v):
    return v if isinstance(v, Var) else np.asarray(float(B.to_numpy(v)), dtype=np.float64)


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


def normalised_mtf_params(p):
    """(a, b, c)/(a + b + c): what the MTF actually depends on (besides α, β, p, q, gain)."""
    s = p["mtf_a"] + p["mtf_b"] + p["mtf_c"]
    return {"a_n": p["mtf_a"] / s, "b_n": p["mtf_b"] / s, "c_n": p["mtf_c"] / s}


@dataclass
class MTFFit:
    detector: object             #: cutem.params.Detector with the fitted values
    fit: FitResult
    errors: dict                 #: 1-σ standard errors (Gauss–Newton), incl. a_n, b_n, c_n
    profile: dict                #: x (cycles/pixel), data, model, residual


def _free_physical(free):
    return [k for k in free]


def _detector_theta(detector):
    from .detector import PARAM_NAMES

    return {k: float(getattr(detector, k)) for k in PARAM_NAMES}


def _normalised_errors(vals, cov, names):
    """Delta-method errors of (a, b, c)/(a+b+c) from the covariance of the free set."""
    if not all(k in names for k in ("mtf_a", "mtf_b", "mtf_c")):
        return {}
    ii = [names.index(k) for k in ("mtf_a", "mtf_b", "mtf_c")]
    a = np.array([vals[k] for k in ("mtf_a", "mtf_b", "mtf_c")])
    s = a.sum()
    G = (np.eye(3) * s - a[:, None] * np.ones(3)[None, :]) / s ** 2   # d(a_i/s)/d a_j
    C = cov[np.ix_(ii, ii)]
    cn = G @ C @ G.T
    return dict(zip(("a_n", "b_n", "c_n"), np.sqrt(np.maximum(np.diag(cn), 0))))


def _mean_residual(mean, weight, sd_logmean):
    """Residual of the log image mean against the observed ``mean`` (σ = ``sd_logmean``)."""
    def r(mu):
        return (ops.log(mu) - math.log(mean)) * (math.sqrt(weight) / sd_logmean)
    return r


def _spectrum_objective(model, ps, data, nimg, bins, w, objective, mean_residual=None):
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


def _fit_errors(objective, loss, residuals, vals, names):
    """Standard errors at the optimum: the inverse Hessian of the Whittle likelihood, or
    Gauss–Newton on the residuals. A report: a failure here gives no errors, never a failed fit."""
    try:
        if objective == "whittle":
            _, cov = observed_information_covariance(lambda th: loss(th, 0), vals, names)
            return _errors_from_cov(vals, cov, names)
        return _errors(residuals, vals, names)[0]
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return {}


def fit_mtf_blank(images=None, detector=None, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "gain"),
                  start=None, ps=None, mean=None, intensity=1.0, method="lbfgsb", maxiter=200, lr=0.1,
                  qmax_cycles=None, mean_weight=1.0, weighting="count", n_images=1, tol=1e-12,
                  objective="log_radial"):
    """Fit detector parameters to blank micrographs (or their power spectrum).

    Objective: the log radially averaged power-spectrum loss between the data and the
    expected spectrum :func:`blank_expected_ps` (rings of one Fourier pixel, DC
    excluded, out to the corner unless ``qmax_cycles``), plus ``mean_weight`` × the
    squared log ratio of the expected and observed image means (this pins the gain
    independently of N̄/DQE). Deterministic, so L-BFGS-B converges in a few dozen
    iterations; errors from Gauss–Newton with the exact Jacobian.

    Parameters
    ----------
    images : (n, ny, nx) or (ny, nx) blank micrographs; or give ``ps`` (FFT layout,
        as :func:`cutem.spectra.power_spectrum` makes it) and ``mean``.
    detector : :class:`cutem.params.Detector` with the fixed values (pixel size, dose,
        DQE, ...) and, for parameters not in ``start``, the start values.
    free : detector fields to fit.
    objective : ``"log_radial"`` (above) or ``"whittle"``: the 2D Whittle negative
        log-likelihood of the mean periodogram (:func:`whittle_nll`, every frequency to the
        corner, ``qmax_cycles`` ignored) plus the image mean's Gaussian term; its errors
        are the inverse observed information (:func:`observed_information_covariance`).
        The Cramér–Rao bound of this model is :func:`blank_crb`.
    """
    from .params import Detector
    from .spectra import RadialBins, power_spectrum

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
    theta0 = _detector_theta(detector)
    fixed = {k: v for k, v in theta0.items() if k not in free}
    par = Parametrisation(detector_free_params(detector, free, start), fixed)
    use_mean = mean is not None and mean > 0 and mean_weight > 0

    def model(theta):
        theta = expand_ratios(theta)
        return blank_expected_ps(shape, px, theta, intensity), blank_mean(px, theta, intensity)

    mean_res = _mean_residual(mean, mean_weight, sd_logmean) if use_mean else None
    residuals, loss = _spectrum_objective(model, ps, data, nimg, bins, w, objective, mean_res)
    res = fit(loss, par, method, maxiter=maxiter, lr=lr, tol=tol)
    vals = dict(fixed)
    vals.update(res.params)
    errs = _fit_errors(objective, loss, residuals, vals, par.names)
    phys = expand_ratios(vals)
    res.params = {k: float(phys[k]) for k in _free_physical(free)}
    det = detector.replace(**res.params)
    model = bins.average(np.asarray(unwrap(blank_expected_ps(shape, px, phys, intensity))))
    with np.errstate(divide="ignore", invalid="ignore"):   # the DC ring of mean-free data is 0
        resid = np.log(model) - np.log(data)
    profile = {"x": bins.q * px, "data": data, "model": model, "residual": resid, "weights": w}
    return MTFFit(det, res, errs, profile)


def blank_whittle_fisher(shape, pixel_size_A, detector, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta",
                                                              "gain"),
                         n_images=1, intensity=1.0, include_mean=True):
    """Fisher information of blank micrographs for the detector parameters ``free``.

    Model (the one :func:`fit_mtf_blank` fits): the periodogram P(q) of a blank image is,
    for q ≠ 0, exponential with mean S(q) = N̄/DQE · MTF(q)² + σ_r² (Whittle 1957; real
    images: P(q) = P(−q), self-conjugate frequencies χ²₁), and the image mean is Gaussian
    with mean μ = gain·N̄ and variance S(0)/n_pixels (MTF(0) = gain). For ``n_images``
    independent images

        I_ij = (n/2) Σ_{q ≠ 0, full plane} ∂_i log S ∂_j log S + n·n_pixels/S(0) · ∂_i μ ∂_j μ

    (the ½ counts each pair ±q once and gives self-conjugate frequencies the χ²₁ half
    weight; the mean's own variance dependence on θ, one scalar, is left out). The
    derivatives of the MTF are the analytic ones of :func:`cutem.detector._mtf_core`.
    With a, b, c all free they are replaced by r_b = b/a and r_c = c/a (as the fit does:
    the MTF depends on a, b, c only through their ratios).

    Returns ``(names, I)``: the parameter names (``mtf_b_over_a``, ``mtf_c_over_a`` for the
    ratios) and the Fisher matrix in those parameters.
    """
    from .detector import _freq2_cycles, _mtf_core, MTF_PARAM_NAMES

    theta = _detector_theta(detector)
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


def blank_crb(shape, pixel_size_A, detector, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "gain"),
              n_images=1, relative=True, **kw):
    """Cramér–Rao standard deviations from :func:`blank_whittle_fisher`: sqrt(diag I⁻¹), with
    the normalised a_n, b_n, c_n by the delta method from (r_b, r_c); relative to the true
    values when ``relative``. Returns {name: σ} (also the raw names of the fit)."""
    names, info = blank_whittle_fisher(shape, pixel_size_A, detector, free, n_images, **kw)
    cov = np.linalg.inv(info)
    theta = _detector_theta(detector)
    vals = dict(theta)
    if "mtf_b_over_a" in names:
        vals["mtf_b_over_a"] = theta["mtf_b"] / theta["mtf_a"]
        vals["mtf_c_over_a"] = theta["mtf_c"] / theta["mtf_a"]
    out = {k: float(np.sqrt(cov[i, i])) for i, k in enumerate(names)}
    out.update({k: float(v) for k, v in _ratio_errors(vals, cov, names).items()})
    if relative:
        nn = normalised_mtf_params(theta)
        ref = dict(vals)
        ref.update(nn)
        if "mtf_b_over_a" in names:     # the ratio fit's a, b, c are the normalised ones
            ref.update({"mtf_a": nn["a_n"], "mtf_b": nn["b_n"], "mtf_c": nn["c_n"]})
        out = {k: v / abs(ref[k]) for k, v in out.items()}
    return out


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
    from .detector import MTF, MTF_PARAM_NAMES
    from .params import Detector

    x = np.asarray(freq_cycles, dtype=np.float64)
    y = np.asarray(mtf_values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 3:
        raise InputError("fit_mtf_curve: frequency and MTF must be 1D arrays of the same length (>= 3)")
    if np.any(x < 0) or np.any(x > 0.5 + 1e-9):
        raise InputError("fit_mtf_curve: frequencies must be in cycles per pixel, 0..0.5")
    detector = detector or Detector(mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, gain=1.0)
    n = 2048
    line_x = np.arange(n // 2 + 1) / n     # 0..0.5 cycles/pixel
    # linear interpolation matrix from the line to the data frequencies
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
        psf = MTF()(delta, *[_as_input(theta[k]) for k in MTF_PARAM_NAMES])
        return ops.real(ops.fft2(psf))[0, : n // 2 + 1]

    def residuals(theta):
        m = ops.matmul(Wi, ops.reshape(model_line(theta), (n // 2 + 1, 1)))
        return (ops.reshape(m, (len(x),)) - y) * sw

    def loss(theta, _s):
        r = residuals(theta)
        return ops.sum(r * r)

    theta0 = _detector_theta(detector)
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
    errs, cov, r = _errors(residuals, vals, par.names)
    model = Wi @ np.asarray(unwrap(model_line(vals)))
    phys = expand_ratios(vals)
    res.params = {k: float(phys[k]) for k in _free_physical(free)}
    det = detector.replace(gain=1.0, **res.params)
    profile = {"x": x, "data": y, "model": model, "residual": model - y}
    return MTFFit(det, res, errs, profile)


# ====================================================== simulated vs real spectra
def simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf: CTFFit, detector,
                           signal_level, b_factor_A2):
    """Expected power spectrum of an ice-only specimen (FFT layout).

    A weak-phase amorphous-ice layer with a structure spectrum signal_level·exp(−B q²/2)
    (white, Debye–Waller-damped) imaged through the fitted CTF (:class:`cutem.optics.CTF2D`
    with the fitted defocus, astigmatism and amplitude contrast) and the fitted detector
    (:class:`cutem.detector.MTF` and its shot-noise level N̄/DQE):
    S(q) = MTF(q)² [N̄/DQE + signal_level · e^{−B q²/2} · CTF(q)²].
    """
    from .optics import CTF2D, PARAM_NAMES

    st = CTF2D(shape, pixel_size_A, voltage_kV, None, nyquist_cut=False, envelope=False)
    inp = _ctf_inputs(voltage_kV, cs_mm, defocus_u_A=ctf.defocus_u_A, defocus_v_A=ctf.defocus_v_A,
                      astigmatism_angle_rad=math.radians(ctf.astigmatism_angle_deg),
                      amplitude_contrast=ctf.amplitude_contrast)
    c, _ = st.apply(*[inp[k] for k in PARAM_NAMES])
    theta = _detector_theta(detector)
    noise = np.asarray(unwrap(blank_expected_ps(shape, pixel_size_A, theta)))
    m2 = noise / (theta["dose_e_per_A2"] * pixel_size_A ** 2 / theta["dqe"])
    qy, qx = B.freq_grid(shape, pixel_size_A, np, np.float64)
    q2 = qx ** 2 + qy ** 2
    return noise + m2 * signal_level * np.exp(-0.5 * b_factor_A2 * q2) * np.asarray(c) ** 2


def simulated_spectrum_correlation(ps, pixel_size_A, voltage_kV, cs_mm, ctf: CTFFit, centred=True,
                                   q_range=(1 / 30, 1 / 5), return_profiles=False):
    """Correlation of background-subtracted radial profiles: simulated vs real spectrum.

    1. A detector is fitted to the spectrum (:func:`fit_mtf_blank` on the spectrum, free
       MTF a, b, c, α, β and the noise level), giving MTF² and N̄/DQE.
    2. The ice signal level and its B-factor are fitted (B on a grid, level by linear least
       squares) to the part of the radial profile above the detector background.
    3. :func:`simulated_ice_spectrum` with the fitted optics and detector; both radial
       profiles are background-subtracted (:func:`cutem.spectra.subtract_background`,
       window of two Thon-ring periods in q²) and correlated over ``q_range``.
    """
    from .params import Detector
    from .spectra import RadialBins, subtract_background, to_corner

    ps = np.asarray(B.to_numpy(ps), dtype=np.float64)
    ps = to_corner(ps) if centred else ps
    shape = ps.shape
    det0 = Detector(nx=shape[1], ny=shape[0], pixel_size_A=pixel_size_A, dose_e_per_A2=1.0, dqe=1.0,
                    mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, gain=1.0)
    bins = RadialBins(shape, pixel_size_A)
    prof = bins.average(ps)
    # a first noise level from the outer half of the spectrum, so the fit starts nearby
    level = float(np.median(prof[len(prof) // 2:])) / 0.3 ** 2 / pixel_size_A ** 2
    det0 = det0.replace(dose_e_per_A2=min(max(level, 1e-9), 1e5))
    dfit = fit_mtf_blank(None, det0, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "dose_e_per_A2"),
                         ps=ps, mean=None, weighting="uniform").detector
    base = simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf, dfit, 0.0, 0.0)
    sig1 = simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf, dfit, 1.0, 0.0) - base
    pb, s1 = bins.average(base), bins.average(sig1)
    sel = (bins.q >= q_range[0]) & (bins.q <= q_range[1])
    best = None
    for bf in np.arange(0.0, 400.0, 10.0):
        g = s1 * np.exp(-0.5 * bf * bins.q ** 2)
        lv = max(float(np.dot(g[sel], (prof - pb)[sel]) / np.dot(g[sel], g[sel])), 0.0)
        r = (pb + lv * g - prof)[sel]
        if best is None or r @ r < best[0]:
            best = (float(r @ r), lv, bf)
    sim = simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf, dfit, best[1], best[2])
    psim = bins.average(sim)
    lam = _wavelength(voltage_kV)
    window = 2.0 / (lam * ctf.defocus_mean_A)       # two ring periods in q²
    wide = (bins.q >= 0.5 * q_range[0]) & (bins.q <= min(1.2 * q_range[1], bins.q.max()))
    a = subtract_background(prof[wide], bins.q[wide], window)
    b = subtract_background(psim[wide], bins.q[wide], window)
    inner = (bins.q[wide] >= q_range[0]) & (bins.q[wide] <= q_range[1])
    corr = float(np.corrcoef(a[inner], b[inner])[0, 1])
    if return_profiles:
        return corr, {"q": bins.q[wide][inner], "real": a[inner], "sim": b[inner], "detector": dfit}
    return corr


# ============================================================================ plots
def plot_fit_png(path, x, data, model, residual, title="", xlabel="", ylabel="", logy=False,
                 residual_label="residual", size=(720, 560)):
    """A two-panel PNG (data vs fit; residuals) drawn with Pillow (no matplotlib needed).

    Data are grey dots, the fit a red line, residuals a blue line about a zero line.
    """
    from PIL import Image, ImageDraw

    from .io import atomic_path

    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(data, dtype=np.float64)
    m = np.asarray(model, dtype=np.float64)
    r = np.asarray(residual, dtype=np.float64)
    W, H = size
    # Pillow's built-in bitmap font has ASCII only
    title, xlabel, ylabel, residual_label = (
        str(t).replace("Å", "A").replace("−", "-").replace("°", " deg").replace("±", "+/-")
        .encode("ascii", "replace").decode() for t in (title, xlabel, ylabel, residual_label))
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    left, right = 70, W - 20
    top1, bot1 = 30, int(H * 0.66)
    top2, bot2 = bot1 + 30, H - 40

    def tr(v):
        return np.log10(np.maximum(v, 1e-300)) if logy else v

    yd, ym = tr(d), tr(m)
    ok = np.isfinite(yd) & np.isfinite(ym)
    lo = float(min(yd[ok].min(), ym[ok].min())) if ok.any() else 0.0
    hi = float(max(yd[ok].max(), ym[ok].max())) if ok.any() else 1.0
    if hi <= lo:
        hi = lo + 1
    x0, x1 = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1

    def px(v):
        return left + (v - x0) / (x1 - x0) * (right - left)

    def py(v, a, b, t, bt):
        return bt - (v - a) / (b - a) * (bt - t)

    for (t, b) in ((top1, bot1), (top2, bot2)):
        dr.rectangle([left, t, right, b], outline="black")
    for xi, yi in zip(x[ok], yd[ok]):
        X, Y = px(xi), py(yi, lo, hi, top1, bot1)
        dr.ellipse([X - 1.5, Y - 1.5, X + 1.5, Y + 1.5], fill=(120, 120, 120))
    pts = [(px(xi), py(yi, lo, hi, top1, bot1)) for xi, yi in zip(x[ok], ym[ok])]
    if len(pts) > 1:
        dr.line(pts, fill=(220, 0, 0), width=2)
    rr = r[np.isfinite(r)]
    ra = float(np.max(np.abs(rr))) if rr.size else 1.0
    ra = ra if ra > 0 else 1.0
    dr.line([(left, py(0, -ra, ra, top2, bot2)), (right, py(0, -ra, ra, top2, bot2))], fill=(150, 150, 150))
    pts = [(px(xi), py(ri, -ra, ra, top2, bot2)) for xi, ri in zip(x, r) if np.isfinite(ri)]
    if len(pts) > 1:
        dr.line(pts, fill=(0, 0, 200), width=1)
    dr.text((left, 8), title, fill="black")
    dr.text((left + 4, top1 + 4), f"{ylabel}{' (log10)' if logy else ''}: data (grey), fit (red)", fill="black")
    dr.text((4, top1), f"{hi:.3g}", fill="black")
    dr.text((4, bot1 - 12), f"{lo:.3g}", fill="black")
    dr.text((left + 4, top2 + 4), residual_label, fill="black")
    dr.text((4, top2), f"{ra:+.2g}", fill="black")
    dr.text((4, bot2 - 12), f"{-ra:+.2g}", fill="black")
    dr.text((left, bot2 + 6), f"{x0:.3g}", fill="black")
    dr.text((right - 60, bot2 + 6), f"{x1:.3g}", fill="black")
    dr.text(((left + right) // 2 - 40, bot2 + 20), xlabel, fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


# ============================================== simulation-based (stochastic) objectives
class SimulationObjective:
    """A loss between simulated and reference micrographs, for :func:`fit`.

    Each evaluation simulates ``n_sim`` images through :func:`cutem.detector.detect` with
    the current parameters and compares them with the references by ``loss``:

    * ``"ffl"`` — :func:`focal_frequency_loss`, image i against reference i (the paper's);
    * ``"pixel"`` — :func:`pixel_loss`, paired images;
    * ``"log_ps"`` — :func:`log_radial_ps_loss` of the simulated batch's mean spectrum
      against the references' ring-averaged spectrum;
    * ``"ps2d"`` — :func:`ps2d_loss` of the mean 2D spectra (log).

    ``estimator``: ``"pathwise"`` (reparametrised counts; the gradient of the loss) or
    ``"score"`` (integer Poisson/Wald draws; the function returns the surrogate
    L + (L − b)·log p whose gradient is the score-function estimate, b the mean loss of
    the earlier evaluations — a running baseline). ``crn=True`` uses the same random
    draw at every evaluation (common random numbers: the objective is then a
    deterministic function, so L-BFGS-B applies); otherwise evaluation k uses seed + k.
    The loss values (not the surrogates) are kept in ``losses``.
    """

    def __init__(self, references, detector, intensity=1.0, loss="log_ps", estimator="pathwise",
                 crn=True, seed=0, n_sim=None):
        from .spectra import RadialBins, power_spectrum

        if loss not in ("ffl", "pixel", "log_ps", "ps2d"):
            raise InputError(f"loss must be ffl, pixel, log_ps or ps2d, not {loss!r}")
        if estimator not in ("pathwise", "score"):
            raise InputError(f"estimator must be pathwise or score, not {estimator!r}")
        refs = np.asarray(B.to_numpy(references), dtype=np.float64)
        self.refs = refs if refs.ndim == 3 else refs[None]
        self.detector, self.intensity = detector, intensity
        self.loss, self.estimator, self.crn, self.seed = loss, estimator, crn, int(seed)
        self.n_sim = int(n_sim or self.refs.shape[0])
        if loss in ("ffl", "pixel") and self.n_sim != self.refs.shape[0]:
            raise InputError("paired losses (ffl, pixel) need as many simulated as reference images")
        shape = self.refs.shape[-2:]
        self.bins = RadialBins(shape, 1.0)
        self.ref_ps = power_spectrum(self.refs)
        self.ref_profile = self.bins.average(self.ref_ps)
        self.losses = []

    def __call__(self, theta, step):
        from .detector import PARAM_NAMES, detect, score_surrogate

        theta = expand_ratios(theta)
        params = {k: (v if isinstance(v, Var) else np.asarray(float(v))) for k, v in theta.items()
                  if k in PARAM_NAMES}
        seed = self.seed if self.crn else self.seed + step
        shape = (self.n_sim,) + self.refs.shape[-2:]
        intensity = np.full(shape, float(self.intensity))
        d = detect(intensity, self.detector, rng=seed, estimator=self.estimator, params=params)
        img = d.image
        if self.loss == "ffl":
            L = focal_frequency_loss(img, self.refs)
        elif self.loss == "pixel":
            L = pixel_loss(img, self.refs)
        else:
            n = shape[1] * shape[2]
            centred = img - ops.mean(img, axis=(1, 2), keepdims=True)
            ps = ops.mean(ops.abs2(ops.fft2(centred)), axis=0) * (1.0 / n)
            if self.loss == "log_ps":
                L = log_radial_ps_loss(ps, self.ref_profile, self.bins)
            else:
                mask = np.ones(self.ref_ps.shape)
                mask[0, 0] = 0.0
                floor = np.where(mask > 0, self.ref_ps, 1.0)
                L = ps2d_loss(ps + 1e-30, floor, mask)
        lv = float(B.to_numpy(unwrap(L)))
        if self.estimator == "score":
            base = float(np.mean(self.losses)) if self.losses else lv
            self.losses.append(lv)
            return score_surrogate(L, d.log_prob, base)
        self.losses.append(lv)
        return L


def fit_mtf_simulated(objective: SimulationObjective, detector, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha",
                                                                      "mtf_beta", "gain"),
                      start=None, method="adam", maxiter=100, lr=0.05):
    """Fit detector parameters with a :class:`SimulationObjective` (stochastic or CRN).

    Uncertainties come from the expected-spectrum model at the fitted values
    (:func:`fit_mtf_blank`'s Gauss–Newton), and the profile shows that model against the
    references' spectrum.
    """
    theta0 = _detector_theta(detector)
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


# ============================================== micrographs with a specimen (closed form)
#: pseudo-parameters of :func:`fit_mtf_specimen` besides the detector fields
SPECIMEN_FIT_NAMES = ("ice_thickness_A", "thickness_center_A", "thickness_edge_A", "defocus_A",
                      "defocus_u_A", "defocus_v_A")
_SPECIMEN_BOUNDS = {"ice_thickness_A": (0.0, 1e5), "thickness_center_A": (0.0, 1e5),
                    "thickness_edge_A": (0.0, 1e5), "defocus_A": (-2e5, 2e5), "defocus_u_A": (-2e5, 2e5),
                    "defocus_v_A": (-2e5, 2e5)}


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

        S(q) = |FFT[m − m̄]|²/n + MTF(q)² · mean(N̄)/DQE + σ_readout²,

    and the expected image mean is gain·mean(N̄). Parameters (``theta``) are the detector
    fields (:data:`cutem.detector.PARAM_NAMES`, Vars where free), optics fields
    (:data:`cutem.optics.PARAM_NAMES`), ``defocus_A`` (u = v), ``thickness_center_A``,
    ``thickness_edge_A`` and ``ice_thickness_A`` (both thicknesses shifted together by the
    same amount, keeping the config's centre–edge difference).
    """

    def __init__(self, cfg, tilt=0, scene=None, free=()):
        from .imaging import ImageModel, stack_z_range, tilt_settings
        from .specimen import scene_from_config

        cfg = cfg.replace(simulation=cfg.simulation.replace(dtype="float64"))
        self.cfg = cfg
        s = cfg.sample
        self.thickness_free = any(k in free for k in ("ice_thickness_A", "thickness_center_A", "thickness_edge_A"))
        z_range = None
        scene = scene if scene is not None else scene_from_config(cfg)
        if self.thickness_free:
            if not s.ice:
                raise InputError("fit: the ice thickness is free but [sample] ice = false")
            if s.ice_absorption <= 0 and cfg.simulation.method == "projection":
                raise InputError("fit: the ice thickness is not identifiable with [sample] ice_absorption = 0 "
                                 "(a uniform ice layer is then a pure phase: the image does not depend on it); "
                                 "set ice_absorption > 0")
            if cfg.simulation.method == "multislice":
                # the slice stack must hold the thickest ice the fit may try
                t = min(1e5, max(s.thickness_center_A, s.thickness_edge_A) * 3 + 1000)
                big = cfg.replace(sample=s.replace(thickness_center_A=t, thickness_edge_A=t))
                angle = tilt_settings(cfg, tilt)[0]
                from .grid import Grid

                z_range = stack_z_range(big, Grid.from_config(cfg), angle,
                                        scene.z_extent(angle, cfg.geometry.tilt_axis_deg) if len(scene) else None)
        self.model = ImageModel.from_config(cfg, tilt, scene=scene, xp=np, dtype=np.float64, z_range_A=z_range)
        self.grid, self.angle = self.model.grid, self.model.angle_deg
        self.optics, self.detector, self.atoms = self.model.optics, self.model.detector, self.model.atoms

    def theta0(self):
        """Every parameter the model knows, at the config's values (floats)."""
        th = _detector_theta(self.detector)
        from .optics import optics_inputs

        th.update({k: float(v) for k, v in optics_inputs(self.optics).items()})
        s = self.cfg.sample
        th.update({"thickness_center_A": s.thickness_center_A, "thickness_edge_A": s.thickness_edge_A,
                   "ice_thickness_A": s.thickness_center_A,
                   "defocus_A": 0.5 * (self.optics.defocus_u_A + self.optics.defocus_v_A)})
        return th

    def __call__(self, theta):
        """(S (2D, FFT layout), expected image mean), both taped, for ``theta``."""
        from . import detector as D
        from . import optics as O

        th = dict(self.theta0())
        th.update(expand_ratios(theta))
        if "defocus_A" in theta:
            th["defocus_u_A"] = th["defocus_v_A"] = th["defocus_A"]
        params = {k: _as_input(th[k]) for k in tuple(O.PARAM_NAMES) + tuple(D.PARAM_NAMES)}
        if self.thickness_free:
            tc, te = th["thickness_center_A"], th["thickness_edge_A"]
            if "ice_thickness_A" in theta:
                # centre and edge shifted together, keeping the config's difference
                s = self.cfg.sample
                tc = th["ice_thickness_A"]
                te = tc + (s.thickness_edge_A - s.thickness_center_A)
            params.update(thickness_center_A=_as_input(tc), thickness_edge_A=_as_input(te))
        det = self.model.render(params, estimator="none")
        img = det.image
        ny, nx = self.grid.detector_shape
        n = ny * nx
        mean_img = ops.mean(img)
        sig = ops.abs2(ops.fft2(img - mean_img)) * (1.0 / n)
        S = sig
        if self.detector.quantized:
            m = mtf_on_grid((ny, nx), th)
            S = S + (m * m) * (ops.mean(det.expected_counts) / th["dqe"])
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
    from .spectra import RadialBins, power_spectrum

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
    mean_res = _mean_residual(mean, mean_weight, sd_logmean) if use_mean else None
    residuals, loss = _spectrum_objective(model, ps, data, nimg, bins, w, objective, mean_res)
    res = fit(loss, par, method, maxiter=maxiter, lr=lr, tol=tol)
    vals = dict(res.params)
    errs = _fit_errors(objective, loss, residuals, vals, par.names)
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
