"""Peers in the benchmark run: abTEM and cryoJAX on the same atoms and grid as cutem.

:func:`run_peers` is called by validation/bench.py (``--peers``) with its result rows. For the
cases ``tmv30_4096_projection`` (abTEM, cryoJAX) and ``tmv30_4096_multislice`` (abTEM) when
present (else the largest case run), it writes the tilt's atoms to an .npz, runs
validation/peers/run_peer.py with the peers environment's python (a separate process: cutem
never imports the peers), and reports each peer's first-call and warm seconds and the ratio to
cutem's warm time (cutem's with and without its detector stage, which the peers do not model).

Projected potentials (phase-object cases): cutem's (B = 0, since the peers have no B-factors)
against abTEM's (Peng parametrisation) and cryoJAX's (Peng tables; cryoJAX returns
U = 2m₀e/(4πħ²)·V_z, non-relativistic, so it is divided by that constant): relative
difference of the means, and relative L2 of the spectra below half Nyquist and over the full
band. cutem samples the band-limited potential at pixel centres; abTEM and cryoJAX average it
over the pixel, which multiplies the spectrum by sinc(q_x·px)·sinc(q_y·px); both cutem numbers
(point-sampled and with that pixel transfer applied) are reported.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: 2 m₀ e / ħ² / (4π) in Å⁻² V⁻¹ (CODATA 2018): cryoJAX's rescaled potential per volt
M0, E, HBAR = 9.1093837015e-31, 1.602176634e-19, 1.054571817e-34
CRYOJAX_PER_VOLT = 2 * M0 * E / HBAR ** 2 * 1e-20 / (4 * np.pi)


def write_atoms(case, path):
    from cutem import pipeline as P
    from validation.bench import config_of

    cfg = config_of(case)
    scene = P.build_scene(cfg)
    a = scene.atoms(0.0, 0.0)
    np.savez(path, positions=a.positions, numbers=np.asarray(a.species)[a.elements], n=cfg.detector.nx,
             px=cfg.detector.pixel_size_A, method=cfg.simulation.method,
             slice_thickness_A=cfg.simulation.slice_thickness_A, voltage_kV=cfg.optics.voltage_kV,
             defocus_A=cfg.optics.defocus_u_A, cs_A=cfg.optics.cs_mm * 1e7)
    return cfg, a


def run_one(python, code, npz, out, repeats=2, timeout=1800):
    cmd = [python, str(HERE / "run_peer.py"), code, str(npz), str(out), "--repeats", str(repeats)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return {"error": f"{python} not found (run validation/peers/setup.sh)"}
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def spectra_diff(ours, ref, half=True, pixel_average=False):
    F1, F2 = np.fft.fft2(ours.astype(np.float64)), np.fft.fft2(ref.astype(np.float64))
    fy = np.fft.fftfreq(ours.shape[0])[:, None]
    fx = np.fft.fftfreq(ours.shape[1])[None, :]
    if pixel_average:
        F1 = F1 * (np.sinc(fy) * np.sinc(fx))
    m = np.hypot(fy, fx) < 0.25 if half else np.ones(F1.shape, bool)
    m = np.broadcast_to(m, F1.shape)
    return float(np.linalg.norm((F1 - F2)[m]) / np.linalg.norm(F2[m]))


def compare_potentials(atoms, n, px, peer_potential, label):
    from cutem.potential import projected_potential
    from cutem.structure import Atoms

    a0 = Atoms(atoms.positions, atoms.elements, atoms.species, np.zeros(atoms.n), atoms.occupancies)
    v = projected_potential(a0, (n, n), px, dtype=np.float64)[0]
    ref = peer_potential
    return (f"potential vs {label}: mean {100 * (v.mean() / ref.mean() - 1):+.4f}%, "
            f"relative L2 below half Nyquist {100 * spectra_diff(v, ref):.2f}% (pixel-averaged: "
            f"{100 * spectra_diff(v, ref, pixel_average=True):.2f}%), full band {100 * spectra_diff(v, ref, half=False):.2f}% "
            f"(pixel-averaged: {100 * spectra_diff(v, ref, half=False, pixel_average=True):.2f}%)")


def cutem_intensity(atoms, cfg):
    """cutem's noise-free phase-object image |ψ|² of the peers' settings: B = 0, vacuum, no
    amplitude contrast (the peers have none), the case's defocus and Cs, no envelopes."""
    import dataclasses

    from cutem import optics as O
    from cutem.potential import projected_potential
    from cutem.propagation import exit_wave
    from cutem.structure import Atoms

    n, px = cfg.detector.nx, cfg.detector.pixel_size_A
    a0 = Atoms(atoms.positions, atoms.elements, atoms.species, np.zeros(atoms.n), atoms.occupancies)
    v = projected_potential(a0, (n, n), px, dtype=np.float64)
    wave = exit_wave(v, cfg.optics.voltage_kV, px, method="projection")
    opt = dataclasses.replace(cfg.optics, amplitude_contrast=0.0)
    return np.abs(np.asarray(O.apply_optics(wave, opt, px))) ** 2


def compare_images(ours, peer, label):
    """Mean ratio, and the relative L2 of the contrast (image − its mean) spectra below half
    Nyquist (abTEM cuts its wave at 2/3 of Nyquist against aliasing, cutem at Nyquist)."""
    c1, c2 = ours - ours.mean(), peer - peer.mean()
    corr = float((c1 * c2).sum() / np.sqrt((c1 * c1).sum() * (c2 * c2).sum()))
    return (f"noise-free image vs {label}: mean {100 * (ours.mean() / peer.mean() - 1):+.3f}%, contrast "
            f"relative L2 below half Nyquist {100 * spectra_diff(c1, c2):.2f}%, correlation {corr:.4f}")


def run_peers(rows, python, device=None, only=None):
    lines = []
    by_case = {r["case"]: r for r in rows}
    wanted = [c for c in ("tmv30_4096_projection", "tmv30_4096_multislice") if c in by_case]
    if not wanted and rows:
        wanted = [max(rows, key=lambda r: r["atoms"] * r["grid"] ** 2)["case"]]
    for case in wanted:
        row = by_case[case]
        with tempfile.TemporaryDirectory() as d:
            npz = Path(d) / "atoms.npz"
            cfg, atoms = write_atoms(case, npz)
            codes = ["abtem"] + (["cryojax"] if cfg.simulation.method == "projection" else [])
            codes = [c for c in codes if only is None or c in only]
            peer_pots, peer_imgs = {}, {}
            for code in codes:
                out = Path(d) / f"{code}.npz"
                info = run_one(python, code, npz, out)
                if "error" in info:
                    lines.append(f"{case} {code}: NOT RUN: {info['error']}")
                    continue
                ours = row["warm_s"]
                ours_ctf = round(ours - row["detector_s"], 3)
                lines.append(f"{case} {code} {info.get('version', '')}: first call {info['first_s']:.2f} s, warm "
                             f"{info['warm_s']:.2f} s; cutem warm {ours} s (without detector {ours_ctf} s): "
                             f"peer/cutem = {info['warm_s'] / ours:.2f} ({info['warm_s'] / ours_ctf:.2f})"
                             + (f" [{info['model']}]" if info.get("model") else ""))
                if info.get("weak_phase_warm_s"):
                    w = info["weak_phase_warm_s"]
                    lines.append(f"{case} {code} weak-phase contrast model (linear, no exit wave; not cutem's "
                                 f"physics): first call {info['weak_phase_first_s']:.2f} s, warm {w:.2f} s; "
                                 f"peer/cutem without detector = {w / ours_ctf:.2f}")
                z = np.load(out)
                pot = z["potential"]
                if code == "abtem":
                    pot = pot.T  # abTEM arrays are (x, y)
                else:
                    pot = pot / CRYOJAX_PER_VOLT
                peer_pots[code] = pot
                peer_imgs[code] = z["image"].T if code == "abtem" else z["image"]
            if cfg.simulation.method == "projection":
                for code, pot in peer_pots.items():
                    lines.append(f"{case} " + compare_potentials(atoms, cfg.detector.nx, cfg.detector.pixel_size_A,
                                                                  pot, code))
                # cryoJAX's phase object sits at the specimen plane like cutem's; abTEM's one-slice
                # multislice propagates the exit wave through the slice (130-1300 Å here), a defocus
                # shift, so its image is not compared
                if "cryojax" in peer_imgs:
                    lines.append(f"{case} " + compare_images(cutem_intensity(atoms, cfg), peer_imgs["cryojax"],
                                                             "cryojax"))
                if len(peer_pots) == 2:
                    a, c = peer_pots["abtem"], peer_pots["cryojax"]
                    lines.append(f"{case} cryojax vs abtem: mean {100 * (c.mean() / a.mean() - 1):+.4f}%, relative L2 "
                                 f"below half Nyquist {100 * spectra_diff(c, a):.2f}%, full band "
                                 f"{100 * spectra_diff(c, a, half=False):.2f}%")
    return lines
