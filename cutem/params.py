"""Typed, immutable parameter objects. Units are in the field names.

Conventions (PHYSICS.md): lengths in Å, voltage in kV, angles in degrees at this
interface (radians inside stages), dose in e⁻/Å². Defocus is positive for underfocus
and refers to the centre plane of the specimen (z = 0 of the scene).

Every object validates itself on construction (``__post_init__``) and raises
:class:`cutem.errors.InputError` with a one-line message naming the field and its
allowed range, so bad input is refused before any work starts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .errors import InputError


def _check(obj, name, lo=None, hi=None, lo_open=False, allow_none=False):
    v = getattr(obj, name)
    where = f"{type(obj).__name__}.{name}"
    if v is None:
        if allow_none:
            return
        raise InputError(f"{where} is missing")
    try:
        fv = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a number, got {v!r}") from None
    if not math.isfinite(fv):
        raise InputError(f"{where} must be finite, got {v!r}")
    rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    if lo is not None and (fv < lo or (lo_open and fv == lo)):
        raise InputError(f"{where} = {v} is outside the allowed range {'(' if lo_open else ''}{rng}")
    if hi is not None and fv > hi:
        raise InputError(f"{where} = {v} is outside the allowed range {rng}")


class _Params:
    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d, where=None):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown key {unknown[0]!r} in [{where or cls.__name__}] "
                             f"(known: {', '.join(sorted(names))})")
        return cls(**d)

    def replace(self, **kw):
        return replace(self, **kw)


@dataclass(frozen=True)
class Optics(_Params):
    """The microscope's beam and lenses.

    TEM-simulator names in brackets ([electronbeam], [optics] sections).
    """

    voltage_kV: float = 300.0               #: acceleration voltage [acc_voltage]
    defocus_u_A: float = 10000.0            #: defocus along the astigmatism axis, + = underfocus [defocus_nominal]
    defocus_v_A: float = 10000.0            #: defocus perpendicular to it
    astigmatism_angle_deg: float = 0.0      #: angle of the u axis from image x, counter-clockwise
    cs_mm: float = 2.7                      #: spherical aberration [cs]
    cc_mm: float = 2.7                      #: chromatic aberration [cc]
    energy_spread_eV: float = 0.0           #: energy spread ΔE of the beam [energy_spread]
    illumination_angle_mrad: float = 0.0    #: condenser aperture (illumination) angle α [cond_ap_angle]
    aperture_diameter_um: float | None = None  #: objective aperture diameter [aperture]; None = none
    focal_length_mm: float = 3.0            #: objective focal length [focal_length]
    amplitude_contrast: float = 0.0         #: fraction w: CTF = sqrt(1-w²) sin χ + w cos χ style phase shift
    phase_shift_deg: float = 0.0            #: phase-plate shift
    #: energy filter slit width, eV: a number = zero-loss imaging (the exit wave attenuated by
    #: exp(−t/(2λ_in)) over the ice path t, :mod:`cutem.energyfilter`); None = no filter
    energy_filter_slit_eV: float | None = None
    #: inelastic mean free path of the ice, Å; None = 3,950 Å at 300 kV scaled to the voltage
    inelastic_mfp_A: float | None = None

    def __post_init__(self):
        _check(self, "voltage_kV", 1.0, 3000.0)
        _check(self, "defocus_u_A", -2e5, 2e5)
        _check(self, "defocus_v_A", -2e5, 2e5)
        _check(self, "astigmatism_angle_deg", -360, 360)
        _check(self, "cs_mm", 0.0, 20.0)
        _check(self, "cc_mm", 0.0, 20.0)
        _check(self, "energy_spread_eV", 0.0, 10.0)
        _check(self, "illumination_angle_mrad", 0.0, 10.0)
        _check(self, "aperture_diameter_um", 0.0, 1000.0, lo_open=True, allow_none=True)
        _check(self, "focal_length_mm", 0.0, 100.0, lo_open=True)
        _check(self, "amplitude_contrast", 0.0, 1.0)
        _check(self, "phase_shift_deg", -360, 360)
        _check(self, "energy_filter_slit_eV", 0.0, 100.0, lo_open=True, allow_none=True)
        _check(self, "inelastic_mfp_A", 0.0, 1e6, lo_open=True, allow_none=True)


@dataclass(frozen=True)
class Detector(_Params):
    """The camera: sampling, quantum noise, DQE, MTF (TEM-simulator form), gain, readout.

    MTF ranges follow TEM-simulator: a, b, c in [0, 1], p, q in [0, 10].
    """

    nx: int = 400                           #: pixels along x [det_pix_x]
    ny: int = 400                           #: pixels along y [det_pix_y]
    pixel_size_A: float = 5.0               #: pixel size at the specimen [pixel_size / magnification]
    dose_e_per_A2: float = 0.01             #: electrons per Å² per image [dose_per_im, e⁻/nm² / 100]
    quantized: bool = True                  #: Poisson shot noise [use_quantization]
    dqe: float = 1.0                        #: DQE(0) of TEM-simulator's Wald model [dqe]
    dqe_curve: str | None = None            #: frequency-dependent DQE: a CSV (freq/Nyquist, DQE) or None
    mtf_a: float = 0.0                      #: [mtf_a]
    mtf_b: float = 0.0                      #: [mtf_b]
    mtf_c: float = 1.0                      #: [mtf_c]
    mtf_alpha: float = 0.0                  #: [mtf_alpha]
    mtf_beta: float = 0.0                   #: [mtf_beta]
    mtf_p: float = 1.0                      #: [mtf_p]
    mtf_q: float = 1.0                      #: [mtf_q]
    gain: float = 1.0                       #: counts per electron [gain]
    readout_noise: float = 0.0              #: Gaussian readout noise, counts RMS per pixel
    frames: int = 1                         #: movie frames per image (dose split evenly; :mod:`cutem.movie`)
    motion_drift_A_per_frame: float = 0.0   #: global beam-induced drift speed, Å per frame (seeded direction)
    motion_jitter_A_per_frame: float = 0.0  #: random-walk step of the global shift, Å RMS per frame and axis
    motion_local_A_per_frame: float = 0.0   #: smooth local (doming) displacement growth, Å RMS per frame
    #: write movie frames rounded to int16 (counts × gain, after the MTF) instead of float32
    frames_as_counts: bool = False

    def __post_init__(self):
        for n in ("nx", "ny"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 8 or v > 65536:
                raise InputError(f"Detector.{n} = {v!r} must be an integer in [8, 65536]")
        _check(self, "pixel_size_A", 0.0, 1000.0, lo_open=True)
        _check(self, "dose_e_per_A2", 0.0, 1e5)
        _check(self, "dqe", 0.0, 1.0, lo_open=True)
        for n in ("mtf_a", "mtf_b", "mtf_c"):
            _check(self, n, 0.0, 1.0)
        if self.mtf_a + self.mtf_b + self.mtf_c <= 0:
            raise InputError("Detector.mtf_a + mtf_b + mtf_c must be > 0")
        _check(self, "mtf_alpha", 0.0, 1e4)
        _check(self, "mtf_beta", 0.0, 1e4)
        _check(self, "mtf_p", 0.0, 10.0)
        _check(self, "mtf_q", 0.0, 10.0)
        _check(self, "gain", 0.0, 1e6, lo_open=True)
        _check(self, "readout_noise", 0.0, 1e6)
        if not isinstance(self.frames, int) or isinstance(self.frames, bool) or not 1 <= self.frames <= 10000:
            raise InputError(f"Detector.frames = {self.frames!r} must be an integer in [1, 10000]")
        for n in ("motion_drift_A_per_frame", "motion_jitter_A_per_frame", "motion_local_A_per_frame"):
            _check(self, n, 0.0, 1e4)

    @property
    def shape(self):
        return (self.ny, self.nx)


@dataclass(frozen=True)
class Sample(_Params):
    """The ice layer in a hole of a support film (TEM-simulator [sample]).

    Thickness varies with the distance r from the hole's centre from
    ``thickness_center_A`` at r = 0 to ``thickness_edge_A`` at r = diameter/2
    (TEM-simulator: a spherical-cap profile); outside the hole the support film.
    """

    diameter_A: float = 10000.0             #: hole diameter [diameter, nm × 10]
    thickness_center_A: float = 500.0       #: [thickness_center]
    thickness_edge_A: float = 1000.0        #: [thickness_edge]
    offset_x_A: float = 0.0                 #: hole centre relative to the optical axis
    offset_y_A: float = 0.0
    ice: bool = True                        #: include the solvent
    ice_absorption: float = 0.0             #: imaginary/real ratio of the ice potential
    support_film: str | None = None         #: None or "carbon"
    support_thickness_A: float = 0.0
    #: radiation damage by accumulated exposure (Grant & Grigorieff 2015) on the atoms' potential
    damage: bool = False
    #: B-factor growth with exposure, Å² per e⁻/Å² (with ``damage``; 0 = none)
    damage_b_per_exposure_A2: float = 0.0

    def __post_init__(self):
        _check(self, "diameter_A", 0.0, 1e7, lo_open=True)
        _check(self, "thickness_center_A", 0.0, 1e5)
        _check(self, "thickness_edge_A", 0.0, 1e5)
        _check(self, "offset_x_A", -1e7, 1e7)
        _check(self, "offset_y_A", -1e7, 1e7)
        _check(self, "ice_absorption", 0.0, 1.0)
        _check(self, "support_thickness_A", 0.0, 1e5)
        _check(self, "damage_b_per_exposure_A2", 0.0, 100.0)
        if self.support_film not in (None, "carbon"):
            raise InputError(f"Sample.support_film must be none or 'carbon', not {self.support_film!r}")


@dataclass(frozen=True)
class Geometry(_Params):
    """The tilt series: single axis, angles and dose per tilt (TEM-simulator [geometry])."""

    tilt_angles_deg: tuple = (0.0,)          #: one angle per image, in acquisition order
    tilt_axis_deg: float = 0.0               #: in-plane angle of the tilt axis from image x
    dose_weights: tuple | None = None        #: fraction of the total dose per tilt (None = equal)
    defocus_offsets_A: tuple | None = None   #: added to the defocus per tilt

    def __post_init__(self):
        if len(self.tilt_angles_deg) < 1:
            raise InputError("Geometry.tilt_angles_deg must list at least one angle")
        for a in self.tilt_angles_deg:
            if not math.isfinite(float(a)) or abs(float(a)) > 90:
                raise InputError(f"Geometry.tilt_angles_deg has {a}; tilts must lie in [-90, 90]")
        _check(self, "tilt_axis_deg", -360, 360)
        for name in ("dose_weights", "defocus_offsets_A"):
            v = getattr(self, name)
            if v is not None and len(v) != len(self.tilt_angles_deg):
                raise InputError(f"Geometry.{name} has {len(v)} entries for {len(self.tilt_angles_deg)} tilts")

    @classmethod
    def series(cls, start_deg, increment_deg, count, order="sequential", **kw):
        """Angles start + k·increment; ``order="dose-symmetric"`` acquires 0, ±1, ±2, ... first
        (Hagen et al., J. Struct. Biol. 197:191, 2017)."""
        angles = [start_deg + k * increment_deg for k in range(int(count))]
        if order == "dose-symmetric":
            angles = sorted(angles, key=lambda a: (abs(a), a < 0))
        elif order != "sequential":
            raise InputError(f"tilt order must be sequential or dose-symmetric, not {order!r}")
        return cls(tilt_angles_deg=tuple(float(a) for a in angles), **kw)


@dataclass(frozen=True)
class Simulation(_Params):
    """How the wave is computed (not physics of the instrument)."""

    method: str = "projection"              #: "projection" (phase object) or "multislice"
    slice_thickness_A: float = 20.0         #: multislice slice thickness
    oversampling: int = 1                   #: simulate on a grid this many times finer, then bin
    b_factor_A2: float = 0.0                #: global B added to every atom's B
    absorption: float = 0.0                 #: imaginary/real ratio of the atoms' potential
    padding_A: float = 0.0                  #: field padding against wrap-around (cropped after)
    dtype: str = "float32"

    def __post_init__(self):
        if self.method not in ("projection", "multislice"):
            raise InputError(f"Simulation.method must be projection or multislice, not {self.method!r}")
        _check(self, "slice_thickness_A", 0.0, 1e4, lo_open=True)
        if not isinstance(self.oversampling, int) or not 1 <= self.oversampling <= 8:
            raise InputError(f"Simulation.oversampling = {self.oversampling!r} must be an integer in [1, 8]")
        _check(self, "b_factor_A2", 0.0, 1e4)
        _check(self, "absorption", 0.0, 1.0)
        _check(self, "padding_A", 0.0, 1e6)
        if self.dtype not in ("float32", "float64"):
            raise InputError(f"Simulation.dtype must be float32 or float64, not {self.dtype!r}")


__all__ = ["Optics", "Detector", "Sample", "Geometry", "Simulation", "InputError", "field"]
