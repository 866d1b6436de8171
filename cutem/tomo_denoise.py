"""Denoising a tomogram by its own noise estimate: even/odd tilts, or the noise floor.

Even/odd (Noise2Noise on tilts, the idea of Cryo-CARE: Buchholz, Jordan, Pigino & Jug,
ISBI 2019, 502, where the halves are even and odd movie frames). The tilts are split in
two interleaved halves, each of which covers the whole angular range; their tomograms
e and o carry the same signal and independent noise. In Fourier space

    S(k) = ⟨Re E(k) O*(k)⟩ ≈ |signal|²,    N(k) = ⟨|E(k) − O(k)|²⟩ / 4 ≈ noise of (e + o)/2,

⟨·⟩ a local (Gaussian) average over neighbouring Fourier voxels, and the full tomogram is
filtered by the Wiener gain w = S₊ / (S₊ + N) (S₊ = max(S, 0)). This is the half-map
filter of cryo-EM (the FSC-weighting of Rosenthal & Henderson, J. Mol. Biol. 333:721, 2003,
whose shell average C = S / (S + N/2·…) it generalises) estimated per neighbourhood
instead of per shell: a shell-constant gain would leave the FSC against the truth
unchanged (the FSC is invariant to a factor per shell), while in single-axis tomography
the SNR varies strongly *within* a shell (Fourier voxels near the tilt axis are sampled
by every tilt, those far from it by one; the missing wedge by none), and there the local
gain raises it.

Noise floor (a finished tomogram, no halves): the noise power is taken as white at the
mean power of the outer band (``noise_band`` of Nyquist, where the signal is gone), and
the gain is w = max(P − N, 0) / P with P the locally averaged power.
"""
from __future__ import annotations

import numpy as np

import adjoints.backend as B

from .errors import InputError


def _smooth(power, sigma):
    """Gaussian average over neighbouring Fourier voxels on the periodic FFT grid."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(power, sigma, mode="wrap") if sigma > 0 else power


def even_odd_halves(stack, angles_deg, reconstruct):
    """``(even, odd)`` tomograms: ``reconstruct(sub_stack, sub_angles)`` of the even- and
    odd-numbered tilts (in the stack's order, which for a sorted series interleaves them)."""
    angles = [float(a) for a in angles_deg]
    if len(angles) < 4:
        raise InputError(f"even/odd split needs at least 4 tilts, got {len(angles)}")
    even, odd = list(range(0, len(angles), 2)), list(range(1, len(angles), 2))
    return (reconstruct(stack[even], [angles[i] for i in even]),
            reconstruct(stack[odd], [angles[i] for i in odd]))


def specimen_mask(volume, percentile=95.0, sigma=2.0):
    """A soft mask around the densest part of a tomogram, from the data alone: the voxels of
    a Gaussian smoothing (``sigma`` voxels) above its ``percentile``, with edges softened by
    the same Gaussian (values in [0, 1], 1 well inside). Cryo-EM masks its half maps the
    same way before their FSC (e.g. RELION's post-processing)."""
    from scipy.ndimage import gaussian_filter

    v = np.asarray(B.to_numpy(volume), dtype=np.float64)
    if not 0 < percentile < 100:
        raise InputError(f"mask percentile = {percentile} must lie in (0, 100)")
    sm = gaussian_filter(v, sigma)
    return np.clip(2.0 * gaussian_filter((sm > np.percentile(sm, percentile)).astype(np.float64), sigma), 0.0, 1.0)


def even_odd_wiener(even, odd, sigma=2.0, mask=None):
    """The Wiener-filtered mean of two half tomograms (module docstring); ``sigma`` is
    the width, in Fourier voxels, of the local average. Returns ``(volume, gain)``.

    ``mask`` (e.g. :func:`specimen_mask` of the mean) multiplies both halves first, so the
    spectra and the gain are those of the specimen, not of the ice around it: a tomogram
    of a few particles is mostly ice, whose noise would set a gain far below the SNR of the
    particles (and the filter, a convolution, would carry that noise into them).
    """
    e = np.asarray(B.to_numpy(even), dtype=np.float64)
    o = np.asarray(B.to_numpy(odd), dtype=np.float64)
    if e.shape != o.shape:
        raise InputError(f"even/odd tomograms differ in shape {e.shape} vs {o.shape}")
    if not sigma >= 0:
        raise InputError(f"Wiener smoothing sigma = {sigma} must be non-negative")
    if mask is not None:
        if np.shape(mask) != e.shape:
            raise InputError(f"mask of shape {np.shape(mask)} for tomograms of shape {e.shape}")
        e, o = e * mask, o * mask
    fe, fo = np.fft.fftn(e), np.fft.fftn(o)
    s = np.maximum(_smooth((fe * np.conj(fo)).real, sigma), 0.0)
    n = _smooth(np.abs(fe - fo) ** 2, sigma) / 4.0
    gain = s / np.maximum(s + n, 1e-300)
    return np.fft.ifftn(0.5 * (fe + fo) * gain).real, gain


def noise_floor_wiener(volume, sigma=2.0, noise_band=(0.8, 1.0)):
    """Wiener filter of one tomogram with white noise at the power of the outer band
    ``noise_band`` (fractions of Nyquist along the radial frequency). Returns ``(volume, gain)``."""
    v = np.asarray(B.to_numpy(volume), dtype=np.float64)
    lo, hi = noise_band
    if not 0 <= lo < hi <= np.sqrt(v.ndim):
        raise InputError(f"noise band {noise_band} must satisfy 0 <= low < high (fractions of Nyquist)")
    f = np.fft.fftn(v - v.mean())
    r = np.sqrt(sum(g ** 2 for g in np.meshgrid(*[np.fft.fftfreq(n) / 0.5 for n in v.shape],
                                                   indexing="ij", sparse=True)))
    band = (r >= lo) & (r <= hi)
    if not band.any():
        raise InputError(f"noise band {noise_band} holds no Fourier voxel of a {v.shape} volume")
    p = np.abs(f) ** 2
    noise = float(p[band].mean())
    ps = _smooth(p, sigma)
    gain = np.maximum(ps - noise, 0.0) / np.maximum(ps, 1e-300)
    return np.fft.ifftn(f * gain).real + v.mean(), gain


def _slice_pairs(even, odd):
    """Pair source for :class:`cutem.denoise.Trainer`: a random z section of one half
    tomogram as input and the same section of the other half as target (Noise2Noise:
    the noise of the two is independent, so the network learns their common signal)."""
    e = np.asarray(B.to_numpy(even), dtype=np.float32)
    o = np.asarray(B.to_numpy(odd), dtype=np.float32)

    def source(rng):
        k = int(rng.integers(e.shape[0]))
        return (e[k], o[k]) if rng.integers(2) else (o[k], e[k])

    return source


def even_odd_network(even, odd, steps=300, patch=64, width=8, depth=2, seed=0, progress=False):
    """Cryo-CARE on sections: a small :class:`adjoints.nn.UNet` trained to map z sections of
    one half tomogram to the other's (:func:`_slice_pairs`), applied to both halves and
    averaged. Returns ``(volume, trainer)``.

    The pool holds every section (a refresh draws another), so ``steps`` × 4 patches of
    ``patch``² see each section many times; nothing but the two halves is used.
    """
    from adjoints.nn import UNetConfig

    from .denoise import TrainConfig, denoise_stack, train

    e = np.asarray(B.to_numpy(even), dtype=np.float32)
    o = np.asarray(B.to_numpy(odd), dtype=np.float32)
    if e.shape != o.shape or e.ndim != 3:
        raise InputError(f"even/odd tomograms must be two 3D volumes of one shape, got {e.shape} and {o.shape}")
    if min(e.shape[1:]) < patch:
        raise InputError(f"sections {e.shape[1:]} are smaller than the training patch {patch}")
    cfg = TrainConfig(steps=int(steps), patch=int(patch), pool=min(16, e.shape[0]), refresh_every=5,
                      warmup=min(50, int(steps) // 5), seed=int(seed), noise2noise=True,
                      checkpoint_every=10 ** 9)
    tr = train(_slice_pairs(e, o), UNetConfig(depth=int(depth), width=int(width), convs=1), cfg,
               progress=progress, source_info={"kind": "even/odd half tomograms"})
    den = 0.5 * (denoise_stack(tr.net, tr.params, e) + denoise_stack(tr.net, tr.params, o))
    return den, tr
