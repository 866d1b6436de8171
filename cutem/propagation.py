"""The wave through the specimen: phase object and multislice, with VJPs for the potential.

Public API (names are stable)
-----------------------------
``PhaseObject(voltage_kV)``
    Stage. ``forward(v_z, v_abs=None)``: projected potential V_z (V·Å, real, (..., ny, nx))
    and optionally an absorptive (imaginary) projected potential V′_z (V·Å, ≥ 0) →
    t = exp(iσ(V_z + iV′_z)) = exp(iσV_z − μ_z), μ_z = σV′_z: the exit wave of a unit plane
    wave, referred to the specimen's centre plane. The full phase object, not weak phase.

``Multislice(shape, pixel_size_A, voltage_kV, slice_thickness_A, reference="centre", bandlimit=True, checkpoint=None)``
    Stage. ``forward(v_slices, v_abs_slices=None)`` with (n_slices, ny, nx) projected
    potentials per slice (V·Å) → the wave at the reference plane.

``FresnelPropagator(shape, pixel_size_A, voltage_kV, distance_A, bandlimit=True)``
    Linear stage: free-space propagation of a wave by ``distance_A`` along the beam
    (negative = back up-beam).

``propagator(shape, pixel_size_A, wavelength_A, distance_A, xp=np, dtype=np.float64, bandlimit=True)``
``bandlimit_mask(shape, pixel_size_A, xp=np, dtype=np.float64, fraction=2/3)``
``exit_wave(v_slices, voltage_kV, pixel_size_A, method="projection", slice_thickness_A=None, v_abs_slices=None, reference="centre")``
    Convenience: phase object of the summed slices, or multislice (records on a tape).

Physics (PHYSICS.md; Cowley & Moodie, Acta Cryst. 10:609, 1957; Kirkland, *Advanced
Computing in Electron Microscopy*, 2nd ed., ch. 6)
----------------------------------------------------------------------------------
Conventions: waves ∝ exp(+2πi k·r), FFT kernel e^{−2πi q·x}, σ from
:func:`cutem.electron.interaction_constant` (rad V⁻¹ Å⁻¹).

- Transmission of a slice: t_n = exp(iσV_n − σV′_n).
- Fresnel propagator over Δz (down-beam): P(q; Δz) = exp(−iπλΔz q²).
- Multislice: ψ_{n+1} = IFFT[P(q; d_n) · FFT(t_n ψ_n)], ψ_0 = 1 (unit plane wave).

*Geometry and reference plane.* The N slices of thickness Δz tile a box of thickness
T = NΔz centred on the scene's z = 0 (the specimen centre plane, where the optics measure
defocus; positive z is down-beam). Slice n's potential acts at its mid-plane
z_n = −T/2 + (n + ½)Δz, so d_n = Δz between slices and the last propagation goes from
z_{N−1} to the reference plane: ``reference="centre"`` (default) z_ref = 0, i.e. the wave is
propagated *back* by (T − Δz)/2, and the result is directly comparable with the phase
object and used with the optics' ``defocus_offset_A = 0``; ``reference="exit"``
z_ref = +T/2 (the exit surface, d = Δz/2), to be imaged with ``defocus_offset_A = T/2``;
a number is z_ref in Å. With one slice and the centre reference the multislice *is* the
phase object (up to the band limit), and for a thin specimen it converges to it
(tests/test_propagation.py).

*Band limit.* Every propagation step (including the last one to the reference plane)
multiplies by the disc |q| ≤ ⅔ q_Nyquist, q_Nyquist = 1/(2 pixel), so that products t·ψ of
band-limited factors do not alias into the kept disc (Kirkland §6.8). The transmission
functions themselves are not filtered (their potentials are smooth: Peng Gaussians with
B-factors); the phase object applies no band limit.

*VJPs.* With a_n = t_n ψ_n and the complex-linear step L_n = F⁻¹ P_n F (adjoint
F⁻¹ conj(P_n) F): g_{a_n} = L_n^H g_{ψ_{n+1}}, g_{ψ_n} = conj(t_n) g_{a_n}, and for the
real inputs g_{V_n} = σ Im(conj(a_n) g_{a_n}), g_{V′_n} = −σ Re(conj(a_n) g_{a_n}).
Memory: the forward keeps ψ only every ``checkpoint`` slices (default ⌈√N⌉) and the
backward recomputes each segment (one extra forward), so memory is O(√N) waves.
"""
from __future__ import annotations

import functools
import math

import numpy as np

import adjoints.backend as B
from adjoints import Stage, ops, register, unwrap

from .electron import interaction_constant, wavelength_A


def bandlimit_mask(shape, pixel_size_A, xp=np, dtype=np.float64, fraction=2.0 / 3.0):
    """1 on the disc |q| ≤ fraction · 1/(2 pixel), else 0, on the FFT grid (DC at [0, 0])."""
    # decided in float64 whatever the dtype, so that float32 and float64 runs keep the same
    # frequencies (grid points can lie exactly on the circle)
    qy, qx = B.freq_grid(shape, pixel_size_A, xp, np.float64)
    qc = fraction * 0.5 / pixel_size_A
    return ((qx * qx + qy * qy) <= qc * qc * (1 + 1e-9)).astype(dtype)


def propagator(shape, pixel_size_A, wavelength_A, distance_A, xp=np, dtype=np.float64, bandlimit=True):
    """Fresnel propagator P(q) = exp(−iπλΔz q²) on the FFT grid (complex), band-limited to ⅔ Nyquist."""
    return _propagator(tuple(shape), float(pixel_size_A), float(wavelength_A), float(distance_A), xp,
                       np.dtype(dtype).name, bool(bandlimit)).copy()


@functools.lru_cache(maxsize=8)
def _propagator(shape, pixel_size_A, wavelength_A, distance_A, xp, dtype, bandlimit):
    # cached: a pipeline builds a new stage per image (phase computed in float64)
    qy, qx = B.freq_grid(shape, pixel_size_A, xp, np.float64)
    q2 = qx * qx + qy * qy
    phase = ((-math.pi * wavelength_A * distance_A) * q2).astype(dtype)
    return _cis(phase, bandlimit_mask(shape, pixel_size_A, xp, dtype) if bandlimit else None)


def _cis(phase, amplitude=None):
    """amplitude · exp(i phase) built from cos and sin (NumPy's complex exp is ~4× slower)."""
    xp = B.array_module(phase)
    out = xp.empty(phase.shape, dtype=B.complex_dtype(phase.dtype))
    c, s = xp.cos(phase), xp.sin(phase)
    if amplitude is not None:
        c *= amplitude
        s *= amplitude
    out.real, out.imag = c, s
    return out


def _transmission(sigma, v, v_abs):
    xp = B.array_module(v)
    amp = None if v_abs is None else xp.exp(-sigma * v_abs)
    return _cis(sigma * v, amp)


def _potential_cotangents(sigma, a, g_a, has_abs):
    """g_V = σ Im(conj(a) g_a), g_V′ = −σ Re(conj(a) g_a) for a = t·ψ (t = exp(iσV − σV′))."""
    xp = B.array_module(a)
    c = xp.conj(a) * g_a
    return sigma * c.imag, (-sigma * c.real if has_abs else None)


def _smooth_potential(rng, shape, xp, dtype, scale=30.0):
    """A smooth random potential (V·Å) for the check cases."""
    v = rng.standard_normal(shape)
    f = np.fft.fft2(v)
    qy = np.fft.fftfreq(shape[-2])[:, None]
    qx = np.fft.fftfreq(shape[-1])[None, :]
    v = np.fft.ifft2(f * np.exp(-20 * (qx * qx + qy * qy))).real
    return xp.asarray(scale * v / max(np.abs(v).max(), 1e-12), dtype=dtype)


@register
class PhaseObject(Stage):
    """t = exp(iσV_z − σV′_z) for projected potentials in V·Å (module docstring).

    Inputs ``(v_z, v_abs=None)``, real arrays of one shape. VJPs
    g_V = σ Im(conj(t) g), g_V′ = −σ Re(conj(t) g).
    """

    def __init__(self, voltage_kV):
        self.voltage_kV = float(voltage_kV)
        self.sigma = interaction_constant(voltage_kV)

    def forward(self, ctx, v_z, v_abs=None):
        t = _transmission(self.sigma, v_z, v_abs)
        ctx.t, ctx.has_abs = t, v_abs is not None
        return t

    def vjp(self, ctx, g):
        gv, ga = _potential_cotangents(self.sigma, ctx.t, g, ctx.has_abs)
        return (gv,) if ctx.n_inputs == 1 else (gv, ga)

    @classmethod
    def cases(cls, xp, dtype, rng):
        v = _smooth_potential(rng, (6, 7), xp, dtype, 300.0)
        va = xp.abs(_smooth_potential(rng, (6, 7), xp, dtype, 30.0))
        return [(cls(300.0), (v,)), (cls(200.0), (v, va))]


@register
class FresnelPropagator(Stage):
    """ψ → IFFT[P(q; distance) · FFT(ψ)], P = exp(−iπλΔz q²) (· ⅔-Nyquist disc if ``bandlimit``).

    Linear; adjoint IFFT[conj(P) · FFT(·)].
    """

    linear = True

    def __init__(self, shape, pixel_size_A, voltage_kV, distance_A, bandlimit=True):
        self.shape = tuple(int(n) for n in shape)
        self.pixel_size_A = float(pixel_size_A)
        self.lam = wavelength_A(voltage_kV)
        self.distance_A = float(distance_A)
        self.bandlimit = bool(bandlimit)
        self._p = {}

    def kernel(self, xp, dtype):
        key = (xp.__name__, np.dtype(dtype).name)
        if key not in self._p:
            self._p = {key: _propagator(self.shape, self.pixel_size_A, self.lam, self.distance_A,
                                        xp, np.dtype(dtype).name, self.bandlimit)}
        return self._p[key]

    def forward(self, ctx, wave):
        xp = B.array_module(wave)
        ctx.p = self.kernel(xp, B.real_dtype(wave.dtype))
        return B.ifft2(B.fft2(wave) * ctx.p)

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        return B.ifft2(B.fft2(y) * xp.conj(ctx.p))

    @classmethod
    def cases(cls, xp, dtype, rng):
        cdt = B.complex_dtype(dtype)
        w = xp.asarray(rng.standard_normal((9, 8)) + 1j * rng.standard_normal((9, 8)), dtype=cdt)
        return [(cls((9, 8), 1.0, 300.0, 80.0), (w,)), (cls((9, 8), 0.7, 200.0, -150.0, False), (w,))]


@register
class Multislice(Stage):
    """Multislice exit wave for a unit plane wave (module docstring for the geometry).

    Parameters
    ----------
    shape : (ny, nx).
    pixel_size_A : sampling, Å.
    voltage_kV : acceleration voltage.
    slice_thickness_A : Δz.
    reference : ``"centre"`` (specimen centre plane, default), ``"exit"`` (exit surface)
        or z_ref in Å from the box centre (positive down-beam).
    bandlimit : multiply each propagation step by the ⅔-Nyquist disc.
    checkpoint : keep the wave every this many slices for the backward (default ⌈√N⌉;
        1 keeps all).

    Inputs ``(v_slices, v_abs_slices=None)``: (N, ny, nx) real projected potentials (V·Å).
    Output: complex (ny, nx).
    """

    def __init__(self, shape, pixel_size_A, voltage_kV, slice_thickness_A, reference="centre",
                 bandlimit=True, checkpoint=None):
        self.shape = tuple(int(n) for n in shape)
        self.pixel_size_A = float(pixel_size_A)
        self.voltage_kV = float(voltage_kV)
        self.dz = float(slice_thickness_A)
        self.reference = reference
        self.bandlimit = bool(bandlimit)
        self.checkpoint = checkpoint
        self.lam = wavelength_A(voltage_kV)
        self.sigma = interaction_constant(voltage_kV)
        self._p = {}

    def z_reference(self, n_slices) -> float:
        """The reference plane's z (Å, from the box centre, + down-beam)."""
        if self.reference == "centre":
            return 0.0
        if self.reference == "exit":
            return 0.5 * n_slices * self.dz
        return float(self.reference)

    def last_distance(self, n_slices) -> float:
        """Distance from the last slice's mid-plane to the reference plane."""
        return self.z_reference(n_slices) - (0.5 * n_slices * self.dz - 0.5 * self.dz)

    def _kernels(self, n, xp, dtype):
        key = (xp.__name__, np.dtype(dtype).name, n)
        if key not in self._p:
            dt = np.dtype(dtype).name
            step = _propagator(self.shape, self.pixel_size_A, self.lam, self.dz, xp, dt, self.bandlimit)
            last = _propagator(self.shape, self.pixel_size_A, self.lam, self.last_distance(n), xp, dt,
                               self.bandlimit)
            self._p = {key: (step, last)}
        return self._p[key]

    def _step(self, psi, v, va, kern):
        a = _transmission(self.sigma, v, va) * psi
        return a, B.ifft2(B.fft2(a) * kern)

    def forward(self, ctx, v_slices, v_abs_slices=None):
        if v_slices.ndim != 3 or tuple(v_slices.shape[1:]) != self.shape:
            raise ValueError(f"Multislice expects (n_slices, {self.shape[0]}, {self.shape[1]}) "
                             f"potentials, got {v_slices.shape}")
        xp = B.array_module(v_slices)
        rdt = B.real_dtype(v_slices.dtype)
        n = v_slices.shape[0]
        step, last = self._kernels(n, xp, rdt)
        every = self.checkpoint or max(1, int(math.ceil(math.sqrt(n))))
        psi = xp.ones(self.shape, dtype=B.complex_dtype(rdt))
        saved = {}
        for k in range(n):
            if k % every == 0:
                saved[k] = psi
            va = None if v_abs_slices is None else v_abs_slices[k]
            _, psi = self._step(psi, v_slices[k], va, last if k == n - 1 else step)
        ctx.v, ctx.va, ctx.saved, ctx.every, ctx.n = v_slices, v_abs_slices, saved, every, n
        ctx.kern = (step, last)
        return psi

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        step, last = ctx.kern
        n, every = ctx.n, ctx.every
        gv = xp.zeros(ctx.v.shape, dtype=B.real_dtype(ctx.v.dtype))
        gva = None if ctx.va is None else xp.zeros(ctx.va.shape, dtype=gv.dtype)
        g_psi = g
        for start in sorted(ctx.saved, reverse=True):
            stop = min(start + every, n)
            # recompute the inputs a_k of the segment's steps from its checkpoint
            psi, a_seg = ctx.saved[start], []
            for k in range(start, stop):
                va = None if ctx.va is None else ctx.va[k]
                a, psi = self._step(psi, ctx.v[k], va, last if k == n - 1 else step)
                a_seg.append(a)
            for k in range(stop - 1, start - 1, -1):
                kern = last if k == n - 1 else step
                g_a = B.ifft2(B.fft2(g_psi) * xp.conj(kern))
                a = a_seg[k - start]
                gvk, gak = _potential_cotangents(self.sigma, a, g_a, ctx.va is not None)
                gv[k] = gvk
                if gva is not None:
                    gva[k] = gak
                va = None if ctx.va is None else ctx.va[k]
                g_psi = xp.conj(_transmission(self.sigma, ctx.v[k], va)) * g_a
        return (gv,) if ctx.n_inputs == 1 else (gv, gva)

    @classmethod
    def cases(cls, xp, dtype, rng):
        v = xp.stack([_smooth_potential(rng, (8, 9), xp, dtype, 600.0) for _ in range(4)])
        va = xp.abs(xp.stack([_smooth_potential(rng, (8, 9), xp, dtype, 100.0) for _ in range(4)]))
        return [(cls((8, 9), 1.0, 300.0, 15.0), (v,)),
                (cls((8, 9), 1.0, 200.0, 10.0, reference="exit", checkpoint=3), (v, va)),
                (cls((8, 9), 1.5, 300.0, 10.0, reference=-7.0, bandlimit=False), (v[:1],))]


def exit_wave(v_slices, voltage_kV, pixel_size_A, method="projection", slice_thickness_A=None,
              v_abs_slices=None, reference="centre", bandlimit=True):
    """Exit wave from per-slice projected potentials (array or Var, (N, ny, nx), V·Å).

    ``method="projection"``: phase object of Σ_n V_n (centre plane); ``"multislice"``:
    :class:`Multislice` with ``slice_thickness_A`` and ``reference``.
    """
    if method == "projection":
        vz = ops.sum(v_slices, axis=0)
        va = None if v_abs_slices is None else ops.sum(v_abs_slices, axis=0)
        st = PhaseObject(voltage_kV)
        return st(vz) if va is None else st(vz, va)
    if method == "multislice":
        if slice_thickness_A is None:
            raise ValueError("multislice needs slice_thickness_A")
        shape = unwrap(v_slices).shape[-2:]
        st = Multislice(shape, pixel_size_A, voltage_kV, slice_thickness_A, reference, bandlimit)
        return st(v_slices) if v_abs_slices is None else st(v_slices, v_abs_slices)
    raise ValueError(f"method must be projection or multislice, not {method!r}")


__all__ = ["PhaseObject", "Multislice", "FresnelPropagator", "propagator", "bandlimit_mask", "exit_wave"]
