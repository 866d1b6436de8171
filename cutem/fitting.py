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
    px = n / (2.0 * qmax) / n * 1.0  # pixel so that Nyquist = qmax
    px = 0.5 / qmax
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
            defocus_step_A=None, degree=6, max_astigmatism_A=1500.0, maxiter=100):
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
    dsel = (dsel - dsel.mean()) / np.linalg.norm(dsel - dsel.mean())

    def model(theta):
        inp = _ctf_inputs(voltage_kV, cs_mm, **theta)
        c = stage(*[inp[k] for k in PARAM_NAMES])
        return c * c

    def corr_plain(du, dv, ang, w):
        m = np.asarray(model({"defocus_u_A": du, "defocus_v_A": dv, "astigmatism_angle_rad": ang,
                              "amplitude_contrast": w})).ravel()[idx]
        m = m - m.mean()
        return float(m @ dsel / np.linalg.norm(m))

    best = (corr_plain(d1, d1, 0.0, amplitude_contrast), d1, d1, 0.0)
    astig_grid = np.arange(step / 2, max_astigmatism_A + 1e-9, step / 2)
    for da in astig_grid:
        for ang in np.deg2rad(np.arange(0, 180, 15.0)):
            for dm in (d1 - step / 4, d1, d1 + step / 4):
                sc = corr_plain(dm + da / 2, dm - da / 2, ang, amplitude_contrast)
                if sc > best[0]:
                    best = (sc, dm + da / 2, dm - da / 2, ang)

    # -- 3. gradient refinement
    free = [FreeParam("defocus_u_A", best[1], 0.0, None, "bounds", 1000.0),
            FreeParam("defocus_v_A", best[2], 0.0, None, "bounds", 1000.0),
            FreeParam("astigmatism_angle_rad", best[3], None, None, "bounds", 0.1)]
    fixed = {}
    if fit_amplitude:
        free.append(FreeParam("amplitude_contrast", amplitude_contrast, 0.0, 0.5, "bounds", 0.1))
    else:
        fixed["amplitude_contrast"] = amplitude_contrast
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
        nsub = min(300, len(idx))
        sub = np.random.default_rng(0).choice(len(idx), size=nsub, replace=False)

        def resid_sub(theta):
            return resid(theta)[np.asarray(sub)]
        se, _, _ = gauss_newton_covariance(resid_sub, mtheta, names)
        errs = {k: float(v) * math.sqrt(nsub / len(idx)) for k, v in se.items()}
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
                  time.perf_counter() - t0, res.iterations, (qlo, qhi), errs, profile)


def _wavelength(voltage_kV):
    from .electron import wavelength_A

    return wavelength_A(voltage_kV)
