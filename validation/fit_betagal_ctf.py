"""`cutem fit-ctf` on the 16 real β-galactosidase power spectra vs the official CTFFIND values.

Data: ../shared/data/real/betagal_power_spectra (EMPIAR-10204 / RELION tutorial, K2, 200 kV,
Cs 1.4 mm, spectrum sampling 1.39955 Å/px, DC at the centre) and micrographs_ctf.star
(CTFFIND4 results shipped with the RELION test data). The fit runs through the CLI's library
function :func:`cutem.fitting.ctf.fit_ctf` with the CLI's defaults (fit range 1/30–1/5 Å⁻¹,
amplitude contrast free, starting at 0.1).

Pass criteria (issue 5): mean defocus within 2 % of CTFFIND; astigmatism angle within 10°
where CTFFIND's astigmatism exceeds 200 Å.

Then the simulated spectrum (last part): with the fitted optics and a detector fitted to the
spectrum's background, the expected power spectrum of an ice-only specimen imaged through
:class:`cutem.optics.CTF2D` and the detector's MTF is compared with the real one: the
correlation of the background-subtracted radial profiles over 1/30–1/5 Å⁻¹.

Run: python validation/fit_betagal_ctf.py  (writes validation/results/fit_betagal_ctf.txt)
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from report import Report  # validation/report.py (this folder is on sys.path)
from spectra_checks import simulated_spectrum_correlation

from cutem.fitting.ctf import fit_ctf
from cutem.io import read_mrc, read_star

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "betagal_power_spectra"
OUT = Path(__file__).parent / "results" / "fit_betagal_ctf.txt"
KV, CS, PX = 200.0, 1.4, 1.39955


def angle_diff(a, b):
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


def main():
    star = read_star(DATA / "micrographs_ctf.star")["micrographs"]
    ref = {Path(n).stem: (float(u), float(v), float(a)) for n, u, v, a in
           zip(star["rlnMicrographName"], star["rlnDefocusU"], star["rlnDefocusV"], star["rlnDefocusAngle"])}
    out = Report(OUT)

    out("# cutem fit-ctf on the real β-galactosidase spectra vs CTFFIND4 (micrographs_ctf.star)")
    out("# command: python validation/fit_betagal_ctf.py")
    out(f"# machine: {platform.machine()}, 2-core CPU, no GPU; 200 kV, Cs 1.4 mm, {PX} Å/px, fit range 1/30-1/5 Å⁻¹")
    out("# ΔU, ΔV in Å; angle of the U axis in degrees; w = fitted amplitude contrast; corr = score of the 2D fit;")
    out("# simcorr = correlation of background-subtracted radial profiles, simulated (fitted optics + detector) vs real")
    hdr = (f"{'micrograph':<16} {'U':>7} {'V':>7} {'ang':>6} {'w':>5} | {'U_ref':>7} {'V_ref':>7} {'ang_ref':>7} | "
           f"{'mean err':>8} {'ang err':>7} {'pass':>4} | {'corr':>5} {'simcorr':>7} {'sec':>5}")
    out(hdr)
    out("-" * len(hdr))
    errs, aerrs, npass, simc = [], [], 0, []
    for f in sorted(DATA.glob("*_PS.mrc")):
        name = f.stem.replace("_PS", "")
        ps, _ = read_mrc(str(f), ndim=2)
        r = fit_ctf(ps, PX, KV, CS, centred=True)
        u0, v0, a0 = ref[name]
        m0 = 0.5 * (u0 + v0)
        e = (r.defocus_mean_A - m0) / m0
        ae = angle_diff(r.astigmatism_angle_deg, a0)
        ok = abs(e) <= 0.02 and (ae <= 10.0 or (u0 - v0) <= 200.0)
        npass += ok
        errs.append(e)
        if u0 - v0 > 200:
            aerrs.append(ae)
        sc = simulated_spectrum_correlation(ps, PX, KV, CS, r, centred=True)
        simc.append(sc)
        out(f"{name[:16]:<16} {r.defocus_u_A:>7.0f} {r.defocus_v_A:>7.0f} {r.astigmatism_angle_deg:>6.1f} "
            f"{r.amplitude_contrast:>5.3f} | {u0:>7.0f} {v0:>7.0f} {a0:>7.1f} | {100 * e:>+7.2f}% {ae:>6.1f}° "
            f"{'yes' if ok else 'NO':>4} | {r.score:>5.3f} {sc:>7.3f} {r.seconds:>5.1f}")
    errs = np.array(errs)
    out("")
    out(f"passed {npass}/{len(errs)}; mean defocus error: mean {100 * errs.mean():+.2f}%, "
        f"max |err| {100 * np.abs(errs).max():.2f}%, RMS {100 * np.sqrt(np.mean(errs ** 2)):.2f}%")
    out(f"astigmatism angle error (astigmatism > 200 Å: {len(aerrs)} micrographs): median {np.median(aerrs):.1f}°, "
        f"max {np.max(aerrs):.1f}°")
    out(f"simulated-vs-real profile correlation: median {np.median(simc):.3f}, min {np.min(simc):.3f}")
    out.write()


if __name__ == "__main__":
    main()
