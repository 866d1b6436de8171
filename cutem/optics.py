"""Optics: the objective lens' wave transfer (CTF) and the CTF's sin-form for fitting.

Public API (names are stable; other modules depend on them)
-----------------------------------------------------------
``PARAM_NAMES``
    Order of the differentiable optics inputs (internal units; the illumination angle
    alone is in mrad, so that all inputs are O(1) in their natural scale)::

        ("defocus_u_A", "defocus_v_A", "astigmatism_angle_rad", "cs_A",
         "illumination_angle_mrad", "energy_spread_eV", "cc_A",
         "amplitude_contrast", "phase_shift_rad")

``optics_inputs(optics, xp=np, dtype=np.float64) -> dict``
    0-d arrays of those parameters from a :class:`cutem.params.Optics` (mm/deg
    converted to Å/rad). Pass them (or Vars made from them) to the stages below.

``TransferFunction(shape, pixel_size_A, voltage_kV, aperture_q_max=None, nyquist_cut=True, defocus_offset_A=0.0)``
    Stage. ``forward(wave, *params)`` with ``wave`` complex (..., ny, nx) in real space
    (the exit wave, plane-wave amplitude 1) and the nine 0-d parameters in ``PARAM_NAMES``
    order; returns the image wave in real space. VJPs for the wave and every parameter
    (only those the tape asks for are computed).
    ``TransferFunction.from_optics(optics, shape, pixel_size_A, defocus_offset_A=0.0, nyquist_cut=True)``.

``CTF2D(shape, pixel_size_A, voltage_kV, aperture_q_max=None, nyquist_cut=True, rfft=False, envelope=True)``
    Stage. ``forward(*params)`` returns the real CTF sin-form on the FFT grid (DC at [0, 0];
    ``rfft=True`` gives the half grid); VJPs for every parameter.
    ``CTF2D.from_optics(optics, shape, pixel_size_A, rfft=False)``.

``ctf_2d(shape, pixel_size_A, optics, xp=np, dtype=np.float64, rfft=False, envelope=True, aperture=True)``
    Plain function: the array of :class:`CTF2D` (no tape).

``apply_optics(wave, optics, pixel_size_A, params=None, defocus_offset_A=0.0)``
    Convenience: builds the stage and the inputs (``params`` may override entries of
    ``optics_inputs`` with arrays or Vars) and applies it (records on an active tape).

``aperture_cutoff_per_A(optics)`` -> q_max = D / (2 f λ) in Å⁻¹ or None.

Physics (PHYSICS.md; TEM-simulator, Rullgård et al., J. Microsc. 243:234, 2011)
-------------------------------------------------------------------------------
With q = |q|, θ its azimuth from image x (counter-clockwise),

    Δf(θ) = ½[Δf_u + Δf_v + (Δf_u − Δf_v) cos 2(θ − θ_ast)]     (+ defocus_offset_A)
    χ(q)  = π λ Δf(θ) q² − (π/2) Cs λ³ q⁴
    η     = arcsin(w) + φ         (amplitude-contrast fraction w, phase shift φ)
    E(q)  = exp(c ξ² + d ξ⁴ + e ξ⁶),  ξ = 2πq, k = 2π/λ,
            c = −¼ Δf² α²,  d = (½ Δf Cs α² − ΔE² Cc′²/16)/k²,  e = −¼ Cs² α²/k⁴,
            Cc′ = Cc (1 + 2εE)/(E(1 + εE))  (:func:`cutem.electron.relativistic_energy_factor`)
    A(q)  = [q ≤ D/(2 f λ)] · [q ≤ 1/(2 pixel)]   (objective aperture, Nyquist circle)

Image wave: ψ_img(q) = ψ_exit(q) · exp(+i[χ(q) + η·[q ≠ 0]]) · E(q) · A(q).

*Sign.* PHYSICS.md writes the transfer as exp(−iχ). cutem's waves use t = exp(+iσV), the
FFT kernel e^{−2πi q·x} and the Fresnel propagator exp(−iπλΔz q²) for propagation *along*
the beam (:mod:`cutem.propagation`). With those conventions exp(−iπλΔf q²) is a forward
propagation by Δf, i.e. an *over*focus, which would give bright atoms at positive Δf.
To keep the documented meaning "positive Δf = underfocus" (the weak-phase image is then
1 − 2σ·[V_z ⊛ sin χ], dark protein at underfocus, as in real micrographs) the lens applies
exp(+iχ): the same transfer as Kirkland's exp(−iχ_K) with χ_K = −χ and abTEM's (C10 = −Δf).
``tests/test_optics.py`` checks that defocus Δf equals free propagation by −Δf and that
atoms are dark in underfocus.

*Amplitude contrast and phase shift* enter as the extra phase η of the scattered waves
(q ≠ 0; the unscattered beam is unchanged), so a weak object's intensity transfer is
−[sqrt(1 − w²) sin χ + w cos χ] (the CTFFIND convention). Real absorption belongs in the
potential (:mod:`cutem.propagation`); ``w`` is the usual empirical shortcut.

*Defocus reference.* Δf is measured from the specimen's centre plane (z = 0 of the scene).
The phase object (:class:`cutem.propagation.PhaseObject`) and the multislice with
``reference="centre"`` (the default) return the wave at that plane, so
``defocus_offset_A = 0``. A wave given at the exit surface (``reference="exit"``, a
distance T/2 below the centre for a box of thickness T) needs
``defocus_offset_A = T/2`` (underfocus is a look *up*-beam: from the exit plane the
centre plane lies T/2 further up).

*Envelopes* use the azimuthal Δf(θ) (with the offset) in c and d.

*CTF sin-form* (:class:`CTF2D`, :func:`ctf_2d`) is the weak-object intensity transfer
C(q) = −sin(χ(q) + η) · E(q) · A(q), with η applied at every q, so C(0) = −sin η
(= −w without phase shift), the form power-spectrum fitting uses (CTF² of a power spectrum).

Parameters are 0-d arrays (stage inputs) so that every one of them gets a gradient:
∂H/∂p = H · (i ∂χ̃/∂p + ∂log E/∂p), with ∂Δf/∂u = ½(1 + cos 2(θ−θ_a)),
∂Δf/∂v = ½(1 − cos 2(θ−θ_a)), ∂Δf/∂θ_a = (Δf_u − Δf_v) sin 2(θ−θ_a), ∂χ/∂Δf = πλq²,
∂χ/∂Cs = −½πλ³q⁴, ∂η/∂w = 1/sqrt(1 − w²), ∂η/∂φ = 1, and the envelope's polynomial
derivatives (written out in :func:`_transfer`).
"""
from __future__ import annotations

import functools
import math

import numpy as np

import adjoints.backend as B
from adjoints import Stage, register, unwrap

from .electron import relativistic_energy_factor, wavelength_A, wavenumber_per_A

PARAM_NAMES = ("defocus_u_A", "defocus_v_A", "astigmatism_angle_rad", "cs_A",
               "illumination_angle_mrad", "energy_spread_eV", "cc_A",
               "amplitude_contrast", "phase_shift_rad")
N_PARAMS = len(PARAM_NAMES)


# --------------------------------------------------------------------------- inputs
def optics_inputs(optics, xp=np, dtype=np.float64) -> dict:
    """The differentiable optics parameters of ``optics`` as 0-d arrays, internal units.

    Keys are :data:`PARAM_NAMES` (Å, rad, eV, fraction).
    """
    vals = {
        "defocus_u_A": optics.defocus_u_A,
        "defocus_v_A": optics.defocus_v_A,
        "astigmatism_angle_rad": math.radians(optics.astigmatism_angle_deg),
        "cs_A": optics.cs_mm * 1e7,
        "illumination_angle_mrad": optics.illumination_angle_mrad,
        "energy_spread_eV": optics.energy_spread_eV,
        "cc_A": optics.cc_mm * 1e7,
        "amplitude_contrast": optics.amplitude_contrast,
        "phase_shift_rad": math.radians(optics.phase_shift_deg),
    }
    return {k: xp.asarray(v, dtype=dtype) for k, v in vals.items()}


def aperture_cutoff_per_A(optics):
    """Objective-aperture cut-off q_max = D / (2 f λ) in Å⁻¹, or None without an aperture."""
    if optics.aperture_diameter_um is None:
        return None
    d_A = optics.aperture_diameter_um * 1e4
    f_A = optics.focal_length_mm * 1e7
    return d_A / (2.0 * f_A * wavelength_A(optics.voltage_kV))


def _ordered(params: dict):
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise KeyError(f"optics parameters missing: {missing}")
    return tuple(params[k] for k in PARAM_NAMES)


# ------------------------------------------------------------------------- the core
class _Geometry:
    """Frequency-grid quantities that do not depend on the parameters."""

    def __init__(self, shape, pixel_size_A, xp, dtype, rfft=False):
        qy, qx = B.freq_grid(shape, pixel_size_A, xp, dtype, rfft=rfft)
        q2 = qx * qx + qy * qy
        safe = xp.where(q2 > 0, q2, 1)
        self.q2 = q2
        self.cos2t = xp.where(q2 > 0, (qx * qx - qy * qy) / safe, 1)   # cos 2θ
        self.sin2t = xp.where(q2 > 0, 2 * qx * qy / safe, 0)           # sin 2θ
        self.nonzero = (q2 > 0).astype(dtype)
        self.q_nyq = 0.5 / pixel_size_A


def _transfer(geom, p, lam, k, kappa, offset, derivs=False, eta_everywhere=False, xp=np, values=True):
    """Phase χ̃ = χ + η s, log-envelope, and (optionally) their parameter derivatives.

    ``p`` are the nine parameters (0-d arrays). Returns ``(phase, logE, pair)`` with
    ``pair(i)`` (when ``derivs``) giving ``(∂phase/∂p_i, ∂logE/∂p_i)`` for parameter ``i`` in
    :data:`PARAM_NAMES` order, None where identically zero; each pair is computed when asked,
    so a backward pass builds only the grids of the parameters it needs. ``values=False``
    skips phase and logE (a backward pass that holds H already).
    """
    u, v, ta, cs, al_mrad, de, cc, w, ph = p
    al = al_mrad * 1e-3  # the input is in mrad (keeps it O(1) for optimisers and checks)
    c2a, s2a = xp.cos(2 * ta), xp.sin(2 * ta)
    cos_d = geom.cos2t * c2a + geom.sin2t * s2a          # cos 2(θ − θa)
    df = 0.5 * (u + v) + 0.5 * (u - v) * cos_d + offset
    q2 = geom.q2
    s = 1 if eta_everywhere else geom.nonzero
    xi2 = (4 * math.pi ** 2) * q2
    a2 = al * al
    phase = loge = None
    if values:
        q4 = q2 * q2
        eta = xp.arcsin(w) + ph
        phase = math.pi * lam * df * q2 - 0.5 * math.pi * cs * lam ** 3 * q4 + eta * s
        xi4, xi6 = xi2 * xi2, xi2 * xi2 * xi2
        temporal = (de * de) * (cc * cc) * (kappa * kappa) / 16.0
        loge = (-0.25 * a2 * df * df * xi2 + (0.5 * df * cs * a2 - temporal) * xi4 / k ** 2
                - 0.25 * cs * cs * a2 * xi6 / k ** 4)
    if not derivs:
        return phase, loge, None
    alpha_on = bool(B.to_numpy(al) != 0)

    def pair(i):
        xi4 = xi2 * xi2
        if i < 3:                                                        # u, v, θa
            if i == 2:
                d = (u - v) * (geom.sin2t * c2a - geom.cos2t * s2a)      # (Δf_u − Δf_v) sin 2(θ − θa)
            else:
                d = 0.5 * (1 + cos_d) if i == 0 else 0.5 * (1 - cos_d)
            if not alpha_on:   # the envelope's defocus terms all carry α²: skip a grid of zeros
                return (math.pi * lam) * q2 * d, None
            return (math.pi * lam) * q2 * d, (-0.5 * a2 * df * xi2 + 0.5 * cs * a2 * xi4 / k ** 2) * d
        if i == 3:                                                       # Cs
            return (-0.5 * math.pi * lam ** 3 * q2 * q2,
                    0.5 * df * a2 * xi4 / k ** 2 - 0.5 * cs * a2 * xi4 * xi2 / k ** 4)
        if i == 4:                                                       # α (mrad)
            return None, 2e-3 * al * (-0.25 * df * df * xi2 + 0.5 * df * cs * xi4 / k ** 2
                                      - 0.25 * cs * cs * xi4 * xi2 / k ** 4)
        kk = (kappa * kappa) / 16.0 * xi4 / k ** 2
        if i == 5:                                                       # ΔE
            return None, -2 * de * (cc * cc) * kk
        if i == 6:                                                       # Cc
            return None, -2 * cc * (de * de) * kk
        if i == 7:                                                       # w
            return s / xp.sqrt(1 - w * w), None
        return s * 1.0 + 0 * q2, None                                    # φ

    return phase, loge, pair


def _aperture(shape, pixel_size_A, q_max, nyquist_cut, xp, dtype, rfft):
    # decided in float64 whatever the dtype: grid points can lie exactly on the Nyquist
    # circle, and float32/float64 runs must keep the same frequencies
    qy, qx = B.freq_grid(shape, pixel_size_A, xp, np.float64, rfft=rfft)
    q2 = qx * qx + qy * qy
    keep = xp.ones(q2.shape, dtype=bool)
    if q_max is not None:
        keep &= q2 <= q_max * q_max
    if nyquist_cut:
        q_nyq = 0.5 / pixel_size_A
        keep &= q2 <= q_nyq * q_nyq * (1 + 1e-9)
    return keep.astype(dtype)


@functools.lru_cache(maxsize=4)
def _geometry(shape, pixel_size_A, q_max, nyquist_cut, xp, dtype, rfft):
    """Grid quantities and aperture, cached: a pipeline builds a new stage per image."""
    g = _Geometry(shape, pixel_size_A, xp, dtype, rfft)
    g.aperture = _aperture(shape, pixel_size_A, q_max, nyquist_cut, xp, dtype, rfft)
    return g


class _OpticsBase(Stage):
    def __init__(self, shape, pixel_size_A, voltage_kV, aperture_q_max=None, nyquist_cut=True):
        self.shape = tuple(int(n) for n in shape)
        self.pixel_size_A = float(pixel_size_A)
        self.voltage_kV = float(voltage_kV)
        self.aperture_q_max = None if aperture_q_max is None else float(aperture_q_max)
        self.nyquist_cut = bool(nyquist_cut)
        self.lam = wavelength_A(voltage_kV)
        self.k = wavenumber_per_A(voltage_kV)
        self.kappa = relativistic_energy_factor(voltage_kV)

    def geometry(self, xp, dtype, rfft=False):
        return _geometry(self.shape, self.pixel_size_A, self.aperture_q_max, self.nyquist_cut, xp,
                         np.dtype(dtype).name, rfft)

    @staticmethod
    def _case_params(xp, dtype, rng, astig=True):
        """Plausible parameters, jittered, for the gradient-check cases."""
        j = lambda s: 1 + 0.1 * rng.standard_normal()  # noqa: E731
        vals = [12000.0 * j(0), (9000.0 if astig else 12000.0) * j(0), 0.6 * j(0), 2.7e7 * j(0),
                0.4 * j(0), 4.0 * j(0), 2.7e7 * j(0), 0.1 * j(0), 0.3 * j(0)]
        return tuple(xp.asarray(v, dtype=dtype) for v in vals)


# ----------------------------------------------------------------- the wave transfer
_H_CACHE = B.GridCache(maxsize=2)


@register
class TransferFunction(_OpticsBase):
    """Objective-lens wave transfer: ψ_img = IFFT[FFT(ψ_exit) · e^{iχ̃} · E · A].

    Inputs: ``wave`` complex (..., ny, nx), real-space exit wave at the specimen centre
    plane (or elsewhere with ``defocus_offset_A``); then the nine 0-d parameters in
    :data:`PARAM_NAMES` order. Output: the image wave, same shape. The module docstring
    holds the equations, the sign convention and the derivatives.

    Parameters
    ----------
    shape : (ny, nx) of the wave.
    pixel_size_A : sampling at the specimen, Å.
    voltage_kV : acceleration voltage (sets λ, k and Cc′).
    aperture_q_max : objective-aperture cut-off in Å⁻¹ (None: no aperture).
    nyquist_cut : also cut at the Nyquist circle |q| ≤ 1/(2 pixel).
    defocus_offset_A : added to Δf_u and Δf_v: how far the plane the wave is given at lies
        *below* (down-beam of) the specimen centre plane; 0 for the phase object and the
        centre-referenced multislice, +T/2 for a wave at the exit surface of a box of
        thickness T (module docstring).

    The backward reuses the forward's spectrum and H; of the parameter derivatives it builds
    only those of the parameters in ``ctx.needs`` (one grid at a time), and the wave's
    cotangent only when the wave needs one.
    """

    def __init__(self, shape, pixel_size_A, voltage_kV, aperture_q_max=None, nyquist_cut=True,
                 defocus_offset_A=0.0):
        super().__init__(shape, pixel_size_A, voltage_kV, aperture_q_max, nyquist_cut)
        self.defocus_offset_A = float(defocus_offset_A)

    @classmethod
    def from_optics(cls, optics, shape, pixel_size_A, defocus_offset_A=0.0, nyquist_cut=True):
        return cls(shape, pixel_size_A, optics.voltage_kV, aperture_cutoff_per_A(optics),
                   nyquist_cut, defocus_offset_A)

    def transfer(self, params, xp, dtype):
        """H(q) on the full FFT grid, memoised on the parameter values, so the tilts and
        micrographs that share optics reuse it (:class:`adjoints.backend.GridCache`)."""
        key = (self.shape, self.pixel_size_A, self.voltage_kV, self.aperture_q_max, self.nyquist_cut,
               self.defocus_offset_A, xp.__name__, np.dtype(dtype).name, B.scalars_key(params))
        return _H_CACHE.get(key, lambda: self._transfer_h(params, xp, dtype))

    def _transfer_h(self, params, xp, dtype):
        g = self.geometry(xp, dtype)
        phase, loge, _ = _transfer(g, params, self.lam, self.k, self.kappa, self.defocus_offset_A, False, False, xp)
        amp = xp.exp(loge) * g.aperture
        h = xp.empty(amp.shape, dtype=B.complex_dtype(dtype))  # cos/sin: faster than complex exp
        h.real, h.imag = xp.cos(phase) * amp, xp.sin(phase) * amp
        return h

    def forward(self, ctx, wave, *params):
        if len(params) != N_PARAMS:
            raise TypeError(f"TransferFunction takes the wave and {N_PARAMS} parameters")
        if tuple(wave.shape[-2:]) != self.shape:
            raise ValueError(f"wave shape {wave.shape} does not match the stage's {self.shape}")
        xp = B.array_module(wave)
        rdt = B.real_dtype(wave.dtype)
        h = self.transfer(params, xp, rdt)
        # keep the product H·Ψ̂ (the backward needs only it and H): one multiply less there
        ctx.spec_h, ctx.h, ctx.params = B.fft2(wave) * h, h, params
        return B.ifft2(ctx.spec_h)

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        G = B.fft2(g)
        g_wave = B.ifft2(xp.conj(ctx.h) * G) if ctx.needs[0] else None
        out = [g_wave] + [None] * N_PARAMS
        if not any(ctx.needs[1:]):
            return tuple(out)
        rdt = B.real_dtype(ctx.h.dtype)
        _, _, pair = _transfer(self.geometry(xp, rdt), ctx.params, self.lam, self.k, self.kappa,
                               self.defocus_offset_A, True, False, xp, values=False)
        n = self.shape[0] * self.shape[1]
        kk = xp.conj(G) * ctx.spec_h
        kk *= 1.0 / n
        kk = kk.reshape((-1,) + self.shape)
        kk = kk[0] if kk.shape[0] == 1 else kk.sum(axis=0)   # one wave: a view, not a copy
        re, im = kk.real, kk.imag
        for i in range(N_PARAMS):
            if not ctx.needs[i + 1]:
                continue
            a, b = pair(i)
            tot = 0.0
            if a is not None:
                tot = tot - (im * a).sum()
            if b is not None:
                tot = tot + (re * b).sum()
            out[i + 1] = xp.asarray(tot, dtype=rdt)
        return tuple(out)

    @classmethod
    def cases(cls, xp, dtype, rng):
        cdt = B.complex_dtype(dtype)
        w = (0.3 + rng.standard_normal((12, 10)) + 1j * rng.standard_normal((12, 10))).astype(cdt)
        p = cls._case_params(xp, dtype, rng)
        st1 = cls((12, 10), 2.0, 300.0, aperture_q_max=0.2, defocus_offset_A=150.0)
        w2 = (0.3 + rng.standard_normal((2, 8, 8)) + 1j * rng.standard_normal((2, 8, 8))).astype(cdt)
        st2 = cls((8, 8), 2.0, 200.0, nyquist_cut=False)
        return [(st1, (xp.asarray(w),) + p),
                (st2, (xp.asarray(w2),) + cls._case_params(xp, dtype, rng))]


# --------------------------------------------------------------------- the sin-form
@register
class CTF2D(_OpticsBase):
    """Weak-object CTF sin-form C(q) = −sin(χ(q) + η) · E(q) · A(q) on the FFT grid.

    Inputs: the nine 0-d parameters in :data:`PARAM_NAMES` order. Output: real (ny, nx)
    (DC at [0, 0]) or the half grid (ny, nx//2 + 1) with ``rfft=True``. ``envelope=False``
    drops E. For power-spectrum fitting (fit C² · envelope to a spectrum).
    """

    def __init__(self, shape, pixel_size_A, voltage_kV, aperture_q_max=None, nyquist_cut=True,
                 rfft=False, envelope=True):
        super().__init__(shape, pixel_size_A, voltage_kV, aperture_q_max, nyquist_cut)
        self.rfft = bool(rfft)
        self.envelope = bool(envelope)

    @classmethod
    def from_optics(cls, optics, shape, pixel_size_A, rfft=False, envelope=True, aperture=True,
                    nyquist_cut=True):
        qmax = aperture_cutoff_per_A(optics) if aperture else None
        return cls(shape, pixel_size_A, optics.voltage_kV, qmax, nyquist_cut, rfft, envelope)

    def forward(self, ctx, *params):
        if len(params) != N_PARAMS:
            raise TypeError(f"CTF2D takes {N_PARAMS} parameters")
        xp = B.array_module(*params)
        rdt = np.result_type(*[getattr(p, "dtype", np.float64) for p in params])
        g = self.geometry(xp, rdt, self.rfft)
        phase, loge, _ = _transfer(g, params, self.lam, self.k, self.kappa, 0.0, False, True, xp)
        env = xp.exp(loge) * g.aperture if self.envelope else g.aperture
        ctx.params, ctx.rdt = params, rdt
        ctx.phase, ctx.env = phase, env
        return (-xp.sin(phase) * env).astype(rdt)

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        geom = self.geometry(xp, ctx.rdt, self.rfft)
        _, _, pair = _transfer(geom, ctx.params, self.lam, self.k, self.kappa, 0.0, True, True, xp, values=False)
        a = -xp.cos(ctx.phase) * ctx.env * g
        b = -xp.sin(ctx.phase) * ctx.env * g
        out = []
        for i in range(N_PARAMS):
            if not ctx.needs[i]:
                out.append(None)
                continue
            dp, dl = pair(i)
            tot = 0.0
            if dp is not None:
                tot = tot + (a * dp).sum()
            if dl is not None and self.envelope:
                tot = tot + (b * dl).sum()
            out.append(xp.asarray(tot, dtype=ctx.rdt))
        return tuple(out)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls((10, 12), 3.0, 300.0), cls._case_params(xp, dtype, rng)),
                (cls((8, 8), 1.5, 200.0, aperture_q_max=0.25, rfft=True), cls._case_params(xp, dtype, rng))]


# ------------------------------------------------------------------- conveniences
def ctf_2d(shape, pixel_size_A, optics, xp=np, dtype=np.float64, rfft=False, envelope=True,
           aperture=True, nyquist_cut=True):
    """The CTF sin-form of :class:`CTF2D` for ``optics`` as a plain array (no tape).

    Parameters
    ----------
    shape : (ny, nx) of the image the spectrum belongs to.
    pixel_size_A : its pixel size, Å.
    optics : :class:`cutem.params.Optics`.
    rfft : return the half grid (ny, nx//2 + 1).
    envelope, aperture, nyquist_cut : include E(q), the objective aperture, the Nyquist circle.
    """
    st = CTF2D.from_optics(optics, shape, pixel_size_A, rfft, envelope, aperture, nyquist_cut)
    out, _ = st.apply(*_ordered(optics_inputs(optics, xp, dtype)))
    return out


def apply_optics(wave, optics, pixel_size_A, params=None, defocus_offset_A=0.0, nyquist_cut=True):
    """Image wave of ``wave`` (array or Var) through the lens of ``optics``.

    ``params`` overrides entries of :func:`optics_inputs` (arrays or Vars, e.g. a watched
    defocus to differentiate), keyed by :data:`PARAM_NAMES`.
    """
    w = unwrap(wave)
    xp = B.array_module(w)
    inputs = optics_inputs(optics, xp, B.real_dtype(w.dtype))
    if params:
        unknown = set(params) - set(PARAM_NAMES)
        if unknown:
            raise KeyError(f"unknown optics parameter(s) {sorted(unknown)}; known: {PARAM_NAMES}")
        inputs.update(params)
    st = TransferFunction.from_optics(optics, w.shape[-2:], pixel_size_A, defocus_offset_A, nyquist_cut)
    return st(wave, *_ordered(inputs))


__all__ = ["PARAM_NAMES", "optics_inputs", "aperture_cutoff_per_A", "TransferFunction", "CTF2D",
           "ctf_2d", "apply_optics"]
