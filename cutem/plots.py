"""Plots of fits as PNG files, drawn with Pillow (no matplotlib needed)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .io import atomic_path


def plot_fit_png(path, x, data, model, residual, title="", xlabel="", ylabel="", logy=False,
                 residual_label="residual", size=(720, 560)):
    """A two-panel PNG (data vs fit; residuals) drawn with Pillow (no matplotlib needed):
    :func:`fit_image` written to ``path``."""
    img = fit_image(x, data, model, residual, title, xlabel, ylabel, logy, residual_label, size)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def fit_image(x, data, model, residual, title="", xlabel="", ylabel="", logy=False, residual_label="residual",
              size=(720, 560)):
    """The two-panel plot of :func:`plot_fit_png` as a Pillow RGB image: data are grey dots,
    the fit a red line, residuals a blue line about a zero line."""
    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(data, dtype=np.float64)
    m = np.asarray(model, dtype=np.float64)
    r = np.asarray(residual, dtype=np.float64)
    W, H = size
    # Pillow's built-in bitmap font has ASCII only
    title, xlabel, ylabel, residual_label = (
        str(t).replace("Å", "A").replace("−", "-").replace("°", " deg").replace("±", "+/-")
        .encode("ascii", "replace").decode() for t in (title, xlabel, ylabel, residual_label))
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    left, right = 70, W - 20
    top1, bot1 = 30, int(H * 0.66)
    top2, bot2 = bot1 + 30, H - 40

    def tr(v):
        return np.log10(np.maximum(v, 1e-300)) if logy else v

    yd, ym = tr(d), tr(m)
    ok = np.isfinite(yd) & np.isfinite(ym)
    lo = float(min(yd[ok].min(), ym[ok].min())) if ok.any() else 0.0
    hi = float(max(yd[ok].max(), ym[ok].max())) if ok.any() else 1.0
    if hi <= lo:
        hi = lo + 1
    x0, x1 = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1

    def px(v):
        return left + (v - x0) / (x1 - x0) * (right - left)

    def py(v, a, b, t, bt):
        return bt - (v - a) / (b - a) * (bt - t)

    for (t, b) in ((top1, bot1), (top2, bot2)):
        dr.rectangle([left, t, right, b], outline="black")
    for xi, yi in zip(x[ok], yd[ok]):
        X, Y = px(xi), py(yi, lo, hi, top1, bot1)
        dr.ellipse([X - 1.5, Y - 1.5, X + 1.5, Y + 1.5], fill=(120, 120, 120))
    pts = [(px(xi), py(yi, lo, hi, top1, bot1)) for xi, yi in zip(x[ok], ym[ok])]
    if len(pts) > 1:
        dr.line(pts, fill=(220, 0, 0), width=2)
    rr = r[np.isfinite(r)]
    ra = float(np.max(np.abs(rr))) if rr.size else 1.0
    ra = ra if ra > 0 else 1.0
    dr.line([(left, py(0, -ra, ra, top2, bot2)), (right, py(0, -ra, ra, top2, bot2))], fill=(150, 150, 150))
    pts = [(px(xi), py(ri, -ra, ra, top2, bot2)) for xi, ri in zip(x, r) if np.isfinite(ri)]
    if len(pts) > 1:
        dr.line(pts, fill=(0, 0, 200), width=1)
    dr.text((left, 8), title, fill="black")
    dr.text((left + 4, top1 + 4), f"{ylabel}{' (log10)' if logy else ''}: data (grey), fit (red)", fill="black")
    dr.text((4, top1), f"{hi:.3g}", fill="black")
    dr.text((4, bot1 - 12), f"{lo:.3g}", fill="black")
    dr.text((left + 4, top2 + 4), residual_label, fill="black")
    dr.text((4, top2), f"{ra:+.2g}", fill="black")
    dr.text((4, bot2 - 12), f"{-ra:+.2g}", fill="black")
    dr.text((left, bot2 + 6), f"{x0:.3g}", fill="black")
    dr.text((right - 60, bot2 + 6), f"{x1:.3g}", fill="black")
    dr.text(((left + right) // 2 - 40, bot2 + 20), xlabel, fill="black")
    return img
