"""Fused kernels: the NumPy paths equal the pipeline's stages; the CuPy kernels equal NumPy (gpu)."""
from __future__ import annotations

import numpy as np
import pytest

import adjoints.backend as B
from cutem import kernels as K
from cutem import optics as O
from cutem.electron import interaction_constant
from cutem.params import Optics
from cutem.propagation import PhaseObject

OPTICS = Optics(voltage_kV=300.0, defocus_u_A=12000.0, defocus_v_A=10500.0, astigmatism_angle_deg=31.0,
                cs_mm=2.7, amplitude_contrast=0.07, phase_shift_deg=10.0, illumination_angle_mrad=0.05,
                energy_spread_eV=0.9, cc_mm=2.7, aperture_diameter_um=30.0, focal_length_mm=3.5)


def _atoms(rng, n, shape):
    ny, nx = shape
    y = rng.uniform(-3, ny + 3, n)   # some outside the field: periodic wrap
    x = rng.uniform(-3, nx + 3, n)
    return y, x, rng.uniform(0.2, 1.5, n)


def _scatter_loop(shape, y, x, w):
    ny, nx = shape
    g = np.zeros(shape)
    for yy, xx, ww in zip(y, x, w):
        iy, ix = int(np.floor(yy)), int(np.floor(xx))
        ty, tx = yy - iy, xx - ix
        for dy, wy in ((0, 1 - ty), (1, ty)):
            for dx, wx in ((0, 1 - tx), (1, tx)):
                g[(iy + dy) % ny, (ix + dx) % nx] += ww * wy * wx
    return g


def test_scatter_equals_a_loop_over_atoms_and_keeps_the_total(rng):
    shape = (13, 17)
    y, x, w = _atoms(rng, 200, shape)
    g = K.scatter_bilinear(shape, y, x, w)
    assert np.allclose(g, _scatter_loop(shape, y, x, w), rtol=0, atol=1e-12)
    assert g.sum() == pytest.approx(w.sum(), rel=1e-12)
    g2 = K.scatter_bilinear(shape, y.astype(np.float32), x.astype(np.float32), w.astype(np.float32))
    assert g2.dtype == np.float32 and np.abs(g2 - g).max() < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_phase_grating_equals_the_phase_object_stage(rng, dtype):
    v = rng.uniform(0, 40, (24, 20)).astype(dtype)
    va = rng.uniform(0, 3, (24, 20)).astype(dtype)
    st = PhaseObject(300.0)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for a in (None, va):
        ref = st(v) if a is None else st(v, a)
        got = K.phase_grating(v, interaction_constant(300.0), a)
        assert got.dtype == B.complex_dtype(dtype)
        assert np.abs(got - ref).max() < tol


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fused_transfer_equals_the_optics_stage(rng, dtype, tol):
    shape, px = (48, 40), 1.3
    wave = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(B.complex_dtype(dtype))
    ref = O.apply_optics(wave, OPTICS, px, defocus_offset_A=120.0)
    params = O.optics_inputs(OPTICS, np, dtype)
    spec = B.fft2(wave)
    K.apply_transfer(spec, px, OPTICS.voltage_kV, params, defocus_offset_A=120.0,
                     q_max=O.aperture_cutoff_per_A(OPTICS))
    got = B.ifft2(spec)
    assert np.abs(got - ref).max() / np.abs(ref).max() < tol
    # the aperture removed something here (the test would not see a missing cut otherwise)
    q_max = O.aperture_cutoff_per_A(OPTICS)
    assert q_max < 0.5 / px


def test_intensity_bin_is_the_block_mean_of_abs2(rng):
    w = (rng.normal(size=(12, 18)) + 1j * rng.normal(size=(12, 18))).astype(np.complex64)
    b = K.intensity_bin(w, 3)
    ref = (np.abs(w.astype(np.complex128)) ** 2).reshape(4, 3, 6, 3).mean(axis=(1, 3))
    assert b.shape == (4, 6) and np.allclose(b, ref, rtol=1e-6)
    with pytest.raises(ValueError):
        K.intensity_bin(w, 5)


# ---------------------------------------------------------------------------- GPU vs NumPy
@pytest.mark.gpu
def test_gpu_scatter_matches_numpy(rng):
    import cupy as cp

    shape = (256, 200)
    y, x, w = (a.astype(np.float32) for a in _atoms(rng, 100_000, shape))
    ref = K.scatter_bilinear(shape, y.astype(np.float64), x.astype(np.float64), w.astype(np.float64))
    got = K.scatter_bilinear(shape, cp.asarray(y), cp.asarray(x), cp.asarray(w)).get()
    # float32 atomics add in arbitrary order: relative to the pixel sums' magnitude
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    got64 = K.scatter_bilinear(shape, cp.asarray(y, np.float64), cp.asarray(x, np.float64),
                               cp.asarray(w, np.float64)).get()
    ref64 = K.scatter_bilinear(shape, y.astype(np.float64), x.astype(np.float64), w.astype(np.float64))
    assert np.abs(got64 - ref64).max() <= 1e-12 * np.abs(ref64).max()


@pytest.mark.gpu
def test_gpu_phase_grating_matches_numpy(rng):
    import cupy as cp

    v = rng.uniform(0, 60, (512, 384)).astype(np.float32)
    va = rng.uniform(0, 3, v.shape).astype(np.float32)
    s = interaction_constant(300.0)
    for a in (None, va):
        ref = K.phase_grating(v, s, a)
        got = K.phase_grating(cp.asarray(v), s, None if a is None else cp.asarray(a)).get()
        assert np.abs(got - ref).max() < 4e-6


@pytest.mark.gpu
def test_gpu_transfer_matches_numpy(rng):
    import cupy as cp

    shape, px = (512, 384), 1.0
    spec = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    params = O.optics_inputs(OPTICS, np, np.float32)
    ref = K.apply_transfer(spec.copy(), px, 300.0, params, q_max=O.aperture_cutoff_per_A(OPTICS))
    got = K.apply_transfer(cp.asarray(spec), px, 300.0, params, q_max=O.aperture_cutoff_per_A(OPTICS)).get()
    # phases of ~1e3 rad at the edge in float32: relative error ~ phase × 2⁻²⁴
    assert np.abs(got - ref).max() < 2e-3 * np.abs(spec).max()
    assert np.mean(np.abs(got - ref)) < 1e-4 * np.abs(spec).mean()
    batch = cp.asarray(np.stack([spec, spec]))
    K.apply_transfer(batch, px, 300.0, params, q_max=O.aperture_cutoff_per_A(OPTICS))
    assert cp.allclose(batch[0], batch[1]) and cp.abs(batch[1].get() - ref).max() < 2e-3 * np.abs(spec).max()


@pytest.mark.gpu
def test_gpu_intensity_bin_matches_numpy(rng):
    import cupy as cp

    w = (rng.normal(size=(256, 320)) + 1j * rng.normal(size=(256, 320))).astype(np.complex64)
    ref = K.intensity_bin(w, 4)
    got = K.intensity_bin(cp.asarray(w), 4).get()
    assert np.allclose(got, ref, rtol=2e-6, atol=0)
