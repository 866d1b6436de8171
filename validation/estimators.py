"""Noise-gradient estimators against the exact gradient of an analytically known expected loss.

Run: ``python -m validation.estimators [--draws 100 5000] [--out validation/results/estimators.txt]``

Set-up: a 16×16 intensity I (smooth, 0.8..1.2), the reference MTF (a, b, c, α, β) =
(0.7, 0.2, 0.1, 10, 40), p = q = 1, gain 2, DQE 0.8, readout noise 0.5 counts, dose
20 e⁻/Å², 1 Å pixels; the loss L = mean((image − y)²) against a fixed target y.
For the detector model (Poisson N, Wald X with Var X = N̄/dqe, blur K = IFFT·MTF·FFT with
the gain, readout ε_r σ) the expected loss is known in closed form:

    E[L] = (1/n) [ ‖K N̄ − y‖² + (Σ_q MTF(q)²/n) · Σ_i N̄_i/dqe + n σ² ]

(the blurred noise has Σ_j Var(out_j) = Σ_i Var(X_i) Σ_j K_ji², and Σ_j K_ji² = Σ_q MTF²/n
for a circulant blur). Its gradient by central finite differences is the truth. Each
estimator gives one gradient per noise draw; the table lists, per parameter, the truth, the
mean over the draws with its standard error, the z-score (mean − truth)/se, and the
per-draw variance:

- pathwise: Gaussian reparametrised counts (:class:`cutem.detector.PathwiseNoise`);
  unbiased here because L is quadratic in the counts (only the first two moments matter);
- score, b = 0: integer Poisson/Wald draws, gradient of ``score_surrogate(L, log_prob, 0)``;
- score, baseline: the same with b = the mean loss of the *previous* draws (independent
  of the current draw, so still unbiased).

The intensity row is the directional derivative along a fixed random direction. With 21
comparisons per table an |z| near 3 happens by chance now and then at 100 draws; the
5000-draw table shows whether a bias persists.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import adjoints
from cutem.detector import MTF_PARAM_NAMES, detect, mtf, score_surrogate
from cutem.params import Detector

PARAMS = ("dose_e_per_A2", "mtf_a", "mtf_alpha", "gain", "dqe", "readout_noise")
N = 16


def setup(seed=0):
    """(intensity, detector, target, direction) of the experiment."""
    rng = np.random.default_rng(seed)
    f = np.fft.fft2(rng.standard_normal((N, N)))
    q2 = np.add.outer(np.fft.fftfreq(N) ** 2, np.fft.fftfreq(N) ** 2)
    s = np.fft.ifft2(f * np.exp(-40 * q2)).real
    intensity = 1 + 0.2 * s / np.abs(s).max()
    det = Detector(nx=N, ny=N, pixel_size_A=1.0, dose_e_per_A2=20.0, mtf_a=0.7, mtf_b=0.2, mtf_c=0.1,
                   mtf_alpha=10.0, mtf_beta=40.0, gain=2.0, dqe=0.8, readout_noise=0.5)
    target = 2.0 * 20.0 * (1 + 0.1 * rng.standard_normal((N, N)))
    direction = rng.standard_normal((N, N))
    return intensity, det, target, direction


def expected_loss(intensity, det, target, values=None):
    """Closed-form E[L] (module docstring); ``values`` overrides detector parameters."""
    v = {k: float(getattr(det, k)) for k in ("dose_e_per_A2", "dqe", "readout_noise") + MTF_PARAM_NAMES}
    v.update(values or {})
    nbar = intensity * v["dose_e_per_A2"] * det.pixel_size_A ** 2
    m = mtf(intensity.shape, v)
    n = intensity.size
    mean_img = np.fft.ifft2(np.fft.fft2(nbar) * m).real
    var = (m ** 2).sum() / n * nbar.sum() / v["dqe"] + n * v["readout_noise"] ** 2
    return (((mean_img - target) ** 2).sum() + var) / n


def true_gradient(intensity, det, target, direction):
    """Central finite differences of the expected loss (per parameter and along I's direction)."""
    out = {}
    for k in PARAMS:
        x = float(getattr(det, k))
        h = 1e-5 * max(abs(x), 1.0)
        fp = expected_loss(intensity, det, target, {k: x + h})
        fm = expected_loss(intensity, det, target, {k: x - h})
        out[k] = (fp - fm) / (2 * h)
    h = 1e-5
    out["intensity·d"] = (expected_loss(intensity + h * direction, det, target)
                          - expected_loss(intensity - h * direction, det, target)) / (2 * h)
    return out


def one_estimate(intensity, det, target, direction, estimator, seed, baseline=0.0):
    """One gradient estimate (dict like :func:`true_gradient`) and the realised loss."""
    with adjoints.Tape() as tape:
        watched = {k: tape.watch(np.asarray(float(getattr(det, k)))) for k in PARAMS}
        img = tape.watch(intensity)
        r = detect(img, det, rng=seed, estimator=estimator, params=watched)
        diff = r.image - target
        loss = adjoints.ops.mean(diff * diff)
        obj = loss if estimator == "pathwise" else score_surrogate(loss, r.log_prob, baseline)
        grads = tape.gradient(obj, list(watched.values()) + [img])
    est = {k: float(g) for k, g in zip(PARAMS, grads[:-1])}
    est["intensity·d"] = float((grads[-1] * direction).sum())
    return est, float(loss.value)


def run_estimator(intensity, det, target, direction, estimator, draws, seed0=1000, running_baseline=False):
    """Per-draw estimates as {name: array(draws)}."""
    rows, losses = [], []
    for k in range(draws):
        b = float(np.mean(losses)) if (running_baseline and losses) else 0.0
        est, loss = one_estimate(intensity, det, target, direction, estimator, seed0 + k, b)
        rows.append(est)
        losses.append(loss)
    return {name: np.array([r[name] for r in rows]) for name in rows[0]}


def summarise(samples, truth):
    """{name: (mean, standard error, z, variance)}."""
    out = {}
    for name, x in samples.items():
        m, var = float(x.mean()), float(x.var(ddof=1))
        se = float(np.sqrt(var / x.size))
        out[name] = (m, se, (m - truth[name]) / se if se > 0 else float("inf"), var)
    return out


def table(draws):
    """The comparison table for ``draws`` draws per estimator (list of lines)."""
    intensity, det, target, direction = setup()
    truth = true_gradient(intensity, det, target, direction)
    runs = {
        "pathwise": run_estimator(intensity, det, target, direction, "pathwise", draws),
        "score, b=0": run_estimator(intensity, det, target, direction, "score", draws),
        "score, baseline": run_estimator(intensity, det, target, direction, "score", draws,
                                         running_baseline=True),
    }
    lines = [f"## {draws} draws per estimator; E[L] = {expected_loss(intensity, det, target):.6g}; "
             "mean ± standard error, z = (mean − truth)/se, var = per-draw variance", ""]
    head = f"{'parameter':<14} {'truth (FD of E[L])':>19}"
    for name in runs:
        head += f" | {name + ' mean ± se':>27} {'z':>6} {'var':>10}"
    lines.append(head)
    lines.append("-" * len(head))
    summaries = {name: summarise(s, truth) for name, s in runs.items()}
    for p in truth:
        row = f"{p:<14} {truth[p]:>19.6g}"
        for name in runs:
            m, se, z, var = summaries[name][p]
            row += f" | {m:>15.6g} ± {se:<9.3g} {z:>6.2f} {var:>10.3g}"
        lines.append(row)
    zs = [abs(summaries[name][p][2]) for name in runs for p in truth]
    lines.append(f"largest |z| over the {len(zs)} comparisons: {max(zs):.2f}")
    lines.append("")
    lines.append("variance ratio score(b=0)/pathwise and score(baseline)/pathwise per parameter:")
    for p in truth:
        vp = summaries["pathwise"][p][3]
        lines.append(f"  {p:<14} {summaries['score, b=0'][p][3] / vp:>12.3g} "
                     f"{summaries['score, baseline'][p][3] / vp:>12.3g}")
    lines.append("")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, nargs="+", default=[100, 5000],
                    help="draws per estimator; one table per value (default: 100 5000)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "estimators.txt"))
    args = ap.parse_args(argv)
    t0 = time.time()
    lines = [f"# python -m validation.estimators --draws {' '.join(map(str, args.draws))}",
             f"# machine: {platform.machine()} {os.cpu_count()}-core CPU, no GPU; numpy {np.__version__}; "
             f"python {platform.python_version()}",
             "# 16x16 image, reference MTF, gain 2, DQE 0.8, readout 0.5, dose 20 e/A^2; "
             "L = mean((image - y)^2); truth = central FD of the closed-form E[L]", ""]
    for d in args.draws:
        lines += table(d)
    lines.append(f"wall time {time.time() - t0:.1f} s")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
