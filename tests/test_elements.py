"""The Peng 1996 table, element lookup and the constants derived from them."""
import gemmi
import numpy as np
import pytest

from cutem import elements as E
from cutem.errors import InputError


def test_table_equals_gemmi_c4322_for_every_element():
    a, b, symbols = E.peng_table()
    mismatched = []
    for z in range(1, E.MAX_Z + 1):
        el = gemmi.Element(z)
        assert el.name == symbols[z]
        if not (np.array_equal(a[z], el.c4322.a) and np.array_equal(b[z], el.c4322.b)):
            mismatched.append(z)
    assert mismatched == []


def test_potassium_sign_agrees_with_mott_bethe():
    # f_e(s) = (m e²/(8π² ε0 h²)) (Z − f_x(s)) / s² = 0.023934 Å³·(Z − f_x)/s² (s = sinθ/λ)
    it = gemmi.Element("K").it92
    for s in (0.2, 0.3, 0.5):
        fx = sum(ai * np.exp(-bi * s * s) for ai, bi in zip(it.a, it.b)) + it.c
        mott = 0.023934 * (19 - fx) / s ** 2
        assert E.scattering_factor(19, s) == pytest.approx(mott, rel=0.01)


def test_carbon_constants():
    assert E.POTENTIAL_CONSTANT_V_A2 == pytest.approx(47.878, abs=5e-4)
    assert E.f0(6) == pytest.approx(2.5088, abs=1e-4)
    assert E.POTENTIAL_CONSTANT_V_A2 * E.f0(6) == pytest.approx(120.1, abs=0.05)


def test_ice_mean_inner_potential():
    assert E.ice_mean_inner_potential_V() == pytest.approx(4.88, rel=0.01)


def test_lookup_by_symbol_and_errors():
    assert E.atomic_number("C") == 6
    assert E.atomic_number("FE") == 26 and E.atomic_number("fe") == 26
    assert E.atomic_number("D") == 1
    assert E.symbol(98) == "Cf"
    with pytest.raises(InputError, match="unknown element 'Xx' in model.pdb"):
        E.atomic_number("Xx", where="model.pdb")
    with pytest.raises(InputError, match="outside"):
        E.atomic_number(99)


def test_projected_potential_integrates_to_f0():
    r = np.linspace(0, 30, 300001)
    v = E.projected_atom_potential(6, r)
    integral = np.trapezoid(2 * np.pi * r * v, r)
    assert integral == pytest.approx(E.POTENTIAL_CONSTANT_V_A2 * E.f0(6), rel=1e-6)
