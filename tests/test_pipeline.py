"""The whole microscope: vacuum counts, gradients of the full chain, multislice vs phase object."""
from importlib.resources import files

import numpy as np
import pytest

from adjoints import Tape, ops, taylor_test
from cutem import detector as D
from cutem.config import ParticleSpec, RunConfig
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from cutem.imaging import ImageModel
from cutem.pipeline import build_scene, simulate, value_and_grad_image

SUBUNIT = str(files("cutem.data") / "tmv" / "2OM3_model1.pdb")


def small_config(method="projection", particles=True, ice=True, dtype="float64", **det):
    detector = Detector(nx=48, ny=48, pixel_size_A=3.0, dose_e_per_A2=20.0, dqe=0.6, mtf_a=0.7, mtf_b=0.2,
                        mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, gain=2.0, **det)
    parts = (ParticleSpec(name="cp", structure=SUBUNIT, placement="list", positions_A=((0.0, 0.0, 0.0),),
                          orientations_deg=((0.0, 30.0, 0.0),)),) if particles else ()
    return RunConfig(optics=Optics(voltage_kV=300, defocus_u_A=15000, defocus_v_A=13000, astigmatism_angle_deg=20,
                                   cs_mm=2.7, illumination_angle_mrad=0.05, energy_spread_eV=0.8),
                     detector=detector, sample=Sample(thickness_center_A=200, thickness_edge_A=300, ice=ice),
                     simulation=Simulation(method=method, slice_thickness_A=25.0, dtype=dtype, oversampling=2),
                     geometry=Geometry(tilt_angles_deg=(0.0, 30.0)), particles=parts, seed=3)


def test_vacuum_noise_free_image_is_exactly_gain_dose_pixel_area():
    cfg = small_config(particles=False, ice=False)
    res = simulate(cfg)
    expected = cfg.detector.gain * cfg.detector.dose_e_per_A2 * cfg.detector.pixel_size_A ** 2
    np.testing.assert_allclose(res.noise_free, expected, rtol=1e-6)
    # the noisy image is unbiased: its mean over the field matches within 3 standard errors
    n = res.images.size
    std_counts = np.sqrt(cfg.detector.dose_e_per_A2 * cfg.detector.pixel_size_A ** 2 / cfg.detector.dqe)
    assert abs(res.images.mean() - expected) < 3 * cfg.detector.gain * std_counts / np.sqrt(n) * 1.0 + 1e-9


def test_particle_makes_contrast_and_mean_follows_dose():
    cfg = small_config()
    res = simulate(cfg)
    nf = res.noise_free[0]
    flat = cfg.detector.gain * cfg.detector.dose_e_per_A2 * cfg.detector.pixel_size_A ** 2
    assert res.atoms_count == 1279  # 2OM3 model 1 without hydrogens
    assert nf.std() / flat > 0.002  # the subunit is visible (0.4%; 0.08% if alternates kept occupancy 0.2)
    assert abs(nf.mean() / flat - 1) < 0.02  # phase contrast moves little mean intensity
    assert not np.allclose(res.noise_free[0], res.noise_free[1])  # tilts differ


def _chain(model, v, draws, target):
    det = model.render({"potential": v}, estimator="pathwise", draws=draws)
    return ops.mean(ops.square(det.image - target))


def test_taylor_test_of_whole_pipeline_with_fixed_noise():
    cfg = small_config()
    model = ImageModel.from_config(cfg, 0)
    v, _ = model.potential()
    det0 = model.render(rng=1, estimator="pathwise")
    target = det0.image * 1.01 + 0.5
    draws = det0.draws
    with Tape() as tape:
        vv = tape.watch(v)
        loss = _chain(model, vv, draws, target)
        (g,) = tape.gradient(loss, [vv])
    rng = np.random.default_rng(0)
    d = rng.standard_normal(v.shape) * np.abs(v).max()
    f = lambda x: _chain(model, x, draws, target)
    res = taylor_test(f, v, d, g, h0=1e-2)
    assert res.passed, (res.slopes0, res.slopes1)
    assert np.median(res.slopes1) == pytest.approx(2.0, abs=0.25)


@pytest.mark.parametrize("name", ["defocus_u_A", "astigmatism_angle_rad", "mtf_alpha", "gain", "dose_e_per_A2"])
def test_parameter_gradient_matches_finite_difference(name):
    cfg = small_config()
    scene = build_scene(cfg)
    target = simulate(cfg).images[0] * 0.98
    loss = lambda img: ops.mean(ops.square(img - target))
    val, grads, det = value_and_grad_image(cfg, loss, [name], scene=scene, estimator="pathwise")
    base = {**__import__("cutem.optics", fromlist=["x"]).optics_inputs(cfg.optics),
            **D.detector_inputs(cfg.detector)}
    x0 = float(base[name])
    h = 1e-5 * max(abs(x0), 1.0)

    model = ImageModel.from_config(cfg, 0, scene=scene)

    def at(x):
        det_ = model.render({name: np.asarray(x)}, estimator="pathwise", draws=det.draws)
        return float(loss(det_.image))

    fd = (at(x0 + h) - at(x0 - h)) / (2 * h)
    assert float(grads[name]) == pytest.approx(fd, rel=1e-5, abs=1e-12)


def test_multislice_matches_phase_object_for_thin_specimen():
    base = small_config(ice=False)
    proj = simulate(base.replace(geometry=Geometry(tilt_angles_deg=(0.0,)))).noise_free[0]
    ms = simulate(base.replace(geometry=Geometry(tilt_angles_deg=(0.0,)),
                               simulation=base.simulation.replace(method="multislice", slice_thickness_A=10.0))
                  ).noise_free[0]
    flat = proj.mean()
    contrast = np.linalg.norm(proj - flat)
    # a ~50 Å protein: propagation inside it changes the image by a few percent of the contrast
    assert np.linalg.norm(ms - proj) / contrast < 0.1
    assert np.linalg.norm(ms - proj) / contrast > 1e-6  # and multislice really propagated


@pytest.mark.parametrize("name", ["positions", "b_factors", "potential_scale", "thickness_center_A"])
def test_specimen_gradients_match_finite_differences(name):
    cfg = small_config(particles=True, ice=True)
    # B = 90 Å² sits on the potential's B-interpolation lattice (a kink); move off it
    cfg = cfg.replace(simulation=cfg.simulation.replace(b_factor_A2=2.3))
    scene = build_scene(cfg)
    target = simulate(cfg).images[0]  # a noisy observation: the loss and its gradient are O(1)
    loss = lambda img: ops.mean(ops.square(img - target))
    val, grads, det = value_and_grad_image(cfg, loss, [name], scene=scene, estimator="none")
    g = grads[name]
    model = ImageModel.from_config(cfg, 0, scene=scene)
    base = model.inputs()
    rng = np.random.default_rng(5)
    d = rng.standard_normal(np.shape(base[name]))
    if name == "positions":
        d[:, 2] = 0.0  # the slice an atom falls in is piecewise constant in z
    h = 1e-4

    def at(t):
        return float(loss(model.render({name: base[name] + t * d}, estimator="none").image))

    fd = (at(h) - at(-h)) / (2 * h)
    assert float(np.sum(g * d)) == pytest.approx(fd, rel=2e-4)


@pytest.mark.parametrize("method", ["projection", "multislice"])
@pytest.mark.parametrize("tilt", [0, 1])
@pytest.mark.parametrize("centre, edge", [(300.0, 300.0), (290.0, 290.0), (290.0, 400.0)])
@pytest.mark.parametrize("inelastic", [False, True])
def test_thickness_gradient_matches_finite_differences_at_centre_edge_tie(method, tilt, centre, edge, inelastic):
    # issue 19: the multislice box followed max(centre, edge) outside the tape, so at a tie the
    # tape missed the ice growing past the box (it was 0 here) and the box's own move; the ice's
    # inelastic filter took its path-length levels from the config's ice (off by 3e-4 to 2e-3).
    # The finite differences rebuild the model from the config, box, levels and all. Centre
    # 300 Å with 25 Å slices also puts the untilted slab's surfaces on slice boundaries
    # (z = ±150 Å), and its 300 Å path on a level of the filter's 50 Å lattice.
    cfg = small_config(method=method)
    cfg = cfg.replace(sample=cfg.sample.replace(diameter_A=400.0, thickness_center_A=centre, thickness_edge_A=edge,
                                                ice_absorption=0.1),
                      simulation=cfg.simulation.replace(inelastic_background=inelastic))
    scene = build_scene(cfg)
    target = simulate(cfg).images[tilt]
    loss = lambda img: ops.mean(ops.square(img - target))
    names = ["thickness_center_A", "thickness_edge_A"]
    _, grads, _ = value_and_grad_image(cfg, loss, names, tilt=tilt, scene=scene, estimator="none")
    # small steps: a curved ice surface crosses slice boundaries along rings of pixels (kinks of
    # the sliced slab, within O(h) of the point), and the filter's interpolation is C¹, not C²,
    # at its levels (central differences O(h) off there); the box itself no longer moves
    h = 1e-4
    for name in names:
        def at(t):
            c = cfg.replace(sample=cfg.sample.replace(**{name: getattr(cfg.sample, name) + t}))
            return float(loss(ImageModel.from_config(c, tilt, scene=scene).render(estimator="none").image))

        fd = (at(h) - at(-h)) / (2 * h)
        assert abs(fd) > 1e-3   # the thickness is seen (through the ice's absorption)
        assert float(grads[name]) == pytest.approx(fd, rel=2e-6), name
