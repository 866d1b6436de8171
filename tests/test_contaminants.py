"""Ice contaminants (Sample.contaminants): balls of ice on the layer, adding their chord to its path."""
import math

import numpy as np
import pytest

from adjoints import ops
from cutem.config import RunConfig, load_config
from cutem.electron import interaction_constant
from cutem.errors import InputError
from cutem.imaging import ImageModel
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from cutem.pipeline import build_scene, simulate, value_and_grad_image
from cutem.potential import ice_potential_V
from cutem.specimen import ice_thickness_A, random_contaminants

BALL = (6.0, -4.0, 100.0 + 40.0, 40.0)   # resting on the top of a 200 Å layer


def _config(contaminants=(), method="projection", tilt=0.0, **opt):
    optics = dict(voltage_kV=300, defocus_u_A=0.0, defocus_v_A=0.0, cs_mm=0.0)
    optics.update(opt)
    return RunConfig(optics=Optics(**optics),
                     detector=Detector(nx=64, ny=64, pixel_size_A=2.0, dose_e_per_A2=30.0, dqe=0.7, mtf_a=0.7,
                                       mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, gain=3.0),
                     sample=Sample(diameter_A=1e5, thickness_center_A=200.0, thickness_edge_A=200.0,
                                   ice_absorption=0.1, contaminants=contaminants),
                     simulation=Simulation(method=method, slice_thickness_A=20.0, dtype="float64"),
                     geometry=Geometry(tilt_angles_deg=(tilt,)), seed=5)


def _chord(shape, px, ball, tilt_deg=0.0):
    # independent of cutem.potential: the centre turned about x by the tilt, the chord per pixel
    ny, nx = shape
    x, y, z, r = ball
    t = math.radians(tilt_deg)
    cx, cy = x, y * math.cos(t) - z * math.sin(t)
    X, Y = np.meshgrid((np.arange(nx) - nx / 2) * px - cx, (np.arange(ny) - ny / 2) * px - cy)
    return 2 * np.sqrt(np.maximum(r * r - X ** 2 - Y ** 2, 0.0))


def test_contaminant_darkens_the_image_by_the_phase_and_absorption_of_its_path_length():
    cfg = _config((BALL,))
    model = ImageModel.from_config(cfg)
    plain = ImageModel.from_config(_config())
    chord = _chord(model.grid.shape, model.grid.pixel_size_A, BALL)
    sig, V = interaction_constant(300.0), ice_potential_V()
    # the exit wave: phase σ V ℓ and amplitude exp(−σ · 0.1 · V ℓ) more than beside the ball, per pixel
    w = np.asarray(model.exit_wave(*model.potential()))
    w0 = np.asarray(plain.exit_wave(*plain.potential()))
    ratio = w / w0
    np.testing.assert_allclose(np.angle(ratio), sig * V * chord, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.abs(ratio), np.exp(-0.1 * sig * V * chord), rtol=1e-12)
    assert sig * V * chord.max() > 0.2   # a quarter of a radian through the middle: visible
    # in focus with no aberrations, the detector's noise-free image darkens by exp(−2σ·0.1·Vℓ) at
    # the ball's centre (the MTF blurs its rim; the centre is flat over the MTF's width)
    img, ref = np.asarray(model.noise_free()), np.asarray(plain.noise_free())
    i, j = int(round(BALL[1] / 2.0 + 32)), int(round(BALL[0] / 2.0 + 32))
    darkening = 1 - img[i, j] / ref[i, j]
    want = 1 - math.exp(-2 * 0.1 * sig * V * 2 * BALL[3])
    assert want > 0.04
    assert darkening == pytest.approx(want, rel=1e-2)
    assert abs(img[2, 2] / ref[2, 2] - 1) < 2e-3 * want   # far from it, nothing (the MTF's tail)


@pytest.mark.parametrize("method", ["projection", "multislice"])
def test_without_contaminants_nothing_changes_and_one_outside_the_field_adds_nothing(method):
    assert Sample().contaminants == ()
    cfg = _config(method=method)
    ref = simulate(cfg).images
    far = simulate(cfg.replace(sample=cfg.sample.replace(contaminants=((900.0, 0.0, 150.0, 50.0),)))).images
    assert np.array_equal(far, ref)   # the same draw, bit for bit: the far ball does not reach the field


def test_multislice_slices_hold_the_tilted_ball_whole():
    tilt = 35.0
    cfg = _config((BALL,), method="multislice", tilt=tilt)
    model = ImageModel.from_config(cfg)
    vi = np.asarray(model._ice_potential({}))
    assert vi.shape[0] == model.n_slices > 15
    path = vi.sum(0) / ice_potential_V()
    want = 200.0 / math.cos(math.radians(tilt)) + _chord(model.grid.shape, model.grid.pixel_size_A, BALL, tilt)
    np.testing.assert_allclose(path, want, rtol=1e-12)
    # the ball's own potential lies in the slices that its centre z ± r (microscope frame) meets
    up = np.asarray(ImageModel.from_config(_config(method="multislice", tilt=tilt))._ice_potential({}))
    t = math.radians(tilt)
    cz = BALL[1] * math.sin(t) + BALL[2] * math.cos(t)
    z0, z1 = model.z_range_A
    assert up.shape == vi.shape and z0 <= cz - BALL[3] and cz + BALL[3] <= z1
    ball = (vi - up).sum((1, 2))
    lo = z0 + 20.0 * np.arange(len(ball))
    meets = (lo + 20.0 > cz - BALL[3]) & (lo < cz + BALL[3])
    assert np.all(ball[~meets] == 0) and np.all(ball[meets] > 0)


def test_thickness_gradient_with_a_contaminant_matches_finite_differences():
    # the ball is data of the sample: the thickness acts through the layer only, on the tape
    cfg = _config((BALL,), method="multislice", tilt=20.0, defocus_u_A=8000.0, defocus_v_A=8000.0)
    scene = build_scene(cfg)
    target = simulate(cfg).images[0]
    loss = lambda img: ops.mean(ops.square(img - target))
    _, grads, _ = value_and_grad_image(cfg, loss, ["thickness_center_A"], scene=scene, estimator="none")
    h = 1e-3

    def at(t):
        c = cfg.replace(sample=cfg.sample.replace(thickness_center_A=200.0 + t))
        return float(loss(ImageModel.from_config(c, scene=scene).render(estimator="none").image))

    fd = (at(h) - at(-h)) / (2 * h)
    assert abs(fd) > 1e-3
    assert float(grads["thickness_center_A"]) == pytest.approx(fd, rel=2e-6)


def test_random_contaminants_rest_on_the_surface_and_reproduce_per_seed():
    s = Sample(diameter_A=2000.0, thickness_center_A=300.0, thickness_edge_A=600.0)
    balls = random_contaminants(s, 30, (20.0, 80.0), (800.0, 600.0), 7, side="both")
    assert balls == random_contaminants(s, 30, (20.0, 80.0), (800.0, 600.0), 7, side="both")
    a = np.array(balls)
    assert a.shape == (30, 4)
    assert np.all(np.abs(a[:, 0]) <= 400) and np.all(np.abs(a[:, 1]) <= 300)
    assert np.all((a[:, 3] >= 20) & (a[:, 3] <= 80))
    h = ice_thickness_A(s, a[:, 0], a[:, 1])
    np.testing.assert_allclose(np.abs(a[:, 2]) - a[:, 3], h / 2, rtol=1e-12)   # touching the surface
    assert 0 < np.sum(a[:, 2] > 0) < 30   # both sides
    assert Sample(contaminants=balls).contaminants == balls


def test_contaminants_read_from_toml_and_a_ball_without_radius_is_refused(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[sample]\ncontaminants = [[10.0, -20.0, 300.0, 50], [0, 0, -300, 25.5]]\n")
    cfg = load_config(p)
    assert cfg.sample.contaminants == ((10.0, -20.0, 300.0, 50.0), (0.0, 0.0, -300.0, 25.5))
    with pytest.raises(InputError, match=r"contaminants\[0\].*radius"):
        Sample(contaminants=((0.0, 0.0, 0.0, 0.0),))
    with pytest.raises(InputError, match="4 numbers"):
        Sample(contaminants=((0.0, 0.0, 5.0),))
