"""Scenes: TEM-simulator coordinates, random placement, ice geometry, tilts."""
import numpy as np
import pytest

from cutem import specimen as Sp
from cutem.config import default_config, load_temsim
from cutem import structure as S
from cutem.errors import InputError
from cutem.params import Sample


def test_default_scene_is_the_tem_simulator_tmv_example():
    sc = Sp.scene_from_config(default_config())
    assert len(sc) == 3 and sc.n_atoms == 3 * 62671
    np.testing.assert_allclose([p.translation for p in sc.particles], [[-500, 50, 0], [0, 50, 0], [500, 50, 0]])
    # particle 2: 90° about x (rod axis z -> -y); particle 3: then 90° about z (-> +x)
    np.testing.assert_allclose(sc.particles[1].rotation @ [0, 0, 1], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(sc.particles[2].rotation @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    assert sc.sample.diameter_A == 10000 and sc.sample.thickness_center_A == 500
    assert sc.sample.thickness_edge_A == 1000


def test_scene_atoms_apply_rotation_translation_and_tilt():
    frag = S.tmv_fragment()
    sc = Sp.scene_from_list(frag, [(100.0, -20.0, 5.0, 30.0, 40.0, 50.0)])
    R = S.euler_matrix(30, 40, 50)
    a0 = sc.atoms(0.0, dtype=np.float64)
    np.testing.assert_allclose(a0.positions, frag.positions @ R.T + [100, -20, 5], atol=1e-9)
    # tilt about x by +90°: y goes to z (right-handed)
    a90 = sc.atoms(90.0, 0.0, dtype=np.float64)
    np.testing.assert_allclose(a90.positions[:, 2], a0.positions[:, 1], atol=1e-9)
    np.testing.assert_allclose(a90.positions[:, 1], -a0.positions[:, 2], atol=1e-9)
    # tilt axis at 90° (the y axis): +90° takes x to −z
    ay = sc.atoms(90.0, 90.0, dtype=np.float64)
    np.testing.assert_allclose(ay.positions[:, 2], -a0.positions[:, 0], atol=1e-9)
    assert a0.species == frag.species
    np.testing.assert_array_equal(a0.atomic_numbers, frag.atomic_numbers)


def test_random_scene_no_overlap_inside_ice_and_seeded():
    frag = S.tmv_fragment()
    sample = Sample(diameter_A=1e5, thickness_center_A=800, thickness_edge_A=800)
    sc = Sp.random_scene(frag, region_A=(3000, 3000), count=20, sample=sample, seed=7)
    c = np.array([p.translation for p in sc.particles])
    r = frag.radius()
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
    assert len(c) == 20 and d.min() >= 2 * r
    assert (np.abs(c[:, 2]) + r <= 400 + 1e-9).all()
    assert (np.abs(c[:, :2]) + r <= 1500 + 1e-9).all()
    again = Sp.random_scene(frag, region_A=(3000, 3000), count=20, sample=sample, seed=7)
    np.testing.assert_array_equal(c, [p.translation for p in again.particles])
    for p in sc.particles:
        np.testing.assert_allclose(p.rotation @ p.rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(p.rotation) == pytest.approx(1.0)


def test_random_scene_from_concentration_and_refusals():
    frag = S.tmv_fragment()
    sample = Sample(diameter_A=1e5, thickness_center_A=500, thickness_edge_A=500)
    # 2 µm⁻³ × (2 µm × 2 µm × 0.05 µm) = 0.4 -> 0 ; 50 µm⁻³ -> 10
    sc = Sp.random_scene(frag, region_A=(20000, 20000), concentration_per_um3=50, sample=sample, seed=1)
    assert len(sc) == 10
    with pytest.raises(InputError, match="does not fit in the ice"):
        Sp.random_scene(frag, region_A=(3000, 3000), count=1,
                        sample=Sample(diameter_A=1e5, thickness_center_A=100, thickness_edge_A=100))
    with pytest.raises(InputError, match="without overlap"):
        Sp.random_scene(frag, region_A=(400, 400), count=5, sample=sample, max_tries=2000)


def test_ice_thickness_profile():
    s = Sample(diameter_A=1000.0, thickness_center_A=500.0, thickness_edge_A=1000.0)
    assert Sp.ice_thickness_A(s, 0, 0) == 500
    assert Sp.ice_thickness_A(s, 500, 0) == pytest.approx(1000)
    assert Sp.ice_thickness_A(s, 0, 250) == pytest.approx(625)
    assert Sp.ice_thickness_A(s, 900, 0) == 1000  # ice continues outside without support film
    c = s.replace(support_film="carbon", support_thickness_A=200.0)
    assert Sp.ice_thickness_A(c, 900, 0) == 0 and Sp.support_thickness_A(c, 900, 0) == 200


def test_tem_simulator_parser_errors(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("=== sample ===\ndiameter = 1000\nthickness_edge = 100\n")
    with pytest.raises(InputError, match="missing required key 'thickness_center' in component sample"):
        Sp.scene_from_config(load_temsim(str(p)))
    p.write_text("diameter = 1000\n")
    with pytest.raises(InputError, match=r"in.txt:1: parameter before the first"):
        Sp.scene_from_config(load_temsim(str(p)))
    p.write_text("=== sample ===\ndiameter = 1000\nthickness_edge = 100\nthickness_center = 50\n"
                 "=== particleset ===\nparticle_type = TMV\n")
    with pytest.raises(InputError, match="particle type 'TMV', but only none are defined"):
        Sp.scene_from_config(load_temsim(str(p)))


def test_thirty_fragments_are_an_everyday_scene():
    frag = S.tmv_fragment()
    sample = Sample(diameter_A=1e5, thickness_center_A=600, thickness_edge_A=600)
    sc = Sp.random_scene(frag, region_A=(4096, 4096), count=30, sample=sample, seed=0)
    a = sc.atoms(30.0)
    assert a.n == 30 * 62671 and a.positions.dtype == np.float32
    assert a.positions.nbytes == a.n * 12
