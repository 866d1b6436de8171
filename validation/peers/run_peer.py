"""Run a peer simulator (abTEM or cryoJAX) on atoms written by validation/bench.py.

Runs inside the separate environment made by validation/peers/setup.sh (never imported by
cutem). Input: an .npz with ``positions`` (n, 3) Å in cutem's microscope frame (x, y about
the field centre), ``numbers`` (n,) atomic numbers, and the run settings. Output: a JSON line
with the timings (``first_s``: the first call in this process, compilation/plans included;
``warm_s``: the best later call) and an .npz with the projected potential (V·Å, summed over
slices) on the same grid and the noise-free CTF image.

    python run_peer.py abtem|cryojax|cryojax-grad IN.npz OUT.npz [--repeats 2]

The simulated micrograph: plane wave, projected potential (phase object: one slice through
the whole specimen; multislice: ``slice_thickness_A`` slices), lens with defocus (underfocus
positive), Cs, no envelope, |ψ|². abTEM: Peng parametrisation (``parametrization="peng"``),
infinite projection. cryoJAX: its atom potential (Peng 5-Gaussian tables, the package's
default) rendered on the grid, then its phase-object image model (Rytov exit wave, CTF on the
wave, |ψ|²), and for reference its weak-phase contrast model (cryojax_peer.py).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def _load(path):
    z = np.load(path)
    return {k: z[k] for k in z.files}


def abtem_run(d, repeats):
    import abtem
    from ase import Atoms

    abtem.config.set({"device": "cpu"})
    n = int(d["n"])
    px = float(d["px"])
    L = n * px
    pos = d["positions"].astype(np.float64).copy()
    pos[:, 0] += L / 2   # cutem: pixel j at (j − n/2)·px; abTEM: pixel j at j·px
    pos[:, 1] += L / 2
    zmin, zmax = pos[:, 2].min() - 1.0, pos[:, 2].max() + 1.0
    pos[:, 2] -= zmin
    thick = zmax - zmin
    atoms = Atoms(numbers=d["numbers"].astype(int), positions=pos, cell=[L, L, thick], pbc=True)
    multislice = str(d["method"]) == "multislice"
    dz = float(d["slice_thickness_A"]) if multislice else thick
    energy = float(d["voltage_kV"]) * 1e3

    def once():
        pot = abtem.Potential(atoms, gpts=(n, n), sampling=px, parametrization="peng", projection="infinite",
                              slice_thickness=dz)
        wave = abtem.PlaneWave(energy=energy).multislice(pot)
        ctf = abtem.CTF(defocus=float(d["defocus_A"]), Cs=float(d["cs_A"]), energy=energy)
        img = wave.apply_ctf(ctf).intensity().compute()
        return pot, np.asarray(img.array)

    t0 = time.perf_counter()
    pot, img = once()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        warm.append(time.perf_counter() - t0)
    proj = np.asarray(pot.build().project().compute().array)
    return {"first_s": first, "warm_s": min(warm) if warm else None, "version": abtem.__version__}, proj, img


def cryojax_run(d, repeats):
    import cryojax
    import jax

    jax.config.update("jax_enable_x64", False)
    from cryojax_peer import render  # noqa: F401 - see cryojax_peer.py beside this file

    return render(d, repeats, cryojax.__version__)


def main():
    code, inp, out = sys.argv[1:4]
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 2
    d = _load(inp)
    if code == "abtem":
        info, proj, img = abtem_run(d, repeats)
    elif code == "cryojax":
        sys.path.insert(0, __file__.rsplit("/", 1)[0])
        info, proj, img = cryojax_run(d, repeats)
    elif code == "cryojax-grad":   # gradient timings only (validation/bench.py --grad)
        import cryojax

        sys.path.insert(0, __file__.rsplit("/", 1)[0])
        from cryojax_peer import gradients

        info = gradients(d, repeats, cryojax.__version__)
        info["code"] = code
        print(json.dumps(info))
        return
    else:
        raise SystemExit(f"unknown peer {code!r}")
    np.savez(out, potential=np.asarray(proj, np.float32), image=np.asarray(img, np.float32))
    info["code"] = code
    print(json.dumps(info))


if __name__ == "__main__":
    main()
