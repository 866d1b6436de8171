"""Power spectra, the radial-average stage and the Thon-ring background model."""
import numpy as np

from adjoints import check_vjp, dottest
from cutem.spectra import (RadialAverage, RadialBins, power_spectrum, radial_profile, subtract_background,
                           to_centre, to_corner, welch_power_spectrum)


def test_white_noise_spectrum_is_flat_at_its_variance(rng):
    x = 2.0 * rng.standard_normal((16, 64, 64)) + 5.0
    ps = power_spectrum(x)
    nondc = ps.ravel()[1:]
    assert abs(nondc.mean() / 4.0 - 1) < 0.01
    assert ps[0, 0] < 1e-20  # the mean was removed


def test_welch_spectrum_of_white_noise_is_flat(rng):
    ps = welch_power_spectrum(rng.standard_normal((300, 300)), tile=128)
    assert ps.shape == (128, 128)
    assert abs(ps.ravel()[1:].mean() - 1) < 0.03


def test_radial_average_passes_dot_test_and_vjp_check(rng):
    for stage, inputs in RadialAverage.cases(np, np.float64, rng):
        assert dottest(stage, inputs).passed
        assert check_vjp(stage, inputs).passed


def test_ring_means_of_q_are_the_bin_frequencies():
    bins = RadialBins((64, 48), pixel_size=2.0)
    qy, qx = np.fft.fftfreq(64, 2.0)[:, None], np.fft.fftfreq(48, 2.0)[None, :]
    q = np.sqrt(qx ** 2 + qy ** 2)
    np.testing.assert_allclose(bins.average(q), bins.q, rtol=1e-12)
    assert bins.q[-1] <= 0.25 + 1e-12              # stops at Nyquist (0.5/2 Å)
    assert bins.count_np.sum() < 64 * 48           # the corners are left out


def test_centre_and_corner_layouts_round_trip(rng):
    x = rng.standard_normal((10, 12))
    np.testing.assert_array_equal(to_corner(to_centre(x)), x)
    assert to_centre(np.pad([[1.0]], ((0, 9), (0, 11))))[5, 6] == 1.0


def test_radial_profile_of_a_centred_ring_peaks_at_its_radius():
    n, px = 128, 1.5
    qy, qx = np.meshgrid(np.fft.fftfreq(n, px), np.fft.fftfreq(n, px), indexing="ij")
    ring = np.exp(-((np.hypot(qx, qy) - 0.2) / 0.01) ** 2)
    q, p = radial_profile(to_centre(ring), px, centred=True)
    assert abs(q[np.argmax(p)] - 0.2) < 1.0 / (n * px)


def test_background_subtraction_leaves_the_thon_rings():
    q = np.linspace(0.02, 0.25, 400)
    chi = np.pi * 0.025 * 10000 * q ** 2
    bg = 3.0 / (1 + (q / 0.05) ** 2)
    env = 0.5 * np.exp(-30 * q ** 2)
    y = bg + env * np.sin(chi) ** 2
    z = subtract_background(y, q, window_q2=2 / (0.025 * 10000))
    inner = (q > 0.04) & (q < 0.22)
    c = np.corrcoef(z[inner], np.sin(chi[inner]) ** 2)[0, 1]
    assert c > 0.97
