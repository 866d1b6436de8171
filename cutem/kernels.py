"""Fused GPU kernels (CuPy RawKernel / ElementwiseKernel) with NumPy fallbacks.

Every function takes arrays on either device and returns arrays on the same device; on a
GPU the work is one kernel launch with no host-device copy, on the CPU it is the same
mathematics in NumPy (the reference the GPU results are tested against,
``tests/test_kernels.py``, marked ``gpu``).

``scatter_bilinear(shape, y, x, w)``
    Σ_atoms wⱼ · tent(y − yⱼ) · tent(x − xⱼ) on a periodic (ny, nx) grid — each atom adds
    its weight to the four pixels around it with bilinear weights (the scatter of
    :mod:`cutem.potential`; positions in pixels, pixel i at coordinate i). GPU: one thread
    per atom, ``atomicAdd`` into the grid (float32, or float64 on sm_60+). CPU: ``bincount``.
``phase_grating(v, sigma, v_abs=None)``
    t = exp(iσV − σV′) (:class:`cutem.propagation.PhaseObject`), one pass: no complex
    temporaries for iσV or the exponential.
``apply_transfer(spec, pixel_size_A, voltage_kV, params, *, defocus_offset_A=0, q_max=None, nyquist_cut=True)``
    spec · exp(i[χ(q) + η·[q ≠ 0]]) · E(q) · A(q) in place — the lens of
    :class:`cutem.optics.TransferFunction` (χ, η, the coherence envelope E and the aperture
    A as documented there) computed per element from its FFT index, so no frequency, phase
    or envelope grids are allocated (a 4096² complex64 spectrum needs 128 MiB; the unfused
    chain allocates ~8 grids of that size).
``intensity_bin(wave, oversampling)``
    |ψ|² averaged over ``o × o`` blocks in one pass (no |ψ|² grid).

These are the pieces where NumPy-style code costs most on a GPU (a kernel launch and a
full-grid temporary per operator; the scatter's ``bincount`` cannot use atomics). Results
agree with the NumPy paths within float32 rounding; the scatter's atomic order makes it
non-deterministic in the last bit.
"""
from __future__ import annotations

import math

import numpy as np

import adjoints.backend as B

# ------------------------------------------------------------------------------ scatter
_SCATTER_SRC = r"""
extern "C" __global__
void scatter_bilinear(const T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ w,
                      const long long n, const int ny, const int nx, T* __restrict__ grid) {
    long long j = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (j >= n) return;
    T fy = y[j], fx = x[j];
    T fy0 = floor(fy), fx0 = floor(fx);
    T ty = fy - fy0, tx = fx - fx0;
    long long iy = ((long long)fy0 % ny + ny) % ny;
    long long ix = ((long long)fx0 % nx + nx) % nx;
    long long iy1 = (iy + 1) % ny, ix1 = (ix + 1) % nx;
    T wj = w[j];
    atomicAdd(&grid[iy * nx + ix], wj * (1 - ty) * (1 - tx));
    atomicAdd(&grid[iy * nx + ix1], wj * (1 - ty) * tx);
    atomicAdd(&grid[iy1 * nx + ix], wj * ty * (1 - tx));
    atomicAdd(&grid[iy1 * nx + ix1], wj * ty * tx);
}
"""

_CACHE: dict = {}


def _cupy_kernel(name, build):
    k = _CACHE.get(name)
    if k is None:
        k = _CACHE[name] = build()
    return k


def _scatter_kernel(dtype):
    import cupy as cp

    tname = "float" if np.dtype(dtype) == np.float32 else "double"
    return _cupy_kernel(f"scatter_{tname}", lambda: cp.RawKernel(
        f"typedef {tname} T;\n" + _SCATTER_SRC, "scatter_bilinear"))


def scatter_bilinear(shape, y, x, w, out=None):
    """Bilinear scatter of weights ``w`` at (``y``, ``x``) (pixels) onto a periodic grid.

    Returns (ny, nx) of ``w``'s dtype (``out`` is added to when given).
    """
    xp = B.array_module(y, x, w)
    ny, nx = (int(n) for n in shape)
    dtype = np.result_type(w.dtype, np.float32)
    if out is None:
        out = xp.zeros((ny, nx), dtype=dtype)
    n = int(len(w))
    if n == 0:
        return out
    if xp is np:
        fy0, fx0 = np.floor(y), np.floor(x)
        ty, tx = (y - fy0).astype(dtype), (x - fx0).astype(dtype)
        iy = fy0.astype(np.int64) % ny
        ix = fx0.astype(np.int64) % nx
        iy1, ix1 = (iy + 1) % ny, (ix + 1) % nx
        idx = np.concatenate([iy * nx + ix, iy * nx + ix1, iy1 * nx + ix, iy1 * nx + ix1])
        wts = np.concatenate([w * (1 - ty) * (1 - tx), w * (1 - ty) * tx, w * ty * (1 - tx), w * ty * tx])
        out += np.bincount(idx, weights=wts, minlength=ny * nx).reshape(ny, nx).astype(dtype, copy=False)
        return out
    k = _scatter_kernel(dtype)
    y, x, w = (xp.ascontiguousarray(a, dtype=dtype) for a in (y, x, w))
    threads = 256
    k(((n + threads - 1) // threads,), (threads,), (y, x, w, np.int64(n), np.int32(ny), np.int32(nx), out))
    return out


# -------------------------------------------------------------------------- phase grating
def _grating_kernel():
    import cupy as cp

    return _cupy_kernel("grating", lambda: cp.ElementwiseKernel(
        "T v, T va, T sigma", "complex<T> t",
        "T a = exp(-sigma * va); t = complex<T>(a * cos(sigma * v), a * sin(sigma * v));",
        "cutem_phase_grating"))


def phase_grating(v, sigma, v_abs=None, out=None):
    """exp(iσV − σV′) elementwise: complex64 for float32 ``v`` (complex128 for float64)."""
    xp = B.array_module(v)
    rdt = B.real_dtype(v.dtype)
    cdt = B.complex_dtype(rdt)
    if xp is np:
        if out is None:
            out = np.empty(v.shape, dtype=cdt)
        ph = np.multiply(v, rdt.type(sigma), dtype=rdt)
        np.cos(ph, out=out.real)
        np.sin(ph, out=out.imag)
        if v_abs is not None:
            a = np.multiply(v_abs, -rdt.type(sigma), dtype=rdt)
            np.exp(a, out=a)
            out *= a
        return out
    va = xp.zeros((), dtype=rdt) if v_abs is None else v_abs
    if out is None:
        out = xp.empty(v.shape, dtype=cdt)
    return _grating_kernel()(v, va, rdt.type(sigma), out)


# ------------------------------------------------------------------------------- transfer
_TRANSFER_BODY = r"""
    // frequency of element i of an (ny, nx) FFT grid, DC at [0, 0]
    long long r = (i / nx) % ny, c = i % nx;
    const double PI = 3.14159265358979323846;
    T ky = (r < (ny + 1) / 2) ? (T)r : (T)(r - ny);
    T kx = (c < (nx + 1) / 2) ? (T)c : (T)(c - nx);
    T qy = ky / (ny * px), qx = kx / (nx * px);
    T q2 = qx * qx + qy * qy;
    double q2d = ((double)kx / (nx * (double)px)) * ((double)kx / (nx * (double)px))
               + ((double)ky / (ny * (double)px)) * ((double)ky / (ny * (double)px));
    bool keep = true;
    if (qmax2 > 0) keep = keep && (q2d <= qmax2);
    if (qnyq2 > 0) keep = keep && (q2d <= qnyq2 * (1 + 1e-9));
    if (!keep) { s = complex<T>(0, 0); return; }
    T c2 = (q2 > 0) ? (qx * qx - qy * qy) / q2 : (T)1;
    T s2 = (q2 > 0) ? 2 * qx * qy / q2 : (T)0;
    T cosd = c2 * c2a + s2 * s2a;
    T df = (T)0.5 * (u + v) + (T)0.5 * (u - v) * cosd + off;
    T q4 = q2 * q2;
    T phase = (T)PI * lam * df * q2 - (T)(0.5 * PI) * cs * lam * lam * lam * q4 + ((q2 > 0) ? eta : (T)0);
    T xi2 = (T)(4 * PI * PI) * q2;
    T xi4 = xi2 * xi2, xi6 = xi4 * xi2;
    T loge = (T)(-0.25) * a2 * df * df * xi2 + ((T)0.5 * df * cs * a2 - temporal) * xi4 / (k * k)
             - (T)0.25 * cs * cs * a2 * xi6 / (k * k * k * k);
    T amp = exp(loge);
    complex<T> h(amp * cos(phase), amp * sin(phase));
    s = s * h;
"""


def _transfer_kernel():
    import cupy as cp

    return _cupy_kernel("transfer", lambda: cp.ElementwiseKernel(
        "int64 ny, int64 nx, T px, T u, T v, T c2a, T s2a, T cs, T lam, T k, T a2, T temporal, T eta, T off, "
        "float64 qmax2, float64 qnyq2",
        "complex<T> s", _TRANSFER_BODY, "cutem_apply_transfer", loop_prep="", preamble=""))


def _scalars(voltage_kV, params):
    from .electron import relativistic_energy_factor, wavelength_A, wavenumber_per_A
    from .optics import PARAM_NAMES

    p = {n: float(B.to_numpy(params[n])) for n in PARAM_NAMES}
    lam, k, kappa = wavelength_A(voltage_kV), wavenumber_per_A(voltage_kV), relativistic_energy_factor(voltage_kV)
    al = p["illumination_angle_mrad"] * 1e-3
    ta = p["astigmatism_angle_rad"]
    return dict(u=p["defocus_u_A"], v=p["defocus_v_A"], c2a=math.cos(2 * ta), s2a=math.sin(2 * ta), cs=p["cs_A"],
                lam=lam, k=k, a2=al * al,
                temporal=p["energy_spread_eV"] ** 2 * p["cc_A"] ** 2 * kappa ** 2 / 16.0,
                eta=math.asin(p["amplitude_contrast"]) + p["phase_shift_rad"])


def apply_transfer(spec, pixel_size_A, voltage_kV, params, *, defocus_offset_A=0.0, q_max=None,
                   nyquist_cut=True):
    """Multiply the wave spectrum ``spec`` (complex, (..., ny, nx), FFT layout) in place by the
    lens transfer H(q) of :class:`cutem.optics.TransferFunction`; returns ``spec``.

    ``params``: the nine optics parameters by :data:`cutem.optics.PARAM_NAMES`
    (:func:`cutem.optics.optics_inputs`). ``q_max``: objective-aperture cut-off in Å⁻¹.
    """
    xp = B.array_module(spec)
    rdt = B.real_dtype(spec.dtype)
    ny, nx = (int(n) for n in spec.shape[-2:])
    sc = _scalars(voltage_kV, params)
    px = float(pixel_size_A)
    qmax2 = -1.0 if q_max is None else float(q_max) ** 2
    qnyq2 = (0.5 / px) ** 2 if nyquist_cut else -1.0
    if xp is not np:
        T = rdt.type
        k = _transfer_kernel()
        k(np.int64(ny), np.int64(nx), T(px), T(sc["u"]), T(sc["v"]), T(sc["c2a"]), T(sc["s2a"]), T(sc["cs"]),
          T(sc["lam"]), T(sc["k"]), T(sc["a2"]), T(sc["temporal"]), T(sc["eta"]), T(defocus_offset_A),
          np.float64(qmax2), np.float64(qnyq2), spec)
        return spec
    # NumPy: the same formula on 1D frequency vectors broadcast to the grid
    qy = (np.fft.fftfreq(ny) * ny / (ny * px)).astype(rdt)[:, None]
    qx = (np.fft.fftfreq(nx) * nx / (nx * px)).astype(rdt)[None, :]
    q2 = qx * qx + qy * qy
    q2d = (np.fft.fftfreq(ny, d=px)[:, None] ** 2 + np.fft.fftfreq(nx, d=px)[None, :] ** 2)
    keep = np.ones(q2.shape, bool)
    if qmax2 > 0:
        keep &= q2d <= qmax2
    if qnyq2 > 0:
        keep &= q2d <= qnyq2 * (1 + 1e-9)
    safe = np.where(q2 > 0, q2, 1)
    c2 = np.where(q2 > 0, (qx * qx - qy * qy) / safe, 1)
    s2 = np.where(q2 > 0, 2 * qx * qy / safe, 0)
    cosd = c2 * rdt.type(sc["c2a"]) + s2 * rdt.type(sc["s2a"])
    u, v = rdt.type(sc["u"]), rdt.type(sc["v"])
    df = rdt.type(0.5) * (u + v) + rdt.type(0.5) * (u - v) * cosd + rdt.type(defocus_offset_A)
    lam, cs, k, a2 = (rdt.type(sc[n]) for n in ("lam", "cs", "k", "a2"))
    q4 = q2 * q2
    phase = rdt.type(math.pi) * lam * df * q2 - rdt.type(0.5 * math.pi) * cs * lam ** 3 * q4 \
        + np.where(q2 > 0, rdt.type(sc["eta"]), rdt.type(0))
    xi2 = rdt.type(4 * math.pi ** 2) * q2
    xi4, xi6 = xi2 * xi2, xi2 * xi2 * xi2
    loge = (rdt.type(-0.25) * a2 * df * df * xi2 + (rdt.type(0.5) * df * cs * a2 - rdt.type(sc["temporal"])) * xi4
            / (k * k) - rdt.type(0.25) * cs * cs * a2 * xi6 / (k ** 4))
    amp = np.exp(loge) * keep
    h = np.empty(q2.shape, dtype=spec.dtype)
    h.real, h.imag = np.cos(phase) * amp, np.sin(phase) * amp
    spec *= h
    return spec


# ------------------------------------------------------------------------------ binning
def _bin_kernel():
    import cupy as cp

    return _cupy_kernel("bin", lambda: cp.RawKernel(r"""
#include <cupy/complex.cuh>
typedef float T;
extern "C" __global__
void intensity_bin(const complex<T>* __restrict__ psi, const int ny, const int nx, const int o,
                   T* __restrict__ out) {
    int j = blockDim.x * blockIdx.x + threadIdx.x;
    int my = ny / o, mx = nx / o;
    if (j >= my * mx) return;
    int r = j / mx, c = j % mx;
    T acc = 0;
    for (int a = 0; a < o; ++a)
        for (int b = 0; b < o; ++b) {
            complex<T> z = psi[(long long)(r * o + a) * nx + c * o + b];
            acc += z.real() * z.real() + z.imag() * z.imag();
        }
    out[j] = acc / (T)(o * o);
}
""", "intensity_bin"))


def intensity_bin(wave, oversampling):
    """(ny/o, nx/o) mean of |ψ|² over o×o blocks of a 2D complex wave."""
    xp = B.array_module(wave)
    o = int(oversampling)
    ny, nx = wave.shape
    if ny % o or nx % o:
        raise ValueError(f"wave shape {wave.shape} is not a multiple of the oversampling {o}")
    if xp is np or wave.dtype != np.complex64:
        i = wave.real * wave.real + wave.imag * wave.imag
        return i.reshape(ny // o, o, nx // o, o).mean(axis=(1, 3)) if o > 1 else i
    out = xp.empty((ny // o, nx // o), dtype=np.float32)
    n = out.size
    _bin_kernel()(((n + 255) // 256,), (256,), (xp.ascontiguousarray(wave), np.int32(ny), np.int32(nx), np.int32(o),
                                               out))
    return out


__all__ = ["scatter_bilinear", "phase_grating", "apply_transfer", "intensity_bin"]
