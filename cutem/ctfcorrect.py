"""CTF correction and exposure filtering of tilt images before reconstruction.

CTF. The phase of a weak-phase image (cutem's convention, :mod:`cutem.optics`) is
χ(q; Δf) = π λ Δf q² − ½ π C_s λ³ q⁴ + arcsin(w), Δf > 0 underfocus, and the image's
contrast transfer is sin χ. Phase flipping multiplies the image's spectrum by
sign(sin χ); Wiener filtering by sin χ / (sin² χ + 1/SNR).

Defocus across a tilted field. A point of the specimen plane at distance s from the tilt
axis (direction a in the image plane) is carried by the right-handed tilt θ about a to
image position s cos θ along b = e_z × a and to height z = s sin θ (z down-beam); cutem's
defocus at height z is Δf(z) = Δf_axis + z (:mod:`cutem.propagation`: a wave referred to
the plane z needs the defocus offset +z). In image coordinates, with x_b the distance of a
pixel from the axis along b,

    Δf(x_b) = Δf_axis + x_b · tan θ    (x_b = s cos θ; = Δf_axis + s sin θ in specimen units).

For the IMOD convention (axis along +y) b = −x, so the defocus falls to the right of the
axis at positive tilt. IMOD's ``ctfphaseflip`` corrects each view in strips parallel to the
axis whose defocus varies by less than a tolerance (Xiong et al., J. Struct. Biol.
168:378, 2009). Here each view is corrected at a ladder of defoci spaced by the tolerance
(one whole-image FFT each, so no strip edges) and every pixel takes the linear
interpolation between the two corrected images whose defoci bracket its own: the limit of
narrow strips, at the cost of one FFT per rung.

Exposure filter (Grant & Grigorieff, eLife 4:e06980, 2015): the critical exposure at which
a spatial frequency q (1/Å) has lost 1/e of its signal is N_e(q) = a q^b + c, a = 0.245,
b = −1.665, c = 2.81 (e/Å², fitted at 300 kV); an image taken after accumulated exposure N
is weighted by exp(−N / (2 N_e(q))) (amplitude).
"""
from __future__ import annotations

import math

import numpy as np

import adjoints.backend as B

from .damage import GG_A, GG_B, GG_C, critical_exposure  # noqa: F401  (the one G&G fit, re-exported)
from .electron import wavelength_A
from .errors import InputError


def _freq2(shape, px, xp):
    ky = xp.fft.fftfreq(shape[0], d=px)[:, None]
    kx = xp.fft.rfftfreq(shape[1], d=px)[None, :]
    return ky * ky + kx * kx


def ctf_phase(q2, defocus_A, voltage_kV, cs_mm, amplitude_contrast):
    """χ(q) of the module docstring for squared frequencies ``q2`` (1/Å²)."""
    lam = wavelength_A(voltage_kV)
    cs = cs_mm * 1e7
    return (math.pi * lam * defocus_A * q2 - 0.5 * math.pi * cs * lam ** 3 * q2 * q2
            + math.asin(min(max(amplitude_contrast, 0.0), 1.0)))


def _check(stack, angles_deg, defocus_A):
    if stack.ndim != 3:
        raise InputError(f"CTF correction: the tilt stack must be 3D, got shape {stack.shape}")
    if len(angles_deg) != stack.shape[0] or len(defocus_A) != stack.shape[0]:
        raise InputError(f"CTF correction: {len(angles_deg)} angles and {len(defocus_A)} defoci "
                         f"for {stack.shape[0]} images")


def axis_distance(shape, axis_deg, origin="fft"):
    """x_b of every pixel: signed distance from the tilt axis along b = e_z × a (pixels)."""
    ny, nx = shape
    c = (lambda n: n / 2.0) if origin == "fft" else (lambda n: (n - 1) / 2.0)
    yy, xx = np.meshgrid(np.arange(ny) - c(ny), np.arange(nx) - c(nx), indexing="ij")
    phi = math.radians(axis_deg)
    return -math.sin(phi) * xx + math.cos(phi) * yy  # b = (−sin φ, cos φ)


def correct_ctf(stack, angles_deg, axis_deg, pixel_size_A, defocus_A, voltage_kV=300.0, cs_mm=2.7,
                amplitude_contrast=0.07, mode="phaseflip", wiener_snr=1.0, tolerance_A=None, origin="fft"):
    """CTF-corrected copy of ``stack`` (n, ny, nx); ``defocus_A`` per tilt at the axis.

    ``mode`` "phaseflip" or "wiener"; ``tolerance_A`` the defocus step of the ladder
    (default: a quarter of the defocus change that moves the CTF's Nyquist ring by π/2,
    λ Δ(Δf) q_N² = 1/8, never more than 200 Å).
    """
    if mode not in ("phaseflip", "wiener"):
        raise InputError(f"CTF correction mode must be phaseflip or wiener, not {mode!r}")
    xp = B.array_module(stack)
    defocus_A = np.asarray(defocus_A, dtype=np.float64).ravel()
    _check(stack, angles_deg, defocus_A)
    px = float(pixel_size_A)
    qn2 = (0.5 / px) ** 2
    if tolerance_A is None:
        tolerance_A = min(200.0, 1.0 / (8.0 * wavelength_A(voltage_kV) * qn2))
    q2 = _freq2(stack.shape[1:], px, xp)
    xb = xp.asarray(axis_distance(stack.shape[1:], axis_deg, origin) * px)
    out = xp.empty_like(stack)
    for i, (theta, df0) in enumerate(zip(angles_deg, defocus_A)):
        df_map = df0 + xb * math.tan(math.radians(float(theta)))
        lo, hi = float(B.to_numpy(df_map.min())), float(B.to_numpy(df_map.max()))
        n_rungs = max(int(math.ceil((hi - lo) / tolerance_A)) + 1, 1)
        rungs = np.linspace(lo, hi, n_rungs) if n_rungs > 1 else np.array([df0])
        spec = xp.fft.rfft2(stack[i])
        corrected = []
        for df in rungs:
            s = xp.sin(ctf_phase(q2, df, voltage_kV, cs_mm, amplitude_contrast))
            filt = xp.sign(s) if mode == "phaseflip" else s / (s * s + 1.0 / wiener_snr)
            corrected.append(xp.fft.irfft2(spec * filt, s=stack.shape[1:]))
        if n_rungs == 1:
            out[i] = corrected[0]
            continue
        pos = (df_map - rungs[0]) / (rungs[1] - rungs[0])
        j = xp.clip(xp.floor(pos).astype(np.int64), 0, n_rungs - 2)
        f = pos - j
        stacked = xp.stack(corrected)
        yy, xx = xp.meshgrid(xp.arange(stack.shape[1]), xp.arange(stack.shape[2]), indexing="ij")
        out[i] = (1 - f) * stacked[j, yy, xx] + f * stacked[j + 1, yy, xx]
    return out


def exposure_filter(stack, pixel_size_A, exposure_e_per_A2):
    """Each image's spectrum times exp(−N / (2 N_e(q))), N its accumulated exposure (e/Å²)."""
    xp = B.array_module(stack)
    exposure = np.asarray(exposure_e_per_A2, dtype=np.float64).ravel()
    if len(exposure) != stack.shape[0]:
        raise InputError(f"exposure filter: {len(exposure)} exposures for {stack.shape[0]} images")
    if np.any(exposure < 0):
        raise InputError("exposure filter: accumulated exposures must be non-negative")
    q = np.sqrt(B.to_numpy(_freq2(stack.shape[1:], float(pixel_size_A), np)))
    ne = critical_exposure(q)
    out = xp.empty_like(stack)
    for i, n in enumerate(exposure):
        w = xp.asarray(np.exp(-n / (2.0 * ne)).astype(stack.dtype))
        out[i] = xp.fft.irfft2(xp.fft.rfft2(stack[i]) * w, s=stack.shape[1:])
    return out


def fit_defocus_per_tilt(stack, pixel_size_A, voltage_kV, cs_mm, amplitude_contrast, tile=256):
    """Defocus (Å) of every tilt from its own power spectrum by :func:`cutem.fitting.fit_ctf`
    (the mean of U and V; tiles of ``tile`` pixels averaged near the axis)."""
    from cutem.fitting import fit_ctf

    arr = np.asarray(B.to_numpy(stack), dtype=np.float64)
    n = min(tile, *arr.shape[1:])
    out = []
    for img in arr:
        ps = np.zeros((n, n))
        count = 0
        for y0 in range(0, img.shape[0] - n + 1, n // 2):
            for x0 in range(0, img.shape[1] - n + 1, n // 2):
                t = img[y0:y0 + n, x0:x0 + n]
                ps += np.abs(np.fft.fft2(t - t.mean())) ** 2
                count += 1
        fit = fit_ctf(ps / max(count, 1), pixel_size_A, voltage_kV, cs_mm, centred=False,
                      amplitude_contrast=amplitude_contrast,
                      q_range=(min(1 / 50.0, 0.2 / pixel_size_A), min(1 / 8.0, 0.45 / pixel_size_A)))
        out.append(0.5 * (fit.defocus_u_A + fit.defocus_v_A))
    return np.array(out)
