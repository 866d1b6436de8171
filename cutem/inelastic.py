"""The electrons scattered out of the coherent wave, returned as an incoherent blurred background.

TEM-simulator 1.3 (Rullgård et al., J. Microsc. 243:234, 2011; DiffTEM's port,
``diff_tem/wavefunction.py``: ``wavefunction_set_inel_ctf``, ``wavefunction_prop_inel``,
``wavefunction_apply_background_blur``) takes the electrons that the absorption potential
(:mod:`cutem.absorption`) removes from the wave and puts them back in the image, blurred: an
electron scattered by angle θ at a distance Δf from the plane in focus lands displaced by
θΔf, so a point scatterer's intensity kernel has the 2D transform

    S(x) = ∫₀^{θ_max} 2π θ dσ/dΩ(θ) J₀(θ x) dθ,        x = 2π |q| Δf,

θ_max = aperture radius / focal length (the objective aperture stops the rest), dσ/dΩ the
elastic + inelastic differential cross section (:func:`cutem.absorption.differential_cross_section_A2`).
The integral uses TEM-simulator's rule: θᵢ = i·dθ, i = 1…⌊θ_max/dθ⌋, dθ = px / (π(|Δf| + 1 µm)).

Two pieces:

* :class:`InelasticBlur` (the atoms, ``wavefunction_prop_inel``): the absorbed intensity
  A = |ψ|²(1 − exp(−2σV′)) comes back as F⁻¹[F[A] · S_C(x)/σ_tot,C], the angular distribution
  of carbon standing for every element (TEM-simulator's choice), at Δf = |defocus + z| of the
  slice (z = 0, the specimen centre plane, for the projection approximation).
* :class:`IceScattering` (the ice, ``wavefunction_apply_background_blur``): the image after the
  lens is filtered by exp(−L μ(x)) with μ(x) = n (σ_tot,ice − S_ice(x)) and L the ice path
  length per pixel: at q = 0 it removes the electrons scattered outside the aperture, at high
  q (S → 0) it damps the contrast by the total cross section, exp(−n σ_tot L) — the ice's
  electrons become a smooth background. A varying L is handled as TEM-simulator does, by
  applying the filter at a few path lengths Lₖ and interpolating per pixel, but on a fixed
  lattice Lₖ = k·ΔL (ΔL = ``LEVEL_STEP_A`` = 50 Å) with the cubic convolution kernel of Keys
  (IEEE Trans. ASSP 29:1153, 1981; a = −1/2: the four nearest levels, interpolating, C¹):
  TEM-simulator's m + 1 levels spanning the field's own range (m = min(20, ⌈10 ΔL/L_min⌉))
  and its linear interpolation made the levels follow the ice thickness outside the tape and
  put kinks where a gradient is taken (issue 19: the thickness gradient then missed the
  levels' move, 3e-4 to 2e-3 of it). Here the levels an image uses depend on its L only in
  which lattice points the kernel reaches, so the filter is a smooth function of L, exact at
  the lattice points and within 4e-6 of exp(−Lμ) between them at 200 kV (where TEM-simulator's
  linear interpolation at 25 Å spacing is 1e-4 off).
"""
from __future__ import annotations

import functools
import math

import numpy as np

import adjoints.backend as B
from adjoints.stage import Stage, register

from . import elements as E
from .absorption import differential_cross_section_A2, total_cross_section_A2

ONE_MICRON_A = 1e4


def aperture_angle_rad(optics, pixel_size_A):
    """θ_max: objective aperture radius / focal length; without an aperture the grid's Nyquist
    angle λ/(2 px)."""
    from .electron import wavelength_A

    if optics.aperture_diameter_um:
        return 0.5 * optics.aperture_diameter_um * 1e-3 / optics.focal_length_mm
    return wavelength_A(optics.voltage_kV) / (2 * pixel_size_A)


def hankel_cross_section(voltage_kV, species, theta_max, x, pixel_size_A, defocus_A):
    """Σ_Z c_Z S_Z(x) (Å²) for ``species`` = {Z: count} at the points ``x`` (rad·Å⁻¹·Å = 1/rad)."""
    from scipy.special import j0

    dt = pixel_size_A / (math.pi * (abs(defocus_A) + ONE_MICRON_A))
    nt = max(1, int(math.floor(theta_max / dt)))
    t = np.arange(1, nt + 1) * dt
    f = sum(c * differential_cross_section_A2(voltage_kV, z, t) for z, c in species.items()) * (2 * math.pi * t * dt)
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.shape)
    flat, res = x.ravel(), out.reshape(-1)
    step = max(1, 2_000_000 // nt)
    for s in range(0, flat.size, step):
        res[s:s + step] = j0(np.outer(flat[s:s + step], t)) @ f
    return out


def _radial_x(shape, pixel_size_A, defocus_A):
    ny, nx = shape
    qy = np.fft.fftfreq(ny, pixel_size_A)[:, None]
    qx = np.fft.rfftfreq(nx, pixel_size_A)[None, :]
    return 2 * math.pi * np.sqrt(qy * qy + qx * qx) * abs(defocus_A)


def _filter(x_map, fn):
    """fn evaluated on the distinct values of ``x_map`` only (radial symmetry)."""
    u, inv = np.unique(np.round(x_map, 9), return_inverse=True)
    return fn(u)[inv].reshape(x_map.shape)


def _rfilter(img, h, xp):
    shape = img.shape[-2:]
    return xp.fft.irfft2(xp.fft.rfft2(img) * h, s=shape)


@register
class InelasticBlur(Stage):
    """A → F⁻¹[F[A] · S_C(2π|q|Δf)/σ_tot,C] (module docstring): the absorbed intensity of the
    atoms returned through the aperture, blurred. Linear in A; the filter is real and even, so
    the adjoint is the same filter."""

    linear = True

    def __init__(self, shape, pixel_size_A, voltage_kV, defocus_A, theta_max):
        self.shape = tuple(int(n) for n in shape)
        x = _radial_x(self.shape, pixel_size_A, defocus_A)
        sig = total_cross_section_A2(voltage_kV, 6)
        self.h = _filter(x, lambda u: hankel_cross_section(voltage_kV, {6: 1}, theta_max, u, pixel_size_A,
                                                           defocus_A) / sig)

    def forward(self, ctx, a):
        xp = B.array_module(a)
        ctx.xp = xp
        return _rfilter(a, xp.asarray(self.h.astype(B.real_dtype(a.dtype))), xp).astype(a.dtype)

    def adjoint(self, ctx, y):
        return self.forward(ctx, y)

    @classmethod
    def cases(cls, xp, dtype, rng):
        a = xp.asarray(rng.uniform(0, 0.2, (10, 12)).astype(dtype))
        return [(cls((10, 12), 3.0, 200.0, 2e4, 8e-3), (a,))]


#: spacing of the path-length lattice of :class:`IceScattering` (Å)
LEVEL_STEP_A = 50.0


def _keys(u):
    """Keys' cubic convolution kernel (a = −1/2) at ``u`` (lattice units) and its derivative."""
    a = np.abs(u)
    sg = np.sign(u)
    near, far = a <= 1, (a > 1) & (a < 2)
    w = np.where(near, (1.5 * a - 2.5) * a * a + 1, np.where(far, ((-0.5 * a + 2.5) * a - 4) * a + 2, 0.0))
    dw = sg * np.where(near, (4.5 * a - 5) * a, np.where(far, (-1.5 * a + 5) * a - 4, 0.0))
    return w, dw


@functools.lru_cache(maxsize=8)
def _ice_mu(shape, pixel_size_A, voltage_kV, defocus_A, theta_max, density_per_A3, sig):
    """μ(x) of :class:`IceScattering` on the rfft grid, kept for the next image of a run (the
    Hankel transform is most of an image's time on a flat-ice field); read-only."""
    sp = {8: 1, 1: 2}
    x = _radial_x(shape, pixel_size_A, defocus_A)
    mu = _filter(x, lambda u: density_per_A3 * (sig - hankel_cross_section(
        voltage_kV, sp, theta_max, u, pixel_size_A, defocus_A)))
    mu.flags.writeable = False
    return mu


@register
class IceScattering(Stage):
    """I, L → Σₖ wₖ(L) F⁻¹[F[I] exp(−Lₖ μ(x))] (module docstring), I the image intensity and L
    the ice path length (Å) per pixel, both (ny, nx); Lₖ = k·``level_step_A``, the levels that
    the L of a call reaches.

    wₖ(L) = K(L/ΔL − k), K Keys' cubic kernel (four levels per pixel, Σₖ wₖ = 1).
    VJP: g_I = Σₖ F⁻¹[F[wₖ g] exp(−Lₖ μ)] (the filters are real and even), g_L = Σₖ wₖ′(L) g Iₖ.
    """

    def __init__(self, shape, pixel_size_A, voltage_kV, defocus_A, theta_max, level_step_A=LEVEL_STEP_A,
                 density_per_A3=E.ICE_DENSITY_PER_A3):
        self.shape = tuple(int(n) for n in shape)
        self.step = float(level_step_A)
        if not self.step > 0:
            raise ValueError(f"level_step_A = {level_step_A} must be > 0")
        sp = {8: 1, 1: 2}
        sig = sum(c * total_cross_section_A2(voltage_kV, z) for z, c in sp.items())
        self.mu = _ice_mu(self.shape, float(pixel_size_A), float(voltage_kV), float(defocus_A), float(theta_max),
                          float(density_per_A3), sig)

    def levels(self, L):
        """The lattice path lengths (Å) that the kernel reaches from the values of ``L``."""
        u = np.asarray(L, dtype=np.float64) / self.step
        return np.arange(math.floor(float(u.min())) - 1, math.floor(float(u.max())) + 3) * self.step

    def _weights(self, L, levels):
        """(w (m, ny, nx), dw/dL) of the levels at L (numpy)."""
        u = L / self.step
        w, dw = _keys(u[None] - (levels / self.step)[:, None, None])
        return w, dw / self.step

    def _filters(self, levels, xp, dtype):
        return [xp.asarray(np.exp(-lk * self.mu).astype(dtype)) for lk in levels]

    def forward(self, ctx, intensity, path_length_A):
        xp = B.array_module(intensity)
        dt = B.real_dtype(intensity.dtype)
        L = np.asarray(B.to_numpy(path_length_A), dtype=np.float64)
        levels = self.levels(L)
        w, dw = self._weights(L, levels)
        F = xp.fft.rfft2(intensity)
        parts = [xp.fft.irfft2(F * h, s=self.shape) for h in self._filters(levels, xp, dt)]
        out = sum(xp.asarray(w[k].astype(dt)) * p for k, p in enumerate(parts))
        ctx.w, ctx.dw, ctx.parts, ctx.xp, ctx.dt, ctx.levels = w, dw, parts, xp, dt, levels
        return out.astype(dt)

    def vjp(self, ctx, g):
        xp, dt = ctx.xp, ctx.dt
        hs = self._filters(ctx.levels, xp, dt)
        g_i = sum(xp.fft.irfft2(xp.fft.rfft2(xp.asarray(ctx.w[k].astype(dt)) * g) * h, s=self.shape)
                  for k, h in enumerate(hs))
        g_l = sum(xp.asarray(ctx.dw[k].astype(dt)) * g * p for k, p in enumerate(ctx.parts))
        return g_i.astype(dt), g_l.astype(dt)

    @classmethod
    def cases(cls, xp, dtype, rng):
        shape = (10, 12)
        i = xp.asarray(rng.uniform(0.5, 1.5, shape).astype(dtype))
        # path lengths over several lattice cells (the interpolation is C¹: no kinks to avoid)
        L = xp.asarray(rng.uniform(280.0, 620.0, shape).astype(dtype))
        return [(cls(shape, 3.0, 200.0, 2e4, 8e-3), (i, L)), (cls(shape, 3.0, 200.0, 2e4, 8e-3, 30.0), (i, L))]


__all__ = ["InelasticBlur", "IceScattering", "hankel_cross_section", "aperture_angle_rad", "LEVEL_STEP_A"]
