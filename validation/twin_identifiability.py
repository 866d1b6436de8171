"""Is the twin's DQE falloff κ identified by one spectrum? fit-twin on simulated micrographs
made with a known κ (issue 19's caveat).

    python validation/twin_identifiability.py    # writes validation/results/twin_identifiability.txt

The twin of ``tests/test_twin.py`` (256² at 1.5 Å, 200 kV, 12 250 Å mean defocus, falling MTF,
40 e⁻/Å², 300 Å of amorphous ice), 24 micrographs per κ, fitted as ``fit_twin`` fits them
(maxiter 80, first order: no second-order ice power, no simulated correction): the fitted κ and
B, the mean defocus's error and the fit's own profile scores against the micrographs.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from test_twin import CS, KV, N, PX, Q, TRUE  # noqa: E402

from cutem.fitting.twin import fit_twin, profile_agreement, twin_config  # noqa: E402
from cutem.pipeline import simulate  # noqa: E402
from cutem.spectra import power_spectrum, to_centre  # noqa: E402


def main():
    mean_true = 0.5 * (TRUE["defocus_u_A"] + TRUE["defocus_v_A"])
    lines = ["# fit-twin on simulated micrographs of a known DQE falloff κ (issue 19)",
             "# command: python validation/twin_identifiability.py",
             f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores (load {os.getloadavg()[0]:.1f}), no GPU; "
             "24 micrographs of 256² per row, fit maxiter 80, first order",
             f"{'κ made':>7} {'κ fitted':>9} {'B fitted':>9} {'defocus error %':>16} {'corr':>6} {'rings':>6} {'s':>5}"]
    for k in (0.0, 0.15, 0.6):
        t0 = time.perf_counter()
        cfg = twin_config(N, PX, KV, CS, dict(TRUE, dqe_falloff=k), images=24)
        m = np.asarray(simulate(cfg).images, dtype=np.float64)
        r = fit_twin(m, PX, KV, CS, q_range=Q, maxiter=80, second_order_draws=0)
        corr, rings = profile_agreement(to_centre(power_spectrum(m)), r.model_ps, PX, Q)
        err = 100 * (0.5 * (r.params["defocus_u_A"] + r.params["defocus_v_A"]) / mean_true - 1)
        lines.append(f"{k:>7.2f} {r.params['dqe_falloff']:>9.3f} {r.params['b_factor_A2']:>9.1f} {err:>+16.2f} "
                     f"{corr:>6.3f} {rings:>6.3f} {time.perf_counter() - t0:>5.0f}")
        print(lines[-1], flush=True)
    out = HERE / "results" / "twin_identifiability.txt"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
