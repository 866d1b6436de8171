"""The differentiable reconstruction (cutem.tomo_fit) and the even/odd tomogram filter."""
from __future__ import annotations

import numpy as np
import pytest

from cutem import tomo, tomo_denoise, tomo_fit
from cutem.errors import InputError

NZ, N = 16, 32
ANGLES = np.arange(-60.0, 61.0, 6.0)
BAND = slice(3, 9)  # shells 3..8 of 16: the mid band, 0.19-0.5 of Nyquist


@pytest.fixture(scope="module")
def phantom():
    """Balls of density 1 in a slab, projected along IMOD's axis (y), with white noise."""
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(np.arange(NZ) - NZ / 2, np.arange(N) - N / 2, np.arange(N) - N / 2, indexing="ij")
    vol = np.zeros((NZ, N, N))
    for _ in range(8):
        c = rng.uniform([-4, -11, -11], [4, 11, 11])
        vol += (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < rng.uniform(2.0, 4.0) ** 2
    vol = np.clip(vol, 0, 1)
    clean = tomo.Project(ANGLES, 90.0).apply(vol)[0]
    noisy = clean + rng.normal(0.0, 1.6 * clean.std(), clean.shape)
    return vol, clean, noisy


def _mid_fsc(v, truth):
    _, curve, _ = tomo.fsc(v - v.mean(), truth - truth.mean())
    return float(curve[BAND].mean())


def test_fit_with_tv_and_positivity_beats_sirt_and_wbp_fsc_in_mid_band(phantom):
    vol, _, noisy = phantom
    fit = tomo_fit.fit_reconstruct(noisy, ANGLES, 90.0, NZ, prior="tv", prior_weight=3.0, positivity=True,
                                   iterations=40)
    f_fit = _mid_fsc(fit.volume, vol)
    f_sirt = _mid_fsc(tomo.sirt(noisy, ANGLES, 90.0, NZ).volume, vol)
    f_wbp = _mid_fsc(tomo.wbp(noisy, ANGLES, 90.0, NZ, filter="shepp-logan"), vol)
    assert f_fit > max(f_sirt, f_wbp) + 0.05, (f_fit, f_sirt, f_wbp)
    assert float(fit.volume.min()) >= 0.0


def test_fit_without_prior_on_clean_data_reproduces_the_projections(phantom):
    # rows along the tilt axis (y) are independent problems: 4 of them keep the test fast
    clean = phantom[1][:, 12:16]
    fit = tomo_fit.fit_reconstruct(clean, ANGLES, 90.0, NZ, prior_weight=0.0, iterations=60,
                                   noise_var=np.ones(len(ANGLES)))
    model = tomo.Project(ANGLES, 90.0).apply(fit.volume)[0] + fit.offsets[:, None, None]
    assert np.linalg.norm(model - clean) < 0.02 * np.linalg.norm(clean)


def test_fit_gradient_with_ctf_and_mtf_passes_taylor_test():
    """L(x + h d) − L(x) − h ⟨∇L, d⟩ falls as h² through projector, CTF, MTF and TV prior."""
    from adjoints.stage import Tape
    from cutem.params import Detector, Optics

    rng = np.random.default_rng(3)
    angles = [-40.0, 0.0, 35.0]
    shape = (3, 8, 10)
    ctf = tomo_fit.tilt_ctfs(shape[1:], 4.0, Optics(voltage_kV=300.0, defocus_u_A=20000.0,
                                                     defocus_v_A=19000.0), [20000.0, 21000.0, 19000.0])
    model = tomo_fit._Model(angles, 90.0, "fft", ctf, Detector(nx=10, ny=8, pixel_size_A=4.0), np, np.float64)
    b = rng.normal(size=(3, 8, 10))
    nv = np.array([1.0, 2.0, 0.5])

    def loss(x, c, grad=False):
        with Tape() as tape:
            xv, cv = tape.watch(x), tape.watch(c)
            r = model(xv, cv) - b
            val = (r * r * (1 / nv)[:, None, None]).sum() * 0.5 + tomo_fit._prior(xv, "tv", 0.3) * 0.7
        return (val.value, tape.gradient(val, [xv, cv])) if grad else val.value

    x, c = rng.normal(size=shape), rng.normal(size=3)
    dx, dc = rng.normal(size=shape), rng.normal(size=3)
    l0, (gx, gc) = loss(x, c, grad=True)
    slope = (gx * dx).sum() + (gc * dc).sum()
    errs = [abs(loss(x + h * dx, c + h * dc) - l0 - h * slope) for h in (1e-2, 5e-3)]
    assert 3.0 < errs[0] / errs[1] < 5.0, errs


def test_forward_differences_adjoint_is_minus_divergence():
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(4, 5, 6)), rng.normal(size=(3, 4, 5, 6))
    st = tomo_fit.ForwardDifferences()
    y, ctx = st.apply(x)
    assert y.shape == (3, 4, 5, 6) and np.allclose(y[2, :, :, :-1], np.diff(x, axis=2)) and not y[2, :, :, -1].any()
    assert abs((y * g).sum() - (x * st.adjoint(ctx, g)).sum()) < 1e-10 * np.abs(y * g).sum()


def test_prior_weight_is_chosen_on_held_out_tilts(phantom):
    noisy = phantom[2][:, 12:16]
    fit = tomo_fit.fit_reconstruct(noisy, ANGLES, 90.0, NZ, positivity=True, iterations=15)
    assert set(fit.heldout) == set(tomo_fit.PRIOR_LADDER)
    assert fit.prior_weight == min(fit.heldout, key=fit.heldout.get)
    assert all(0.0 < v < 1.5 for v in fit.heldout.values())


def test_even_odd_wiener_raises_cnr_and_keeps_fsc_of_the_plain_tomogram(phantom):
    vol, _, noisy = phantom
    rec = lambda s, a: tomo.wbp(s, a, 90.0, NZ, filter="shepp-logan")  # noqa: E731
    even, odd = tomo_denoise.half_tomograms(noisy, ANGLES, rec, splits=1)[0]
    den, gain = tomo_denoise.halves_wiener([(even, odd)], sigma=2.0)
    plain = 0.5 * (even + odd)
    assert 0.0 <= gain.min() and gain.max() <= 1.0
    inside, outside = vol > 0.5, vol == 0
    assert tomo.contrast_to_noise(den, inside, outside) > 1.5 * tomo.contrast_to_noise(plain, inside, outside)
    # a gain that is nearly constant on each shell leaves the shell's FSC nearly as it was:
    # the filter removes noise power, it adds no information
    assert abs(_mid_fsc(den, vol) - _mid_fsc(plain, vol)) < 0.02


def test_even_odd_wiener_in_a_specimen_mask_raises_mid_band_fsc(phantom):
    vol, _, noisy = phantom
    rec = lambda s, a: tomo.wbp(s, a, 90.0, NZ, filter="shepp-logan")  # noqa: E731
    even, odd = tomo_denoise.half_tomograms(noisy, ANGLES, rec, splits=1)[0]
    plain = 0.5 * (even + odd)
    mask = tomo_denoise.specimen_mask(plain, 80.0)
    assert 0.0 <= mask.min() and mask.max() == 1.0 and 0.1 < (mask > 0.5).mean() < 0.4
    den, _ = tomo_denoise.halves_wiener([(even, odd)], sigma=2.0, mask=mask)
    assert _mid_fsc(den, vol) > _mid_fsc(plain, vol) + 0.1
    assert _mid_fsc(den, vol) > _mid_fsc(plain * mask, vol) - 0.005


def test_half_splits_interleave_and_cover_every_tilt_once():
    splits = tomo_denoise.half_splits(21, splits=5, seed=3)
    assert splits[0] == (list(range(0, 21, 2)), list(range(1, 21, 2)))
    assert len({tuple(a) for a, _ in splits}) == 5            # the random splits differ
    for a, b in splits:
        assert sorted(a + b) == list(range(21))
        # one tilt of every consecutive pair in each half: no gap wider than 3 steps
        assert all(max(np.diff(h)) <= 3 and h[0] <= 1 and h[-1] >= 18 for h in (a, b))
    assert tomo_denoise.half_splits(21, splits=5, seed=3) == splits   # reproducible


def test_specimen_mask_of_halves_finds_the_particles_in_either_contrast(phantom):
    vol, _, noisy = phantom
    rec = lambda s, a: tomo.wbp(s, a, 90.0, NZ, filter="shepp-logan")  # noqa: E731
    halves = tomo_denoise.half_tomograms(noisy, ANGLES, rec)
    bright, s_bright = tomo_denoise.halves_specimen_mask(halves)
    dark, s_dark = tomo_denoise.halves_specimen_mask([(-a, -b) for a, b in halves])
    assert (s_bright, s_dark) == (1.0, -1.0) and np.array_equal(bright, dark)
    assert vol[bright > 0.5].mean() > 3 * vol.mean()   # the mask holds the balls


def test_denoise_halves_raises_mid_band_fsc_beyond_the_wiener_filter(phantom):
    vol, _, noisy = phantom
    rec = lambda s, a: tomo.wbp(s, a, 90.0, NZ, filter="shepp-logan")  # noqa: E731
    halves = tomo_denoise.half_tomograms(noisy, ANGLES, rec)
    mask = tomo_denoise.specimen_mask(sum(a + b for a, b in halves) / 4, 80.0)
    wiener, _ = tomo_denoise.halves_wiener(halves, sigma=2.0, mask=mask)
    den, gain = tomo_denoise.denoise_halves(halves, sigma=2.0, mask=mask)
    assert 0.0 <= gain.min() and gain.max() <= 1.0
    assert _mid_fsc(den, vol) > _mid_fsc(wiener, vol) + 0.04   # 0.787 -> 0.850 when written


def test_noise_floor_wiener_removes_white_noise_and_keeps_the_volume(phantom):
    vol = phantom[0]
    rng = np.random.default_rng(5)
    noisy = vol + rng.normal(0.0, 0.5, vol.shape)
    den, gain = tomo_denoise.noise_floor_wiener(noisy, sigma=2.0)
    err = lambda v: np.linalg.norm(v - vol)  # noqa: E731
    assert err(den) < 0.6 * err(noisy)
    assert gain.max() <= 1.0 and abs(den.mean() - noisy.mean()) < 1e-9


def test_fit_and_filters_refuse_bad_input(phantom):
    _, _, noisy = phantom
    with pytest.raises(InputError, match="prior"):
        tomo_fit.fit_reconstruct(noisy, ANGLES, 90.0, NZ, prior="l1")
    with pytest.raises(InputError, match="CTF stack"):
        tomo_fit.fit_reconstruct(noisy, ANGLES, 90.0, NZ, ctf=np.ones((2, N, N)))
    with pytest.raises(InputError, match="at least 4 tilts"):
        tomo_denoise.half_tomograms(noisy[:3], ANGLES[:3], None)
    with pytest.raises(InputError, match="tilt angles"):
        tomo_denoise.half_tomograms(noisy[:5], ANGLES[:4], None)
    with pytest.raises(InputError, match="mask of shape"):
        tomo_denoise.halves_wiener([(np.ones((4, 4, 4)), np.ones((4, 4, 4)))], mask=np.ones((4, 4)))
    with pytest.raises(InputError, match="differ in shape"):
        tomo_denoise.halves_wiener([(np.ones((4, 4, 4)), np.ones((4, 4, 5)))])
    with pytest.raises(InputError, match="TV weight"):
        tomo_denoise.denoise_halves([(np.ones((4, 4, 4)), np.zeros((4, 4, 4)))], tv_weight=float("nan"))
    with pytest.raises(InputError, match="identical"):
        tomo_denoise.denoise_halves([(np.ones((4, 4, 4)), np.ones((4, 4, 4)))], mask=None)
    with pytest.raises(InputError, match="noise band"):
        tomo_denoise.noise_floor_wiener(np.ones((4, 4, 4)), noise_band=(0.9, 0.5))
