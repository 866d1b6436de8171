"""The CTF from a power spectrum: defocus (u, v), astigmatism angle and amplitude contrast.

:func:`fit_ctf` (a 1D defocus search on the radial profile, a 2D astigmatism grid, then
L-BFGS-B through the exact gradient of :class:`cutem.optics.CTF2D`) returns :class:`CTFFit`
in RELION's conventions.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

import adjoints.backend as B
from adjoints import Var, ops, unwrap
from adjoints.fit import FreeParam, Parametrisation, fit, gauss_newton_covariance

from ..electron import wavelength_A
from ..errors import InputError
from ..optics import CTF2D, PARAM_NAMES, optics_inputs
from ..params import Optics
from ..spectra import RadialBins, smooth_basis, to_centre, to_corner
from .losses import correlation_loss


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


def ctf_inputs(voltage_kV, cs_mm, xp=np, dtype=np.float64, **over):
    """Inputs of :class:`cutem.optics.CTF2D` for a ``voltage_kV``/``cs_mm`` microscope, with the
    entries of ``over`` (numbers or Vars) replacing the defaults."""
    p = optics_inputs(Optics(voltage_kV=voltage_kV, cs_mm=cs_mm), xp, dtype)
    for k, v in over.items():
        p[k] = v if isinstance(v, Var) else xp.asarray(v, dtype=dtype)
    return p


def ctf_squared_profile(q, defocus_A, voltage_kV, cs_mm, amplitude_contrast, oversample=8):
    """CTF² (no envelope) of a round (non-astigmatic) CTF at frequencies ``q`` (1/Å).

    Evaluated with :class:`cutem.optics.CTF2D` on a one-row grid along x, finely sampled,
    and interpolated to ``q`` (a small helper: the optics module works on 2D grids).
    """
    qmax = float(np.max(q)) * 1.01
    n = int(oversample * len(q)) * 2 + 2
    px = 0.5 / qmax   # the line's Nyquist is q_max
    st = CTF2D((1, n), px, voltage_kV, None, nyquist_cut=False, envelope=False)
    inputs = ctf_inputs(voltage_kV, cs_mm, defocus_u_A=defocus_A, defocus_v_A=defocus_A,
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
    t0 = time.perf_counter()
    ps = np.asarray(B.to_numpy(ps), dtype=np.float64)
    if ps.ndim != 2:
        raise InputError(f"fit_ctf: the power spectrum must be 2D, got shape {ps.shape}")
    ps = to_corner(ps) if centred else ps
    qlo, qhi = float(q_range[0]), float(q_range[1])
    nyq = 0.5 / pixel_size_A
    if not 0 < qlo < qhi <= nyq * 1.0001:
        raise InputError(f"fit_ctf: q range ({qlo:.4g}, {qhi:.4g}) 1/Å must lie in (0, Nyquist = {nyq:.4g}]")
    lam = wavelength_A(voltage_kV)
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
        inp = ctf_inputs(voltage_kV, cs_mm, **theta)
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
