"""Detector: dose, MTF reference values, noise power spectra, estimators, VJPs."""

import numpy as np
import pytest

import adjoints
from adjoints import gradcheck
from cutem.detector import (PARAM_NAMES, ExpectedCounts, PathwiseNoise, detect, detector_inputs,
                            load_dqe_curve, mtf, mtf_radial, sample_wald)
from cutem.params import Detector
from validation import estimators as E

from helpers import shared_data

REF = dict(mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, mtf_p=1.0, mtf_q=1.0)


def _dqe_csv():
    return str(shared_data("real", "detector_mtf", "McMullan2014_dqe.csv"))


def test_mtf_reference_values_at_nyquist_and_half_nyquist():
    d = Detector(gain=10.0, **REF)
    r = mtf_radial([0.5, 0.25], d) / 10.0
    assert round(float(r[0]), 4) == 0.3182 and round(float(r[1]), 4) == 0.5879
    grid = mtf((64, 64), d) / 10.0   # on the FFT grid: x = 32/64 and 16/64 cycles/pixel
    assert abs(grid[0, 32] - r[0]) < 1e-15 and abs(grid[16, 0] - r[1]) < 1e-15
    assert abs(grid[0, 0] - 1.0) < 1e-15


def test_mtf_general_p_q_matches_tem_simulator_formula():
    p = dict(REF, mtf_p=2.5, mtf_q=0.4)
    x = np.linspace(0, 0.7, 15)
    y1, y2 = 1 + 10 * x ** 2, 1 + 40 * x ** 2
    t = lambda e, y: 2 ** e * y ** -e / (2 + (2 ** e - 2) * y ** -e)  # noqa: E731
    expected = 3.0 / 1.0 * (0.1 + 0.7 * t(2.5, y1) + 0.2 * t(0.4, y2))
    got = mtf_radial(x, dict(p, gain=3.0))
    assert np.max(np.abs(got - expected)) < 1e-14


def test_mtf_grid_half_grid_agree():
    d = Detector(gain=2.0, **REF)
    assert np.max(np.abs(mtf((10, 14), d)[:, :8] - mtf((10, 14), d, rfft=True))) < 1e-15


def test_vacuum_gives_exactly_dose_times_pixel_area():
    d = Detector(nx=16, ny=16, pixel_size_A=1.7, dose_e_per_A2=3.0, gain=1.0)
    r = detect(np.ones((16, 16)), d, estimator="none")
    assert np.all(r.expected_counts == 3.0 * 1.7 ** 2)
    d2 = d.replace(gain=7.5, **REF)
    r2 = detect(np.ones((16, 16)), d2, estimator="none")
    assert np.max(np.abs(r2.image / (7.5 * 3.0 * 1.7 ** 2) - 1)) < 1e-14  # MTF(0) = gain


def _radial_bins(n, lo=0.05, hi=0.45, width=0.01):
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    r = np.hypot(fx, fy)
    edges = np.arange(lo, hi + 1e-9, width)
    idx = np.digitize(r, edges) - 1
    ok = (idx >= 0) & (idx < len(edges) - 1)
    return idx, ok, len(edges) - 1


def _radial_average(a, idx, ok, nb):
    return np.bincount(idx[ok], a[ok], nb) / np.bincount(idx[ok], None, nb)


def _blank_ps_ratio(det, estimator, images=100, n=256, seed=5, dqe_shape=None):
    """Radially averaged noise power of blank images / (N̄ · MTF² / DQE) per 0.01-wide bin."""
    r = detect(np.ones((images, n, n)), det, rng=seed, estimator=estimator)
    f = np.fft.fft2(r.image - r.image.mean(axis=(-2, -1), keepdims=True))
    ps = (np.abs(f) ** 2).mean(axis=0) / (n * n)
    nbar = det.dose_e_per_A2 * det.pixel_size_A ** 2
    pred = mtf((n, n), det) ** 2 * nbar / det.dqe
    if dqe_shape is not None:
        pred = pred / dqe_shape
    idx, ok, nb = _radial_bins(n)
    return _radial_average(ps, idx, ok, nb) / _radial_average(pred, idx, ok, nb)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_blank_power_spectrum_follows_mtf_squared(estimator):
    # DQE = 1, Poisson counts (score: integer draws; pathwise: Gaussian counts), reference
    # MTF, gain 10: 100 images of 256², 40 bins over 0.05-0.45 cycles/pixel (each bin
    # averages ≥ 2e4 periodogram values: 0.7% standard error)
    det = Detector(nx=256, ny=256, pixel_size_A=1.0, dose_e_per_A2=50.0, gain=10.0, **REF)
    ratio = _blank_ps_ratio(det, estimator)
    assert np.max(np.abs(ratio - 1)) < 0.03, ratio


def test_blank_power_spectrum_with_wald_dqe_is_mtf_squared_over_dqe():
    det = Detector(nx=256, ny=256, pixel_size_A=1.0, dose_e_per_A2=50.0, gain=10.0, dqe=0.6, **REF)
    ratio = _blank_ps_ratio(det, "score", images=60)
    assert np.max(np.abs(ratio - 1)) < 0.04, ratio


def test_noise_shaping_gives_mtf_squared_over_dqe_of_q():
    det = Detector(nx=256, ny=256, pixel_size_A=1.0, dose_e_per_A2=50.0, gain=10.0,
                   dqe_curve=_dqe_csv() + ":Gatan K2", **REF)
    xs, ys = load_dqe_curve(det.dqe_curve)
    fy, fx = np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :]
    shape = np.interp(np.minimum(np.hypot(fx, fy) / 0.5, 1), xs, ys) / np.interp(0, xs, ys)
    assert shape[0, 128] < 0.7  # the K2 curve falls: the noise is really shaped
    ratio = _blank_ps_ratio(det, "pathwise", images=60, dqe_shape=shape)
    assert np.max(np.abs(ratio - 1)) < 0.04, ratio


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_dqe_falloff_raises_the_noise_power_as_one_plus_kappa_x_squared(estimator):
    # κ = 0.5: the noise at Nyquist is 1.5× its power at 0 (x = |q|/Nyquist), in both
    # estimators (score: the Poisson draws shaped); 60 images, 40 bins, ≤ 0.9 % error each
    det = Detector(nx=256, ny=256, pixel_size_A=1.0, dose_e_per_A2=50.0, gain=10.0, dqe_falloff=0.5, **REF)
    fy, fx = np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :]
    rise = 1.0 + 0.5 * (fx ** 2 + fy ** 2) / 0.25
    ratio = _blank_ps_ratio(det, estimator, images=60, dqe_shape=1.0 / rise)
    assert np.max(np.abs(ratio - 1)) < 0.04, ratio
    flat = _blank_ps_ratio(det, estimator, images=60)          # the unshaped prediction is off
    assert flat[-1] > 1.3


def test_dqe_falloff_with_the_score_estimator_on_a_tape_is_refused():
    det = Detector(nx=8, ny=8, dqe_falloff=0.2)
    with adjoints.Tape() as tape:
        x = tape.watch(np.ones((8, 8)))
        with pytest.raises(ValueError, match="dqe_falloff"):
            detect(x, det, rng=1, estimator="score")
    assert detect(np.ones((8, 8)), det, rng=1, estimator="score").image.shape == (8, 8)


def test_load_dqe_curve_reads_columns():
    csv = _dqe_csv()
    x, y = load_dqe_curve(csv + ":Falcon II")
    assert np.all(np.diff(x) >= 0) and 0.45 < np.interp(0, x, y) < 0.55
    x1, y1 = load_dqe_curve(csv)
    assert abs(np.interp(0, x1, y1) - 0.796) < 0.01  # first column is the K2


def test_sample_wald_moments():
    rng = np.random.default_rng(0)
    mu = np.full(200000, 12.0)
    x = sample_wald(mu, 0.7, rng)
    assert abs(x.mean() / 12 - 1) < 0.005
    assert abs(x.var() / ((1 / 0.7 - 1) * 12) - 1) < 0.02
    assert np.all(x > 0)
    assert np.array_equal(sample_wald(np.array([0.0, 3.0]), 1.0, rng), [0.0, 3.0])


@pytest.mark.parametrize("sampler", ["poisson", "wald"])
def test_blocked_draws_do_not_depend_on_thread_count_and_keep_their_moments(sampler, monkeypatch,
                                                                            engine_threads):
    import adjoints.backend as B
    from cutem.detector import sample_poisson

    monkeypatch.setattr(B, "DRAW_BLOCK", 4096)   # 40 blocks of rows on a 640×256 image
    mu = np.full((640, 256), 9.0)

    def draw(threads):
        engine_threads(threads)
        rng = np.random.default_rng(5)
        return sample_poisson(mu, rng) if sampler == "poisson" else sample_wald(mu, 0.6, rng)

    one, two = draw(1), draw(2)
    assert np.array_equal(one, two)
    var = 9.0 if sampler == "poisson" else (1 / 0.6 - 1) * 9.0
    assert abs(one.mean() / 9 - 1) < 0.005 and abs(one.var() / var - 1) < 0.02
    # blocks are independent streams: neighbouring blocks are uncorrelated
    rows = one.reshape(40, -1)
    assert abs(np.corrcoef(rows[:-1].ravel(), rows[1:].ravel())[0, 1]) < 0.01


def test_score_counts_are_integer_poisson_with_mean_and_variance_nbar():
    d = Detector(nx=64, ny=64, pixel_size_A=1.0, dose_e_per_A2=4.0)
    r = detect(np.ones((50, 64, 64)), d, rng=3, estimator="score")
    c = r.draws["counts"]
    assert np.array_equal(c, np.round(c))
    assert abs(c.mean() / 4 - 1) < 0.005 and abs(c.var() / 4 - 1) < 0.01


def test_pathwise_derivative_is_one_plus_eps_over_two_root_nbar():
    rng = np.random.default_rng(0)
    nbar = 3 + 10 * rng.random((5, 5))
    eps = rng.standard_normal((5, 5))
    st = PathwiseNoise(eps)
    out, ctx = st.apply(nbar, np.asarray(1.0))
    assert np.allclose(out, nbar + np.sqrt(nbar) * eps, rtol=0, atol=1e-13)
    g_nbar, _ = st.vjp(ctx, np.ones((5, 5)))
    assert np.allclose(g_nbar, 1 + eps / (2 * np.sqrt(nbar)), rtol=0, atol=1e-14)


def test_detector_stages_pass_gradcheck():
    rows = gradcheck.run(names=["detector."])
    assert len(rows) == 6 and all(r.passed for r in rows), gradcheck.format_table(rows)
    assert max(r.vjp_error for r in rows) < 1e-6


def test_fixed_draws_reproduce_the_image():
    d = Detector(nx=16, ny=16, dose_e_per_A2=2.0, readout_noise=1.0, dqe=0.8, **REF)
    i = np.ones((16, 16))
    for est in ("pathwise", "score"):
        a = detect(i, d, rng=7, estimator=est)
        b = detect(i, d, rng=7, estimator=est)
        c = detect(i, d, rng=99, estimator=est, draws=a.draws)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.image, c.image)
        assert not np.array_equal(a.image, detect(i, d, rng=8, estimator=est).image)


def test_every_detector_parameter_gets_a_gradient():
    d = Detector(nx=12, ny=12, pixel_size_A=1.0, dose_e_per_A2=10.0, gain=3.0, dqe=0.8,
                 readout_noise=0.5, **dict(REF, mtf_p=1.5, mtf_q=0.8))
    rng = np.random.default_rng(2)
    inten = 1 + 0.1 * rng.standard_normal((12, 12))
    base = detector_inputs(d)
    r0 = detect(inten, d, rng=1)

    def loss(*vals):
        r = detect(inten, d, params=dict(zip(PARAM_NAMES, vals)), draws=r0.draws)
        return adjoints.ops.sum(r.image * r.image)

    args = tuple(base[k] for k in PARAM_NAMES)
    f, grads = adjoints.value_and_grad(loss, tuple(range(len(args))))(*args)
    for k, (name, g) in enumerate(zip(PARAM_NAMES, grads)):
        h = 1e-6 * max(abs(float(args[k])), 1.0)
        plus = list(args)
        minus = list(args)
        plus[k] = args[k] + h
        minus[k] = args[k] - h
        fd = (float(loss(*plus)) - float(loss(*minus))) / (2 * h)
        assert abs(float(g) - fd) <= 1e-6 * abs(fd) + 1e-9, (name, float(g), fd)
        assert abs(fd) > 0, name


def test_estimators_agree_in_mean_with_gradient_of_expected_loss():
    # closed-form E[L] (validation/estimators.py); its finite-difference gradient is the truth
    inten, det, target, direction = E.setup()
    truth = E.true_gradient(inten, det, target, direction)
    path = E.summarise(E.run_estimator(inten, det, target, direction, "pathwise", 400), truth)
    score = E.summarise(E.run_estimator(inten, det, target, direction, "score", 1500, running_baseline=True),
                        truth)
    for name in truth:
        assert abs(path[name][2]) < 4, (name, path[name], truth[name])
        assert abs(score[name][2]) < 4, (name, score[name], truth[name])
    # the comparison has teeth: the pathwise means are within a few % of the truth
    for name in ("dose_e_per_A2", "mtf_a", "mtf_alpha", "gain", "dqe"):
        assert path[name][1] < 0.05 * abs(truth[name]), (name, path[name])
    # and the score estimator's variance for dose is far larger (the reason pathwise exists)
    assert score["dose_e_per_A2"][3] > 10 * path["dose_e_per_A2"][3]


def test_score_surrogate_requires_quantized_and_no_noise_shaping():
    d = Detector(nx=8, ny=8, quantized=False)
    with pytest.raises(ValueError):
        detect(np.ones((8, 8)), d, estimator="score")
    with pytest.raises(ValueError):
        detect(np.ones((8, 8)), Detector(nx=8, ny=8, dqe_curve=_dqe_csv()), estimator="score")


def test_expected_counts_stage_values():
    out, _ = ExpectedCounts(2.0).apply(np.full((2, 2), 0.5), np.asarray(3.0))
    assert np.all(out == 6.0)


@pytest.mark.gpu
def test_detector_on_gpu_matches_cpu_for_fixed_draws():
    import cupy as cp
    d = Detector(nx=32, ny=32, dose_e_per_A2=5.0, dqe=0.8, readout_noise=0.3, gain=2.0, **REF)
    rng = np.random.default_rng(0)
    inten = 1 + 0.1 * rng.standard_normal((32, 32))
    a = detect(inten, d, rng=1, estimator="pathwise", noise_free=True)
    gd = {k: cp.asarray(v) for k, v in a.draws.items()}
    b = detect(cp.asarray(inten), d, estimator="pathwise", draws=gd, noise_free=True)
    assert np.max(np.abs(a.image - cp.asnumpy(b.image))) < 1e-9
    assert np.max(np.abs(a.noise_free - cp.asnumpy(b.noise_free))) < 1e-9
    s = detect(cp.asarray(inten), d, rng=2, estimator="score")  # the samplers run on the device
    assert isinstance(s.image, cp.ndarray) and float(s.log_prob) != 0
