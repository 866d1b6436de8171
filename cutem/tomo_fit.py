"""Tomogram by fitting: the volume is the unknown of the tilt-series forward model.

The model of tilt t's image (contrast units, e.g. I / mean − 1) is

    m_t(x) = M ⊛ (C_t ⊛ P_t x) + c_t,

with P_t the projector of :class:`cutem.tomo.Project`, C_t the tilt's CTF sin-form
(:class:`cutem.optics.CTF2D` at the tilt's defocus; optional), M the detector MTF
(:class:`cutem.detector.MTF`, normalised to 1 at zero frequency; optional) and c_t a
per-tilt offset (the images' mean is not known in contrast units). The tomogram is the
minimiser of the negative log posterior of a Gaussian noise model with a variance σ_t²
per tilt and a smoothness prior,

    L(x, c) = ½ Σ_t ‖m_t(x) − b_t‖² / σ_t²  +  λ · R(x),

    R(x) = Σ_voxels sqrt(|∇x|² + ε²) / ε          ("tv", Charbonnier total variation;
           Charbonnier et al., IEEE TIP 6:298, 1997), or
    R(x) = ½ Σ_voxels |∇x|² / ε²                  ("laplacian": the Gaussian prior whose
           precision is the discrete Laplacian),

∇ the forward differences of :class:`ForwardDifferences`, optionally subject to x ≥ 0
(L-BFGS-B's bounds; Byrd, Lu, Nocedal & Zhu, SIAM J. Sci. Comput. 16:1190, 1995). ε is
the gradient scale below which the prior is quadratic; it is set from the data (the
noise of a voxel of the least-squares tomogram, :func:`_gradient_scale`) so that λ is
dimensionless and one default serves any stack. The gradient of L is exact: every step
is a stage on an :class:`adjoints.stage.Tape` (projector transpose, FFTs, MTF VJP).

λ, when not given, is chosen like SIRT's iteration count (:func:`cutem.tomo.sirt`): a fit
to the even-numbered tilts predicts the odd ones for each λ of a short ladder, and the
full series is fitted with the best.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import adjoints.backend as B
from adjoints import ops
from adjoints.optim import minimize_lbfgsb
from adjoints.stage import Stage, Tape, register

from .errors import InputError
from .tomo import Project, _axis_quarter_turns, _check_stack

PRIORS = ("tv", "laplacian")
#: the λ ladder tried on the held-out tilts when no prior weight is given
PRIOR_LADDER = (0.3, 1.0, 3.0, 10.0)


@register
class ForwardDifferences(Stage):
    """∇x: forward differences of an n-D array along every axis, (ndim, *shape).

    (∇x)_a[i] = x[i + e_a] − x[i] with zero in the last plane of axis a (Neumann
    boundary). Linear; the adjoint is minus the matching backward-difference divergence,
    (∇ᵀg)[i] = Σ_a g_a[i − e_a] − g_a[i] with g_a[−1] = 0 and the last plane's g_a unused.
    """

    linear = True

    def forward(self, ctx, x):
        xp = B.array_module(x)
        out = xp.zeros((x.ndim,) + x.shape, dtype=x.dtype)
        for a in range(x.ndim):
            hi = [slice(None)] * x.ndim
            lo = [slice(None)] * x.ndim
            hi[a], lo[a] = slice(1, None), slice(None, -1)
            out[(a,) + tuple(lo)] = x[tuple(hi)] - x[tuple(lo)]
        return out

    def adjoint(self, ctx, g):
        xp = B.array_module(g)
        nd = g.ndim - 1
        out = xp.zeros(g.shape[1:], dtype=g.dtype)
        for a in range(nd):
            hi = [slice(None)] * nd
            lo = [slice(None)] * nd
            hi[a], lo[a] = slice(1, None), slice(None, -1)
            ga = g[a][tuple(lo)]
            out[tuple(hi)] += ga
            out[tuple(lo)] -= ga
        return out

    @classmethod
    def cases(cls, xp, dtype, rng):
        from adjoints.ops import _rand
        return [(cls(), (_rand(rng, (4, 5, 3), dtype, xp),)), (cls(), (_rand(rng, (6, 7), dtype, xp),))]


def tilt_ctfs(shape, pixel_size_A, optics, defocus_A):
    """The CTF sin-form (FFT grid) of every tilt, (n_tilts, ny, nx), from ``optics``
    (:class:`cutem.params.Optics`) with its defocus replaced by ``defocus_A[t]`` (Å, + =
    underfocus, astigmatism kept as the difference u − v)."""
    from .optics import ctf_2d

    half = 0.5 * (optics.defocus_u_A - optics.defocus_v_A)
    return np.stack([ctf_2d(shape, pixel_size_A, optics.replace(defocus_u_A=float(d) + half,
                                                                 defocus_v_A=float(d) - half))
                     for d in np.atleast_1d(defocus_A)])


def mtf_inputs(detector, xp=np, dtype=np.float64):
    """``(params, dc)``: the 8 inputs of :class:`cutem.detector.MTF` for ``detector`` and the
    MTF's value at zero frequency (its gain), by which the model divides."""
    from .detector import MTF_PARAM_NAMES, mtf

    prm = tuple(xp.asarray(float(getattr(detector, k)), dtype=dtype) for k in MTF_PARAM_NAMES)
    dc = float(B.to_numpy(mtf((2, 2), {k: float(getattr(detector, k)) for k in MTF_PARAM_NAMES}))[0, 0])
    return prm, dc


@dataclass
class FitReconstruction:
    volume: object            #: the fitted tomogram (nz, ny, nx), units of the data per voxel length
    offsets: np.ndarray       #: fitted per-tilt offsets c_t
    prior_weight: float       #: λ used for the full series
    loss: list                #: L at every evaluation of the full fit
    iterations: int           #: L-BFGS-B iterations of the full fit
    heldout: dict = None      #: {λ: relative misfit of the odd tilts predicted from the even ones}


class _Model:
    """The forward model of one geometry and transfer, as a function of (x, c) on a tape."""

    def __init__(self, angles_deg, axis_deg, origin, ctf, mtf, xp, dtype):
        self.project = Project(angles_deg, axis_deg, origin=origin)
        self.ctf = None if ctf is None else xp.asarray(ctf, dtype=dtype)
        self.mtf = None
        if mtf is not None:
            from .detector import MTF

            prm, dc = mtf_inputs(mtf, xp, dtype)
            self.mtf, self.mtf_prm, self.mtf_dc = MTF(), prm, dc

    def __call__(self, x, c):
        y = self.project(x)
        if self.ctf is not None:
            y = ops.real(ops.ifft2(ops.fft2(y) * self.ctf))
        if self.mtf is not None:
            y = self.mtf(y, *self.mtf_prm) * (1.0 / self.mtf_dc)
        return y + ops.reshape(c, (-1, 1, 1))


def _noise_var(stack):
    """σ_t² per tilt: the variance of each image (the signal is a small part of it at
    tomographic doses; an overestimate only makes the prior relatively stronger)."""
    xp = B.array_module(stack)
    return xp.maximum(stack.reshape(stack.shape[0], -1).var(axis=1), 1e-30)


def _gradient_scale(n_tilts, noise_var):
    """ε: the noise of one voxel of the least-squares tomogram, σ / sqrt(n_tilts) (a voxel is
    the mean of about n_tilts pixels), in the data's units per voxel length."""
    return float(np.sqrt(np.mean(B.to_numpy(noise_var)) / max(n_tilts, 1)))


def _prior(x, kind, eps):
    d = ForwardDifferences()(x)
    g2 = ops.sum(d * d, axis=0)
    if kind == "tv":
        return ops.sum(ops.sqrt(g2 + eps * eps)) * (1.0 / eps)
    return ops.sum(g2) * (0.5 / (eps * eps))


def _fit(stack, model, vol_shape, noise_var, prior, weight, eps, positivity, iterations, x0, progress):
    xp = B.array_module(stack)
    inv_var = (1.0 / noise_var).reshape(-1, 1, 1)
    history = []

    def value_and_grad(p):
        with Tape() as tape:
            x, c = tape.watch(p["x"]), tape.watch(p["c"])
            r = model(x, c) - stack
            loss = ops.sum(r * r * inv_var) * 0.5 + _prior(x, prior, eps) * weight
        gx, gc = tape.gradient(loss, [x, c])
        val = float(B.to_numpy(loss.value))
        history.append(val)
        if progress is not None:
            progress(len(history) - 1, val)
        return val, {"x": gx, "c": gc}

    start = {"x": xp.zeros(vol_shape, dtype=stack.dtype) if x0 is None else xp.asarray(x0, dtype=stack.dtype),
             "c": stack.reshape(stack.shape[0], -1).mean(axis=1)}
    if positivity:
        start["x"] = xp.maximum(start["x"], 0)
    best, res = minimize_lbfgsb(value_and_grad, start, bounds={"x": (0.0, None)} if positivity else None,
                                maxiter=int(iterations))
    return best, history, int(res.nit)


def fit_reconstruct(stack, angles_deg, axis_deg=0.0, thickness=None, ctf=None, mtf=None, prior="tv",
                    prior_weight=None, positivity=False, iterations=60, noise_var=None, origin="fft",
                    progress=None):
    """The tomogram that maximises the posterior of the forward model (module docstring).

    Parameters
    ----------
    stack : (n_tilts, ny, nx) images in contrast units (mean-free up to the fitted offsets).
    angles_deg, axis_deg, thickness, origin : geometry as in :func:`cutem.tomo.wbp`.
    ctf : optional (n_tilts, ny, nx) transfer on the FFT grid (:func:`tilt_ctfs`).
    mtf : optional :class:`cutem.params.Detector` whose MTF blurs the images.
    prior : "tv" or "laplacian"; ``prior_weight`` λ (None: chosen on held-out tilts from
        :data:`PRIOR_LADDER`); ``positivity``: constrain x ≥ 0.
    iterations : most L-BFGS-B iterations (per fit).
    noise_var : σ_t² per tilt (default: :func:`_noise_var`).
    """
    xp = B.array_module(stack)
    _check_stack(stack, angles_deg)
    if prior not in PRIORS:
        raise InputError(f"fit prior must be one of {', '.join(PRIORS)}, not {prior!r}")
    if prior_weight is not None and not prior_weight >= 0:
        raise InputError(f"fit prior weight = {prior_weight} must be non-negative")
    if int(iterations) < 1:
        raise InputError(f"fit iterations = {iterations} must be at least 1")
    if ctf is not None and tuple(np.shape(ctf)) != tuple(stack.shape):
        raise InputError(f"fit: CTF stack of shape {np.shape(ctf)} for a tilt stack of shape {stack.shape}")
    angles_deg = [float(a) for a in angles_deg]
    k = _axis_quarter_turns(axis_deg)
    nz = int(thickness) if thickness else (stack.shape[2] if (k or 0) % 2 else stack.shape[1])
    vol_shape = (nz,) + stack.shape[1:]
    nv = xp.asarray(noise_var if noise_var is not None else _noise_var(stack), dtype=stack.dtype)
    eps = _gradient_scale(len(angles_deg), nv)
    heldout = None
    if prior_weight is None:
        even, odd = list(range(0, len(angles_deg), 2)), list(range(1, len(angles_deg), 2))
        pick = (lambda a, idx: None if a is None else a[idx])
        m_even = _Model([angles_deg[i] for i in even], axis_deg, origin, pick(ctf, even), mtf, xp, stack.dtype)
        m_odd = _Model([angles_deg[i] for i in odd], axis_deg, origin, pick(ctf, odd), mtf, xp, stack.dtype)
        b_odd = stack[odd]
        heldout = {}
        for lam in PRIOR_LADDER:
            p, _, _ = _fit(stack[even], m_even, vol_shape, nv[even], prior, lam, eps, positivity, iterations,
                           None, None)
            pred = m_odd(p["x"], xp.zeros(len(odd), dtype=stack.dtype))
            pred = pred - pred.reshape(len(odd), -1).mean(axis=1)[:, None, None]
            d = b_odd - b_odd.reshape(len(odd), -1).mean(axis=1)[:, None, None]
            heldout[lam] = float(B.to_numpy(((d - pred) ** 2).sum() / (d * d).sum()))
        prior_weight = min(heldout, key=heldout.get)
    model = _Model(angles_deg, axis_deg, origin, ctf, mtf, xp, stack.dtype)
    best, history, nit = _fit(stack, model, vol_shape, nv, prior, float(prior_weight), eps, positivity,
                              iterations, None, progress)
    return FitReconstruction(best["x"], B.to_numpy(best["c"]), float(prior_weight), history, nit, heldout)
