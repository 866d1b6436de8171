"""Configuration: TOML, TEM-simulator input files, resolved round trip, errors."""
from pathlib import Path

import pytest

from cutem.config import load_config, load_temsim, to_toml
from cutem.errors import InputError

TMV = Path(__file__).resolve().parents[2] / "shared" / "data" / "tmv"


@pytest.fixture
def tmv_input():
    p = TMV / "input_TMV.txt"
    if not p.exists():
        pytest.skip("../shared/data/tmv not present")
    return p


def test_temsim_units_are_converted_to_angstrom_and_e_per_A2(tmv_input):
    c = load_temsim(tmv_input)
    assert c.detector.pixel_size_A == pytest.approx(15e4 / 30000)  # 15 um / 30000 = 5 A
    assert c.detector.dose_e_per_A2 == pytest.approx(1.0)          # 100 e/nm^2
    assert c.optics.defocus_u_A == pytest.approx(5e4)              # 5 um
    assert c.optics.voltage_kV == 200 and c.optics.cs_mm == 2
    assert c.sample.thickness_center_A == 500 and c.sample.diameter_A == 1e4
    assert c.geometry.tilt_angles_deg == (-2.0, 0.0, 2.0)
    assert c.particles[0].count == 3 and c.particles[0].structure.endswith("2OM3.pdb")


def test_resolved_toml_reproduces_the_config(tmv_input, tmp_path):
    c = load_temsim(tmv_input)
    p = tmp_path / "resolved.toml"
    p.write_text(to_toml(c))
    c2 = load_config(p)
    for name in ("optics", "detector", "sample", "geometry", "simulation", "particles", "seed"):
        assert getattr(c2, name) == getattr(c, name), name


def test_unknown_temsim_key_is_named_with_line(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("=== optics ===\nmagnification = 30000\ndefocus_nominl = 3\n")
    with pytest.raises(InputError, match=r"in.txt:3: unknown key 'defocus_nominl' in component optics"):
        load_config(p)


def test_unknown_toml_key_is_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optics]\ndefocus_um = 1.0\n")
    with pytest.raises(InputError, match="unknown key 'defocus_um' in \\[optics\\]"):
        load_config(p)


def test_negative_dose_is_rejected_with_range(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[detector]\ndose_e_per_A2 = -1.0\n")
    with pytest.raises(InputError, match=r"Detector.dose_e_per_A2 = -1.0 is outside the allowed range \[0.0"):
        load_config(p)


def test_nan_parameter_is_rejected(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optics]\ncs_mm = nan\n")
    with pytest.raises(InputError, match="Optics.cs_mm must be finite"):
        load_config(p)


def test_mtf_outside_temsim_range_is_rejected(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[detector]\nmtf_p = 11.0\n")
    with pytest.raises(InputError, match=r"mtf_p = 11.0 is outside the allowed range \[0.0, 10.0\]"):
        load_config(p)


def test_dose_symmetric_order_starts_at_zero_and_alternates(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[geometry]\ntilt_start_deg = -6.0\ntilt_increment_deg = 3.0\ntilt_count = 5\n"
                 "order = \"dose-symmetric\"\n")
    assert load_config(p).geometry.tilt_angles_deg == (0.0, 3.0, -3.0, 6.0, -6.0)


def test_embedded_default_is_the_tmv_example():
    c = load_config(None)
    assert c.optics.voltage_kV == 200 and c.optics.defocus_u_A == 5e4
    assert c.detector.quantized and c.detector.dqe == 0.4 and c.detector.gain == 10
    assert len(c.particles) == 1 and c.particles[0].placement == "file"
