"""Energy filter: zero-loss imaging removes the inelastically scattered electrons.

Physics. Inelastic scattering in the specimen is a Poisson process along the electron's
path, so the fraction of electrons that leave a path of length t with no energy loss is
exp(−t/λ_in) (the log-ratio law, Egerton, *Electron Energy-Loss Spectroscopy in the
Electron Microscope*, 3rd ed., 2011, §5.1). A zero-loss filter (slit of a few to ~20 eV
centred on the zero-loss peak, below the ~20 eV plasmon of ice) keeps only those: the exit
wave of the unscattered and elastically scattered electrons is multiplied by the amplitude

    a(x) = exp(−t(x) / (2 λ_in)),      |a|² = exp(−t/λ_in),

before the optics. t(x) is the path of the beam through the ice at each pixel: the tilted
slab of normal thickness h crossed along the beam is h/cos θ long (:class:`cutem.potential.
IcePotentialStage` computes exactly this path per pixel and slice), so here
t(x) = Σ_slices V_ice,n(x) / V_ice with V_ice the ice's mean inner potential — the ice
stage's own output, whose VJP carries the gradient on to the thickness inputs. A carbon
support film enters at its potential-equivalent ice thickness (V_C/V_ice ≈ 2.2 times its
path; amorphous carbon's λ_in at 300 kV is about half of ice's, Egerton's Malis fit with
the density ratio 2.0/0.92 gives the same order). The particles are not counted: a protein
of thickness s displaces ice of similar inelastic cross section per mass (the potential
of the atoms already subtracts the displaced ice), leaving an extra attenuation of about
(ρ_protein/ρ_ice − 1)·s/λ_in ≈ 0.45 s/λ_in (≈ 2.5 % for s = 200 Å), not modelled.
Without the filter (``Optics.energy_filter_slit_eV = None``) nothing is attenuated here:
the inelastic electrons stay in the image (their blurred background is the TEM-simulator
model's piece, not this one's).

λ_in for vitreous ice: 3,950 Å at 300 kV, measured by the zero-loss log-ratio on a Titan
Krios with a 20 eV slit (Rice et al., J. Struct. Biol. 204:38, 2018; NYSBC/Leginon: "Λ =
395 nm"), within the ~3,000–4,000 Å that zero-loss measurements on ice at 300 kV give.
Other voltages scale it by the energy
dependence of the Malis et al. parametrisation (J. Electron Microsc. Tech. 8:193, 1988),
λ ∝ F E₀ / ln(2βE₀/E_m), F = (1 + E₀/1022)/(1 + E₀/511)², E₀ in keV, with E_m = 7.6·Z^0.36
= 15.9 eV (Z_eff = 7.4 of water) and β = 10 mrad; ``Optics.inelastic_mfp_A`` overrides it.

Public API: :class:`ZeroLossFilter` (Stage: wave, path → filtered wave),
:func:`inelastic_mfp_A`.
"""
from __future__ import annotations

import math

import adjoints.backend as B
from adjoints import Stage, register

#: measured λ_in of vitreous ice at 300 kV, Å (Rice et al. 2018)
ICE_MFP_300KV_A = 3950.0
_EM_EV, _BETA_MRAD = 15.9, 10.0


def _malis(e0_keV):
    f = (1 + e0_keV / 1022.0) / (1 + e0_keV / 511.0) ** 2
    return f * e0_keV / math.log(2 * _BETA_MRAD * e0_keV / _EM_EV)


def inelastic_mfp_A(voltage_kV, override_A=None) -> float:
    """λ_in of vitreous ice (Å) at ``voltage_kV``: ``override_A`` if given, else the module's value."""
    if override_A is not None:
        return float(override_A)
    return ICE_MFP_300KV_A * _malis(float(voltage_kV)) / _malis(300.0)


@register
class ZeroLossFilter(Stage):
    """ψ, t → ψ · exp(−t / (2 λ_in)): the zero-loss part of the exit wave (module docstring).

    Inputs ``(wave (ny, nx) complex, path_A (ny, nx) real)``. With a = exp(−t/(2λ)) real,
    the map is complex-linear in ψ (cotangent a·g) and g_t = −a/(2λ) · Re(conj(ψ) g).
    """

    def __init__(self, mfp_A):
        self.mfp_A = float(mfp_A)

    def forward(self, ctx, wave, path_A):
        xp = B.array_module(wave)
        a = xp.exp(path_A * (-0.5 / self.mfp_A))
        ctx.a, ctx.wave = a, wave
        return wave * a

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        g_t = (-0.5 / self.mfp_A) * ctx.a * xp.real(xp.conj(ctx.wave) * g)
        return ctx.a * g, g_t

    @classmethod
    def cases(cls, xp, dtype, rng):
        w = xp.asarray(rng.standard_normal((6, 5)) + 1j * rng.standard_normal((6, 5)), dtype=B.complex_dtype(dtype))
        t = xp.asarray(1000 + 300 * rng.standard_normal((6, 5)), dtype=dtype)
        return [(cls(3950.0), (w, t))]


__all__ = ["ZeroLossFilter", "inelastic_mfp_A", "ICE_MFP_300KV_A"]
