"""Simulation-based (stochastic) objectives: simulated micrographs against references.

:class:`SimulationObjective` draws detector noise at every evaluation (or the same draw,
common random numbers) and compares with the references by a loss of
:mod:`cutem.fitting.losses`; :func:`cutem.fitting.mtf.fit_mtf_simulated` fits with it.
"""
from __future__ import annotations

import numpy as np

import adjoints.backend as B
from adjoints import Var, ops, unwrap

from ..detector import PARAM_NAMES, detect, score_surrogate
from ..errors import InputError
from ..spectra import RadialBins, power_spectrum
from .detector_model import expand_ratios
from .losses import focal_frequency_loss, log_radial_ps_loss, pixel_loss, ps2d_loss


class SimulationObjective:
    """A loss between simulated and reference micrographs, for :func:`adjoints.fit.fit`.

    Each evaluation simulates ``n_sim`` images through :func:`cutem.detector.detect` with
    the current parameters and compares them with the references by ``loss``:

    * ``"ffl"`` — :func:`focal_frequency_loss`, image i against reference i (the paper's);
    * ``"pixel"`` — :func:`pixel_loss`, paired images;
    * ``"log_ps"`` — :func:`log_radial_ps_loss` of the simulated batch's mean spectrum
      against the references' ring-averaged spectrum;
    * ``"ps2d"`` — :func:`ps2d_loss` of the mean 2D spectra (log).

    ``estimator``: ``"pathwise"`` (reparametrised counts; the gradient of the loss) or
    ``"score"`` (integer Poisson/Wald draws; the function returns the surrogate
    L + (L − b)·log p whose gradient is the score-function estimate, b the mean loss of
    the earlier evaluations — a running baseline). ``crn=True`` uses the same random
    draw at every evaluation (common random numbers: the objective is then a
    deterministic function, so L-BFGS-B applies); otherwise evaluation k uses seed + k.
    The loss values (not the surrogates) are kept in ``losses``.
    """

    def __init__(self, references, detector, intensity=1.0, loss="log_ps", estimator="pathwise",
                 crn=True, seed=0, n_sim=None):
        if loss not in ("ffl", "pixel", "log_ps", "ps2d"):
            raise InputError(f"loss must be ffl, pixel, log_ps or ps2d, not {loss!r}")
        if estimator not in ("pathwise", "score"):
            raise InputError(f"estimator must be pathwise or score, not {estimator!r}")
        refs = np.asarray(B.to_numpy(references), dtype=np.float64)
        self.refs = refs if refs.ndim == 3 else refs[None]
        self.detector, self.intensity = detector, intensity
        self.loss, self.estimator, self.crn, self.seed = loss, estimator, crn, int(seed)
        self.n_sim = int(n_sim or self.refs.shape[0])
        if loss in ("ffl", "pixel") and self.n_sim != self.refs.shape[0]:
            raise InputError("paired losses (ffl, pixel) need as many simulated as reference images")
        shape = self.refs.shape[-2:]
        self.bins = RadialBins(shape, 1.0)
        self.ref_ps = power_spectrum(self.refs)
        self.ref_profile = self.bins.average(self.ref_ps)
        self.losses = []

    def __call__(self, theta, step):
        theta = expand_ratios(theta)
        params = {k: (v if isinstance(v, Var) else np.asarray(float(v))) for k, v in theta.items()
                  if k in PARAM_NAMES}
        seed = self.seed if self.crn else self.seed + step
        shape = (self.n_sim,) + self.refs.shape[-2:]
        intensity = np.full(shape, float(self.intensity))
        d = detect(intensity, self.detector, rng=seed, estimator=self.estimator, params=params)
        img = d.image
        if self.loss == "ffl":
            L = focal_frequency_loss(img, self.refs)
        elif self.loss == "pixel":
            L = pixel_loss(img, self.refs)
        else:
            n = shape[1] * shape[2]
            centred = img - ops.mean(img, axis=(1, 2), keepdims=True)
            ps = ops.mean(ops.abs2(ops.fft2(centred)), axis=0) * (1.0 / n)
            if self.loss == "log_ps":
                L = log_radial_ps_loss(ps, self.ref_profile, self.bins)
            else:
                mask = np.ones(self.ref_ps.shape)
                mask[0, 0] = 0.0
                floor = np.where(mask > 0, self.ref_ps, 1.0)
                L = ps2d_loss(ps + 1e-30, floor, mask)
        lv = float(B.to_numpy(unwrap(L)))
        if self.estimator == "score":
            base = float(np.mean(self.losses)) if self.losses else lv
            self.losses.append(lv)
            return score_surrogate(L, d.log_prob, base)
        self.losses.append(lv)
        return L
