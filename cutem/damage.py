"""Radiation damage by exposure: the specimen's high frequencies fade as the dose accumulates.

Physics (Grant & Grigorieff, eLife 4:e06980, 2015, measured on rotavirus VP6 at 300 kV).
The signal *amplitude* of spatial frequency q (1/Å) in an image taken after an accumulated
exposure E (e⁻/Å²) falls as

    A(q; E) = exp(−E / (2 N_e(q))),     N_e(q) = a q^b + c,
    a = 0.245, b = −1.665, c = 2.81  (their fit; :func:`critical_exposure`, also the
                                       exposure filter of :mod:`cutem.ctfcorrect`),

so its power falls as exp(−E / N_e(q)) (N_e is the exposure at which the *power*, the
quantity they fitted from Fourier ring correlations, has dropped to 1/e). cutem applies A
to the atoms' projected potential only (the ice is already amorphous; beam damage of
the specimen is what changes its structure), before the exit wave, as a linear
frequency filter per slice:

    V_atoms,damaged = F⁻¹[ A(|q|; E) · exp(−ΔB(E) |q|² / 4) · F V_atoms ],

with the optional B growth ΔB(E) = ``Sample.damage_b_per_exposure_A2`` · E (Å² per e⁻/Å²;
a B-factor that grows linearly with exposure, the form of the per-frame B-factors fitted
by RELION's particle polishing, Scheres, eLife 3:e03665, 2014). The B term is exactly a global B added to
every atom (the potential's transform carries exp(−B q²/4), :mod:`cutem.potential`), so
it is applied in the same filter. At q → 0 N_e → ∞ (b < 0): the mean is untouched.

Accumulated exposure (:func:`mid_exposure`, :func:`cutem.imaging.tilt_doses`):
``Geometry.tilt_angles_deg`` lists the tilts
in acquisition order; tilt k of a series with per-tilt doses d_j (``Detector.dose_e_per_A2``
times ``Geometry.dose_weights`` normalised to mean 1, :func:`cutem.imaging.tilt_settings`)
is imaged over the exposures [Σ_{j<k} d_j, Σ_{j≤k} d_j]; a still uses the midpoint
E_k = Σ_{j<k} d_j + d_k / 2, frame f of N the midpoint of its own share,
Σ_{j<k} d_j + (f + ½) d_k / N (:mod:`cutem.movie`).

Public API: :class:`DamageFilter` (linear Stage, self-adjoint), :func:`damage_filter`
(the filter on the FFT grid), :func:`critical_exposure`, :func:`mid_exposure`.
"""
from __future__ import annotations

import numpy as np

import adjoints.backend as B
from adjoints import Stage, register

from .errors import InputError

GG_A, GG_B, GG_C = 0.245, -1.665, 2.81


def critical_exposure(q):
    """N_e(q) = a q^b + c (e/Å²) of Grant & Grigorieff 2015 for q in 1/Å (q > 0)."""
    return GG_A * np.power(np.maximum(q, 1e-12), GG_B) + GG_C


def damage_filter(shape, pixel_size_A, exposure_e_per_A2, b_per_exposure_A2=0.0, xp=np, dtype=np.float64):
    """A(|q|; E)·exp(−ΔB q²/4) of the module docstring on the rfft2 grid of ``shape`` (real),
    computed in ``dtype`` (float32's SIMD exp and pow are ten times float64's)."""
    ny, nx = int(shape[-2]), int(shape[-1])
    dt = np.dtype(dtype)
    # the filter depends on |ky| only: rows i and ny − i are equal, so half of them are computed
    ky = np.abs(np.fft.fftfreq(ny, d=pixel_size_A)[:ny // 2 + 1]).astype(dt)[:, None]
    kx = np.fft.rfftfreq(nx, d=pixel_size_A).astype(dt)[None, :]
    q2 = ky * ky + kx * kx
    e = float(exposure_e_per_A2)
    # N_e = a q^b + c of critical_exposure, as (q²)^(b/2): one pow and no square root
    ne = np.power(np.maximum(q2, dt.type(1e-24)), dt.type(GG_B / 2))
    ne *= dt.type(GG_A)
    ne += dt.type(GG_C)
    w = np.exp(dt.type(-e / 2) / ne - dt.type(0.25 * float(b_per_exposure_A2) * e) * q2)
    w[0, 0] = 1.0  # q = 0: N_e = ∞
    rows = np.arange(ny)
    return xp.asarray(w[np.minimum(rows, ny - rows)])


#: filters by (shape, pixel, exposure, B rate, dtype, array module): a movie or a fit applies
#: the same few again and again, and at 4096² making one costs a third of its FFT pair
_FILTERS = B.GridCache(maxsize=4)


@register
class DamageFilter(Stage):
    """Exposure damage of the atoms' potential slices: V → F⁻¹[A(q; E)·e^{−ΔB q²/4} F V] per slice.

    Linear in V (..., ny, nx), real. The filter is real and even in q, so the operator is
    symmetric: the adjoint is the same filter (rfft2 → × w → irfft2 of the cotangent).
    """

    linear = True

    def __init__(self, shape, pixel_size_A, exposure_e_per_A2, b_per_exposure_A2=0.0):
        if exposure_e_per_A2 < 0:
            raise InputError(f"accumulated exposure must be non-negative, got {exposure_e_per_A2}")
        self.shape = tuple(int(n) for n in shape[-2:])
        self.pixel_size_A = float(pixel_size_A)
        self.exposure = float(exposure_e_per_A2)
        self.b_rate = float(b_per_exposure_A2)

    def _filter(self, xp, dt):
        key = (self.shape, self.pixel_size_A, self.exposure, self.b_rate, np.dtype(dt).str, xp.__name__)
        return _FILTERS.get(key, lambda: damage_filter(self.shape, self.pixel_size_A, self.exposure, self.b_rate,
                                                       xp, dt))

    def _apply(self, x):
        # in the input's precision (scipy.fft keeps float32 single; numpy's own fft made complex128)
        spec = B.rfft2(x)
        spec *= self._filter(B.array_module(x), B.real_dtype(x.dtype))
        return B.irfft2(spec, s=self.shape).astype(x.dtype, copy=False)

    def from_spectrum(self, spectrum):
        """The forward given the rfft2 of V (plain arrays, no tape): F⁻¹[w · spectrum]. For the
        frames of a movie, which filter one potential at N exposures (cutem.movie)."""
        dt = B.real_dtype(spectrum.dtype)
        return B.irfft2(spectrum * self._filter(B.array_module(spectrum), dt), s=self.shape).astype(dt, copy=False)

    def forward(self, ctx, v):
        return self._apply(v)

    def adjoint(self, ctx, y):
        return self._apply(y)

    @classmethod
    def cases(cls, xp, dtype, rng):
        v = xp.asarray(rng.standard_normal((2, 10, 12)), dtype=dtype)
        return [(cls((10, 12), 1.5, 20.0), (v,)), (cls((9, 7), 2.0, 5.0, 0.5), (v[:, :9, :7].copy(),))]


def mid_exposure(doses, k, frame=0, frames=1):
    """Σ_{j<k} d_j + (frame + ½)·d_k/frames: the mean exposure (e⁻/Å²) while frame ``frame``
    of ``frames`` of tilt ``k`` is recorded, for per-tilt ``doses`` in acquisition order."""
    d = np.asarray(doses, dtype=np.float64)
    return float(d[:k].sum() + (frame + 0.5) * d[k] / frames)


__all__ = ["DamageFilter", "damage_filter", "critical_exposure", "mid_exposure", "GG_A", "GG_B", "GG_C"]
