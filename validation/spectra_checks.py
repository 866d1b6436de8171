"""Simulated against real power spectra (validation only): the ice-only expected spectrum
through fitted optics and detector, and its correlation with a measured spectrum.

Used by validation/fit_betagal_ctf.py.
"""
from __future__ import annotations

import math

import numpy as np

import adjoints.backend as B
from adjoints import unwrap
from cutem.electron import wavelength_A
from cutem.fitting.ctf import CTFFit, ctf_inputs
from cutem.fitting.detector_model import blank_expected_ps, detector_theta
from cutem.fitting.mtf import fit_mtf_blank
from cutem.optics import CTF2D, PARAM_NAMES
from cutem.params import Detector
from cutem.spectra import RadialBins, subtract_background, to_corner


def simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf: CTFFit, detector,
                           signal_level, b_factor_A2):
    """Expected power spectrum of an ice-only specimen (FFT layout).

    A weak-phase amorphous-ice layer with a structure spectrum signal_level·exp(−B q²/2)
    (white, Debye–Waller-damped) imaged through the fitted CTF (:class:`cutem.optics.CTF2D`
    with the fitted defocus, astigmatism and amplitude contrast) and the fitted detector
    (:class:`cutem.detector.MTF` and its shot-noise level N̄/DQE):
    S(q) = MTF(q)² [N̄/DQE + signal_level · e^{−B q²/2} · CTF(q)²].
    """
    st = CTF2D(shape, pixel_size_A, voltage_kV, None, nyquist_cut=False, envelope=False)
    inp = ctf_inputs(voltage_kV, cs_mm, defocus_u_A=ctf.defocus_u_A, defocus_v_A=ctf.defocus_v_A,
                      astigmatism_angle_rad=math.radians(ctf.astigmatism_angle_deg),
                      amplitude_contrast=ctf.amplitude_contrast)
    c, _ = st.apply(*[inp[k] for k in PARAM_NAMES])
    theta = detector_theta(detector)
    noise = np.asarray(unwrap(blank_expected_ps(shape, pixel_size_A, theta)))
    m2 = noise / (theta["dose_e_per_A2"] * pixel_size_A ** 2 / theta["dqe"])
    qy, qx = B.freq_grid(shape, pixel_size_A, np, np.float64)
    q2 = qx ** 2 + qy ** 2
    return noise + m2 * signal_level * np.exp(-0.5 * b_factor_A2 * q2) * np.asarray(c) ** 2


def simulated_spectrum_correlation(ps, pixel_size_A, voltage_kV, cs_mm, ctf: CTFFit, centred=True,
                                   q_range=(1 / 30, 1 / 5), return_profiles=False):
    """Correlation of background-subtracted radial profiles: simulated vs real spectrum.

    1. A detector is fitted to the spectrum (:func:`cutem.fitting.mtf.fit_mtf_blank` on the spectrum, free
       MTF a, b, c, α, β and the noise level), giving MTF² and N̄/DQE.
    2. The ice signal level and its B-factor are fitted (B on a grid, level by linear least
       squares) to the part of the radial profile above the detector background.
    3. :func:`simulated_ice_spectrum` with the fitted optics and detector; both radial
       profiles are background-subtracted (:func:`cutem.spectra.subtract_background`,
       window of two Thon-ring periods in q²) and correlated over ``q_range``.
    """
    ps = np.asarray(B.to_numpy(ps), dtype=np.float64)
    ps = to_corner(ps) if centred else ps
    shape = ps.shape
    det0 = Detector(nx=shape[1], ny=shape[0], pixel_size_A=pixel_size_A, dose_e_per_A2=1.0, dqe=1.0,
                    mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, gain=1.0)
    bins = RadialBins(shape, pixel_size_A)
    prof = bins.average(ps)
    # a first noise level from the outer half of the spectrum, so the fit starts nearby
    level = float(np.median(prof[len(prof) // 2:])) / 0.3 ** 2 / pixel_size_A ** 2
    det0 = det0.replace(dose_e_per_A2=min(max(level, 1e-9), 1e5))
    dfit = fit_mtf_blank(None, det0, free=("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "dose_e_per_A2"),
                         ps=ps, mean=None, weighting="uniform").detector
    base = simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf, dfit, 0.0, 0.0)
    sig1 = simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf, dfit, 1.0, 0.0) - base
    pb, s1 = bins.average(base), bins.average(sig1)
    sel = (bins.q >= q_range[0]) & (bins.q <= q_range[1])
    best = None
    for bf in np.arange(0.0, 400.0, 10.0):
        g = s1 * np.exp(-0.5 * bf * bins.q ** 2)
        lv = max(float(np.dot(g[sel], (prof - pb)[sel]) / np.dot(g[sel], g[sel])), 0.0)
        r = (pb + lv * g - prof)[sel]
        if best is None or r @ r < best[0]:
            best = (float(r @ r), lv, bf)
    sim = simulated_ice_spectrum(shape, pixel_size_A, voltage_kV, cs_mm, ctf, dfit, best[1], best[2])
    psim = bins.average(sim)
    lam = wavelength_A(voltage_kV)
    window = 2.0 / (lam * ctf.defocus_mean_A)       # two ring periods in q²
    wide = (bins.q >= 0.5 * q_range[0]) & (bins.q <= min(1.2 * q_range[1], bins.q.max()))
    a = subtract_background(prof[wide], bins.q[wide], window)
    b = subtract_background(psim[wide], bins.q[wide], window)
    inner = (bins.q[wide] >= q_range[0]) & (bins.q[wide] <= q_range[1])
    corr = float(np.corrcoef(a[inner], b[inner])[0, 1])
    if return_profiles:
        return corr, {"q": bins.q[wide][inner], "real": a[inner], "sim": b[inner], "detector": dfit}
    return corr
