"""MTF recovery from simulated blank micrographs (the paper's experiment), and estimators.

The TEM-simulator blank sample (../shared/data/tmv/input_blank.txt): 400×400 pixels of
5 Å, 100 e⁻/nm² = 1 e⁻/Å², DQE 0.4, MTF (a, b, c, α, β) = (0.7, 0.2, 0.1, 10, 40), p = q = 1,
gain 10. The blank ice gives a uniform intensity (taken as 1). Reference images are drawn
with true Poisson counts and Wald DQE noise (``cutem.detector.detect``, estimator "score").

1. cutem: L-BFGS-B on the log radially averaged power-spectrum loss against the expected
   spectrum N̄/DQE·MTF² (``cutem.fitting.fit_mtf_blank``), from truth × U(0.5, 1.5).
2. The paper's setting (Nguyen et al. 2022, DiffTEM code): Adam lr 0.1, 20 iterations,
   focal frequency loss between 20 simulated and 20 reference images, score-function
   gradients (leave-one-out baseline over iterations), same starts.
3. Statistics: the same fit from many more images (error shrinks as 1/sqrt(N): a
   statistical limit, not a bias), and the spread over starts (the optimiser's share).
4. Estimators: variance of pathwise vs score-function gradients of the MTF objective at
   the same parameters, 100 draws each.
5. Is 5 % possible at all? The Cramér–Rao bound (``cutem.fitting.blank_crb``: Whittle
   Fisher information of the 2D periodogram plus the image mean) of (a_n, b_n, c_n, α, β,
   gain) from 20 images of 400², per truth, next to the realised errors of the log-PS fit
   and of the 2D Whittle maximum-likelihood fit (``fit_mtf_blank(objective="whittle")``);
   and a replicate study (40 independent 20-image data sets at the reference truth) that
   compares the spread of both estimators with the bound.

Run: python validation/fit_mtf_recovery.py   (writes validation/results/fit_mtf_recovery.txt)
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np

from report import Report  # validation/report.py (this folder is on sys.path)

from adjoints import Adam, Tape, ops
from cutem.config import load_config
from cutem.detector import detect, mtf_radial, score_surrogate
from cutem.fitting.crb import blank_crb, blank_whittle_fisher
from cutem.fitting.detector_model import normalised_mtf_params
from cutem.fitting.losses import focal_frequency_loss, log_radial_ps_loss
from cutem.fitting.mtf import fit_mtf_blank
from cutem.spectra import RadialBins, power_spectrum

OUT = Path(__file__).parent / "results" / "fit_mtf_recovery.txt"
BLANK = Path(__file__).resolve().parents[2] / "shared" / "data" / "tmv" / "input_blank.txt"
FREE = ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "gain")
NIMG = 20
KEYS = ("a_n", "b_n", "c_n", "mtf_alpha", "mtf_beta", "gain")
N_REPLICATES = 40


def reference_detector():
    cfg = load_config(str(BLANK))
    return cfg.detector


def simulate(det, n, seed):
    ones = np.ones((n, det.ny, det.nx))
    return np.asarray(detect(ones, det, rng=seed, estimator="score").image)


def mtf_rms(det_fit, det_true):
    x = np.linspace(0, 0.5, 201)
    a = mtf_radial(x, det_fit) / det_fit.gain
    b = mtf_radial(x, det_true) / det_true.gain
    return float(np.sqrt(np.mean((a - b) ** 2)))


def signed_errors(p, truth):
    n_f, n_t = normalised_mtf_params(p), normalised_mtf_params(truth)
    out = {k: n_f[k] / n_t[k] - 1 for k in n_f}
    for k in ("mtf_alpha", "mtf_beta", "gain"):
        out[k] = p[k] / truth[k] - 1
    return out


def rel_errors(p, truth):
    return {k: abs(v) for k, v in signed_errors(p, truth).items()}


def crb(det, n=NIMG):
    """Relative Cramér–Rao σ of KEYS for n images of the detector's size."""
    c = blank_crb((det.ny, det.nx), det.pixel_size_A, det, free=FREE, n_images=n)
    return {k: c[k] for k in KEYS}


def paper_setting(det_true, refs, start, seed, iters=20, lr=0.1):
    """Adam lr 0.1, FFL, score-function gradients, 20 simulated vs 20 reference images."""
    t0 = time.perf_counter()
    p = {k: np.asarray(float(start[k])) for k in FREE}
    opt = Adam(lr=lr)
    losses = []
    ones = np.ones(refs.shape)
    for it in range(iters):
        with Tape() as t:
            w = {k: t.watch(v) for k, v in p.items()}
            d = detect(ones, det_true, rng=seed * 1000 + it, estimator="score", params=w)
            loss = focal_frequency_loss(d.image, refs)
            lv = float(loss.value)
            base = np.mean(losses) if losses else lv
            sur = score_surrogate(loss, d.log_prob, base)
        losses.append(lv)
        g = t.gradient(sur, [w[k] for k in FREE])
        p = opt.step(p, dict(zip(FREE, g)))
        for k in ("mtf_a", "mtf_b", "mtf_c"):
            p[k] = np.clip(p[k], 0.0, 1.0)
        for k in ("mtf_alpha", "mtf_beta", "gain"):
            p[k] = np.maximum(p[k], 1e-6)
    return {k: float(v) for k, v in p.items()}, time.perf_counter() - t0


def estimator_table(det, refs, nd=100):
    """Variance of pathwise vs score-function gradients of the log radial PS loss."""
    bins = RadialBins(refs.shape[-2:], 1.0)
    data = bins.average(power_spectrum(refs))
    names = FREE + ("dose_e_per_A2", "dqe")
    ones = np.ones(refs.shape[-2:])

    def one(est, seed, baseline=None):
        with Tape() as t:
            w = {k: t.watch(np.asarray(float(getattr(det, k)))) for k in names}
            d = detect(ones, det, rng=seed, estimator=est, params=w)
            img = d.image - ops.mean(d.image)
            ps = ops.abs2(ops.fft2(img)) * (1.0 / img.value.size)
            loss = log_radial_ps_loss(ps, data, bins)
            obj = loss if est == "pathwise" else score_surrogate(loss, d.log_prob, baseline)
        g = t.gradient(obj, [w[k] for k in names])
        return float(loss.value), np.array([float(x) for x in g])

    pw = np.array([one("pathwise", 10_000 + i)[1] for i in range(nd)])
    # score: losses first (same draws), then leave-one-out baselines
    L = np.array([one("score", 20_000 + i, 0.0)[0] for i in range(nd)])
    sc = np.array([one("score", 20_000 + i, (L.sum() - L[i]) / (nd - 1))[1] for i in range(nd)])
    rows = []
    for j, k in enumerate(names):
        rows.append((k, pw[:, j].mean(), pw[:, j].std(ddof=1), sc[:, j].mean(), sc[:, j].std(ddof=1)))
    return rows


def main():
    out = Report(OUT)

    det0 = reference_detector()
    out("# MTF recovery from simulated blank micrographs (cutem.fitting.fit_mtf_blank)")
    out(f"# command: python validation/fit_mtf_recovery.py")
    out(f"# machine: {platform.processor() or platform.machine()}, 2-core CPU, no GPU; numpy backend")
    out(f"# blank sample {BLANK.name}: {det0.nx}x{det0.ny} px, {det0.pixel_size_A} Å/px, dose {det0.dose_e_per_A2} e/Å², "
        f"DQE {det0.dqe}, MTF a,b,c,α,β = {det0.mtf_a},{det0.mtf_b},{det0.mtf_c},{det0.mtf_alpha},{det0.mtf_beta}, gain {det0.gain}")
    out(f"# {NIMG} reference images per truth (true Poisson + Wald draws), start = truth × U(0.5, 1.5) per parameter")
    out("# errors: relative |fit/truth − 1| of a_n=a/(a+b+c), b_n, c_n, α, β, gain; MTF RMS = RMS of MTF/gain − truth over 0..Nyquist")
    out("")
    rng = np.random.default_rng(2024)
    truths = [det0]
    for _ in range(10):
        truths.append(det0.replace(mtf_a=float(rng.uniform(0.4, 0.9)), mtf_b=float(rng.uniform(0.1, 0.4)),
                                   mtf_c=float(rng.uniform(0.05, 0.2)), mtf_alpha=float(rng.uniform(5, 20)),
                                   mtf_beta=float(rng.uniform(25, 80)), gain=float(rng.uniform(5, 20))))
    out("# σ(b_n), σ(β): the fit's own Gauss–Newton (log-PS) or inverse observed information (Whittle) 1σ;")
    out("# CRB row: the Cramér–Rao σ (relative) of every parameter for this truth, 20 images of 400² (fitting.blank_crb)")
    hdr = (f"{'truth':>5} {'method':<26} {'iters':>5} {'sec':>6} {'a_n':>6} {'b_n':>6} {'c_n':>6} {'α':>6} {'β':>6} "
           f"{'gain':>6} {'MTFrms':>7} | {'σ(b_n)':>6} {'σ(β)':>6}")
    out(hdr)
    out("-" * len(hdr))
    summary = {"cutem": [], "whittle": [], "paper": []}
    crbs, signed = [], {"cutem": [], "whittle": []}
    for i, det in enumerate(truths):
        refs = simulate(det, NIMG, seed=100 + i)
        truth = {k: float(getattr(det, k)) for k in FREE}
        start = {k: truth[k] * rng.uniform(0.5, 1.5) for k in FREE}
        c = crb(det)
        crbs.append(c)
        out(f"{i:>5} {'Cramér–Rao σ (bound)':<26} {'':>5} {'':>6} "
            + " ".join(f"{100 * c[k]:>5.1f}%" for k in KEYS) + f" {'':>7} |")
        for key, label, obj in (("cutem", "cutem L-BFGS-B, log-PS", "log_radial"),
                                ("whittle", "cutem L-BFGS-B, 2D Whittle", "whittle")):
            r = fit_mtf_blank(refs, det, free=FREE, start=start, objective=obj)
            se = signed_errors(r.fit.params, truth)
            e = {k: abs(v) for k, v in se.items()}
            rms = mtf_rms(r.detector, det)
            sig_b = r.errors["b_n"] / normalised_mtf_params(truth)["b_n"]
            sig_beta = r.errors["mtf_beta"] / truth["mtf_beta"]
            summary[key].append((e, rms, r.fit.iterations, r.fit.seconds))
            signed[key].append(se)
            out(f"{i:>5} {label:<26} {r.fit.iterations:>5} {r.fit.seconds:>6.2f} "
                + " ".join(f"{100 * e[k]:>5.1f}%" for k in KEYS)
                + f" {100 * rms:>6.3f}% | {100 * sig_b:>5.1f}% {100 * sig_beta:>5.1f}%")
        pp, sec = paper_setting(det, refs, start, seed=i)
        e2 = rel_errors(pp, truth)
        rms2 = mtf_rms(det.replace(**{k: max(v, 0.0) if k != "gain" else v for k, v in pp.items()}), det) \
            if sum(pp[k] for k in ("mtf_a", "mtf_b", "mtf_c")) > 0 else float("nan")
        summary["paper"].append((e2, rms2, 20, sec))
        out(f"{i:>5} {'paper: Adam .1, FFL, score':<26} {20:>5} {sec:>6.2f} "
            + " ".join(f"{100 * e2[k]:>5.1f}%" for k in ("a_n", "b_n", "c_n", "mtf_alpha", "mtf_beta", "gain"))
            + f" {100 * rms2:>6.3f}% |")
    out("")
    for key, name in (("cutem", "cutem L-BFGS-B"), ("whittle", "cutem Whittle"), ("paper", "paper setting")):
        rows = summary[key]
        med = {k: np.median([r[0][k] for r in rows]) for k in rows[0][0]}
        mx = {k: np.max([r[0][k] for r in rows]) for k in rows[0][0]}
        out(f"{name:<16} median rel. error: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in med.items())
            + f"; max MTF RMS {100 * max(r[1] for r in rows):.3f}%; mean {np.mean([r[3] for r in rows]):.2f} s, "
            f"{np.mean([r[2] for r in rows]):.0f} iterations")
        out(f"{'':<16} max    rel. error: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in mx.items()))
    out("")
    out("# Cramér–Rao bound vs realised error, per truth (20 images of 400²): z = (fit/truth − 1)/σ_CRB.")
    out("# An efficient estimator has z ~ N(0, 1): RMS(z) ≈ 1 and median |z| ≈ 0.67 over the 11 truths.")
    out(f"{'truth':>5} {'CRB b_n':>8} {'CRB β':>7} | {'log-PS b_n':>10} {'β':>7} {'z_b':>6} {'z_β':>6} | "
        f"{'Whittle b_n':>11} {'β':>7} {'z_b':>6} {'z_β':>6}")
    for i, c in enumerate(crbs):
        row = f"{i:>5} {100 * c['b_n']:>7.1f}% {100 * c['mtf_beta']:>6.1f}% |"
        for key, w in (("cutem", 10), ("whittle", 11)):
            se = signed[key][i]
            row += (f" {100 * se['b_n']:>+{w - 1}.1f}% {100 * se['mtf_beta']:>+6.1f}% {se['b_n'] / c['b_n']:>+6.2f} "
                    f"{se['mtf_beta'] / c['mtf_beta']:>+6.2f} |")
        out(row.rstrip(" |"))
    for key, name in (("cutem", "log-PS"), ("whittle", "Whittle")):
        z = np.array([[signed[key][i][k] / crbs[i][k] for k in KEYS] for i in range(len(crbs))])
        out(f"{name:<8} RMS(z): " + ", ".join(f"{k} {v:.2f}" for k, v in zip(KEYS, np.sqrt(np.mean(z ** 2, 0))))
            + "; median |z|: " + ", ".join(f"{k} {v:.2f}" for k, v in zip(KEYS, np.median(np.abs(z), 0))))
    cb = np.array([c["b_n"] for c in crbs])
    cbeta = np.array([c["mtf_beta"] for c in crbs])
    out(f"CRB σ over the 11 truths (20 images): b_n {100 * cb.min():.1f}–{100 * cb.max():.1f}% (median "
        f"{100 * np.median(cb):.1f}%), β {100 * cbeta.min():.1f}–{100 * cbeta.max():.1f}% (median {100 * np.median(cbeta):.1f}%)")
    need = lambda s, tgt: NIMG * (s / tgt) ** 2  # noqa: E731  (σ_CRB ∝ 1/sqrt(n))
    out(f"images for σ_CRB = 5% (b_n, β; median truth): {need(np.median(cb), 0.05):.0f}, {need(np.median(cbeta), 0.05):.0f}; "
        f"for 95% of fits within 5% (σ = 2.5%): {need(np.median(cb), 0.025):.0f}, {need(np.median(cbeta), 0.025):.0f}")

    out("")
    out(f"# Replicate study: {N_REPLICATES} independent 20-image data sets at the reference truth, start truth × U(0.5, 1.5);")
    out("# spread of the fitted values (relative) against the Cramér–Rao σ.")
    det = det0
    truth = {k: float(getattr(det, k)) for k in FREE}
    c0 = crb(det)
    rep = {"log_radial": [], "whittle": []}
    rrng = np.random.default_rng(99)
    t0 = time.perf_counter()
    for j in range(N_REPLICATES):
        im = simulate(det, NIMG, seed=20_000 + j)
        start = {k: truth[k] * rrng.uniform(0.5, 1.5) for k in FREE}
        for obj in rep:
            r = fit_mtf_blank(im, det, free=FREE, start=start, objective=obj)
            rep[obj].append([signed_errors(r.fit.params, truth)[k] for k in KEYS])
    out(f"{'':<22} " + " ".join(f"{k:>9}" for k in ("a_n", "b_n", "c_n", "α", "β", "gain")))
    out(f"{'CRB σ':<22} " + " ".join(f"{100 * c0[k]:>8.2f}%" for k in KEYS))
    for obj, name in (("log_radial", "log-PS"), ("whittle", "Whittle")):
        a = np.array(rep[obj])
        out(f"{name + ' std':<22} " + " ".join(f"{100 * v:>8.2f}%" for v in a.std(0, ddof=1)))
        out(f"{name + ' RMS error':<22} " + " ".join(f"{100 * v:>8.2f}%" for v in np.sqrt((a ** 2).mean(0))))
        out(f"{name + ' median |err|':<22} " + " ".join(f"{100 * v:>8.2f}%" for v in np.median(np.abs(a), 0))
            + "   (efficient Gaussian: 0.674 σ)")
        out(f"{name + ' within 5%':<22} " + " ".join(f"{100 * v:>8.0f}%" for v in (np.abs(a) < 0.05).mean(0)))
    out(f"# ({time.perf_counter() - t0:.0f} s)")
    ratio = {obj: np.array(rep[obj]).std(0, ddof=1) / np.array([c0[k] for k in KEYS]) for obj in rep}
    ib, ibeta = KEYS.index("b_n"), KEYS.index("mtf_beta")
    lo_r = min(ratio["log_radial"][ib], ratio["log_radial"][ibeta])
    hi_r = max(ratio["log_radial"][ib], ratio["log_radial"][ibeta])
    a_l, a_w = np.array(rep["log_radial"]), np.array(rep["whittle"])
    same = np.max(np.abs(a_l - a_w).mean(0) / np.array([c0[k] for k in KEYS]))
    if hi_r >= 1.5:
        verdict = "well above the bound: the estimator leaves information unused"
    elif lo_r >= 0.8:
        verdict = (f"within {100 * (hi_r - 1):.0f}% of the bound, the excess of a maximum-likelihood estimate over "
                   "the asymptotic bound in a strongly curved likelihood (σ ≈ 20–30 %)")
    else:
        verdict = ("below the local bound (at σ ≈ 20–30 % the likelihood is far from Gaussian and the estimates "
                   "are pulled towards the physical bounds, so the local bound is only a guide)")
    out(f"# Finding: spread/CRB for b_n, β = {ratio['log_radial'][ib]:.2f}, {ratio['log_radial'][ibeta]:.2f} (log-PS), "
        f"{ratio['whittle'][ib]:.2f}, {ratio['whittle'][ibeta]:.2f} (Whittle): {verdict}.")
    out(f"# The log-PS and the 2D Whittle (maximum-likelihood) fits differ by at most {same:.2f} σ_CRB on average per "
        "parameter: the ring-averaged objective loses no information")
    out("# (S depends on |q| only), so a better objective cannot help; the error is missing information.")
    names = dict(zip(KEYS, ("a_n", "b_n", "c_n", "α", "β", "gain")))
    ok = [names[k] for k in KEYS if c0[k] <= 0.025]
    one = [names[k] for k in KEYS if 0.025 < c0[k] <= 0.05]
    bad = [names[k] for k in KEYS if c0[k] > 0.05]
    out(f"# Bound at 20 images (reference truth): " + ", ".join(f"{names[k]} {100 * c0[k]:.1f}%" for k in KEYS) + ".")
    out(f"# 95% of fits within 5% needs σ ≤ 2.5%: possible for {', '.join(ok) or 'none'}; σ ≤ 5% (68% within 5%): "
        f"{', '.join(one) or 'none'} in addition; not possible for {', '.join(bad) or 'none'} with any unbiased estimator.")
    out(f"# b_n and β need ≈ {need(c0['b_n'], 0.025):.0f} and {need(c0['mtf_beta'], 0.025):.0f} images of 400² "
        "(≈ " f"{need(np.median(cb), 0.025):.0f}, {need(np.median(cbeta), 0.025):.0f} for the median random truth) for 5% at 95%.")
    fn, fi = blank_whittle_fisher((det.ny, det.nx), det.pixel_size_A, det, FREE, NIMG)
    cv = np.linalg.inv(fi)
    cr = cv / np.sqrt(np.outer(np.diag(cv), np.diag(cv)))
    ev = np.linalg.eigvalsh(cr)
    ib2 = fn.index("mtf_b_over_a")
    out("# Why: the two Lorentzian terms b/(1+βq²) and a/(1+αq²) plus c trade off. Correlations of the bound's")
    out("# covariance (reference truth) of r_b = b/a with " + ", ".join(
        f"{n.replace('mtf_', '').replace('_over_a', '/a')} {cr[ib2, j]:+.3f}" for j, n in enumerate(fn) if j != ib2)
        + f"; condition number of the correlation matrix {ev.max() / ev.min():.3g}.")
    out("")
    out("# Is the remaining error statistical? Reference truth, same start, more images (σ from Gauss–Newton):")
    out(f"{'images':>6} {'a_n':>7} {'b_n':>7} {'c_n':>7} {'α':>7} {'β':>7} {'gain':>7} {'MTFrms':>8} | {'σ(a_n)':>7} {'σ(b_n)':>7} {'σ(β)':>7}"
        f" | {'CRB b_n':>7} {'CRB β':>7}")
    det = det0
    truth = {k: float(getattr(det, k)) for k in FREE}
    start = {k: truth[k] * 1.3 for k in FREE}
    start["mtf_b"] = truth["mtf_b"] * 0.7
    same_opt = []
    for n in (20, 80, 320):
        ps, mean = 0.0, 0.0
        for j in range(0, n, 20):
            im = simulate(det, 20, seed=5000 + j)
            ps = ps + power_spectrum(im) * (20 / n)
            mean += im.mean() * 20 / n
        r = fit_mtf_blank(None, det, free=FREE, start=start, ps=ps, mean=mean, n_images=n)
        # the same data refitted from the truth: same optimum = no optimiser failure / local minimum
        rt = fit_mtf_blank(None, det, free=FREE, start=truth, ps=ps, mean=mean, n_images=n)
        same_opt.append((n, r.fit.loss, rt.fit.loss, abs(normalised_mtf_params(rt.fit.params)["b_n"]
                                                         / normalised_mtf_params(r.fit.params)["b_n"] - 1)))
        e = rel_errors(r.fit.params, truth)
        nt = normalised_mtf_params(truth)
        out(f"{n:>6} " + " ".join(f"{100 * e[k]:>6.1f}%" for k in ("a_n", "b_n", "c_n", "mtf_alpha", "mtf_beta", "gain"))
            + f" {100 * mtf_rms(r.detector, det):>7.3f}% | {100 * r.errors['a_n'] / nt['a_n']:>6.1f}% "
            f"{100 * r.errors['b_n'] / nt['b_n']:>6.1f}% {100 * r.errors['mtf_beta'] / truth['mtf_beta']:>6.1f}%"
            f" | {100 * crb(det, n)['b_n']:>6.1f}% {100 * crb(det, n)['mtf_beta']:>6.1f}%")
    out("# refit of the same data from the truth: " + "; ".join(
        f"{n} images: loss {lf:.4f} (start above) vs {lt:.4f} (truth start), b_n differs by {100 * db:.2f}%"
        for n, lf, lt, db in same_opt))
    out("# (equal losses: the error of a row is that data set's own optimum, not an optimiser failure; at 80 images")
    out("# the bound is σ(b_n) 13.8%, and the b_n–β–α–c trade-off makes the error distribution heavy-tailed)")
    out("")
    out("# Estimators: gradient of the log radial PS loss (one simulated 400x400 image vs the 20-image reference")
    out("# spectrum) at the reference parameters; 100 draws each; score = integer Poisson+Wald draws with the")
    out("# surrogate L + (L − b)·log p, leave-one-out baseline b.")
    refs = simulate(det0, NIMG, seed=777)
    t0 = time.perf_counter()
    rows = estimator_table(det0, refs)
    out(f"{'parameter':<14} {'pathwise mean':>14} {'pathwise std':>13} {'score mean':>12} {'score std':>11} {'var ratio':>10}")
    for k, m1, s1, m2, s2 in rows:
        out(f"{k:<14} {m1:>14.4g} {s1:>13.4g} {m2:>12.4g} {s2:>11.4g} {(s2 / s1) ** 2 if s1 > 0 else float('nan'):>10.3g}")
    out(f"# ({time.perf_counter() - t0:.1f} s). The MTF acts after the noise draw, so for a, b, c, α, β and gain both")
    out("# estimators differentiate the same blur of the drawn counts (the score term is zero: N̄ does not depend on")
    out("# them); they differ only in the draw (Gaussian vs integer counts). For dose and DQE, which act before the")
    out("# draw, the score-function estimator is the noisy one.")
    out.write()


if __name__ == "__main__":
    main()
