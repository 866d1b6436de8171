"""Power spectra, radial averages and background models for fitting.

Conventions
-----------
* A power spectrum here is ``|FFT(x − mean)|² / N`` (N pixels), so white noise of
  variance σ² has a flat spectrum of level σ² at every non-DC frequency. Spectra are
  kept in FFT layout (DC at ``[0, 0]``, "corner") unless said otherwise;
  :func:`to_corner` / :func:`to_centre` convert (files often store DC at the centre,
  as RELION/CTFFIND ``_PS`` files do).
* Frequencies are in 1/Å when a pixel size is given, else in cycles per pixel.
* :class:`RadialAverage` is a linear stage (mean over rings of |q|), so a radially
  averaged model spectrum stays on the tape; its adjoint spreads each ring's cotangent
  back over the ring's pixels divided by the ring's count.
"""
from __future__ import annotations

import numpy as np

import adjoints.backend as B
from adjoints import Stage, register


# --------------------------------------------------------------------------- spectra
def power_spectrum(images, subtract_mean=True, average=True):
    """Periodogram |FFT(x − x̄)|²/N of one image or a stack (averaged over the stack).

    Parameters
    ----------
    images : array (ny, nx) or (n, ny, nx)
    subtract_mean : remove each image's mean first (the DC term is then ~0).
    average : average over leading axes.

    Returns
    -------
    array (ny, nx), DC at [0, 0].
    """
    xp = B.array_module(images)
    x = images.astype(np.float64) if images.dtype != np.float64 else images
    if subtract_mean:
        x = x - x.mean(axis=(-2, -1), keepdims=True)
    n = x.shape[-1] * x.shape[-2]
    ps = xp.abs(B.fft2(x)) ** 2 / n
    if average and ps.ndim > 2:
        ps = ps.reshape((-1,) + ps.shape[-2:]).mean(axis=0)
    return ps


def welch_power_spectrum(image, tile=512, overlap=0.5):
    """Average periodogram of overlapping square tiles (Welch), for large micrographs.

    Tiles of ``tile`` pixels (clipped to the image) step by ``tile·(1 − overlap)``.
    """
    ny, nx = image.shape[-2:]
    t = int(min(tile, ny, nx))
    step = max(1, int(t * (1 - overlap)))
    tiles = [image[..., y:y + t, x:x + t] for y in range(0, ny - t + 1, step) for x in range(0, nx - t + 1, step)]
    xp = B.array_module(image)
    return power_spectrum(xp.stack(tiles), average=True)


def to_corner(ps):
    """DC-at-centre spectrum -> FFT layout (DC at [0, 0])."""
    xp = B.array_module(ps)
    return xp.fft.ifftshift(ps, axes=(-2, -1))


def to_centre(ps):
    """FFT layout -> DC at the centre (for display and files)."""
    xp = B.array_module(ps)
    return xp.fft.fftshift(ps, axes=(-2, -1))


def frequency_grid(shape, pixel_size=1.0, xp=np, dtype=np.float64):
    """(qy, qx, |q|, θ) in FFT layout; |q| in 1/Å (or cycles/pixel when pixel_size=1)."""
    qy, qx = B.freq_grid(shape, pixel_size, xp, dtype)
    qy, qx = xp.broadcast_to(qy, shape), xp.broadcast_to(qx, shape)
    return qy, qx, xp.sqrt(qx ** 2 + qy ** 2), xp.arctan2(qy, qx)


# --------------------------------------------------------------------- radial binning
class RadialBins:
    """Rings of |q| on an FFT-layout grid.

    Bin k holds frequencies with ``k·dq <= |q| < (k+1)·dq`` where ``dq = 1/(n·pixel)``
    (one Fourier pixel along the shorter axis) unless ``nbins`` is given; bins past
    ``qmax`` (default: Nyquist of the shorter axis) are dropped. ``q`` holds each bin's
    mean |q| (not its centre), ``count`` its number of pixels.
    """

    def __init__(self, shape, pixel_size=1.0, nbins=None, qmax=None, xp=np):
        self.shape = tuple(shape)
        self.pixel_size = float(pixel_size)
        _, _, qabs, _ = frequency_grid(self.shape, pixel_size, np, np.float64)
        nyq = 0.5 / self.pixel_size
        qmax = nyq if qmax is None else float(qmax)
        if nbins is None:
            dq = 1.0 / (min(self.shape) * self.pixel_size)
            nbins = int(np.floor(qmax / dq)) + 1
        else:
            dq = qmax / nbins
        idx = np.floor(qabs / dq + 1e-9).astype(np.int64)
        idx[qabs > qmax + 1e-12] = -1
        idx[idx >= nbins] = -1
        keep = idx >= 0
        count = np.bincount(idx[keep], minlength=nbins).astype(np.float64)
        qsum = np.bincount(idx[keep], weights=qabs[keep], minlength=nbins)
        good = count > 0
        # renumber so that every bin is non-empty
        remap = -np.ones(nbins, dtype=np.int64)
        remap[good] = np.arange(int(good.sum()))
        idx = np.where(keep, remap[np.clip(idx, 0, nbins - 1)], -1)
        self.nbins = int(good.sum())
        self.count_np = count[good]
        self.q = qsum[good] / count[good]
        self.dq = dq
        self.index_np = idx
        self.xp = xp
        self.index = xp.asarray(idx)
        self.count = xp.asarray(self.count_np)

    def average(self, x):
        """Plain (not taped) ring mean of ``x`` (..., ny, nx) -> (..., nbins)."""
        return RadialAverage(self).apply(x)[0]


@register
class RadialAverage(Stage):
    """Mean of a 2D array over rings of |q| (a linear map R: R^(ny·nx) -> R^nbins).

    Forward: ``y_k = Σ_{j∈ring k} x_j / n_k``. Adjoint: ``(R^T y)_j = y_{k(j)} / n_{k(j)}``
    (zero outside every ring). Leading axes are batch axes.
    """

    linear = True

    def __init__(self, bins: RadialBins):
        self.bins = bins

    def forward(self, ctx, x):
        xp = B.array_module(x)
        b = self.bins
        idx = b.index if B.array_module(b.index) is xp else xp.asarray(b.index_np)
        cnt = b.count if B.array_module(b.count) is xp else xp.asarray(b.count_np)
        ctx.idx, ctx.cnt, ctx.lead = idx, cnt, x.shape[:-2]
        flat = x.reshape((-1, x.shape[-2] * x.shape[-1]))
        keep = idx.ravel() >= 0
        ii = idx.ravel()[keep]
        out = []
        for row in flat:
            v = row[keep]
            if xp.iscomplexobj(v):
                s = (xp.bincount(ii, weights=v.real, minlength=b.nbins)
                     + 1j * xp.bincount(ii, weights=v.imag, minlength=b.nbins))
            else:
                s = xp.bincount(ii, weights=v, minlength=b.nbins)
            out.append(s / cnt)
        out = xp.stack(out).astype(x.dtype, copy=False)
        return out.reshape(ctx.lead + (b.nbins,))

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        idx = ctx.idx
        safe = xp.where(idx >= 0, idx, 0)
        yy = y / ctx.cnt
        out = yy[..., safe]
        return xp.where(idx >= 0, out, 0).astype(y.dtype, copy=False)

    @classmethod
    def cases(cls, xp, dtype, rng):
        bins = RadialBins((6, 7), pixel_size=1.0, xp=xp)
        x = xp.asarray(rng.standard_normal((6, 7)).astype(dtype))
        x2 = xp.asarray(rng.standard_normal((2, 8, 8)).astype(dtype))
        return [(cls(bins), (x,)), (cls(RadialBins((8, 8), 2.0, nbins=5, qmax=0.2, xp=xp)), (x2,))]


def radial_average(x, bins: RadialBins):
    """Ring mean of ``x`` (a Var stays on the tape)."""
    return RadialAverage(bins)(x)


def radial_profile(ps, pixel_size=1.0, centred=False, qmax=None):
    """(q, mean power per ring) of a 2D spectrum (``centred``: DC at the centre)."""
    ps = to_corner(ps) if centred else ps
    bins = RadialBins(ps.shape, pixel_size, qmax=qmax, xp=B.array_module(ps))
    return bins.q, B.to_numpy(bins.average(ps))


# ---------------------------------------------------------------- background models
def smooth_basis(q, qlo, qhi, degree):
    """Legendre polynomials P_0..P_degree of q mapped from [qlo, qhi] to [−1, 1]: (len(q), degree+1)."""
    t = (2 * (np.asarray(q, dtype=np.float64) - qlo) / (qhi - qlo)) - 1
    return np.polynomial.legendre.legvander(t, degree)


def moving_average(y, width):
    """Centred moving average with reflected ends (``width`` samples, odd)."""
    y = np.asarray(y, dtype=np.float64)
    w = max(1, int(width) | 1)
    if w == 1:
        return y.copy()
    pad = w // 2
    yp = np.concatenate([y[pad:0:-1], y, y[-2:-pad - 2:-1]])
    c = np.cumsum(np.concatenate([[0.0], yp]))
    return (c[w:] - c[:-w]) / w


def subtract_background(profile, q, window_q2):
    """Background-subtracted, envelope-normalised profile (for comparing Thon rings).

    The background is a moving average over a window of constant width in q² (where
    the CTF oscillation is nearly periodic, χ ≈ πλΔf q²), so over one or more ring
    periods it averages sin² to ½ and leaves ``E(q)(sin²χ − ½)``; dividing by the
    moving RMS of what is left removes the envelope E. Returns an array like ``profile``.
    """
    q = np.asarray(q, dtype=np.float64)
    y = np.asarray(profile, dtype=np.float64)
    q2 = q ** 2
    # resample on a uniform q² grid, filter, sample back
    u = np.linspace(q2[0], q2[-1], 4 * len(q2))
    yu = np.interp(u, q2, y)
    du = u[1] - u[0]
    width = max(3, int(round(window_q2 / du)))
    bg = np.interp(q2, u, moving_average(yu, width))
    r = y - bg
    ru = np.interp(u, q2, r ** 2)
    env = np.sqrt(np.maximum(np.interp(q2, u, moving_average(ru, width)), 1e-30))
    return r / env


__all__ = ["power_spectrum", "welch_power_spectrum", "to_corner", "to_centre", "frequency_grid",
           "RadialBins", "RadialAverage", "radial_average", "radial_profile", "smooth_basis",
           "moving_average", "subtract_background"]
