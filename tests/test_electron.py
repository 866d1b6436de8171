"""Electron constants against the PHYSICS.md reference table (to the printed digits)."""
import math

import pytest

from cutem import electron as el

TABLE = [  # kV, λ (Å), σ (rad V⁻¹ Å⁻¹), γ — PHYSICS.md
    (100, 0.037014, 9.2440e-4, 1.195695),
    (200, 0.025079, 7.2884e-4, 1.391390),
    (300, 0.019687, 6.5262e-4, 1.587085),
]


@pytest.mark.parametrize("kv, lam, sigma, gamma", TABLE)
def test_wavelength_matches_table_to_printed_digits(kv, lam, sigma, gamma):
    assert round(el.wavelength_A(kv), 6) == lam


@pytest.mark.parametrize("kv, lam, sigma, gamma", TABLE)
def test_interaction_constant_matches_table_to_printed_digits(kv, lam, sigma, gamma):
    assert float(f"{el.interaction_constant(kv):.4e}") == sigma


@pytest.mark.parametrize("kv, lam, sigma, gamma", TABLE)
def test_lorentz_gamma_matches_table_to_printed_digits(kv, lam, sigma, gamma):
    assert round(el.lorentz_gamma(kv), 6) == gamma


def test_nonrelativistic_limit_of_wavelength():
    # at 10 V the relativistic correction is ~1e-5: λ ≈ h/sqrt(2 m e V) = 12.2643/sqrt(V) Å
    v = 0.01  # kV
    lam_nr = el.H / math.sqrt(2 * el.M0 * el.E_CHARGE * 10.0) * 1e10
    assert abs(el.wavelength_A(v) / lam_nr - 1) < 1e-5
    assert abs(el.wavelength_A(v) / lam_nr - 1) > 1e-7


def test_interaction_constant_relation_sigma_equals_2pi_over_lambda_v_times_factor():
    # σ = 2π/(λ V) · (m0c² + eV)/(2 m0c² + eV) (Kirkland eq. 5.6, an independent form)
    for kv in (80, 120, 300):
        v = kv * 1e3
        alt = 2 * math.pi / (el.wavelength_A(kv) * v) * (el.M0C2_EV + v) / (2 * el.M0C2_EV + v)
        assert abs(el.interaction_constant(kv) / alt - 1) < 1e-12


def test_wavenumber_and_energy_factor():
    assert abs(el.wavenumber_per_A(300) * el.wavelength_A(300) - 2 * math.pi) < 1e-12
    # (1 + 2εE)/(E(1 + εE)) → 1/E as E → 0
    assert abs(el.relativistic_energy_factor(0.001) * 1.0 - 1.0) < 1e-5
