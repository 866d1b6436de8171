"""Elements and their elastic electron scattering factors (Peng et al. 1996).

The table (``cutem/data/peng1996.csv``) holds the 5-Gaussian fit of the elastic electron
scattering factor of each neutral atom, Z = 1-98:

    f_Z(s) = Σᵢ aᵢ exp(−bᵢ s²),   s = q/2 (Å⁻¹),   aᵢ in Å, bᵢ in Å²,

L.-M. Peng, G. Ren, S. L. Dudarev, M. J. Whelan, Acta Cryst. A52 (1996) 257, Table 1 (the same
numbers as International Tables for Crystallography Vol. C, Table 4.3.2.2). The file says where
the numbers were transcribed from and documents one correction (the sign of a₂ for K); the test
suite checks every element against gemmi's independent copy (``gemmi.Element(Z).c4322``).

With K = h²/(2π m₀ e) = 47.878 V·Å² (CODATA 2018 constants) the atom's potential is
V(r) = K Σᵢ aᵢ (4π/bᵢ)^{3/2} exp(−4π² r²/bᵢ) (V), its projection along z
V_z(r⊥) = K Σᵢ aᵢ (4π/bᵢ) exp(−4π² r⊥²/bᵢ) (V·Å), and its 2D Fourier transform
K f_Z(q/2) (V·Å³); ∫V_z d²r = K f_Z(0) (carbon: 120.1 V·Å³). PHYSICS.md lists these.
"""
from __future__ import annotations

import csv
import math
from functools import lru_cache
from importlib import resources

import numpy as np

from .errors import InputError

#: CODATA 2018 exact/recommended constants (SI)
PLANCK_J_S = 6.62607015e-34
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19

#: K = h² / (2π m₀ e) in V·Å² (47.878): the prefactor of the atomic potential (PHYSICS.md)
POTENTIAL_CONSTANT_V_A2 = PLANCK_J_S ** 2 / (2 * math.pi * ELECTRON_MASS_KG * ELEMENTARY_CHARGE_C) * 1e20

#: number density of amorphous ice used by TEM-simulator (33.5 nm⁻³), in molecules per Å³
ICE_DENSITY_PER_A3 = 0.0335

MAX_Z = 98


@lru_cache(maxsize=1)
def _table():
    text = resources.files("cutem.data").joinpath("peng1996.csv").read_text()
    rows = [r for r in csv.reader(line for line in text.splitlines() if line and not line.startswith("#"))]
    header, rows = rows[0], rows[1:]
    if header[:2] != ["Z", "symbol"] or len(rows) != MAX_Z:
        raise RuntimeError("cutem/data/peng1996.csv is damaged")
    a = np.full((MAX_Z + 1, 5), np.nan)
    b = np.full((MAX_Z + 1, 5), np.nan)
    symbols = [""] * (MAX_Z + 1)
    for r in rows:
        z = int(r[0])
        symbols[z] = r[1]
        a[z] = [float(v) for v in r[2:7]]
        b[z] = [float(v) for v in r[7:12]]
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b, tuple(symbols)


def peng_table():
    """``(a, b, symbols)``: arrays of shape (99, 5) indexed by Z (row 0 is NaN) and the symbols."""
    return _table()


#: aliases accepted besides the element symbols (deuterium and tritium scatter as hydrogen)
_ALIASES = {"D": 1, "T": 1}


@lru_cache(maxsize=None)
def _symbol_index():
    _, _, symbols = _table()
    return {s.upper(): z for z, s in enumerate(symbols) if s}


def atomic_number(symbol, where=None) -> int:
    """Z of an element symbol (case-insensitive: ``"FE"``, ``"Fe"``), or of an integer Z.

    Raises :class:`InputError` naming ``where`` (a file, a line) for anything that is not an
    element with a tabulated scattering factor (Z = 1-98).
    """
    suffix = f" in {where}" if where else ""
    if isinstance(symbol, (int, np.integer)) and not isinstance(symbol, bool):
        z = int(symbol)
        if 1 <= z <= MAX_Z:
            return z
        raise InputError(f"atomic number {z}{suffix} is outside the tabulated range 1-{MAX_Z}")
    key = str(symbol).strip().upper()
    z = _symbol_index().get(key) or _ALIASES.get(key)
    if z is None:
        raise InputError(f"unknown element {symbol!r}{suffix} (known: element symbols H-Cf, Z = 1-{MAX_Z})")
    return z


def symbol(z: int) -> str:
    """The element symbol of atomic number ``z``."""
    return _table()[2][atomic_number(int(z))]


def scattering_params(z):
    """``(a, b)`` (5,) arrays of the Peng 1996 fit for atomic number ``z``."""
    a, b, _ = _table()
    z = atomic_number(z)
    return a[z].copy(), b[z].copy()


def scattering_factor(z, s):
    """f_Z(s) in Å for s = sin θ/λ = q/2 in Å⁻¹ (array or scalar)."""
    a, b = scattering_params(z)
    s2 = np.asarray(s, dtype=np.float64)[..., None] ** 2
    return (a * np.exp(-b * s2)).sum(-1)


def f0(z) -> float:
    """f_Z(0) = Σ aᵢ in Å."""
    return float(scattering_params(z)[0].sum())


def projected_atom_potential(z, r_A, b_factor_A2=0.0):
    """Analytic projected potential of one atom, V_z(r) = K Σ aᵢ (4π/bᵢ') exp(−4π² r²/bᵢ'),
    bᵢ' = bᵢ + B, in V·Å (r in Å, the distance from the atom in the plane)."""
    a, b = scattering_params(z)
    b = b + float(b_factor_A2)
    r2 = np.asarray(r_A, dtype=np.float64)[..., None] ** 2
    return POTENTIAL_CONSTANT_V_A2 * (a * (4 * np.pi / b) * np.exp(-4 * np.pi ** 2 * r2 / b)).sum(-1)


def ice_mean_inner_potential_V(density_per_A3=ICE_DENSITY_PER_A3) -> float:
    """Independent-atom mean inner potential of ice, K·n·(f_O(0) + 2 f_H(0)) in volts (≈ 4.88 V)."""
    return POTENTIAL_CONSTANT_V_A2 * density_per_A3 * (f0(8) + 2 * f0(1))


__all__ = ["POTENTIAL_CONSTANT_V_A2", "ICE_DENSITY_PER_A3", "MAX_Z", "peng_table", "atomic_number",
           "symbol", "scattering_params", "scattering_factor", "f0", "projected_atom_potential",
           "ice_mean_inner_potential_V"]
