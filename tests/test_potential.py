"""Projected potential: analytic single atom, exact Fourier sum, slices, ice, gradients."""
import numpy as np
import pytest

from adjoints import check_vjp, REGISTRY
from cutem import elements as E
from cutem import potential as P
from cutem import structure as S
from cutem.params import Sample
from cutem.structure import Atoms


def _atom(x, y, z=0.0, el=6, b=0.0, occ=1.0):
    return Atoms(np.array([[x, y, z]]), [0], (el,), [b], [occ])


@pytest.mark.parametrize("pos", [(0.0, 0.0), (0.0123, -0.031)])
def test_single_carbon_matches_analytic_formula(pos):
    # fine grid (0.005 Å): the atom's transform is negligible beyond Nyquist (q = 100 Å⁻¹)
    px, n = 0.005, 2048
    v = P.projected_potential(_atom(*pos), (n, n), px, dtype=np.float64)[0]
    yy, xx = (np.mgrid[:n, :n] - n / 2) * px
    ref = E.projected_atom_potential(6, np.hypot(xx - pos[0], yy - pos[1]))
    assert np.abs(v - ref).max() / ref.max() < 1e-3
    assert v.sum() * px * px == pytest.approx(E.POTENTIAL_CONSTANT_V_A2 * E.f0(6), rel=1e-9)
    assert v.sum() * px * px == pytest.approx(120.1, abs=0.05)


def test_grid_convention_pixel_centre():
    # an atom at (3 px, −2 px) peaks at pixel (ny/2 − 2, nx/2 + 3)
    v = P.projected_potential(_atom(3 * 0.5, -2 * 0.5, b=20), (32, 40), 0.5)[0]
    assert np.unravel_index(np.argmax(v), v.shape) == (16 - 2, 20 + 3)


def test_b_factor_and_occupancy():
    px, n = 0.1, 256
    yy, xx = (np.mgrid[:n, :n] - n / 2) * px
    # one B: one exact Gaussian at that B
    v = P.projected_potential(_atom(0.03, 0.07, b=22.5, occ=0.5), (n, n), px, dtype=np.float64, spread_order=3)[0]
    ref = 0.5 * E.projected_atom_potential(6, np.hypot(xx - 0.03, yy - 0.07), 22.5)
    assert np.linalg.norm(v - ref) / np.linalg.norm(ref) < 1e-5


def _two_atoms(b1, b2):
    return S.Atoms(np.array([[-3.1, 0.4, 0.0], [2.7, -1.3, 0.0]]), [0, 0], (6,), [b1, b2], [1.0, 1.0])


@pytest.mark.parametrize("tol", [1e-3, 1e-4])
def test_atoms_with_different_b_are_within_the_b_tolerance_of_their_exact_potentials(tol):
    px, n = 0.5, 96
    atoms = _two_atoms(2.0, 100.0)   # the B range of an X-ray model (1F2N: 2 to 100 Å²)
    v = P.projected_potential(atoms, (n, n), px, dtype=np.float64, b_tolerance=tol)[0]
    for k, b in enumerate((2.0, 100.0)):
        one = P.projected_potential(atoms.select(slice(k, k + 1)), (n, n), px, dtype=np.float64)[0]  # exact B
        other = P.projected_potential(atoms.select(slice(1 - k, 2 - k)), (n, n), px, dtype=np.float64)[0]
        err = np.linalg.norm(v - other - one) / np.linalg.norm(one)
        assert err < tol
    # the integral of each atom stays exact (the Gaussians' coefficients sum to 1)
    assert v.sum() * px * px == pytest.approx(2 * E.POTENTIAL_CONSTANT_V_A2 * E.f0(6), rel=1e-9)


@pytest.mark.parametrize("px, n, tol", [(1.0, 48, 1e-3), (0.5, 96, 1e-3), (1.0, 48, 1e-4)])
def test_elements_on_shared_pivots_are_within_the_b_tolerance_of_their_exact_potentials(px, n, tol):
    # C, N, O, S at the ends of an X-ray model's B range: on carbon's pivots where they fit on
    # them (with wider windows for elements with few atoms), on their own where not
    rng = np.random.default_rng(4)
    pos = np.column_stack([rng.uniform(-20, 20, 8), rng.uniform(-20, 20, 8), np.zeros(8)])
    atoms = S.Atoms(pos, np.repeat(np.arange(4), 2), (6, 7, 8, 16), np.tile([2.0, 100.0], 4), np.ones(8))
    order = np.argsort(atoms.elements, kind="stable")
    band = P._band(px, (n, n))
    g = P._Groups(atoms.elements[order], atoms.species, atoms.b_factors[order], band, tol, n * n, shared=True)
    if (px, tol) == (1.0, 1e-3):
        assert g.shared is not None and g.shared[0] == 6 and g.shared[2] == (0, 1, 2, 3)
    # with a solvent term every element keeps its own pivots
    assert P._Groups(atoms.elements[order], atoms.species, atoms.b_factors[order], band, tol, n * n).shared is None
    v = P.projected_potential(atoms, (n, n), px, dtype=np.float64, b_tolerance=tol)[0]
    exact = sum(P.projected_potential(atoms.select(slice(k, k + 1)), (n, n), px, dtype=np.float64)[0]
                for k in range(8))   # one atom: one Gaussian at its own B, exact
    # measured 2.0e-4 (9 groups), 4.1e-5 (0.5 Å: own pivots, 50 groups), 4.3e-5 (1e-4: shared, 23)
    assert np.linalg.norm(v - exact) / np.linalg.norm(exact) < tol
    # each element's integral stays exact (its coefficients sum to f_Z(0)/f_C(0))
    total = sum(2 * E.f0(z) for z in (6, 7, 8, 16)) * E.POTENTIAL_CONSTANT_V_A2
    assert v.sum() * px * px == pytest.approx(total, rel=1e-9)


def test_b_gaussians_per_element_do_not_grow_with_the_number_of_distinct_b():
    rng = np.random.default_rng(0)
    counts = []
    for n_b in (2, 20, 2000):
        b = rng.uniform(2.0, 100.0, n_b)
        counts.append(P.group_count((6,), np.zeros(n_b, int), b, 1.0, (1024, 1024)))
    assert counts[-1] <= 12                # a 5 Å² lattice needed 21 levels over 2–100 Å²
    assert counts[-1] - counts[1] <= 1


def test_tmv_fragment_matches_exact_fourier_sum():
    frag = S.tmv_fragment()
    assert frag.n == 62671
    ref = P.exact_fourier_potential(frag, (96, 96), 1.0)[0]
    cubic = P.projected_potential(frag, (96, 96), 1.0, dtype=np.float64, spread_order=3)[0]
    lin = P.projected_potential(frag, (96, 96), 1.0, dtype=np.float64, spread_order=1)[0]
    err3 = np.linalg.norm(cubic - ref) / np.linalg.norm(ref)
    err1 = np.linalg.norm(lin - ref) / np.linalg.norm(ref)
    assert err3 < 1e-3          # cubic B-spline scatter
    assert 1e-3 < err1 < 1e-2   # bilinear: measured 6e-3, the reason cubic is the default
    assert cubic.mean() == pytest.approx(ref.mean(), rel=1e-9)


def _edge_atoms(rng, b):
    """Atoms everywhere on a 24×32 field at 1 Å, many within two pixels of the edges where the
    cubic taps wrap around."""
    n = len(b)
    pos = np.column_stack([rng.uniform(-16, 16, n), rng.uniform(-12, 12, n), np.zeros(n)])
    pos[:200, 0] = rng.choice([-16.0, -15.4, 14.2, 15.9], 200)
    return Atoms(pos, rng.integers(0, 3, n), (6, 7, 8), b, np.ones(n))


@pytest.mark.parametrize("order", [1, 3])
def test_threaded_block_scatter_equals_one_block_including_wrapped_edges(order, monkeypatch, engine_threads):
    atoms = _edge_atoms(np.random.default_rng(11), np.full(3000, 30.0))
    kw = dict(dtype=np.float64, spread_order=order)
    engine_threads(1)
    monkeypatch.setattr(P, "_SPREAD_BLOCK", 10 ** 9)
    one = P.projected_potential(atoms, (24, 32), 1.0, **kw)[0]
    engine_threads(2)
    monkeypatch.setattr(P, "_SPREAD_BLOCK", 97)
    many = P.projected_potential(atoms, (24, 32), 1.0, **kw)[0]
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-12 * np.abs(one).max())
    ref = P.exact_fourier_potential(atoms, (24, 32), 1.0, b_factor_A2=0.0)[0]
    # B = 30 Å² leaves much power beyond Nyquist to alias: measured 3.1e-2 (bilinear), 1.5e-2 (cubic)
    assert np.linalg.norm(many - ref) / np.linalg.norm(ref) < (4e-2 if order == 1 else 2e-2)


@pytest.mark.parametrize("order", [1, 3])
def test_threaded_block_gather_equals_one_block_including_wrapped_edges(order, monkeypatch, engine_threads):
    # the VJP's gather (positions and B cotangents) split over threads in blocks, edge atoms too
    rng = np.random.default_rng(12)
    atoms = _edge_atoms(rng, rng.uniform(10.0, 60.0, 3000))
    st = P.ProjectedPotentialStage(atoms, (24, 32), 1.0, spread_order=order)
    g = rng.standard_normal((1, 24, 32))
    inputs = (atoms.positions, atoms.b_factors, np.asarray(1.0))

    def cotangents():
        out, ctx = st.apply(*inputs)
        return st.cotangents(ctx, g, inputs)[:2]

    engine_threads(1)
    monkeypatch.setattr(P, "_SPREAD_BLOCK", 10 ** 9)
    one = cotangents()
    engine_threads(2)
    monkeypatch.setattr(P, "_SPREAD_BLOCK", 97)
    many = cotangents()
    for a, c in zip(many, one):
        assert np.abs(c).max() > 0
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-12 * np.abs(c).max())


def test_slices_add_up_to_the_projection_and_hold_their_atoms():
    rng = np.random.default_rng(3)
    pos = rng.uniform(-8, 8, (40, 3))
    atoms = Atoms(pos, rng.integers(0, 2, 40), (6, 8), np.full(40, 30.0), np.ones(40))
    one = P.projected_potential(atoms, (32, 32), 1.0, dtype=np.float64)[0]
    sl = P.projected_potential(atoms, (32, 32), 1.0, slice_thickness_A=4.0, z_range_A=(-8, 8), dtype=np.float64)
    assert sl.shape == (4, 32, 32)
    np.testing.assert_allclose(sl.sum(0), one, atol=1e-9 * np.abs(one).max())
    # each slice integrates to K Σ f(0) of the atoms whose centre it holds
    f0 = np.array([E.f0(6), E.f0(8)])[atoms.elements] * E.POTENTIAL_CONSTANT_V_A2
    s = np.floor((pos[:, 2] + 8) / 4).astype(int)
    np.testing.assert_allclose(sl.sum((1, 2)), np.bincount(s, f0, minlength=4), rtol=1e-9)


def test_float32_agrees_with_float64():
    frag = S.tmv_fragment()
    a = P.projected_potential(frag, (128, 128), 1.0, dtype=np.float32)[0]
    b = P.projected_potential(frag, (128, 128), 1.0, dtype=np.float64)[0]
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5


def test_ice_mean_potential_per_angstrom():
    s = Sample(diameter_A=1e6, thickness_center_A=400.0, thickness_edge_A=400.0)
    v = P.ice_potential(s, (32, 32), 4.0)[0]
    assert v.mean() / 400.0 == pytest.approx(4.88, rel=0.01)
    sl = P.ice_potential(s, (32, 32), 4.0, slice_thickness_A=30.0, z_range_A=(-250, 250))
    np.testing.assert_allclose(sl.sum(0), v, rtol=1e-5)
    # tilted by 60°, the beam crosses twice as much ice
    t = P.ice_potential(s, (32, 32), 4.0, tilt_deg=60.0)[0]
    assert t.mean() == pytest.approx(2 * v.mean(), rel=1e-5)


def test_ice_follows_the_hole_profile():
    s = Sample(diameter_A=200.0, thickness_center_A=50.0, thickness_edge_A=150.0)
    v = P.ice_potential(s, (64, 64), 5.0, dtype=np.float64)[0] / P.ice_potential_V()
    assert v[32, 32] == pytest.approx(50.0)            # centre
    assert v[32, 32 + 10] == pytest.approx(50 + 100 * (2 * 50 / 200) ** 2)   # r = 50 Å
    assert v[0, 0] == pytest.approx(150.0)             # outside the hole: ice at thickness_edge
    c = P.ice_potential(s.replace(support_film="carbon", support_thickness_A=120.0), (64, 64), 5.0)[0]
    assert c[0, 0] == pytest.approx(120 * P.carbon_potential_V(), rel=1e-5)


def _ice_per_pixel(s, shape, px, bounds, tilt_deg, axis_deg, shift_A):
    """The ice stage's slices from the geometry pixel by pixel: each pixel's beam line, its
    mid-plane crossing mapped to the sample frame by Tᵀ, the hole profile there, the overlap."""
    from cutem.specimen import tilt_matrix

    ny, nx = shape
    T = tilt_matrix(tilt_deg, axis_deg)
    n = T[:, 2]
    X, Y = np.meshgrid((np.arange(nx) - nx / 2) * px - shift_A, (np.arange(ny) - ny / 2) * px - shift_A)
    zm = -(n[0] * X + n[1] * Y) / n[2]
    P3 = np.stack([X, Y, zm], -1) @ T
    r2 = ((P3[..., 0] - s.offset_x_A) ** 2 + (P3[..., 1] - s.offset_y_A) ** 2) * 4 / s.diameter_A ** 2
    carbon = s.support_film == "carbon"
    h = np.where(r2 <= 1, s.thickness_center_A + (s.thickness_edge_A - s.thickness_center_A) * r2,
                 0.0 if carbon else s.thickness_edge_A) / abs(n[2])
    film = np.where(r2 > 1, s.support_thickness_A, 0.0) / abs(n[2]) if carbon else 0 * h
    out = []
    for z0, z1 in bounds:
        def ov(L):
            return np.maximum(np.minimum(zm + L / 2, z1) - np.maximum(zm - L / 2, z0), 0.0)
        out.append(P.ice_potential_V() * ov(h) + P.carbon_potential_V() * ov(film))
    return np.stack(out)


@pytest.mark.parametrize("carbon", [False, True])
def test_ice_slices_match_the_per_pixel_geometry(carbon):
    s = Sample(diameter_A=300.0, thickness_center_A=60.0, thickness_edge_A=110.0, offset_x_A=25.0,
               offset_y_A=-40.0)
    if carbon:
        s = s.replace(support_film="carbon", support_thickness_A=90.0)
    shape, px, tilt, axis, shift = (40, 52), 7.0, 38.0, 23.0, -3.5
    st = P.IcePotentialStage(s, shape, px, tilt_deg=tilt, tilt_axis_deg=axis, shift_A=shift)
    one = st(np.float64(s.thickness_center_A), np.float64(s.thickness_edge_A))
    np.testing.assert_allclose(one, _ice_per_pixel(s, shape, px, [(-np.inf, np.inf)], tilt, axis, shift),
                               rtol=1e-12, atol=1e-9)
    st = P.IcePotentialStage(s, shape, px, slice_thickness_A=25.0, z_range_A=(-300.0, 300.0), tilt_deg=tilt,
                             tilt_axis_deg=axis, shift_A=shift)
    sl = st(np.float64(s.thickness_center_A), np.float64(s.thickness_edge_A))
    ref = _ice_per_pixel(s, shape, px, st.bounds, tilt, axis, shift)
    assert ref.sum(0).min() > 0 and (ref > 0).sum(0).max() > 2      # the hole's rim and several slices per pixel
    np.testing.assert_allclose(sl, ref, rtol=1e-12, atol=1e-9)
    # float32 output straight from the float64 geometry: one rounding
    f = P.IcePotentialStage(s, shape, px, tilt_deg=tilt, tilt_axis_deg=axis, shift_A=shift)(
        np.float32(s.thickness_center_A), np.float32(s.thickness_edge_A))
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, one, rtol=3e-7)


@pytest.mark.parametrize("axis", [0.0, 90.0, 30.0])
def test_thin_slices_of_a_tilted_slab_match_the_per_pixel_geometry(axis):
    """Each slice's work is confined to the box where the tilted slab crosses it: the boxes are
    smaller than the field and the slices equal the per-pixel construction everywhere."""
    s = Sample(diameter_A=500.0, thickness_center_A=40.0, thickness_edge_A=70.0, support_film="carbon",
               support_thickness_A=50.0)
    shape, px, tilt = (48, 56), 10.0, 60.0
    st = P.IcePotentialStage(s, shape, px, slice_thickness_A=20.0, z_range_A=(-600.0, 600.0), tilt_deg=tilt,
                             tilt_axis_deg=axis)
    got = st(np.float64(s.thickness_center_A), np.float64(s.thickness_edge_A))
    np.testing.assert_allclose(got, _ice_per_pixel(s, shape, px, st.bounds, tilt, axis, 0.0), rtol=1e-12, atol=1e-9)
    half = 0.5 * max(s.thickness_edge_A, s.support_thickness_A) / np.cos(np.radians(tilt))   # the stage's
    boxes = [st._box(z0, z1, half) for z0, z1 in st.bounds]
    area = [0 if b is None else (b[0].stop - b[0].start) * (b[1].stop - b[1].start) for b in boxes]
    # along a grid axis the band is tight; a diagonal one still leaves the slices at the ends small
    assert sum(area) < (0.35 if axis in (0.0, 90.0) else 0.6) * len(boxes) * 48 * 56, area


def test_displaced_solvent_is_subtracted_once():
    atoms = Atoms(np.array([[0.0, 0, 0], [3.0, 1, 0]]), [0, 1], (6, 8), [20, 20], [1, 1])
    vice = P.ice_potential_V()
    v = P.projected_potential(atoms, (64, 64), 0.5, dtype=np.float64, solvent_V=vice)[0]
    expect = E.POTENTIAL_CONSTANT_V_A2 * (E.f0(6) + E.f0(8)) - vice * P.VOLUME_PER_DALTON_A3 * (
        P.atomic_mass_Da(6) + P.atomic_mass_Da(8))
    assert v.sum() * 0.25 == pytest.approx(expect, rel=1e-9)


def test_volume_projects_to_the_projected_potential():
    frag = S.tmv_fragment()
    vol = P.potential_volume(frag, (128, 64, 64), 2.0, dtype=np.float64)
    # the volume's trilinear scatter projects exactly onto the bilinear 2D scatter
    proj = P.projected_potential(frag, (64, 64), 2.0, dtype=np.float64, spread_order=1)[0]
    np.testing.assert_allclose(vol.sum(0) * 2.0, proj, rtol=1e-8, atol=1e-8 * proj.max())
    # and agrees with the (more accurate) cubic default within the bilinear scatter's aliasing
    cubic = P.projected_potential(frag, (64, 64), 2.0, dtype=np.float64)[0]
    assert np.linalg.norm(vol.sum(0) * 2.0 - cubic) / np.linalg.norm(cubic) < 0.05


@pytest.mark.parametrize("name", ["cutem.potential.ProjectedPotentialStage", "cutem.potential.IcePotentialStage"])
def test_stage_vjps_match_finite_differences(name):
    cls = REGISTRY[name]
    for stage, inputs in cls.cases(np, np.float64, np.random.default_rng(0)):
        r = check_vjp(stage, inputs, tol=1e-6)
        assert r.passed, r.details


def test_stage_check_cases_cover_shared_and_own_pivots():
    # the gradient checks above run the shared pivots (no solvent) and each element's own (solvent)
    kinds = set()
    for stage, inputs in P.ProjectedPotentialStage.cases(np, np.float64, np.random.default_rng(0)):
        plan = P._plan(stage.shape, stage.px, np, np.float64, stage.order)
        for _, sa in stage._slice_atoms(plan, inputs[0], inputs[1], np):
            kinds.add(sa.groups.shared is not None)
    assert kinds == {True, False}


def test_stage_forward_equals_function():
    frag = S.tmv_fragment().select(slice(0, 3000))
    st = P.ProjectedPotentialStage(frag, (64, 64), 1.0)
    out = st(frag.positions, frag.b_factors.astype(np.float64), np.asarray(2.0))
    ref = P.projected_potential(frag, (64, 64), 1.0, dtype=np.float64, scale=2.0)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10 * ref.max())


def test_bad_arguments():
    from cutem.errors import InputError

    with pytest.raises(InputError):
        P.projected_potential(_atom(0, 0), (64, 64), 0.0)
    with pytest.raises(InputError):
        P.projected_potential(_atom(0, 0), (64, 64), 1.0, slice_thickness_A=-1)
    with pytest.raises(InputError):
        P.projected_potential(_atom(0, 0, b=5), (64, 64), 1.0, b_factor_A2=-10)


def test_agrees_with_gemmi_density_calculator():
    from validation.potential_checks import gemmi_projection

    frag = S.tmv_fragment()
    sub = frag.select(slice(0, 1279))  # one subunit
    sub = sub.transformed(translation=-0.5 * (sub.bounding_box()[0] + sub.bounding_box()[1]))
    gem = gemmi_projection(sub, 96.0)
    ref = P.exact_fourier_potential(sub, (96, 96), 1.0)[0]
    cubic = P.projected_potential(sub, (96, 96), 1.0, dtype=np.float64, spread_order=3)[0]
    assert np.linalg.norm(ref - gem) / np.linalg.norm(gem) < 1e-3
    assert np.linalg.norm(cubic - gem) / np.linalg.norm(gem) < 2e-3


def test_cli_potential_writes_mrc_with_pixel_size(tmp_path):
    import mrcfile
    from click.testing import CliRunner

    from cutem.cli import main

    pdb = str(tmp_path / "one.pdb")
    with open(pdb, "w") as fh:
        fh.write("ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00 20.00           C\n"
                 "ATOM      2  O   ALA A   1       3.000   0.000   0.000  1.00 20.00           O\n")
    out = str(tmp_path / "pot.mrc")
    r = CliRunner().invoke(main, ["potential", pdb, "--out", out, "--pixel-size", "0.5", "--shape", "64",
                                  "--no-ice", "-q"])
    assert r.exit_code == 0, r.output
    with mrcfile.open(out) as m:
        assert m.data.shape == (64, 64)
        assert float(m.voxel_size.x) == 0.5
        total = float(m.data.astype(np.float64).sum()) * 0.25
    assert total == pytest.approx(E.POTENTIAL_CONSTANT_V_A2 * (E.f0(6) + E.f0(8)), rel=1e-4)
    vol = str(tmp_path / "vol.mrc")
    r = CliRunner().invoke(main, ["potential", pdb, "--out", vol, "--volume", "--pixel-size", "1", "-q"])
    assert r.exit_code == 0, r.output
    with mrcfile.open(vol) as m:
        assert m.data.ndim == 3 and float(m.voxel_size.x) == 1.0
        # in ice the map's far corner is the ice mean inner potential (V)
        assert float(m.data[m.data.shape[0] // 2, 0, 0]) == pytest.approx(P.ice_potential_V(), rel=0.02)
    r = CliRunner().invoke(main, ["potential", str(tmp_path / "missing.pdb"), "--out", out])
    assert r.exit_code != 0


@pytest.mark.slow
def test_xray_structure_1f2n_potential_matches_the_exact_sum_with_few_groups():
    from helpers import shared_data

    a = S.load_particle(shared_data("pdb", "1f2n.pdb"))   # RYMV asymmetric unit: B from 2 to 100 Å²
    assert a.b_factors.min() == pytest.approx(2.0) and a.b_factors.max() == pytest.approx(100.0)
    shape, px = (256, 256), 1.0
    ref = P.exact_fourier_potential(a, shape, px)[0]
    v = P.projected_potential(a, shape, px, dtype=np.float64)[0]
    # measured 2.95e-2 (the 5 Å² lattice: 2.97e-2): at 1 Å the B-spline scatter's aliasing of the
    # B ≈ 2 Å² atoms dominates (at 0.5 Å: 3.9e-3 against the lattice's 4.9e-3)
    assert np.linalg.norm(v - ref) / np.linalg.norm(ref) < 3.0e-2
    # the B representation alone, against a 10× tighter one: within its 1e-3 per atom
    tight = P.projected_potential(a, shape, px, dtype=np.float64, b_tolerance=1e-4)[0]
    assert np.linalg.norm(v - tight) / np.linalg.norm(tight) < 1e-3
    # C, N, O and S on carbon's 9 pivots, Ca on 8 of them (4-wide windows: 3e-2): 9 transforms (34
    # with every element on its own pivots, as with a solvent term; the 5 Å² lattice: 70)
    assert P.group_count(a.species, a.elements, a.b_factors, px, shape) <= 10
    assert P.group_count(a.species, a.elements, a.b_factors, px, shape, solvent_V=4.9) <= 40
    # the shared pivots against each element's own (measured 7e-5)
    order = np.argsort(a.elements, kind="stable")
    own = P._Groups(a.elements[order], a.species, a.b_factors[order], P._band(px, shape), P.B_TOLERANCE,
                    shape[0] * shape[1], shared=False)
    assert own.n_groups > 30


@pytest.mark.parametrize("px", [1.0, 1.5, 3.0])
def test_b_pivots_refine_where_the_fit_is_worst_without_collapsing(px):
    """Every window's pivots stay apart, and a set that stopped below the cap meets both
    tolerances at every B; the window the cost model takes for any atom count meets them
    (with 2-wide windows the refinement once halved one gap until two pivots coincided,
    1e-10 Å² apart, and 630k carbon atoms on a 518² grid were rendered with ±7e10 coefficients)."""
    band = P._band(px, (64, 64))
    lo, hi = P._b_range(4.8, 115.0)   # the B range of the TMV fragment and 1F2N-like models
    dense = np.linspace(lo, hi, 1001)
    for p in P._B_WINDOWS:
        piv, _ = P._b_pivots(6, lo, hi, band, 1e-3, p)
        assert np.diff(piv).min() > 0.5
        if len(piv) < P._MAX_B_PIVOTS:
            _, _, _, err, d_err = P._window_fits(6, piv, p, band, dense)
            assert err.max() <= 1e-3 and d_err.max() <= P._B_DERIVATIVE_TOLERANCE
    for n in (10, 10 ** 5, 10 ** 9):
        p, piv, _ = P._b_window(6, lo, hi, band, 1e-3, n, P._FFT_PER_PIXEL_IN_ATOMS * 64 * 64)
        _, coef, _, err, d_err = P._window_fits(6, piv, p, band, dense)
        assert err.max() <= 1e-3 and d_err.max() <= P._B_DERIVATIVE_TOLERANCE and np.abs(coef).max() < 10


def test_a_crowded_grid_in_float32_is_the_sum_of_its_parts():
    """Enough carbon atoms of spread B that the scatters outweigh the transforms (the regime
    of a crowded 576 Å field, where the cost model weighs narrower windows on more pivots)
    give in float32 the sum of the potentials of parts of 500 atoms, to twice the B
    tolerance (measured 3e-7); with the collapsed 2-wide pivots it was 0.26 of their norm off."""
    rng = np.random.default_rng(2)
    n, px, shape = 6000, 1.5, (32, 32)
    pos = np.column_stack([rng.uniform(-24, 24, n), rng.uniform(-24, 24, n), np.zeros(n)])
    atoms = S.Atoms(pos, np.zeros(n, int), (6,), rng.uniform(4.8, 115.0, n), np.ones(n))
    v = P.projected_potential(atoms, shape, px, dtype=np.float32)[0].astype(np.float64)
    parts = sum(P.projected_potential(atoms.select(slice(k, k + 500)), shape, px, dtype=np.float64)[0]
                for k in range(0, n, 500))
    assert np.linalg.norm(v - parts) / np.linalg.norm(parts) < 2e-3
