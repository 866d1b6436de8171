"""Optics: CTF zeros, sign and defocus convention, envelopes, aperture, VJPs."""
import math

import numpy as np
import pytest

import adjoints
from adjoints import gradcheck
from cutem import electron as el
from cutem.optics import (CTF2D, PARAM_NAMES, TransferFunction, aperture_cutoff_per_A, apply_optics,
                          ctf_2d, optics_inputs)
from cutem.params import Optics
from cutem.propagation import FresnelPropagator, PhaseObject


def _zeros_along_x(ctf_row, q):
    """Zero crossings of a sampled profile, linearly interpolated between samples."""
    s = np.sign(ctf_row)
    idx = np.where((s[:-1] != s[1:]) & (s[:-1] != 0))[0]
    return np.array([q[i] - ctf_row[i] * (q[i + 1] - q[i]) / (ctf_row[i + 1] - ctf_row[i]) for i in idx])


def test_ctf_zeros_match_analytic():
    # 300 kV, Δf = 1 µm, Cs = 2.7 mm, no amplitude contrast (PHYSICS.md): a 2048² CTF at
    # 0.5 Å/pixel (q step 9.8e-4 Å⁻¹), its x axis (a radial profile) and the diagonal.
    o = Optics(voltage_kV=300, defocus_u_A=1e4, defocus_v_A=1e4, cs_mm=2.7)
    n, px = 2048, 0.5
    c = ctf_2d((n, n), px, o, envelope=False)
    q = np.fft.fftfreq(n, px)[: n // 2]
    z_x = _zeros_along_x(c[0, : n // 2], q)[:3]
    diag = np.array([c[i, i] for i in range(n // 2)])
    z_d = _zeros_along_x(diag, q * math.sqrt(2))[:3]
    expected = np.array([0.07137, 0.10106, 0.12394])
    assert np.all(np.abs(z_x / expected - 1) < 2e-3), z_x
    assert np.all(np.abs(z_d / expected - 1) < 2e-3), z_d
    lam = el.wavelength_A(300)
    analytic = np.sqrt([(1e4 - math.sqrt(1e8 - 2 * k * 2.7e7 * lam)) / (2.7e7 * lam ** 2) for k in (1, 2, 3)])
    assert np.all(np.abs(analytic / expected - 1) < 1e-4)
    assert np.all(np.abs(z_x / analytic - 1) < 2e-4)  # interpolation between samples


def test_astigmatic_zeros_follow_defocus_along_each_axis():
    o = Optics(voltage_kV=300, defocus_u_A=15000, defocus_v_A=10000, astigmatism_angle_deg=90.0, cs_mm=2.7)
    n, px = 2048, 0.5
    c = ctf_2d((n, n), px, o, envelope=False)
    q = np.fft.fftfreq(n, px)[: n // 2]
    lam = el.wavelength_A(300)
    first = lambda df: math.sqrt((df - math.sqrt(df * df - 2 * 2.7e7 * lam)) / (2.7e7 * lam ** 2))  # noqa: E731
    zx = _zeros_along_x(c[0, : n // 2], q)[0]   # θ = 0: perpendicular to u (θ_ast = 90°) → Δf_v
    zy = _zeros_along_x(c[: n // 2, 0], q)[0]   # θ = 90°: along u → Δf_u
    assert abs(zx / first(10000) - 1) < 2e-3
    assert abs(zy / first(15000) - 1) < 2e-3


def _gauss_potential(n, px, amp=20.0, width=3.0):
    y, x = (np.indices((n, n)) - n // 2) * px
    return amp * np.exp(-(x * x + y * y) / (2 * width ** 2))


def test_underfocus_makes_atoms_dark_and_overfocus_bright():
    n, px = 128, 1.0
    t = PhaseObject(300)(_gauss_potential(n, px))
    out = {}
    for df in (2000.0, -2000.0):
        o = Optics(voltage_kV=300, defocus_u_A=df, defocus_v_A=df, cs_mm=0.0)
        out[df] = np.abs(apply_optics(t, o, px)) ** 2
    # measured 0.9878 and 1.0123 (weak phase: 1 ∓ 2σV_z ⊛ sin χ)
    assert out[2000.0][n // 2, n // 2] < 0.995
    assert out[-2000.0][n // 2, n // 2] > 1.005
    assert out[2000.0][n // 2, n // 2] == out[2000.0].min()


def test_defocus_equals_free_propagation_back_up_the_beam():
    n, px, df = 64, 1.0, 800.0
    rng = np.random.default_rng(0)
    wave = np.exp(1j * 0.3 * rng.standard_normal((n, n)))
    o = Optics(voltage_kV=200, defocus_u_A=df, defocus_v_A=df, cs_mm=0.0)
    img = apply_optics(wave, o, px, nyquist_cut=False)
    prop = FresnelPropagator((n, n), px, 200, -df, bandlimit=False)(wave)
    assert np.max(np.abs(img - prop)) < 1e-12


def test_weak_object_intensity_transfer_equals_ctf_sin_form():
    # I = |ψ_img|² of a weak object 1 + iσV: Î(q) = 2σ V̂(q) · C(q) for q ≠ 0, with C from CTF2D
    n, px = 64, 1.5
    o = Optics(voltage_kV=300, defocus_u_A=12000, defocus_v_A=9000, astigmatism_angle_deg=30,
               cs_mm=2.7, energy_spread_eV=0.8, illumination_angle_mrad=0.05,
               amplitude_contrast=0.1, phase_shift_deg=20.0)
    rng = np.random.default_rng(1)
    v = rng.standard_normal((n, n)) * 1e-3
    sigma = el.interaction_constant(300)
    img = apply_optics(1 + 1j * sigma * v, o, px)
    c = ctf_2d((n, n), px, o)
    spec_i = np.fft.fft2(np.abs(img) ** 2)
    spec_pred = 2 * sigma * np.fft.fft2(v) * c
    # the envelope makes the transfer not exactly symmetric-real: compare where the
    # linear term dominates, ignoring q = 0 and second-order terms (σV ~ 1e-6)
    spec_i[0, 0] = spec_pred[0, 0] = 0
    err = np.abs(spec_i - spec_pred).max() / np.abs(spec_pred).max()
    assert err < 1e-4


def test_envelope_matches_spatial_and_temporal_coherence_forms():
    # TEM-simulator's exp(cξ² + dξ⁴ + eξ⁶) equals exp(−π²α²q²(Δf − Csλ²q²)²)·exp(−π²λ²q⁴(ΔE Cc′)²/4)
    n, px, kv = 32, 1.0, 300
    o = Optics(voltage_kV=kv, defocus_u_A=15000, defocus_v_A=15000, cs_mm=2.0, cc_mm=2.2,
               energy_spread_eV=1.2, illumination_angle_mrad=0.08)
    st = TransferFunction.from_optics(o, (n, n), px, nyquist_cut=False)
    h = st.transfer(tuple(optics_inputs(o).values()), np, np.float64)
    q = np.abs(np.fft.fftfreq(n, px))
    lam = el.wavelength_A(kv)
    alpha, cs, df = 0.08e-3, 2.0e7, 15000.0
    ccp = 2.2e7 * el.relativistic_energy_factor(kv)
    expected = (np.exp(-(math.pi * alpha) ** 2 * q ** 2 * (df - cs * lam ** 2 * q ** 2) ** 2)
                * np.exp(-(math.pi * lam) ** 2 * q ** 4 * (1.2 * ccp) ** 2 / 4))
    assert np.max(np.abs(np.abs(h[0]) - expected)) < 1e-12
    assert expected[n // 2] < 0.9  # the envelope does something at Nyquist


def test_objective_aperture_cuts_at_d_over_2f_lambda():
    o = Optics(voltage_kV=300, aperture_diameter_um=40.0, focal_length_mm=3.0)
    qmax = aperture_cutoff_per_A(o)
    assert abs(qmax - 40e4 / (2 * 3e7 * el.wavelength_A(300))) < 1e-15
    n, px = 256, 1.0
    c = np.abs(ctf_2d((n, n), px, o.replace(amplitude_contrast=0.5)))
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(n, px), np.fft.fftfreq(n, px)))
    assert np.all(c[q > qmax] == 0)
    assert np.count_nonzero(c[q <= qmax]) > 0.9 * np.count_nonzero(q <= qmax)


def test_nyquist_circle_cut_and_vacuum_intensity_is_one():
    n, px = 32, 2.0
    o = Optics()
    img = apply_optics(np.ones((n, n), complex), o, px)
    assert np.max(np.abs(np.abs(img) ** 2 - 1)) < 1e-12
    c = ctf_2d((n, n), px, o.replace(amplitude_contrast=0.3))
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(n, px), np.fft.fftfreq(n, px)))
    assert np.all(c[q > 0.5 / px + 1e-12] == 0) and np.all(c[q <= 0.5 / px] != 0)


def test_ctf_at_zero_frequency_is_minus_amplitude_contrast():
    c = ctf_2d((16, 16), 1.0, Optics(amplitude_contrast=0.07))
    assert abs(c[0, 0] + 0.07) < 1e-15


def test_rfft_half_grid_equals_full_grid_columns():
    o = Optics(defocus_u_A=20000, defocus_v_A=15000, astigmatism_angle_deg=20, energy_spread_eV=0.7)
    full = ctf_2d((24, 30), 1.1, o)
    half = ctf_2d((24, 30), 1.1, o, rfft=True)
    assert half.shape == (24, 16)
    assert np.max(np.abs(full[:, :16] - half)) < 1e-15


def test_optics_inputs_convert_units():
    d = optics_inputs(Optics(cs_mm=2.7, cc_mm=1.4, astigmatism_angle_deg=90, illumination_angle_mrad=0.05,
                             phase_shift_deg=180))
    assert tuple(d) == PARAM_NAMES
    assert float(d["cs_A"]) == 2.7e7 and float(d["cc_A"]) == 1.4e7
    assert abs(float(d["astigmatism_angle_rad"]) - math.pi / 2) < 1e-15
    assert float(d["illumination_angle_mrad"]) == 0.05
    assert abs(float(d["phase_shift_rad"]) - math.pi) < 1e-15


def test_optics_stages_pass_gradcheck():
    rows = gradcheck.run(names=["optics."])
    assert len(rows) == 2 and all(r.passed for r in rows), gradcheck.format_table(rows)
    assert max(r.vjp_error for r in rows) < 1e-6


def test_defocus_gradient_through_the_tape_matches_finite_difference():
    # d/dΔf of a loss on the image intensity, through apply_optics with a watched defocus
    n, px = 32, 1.0
    t = PhaseObject(300)(_gauss_potential(n, px, 50.0, 2.0))
    o = Optics(defocus_u_A=5000, defocus_v_A=5000, cs_mm=2.7, energy_spread_eV=0.8)

    def loss(df):
        img = apply_optics(t, o, px, params={"defocus_u_A": df, "defocus_v_A": df})
        d = adjoints.ops.abs2(img) - 1.0
        return adjoints.ops.sum(d * d)

    f, g = adjoints.value_and_grad(loss)(np.asarray(5000.0))
    h = 0.5
    fd = (float(loss(np.asarray(5000.0 + h))) - float(loss(np.asarray(5000.0 - h)))) / (2 * h)
    assert abs(float(g) - fd) < 1e-6 * max(abs(fd), 1e-12) + 1e-10
    assert abs(fd) > 1e-8


def test_transfer_is_the_same_on_a_batch_of_waves():
    n, px = 16, 1.0
    rng = np.random.default_rng(3)
    w = np.exp(1j * rng.standard_normal((3, n, n)))
    o = Optics(defocus_u_A=8000, defocus_v_A=7000, astigmatism_angle_deg=10)
    batch = apply_optics(w, o, px)
    one = apply_optics(w[1], o, px)
    assert np.max(np.abs(batch[1] - one)) < 1e-13


@pytest.mark.gpu
def test_ctf_on_gpu_matches_cpu():
    import cupy as cp
    o = Optics(defocus_u_A=20000, defocus_v_A=15000, energy_spread_eV=0.7)
    a = ctf_2d((64, 64), 1.0, o)
    b = ctf_2d((64, 64), 1.0, o, xp=cp)
    assert np.max(np.abs(a - cp.asnumpy(b))) < 1e-12


def test_ctf2d_from_optics_matches_function():
    o = Optics(defocus_u_A=20000, defocus_v_A=15000, energy_spread_eV=0.7)
    st = CTF2D.from_optics(o, (20, 20), 1.3)
    out, _ = st.apply(*optics_inputs(o).values())
    assert np.array_equal(out, ctf_2d((20, 20), 1.3, o))


def test_unneeded_cotangents_are_skipped_and_the_needed_ones_unchanged():
    o = Optics(defocus_u_A=8000, defocus_v_A=7000, energy_spread_eV=0.8)
    rng = np.random.default_rng(5)
    w = np.exp(1j * rng.standard_normal((16, 16)))
    g = rng.standard_normal((16, 16)) + 1j * rng.standard_normal((16, 16))
    p = tuple(optics_inputs(o).values())
    st = TransferFunction.from_optics(o, (16, 16), 1.0)
    full = st.cotangents(st.apply(w, *p)[1], g, (w,) + p)
    only_wave = st.cotangents(st.apply(w, *p)[1], g, (w,) + p, needs=(True,) + (False,) * 9)
    assert np.array_equal(full[0], only_wave[0]) and all(x is None for x in only_wave[1:])
    # the defocus alone: no wave cotangent, the same number as with every input asked for
    only_df = st.cotangents(st.apply(w, *p)[1], g, (w,) + p, needs=(False, True) + (False,) * 8)
    assert only_df[0] is None and only_df[1] == full[1] and all(x is None for x in only_df[2:])
    assert all(x is not None for x in full)