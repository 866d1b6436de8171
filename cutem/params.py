"""Typed, immutable parameter objects, each field declared once with its unit and range.

Conventions (PHYSICS.md): lengths in Å, voltage in kV, angles in degrees at this
interface (radians inside stages), dose in e⁻/Å². Defocus is positive for underfocus
and refers to the centre plane of the specimen (z = 0 of the scene).

Every field is declared by :func:`param`: its default, unit, allowed range, meaning and,
where TEM-simulator has the same quantity, that program's key and unit factor. From this
one declaration come

- the checks: every object checks every field on construction (type, finite, range;
  :func:`check_fields`) and raises :class:`cutem.errors.InputError` with one line naming
  ``Section.key``, the value and the allowed range with its unit, before any work;
- the optimiser boxes of fitting (:func:`bounds`);
- the TEM-simulator reader's key map and unit factors (:mod:`cutem.config`);
- the parameter reference ``docs/parameters.md`` (:func:`parameters_markdown`;
  ``python -m cutem.params`` rewrites it).

Cross-field rules (a + b + c > 0 of the MTF, one value per tilt, placement needs) stay in
each class's ``__post_init__``.
"""
from __future__ import annotations

import math
import numbers
import typing
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from .errors import InputError

#: ``tem_default`` of a TEM-simulator key that the file must give
REQUIRED = "required"
#: the run's seed (RunConfig.seed, TEM-simulator simulation.rand_seed): a TOML integer ≥ 0
SEED_RANGE = (0, 2 ** 63 - 1)


def param(default, unit="", range=None, open=None, doc="", *, choices=None, tem=None, tem_scale=1.0,
          tem_default=None, tem_note="", path=False, width=None):
    """A dataclass field with its declaration in ``metadata``.

    Parameters
    ----------
    default : the default value (immutable).
    unit : the unit of the value (of each item for a list).
    range : (lo, hi) allowed, ``None`` for an unbounded end; for a list, of every item.
    open : ``"lo"``, ``"hi"`` or ``"both"``: those ends are excluded.
    doc : one line of meaning.
    choices : allowed strings of a str field.
    tem : ``"component.key"`` of TEM-simulator 1.3 (reference manual, section 3) read one-to-one
        into this field by :func:`cutem.config.load_temsim`: value = TEM-simulator value × ``tem_scale``;
        a field that may be none is none where TEM-simulator gives 0.
    tem_default : the value (TEM-simulator's unit) when the key is absent, if not cutem's default;
        :data:`REQUIRED` when the file must give it.
    tem_note : for the docs: how a field that is not one-to-one comes from a TEM-simulator file.
    path : a file name, resolved against the folder of the config that names it.
    width : list items are lists of this many numbers (positions, Euler angles).
    """
    meta = dict(unit=unit, range=range, open=open, doc=doc, choices=choices, tem=tem, tem_scale=tem_scale,
                tem_default=tem_default, tem_note=tem_note, path=path, width=width)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------- checks
_HINTS = {}


def field_type(cls, name):
    """(base type, may be None) of a field from its annotation: ``float | None`` → (float, True)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    t = _HINTS[cls][name]
    args = typing.get_args(t)
    if args:
        base = [a for a in args if a is not type(None)]
        return base[0], type(None) in args
    return t, False


def _fmt(x, integer):
    if x is None:
        return "inf"
    return str(int(x)) if integer else repr(float(x))


def range_text(meta, integer=False):
    """``[lo, hi] unit`` with ``(`` / ``)`` for open ends, e.g. ``(0.0, 1000.0] Å``."""
    lo, hi = meta["range"] or (None, None)
    op = meta["open"] or ""
    left = "(" if lo is None or op in ("lo", "both") else "["
    right = ")" if hi is None or op in ("hi", "both") else "]"
    lo_s = "-inf" if lo is None else _fmt(lo, integer)
    return f"{left}{lo_s}, {_fmt(hi, integer)}{right}" + (f" {meta['unit']}" if meta["unit"] else "")


def _inside(v, meta):
    lo, hi = meta["range"] or (None, None)
    op = meta["open"] or ""
    if lo is not None and (v < lo or (v == lo and op in ("lo", "both"))):
        return False
    return hi is None or v < hi or (v == hi and op not in ("hi", "both"))


def in_range(cls, name, v):
    """Whether the number ``v`` lies in the declared range of field ``name`` of ``cls``."""
    return _inside(float(v), cls.__dataclass_fields__[name].metadata)


def allowed(cls, name):
    """The declared range of field ``name`` of ``cls`` as text, e.g. ``[0.0, 100000.0] e⁻/Å²``."""
    return range_text(cls.__dataclass_fields__[name].metadata, field_type(cls, name)[0] is int)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _number(v, key, meta, integer=False):
    """``v`` as a finite float (int) inside the declared range, or a one-line InputError."""
    if integer:
        if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)) or not _inside(v, meta):
            raise InputError(f"{key} = {v!r} must be an integer in {range_text(meta, True)}")
        return int(v)
    if not _is_real(v):
        raise InputError(f"{key} = {v!r} must be a number in {range_text(meta)}")
    fv = float(v)
    if not math.isfinite(fv):
        raise InputError(f"{key} must be finite, got {v!r}")
    if not _inside(fv, meta):
        raise InputError(f"{key} = {v} is outside the allowed range {range_text(meta)}")
    return fv


def _items(v, key, meta):
    """A list of numbers (or of ``width``-long lists of numbers) as a tuple of floats."""
    if isinstance(v, (str, bytes, dict)) or not isinstance(v, (tuple, list)):
        what = f"lists of {meta['width']} numbers" if meta["width"] else "numbers"
        raise InputError(f"{key} = {v!r} must be a list of {what}")
    if not meta["width"]:
        return tuple(_number(x, f"{key}[{i}]", meta) for i, x in enumerate(v))
    out = []
    for i, x in enumerate(v):
        if isinstance(x, (str, bytes)) or not isinstance(x, (tuple, list)) or len(x) != meta["width"]:
            raise InputError(f"{key}[{i}] = {x!r} must be {meta['width']} numbers"
                             + (f" ({meta['unit']})" if meta["unit"] else ""))
        out.append(tuple(_number(y, f"{key}[{i}]", meta) for y in x))
    return tuple(out)


def check_value(cls, name, v, key):
    """``v`` checked (and normalised: int → float, list → tuple) as field ``name`` of ``cls``."""
    meta = cls.__dataclass_fields__[name].metadata
    base, nullable = field_type(cls, name)
    if v is None:
        if nullable:
            return None
        raise InputError(f"{key} is missing")
    if base is bool:
        if not isinstance(v, (bool, np.bool_)):
            raise InputError(f"{key} = {v!r} must be true or false")
        return bool(v)
    if base is int:
        return _number(v, key, meta, integer=True)
    if base is float:
        return _number(v, key, meta)
    if base is tuple:
        return _items(v, key, meta)
    if not isinstance(v, str):
        raise InputError(f"{key} = {v!r} must be a string")
    if meta["choices"] and v not in meta["choices"]:
        raise InputError(f"{key} = {v!r} must be one of: {', '.join(meta['choices'])}"
                         + (" (or none)" if nullable else ""))
    return v


def check_fields(obj, where=None):
    """Check every field of ``obj`` against its declaration, normalising in place; a refusal
    names ``where.field`` (``where``: the class name)."""
    cls = type(obj)
    for f in fields(obj):
        v = check_value(cls, f.name, getattr(obj, f.name), f"{where or cls.__name__}.{f.name}")
        object.__setattr__(obj, f.name, v)


class _Params:
    def __post_init__(self):
        check_fields(self)
        self._check_together()

    def _check_together(self):
        """Rules between fields (each class its own)."""

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


# ------------------------------------------------------------------------ objects
@dataclass(frozen=True)
class Optics(_Params):
    """The microscope's beam and lenses (TEM-simulator [electronbeam], [optics])."""

    voltage_kV: float = param(300.0, "kV", (1.0, 3000.0), doc="acceleration voltage",
                              tem="electronbeam.acc_voltage", tem_default=200.0)
    defocus_u_A: float = param(10000.0, "Å", (-2e5, 2e5),
                               doc="defocus along the astigmatism axis, + = underfocus",
                               tem="optics.defocus_nominal", tem_scale=1e4, tem_default=0.0)
    defocus_v_A: float = param(10000.0, "Å", (-2e5, 2e5), doc="defocus perpendicular to the astigmatism axis",
                               tem="optics.defocus_nominal", tem_scale=1e4, tem_default=0.0)
    astigmatism_angle_deg: float = param(0.0, "deg", (-360.0, 360.0),
                                         doc="angle of the u axis from image x, counter-clockwise")
    cs_mm: float = param(2.7, "mm", (0.0, 20.0), doc="spherical aberration", tem="optics.cs", tem_default=2.0)
    cc_mm: float = param(2.7, "mm", (0.0, 20.0), doc="chromatic aberration", tem="optics.cc", tem_default=2.0)
    energy_spread_eV: float = param(0.0, "eV", (0.0, 10.0), doc="energy spread ΔE of the beam",
                                    tem="electronbeam.energy_spread")
    illumination_angle_mrad: float = param(0.0, "mrad", (0.0, 10.0),
                                           doc="illumination (condenser aperture) semi-angle α",
                                           tem="optics.cond_ap_angle")
    aperture_diameter_um: float | None = param(None, "µm", (0.0, 1000.0), "lo",
                                               doc="objective aperture diameter; none = no aperture",
                                               tem="optics.aperture")
    focal_length_mm: float = param(3.0, "mm", (0.0, 100.0), "lo", doc="objective focal length",
                                   tem="optics.focal_length")
    amplitude_contrast: float = param(0.0, "", (0.0, 1.0),
                                      doc="fraction w: CTF = sqrt(1 − w²) sin χ + w cos χ")
    phase_shift_deg: float = param(0.0, "deg", (-360.0, 360.0), doc="phase-plate phase shift")
    energy_filter_slit_eV: float | None = param(None, "eV", (0.0, 100.0), "lo",
                                                doc="energy filter slit width: a number = zero-loss imaging (the exit "
                                                "wave attenuated by exp(−t/(2λ_in)) over the ice path t, "
                                                "cutem.energyfilter); none = no filter")
    inelastic_mfp_A: float | None = param(None, "Å", (0.0, 1e6), "lo",
                                          doc="inelastic mean free path of the ice; none = 3,950 Å at 300 kV "
                                          "scaled to the voltage")


@dataclass(frozen=True)
class Detector(_Params):
    """The camera: sampling, quantum noise, DQE, MTF (TEM-simulator form), gain, readout.

    MTF ranges follow TEM-simulator: a, b, c in [0, 1], p, q in [0, 10].
    """

    nx: int = param(400, "px", (8, 65536), doc="pixels along x", tem="detector.det_pix_x")
    ny: int = param(400, "px", (8, 65536), doc="pixels along y", tem="detector.det_pix_y")
    pixel_size_A: float = param(5.0, "Å", (0.0, 1000.0), "lo", doc="pixel size at the specimen",
                                tem_note="detector.pixel_size / optics.magnification (µm → Å)")
    dose_e_per_A2: float = param(0.01, "e⁻/Å²", (0.0, 1e5), doc="electrons per Å² per image",
                                 tem_note="electronbeam.dose_per_im / 100 (or total_dose / ntilts / 100)")
    quantized: bool = param(True, doc="Poisson shot noise", tem="detector.use_quantization")
    dqe: float = param(1.0, "", (1e-3, 1.0), doc="DQE(0) of TEM-simulator's Wald model", tem="detector.dqe")
    dqe_curve: str | None = param(None, doc="frequency-dependent DQE: a CSV (freq/Nyquist, DQE), FILE:COLUMN",
                                  path=True)
    dqe_falloff: float = param(0.0, "", (0.0, 100.0),
                               doc="DQE(q) = DQE(0)/(1 + κ x²), x = |q|/Nyquist: the shot noise's power "
                               "rising towards Nyquist beside the signal's (a counting camera's; fit-twin fits κ)")
    mtf_a: float = param(0.0, "", (0.0, 1.0), doc="MTF weight of the α term", tem="detector.mtf_a")
    mtf_b: float = param(0.0, "", (0.0, 1.0), doc="MTF weight of the β term", tem="detector.mtf_b")
    mtf_c: float = param(1.0, "", (0.0, 1.0), doc="MTF constant weight", tem="detector.mtf_c")
    mtf_alpha: float = param(0.0, "", (0.0, 1e4), doc="MTF α: y₁ = 1 + α x², x in cycles/px",
                             tem="detector.mtf_alpha")
    mtf_beta: float = param(0.0, "", (0.0, 1e4), doc="MTF β: y₂ = 1 + β x²", tem="detector.mtf_beta")
    mtf_p: float = param(1.0, "", (0.0, 10.0), doc="MTF exponent of the α term", tem="detector.mtf_p")
    mtf_q: float = param(1.0, "", (0.0, 10.0), doc="MTF exponent of the β term", tem="detector.mtf_q")
    gain: float = param(1.0, "counts/e⁻", (0.0, 1e6), "lo", doc="counts per electron", tem="detector.gain")
    readout_noise: float = param(0.0, "counts", (0.0, 1e6), doc="Gaussian readout noise, RMS per pixel")
    frames: int = param(1, "", (1, 10000), doc="movie frames per image (dose split evenly; cutem.movie)")
    motion_drift_A_per_frame: float = param(0.0, "Å", (0.0, 1e4),
                                            doc="global beam-induced drift speed per frame (seeded direction)")
    motion_jitter_A_per_frame: float = param(0.0, "Å", (0.0, 1e4),
                                             doc="random-walk step of the global shift, RMS per frame and axis")
    motion_local_A_per_frame: float = param(0.0, "Å", (0.0, 1e4),
                                            doc="smooth local (doming) displacement growth, RMS per frame")
    frames_as_counts: bool = param(False, doc="write movie frames rounded to int16 (counts × gain, after the MTF) "
                                   "instead of float32")

    def _check_together(self):
        if self.mtf_a + self.mtf_b + self.mtf_c <= 0:
            raise InputError("Detector.mtf_a + mtf_b + mtf_c must be > 0")

    @property
    def shape(self):
        return (self.ny, self.nx)


@dataclass(frozen=True)
class Sample(_Params):
    """The ice layer in a hole of a support film (TEM-simulator [sample]).

    Thickness varies with the distance r from the hole's centre from
    ``thickness_center_A`` at r = 0 to ``thickness_edge_A`` at r = diameter/2
    (TEM-simulator: a spherical-cap profile); outside the hole the support film.
    ``contaminants``: balls of ice on the layer (the crystalline or vitreous ice that
    condenses on a grid), each adding its chord 2·sqrt(r² − d²) (d: the beam's distance from the
    ball's centre) to the ice's path length (cutem.potential.IcePotentialStage).
    """

    diameter_A: float = param(10000.0, "Å", (0.0, 1e7), "lo", doc="hole diameter",
                              tem="sample.diameter", tem_scale=10.0, tem_default=REQUIRED)
    thickness_center_A: float = param(500.0, "Å", (0.0, 1e5), doc="ice thickness at the hole's centre",
                                      tem="sample.thickness_center", tem_scale=10.0, tem_default=REQUIRED)
    thickness_edge_A: float = param(1000.0, "Å", (0.0, 1e5), doc="ice thickness at the hole's edge",
                                    tem="sample.thickness_edge", tem_scale=10.0, tem_default=REQUIRED)
    offset_x_A: float = param(0.0, "Å", (-1e7, 1e7), doc="hole centre x relative to the optical axis",
                              tem="sample.offset_x", tem_scale=10.0)
    offset_y_A: float = param(0.0, "Å", (-1e7, 1e7), doc="hole centre y relative to the optical axis",
                              tem="sample.offset_y", tem_scale=10.0)
    ice: bool = param(True, doc="include the solvent", tem_note="false without a sample component")
    ice_absorption: float = param(0.0, "", (0.0, 1.0), doc="imaginary/real ratio of the ice potential")
    support_film: str | None = param(None, doc="support film outside the hole", choices=("carbon",))
    support_thickness_A: float = param(0.0, "Å", (0.0, 1e5), doc="support film thickness")
    damage: bool = param(False, doc="radiation damage by accumulated exposure (Grant & Grigorieff 2015) on the "
                         "atoms' potential")
    damage_b_per_exposure_A2: float = param(0.0, "Å² per e⁻/Å²", (0.0, 100.0),
                                            doc="B-factor growth with exposure (with damage; 0 = none)")
    ice_model: str = param("continuum", doc="the ice's structure: continuum (its mean potential only: no "
                           "scattering at q > 0) or amorphous (plus the density fluctuations of vitreous water, "
                           "drawn per tilt: cutem.ice)", choices=("continuum", "amorphous"))
    particle_continuum_power: float = param(0.0, "V²·Å⁴", (0.0, 1e12),
                                            doc="the particles of a real field as a random potential (a twin's "
                                            "spectrum, cutem.ice.particle_continuum_spectrum: Porod's q⁻⁴ above "
                                            "1/(2π·50 Å)), its power at q = 1/20 Å⁻¹; 0: none",
                                            tem_note="none in TEM-simulator")
    contaminants: tuple = param((), "Å", doc="ice contaminants: balls (x, y, z, radius) in the sample frame (z = 0 "
                                "the layer's mid-plane: a ball resting on the top of a layer t thick has z = t/2 + "
                                "radius), with the ice's potential and absorption along their chords "
                                "(cutem.specimen.random_contaminants draws them)", width=4,
                                tem_note="none in TEM-simulator")

    def _check_together(self):
        for i, (_, _, _, r) in enumerate(self.contaminants):
            if not r > 0:
                raise InputError(f"Sample.contaminants[{i}] has radius {r} Å; it must be > 0")


@dataclass(frozen=True)
class Geometry(_Params):
    """The tilt series: single axis, angles and dose per tilt (TEM-simulator [geometry])."""

    tilt_angles_deg: tuple = param((0.0,), "deg", (-90.0, 90.0), doc="one angle per image, in acquisition order",
                                   tem_note="geometry.theta_start + k · theta_incr, k < ntilts")
    tilt_axis_deg: float = param(0.0, "deg", (-360.0, 360.0), doc="in-plane angle of the tilt axis from image x",
                                 tem="geometry.tilt_axis")
    dose_weights: tuple | None = param(None, "", (0.0, None),
                                       doc="fraction of the total dose per tilt (none = equal)")
    defocus_offsets_A: tuple | None = param(None, "Å", doc="added to the defocus per tilt")

    def _check_together(self):
        if len(self.tilt_angles_deg) < 1:
            raise InputError("Geometry.tilt_angles_deg must list at least one angle")
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

    method: str = param("projection", doc="projection (phase object) or multislice",
                        choices=("projection", "multislice"))
    slice_thickness_A: float = param(20.0, "Å", (0.0, 1e4), "lo", doc="multislice slice thickness")
    oversampling: int = param(1, "", (1, 8), doc="simulate on a grid this many times finer, then bin")
    b_factor_A2: float = param(0.0, "Å²", (0.0, 1e4), doc="global B added to every atom's B; it damps amorphous "
                                 "ice and the particles' continuum as e^{-Bq²/4} in amplitude too")
    absorption: float = param(0.0, "", (0.0, 1.0), doc="imaginary/real ratio of the atoms' potential")
    padding_A: float = param(0.0, "Å", (0.0, 1e6), doc="field padding against wrap-around (cropped after)")
    dtype: str = param("float32", doc="floating-point precision", choices=("float32", "float64"))
    absorption_model: str = param("ratio", doc="the atoms' imaginary potential: ratio (absorption × the real "
                                  "potential) or cross_section (TEM-simulator: elastic + inelastic cross sections "
                                  "per atom, cutem.absorption)", choices=("ratio", "cross_section"),
                                  tem_note="particle.use_imag_pot (yes → cross_section)")
    inelastic_background: bool = param(False, doc="return the scattered electrons as a blurred background through "
                                       "the aperture: the atoms' absorbed intensity and the ice's scattering "
                                       "(TEM-simulator; cutem.inelastic)")
    b_factor_floor_A2: float = param(0.0, "Å²", (0.0, 1e4), doc="each atom's B raised to at least this "
                                     "(TEM-simulator's map blur, 200 × voxel² there)",
                                     tem_note="particle.voxel_size (200 × voxel²)")
    solvent_model: str = param("displaced", doc="how the ice a particle displaces is removed: displaced (each "
                               "atom subtracts a dummy atom of 1.212 Å³/Da of ice, cutem.potential) or clamp "
                               "(TEM-simulator: the particle's map on voxels of solvent_map_voxel_A raised to the "
                               "ice's potential where below it, cutem.solvent_map; not differentiable w.r.t. atom "
                               "positions)",
                               choices=("displaced", "clamp"), tem_note="TEM-simulator input files: clamp")
    solvent_map_voxel_A: float = param(1.0, "Å", (0.05, 100.0), "lo", doc="voxel of the particle map "
                                       "(solvent_model clamp)", tem_note="particle.voxel_size")
    grid_origin: str = param("fft", doc="where the scene's x = y = 0 falls on the image: fft (simulation pixel "
                             "(ny/2, nx/2): pixel j at x = (j − nx/2)·px) or middle (the field's middle: simulation "
                             "and detector pixel j at x = (j − (nx−1)/2)·px, TEM-simulator's detector; the scene "
                             "moves by −½ simulation pixel in x and y before it is projected, cutem.grid)",
                             choices=("fft", "middle"), tem_note="TEM-simulator input files: middle")


@dataclass(frozen=True)
class ParticleSpec(_Params):
    """One kind of particle and where its copies go.

    ``placement``: ``"file"`` (TEM-simulator coordinate file, ``coords_file``),
    ``"list"`` (``positions_A`` and ``orientations_deg`` as Euler angles in the
    TEM-simulator convention), or ``"random"`` (``count`` copies, non-overlapping,
    inside the ice, from the run's seed).
    """

    name: str = param("particle", doc="name in messages and outputs", tem_note="the particle component's name")
    structure: str = param("", doc="PDB or mmCIF file", tem="particle.pdb_file_in", tem_default=REQUIRED,
                           path=True)
    transforms: str | None = param(None, doc="TEM-simulator transform file", tem="particle.pdb_transf_file_in",
                                   path=True)
    assembly: bool = param(False, doc="expand PDB BIOMT / mmCIF assembly 1")
    hydrogens: bool = param(False, doc="keep hydrogens from the file")
    implicit_hydrogens: bool = param(False, doc="add riding hydrogens", tem="particle.add_hydrogen",
                                     tem_default=True)
    infer_elements: bool = param(False, doc="infer missing elements from atom names")
    defocus_correction: bool = param(False, doc="correct for the defocus varying through each copy (TEM-simulator's "
                                     "first-order Fresnel term i z ∇²V/(2k) of each voxel's depth; Simulation."
                                     "solvent_model clamp only, cutem.solvent_map)", tem="particle.use_defocus_corr")
    placement: str = param("file", doc="where the copies go", choices=("file", "list", "random"),
                           tem_note="particleset.particle_coords (file → file, else random)")
    coords_file: str | None = param(None, doc="TEM-simulator coordinate file (placement file)",
                                    tem="particleset.coord_file_in", path=True)
    positions_A: tuple = param((), "Å", doc="centres (x, y, z) (placement list)", width=3)
    orientations_deg: tuple = param((), "deg", doc="Euler angles per position (placement list)", width=3)
    count: int = param(0, "", (0, 10 ** 6), doc="copies (placement random)",
                       tem_note="particleset.num_particles")
    concentration_per_um3: float | None = param(None, "1/µm³", (0.0, 1e9), "both",
                                                doc="copies per µm³ of ice instead of count (placement random)",
                                                tem="particleset.particle_conc")
    where: str = param("volume", doc="random placement: in the ice or touching a surface",
                       choices=("volume", "top", "bottom"), tem="particleset.where")

    def __post_init__(self):
        check_fields(self, self._where(check_value(ParticleSpec, "name", self.name, "particles.name")))
        self._check_together()

    @staticmethod
    def _where(name):
        # a particle without a name is called after its table, "particles[0]"
        return name if name.startswith("particles[") else f"particles.{name}"

    def _check_together(self):
        where = self._where(self.name)
        if not self.structure:
            raise InputError(f"{where}: no structure file given")
        if self.placement == "file" and not self.coords_file:
            raise InputError(f"{where}: placement 'file' needs coords_file")
        if self.placement == "list":
            if not self.positions_A:
                raise InputError(f"{where}: placement 'list' needs positions_A")
            if self.orientations_deg and len(self.orientations_deg) != len(self.positions_A):
                raise InputError(f"{where}: {len(self.orientations_deg)} orientations for "
                                 f"{len(self.positions_A)} positions")
        if self.placement == "random" and self.concentration_per_um3 is None and self.count < 1:
            raise InputError(f"{where}: placement 'random' needs count >= 1 or "
                             f"concentration_per_um3, got count = {self.count!r}")


#: the TOML tables, in the order of the docs
SECTIONS = {"optics": Optics, "detector": Detector, "sample": Sample, "geometry": Geometry,
            "simulation": Simulation, "particles": ParticleSpec}


# ------------------------------------------------------------------ fitting boxes
def _box(meta):
    """The closed box inside the declared range: an open end moves inward by 1e-9 (relative, at
    least 1e-9 of the unit), so an optimiser that reaches the bound still holds a valid value."""
    lo, hi = meta["range"]
    op = meta["open"] or ""
    if lo is not None and op in ("lo", "both"):
        lo = lo + 1e-9 * max(1.0, abs(lo))
    if hi is not None and op in ("hi", "both"):
        hi = hi - 1e-9 * max(1.0, abs(hi))
    return (None if lo is None else float(lo), None if hi is None else float(hi))


def _bounds_table():
    out = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if field_type(cls, f.name)[0] is float and f.metadata["range"]:
                box = _box(f.metadata)
                out[f"{section}.{f.name}"] = box
                out.setdefault(f.name, box)
    return out


#: (lo, hi) per float parameter, by field name (``"gain"``) and by ``"section.name"``: the
#: declared range as a closed box (:func:`_box`); ``None`` where unbounded
BOUNDS = _bounds_table()


def bounds(name):
    """(lo, hi) of a parameter for an optimiser, e.g. ``bounds("mtf_p")`` → (0.0, 10.0)."""
    if name not in BOUNDS:
        raise InputError(f"no declared range for parameter {name!r} (known: {', '.join(sorted(BOUNDS))})")
    return BOUNDS[name]


# --------------------------------------------------------------------------- docs
def _toml(v):
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def _type_text(cls, f):
    base, nullable = field_type(cls, f.name)
    if base is tuple:
        t = f"list of [{', '.join(['float'] * f.metadata['width'])}]" if f.metadata["width"] else "list of float"
    else:
        t = base.__name__
    return t + (" or none" if nullable else "")


def _allowed_text(cls, f):
    m = f.metadata
    if m["choices"]:
        return ", ".join(f'"{c}"' for c in m["choices"])
    if m["range"]:
        return range_text(dict(m, unit=""), field_type(cls, f.name)[0] is int)
    return ""


def _tem_text(cls, f):
    m = f.metadata
    if not m["tem"]:
        return m["tem_note"]
    s = f"`{m['tem']}`" + (f" × {m['tem_scale']:g}" if m["tem_scale"] != 1 else "")
    if m["tem_default"] == REQUIRED:
        s += " (required)"
    elif m["tem_default"] is not None:
        d = m["tem_default"]
        s += f" (absent: {'yes' if d is True else 'no' if d is False else format(d, 'g')})"
    if field_type(cls, f.name) == (float, True):
        s += "; 0 = none"
    return s


def parameters_markdown():
    """``docs/parameters.md``: one table per TOML table, from the field declarations."""
    lines = ["# Parameters", "",
             "Generated from the field declarations in `cutem/params.py` by `python -m cutem.params`;",
             "`tests/test_parameters_doc.py` checks that this file is current. Every value is checked",
             "on load (type, finite, range; a bracket `(` or `)` marks an excluded end), and a refusal",
             "names `Section.key`, the value and the range.", "",
             "A TOML config has one table per section below (`[[particles]]` may repeat) and, at the top",
             f"level, `seed` (integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], TEM-simulator `simulation.rand_seed`)",
             "and `output` (base name of the output files). `[geometry]` also takes `tilt_start_deg`,",
             "`tilt_increment_deg`, `tilt_count` and `order` (`\"sequential\"` or `\"dose-symmetric\"`)",
             "instead of `tilt_angles_deg`.", "",
             "The TEM-simulator column names the `component.key` of a TEM-simulator 1.3 input file that",
             "`cutem` reads into the field (× the unit factor), with TEM-simulator's value where the key is",
             "absent if that differs from the default here. File names are resolved against the folder",
             "of the file that names them."]
    for section, cls in SECTIONS.items():
        lines += ["", f"## [{section}]" if section != "particles" else "## [[particles]]", "",
                  (cls.__doc__ or "").strip().splitlines()[0], "",
                  "| key | type | default | unit | range | TEM-simulator | meaning |",
                  "|---|---|---|---|---|---|---|"]
        for f in fields(cls):
            m = f.metadata
            cells = [f"`{f.name}`", _type_text(cls, f), f"`{_toml(f.default)}`", m["unit"],
                     _allowed_text(cls, f), _tem_text(cls, f), m["doc"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _main(argv=None):
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description="write docs/parameters.md from the field declarations")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "parameters.md"))
    args = ap.parse_args(argv)
    Path(args.out).write_text(parameters_markdown(), encoding="utf-8")
    print(f"wrote {args.out}")


__all__ = ["Optics", "Detector", "Sample", "Geometry", "Simulation", "ParticleSpec", "SECTIONS", "BOUNDS",
           "bounds", "param", "check_value", "in_range", "allowed", "check_fields", "range_text", "parameters_markdown", "InputError",
           "REQUIRED", "SEED_RANGE"]

if __name__ == "__main__":
    _main()
