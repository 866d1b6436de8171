"""The figure of the README's "Realism options" section: one scene with and without each option.

A 60°-tilted field (512² at 2 Å, padded by 256 Å against the wrap-around of the tilted ice)
of five TMV fragments in a hole whose ice thickens from 400 Å at its centre to 1,200 Å at
its rim (diameter 1,600 Å), 1.5 µm underfocus, 40 e⁻/Å². Panels (noise-free unless marked):
the phase object; slabs of 100 Å (height-dependent defocus); the zero-loss energy filter
(the image darkens by exp(−t/(λ_in cos θ)) where the ice is thick; both filter panels share
one grey scale); exposure damage at 80 e⁻/Å² (the fragments' fine detail fades); a still
and the sum of a 10-frame movie with 3 Å/frame drift (noisy: the drift blurs the sum along
its direction); the power spectra of the phase object and of the slabs (the defocus
gradient across the field smears the outer Thon rings; the multislice's ⅔-Nyquist band
limit is the dark corner region).

Run:  python validation/realism_figure.py   (writes docs/realism_options.png)
"""
from __future__ import annotations

import dataclasses
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import adjoints.backend as B
from cutem.config import ParticleSpec, RunConfig
from cutem.imaging import ImageModel, tilt_seed
from cutem.io import atomic_path, to_uint8
from cutem.movie import movie_tilt
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from cutem.pipeline import build_scene

OUT = Path(__file__).resolve().parents[1] / "docs" / "realism_options.png"
TMV = files("cutem.data") / "tmv"


def base_config():
    part = ParticleSpec(name="TMV", structure=str(TMV / "2OM3_model1.pdb"), transforms=str(TMV / "2OM3_transf.txt"),
                        placement="random", count=5)
    return RunConfig(optics=Optics(defocus_u_A=15000, defocus_v_A=15000, amplitude_contrast=0.07),
                     detector=Detector(nx=512, ny=512, pixel_size_A=2.0, dose_e_per_A2=40.0, quantized=True, dqe=0.8,
                                       mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0),
                     sample=Sample(diameter_A=1600, thickness_center_A=400, thickness_edge_A=1200),
                     simulation=Simulation(padding_A=256.0), particles=(part,), seed=3, output="fig",
                     geometry=Geometry(tilt_angles_deg=(60.0,)))


def spectrum(img):
    ps = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
    return np.log(ps + ps.mean() * 1e-3)


def main():
    cfg = base_config()
    scene = build_scene(cfg)
    model = lambda c: ImageModel.from_config(c, scene=scene)  # noqa: E731
    plain = model(cfg).noise_free()
    slabs = model(cfg.replace(simulation=cfg.simulation.replace(method="multislice", slice_thickness_A=100.0))).noise_free()
    filt = model(cfg.replace(optics=cfg.optics.replace(energy_filter_slit_eV=20.0))).noise_free()
    dmg = dataclasses.replace(model(cfg.replace(sample=cfg.sample.replace(damage=True))), exposure_e_per_A2=80.0)
    damaged = dmg.noise_free()
    m = model(cfg)
    still = m.render(rng=B.default_rng(tilt_seed(cfg.seed, 0), np)).image
    mov = cfg.replace(detector=cfg.detector.replace(frames=10, motion_drift_A_per_frame=3.0))
    frames = movie_tilt(model(mov), cfg.seed)[0].sum(0)
    lo, hi = np.percentile(filt, 0.5), np.percentile(plain, 99.5)
    fixed = lambda a: np.clip((np.asarray(a) - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)  # noqa: E731
    panels = [("phase object", to_uint8(plain)), ("slabs 100 A (defocus by height)", to_uint8(slabs)),
              ("no filter (grey scale of the next)", fixed(plain)), ("zero-loss filter", fixed(filt)),
              ("damage at 80 e/A2", to_uint8(damaged)), ("still, noisy", to_uint8(still)),
              ("10-frame sum, 3 A/frame drift", to_uint8(frames)), ("spectrum: phase object", to_uint8(spectrum(plain))),
              ("spectrum: slabs", to_uint8(spectrum(slabs)))]
    s, pad, head = 256, 6, 16
    sheet = Image.new("L", (5 * (s + pad) + pad, 2 * (s + pad + head) + pad), 255)
    draw = ImageDraw.Draw(sheet)
    for i, (title, arr) in enumerate(panels):
        r, c = divmod(i, 5)
        x, y = pad + c * (s + pad), pad + r * (s + pad + head)
        sheet.paste(Image.fromarray(arr).resize((s, s), Image.BILINEAR), (x, y + head))
        draw.text((x, y + 2), title, fill=0)
    OUT.parent.mkdir(exist_ok=True)
    with atomic_path(OUT, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {OUT}; mean filtered/unfiltered {float(filt.mean() / plain.mean()):.3f}")


if __name__ == "__main__":
    main()
