"""Amorphous ice: the density fluctuations of vitreous water, which ring a micrograph's spectrum.

cutem's ice continuum (:class:`cutem.potential.IcePotentialStage`) is the ice's mean potential
V_ice · L over its path length L: a uniform layer scatters only at q = 0. Real vitreous ice is
molecules placed with the short-range order of water; its projected potential fluctuates about
that mean and scatters at every q (the "ice ring" near 1/3.7 Å⁻¹ and the continuum under the
Thon rings of every cryo-EM spectrum). With ``Sample.ice_model = "amorphous"`` each slice of the
ice gets that fluctuation as a zero-mean Gaussian random field δV(r) of power spectrum

    P(q) = n · L · |V_H2O(q)|² · S(q)          (V·Å per pixel field: V²·Å⁴, per unit area)

the projected-density power of N = n·A·L molecules in an area A (Σ_jk e^{−2πi q·(r_j−r_k)} =
N·S(q) in the plane q_z = 0, for a slab thicker than the liquid's correlation length), each
molecule's projected potential V_H2O(q) = K (f_O(q/2) + 2 f_H(q/2)) (independent atoms at the
molecule's centre, the same K f(q/2) as :mod:`cutem.potential`; n = 0.0335 Å⁻³, so that
V_H2O(0)·n is the continuum's 4.877 V). q is in cycles/Å.

S(q), the structure factor of the molecules' centres: the Percus–Yevick hard-sphere fluid
(Wertheim, Phys. Rev. Lett. 10:321, 1963; Thiele, J. Chem. Phys. 39:474, 1963; the closed form
of Ashcroft & Lekner, Phys. Rev. 145:83, 1966) with packing fraction η = 0.40 and an effective
diameter σ = 3.906 Å that puts its first peak at Q = 2πq = 1.70 Å⁻¹, where the diffraction of
low-density amorphous ice has it (Narten, Venkatesh & Rice, J. Chem. Phys. 64:1106, 1976;
Bellissent-Funel, Teixeira & Bosio, J. Chem. Phys. 87:2231, 1987: 1.69–1.71 Å⁻¹, i.e. 3.7 Å).
η = 0.40 gives S(0) = (1−η)⁴/(1+2η)² = 0.040, near water's compressibility limit n k T κ_T ≈ 0.06
at 273 K (the glass freezes the fluctuations of about its glass transition, a little lower).
A hard-sphere fluid is not water's tetrahedral network: the model is an analytic S(q) with the
right zero limit, first-peak position and height (≈ 2); it carries no second peak (Q ≈ 3 Å⁻¹,
q ≈ 0.48 cycles/Å, beyond the Nyquist of most micrographs).

The field of one slice is L(r)^{1/2} · g(r) with g the field of a 1 Å slab: g is drawn once per
tilt (the tilt's own seed stream, :func:`ice_rng`: runs reproduce, and a fit sees a fixed
draw; in a multislice stack each lattice slice z ∈ [kΔz, (k+1)Δz) draws from its own stream,
:func:`ice_layer_rng`, so that a stack grown by empty slices keeps every slice's draw), and the
image depends on the thickness through L only (:class:`AmorphousIceStage`).
Its mean over the field is zero (the DC of g is removed), so the mean potential is the
continuum's. Sampling: g is the band-limited field on the grid's frequencies (a pixel value
is the field at the pixel's centre, as :mod:`cutem.potential` samples the atoms).
"""
from __future__ import annotations

import functools
import math

import numpy as np

import adjoints.backend as B
from adjoints import Stage, register

from . import elements as E
from .errors import InputError
from .potential import ice_potential_V

#: number density of water molecules in vitreous ice, Å⁻³ (0.94 g/cm³ at 77 K is 0.0314; cutem's ice 0.0335)
ICE_DENSITY_PER_A3 = E.ICE_DENSITY_PER_A3
#: Percus–Yevick packing fraction and effective diameter (Å) of the ice's S(q) (module docstring)
PY_ETA, PY_SIGMA_A = 0.40, 3.906


def structure_factor(q):
    """S(q) of the molecules' centres at ``q`` (cycles/Å, array): Percus–Yevick hard spheres
    (module docstring), S(0) = 0.040, first peak 2.05 at q = 0.2706 Å⁻¹ (1/3.70 Å)."""
    eta = PY_ETA
    x = 2 * np.pi * PY_SIGMA_A * np.abs(np.asarray(q, dtype=np.float64))
    x = np.maximum(x, 1e-2)     # the closed form cancels to ~x⁶ at 0; S is flat there (S(0.01) = S(0) to 1e-5)
    a = (1 + 2 * eta) ** 2 / (1 - eta) ** 4
    b = -6 * eta * (1 + eta / 2) ** 2 / (1 - eta) ** 4
    g = eta * a / 2
    s, c = np.sin(x), np.cos(x)
    nc = -24 * eta / x ** 6 * (a * x ** 3 * (s - x * c) + b * x ** 2 * (2 * x * s - (x * x - 2) * c - 2)
                               + g * ((4 * x ** 3 - 24 * x) * s - (x ** 4 - 12 * x * x + 24) * c + 24))
    return 1.0 / (1.0 - nc)


def molecule_transform(q, b_factor_A2=0.0):
    """V_H2O(q) = K (f_O(q/2) + 2 f_H(q/2)) e^{−Bq²/4} in V·Å³ (q in cycles/Å)."""
    q = np.asarray(q, dtype=np.float64)
    f = E.scattering_factor(8, q / 2) + 2 * E.scattering_factor(1, q / 2)
    return E.POTENTIAL_CONSTANT_V_A2 * f * np.exp(-float(b_factor_A2) * q * q / 4)


def ice_power_spectrum(q, length_A=1.0, b_factor_A2=0.0):
    """P(q) = n L |V_H2O(q)|² S(q) (V²·Å⁴): the power per unit area of the projected potential
    fluctuation of a slab of vitreous ice ``length_A`` thick."""
    return ICE_DENSITY_PER_A3 * float(length_A) * molecule_transform(q, b_factor_A2) ** 2 * structure_factor(q)


@functools.lru_cache(maxsize=8)
def _amplitude(shape, pixel_size_A, b_factor_A2, kind="ice"):
    """sqrt(P₁(q)/a) on the FFT grid (a = pixel area; DC zero): the field's Fourier amplitude
    per unit-variance white-noise coefficient. A white field w of unit variance per pixel has
    E|FFT w|² = N; ifft(sqrt(P/a)·FFT w) then has E|FFT|² = N·P/a, the periodogram (×N) of
    a continuous field of spectrum P sampled on pixels of area a (Riemann sum of its covariance).
    ``kind``: P₁ the ice's 1 Å slab (:func:`ice_power_spectrum`) or ``"particles"``
    (:func:`particle_continuum_spectrum` at P_ref = 1); both damped by the B-factor's e^{−Bq²/2}
    in power (e^{−Bq²/4} in amplitude, as every atom's scattering)."""
    ny, nx = (int(n) for n in shape)
    qy = np.fft.fftfreq(ny, d=pixel_size_A)[:, None]
    qx = np.fft.fftfreq(nx, d=pixel_size_A)[None, :]
    q = np.hypot(qy, qx)
    if kind == "particles":
        p = particle_continuum_spectrum(q) * np.exp(-b_factor_A2 * q * q / 2)
    else:
        p = ice_power_spectrum(q, 1.0, b_factor_A2)
    amp = np.sqrt(p / pixel_size_A ** 2)
    amp[0, 0] = 0.0
    amp.flags.writeable = False     # cached for the next tilt
    return amp


def _draw(amp, rng, lead=()):
    """Draws of the Gaussian field of Fourier amplitude ``amp`` (:func:`_amplitude`), shape lead + amp's."""
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal(tuple(lead) + amp.shape)) * amp).real


def _expected_kernel(amp):
    """The field k with |FFT k|² = N·P/a: the expected periodogram (×N) of :func:`_draw`."""
    return np.fft.ifft2(math.sqrt(amp.size) * amp).real


def ice_rng(seed, tilt):
    """The generator of tilt ``tilt``'s ice draw in a run with ``seed`` (independent of the
    detector's stream, :func:`cutem.imaging.tilt_seed`, which uses SeedSequence([seed, tilt]))."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(tilt), 0x1CE]))


def ice_layer_rng(seed, tilt, layer):
    """The generator of the ice between z = ``layer``·Δz and (``layer`` + 1)·Δz (a slice of the
    multislice lattice, :func:`cutem.imaging.stack_z_range`) in tilt ``tilt`` of a run with
    ``seed``: each layer of ice keeps its own draw however many slices the stack has."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(tilt), 0x1CE, int(layer) + 2 ** 31]))


def unit_field(n_slices, shape, pixel_size_A, rng, b_factor_A2=0.0):
    """(n_slices, ny, nx) float64: independent draws of g, the fluctuation of a 1 Å slab (V·Å)."""
    if pixel_size_A <= 0 or n_slices < 1:
        raise InputError(f"amorphous ice: pixel size {pixel_size_A} Å and {n_slices} slices must be positive")
    return _draw(_amplitude(tuple(int(n) for n in shape), float(pixel_size_A), float(b_factor_A2)), rng,
                 (int(n_slices),))


def spectral_kernel(shape, pixel_size_A, b_factor_A2=0.0):
    """(ny, nx) the deterministic field k with |FFT k|² = N·P₁/a, the expected periodogram (×N)
    of g: through a shift-invariant linear map T, |FFT(T k)|² is E|FFT(T g)|² exactly (the
    closed form of :class:`cutem.fitting.specimen.SpecimenModel`)."""
    return _expected_kernel(_amplitude(tuple(int(n) for n in shape), float(pixel_size_A), float(b_factor_A2)))


# ------------------------------------------------------------ the particles' continuum
#: correlation length (Å) of the particles' continuum (:func:`particle_continuum_spectrum`)
PARTICLE_CORRELATION_A = 50.0
#: the frequency (cycles/Å) at which ``Sample.particle_continuum_power`` gives the spectrum
PARTICLE_Q_REF = 1.0 / 20.0


def particle_continuum_spectrum(q, power_ref=1.0, a_A=PARTICLE_CORRELATION_A):
    """P(q) = P_ref · [(1 + (2π q_ref a)²) / (1 + (2π q a)²)]² (V²·Å⁴; q in cycles/Å).

    The scattering of a random two-phase medium with correlation length a (Debye, Anderson &
    Brumberger, J. Appl. Phys. 28:679, 1957): flat below 1/(2πa), Porod's q⁻⁴ above it (Porod,
    Kolloid-Z. 124:83, 1951: sharp interfaces), which is what randomly placed particles of
    protein in ice give a micrograph's spectrum between the particle size and the atomic
    scale. It stands for a real field's particles in a twin (:mod:`cutem.fitting.twin`): a
    spectrum, not a placement of molecules. ``power_ref``: P at :data:`PARTICLE_Q_REF`."""
    x = (2 * np.pi * a_A) ** 2
    q = np.asarray(q, dtype=np.float64)
    return float(power_ref) * ((1 + x * PARTICLE_Q_REF ** 2) / (1 + x * q * q)) ** 2


def particle_rng(seed, tilt):
    """The generator of tilt ``tilt``'s draw of the particles' continuum (its own stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(tilt), 0x9A47]))


def particle_field(shape, pixel_size_A, rng, power_ref=1.0, b_factor_A2=0.0):
    """(ny, nx) float64: a draw of the particles' continuum (V·Å), spectrum
    :func:`particle_continuum_spectrum` with ``power_ref``, damped by ``b_factor_A2``."""
    if pixel_size_A <= 0:
        raise InputError(f"particle continuum: pixel size {pixel_size_A} Å must be positive")
    amp = _amplitude(tuple(int(n) for n in shape), float(pixel_size_A), float(b_factor_A2), "particles")
    return math.sqrt(float(power_ref)) * _draw(amp, rng)


def particle_kernel(shape, pixel_size_A, b_factor_A2=0.0):
    """(ny, nx) the field k with |FFT k|² = N·P/a at P_ref = 1: the expected periodogram (×N) of
    :func:`particle_field`, for the closed form (as :func:`spectral_kernel`)."""
    return _expected_kernel(_amplitude(tuple(int(n) for n in shape), float(pixel_size_A), float(b_factor_A2),
                                       "particles"))


@register
class AmorphousIceStage(Stage):
    """The ice's slices with their density fluctuation: v ↦ v + sqrt(L)·g, L = max(v, 0)/V_ice.

    ``forward(ctx, v (n_slices, ny, nx) V·Å) -> same shape``; ``g`` (same shape) is the fixed
    draw of a 1 Å slab (:func:`unit_field`), so the fluctuation's power is ∝ L (module
    docstring). v is the continuum's slices (:class:`cutem.potential.IcePotentialStage`),
    V_ice·L where the ice is (a support film's potential counts as ice there).
    VJP: ∂/∂v = 1 + g/(2 sqrt(V_ice · v)) where v > 0, else 1.
    """

    nondiff = ()

    def __init__(self, g, ice_V=None):
        self.g = g
        self.ice_V = ice_potential_V() if ice_V is None else float(ice_V)

    def forward(self, ctx, v):
        xp = B.array_module(v)
        g = xp.asarray(self.g, dtype=v.dtype)
        root = xp.sqrt(xp.maximum(v, 0.0) * (1.0 / self.ice_V))
        ctx.g, ctx.root = g, root
        return v + root * g

    def vjp(self, ctx, gy):
        xp = B.array_module(gy)
        safe = xp.where(ctx.root > 0, ctx.root, 1.0)
        d = xp.where(ctx.root > 0, ctx.g / (2.0 * self.ice_V * safe), 0.0)
        return (gy * (1.0 + d),)

    @classmethod
    def cases(cls, xp, dtype, rng):
        g = unit_field(2, (12, 10), 1.5, rng)
        v = xp.asarray((40.0 + 200.0 * rng.random((2, 12, 10))).astype(dtype))
        return [(cls(xp.asarray(g.astype(dtype))), (v,))]


__all__ = ["structure_factor", "molecule_transform", "ice_power_spectrum", "unit_field", "spectral_kernel", "ice_rng",
           "ice_layer_rng", "particle_continuum_spectrum", "particle_field", "particle_kernel", "particle_rng",
           "PARTICLE_CORRELATION_A", "PARTICLE_Q_REF",
           "AmorphousIceStage", "ICE_DENSITY_PER_A3", "PY_ETA", "PY_SIGMA_A"]
