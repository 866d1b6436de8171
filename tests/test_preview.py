"""The preview PNG: labelled panels per shown tilt, CTF zeros where the CTF vanishes."""
from importlib.resources import files
import numpy as np
from PIL import Image

from cutem import preview as P
from cutem.electron import wavelength_A
from cutem.params import Optics


def test_marked_ctf_zeros_sit_on_the_analytic_rings():
    # Cs 0, no amplitude contrast: sin χ vanishes at q_n = sqrt(n / (λ Δf))
    opt = Optics(voltage_kV=300.0, defocus_u_A=20000.0, defocus_v_A=20000.0, cs_mm=0.0, amplitude_contrast=0.0)
    t, px = 256, 1.0
    _, zeros = P.spectrum_with_zeros(np.random.default_rng(0).normal(size=(2 * t, 2 * t)), px, opt)
    i, j = np.nonzero(zeros)
    q = np.hypot(i - t // 2, j - t // 2) / (t * px)
    rings = np.sqrt(np.arange(1, 40) / (wavelength_A(300.0) * 20000.0))
    dist = np.abs(q[:, None] - rings[None, :]).min(1) * t * px    # in spectrum pixels
    assert len(q) > 100 and dist.max() < 1.0
    assert q.max() <= t * px / (5 * wavelength_A(300.0) * 20000.0) + 1e-9    # dense rings left unmarked


def test_shown_tilts_are_lowest_nearest_zero_and_highest():
    assert P.shown_tilts([0.0, 3.0, -3.0, 6.0, -6.0]) == [4, 0, 3]
    assert P.shown_tilts([10.0]) == [0]


def test_lowpass_keeps_the_mean_and_removes_pixel_noise():
    x = np.random.default_rng(1).normal(5.0, 1.0, (64, 64))
    y = P.lowpass(x, 4.0)
    assert abs(y.mean() - x.mean()) < 1e-12 and y.std() < 0.1 * x.std()


def test_preview_has_three_labelled_panels_per_shown_tilt(tmp_path):
    from click.testing import CliRunner

    from cli import main
    res = CliRunner().invoke(main, ["simulate", str(files("cutem.data") / "pdb" / "1hvr.pdb"), "--out", str(tmp_path), "-q",
                                    "--set", "geometry.tilt_angles_deg=[-30.0, 0.0, 30.0, 45.0]",
                                    "--set", "detector.nx=256", "--set", "detector.ny=256", "--set", "detector.pixel_size_A=2.0"])
    assert res.exit_code == 0, res.output
    img = np.asarray(Image.open(tmp_path / "1hvr.png").convert("RGB"))
    h = P.PANEL + P.LABEL_H
    assert img.shape == (3 * h + 8, 3 * P.PANEL + 8, 3)
    red = (img[..., 0] > 200) & (img[..., 1] < 80)
    spec_left, spec_right = 2 * (P.PANEL + 4), 2 * (P.PANEL + 4) + P.PANEL // 2
    assert red[:, spec_right:].sum() > 50 and red[:, :spec_right - 2].sum() == 0   # zeros on the right half only
    assert img[P.LABEL_H:h, :P.PANEL].std() > 10 and spec_left > 0                  # a filled image panel
