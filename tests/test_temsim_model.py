"""TEM-simulator's image model: cross sections, absorption potential, scattered background (issue 14)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import quad

from adjoints import check_vjp, dottest
from cutem import absorption as A
from cutem import inelastic as I
from cutem import solvent_map as SM
from cutem.config import default_config, load_temsim
from cutem.electron import interaction_constant
from cutem.potential import ice_potential_V
from cutem.structure import Atoms
from helpers import tiny_pdb

TMV = Path(__file__).resolve().parents[2] / "shared" / "data" / "tmv"


@pytest.fixture
def tmv_input():
    p = TMV / "input_TMV.txt"
    if not p.exists():
        pytest.skip("../shared/data/tmv not present")
    return p


@pytest.mark.parametrize("z", [1, 6, 8])
def test_total_cross_sections_are_the_integrals_of_the_differential_ones(z):
    # the closed forms are small-angle integrals over the whole plane; 0.5 rad holds all but ~1e-3
    num = quad(lambda t: 2 * math.pi * t * A.differential_cross_section_A2(200.0, z, t), 0, 0.5,
               points=[1e-4, 1e-3, 1e-2], limit=500)[0]
    assert num == pytest.approx(A.total_cross_section_A2(200.0, z), rel=2e-3)


def test_carbon_elastic_cross_section_matches_reimers_value():
    # Reimer's model for C at 200 kV: σ_el = 4π Z^{4/3} γ²/k² = 4.23e-3 Å² (mean free path ~2400 Å in
    # 2 g/cm³ carbon); a factor-2 error of γ or k would cross this band
    assert A.elastic_cross_section_A2(200.0, 6) == pytest.approx(4.226e-3, rel=1e-3)


def test_one_atoms_absorption_integrates_to_half_its_cross_section_over_sigma():
    atoms = Atoms(positions=[[0.3, -0.7, 0.0]], elements=[0], species=(6,), b_factors=[30.0], occupancies=[1.0])
    st = A.AbsorptionPotentialStage(atoms, (32, 32), 1.0, 200.0, solvent=False)
    v = st(atoms.positions, atoms.b_factors)
    want = A.total_cross_section_A2(200.0, 6) / (2 * interaction_constant(200.0))
    assert v.sum() * 1.0 ** 2 == pytest.approx(want, rel=1e-9)
    # centred on the atom: its centroid sits at the atom's position
    ii, jj = np.indices(v.shape[1:])
    cx = ((jj - 16) * v[0]).sum() / v.sum()
    assert cx == pytest.approx(0.3, abs=0.01)  # the sinc² correction leaves ~3e-3 px of alias


def test_displaced_ice_removes_the_ice_absorption_of_the_atoms_volume():
    atoms = Atoms(positions=[[0.0, 0.0, 0.0]], elements=[0], species=(6,), b_factors=[30.0], occupancies=[1.0])
    v = A.AbsorptionPotentialStage(atoms, (32, 32), 1.0, 200.0, solvent=True)(atoms.positions, atoms.b_factors)
    own = A.total_cross_section_A2(200.0, 6) / (2 * interaction_constant(200.0))
    displaced = A.DISPLACED_VOLUME_A3_PER_DA * 12.011 * A.ice_absorption_V(200.0)
    assert v.sum() == pytest.approx(own - displaced, rel=1e-6)


def test_inelastic_blur_returns_the_carbon_fraction_scattered_inside_the_aperture():
    theta = 8.33e-3
    st = I.InelasticBlur((64, 64), 5.0, 200.0, 5e4, theta)
    inside = quad(lambda t: 2 * math.pi * t * A.differential_cross_section_A2(200.0, 6, t), 0, theta,
                  points=[1e-4, 1e-3], limit=500)[0] / A.total_cross_section_A2(200.0, 6)
    out = st(np.ones((64, 64)))
    assert out.mean() == pytest.approx(inside, rel=0.02)
    assert 0.3 < inside < 0.95


def test_ice_filter_keeps_the_mean_of_unscattered_plus_aperture_and_damps_contrast_by_the_total():
    L, n, theta = 500.0, 0.0335, 8.33e-3
    st = I.IceScattering((128, 128), 5.0, 200.0, 5e4, theta)
    sig = A.ice_cross_section_A2(200.0)
    inside = quad(lambda t: 2 * math.pi * t * (A.differential_cross_section_A2(200.0, 8, t)
                                                + 2 * A.differential_cross_section_A2(200.0, 1, t)),
                  0, theta, points=[1e-4, 1e-3], limit=500)[0]
    x = np.arange(128)
    img = 1 + 0.01 * np.cos(2 * math.pi * 40 * x / 128)[None, :] * np.ones((128, 1))  # 0.0625 Å⁻¹
    out = st(img, np.full((128, 128), L))
    assert out.mean() == pytest.approx(math.exp(-L * n * (sig - inside)), rel=0.01)
    amp = (out - out.mean()).std() / 0.01 * math.sqrt(2)
    # the elastic part is spread far (θ₀Δf ≫ 16 Å), the inelastic (θ_E Δf ≈ 7 Å) only partly: between
    assert math.exp(-L * n * sig) < amp < math.exp(-L * n * sig * 0.6)


def test_temsim_reader_turns_on_temsims_model_and_toml_keeps_cutems(tmv_input):
    c = load_temsim(tmv_input)
    assert c.simulation.absorption_model == "cross_section" and c.simulation.inelastic_background
    assert c.simulation.b_factor_floor_A2 == pytest.approx(200.0)  # voxel_size = 0.1 nm
    assert c.simulation.solvent_model == "clamp" and c.simulation.solvent_map_voxel_A == pytest.approx(1.0)
    assert all(p.implicit_hydrogens for p in c.particles)          # add_hydrogen defaults to yes
    d = default_config().simulation
    assert c.simulation.grid_origin == "middle"                   # pixel i at (i − (n−1)/2)·pixel
    assert (d.absorption_model, d.inelastic_background, d.b_factor_floor_A2, d.solvent_model, d.grid_origin) == \
        ("ratio", False, 0.0, "displaced", "fft")


def test_map_projection_adjoint_passes_the_dot_test():
    rng = np.random.default_rng(1)
    for stage, inputs in SM.MapProjection.cases(np, np.float64, rng):
        assert dottest(stage, inputs, rng).passed


def test_solvent_clamp_vjp_matches_finite_differences():
    rng = np.random.default_rng(2)
    for stage, inputs in SM.SolventClamp.cases(np, np.float64, rng):
        assert check_vjp(stage, inputs, rng).passed


def _tiny_atoms(tmp_path, n=30):
    from cutem.structure import load_particle

    f = tmp_path / "tiny.pdb"
    f.write_text(tiny_pdb(n=n, seed=4, half_extent_A=6.0, b_factor=200.0))
    return load_particle(f)


def test_clamped_map_is_the_atoms_excess_over_the_ice_and_zero_outside(tmp_path):
    atoms = _tiny_atoms(tmp_path)
    vol, box = SM.particle_map(atoms, 1.0)
    vi = ice_potential_V()
    m = SM.SolventClamp(vi)(vol)
    # the box edge lies in the ice (5 Å padding, B = 200 Å²): the boundary mean is V_ice itself
    np.testing.assert_allclose(m, np.maximum(vol - vi, 0.0), atol=1e-9)
    assert (m > 0).any() and (vol < vi).any()
    # the clamp keeps less than the bare atoms minus the ice over the region they exceed it
    assert m.sum() < vol.sum()
    # voxel centres: the bounding-box centre ± 5 Å, x fastest
    c, n = SM.map_geometry(atoms, 1.0)
    vox = SM.voxel_centres(*box, 1.0)
    assert vox.shape == (vol.size, 3) and np.allclose(vox.mean(0), c) and np.allclose(box[0], c)
    assert vox[1, 0] - vox[0, 0] == pytest.approx(1.0) and vol.shape == (n[2], n[1], n[0])


def test_map_projection_keeps_the_maps_integral_and_its_centre(tmp_path):
    atoms = _tiny_atoms(tmp_path)
    vol, box = SM.particle_map(atoms, 1.0)
    vox = SM.voxel_centres(*box, 1.0)
    m = SM.SolventClamp(ice_potential_V())(vol)
    t = np.array([12.0, -7.5, 3.0])
    R = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]
    p = SM.MapProjection(box, 1.0, [(R, t)], (32, 32), 4.0)(m)[0]
    assert p.sum() * 4.0 ** 2 == pytest.approx(m.sum() * 1.0 ** 3, rel=1e-9)
    # at the voxel pitch (no sub-pixel binning) the bilinear spread keeps the map's centroid exactly
    p1 = SM.MapProjection(box, 1.0, [(R, t)], (64, 64), 1.0)(m)[0]
    ii, jj = np.indices(p1.shape)
    pos = np.asarray(vox) @ R.T + t
    w = m.ravel()
    assert ((jj - 32) * p1).sum() / p1.sum() == pytest.approx((pos[:, 0] * w).sum() / w.sum(), abs=1e-6)
    assert ((ii - 32) * p1).sum() / p1.sum() == pytest.approx((pos[:, 1] * w).sum() / w.sum(), abs=1e-6)


def test_absorption_map_integrates_to_half_the_cross_sections_over_sigma(tmp_path):
    atoms = _tiny_atoms(tmp_path)
    m = SM.absorption_map(atoms, 1.0, 200.0, b_floor_A2=200.0)
    zs = np.asarray(atoms.species)[atoms.elements]
    want = sum(o * A.total_cross_section_A2(200.0, z) for o, z in zip(atoms.occupancies, zs)) \
        / (2 * interaction_constant(200.0))
    assert m.sum() == pytest.approx(want, rel=1e-6)
    # TEM-simulator's width max(B + 20, 200 × voxel²) = 220 Å² here: a point atom's map has the
    # Gaussian's second moment β/(8π²) per axis
    one = atoms.select(np.arange(len(atoms)) == 0)
    g = SM.absorption_map(one, 1.0, 200.0, b_floor_A2=200.0)
    c, n = SM.map_geometry(one, 1.0)
    x = (np.arange(n[0]) - 0.5 * (n[0] - 1))
    prof = g.sum((0, 1))
    assert (prof * x ** 2).sum() / prof.sum() == pytest.approx(220.0 / (8 * math.pi ** 2), rel=0.02)


def test_temsim_input_takes_both_potentials_from_the_clamped_maps(tmv_input):
    import dataclasses

    from cutem.imaging import ImageModel

    cfg = load_temsim(tmv_input)
    cfg = dataclasses.replace(cfg, particles=tuple(dataclasses.replace(p, defocus_correction=False)
                                                   for p in cfg.particles))   # its Laplacian terms take both signs
    m = ImageModel.from_config(cfg, 1, dtype="float64")
    v, va = m.potential()
    vi = np.asarray(m._ice_potential({}))
    # the clamp keeps only the excess over the ice: the particles' contrast and absorption are
    # non-negative (up to the map's FFT ripple) and both are nonzero
    assert (v - vi).min() > -1e-3 * (v - vi).max() and (v - vi).max() > 10
    assert va.min() > -1e-3 * va.max() and va.max() > 0.1


def test_clamp_refuses_a_gradient_with_respect_to_atom_positions(tmv_input):
    from cutem.errors import InputError
    from cutem.imaging import ImageModel

    m = ImageModel.from_config(load_temsim(tmv_input), 1)
    with pytest.raises(InputError, match="clamp"):
        m.potential({"positions": m.inputs()["positions"]})


@pytest.mark.slow
def test_tmv_mean_matches_difftems_measured_mean(tmv_input):
    # issue 14 measured DiffTEM's noise-free tilt 0 mean at 220.2 (cutem without the model: 250.0)
    from cutem.imaging import ImageModel

    img = ImageModel.from_config(load_temsim(tmv_input), 0).noise_free()
    assert float(np.mean(img)) == pytest.approx(220.2, rel=0.01)


def test_particle_maps_are_built_once_per_run_and_reused_by_every_tilt(tmv_input, monkeypatch):
    from cutem.imaging import ImageModel
    from cutem.specimen import scene_from_config

    calls = []
    orig = SM.particle_map
    monkeypatch.setattr(SM, "particle_map", lambda *a, **k: calls.append(1) or orig(*a, **k))
    cfg = load_temsim(tmv_input)
    sc = scene_from_config(cfg)
    v = [ImageModel.from_config(cfg, k, scene=sc, dtype="float64").potential()[0] for k in (0, 1)]
    assert len(calls) == 1                       # one particle type, one map for both tilts
    assert not np.allclose(v[0], v[1])           # each tilt still projects it its own way


def test_map_projection_wraps_a_copy_across_the_field_edge_like_the_periodic_grid(tmp_path):
    atoms = _tiny_atoms(tmp_path)
    vol, box = SM.particle_map(atoms, 1.0)
    m = SM.SolventClamp(ice_potential_V())(vol)
    px, n = 2.0, (24, 20)
    # a whole-pixel move of the copy is a roll of its image, also when its footprint straddles the edge
    p0 = SM.MapProjection(box, 1.0, [(np.eye(3), np.zeros(3))], n, px)(m)[0]
    p1 = SM.MapProjection(box, 1.0, [(np.eye(3), np.array([9 * px, -11 * px, 0.0]))], n, px)(m)[0]
    np.testing.assert_allclose(p1, np.roll(p0, (-11, 9), axis=(0, 1)), rtol=0, atol=1e-12 * p0.max())


def test_multislice_puts_each_clamped_copy_in_one_slice_and_keeps_the_projection(tmv_input):
    import dataclasses

    from cutem.imaging import ImageModel
    from cutem.specimen import scene_from_config

    cfg = load_temsim(tmv_input)
    sc = scene_from_config(cfg)
    proj = ImageModel.from_config(cfg, 1, scene=sc, dtype="float64")
    ms_cfg = dataclasses.replace(cfg, simulation=dataclasses.replace(cfg.simulation, method="multislice",
                                                                     slice_thickness_A=100.0))
    ms = ImageModel.from_config(ms_cfg, 1, scene=sc, dtype="float64")
    a = np.asarray(proj._atom_potential({}))
    b = np.asarray(ms._atom_potential({}))
    assert b.shape[0] == ms.n_slices > 1
    np.testing.assert_allclose(b.sum(0), a[0], rtol=0, atol=1e-9 * a.max())
    assert sum(bool(np.abs(s).max() > 0) for s in b) == 1   # the three copies all sit at z = 0


def test_temsims_floor_widens_each_gaussian_to_200_voxel2_not_the_atoms_b(tmp_path):
    import cutem.elements as E

    one = Atoms(positions=[[0.0, 0.0, 0.0]], elements=[0], species=(6,), b_factors=[90.0], occupancies=[1.0])
    vol, box = SM.particle_map(one, 0.5, gaussian_floor_A2=200.0, padding_A=12.0)
    # every bᵢ + 90 < 200 for carbon, so all five Gaussians take width 200 Å²: the map's second moment
    # per axis is 200/(8π²), where flooring the atom's B instead (200 + bᵢ) would give more
    x = (np.arange(box[1][0]) - 0.5 * (box[1][0] - 1)) * 0.5
    prof = vol.sum((0, 1))
    assert (prof * x ** 2).sum() / prof.sum() == pytest.approx(200.0 / (8 * math.pi ** 2), rel=0.01)
    assert vol.sum() * 0.5 ** 3 == pytest.approx(E.POTENTIAL_CONSTANT_V_A2 * E.f0(6), rel=1e-4)


def test_depth_weighted_laplacian_of_a_thin_layer_is_its_in_plane_laplacian_times_depth():
    # one layer at depth z0 = 2 voxels: the ∂z² part of the 7-point Laplacian sums to 0 over the layer
    # and its neighbours, so Σ z ∇²M = z0 ∇²_xy M; in Fourier ≈ −4π² q² z0 at low q (the Fresnel term)
    rng = np.random.default_rng(6)
    n, vox = 32, 1.0
    f = np.fft.fftfreq(n)
    yy, xx = np.indices((n, n)) - n / 2
    layer = sum(rng.uniform(0.5, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18.0)
                for cx, cy in rng.uniform(-5, 5, (6, 2)))             # smooth, ~0 at the box edge
    m = np.zeros((7, n, n))
    m[5] = layer                                                  # depth (5 − 3) voxels, neighbours inside
    box = (np.zeros(3), np.array([n, n, 7]))
    t = np.array([-0.5, -0.5, 0.0]) * vox                         # voxel i onto pixel i (even n)
    proj = SM.MapProjection(box, vox, [(np.eye(3), t)], (n, n), vox)
    zproj = SM.MapProjection(box, vox, [(np.eye(3), t)], (n, n), vox, depth=True)
    p = proj(m)[0]
    c = zproj(SM.DiscreteLaplacian(vox)(m))[0]
    np.testing.assert_allclose(p, layer * vox, atol=1e-12)        # axis-aligned, voxel = pixel: a copy
    q = np.pad(layer, 1)                                          # zero outside, as the 3D stencil
    lap2d = (q[2:, 1:-1] + q[:-2, 1:-1] + q[1:-1, 2:] + q[1:-1, :-2] - 4 * layer) / vox ** 2
    np.testing.assert_allclose(c, 2.0 * vox * lap2d * vox, atol=1e-6 * np.abs(c).max())
    F, G = np.fft.fft2(p), np.fft.fft2(c)
    q2 = (f[None, 1] / vox) ** 2
    assert (G[0, 1] / F[0, 1]).real == pytest.approx(-4 * math.pi ** 2 * q2 * 2.0, rel=0.01)


@pytest.mark.parametrize("stage", [SM.DiscreteLaplacian])
def test_discrete_laplacian_is_self_adjoint(stage):
    rng = np.random.default_rng(7)
    for st, inputs in stage.cases(np, np.float64, rng):
        assert dottest(st, inputs, rng).passed


def test_defocus_correction_changes_the_tmv_image_by_about_a_tenth_of_a_percent(tmv_input):
    import dataclasses

    from cutem.imaging import ImageModel

    cfg = load_temsim(tmv_input)
    assert all(p.defocus_correction for p in cfg.particles)        # use_defocus_corr = yes
    off = dataclasses.replace(cfg, particles=tuple(dataclasses.replace(p, defocus_correction=False)
                                                   for p in cfg.particles))
    a = np.asarray(ImageModel.from_config(cfg, 1, dtype="float64").noise_free())
    b = np.asarray(ImageModel.from_config(off, 1, dtype="float64").noise_free())
    rel = np.std(a - b) / np.std(b)
    # DiffTEM (opposite sign) measures 0.12 % rms; TEM-simulator's manual: "usually negligible"
    assert 3e-4 < rel < 5e-3
