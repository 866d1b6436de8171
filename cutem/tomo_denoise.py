"""Denoising a tomogram by its own noise estimate: halves of the tilts, or the noise floor.

Halves (Noise2Noise on tilts, the idea of Cryo-CARE: Buchholz, Jordan, Pigino & Jug,
ISBI 2019, 502, where the halves are even and odd movie frames). The tilts are split in
two interleaved halves, each of which covers the whole angular range; their tomograms
a and b carry the same signal and independent noise. In Fourier space

    S(k) = ⟨Re A(k) B*(k)⟩ ≈ |signal|²,    N(k) = ⟨|A(k) − B(k)|²⟩ / 4 ≈ noise of (a + b)/2,

⟨·⟩ a local (Gaussian) average over neighbouring Fourier voxels, and the full tomogram is
filtered by the Wiener gain w = S₊ / (S₊ + N) (S₊ = max(S, 0)). This is the half-map
filter of cryo-EM (the FSC-weighting of Rosenthal & Henderson, J. Mol. Biol. 333:721, 2003,
whose shell average C = S / (S + N/2·…) it generalises) estimated per neighbourhood
instead of per shell: a shell-constant gain would leave the FSC against the truth
unchanged (the FSC is invariant to a factor per shell), while in single-axis tomography
the SNR varies strongly *within* a shell (Fourier voxels near the tilt axis are sampled
by every tilt, those far from it by one; the missing wedge by none), and there the local
gain raises it. The first split is even/odd; further splits swap each consecutive pair of
tilts at random (both halves still interleave the whole range), and S and N are averaged
over the splits, which lowers the variance of their estimates.

Two stages (:func:`denoise_halves`). A Fourier-local gain cannot use what the FSC rewards
beyond it: that a particle's density is localised and piecewise smooth. The Wiener output
is therefore denoised by total variation (Rudin, Osher & Fatemi, Physica D 60:259, 1992;
Chambolle's projection, J. Math. Imaging Vis. 20:89, 2004, as scikit-image implements it),
with its weight proportional to the filtered noise's standard deviation, and the same is
done to every half, each filtered by the same gain. The TV-denoised halves still carry
independent noise, so their cross and difference spectra give a second Wiener gain, which
filters the TV-denoised tomogram: the second, empirical-Wiener step of BM3D (Dabov, Foi,
Katkovnik & Egiazarian, IEEE TIP 16:2080, 2007) with a pilot estimate made from halves.

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


def half_splits(n_tilts, splits=2, seed=0):
    """``splits`` ways of dealing ``n_tilts`` tilts (in the stack's order) into two halves, as
    index lists ``(a, b)``: the first even/odd, each further one with every consecutive pair
    (2k, 2k + 1) swapped at random (``seed``), so that both halves interleave the whole range."""
    n, k = int(n_tilts), int(splits)
    if n < 4:
        raise InputError(f"splitting the tilts into halves needs at least 4 tilts, got {n}")
    if k < 1:
        raise InputError(f"splits = {splits} must be at least 1")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        in_a = np.arange(n) % 2 == 0
        if i:
            swap = rng.integers(0, 2, size=(n + 1) // 2).astype(bool)
            in_a = np.where(np.repeat(swap, 2)[:n], ~in_a, in_a)
        out.append((np.flatnonzero(in_a).tolist(), np.flatnonzero(~in_a).tolist()))
    return out


def half_tomograms(stack, angles_deg, reconstruct, splits=2, seed=0):
    """``[(a, b), ...]``: ``reconstruct(sub_stack, sub_angles)`` of the two halves of each
    of :func:`half_splits`'s splits, as float32 NumPy volumes (the first pair: even and odd)."""
    angles = [float(a) for a in angles_deg]
    if len(stack) != len(angles):
        raise InputError(f"{len(stack)} tilts but {len(angles)} tilt angles")
    pairs = []
    for idx in half_splits(len(angles), splits, seed):
        pairs.append(tuple(np.asarray(B.to_numpy(reconstruct(stack[i], [angles[j] for j in i])), dtype=np.float32)
                           for i in idx))
    return pairs


def _checked(halves, mask):
    """The halves as NumPy pairs of one shape, and the mask (or 1) checked against it."""
    pairs = [tuple(np.asarray(B.to_numpy(v)) for v in p) for p in halves]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise InputError("halves must be a non-empty list of (a, b) tomogram pairs")
    shape = pairs[0][0].shape
    if any(v.shape != shape for p in pairs for v in p):
        raise InputError(f"half tomograms differ in shape: {sorted({v.shape for p in pairs for v in p})}")
    if mask is None:
        return pairs, 1.0
    if np.shape(mask) != shape:
        raise InputError(f"mask of shape {np.shape(mask)} for tomograms of shape {shape}")
    return pairs, np.asarray(mask, dtype=np.float64)


def _gain(spectra, sigma):
    """The local Wiener gain S₊ / (S₊ + N) of the module docstring, S and N averaged over the
    pairs (``spectra`` yields the two halves' Fourier transforms)."""
    s = n = 0.0
    for fa, fb in spectra:
        s = s + (fa * np.conj(fb)).real
        n = n + np.abs(fa - fb) ** 2 / 4.0
    s, n = np.maximum(_smooth(s, sigma), 0.0), _smooth(n, sigma)
    return s / np.maximum(s + n, 1e-300)


def _first_stage(halves, sigma, mask):
    """``(volume, gain, spectra)`` of :func:`halves_wiener`, with the masked halves' Fourier
    transforms, which the second stage filters again (each is computed once)."""
    if not sigma >= 0:
        raise InputError(f"Wiener smoothing sigma = {sigma} must be non-negative")
    from scipy import fft

    pairs, m = _checked(halves, mask)
    # kept in single precision (the halves' own): every half's transform is held for stage two
    spectra = [tuple(fft.fftn(np.asarray(v * m, np.float32)) for v in p) for p in pairs]
    gain = _gain(spectra, sigma)
    mean = sum(fa + fb for fa, fb in spectra) / (2 * len(spectra))   # the masked mean's transform
    return np.fft.ifftn(mean * gain).real, gain, spectra


def halves_wiener(halves, sigma=2.0, mask=None):
    """The mean of the half tomograms ``[(a, b), ...]`` (:func:`half_tomograms`) filtered by
    their local Wiener gain (module docstring); ``sigma`` is the width, in Fourier voxels, of
    the local average. Returns ``(volume, gain)``.

    ``mask`` (e.g. :func:`specimen_mask` of the mean) multiplies every half first, so the
    spectra and the gain are those of the specimen, not of the ice around it: a tomogram
    of a few particles is mostly ice, whose noise would set a gain far below the SNR of the
    particles (and the filter, a convolution, would carry that noise into them).
    """
    volume, gain, _ = _first_stage(halves, sigma, mask)
    return volume, gain


def denoise_halves(halves, sigma=2.0, mask="specimen", tv_weight=2.0):
    """Two-stage denoising of a tomogram from its half tomograms (module docstring): the
    masked :func:`halves_wiener`, total variation of weight ``tv_weight`` × the standard
    deviation of the filtered noise (inside the mask), and the Wiener gain of the
    TV-denoised halves. ``mask``: ``"specimen"`` (:func:`halves_specimen_mask`), an array, or
    None. Returns ``(volume, gain)``, the gain of the second stage.

    ``tv_weight`` = 2 was chosen on the TMV series of ``validation/tomo_denoise.py`` (seed 0,
    among 1, 2, 3, 4) and checked on two other noise draws of it (README).
    """
    from skimage.restoration import denoise_tv_chambolle

    if not (np.isfinite(tv_weight) and tv_weight > 0):
        raise InputError(f"TV weight = {tv_weight} must be a positive number")
    if isinstance(mask, str):
        if mask != "specimen":
            raise InputError(f"mask = {mask!r}: expected 'specimen', an array or None")
        mask, _ = halves_specimen_mask(halves)
    first, gain, spectra = _first_stage(halves, sigma, mask)
    fa, fb = spectra[0]
    noise = np.fft.ifftn((fa - fb) / 2.0 * gain).real   # a draw of the filtered noise
    inside = np.broadcast_to(1.0 if mask is None else mask, noise.shape) > 0.5
    weight = tv_weight * float(noise[inside].std() if inside.any() else noise.std())
    if not weight > 0:
        raise InputError("the half tomograms are identical: their difference holds no noise to set the TV weight")

    def tv_spectrum(f):
        return np.fft.fftn(denoise_tv_chambolle(np.fft.ifftn(f * gain).real, weight=weight))

    second = _gain(((tv_spectrum(fa), tv_spectrum(fb)) for fa, fb in spectra), sigma)
    return np.fft.ifftn(np.fft.fftn(denoise_tv_chambolle(first, weight=weight)) * second).real, second


def halves_specimen_mask(halves, percentile=95.0, sigma=2.0):
    """``(mask, sign)``: :func:`specimen_mask` of the halves' mean times ``sign``, the sign of
    the particles' density in the data (+1: denser is brighter). A tomogram of phase-flipped
    bright-field tilts shows protein darker than ice unless it was inverted, and a mask on the
    wrong side holds noise (``validation/tomo_denoise.py``'s row "halves, mask on the wrong
    side"), so both are tried and the one inside which the halves agree best is kept: the
    largest Σ Re A B* / Σ |A − B|²/4, the signal-to-noise ratio of the module docstring summed
    over Fourier space, which by Parseval is Σ (am)(bm) / Σ ((a − b)m)²/4 in real space."""
    pairs, _ = _checked(halves, None)
    mean = sum(np.asarray(a, np.float64) + b for a, b in pairs) / (2 * len(pairs))
    best = None
    for sign in (1.0, -1.0):
        m = specimen_mask(sign * mean, percentile, sigma)
        s = sum(float(np.vdot(a * m, b * m)) for a, b in pairs)
        n = sum(float(np.sum(((a - b) * m) ** 2)) for a, b in pairs) / 4.0
        snr = s / max(n, 1e-300)
        if best is None or snr > best[0]:
            best = (snr, m, sign)
    return best[1], best[2]


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
