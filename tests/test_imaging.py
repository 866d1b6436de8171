"""The image model: one composition of the microscope, the same image from every entry point."""
from importlib.resources import files

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

from adjoints import ops
from cutem.config import ParticleSpec, RunConfig, write_resolved
from cutem.imaging import ImageModel
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from cutem.pipeline import build_scene, simulate, value_and_grad_image
from cutem.potential import ice_potential

SUBUNIT = str(files("cutem.data") / "tmv" / "2OM3_model1.pdb")


def _config(ice=True, b=0.0, quantized=False, tilts=(0.0,), **sim):
    part = ParticleSpec(name="cp", structure=SUBUNIT, placement="list", positions_A=((4.0, -3.0, 0.0),),
                        orientations_deg=((10.0, 40.0, 0.0),))
    return RunConfig(optics=Optics(voltage_kV=300, defocus_u_A=12000, defocus_v_A=11000, astigmatism_angle_deg=30,
                                   cs_mm=2.7, illumination_angle_mrad=0.05, energy_spread_eV=0.8),
                     detector=Detector(nx=40, ny=40, pixel_size_A=2.0, dose_e_per_A2=30.0, quantized=quantized,
                                       dqe=0.7, mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0,
                                       gain=3.0),
                     sample=Sample(diameter_A=1e5, thickness_center_A=150, thickness_edge_A=150, ice=ice,
                                   ice_absorption=0.05 if ice else 0.0),
                     simulation=Simulation(dtype="float64", oversampling=2, padding_A=8.0, b_factor_A2=b,
                                           absorption=0.1, **sim),
                     geometry=Geometry(tilt_angles_deg=tilts), particles=(part,), seed=11, output="im")


def test_every_entry_point_renders_the_same_noise_free_image():
    from cutem.denoise import SimulatorPairs
    from cutem.fitting import SpecimenModel

    cfg = _config(b=12.0)
    scene = build_scene(cfg)
    ref = simulate(cfg, scene=scene).noise_free[0]
    assert ref.dtype == np.float64 and ref.std() > 1e-3 * ref.mean()   # the particle is there

    # value_and_grad_image renders the same model on the tape
    _, _, det = value_and_grad_image(cfg, lambda im: ops.mean(im), ["defocus_u_A"], scene=scene, estimator="none")
    np.testing.assert_allclose(det.noise_free.value, ref, rtol=1e-10)

    # the specimen fit's closed-form spectrum: |FFT(m − m̄)|²/n (no shot noise: not quantized) and the mean
    S, mean = SpecimenModel(cfg, scene=scene)({})
    want = np.abs(np.fft.fft2(ref - ref.mean())) ** 2 / ref.size
    np.testing.assert_allclose(S.value if hasattr(S, "value") else S, want, rtol=1e-10, atol=1e-10 * want.max())
    assert float(mean.value if hasattr(mean, "value") else mean) == pytest.approx(ref.mean(), rel=1e-10)

    # the denoiser's training pairs, given this configuration and scene
    pairs = SimulatorPairs(base=cfg)
    pairs.config = lambda rng: cfg
    pairs.scene = lambda c, rng: scene
    _, target = pairs(np.random.default_rng(0))
    np.testing.assert_allclose(target, ref, rtol=1e-10)


def test_cutem_potential_applies_the_global_b_factor_and_equals_what_simulate_uses(tmp_path):
    from cutem.cli import main as cli

    out = {}
    for b in (0.0, 40.0):
        cfg = _config(ice=False, b=b, tilts=(0.0, 30.0), method="projection")
        # no padding: the written field is the whole periodic grid, whose Fourier series is exact
        cfg = cfg.replace(simulation=cfg.simulation.replace(padding_A=0.0))
        path = tmp_path / f"b{int(b)}.toml"
        write_resolved(path, cfg)
        mrc = tmp_path / f"b{int(b)}.mrc"
        r = CliRunner().invoke(cli, ["potential", str(path), "--out", str(mrc), "--quiet"])
        assert r.exit_code == 0, r.output
        with mrcfile.open(mrc) as m:
            out[b] = m.data.astype(np.float64)
            assert float(m.voxel_size.x) == pytest.approx(1.0)   # the simulation grid: 2 Å / oversampling 2
        model = ImageModel.from_config(cfg, 0)
        np.testing.assert_allclose(out[b], model.grid.crop(model.potential()[0])[0], rtol=1e-5,
                                   atol=1e-6 * np.abs(out[b]).max())
    f0, f40 = (np.fft.fft2(out[b]) for b in (0.0, 40.0))
    ny, nx = out[0.0].shape
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(ny, 1.0), np.fft.fftfreq(nx, 1.0), indexing="ij"))
    band = (q > 0.05) & (q < 0.35) & (np.abs(f0) > 1e-3 * np.abs(f0).max())
    ratio = np.real(f40[band] / f0[band])
    np.testing.assert_allclose(ratio, np.exp(-40.0 * q[band] ** 2 / 4), rtol=0.02)


def test_absorption_of_atoms_and_ice_adds_up():
    cfg = _config()
    model = ImageModel.from_config(cfg, 0)
    v, v_abs = model.potential()
    vice = ice_potential(cfg.sample, model.grid.shape, model.grid.pixel_size_A, dtype=np.float64)
    np.testing.assert_allclose(v_abs, 0.1 * (v - vice) + 0.05 * vice, rtol=1e-10, atol=1e-12 * np.abs(v).max())


@pytest.mark.parametrize("tilt", [0.0, 40.0])
def test_ice_thickness_gradients_match_finite_differences_at_a_tie(tilt):
    # centre = edge: the thickest part of the layer is both; the projection's single slice holds
    # the whole layer, so the image is smooth in both thicknesses there (no box that follows max)
    cfg = _config(tilts=(tilt,))
    # a hole of 240 Å: the field reaches towards its rim, so the edge thickness matters too
    cfg = cfg.replace(sample=cfg.sample.replace(diameter_A=240.0))
    scene = build_scene(cfg)
    target = simulate(cfg.replace(detector=cfg.detector.replace(quantized=True)), scene=scene).images[0]
    loss = lambda im: ops.mean(ops.square(im - target))
    names = ["thickness_center_A", "thickness_edge_A"]
    _, grads, _ = value_and_grad_image(cfg, loss, names, scene=scene, estimator="none")
    model = ImageModel.from_config(cfg, 0, scene=scene)
    for name in names:
        t0 = float(getattr(cfg.sample, name))
        h = 0.01
        fd = (float(loss(model.render({name: np.asarray(t0 + h)}, estimator="none").image))
              - float(loss(model.render({name: np.asarray(t0 - h)}, estimator="none").image))) / (2 * h)
        assert abs(fd) > 1e-3
        assert float(grads[name]) == pytest.approx(fd, rel=1e-5)


def test_multislice_stack_holds_the_tilted_ice_over_the_field():
    cfg = _config(tilts=(50.0,), method="multislice", slice_thickness_A=10.0)
    model = ImageModel.from_config(cfg, 0)
    v, _ = model.potential()
    # the ice's projected potential: V_ice × path length h/cos θ at every pixel, none clipped
    path = cfg.sample.thickness_center_A / np.cos(np.radians(50.0))
    vice = ice_potential(cfg.sample, model.grid.shape, model.grid.pixel_size_A, slice_thickness_A=10.0,
                         z_range_A=model.z_range_A, tilt_deg=50.0, dtype=np.float64).sum(0)
    np.testing.assert_allclose(vice, 4.877 * path, rtol=2e-3)
    assert v.shape[0] == model.n_slices >= int(path / 10)


@pytest.mark.parametrize("ice_model", ["continuum", "amorphous"])
def test_multislice_image_does_not_depend_on_empty_slices_beyond_the_specimen(ice_model):
    # issue 19: the stack is the run of lattice slices z = kΔz that holds the specimen, so a
    # thicker layer only adds empty slices at its ends; they must change nothing (an empty
    # entrance slice leaves the plane wave alone, an empty exit slice is taken back by the
    # reference plane, the amorphous ice keeps each layer's draw)
    cfg = _config(tilts=(30.0,), method="multislice", slice_thickness_A=10.0)
    cfg = cfg.replace(sample=cfg.sample.replace(ice_model=ice_model))
    scene = build_scene(cfg)
    model = ImageModel.from_config(cfg, 0, scene=scene)
    z0, z1 = model.z_range_A
    assert z0 / 10.0 == round(z0 / 10.0) and z1 / 10.0 == round(z1 / 10.0)   # on the lattice
    ref = np.asarray(model.noise_free())
    big = ImageModel.from_config(cfg, 0, scene=scene, z_range_A=(z0 - 30.0, z1 + 20.0))
    assert big.n_slices == model.n_slices + 5
    out = np.asarray(big.noise_free())
    contrast = np.abs(ref - ref.mean()).max()
    assert contrast > 1e-3 * ref.mean()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9 * contrast)


def test_multislice_defocus_is_measured_at_the_scene_centre_plane_for_any_stack():
    # no ice, one particle 300 Å down-beam: the stack is [~250, ~350] Å, far from z = 0; its image
    # at defocus Δf must equal the image of the same particle at z = 0 seen at Δf + 300 Å
    def image(z, defocus):
        cfg = _config(ice=False, method="multislice", slice_thickness_A=10.0)
        part = cfg.particles[0].__class__(**{**cfg.particles[0].__dict__, "positions_A": ((4.0, -3.0, z),)})
        cfg = cfg.replace(particles=(part,), optics=cfg.optics.replace(defocus_u_A=defocus, defocus_v_A=defocus))
        model = ImageModel.from_config(cfg, 0)
        assert model.z_range_A[0] < z < model.z_range_A[1]
        return np.asarray(model.noise_free())

    a, b = image(300.0, 12000.0), image(0.0, 12300.0)
    # what 300 Å of defocus does, and what is left (the particle cut into other slices): 1 %
    shift = np.linalg.norm(image(0.0, 12000.0) - b)
    assert np.linalg.norm(a - b) < 0.05 * shift
