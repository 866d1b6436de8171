"""Movies: frames whose sum is the still image in expectation, with known beam-induced motion."""
import csv
from importlib.resources import files

import mrcfile
import numpy as np
import pytest
from skimage.registration import phase_cross_correlation

import adjoints.backend as B
from cutem.config import ParticleSpec, RunConfig
from cutem.errors import InputError
from cutem.imaging import ImageModel, tilt_seed
from cutem.movie import displace, global_shifts, local_field, movie_tilt
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from cutem.run import run_simulation

SUBUNIT = str(files("cutem.data") / "tmv" / "2OM3_model1.pdb")


def _config(n=128, frames=8, dose=50.0, **det):
    part = ParticleSpec(name="cp", structure=SUBUNIT, placement="list", positions_A=((0.0, 0.0, 0.0),),
                        orientations_deg=((10.0, 40.0, 0.0),))
    return RunConfig(optics=Optics(defocus_u_A=15000, defocus_v_A=15000, amplitude_contrast=0.1),
                     detector=Detector(nx=n, ny=n, pixel_size_A=2.0, dose_e_per_A2=dose, quantized=True, dqe=0.8,
                                       mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, frames=frames,
                                       **det),
                     sample=Sample(diameter_A=1e6, thickness_center_A=200, thickness_edge_A=200),
                     simulation=Simulation(dtype="float64"), particles=(part,), seed=7, output="mv",
                     geometry=Geometry(tilt_angles_deg=(0.0,)))


def _bands(img, nb=6):
    ps = np.abs(np.fft.fft2(img - img.mean())) ** 2
    n = img.shape[0]
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    edges = np.linspace(0.0, 0.5, nb + 1)
    return np.array([ps[(q > a) & (q <= b)].mean() for a, b in zip(edges[:-1], edges[1:])])


def test_frame_sum_equals_the_still_image_in_expectation():
    cfg = _config(n=256)
    model = ImageModel.from_config(cfg)
    frames, clean, shifts, _, _ = movie_tilt(model, cfg.seed)
    assert frames.shape == (8, 256, 256) and np.all(shifts == 0)
    still = model.render(rng=B.default_rng(tilt_seed(cfg.seed, 0), np), estimator="score")
    # noise-free: the frames' doses add up to the still's exactly
    np.testing.assert_allclose(clean.sum(0), still.noise_free, rtol=1e-10)
    total = frames.sum(0)
    assert total.mean() == pytest.approx(still.image.mean(), rel=0.005)
    ratio = _bands(total) / _bands(still.image)
    assert np.all(np.abs(ratio - 1) < 0.05), ratio


def test_cross_correlation_recovers_the_ground_truth_shifts():
    cfg = _config(frames=6, dose=60.0, motion_drift_A_per_frame=3.0, motion_jitter_A_per_frame=1.0)
    # the frames' noise-free twins: one subunit's contrast is far below a frame's shot noise
    _, frames, shifts, _, _ = movie_tilt(ImageModel.from_config(cfg), cfg.seed)
    assert np.abs(shifts[-1]).max() > 5.0            # several pixels of drift over the movie
    px = cfg.detector.pixel_size_A
    for f in range(1, 6):
        est, _, _ = phase_cross_correlation(frames[0], frames[f], upsample_factor=20)
        # skimage gives the shift that registers frame f onto frame 0: minus the motion, (y, x)
        err = np.abs(-np.asarray(est)[::-1] - shifts[f] / px)
        print(f"frame {f}: shift error {err.max():.3f} px")
        assert err.max() < 0.5, (f, err)


def test_global_shift_is_a_fourier_shift():
    img = np.random.default_rng(0).standard_normal((16, 16))
    np.testing.assert_allclose(displace(img, (3.0, -2.0)), np.roll(img, (-2, 3), axis=(0, 1)), atol=1e-10)


def test_motion_is_seeded_and_starts_at_zero():
    det = Detector(frames=5, motion_drift_A_per_frame=2.0, motion_jitter_A_per_frame=0.5)
    a = global_shifts(det, np.random.default_rng(1))
    b = global_shifts(det, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert np.all(a[0] == 0)


def test_run_writes_frames_shift_tables_and_the_frame_sum(tmp_path):
    cfg = _config(n=48, frames=3, dose=20.0, motion_drift_A_per_frame=1.0, motion_local_A_per_frame=0.5)
    result, paths = run_simulation(cfg, tmp_path, progress=False)
    with mrcfile.open(tmp_path / "mv_frames.mrc") as m:
        frames = m.data.copy()
    assert frames.shape == (3, 48, 48)
    with mrcfile.open(paths["image"]) as m:
        np.testing.assert_allclose(m.data, frames.sum(0), rtol=1e-5)
    rows = list(csv.DictReader(open(tmp_path / "mv_shifts.csv")))
    assert [int(r["frame"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["shift_x_A"]) == 0.0
    local = list(csv.DictReader(open(tmp_path / "mv_local_shifts.csv")))
    assert len(local) == 3 * 25
    assert any(float(r["shift_x_A"]) != float(rows[int(r["frame"])]["shift_x_A"]) for r in local[25:])


def test_bad_frame_count_is_refused():
    with pytest.raises(InputError, match="frames"):
        Detector(frames=0)


def test_noisy_frames_of_a_dense_specimen_give_back_the_shifts():
    """The same recovery from the noisy frames themselves: an amorphous layer (1.3 % contrast), 60 e⁻/Å² per
    frame (at 10 e⁻/Å² the 128² frames' cross-correlation peak is lost in their shot noise)."""
    from cutem.specimen import Scene
    from cutem.structure import Atoms

    rng = np.random.default_rng(2)
    m = 30000
    pos = np.stack([rng.uniform(-140, 140, m), rng.uniform(-140, 140, m), rng.uniform(-20, 20, m)], 1)
    scene = Scene().add(Atoms(pos, np.zeros(m), (6,), np.full(m, 20.0), np.ones(m)))
    cfg = _config(frames=5, dose=300.0, motion_drift_A_per_frame=3.0, motion_jitter_A_per_frame=1.0)
    cfg = cfg.replace(particles=(), sample=Sample(ice=False))
    frames, _, shifts, _, _ = movie_tilt(ImageModel.from_config(cfg, scene=scene), cfg.seed)
    for f in range(1, 5):
        est, _, _ = phase_cross_correlation(frames[0], frames[f], upsample_factor=20, normalization=None)
        err = np.abs(-np.asarray(est)[::-1] - shifts[f] / cfg.detector.pixel_size_A)
        print(f"noisy frame {f}: shift error {err.max():.3f} px")
        assert err.max() < 0.5, (f, err)


def test_counts_frames_are_int16_and_a_series_writes_one_movie_per_tilt(tmp_path):
    cfg = _config(n=48, frames=2, dose=20.0, frames_as_counts=True)
    cfg = cfg.replace(geometry=Geometry(tilt_angles_deg=(0.0, 30.0)))
    result, _ = run_simulation(cfg, tmp_path, progress=False)
    for k in range(2):
        with mrcfile.open(tmp_path / f"mv_frames_{k:03d}.mrc") as m:
            assert m.data.dtype == np.int16 and m.data.shape == (2, 48, 48)
            np.testing.assert_allclose(m.data.sum(0), np.rint(result.images[k]), atol=2)
    rows = list(csv.DictReader(open(tmp_path / "mv_shifts.csv")))
    # exposure accumulates over the series: tilt 1's frames start after tilt 0's 20 e/Å²
    assert [float(r["exposure_e_per_A2"]) for r in rows] == [5.0, 15.0, 25.0, 35.0]


def test_local_motion_on_row_blocks_equals_one_interpolation(engine_threads):
    rng = np.random.default_rng(3)
    img = rng.random((37, 29)).astype(np.float32)
    local = 0.8 * rng.standard_normal((2, 37, 29)).astype(np.float32)
    engine_threads(3)
    blocked = displace(img, (0.4, -1.3), local)
    engine_threads(1)
    assert np.array_equal(blocked, displace(img, (0.4, -1.3), local))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_fourier_spline_coefficients_give_the_spline_filter_interpolation(dtype, tol):
    """The B-spline prefilter folded into the shift's FFT pair equals the former shift, then
    scipy's grid-wrap spline_filter (float64), then map_coordinates, to the dtype's precision."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    for shape in ((37, 29), (32, 48)):
        img = rng.random(shape).astype(dtype)
        local = (1.7 * rng.standard_normal((2, *shape))).astype(dtype)
        shifted = displace(img, (2.6, -0.7))
        yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        want = ndimage.map_coordinates(shifted.astype(np.float64), np.stack([yy - local[1], xx - local[0]]),
                                       order=3, mode="grid-wrap")
        got = displace(img, (2.6, -0.7), local)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
        # no local motion at all: the spline interpolates its own samples
        np.testing.assert_allclose(displace(img, (2.6, -0.7), 0 * local), shifted, rtol=0, atol=tol)


def _field_on_its_grid(noise, sigma_px, n_full):
    """The former construction: the noise low-passed by FFTs on its own grid, RMS 1 per component
    (σ in pixels of a field of n_full pixels per axis; the noise has m points per axis)."""
    m = noise.shape[-1]
    q = np.fft.fftfreq(m) * m / n_full
    lowpass = np.exp(-2 * (np.pi * sigma_px) ** 2 * (q[:, None] ** 2 + q[None, :] ** 2))
    u = np.fft.ifft2(np.fft.fft2(noise) * lowpass).real
    return u / np.sqrt((u * u).mean(axis=(1, 2), keepdims=True))


def test_small_local_field_is_the_full_grid_construction():
    u = local_field((48, 48), np.random.default_rng(5))
    want = _field_on_its_grid(np.random.default_rng(5).standard_normal((2, 48, 48)), 48 / 8, 48)
    np.testing.assert_allclose(u, want, rtol=0, atol=1e-12)


def test_large_local_field_interpolates_its_coarse_draw_exactly():
    """256²: drawn on 64², the full field passes through the coarse field's values at every fourth
    pixel, is band-limited to the coarse grid's band and has RMS 1."""
    u = local_field((256, 256), np.random.default_rng(6))
    coarse = _field_on_its_grid(np.random.default_rng(6).standard_normal((2, 64, 64)), 256 / 8, 256)
    np.testing.assert_allclose(u[:, ::4, ::4], coarse, rtol=0, atol=1e-10)
    np.testing.assert_allclose((u * u).mean(axis=(1, 2)), 1.0, rtol=1e-12)
    k = np.abs(np.fft.fftfreq(256) * 256)
    spec = np.abs(np.fft.fft2(u))
    assert spec[:, k >= 32].max() < 1e-9 * spec.max() and spec[:, :, k >= 32].max() < 1e-9 * spec.max()


def test_noise_free_sum_by_one_mtf_equals_the_sum_of_the_twins():
    cfg = _config(n=48, frames=4, dose=20.0, motion_drift_A_per_frame=1.0, motion_local_A_per_frame=0.5)
    cfg = cfg.replace(sample=cfg.sample.replace(damage=True))
    model = ImageModel.from_config(cfg)
    frames, clean, *_ = movie_tilt(model, cfg.seed)
    frames2, clean_sum, *_ = movie_tilt(model, cfg.seed, twins=False)
    assert clean.shape == (4, 48, 48) and clean_sum.shape == (48, 48)
    np.testing.assert_array_equal(frames, frames2)
    np.testing.assert_allclose(clean_sum, clean.sum(0), rtol=1e-12)
