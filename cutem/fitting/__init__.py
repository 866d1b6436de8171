"""Fitting the simulator to data: objectives on the tape and the models that use them.

The parametrisations, the driver (L-BFGS-B / Adam) and the covariances know no microscopy
and live in the engine (:mod:`adjoints.fit`); everything differentiable goes through the
tape, so the gradients the optimisers see are the exact (hand-derived) ones of the stages.

Modules
-------
* :mod:`~cutem.fitting.losses` — pixel, focal-frequency, log-radial, 2D-spectrum,
  correlation and Whittle objectives;
* :mod:`~cutem.fitting.detector_model` — detector fields as free parameters, the expected
  spectrum of blank micrographs, the errors of detector fits;
* :mod:`~cutem.fitting.mtf` — MTF fits to blank micrographs, measured curves, simulations;
* :mod:`~cutem.fitting.crb` — Whittle Fisher information and Cramér–Rao bounds;
* :mod:`~cutem.fitting.ctf` — defocus, astigmatism and amplitude contrast from spectra;
* :mod:`~cutem.fitting.objectives` — simulation-based (stochastic) objectives;
* :mod:`~cutem.fitting.specimen` — the closed-form spectrum of a known specimen and its fit.

The names below are re-exported so that ``from cutem.fitting import fit_ctf`` keeps working.
"""
from adjoints.fit import FitResult, FreeParam, Parametrisation, fit, gauss_newton_covariance

from .crb import blank_crb, blank_whittle_fisher
from .ctf import CTFFit, fit_ctf
from .detector_model import blank_expected_ps, detector_free_params, normalised_mtf_params
from .losses import correlation_loss, focal_frequency_loss, log_radial_ps_loss
from .mtf import MTFFit, fit_mtf_blank, fit_mtf_curve, fit_mtf_simulated
from .objectives import SimulationObjective
from .specimen import SpecimenModel, fit_mtf_specimen, specimen_config_with

__all__ = ["FitResult", "FreeParam", "Parametrisation", "fit", "gauss_newton_covariance", "blank_crb",
           "blank_whittle_fisher", "CTFFit", "fit_ctf", "blank_expected_ps",
           "detector_free_params", "normalised_mtf_params", "correlation_loss", "focal_frequency_loss",
           "log_radial_ps_loss", "MTFFit", "fit_mtf_blank", "fit_mtf_curve", "fit_mtf_simulated",
           "SimulationObjective", "SpecimenModel", "fit_mtf_specimen", "specimen_config_with"]
