"""Exit waves: phase object, multislice, their agreement for thin specimens, the reference plane."""
import math

import numpy as np
import pytest

from adjoints import gradcheck
from cutem import electron as el
from cutem.optics import TransferFunction, optics_inputs
from cutem.params import Optics
from cutem.propagation import (FresnelPropagator, Multislice, PhaseObject, bandlimit_mask, exit_wave,
                               propagator)

N_PIX, PX, KV = 64, 0.5, 300


@pytest.fixture(scope="module")
def atoms():
    """30 Gaussian 'atoms' (projected potential images, V·Å) with depths z/T in [−½, ½]."""
    rng = np.random.default_rng(0)
    pos = rng.random((30, 2)) * N_PIX * PX
    zfrac = rng.random(30) - 0.5
    y, x = np.indices((N_PIX, N_PIX)) * PX
    box = N_PIX * PX
    imgs = []
    for p in pos:
        dx = (x - p[0] + box / 2) % box - box / 2
        dy = (y - p[1] + box / 2) % box - box / 2
        imgs.append(40.0 * np.exp(-(dx * dx + dy * dy) / (2 * 0.6 ** 2)))
    return np.array(imgs), zfrac


def _slices(atoms, thickness, n_slices):
    imgs, zfrac = atoms
    idx = np.clip(((zfrac + 0.5) * n_slices).astype(int), 0, n_slices - 1)
    v = np.zeros((n_slices, N_PIX, N_PIX))
    for k, im in zip(idx, imgs):
        v[k] += im
    return v


def _bandlimited(wave):
    return np.fft.ifft2(np.fft.fft2(wave) * bandlimit_mask(wave.shape, PX))


def _phase_object(atoms):
    return _bandlimited(PhaseObject(KV)(atoms[0].sum(0)))


def test_propagation_stages_pass_gradcheck():
    rows = gradcheck.run(names=["propagation."])
    assert len(rows) == 3 and all(r.passed for r in rows), gradcheck.format_table(rows)


def test_phase_object_is_exp_i_sigma_v_minus_mu():
    v = np.full((4, 4), 100.0)
    va = np.full((4, 4), 10.0)
    sigma = el.interaction_constant(KV)
    t = PhaseObject(KV)(v, va)
    assert np.allclose(t, np.exp(1j * sigma * 100.0 - sigma * 10.0), rtol=0, atol=1e-15)
    # full phase object, not weak phase: a 2-rad phase is kept exactly
    t2 = PhaseObject(KV)(np.full((2, 2), 2.0 / sigma))
    assert np.allclose(np.angle(t2), 2.0, atol=1e-12) and np.allclose(np.abs(t2), 1.0, atol=1e-15)


def test_vacuum_exit_wave_is_exactly_one():
    z = np.zeros((5, 16, 16))
    assert np.max(np.abs(Multislice((16, 16), PX, KV, 10.0)(z) - 1)) < 1e-15
    assert np.max(np.abs(PhaseObject(KV)(z.sum(0)) - 1)) == 0


def test_one_slice_centre_referenced_multislice_equals_phase_object(atoms):
    v = atoms[0].sum(0)[None]
    ms = Multislice((N_PIX, N_PIX), PX, KV, 30.0, bandlimit=False)(v)
    assert np.max(np.abs(ms - PhaseObject(KV)(v[0]))) < 1e-13


def test_multislice_converges_to_phase_object_as_thickness_goes_to_zero(atoms):
    # 8 slices, the same atoms squeezed into thinner boxes: the difference to the phase
    # object (relative to the scattered wave) falls linearly with T (first order in the
    # atoms' depths); measured 6.6e-2 at 40 Å, 4.1e-3 at 2.5 Å
    po = _phase_object(atoms)
    scat = np.linalg.norm(po - po.mean())
    errs = []
    for t in (40.0, 20.0, 10.0, 5.0, 2.5):
        ms = Multislice((N_PIX, N_PIX), PX, KV, t / 8)(_slices(atoms, t, 8))
        errs.append(np.linalg.norm(ms - po) / scat)
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(np.abs(ratios - 2) < 0.05), ratios
    assert errs[-1] < 5e-3


def test_multislice_converges_as_slices_thin_out(atoms):
    # fixed thin specimen (T = 20 Å): doubling the number of slices halves the change
    # (Cauchy, first order from assigning atoms to slices), and the limit stays within
    # 4% of the phase object (the remaining difference is the depth effect of a 20 Å box)
    po = _phase_object(atoms)
    scat = np.linalg.norm(po - po.mean())
    prev, steps, dev = None, [], []
    for n in (4, 8, 16, 32, 64):
        ms = Multislice((N_PIX, N_PIX), PX, KV, 20.0 / n)(_slices(atoms, 20.0, n))
        dev.append(np.linalg.norm(ms - po) / scat)
        if prev is not None:
            steps.append(np.linalg.norm(ms - prev) / scat)
        prev = ms
    ratios = np.array(steps[:-1]) / np.array(steps[1:])
    assert np.all(ratios > 1.8), ratios
    assert steps[-1] < 1.5e-3
    assert max(dev) < 0.04


def test_uniform_potential_in_depth_converges_second_order():
    # a potential uniform in z has no first-order depth effect: error ∝ T² (without the
    # band limit, whose per-step truncation of products adds a T-independent floor)
    rng = np.random.default_rng(2)
    vz = np.fft.ifft2(np.fft.fft2(rng.standard_normal((32, 32))) *
                      np.exp(-30 * np.add.outer(np.fft.fftfreq(32) ** 2, np.fft.fftfreq(32) ** 2))).real
    vz *= 80 / np.abs(vz).max()
    po = PhaseObject(KV)(vz)
    errs = []
    for t in (40.0, 20.0, 10.0):
        ms = Multislice((32, 32), PX, KV, t / 4, bandlimit=False)(np.repeat(vz[None] / 4, 4, axis=0))
        errs.append(np.linalg.norm(ms - po))
    assert errs[0] / errs[1] > 3.5 and errs[1] / errs[2] > 3.5, errs  # measured 3.91, 3.76


def test_exit_reference_with_half_thickness_offset_gives_the_same_image(atoms):
    t_box, n = 60.0, 6
    v = _slices(atoms, t_box, n)
    o = Optics(voltage_kV=KV, defocus_u_A=8000, defocus_v_A=6000, astigmatism_angle_deg=25, cs_mm=2.7,
               energy_spread_eV=0.7)
    p = tuple(optics_inputs(o).values())
    centre = Multislice((N_PIX, N_PIX), PX, KV, t_box / n, reference="centre")(v)
    exit_ = Multislice((N_PIX, N_PIX), PX, KV, t_box / n, reference="exit")(v)
    img_c = TransferFunction.from_optics(o, (N_PIX, N_PIX), PX)(centre, *p)
    img_e = TransferFunction.from_optics(o, (N_PIX, N_PIX), PX, defocus_offset_A=t_box / 2)(exit_, *p)
    img_wrong = TransferFunction.from_optics(o, (N_PIX, N_PIX), PX)(exit_, *p)
    assert np.max(np.abs(np.abs(img_c) ** 2 - np.abs(img_e) ** 2)) < 1e-12
    assert np.max(np.abs(np.abs(img_c) ** 2 - np.abs(img_wrong) ** 2)) > 1e-4


def test_exit_and_centre_differ_by_propagation_of_half_thickness(atoms):
    v = _slices(atoms, 40.0, 4)
    centre = Multislice((N_PIX, N_PIX), PX, KV, 10.0)(v)
    exit_ = Multislice((N_PIX, N_PIX), PX, KV, 10.0, reference="exit")(v)
    back = FresnelPropagator((N_PIX, N_PIX), PX, KV, -20.0)(exit_)
    assert np.max(np.abs(back - centre)) < 1e-13


def test_propagator_band_limit_is_two_thirds_nyquist():
    p = propagator((60, 60), 1.0, 0.02, 100.0)
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(60), np.fft.fftfreq(60)))
    assert np.all(p[q > 1 / 3 + 1e-9] == 0)
    assert np.allclose(np.abs(p[q <= 1 / 3 - 1e-9]), 1)
    assert np.allclose(p[0, 5], np.exp(-1j * math.pi * 0.02 * 100.0 * (5 / 60) ** 2))


def test_checkpointed_backward_equals_store_all():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((7, 12, 12)) * 50
    g = rng.standard_normal((12, 12)) + 1j * rng.standard_normal((12, 12))
    out = []
    for every in (1, 3, None):
        st = Multislice((12, 12), 1.0, KV, 8.0, checkpoint=every)
        _, ctx = st.apply(v)
        out.append(st.vjp(ctx, g)[0])
    assert np.max(np.abs(out[0] - out[1])) < 1e-14 and np.max(np.abs(out[0] - out[2])) < 1e-14


def test_absorption_attenuates_by_exp_minus_two_sigma_v_abs():
    v = np.zeros((3, 8, 8))
    va = np.full((3, 8, 8), 20.0)
    ms = Multislice((8, 8), 1.0, KV, 10.0)(v, va)
    sigma = el.interaction_constant(KV)
    assert np.allclose(np.abs(ms) ** 2, np.exp(-2 * sigma * 60.0), rtol=1e-12)


def test_exit_wave_convenience_dispatches(atoms):
    v = _slices(atoms, 20.0, 4)
    a = exit_wave(v, KV, PX, "projection")
    assert np.array_equal(a, PhaseObject(KV)(v.sum(0)))
    b = exit_wave(v, KV, PX, "multislice", slice_thickness_A=5.0)
    assert np.array_equal(b, Multislice((N_PIX, N_PIX), PX, KV, 5.0)(v))
    with pytest.raises(ValueError):
        exit_wave(v, KV, PX, "multislice")


@pytest.mark.gpu
def test_multislice_on_gpu_matches_cpu(atoms):
    import cupy as cp
    v = _slices(atoms, 20.0, 4)
    a = Multislice((N_PIX, N_PIX), PX, KV, 5.0)(v)
    b = Multislice((N_PIX, N_PIX), PX, KV, 5.0)(cp.asarray(v))
    assert np.max(np.abs(a - cp.asnumpy(b))) < 1e-12
