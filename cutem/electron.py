"""The imaging electron: relativistic wavelength, interaction constant, Lorentz factor.

Public functions (all take the acceleration voltage in kV, return Python floats)::

    wavelength_A(voltage_kV)            -> λ in Å
    interaction_constant(voltage_kV)    -> σ in rad V⁻¹ Å⁻¹
    lorentz_gamma(voltage_kV)           -> γ
    wavenumber_per_A(voltage_kV)        -> k = 2π/λ in rad Å⁻¹
    relativistic_energy_factor(voltage_kV) -> (1 + 2εE) / (E (1 + εE)) in eV⁻¹ (Cc′ = Cc × this)

Formulas (PHYSICS.md; e.g. Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed.,
eqs. 2.5 and 5.6):

    λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²)))
    γ = 1 + e V / (m0 c²)
    σ = 2π γ m0 e λ / h²

Constants are CODATA values as shipped by :mod:`scipy.constants` (h and e are exact in SI
since 2019; m0 is the CODATA electron mass). With them λ(300 kV) = 0.019687 Å,
σ(300 kV) = 6.5262e-4 rad V⁻¹ Å⁻¹, γ(300 kV) = 1.587085 (tests/test_electron.py checks
the PHYSICS.md table at 100, 200 and 300 kV to the printed digits).
"""
from __future__ import annotations

import math

import scipy.constants as _C

H = _C.h                  #: Planck constant, J s
E_CHARGE = _C.e           #: elementary charge, C
M0 = _C.m_e               #: electron rest mass, kg
C_LIGHT = _C.c            #: speed of light, m/s
M0C2_EV = M0 * C_LIGHT ** 2 / E_CHARGE  #: electron rest energy in eV (≈ 510998.95)

_M_PER_A = 1e-10


def _volts(voltage_kV) -> float:
    v = float(voltage_kV) * 1e3
    if not v > 0:
        raise ValueError(f"voltage must be positive, got {voltage_kV} kV")
    return v


def wavelength_A(voltage_kV) -> float:
    """Relativistic electron wavelength λ in Å for an acceleration voltage in kV."""
    v = _volts(voltage_kV)
    p = math.sqrt(2 * M0 * E_CHARGE * v * (1 + E_CHARGE * v / (2 * M0 * C_LIGHT ** 2)))
    return H / p / _M_PER_A


def lorentz_gamma(voltage_kV) -> float:
    """γ = 1 + eV / (m0 c²)."""
    return 1.0 + _volts(voltage_kV) / M0C2_EV


def interaction_constant(voltage_kV) -> float:
    """σ = 2π γ m0 e λ / h² in rad V⁻¹ Å⁻¹ (phase per V·Å of projected potential)."""
    lam_m = wavelength_A(voltage_kV) * _M_PER_A
    sigma_per_V_m = 2 * math.pi * lorentz_gamma(voltage_kV) * M0 * E_CHARGE * lam_m / H ** 2
    return sigma_per_V_m * _M_PER_A


def wavenumber_per_A(voltage_kV) -> float:
    """k = 2π / λ in rad Å⁻¹ (TEM-simulator's wave number, used by the envelopes)."""
    return 2 * math.pi / wavelength_A(voltage_kV)


def relativistic_energy_factor(voltage_kV) -> float:
    """(1 + 2εE) / (E (1 + εE)) in eV⁻¹ with ε = 1/(2 m0c²), E = eV in eV.

    TEM-simulator's effective chromatic aberration is Cc′ = Cc × this factor (PHYSICS.md,
    envelopes), so that ΔE·Cc′ is a length (the focal spread scale).
    """
    e_ev = _volts(voltage_kV)
    eps = 1.0 / (2.0 * M0C2_EV)
    return (1 + 2 * eps * e_ev) / (e_ev * (1 + eps * e_ev))


__all__ = ["wavelength_A", "interaction_constant", "lorentz_gamma", "wavenumber_per_A",
           "relativistic_energy_factor", "M0C2_EV"]
