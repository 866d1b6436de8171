"""``NAME.png``: a preview a person can read at a glance.

One row per shown tilt (a single micrograph: one row; a tilt series: the lowest, the nearest
0° and the highest angle), three labelled panels per row:

1. the noisy image filtered to the particle scale: a Gaussian low-pass of σ = D/10 (D the
   largest particle's diameter; at least one pixel), so particles stand out of the shot noise,
   less a Gaussian of σ = 2D (the slow trend of a tilted ice slab, which would take the
   whole contrast range);
2. the noise-free image (the expected counts, same contrast stretch rules);
3. the power spectrum of the noisy image (Welch average of square tiles, log scale, DC at the
   centre) with the zeros of the tilt's CTF (:func:`cutem.optics.ctf_2d`, the simulation's own
   CTF, astigmatism included) marked in red on the right half; the left half is the bare
   spectrum, so the Thon rings can be compared with the marks across the middle.

Drawn with Pillow (its built-in font is ASCII only).
"""
from __future__ import annotations

import math

import numpy as np

from . import io

PANEL = 320           #: pixels of a panel's longer side
LABEL_H = 16          #: height of the caption strip


def lowpass(image, sigma_px):
    """Gaussian low-pass of an image (periodic, by FFT) with standard deviation ``sigma_px``."""
    ny, nx = image.shape
    qy, qx = np.fft.fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None, :]
    g = np.exp(-2 * (math.pi * sigma_px) ** 2 * (qx * qx + qy * qy))
    return np.fft.irfft2(np.fft.rfft2(image) * g, s=(ny, nx))


def spectrum_with_zeros(image, pixel_size_A, optics):
    """(log power spectrum (t, t) centred, boolean map of the CTF's zeros on the same grid).

    Tiles of half the image (at most 256 px) so that several periodograms are averaged. Zeros
    are marked out to the frequency where neighbouring rings come closer than 2.5 spectrum
    pixels (ring spacing 1/(2λΔf q) without Cs), beyond which they would fill the panel.
    """
    from .electron import wavelength_A
    from .optics import ctf_2d
    from .spectra import frequency_grid, to_centre, welch_power_spectrum

    t = int(min(256, max(32, min(image.shape) // 2), *image.shape))
    t -= t % 2
    ps = to_centre(welch_power_spectrum(np.asarray(image, np.float64), tile=t))
    ctf = to_centre(ctf_2d((t, t), pixel_size_A, optics, envelope=False, aperture=False, nyquist_cut=False))
    sign = np.signbit(ctf)
    zeros = np.zeros_like(sign)
    zeros[:, :-1] |= sign[:, :-1] != sign[:, 1:]
    zeros[:-1, :] |= sign[:-1, :] != sign[1:, :]
    c = t // 2
    zeros[c - 1:c + 2, c - 1:c + 2] = False   # the DC neighbourhood is not a zero of interest
    df = max(abs(optics.defocus_u_A), abs(optics.defocus_v_A), 1.0)
    q_max = t * pixel_size_A / (5 * wavelength_A(optics.voltage_kV) * df)
    q = to_centre(frequency_grid((t, t), pixel_size_A)[2])
    zeros &= q <= q_max
    return np.log(ps + 1e-12 * max(float(ps.max()), 1e-30)), zeros


def _panel(image, caption, rgb_marks=None):
    from PIL import Image, ImageDraw

    g = io.to_uint8(image)
    rgb = np.repeat(g[..., None], 3, axis=2)
    if rgb_marks is not None:
        rgb[rgb_marks] = (230, 30, 30)
    img = Image.fromarray(rgb)
    s = PANEL / max(img.size)
    img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))),
                     Image.NEAREST if rgb_marks is not None else Image.LANCZOS)
    out = Image.new("RGB", (PANEL, PANEL + LABEL_H), "white")
    out.paste(img, ((PANEL - img.size[0]) // 2, LABEL_H))
    ImageDraw.Draw(out).text((3, 2), caption.encode("ascii", "replace").decode(), fill="black")
    return out


def shown_tilts(angles_deg):
    """Stack indices of the rows: lowest, nearest 0°, highest angle (once each)."""
    a = np.asarray(angles_deg, dtype=float)
    picks = [int(np.argmin(a)), int(np.argmin(np.abs(a))), int(np.argmax(a))]
    return sorted(set(picks), key=lambda k: a[k])


def write_preview(path, result, cfg, scene):
    """Write the preview PNG of a :class:`cutem.pipeline.Result` (module docstring)."""
    from PIL import Image

    from .pipeline import tilt_settings

    px = cfg.detector.pixel_size_A
    diameter = 2 * max((p.atoms.radius() for p in scene.particles), default=0.0)
    sigma_px = max(diameter / 10 / px, 1.0)
    rows = []
    for k in shown_tilts(result.angles_deg):
        angle, optics, _ = tilt_settings(cfg, k)
        noisy = np.asarray(result.images[k], np.float64)
        log_ps, zeros = spectrum_with_zeros(noisy, px, optics)
        zeros[:, : zeros.shape[1] // 2] = False
        tag = f"{angle:+.0f} deg: " if len(result.angles_deg) > 1 else ""
        du = 0.5 * (optics.defocus_u_A + optics.defocus_v_A) / 1e4
        band = lowpass(noisy, sigma_px) - lowpass(noisy, 20 * sigma_px)
        rows.append([_panel(band, f"{tag}noisy, band-pass {sigma_px * px:.0f}-{20 * sigma_px * px:.0f} A"),
                     _panel(result.noise_free[k], f"{tag}noise-free"),
                     _panel(log_ps, f"{tag}power spectrum, CTF zeros ({du:.2f} um)", zeros)])
    h = PANEL + LABEL_H
    sheet = Image.new("RGB", (3 * PANEL + 8, len(rows) * h + 4 * (len(rows) - 1)), "white")
    for r, panels in enumerate(rows):
        for c, p in enumerate(panels):
            sheet.paste(p, (c * (PANEL + 4), r * (h + 4)))
    io.write_png(path, np.asarray(sheet), stretch=False)
    return path


__all__ = ["write_preview", "lowpass", "spectrum_with_zeros", "shown_tilts"]
