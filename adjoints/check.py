"""Adjoint and gradient checks: dot test, VJP against finite differences, Taylor test.

- :func:`dottest` (linear stages): |<Ax, y> − <x, A^H y>| normalised by ‖Ax‖‖y‖, plus the
  least-squares ratio of the two sides over several random pairs, so an adjoint off by
  a constant factor (a forgotten 1/N) fails even when each pair looks plausible
  (ODL/Devito practice).
- :func:`check_vjp`: <u, J v> by central finite differences against <VJP(u), v>, with
  random u and v, in float64, for real and imaginary directions of complex inputs
  separately (autograd's check_vjp idea).
- :func:`taylor_test`: for a scalar f with gradient g, |f(x+hd) − f(x)| falls as h and
  |f(x+hd) − f(x) − h<g, d>| as h²; the fitted slopes are reported.

Inner products are real: <a, b> = Re Σ conj(a) b, the one under which the complex
cotangent convention of DESIGN.md is the gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import backend as B
from .ops import _rand
from .stage import is_differentiable


def inner(a, b) -> float:
    """Real inner product Re Σ conj(a)·b, as a Python float."""
    xp = B.array_module(a, b)
    return float(B.to_numpy(xp.vdot(xp.asarray(a).ravel(), xp.asarray(b).ravel()).real))


def _norm(a) -> float:
    return float(np.sqrt(max(inner(a, a), 0.0)))


def _cast(x, dtype):
    """Cast a float/complex input to the float precision ``dtype`` (keeps complexness)."""
    if not is_differentiable(x) or np.isscalar(x):
        return x
    target = B.complex_dtype(dtype) if x.dtype.kind == "c" else np.dtype(dtype)
    return x.astype(target)


@dataclass
class DotResult:
    error: float          #: worst normalised |<Ax,y> − <x,A^H y>| / (‖Ax‖‖y‖)
    ratio: float          #: fitted <Ax,y> / <x,A^H y> over the trials
    passed: bool
    lhs: list = field(default_factory=list)
    rhs: list = field(default_factory=list)


def dottest(stage, inputs, rng=None, trials=4, tol=None) -> DotResult:
    """Dot test of a linear stage in its first input, the other inputs held fixed."""
    rng = np.random.default_rng(0) if rng is None else rng
    x0 = inputs[0]
    xp = B.array_module(x0)
    real = B.real_dtype(x0.dtype)
    tol = tol if tol is not None else (1e-10 if real == np.float64 else 1e-5)
    lhs, rhs, errs = [], [], []
    for _ in range(trials):
        x = _rand(rng, x0.shape, x0.dtype, xp)
        ax, ctx = stage.apply(x, *inputs[1:])
        y = _rand(rng, ax.shape, ax.dtype, xp)
        ahy = stage.adjoint(ctx, y)
        a, b = inner(ax, y), inner(x, ahy)
        lhs.append(a)
        rhs.append(b)
        errs.append(abs(a - b) / max(_norm(ax) * _norm(y), 1e-300))
    l, r = np.array(lhs), np.array(rhs)
    ratio = float(l @ r / max(r @ r, 1e-300))
    err = float(max(errs))
    return DotResult(err, ratio, bool(err < tol and abs(ratio - 1) < max(tol, 1e-12) * 10), lhs, rhs)


@dataclass
class VJPResult:
    error: float          #: worst relative |<u,Jv>_fd − <VJP u, v>| over the directions
    passed: bool
    details: list = field(default_factory=list)  #: (direction label, fd, vjp, rel. error)


def _directions(inputs, rng, stage):
    """Random directions: one per differentiable input, real and imaginary separately."""
    dirs = []
    for i, x in enumerate(inputs):
        if i in stage.nondiff or not is_differentiable(x):
            continue
        xp = B.array_module(x)
        if np.isscalar(x):
            x = np.asarray(x)
        real = B.real_dtype(x.dtype)
        v = _rand(rng, np.shape(x), real, xp) if np.ndim(x) else xp.asarray(rng.standard_normal(), dtype=real)
        if x.dtype.kind == "c":
            dirs.append((f"in{i}.re", i, v.astype(x.dtype)))
            dirs.append((f"in{i}.im", i, (1j * v).astype(x.dtype)))
        else:
            dirs.append((f"in{i}", i, v))
    return dirs


def check_vjp(stage, inputs, rng=None, tol=1e-6, eps=None, reference_dtype=np.float64) -> VJPResult:
    """Compare the stage's VJP with central finite differences along random directions.

    The VJP is evaluated at the inputs' own precision; the finite differences always in
    ``reference_dtype`` (float64), so a float32 run measures the float32 VJP against an
    accurate reference (use a looser ``tol`` there).
    """
    rng = np.random.default_rng(1) if rng is None else rng
    out, ctx = stage.apply(*inputs)
    xp = B.array_module(out)
    u = _rand(rng, out.shape, out.dtype, xp) if out.ndim else xp.asarray(rng.standard_normal(), dtype=out.dtype)
    cts = stage.cotangents(ctx, u, inputs)

    ref_inputs = [_cast(x, reference_dtype) for x in inputs]
    u_ref = _cast(u, reference_dtype)
    details, worst = [], 0.0
    for label, i, v in _directions(inputs, rng, stage):
        v_ref = _cast(v, reference_dtype)
        xi = ref_inputs[i]
        scale = max(_norm(xi) / max(xi.size if hasattr(xi, "size") else 1, 1) ** 0.5, 1.0)
        h = eps if eps is not None else 1e-6 * scale / max(_norm(v_ref) / max(v_ref.size, 1) ** 0.5, 1e-300)
        plus = list(ref_inputs)
        minus = list(ref_inputs)
        plus[i] = xi + h * v_ref
        minus[i] = xi - h * v_ref
        fp, _ = stage.apply(*plus)
        fm, _ = stage.apply(*minus)
        fd = inner(u_ref, (fp - fm) / (2 * h))
        an = inner(cts[i], v) if cts[i] is not None else 0.0
        rel = abs(fd - an) / max(abs(fd), abs(an), 1e-12 * max(_norm(u_ref), 1.0))
        details.append((label, fd, an, rel))
        worst = max(worst, rel)
    return VJPResult(worst, bool(worst < tol), details)


@dataclass
class TaylorResult:
    slopes0: list  #: log2 ratios of the zeroth-order residual (≈ 1)
    slopes1: list  #: log2 ratios of the first-order residual (≈ 2)
    residuals0: list
    residuals1: list
    passed: bool


def taylor_test(f, x, direction, grad, h0=None, steps=6, min_slope=1.8) -> TaylorResult:
    """Taylor test of a scalar function ``f`` at ``x`` along ``direction``.

    ``grad`` is the gradient at x (same convention as the tape). Passes when the
    first-order residual falls with slope ≥ ``min_slope`` (2 is ideal) over the
    halvings whose residual is still above rounding.
    """
    f0 = float(B.to_numpy(f(x)))
    xp = B.array_module(x)
    dd = inner(grad, direction)
    if h0 is None:
        h0 = 0.1 * max(_norm(x), 1.0) / max(_norm(direction), 1e-300)
    r0, r1 = [], []
    for k in range(steps):
        h = h0 / 2 ** k
        fh = float(B.to_numpy(f(x + h * direction)))
        r0.append(abs(fh - f0))
        r1.append(abs(fh - f0 - h * dd))
    s0 = [float(np.log2(a / b)) for a, b in zip(r0[:-1], r0[1:]) if a > 0 and b > 0]
    floor = 1e3 * np.finfo(np.float64).eps * max(abs(f0), 1e-300)
    s1 = [float(np.log2(a / b)) for a, b in zip(r1[:-1], r1[1:]) if b > floor]
    passed = bool(len(s1) >= 2 and np.median(s1) >= min_slope and np.median(s0) > 0.8)
    del xp
    return TaylorResult(s0, s1, r0, r1, passed)
