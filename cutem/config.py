"""Run configuration: TOML files, TEM-simulator input files, and the resolved record.

A run is a :class:`RunConfig`: the parameter objects of :mod:`cutem.params`, the
particles (:class:`ParticleSpec`), the seed and the output names. It comes from

- a TOML file whose tables are named after the parameter objects (``[optics]``,
  ``[detector]``, ``[sample]``, ``[geometry]``, ``[simulation]``, ``[[particles]]``) with
  keys equal to their field names (units in the names); or
- a TEM-simulator input file as it is (Rullgård et al., TEM-simulator 1.3 reference
  manual, 2011): ``=== component ===`` headers, ``key = value`` lines. Units are
  converted (nm → Å ×10, µm → Å ×10⁴, mm → Å ×10⁷ where lengths, e⁻/nm² → e⁻/Å² /100,
  mrad kept, detector pixel µm / magnification → Å at the specimen).

Unknown keys are errors naming the key and the section. Keys TEM-simulator knows but
cutem has no use for (its map-file cache, log file, byte orders) are accepted and
listed in ``RunConfig.ignored``. Relative file names are resolved against the
directory of the file that names them.

:func:`write_resolved` writes the full resolved parameter set with the seed as TOML;
feeding it back to :func:`load_config` reproduces the run.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import InputError
from .params import Detector, Geometry, Optics, Sample, Simulation


@dataclass(frozen=True)
class ParticleSpec:
    """One kind of particle and where its copies go.

    ``placement``: ``"file"`` (TEM-simulator coordinate file, ``coords_file``),
    ``"list"`` (``positions_A`` and ``orientations_deg`` as Euler angles in the
    TEM-simulator convention), or ``"random"`` (``count`` copies, non-overlapping,
    inside the ice, from the run's seed).
    """

    name: str = "particle"
    structure: str = ""                       #: PDB or mmCIF file
    transforms: str | None = None             #: TEM-simulator transform file (pdb_transf_file_in)
    assembly: bool = False                    #: expand PDB BIOMT / mmCIF assembly 1
    hydrogens: bool = False                   #: keep hydrogens from the file
    implicit_hydrogens: bool = False          #: add riding hydrogens (TEM-simulator add_hydrogen)
    infer_elements: bool = False              #: infer missing elements from atom names
    placement: str = "file"                   #: file | list | random
    coords_file: str | None = None
    positions_A: tuple = ()
    orientations_deg: tuple = ()
    count: int = 0
    concentration_per_um3: float | None = None  #: random placement: particles per µm³ of ice (instead of count)
    where: str = "volume"                     #: random placement: volume | top | bottom

    def __post_init__(self):
        if self.placement not in ("file", "list", "random"):
            raise InputError(f"particles.{self.name}: placement must be file, list or random, not {self.placement!r}")
        if not self.structure:
            raise InputError(f"particles.{self.name}: no structure file given")
        if self.placement == "file" and not self.coords_file:
            raise InputError(f"particles.{self.name}: placement 'file' needs coords_file")
        if self.placement == "list":
            if not self.positions_A:
                raise InputError(f"particles.{self.name}: placement 'list' needs positions_A")
            if self.orientations_deg and len(self.orientations_deg) != len(self.positions_A):
                raise InputError(f"particles.{self.name}: {len(self.orientations_deg)} orientations for "
                                 f"{len(self.positions_A)} positions")
            for p in self.positions_A:
                if len(p) != 3 or not all(math.isfinite(float(v)) for v in p):
                    raise InputError(f"particles.{self.name}: position {p!r} is not three finite numbers (Å)")
        if self.placement == "random" and self.concentration_per_um3 is None and (
                not isinstance(self.count, int) or self.count < 1):
            raise InputError(f"particles.{self.name}: placement 'random' needs count >= 1 or "
                             f"concentration_per_um3, got count = {self.count!r}")
        if self.concentration_per_um3 is not None and not (0 < float(self.concentration_per_um3) < 1e9):
            raise InputError(f"particles.{self.name}: concentration_per_um3 = {self.concentration_per_um3!r} "
                             f"must be in (0, 1e9)")


@dataclass(frozen=True)
class RunConfig:
    optics: Optics = field(default_factory=Optics)
    detector: Detector = field(default_factory=Detector)
    sample: Sample = field(default_factory=Sample)
    geometry: Geometry = field(default_factory=Geometry)
    simulation: Simulation = field(default_factory=Simulation)
    particles: tuple = ()
    seed: int = 0
    output: str = "micrograph"               #: base name of the output files
    source: str = ""                         #: the file this came from
    ignored: tuple = ()                      #: TEM-simulator keys accepted but not used

    def replace(self, **kw):
        from dataclasses import replace

        return replace(self, **kw)


# ------------------------------------------------------------------------------ TOML
_TABLES = {"optics": Optics, "detector": Detector, "sample": Sample, "simulation": Simulation}
_GEOMETRY_KEYS = {"tilt_angles_deg", "tilt_start_deg", "tilt_increment_deg", "tilt_count", "order",
                  "tilt_axis_deg", "dose_weights", "defocus_offsets_A"}
_TOP_KEYS = {"seed", "output", "optics", "detector", "sample", "geometry", "simulation", "particles",
             "cutem_version"}


def _tuplify(v):
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def _floats(v, key, where):
    """A list of finite-or-not numbers (the parameter objects check the ranges), or InputError."""
    if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
        raise InputError(f"[{where}] {key} = {v!r} must be a list of numbers")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise InputError(f"[{where}] {key} has {x!r}; it must be a list of numbers")
        out.append(float(x))
    return tuple(out)


def _geometry_from(d, where="geometry"):
    if not isinstance(d, dict):
        raise InputError(f"[{where}] must be a table")
    unknown = sorted(set(d) - _GEOMETRY_KEYS)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in [{where}] (known: {', '.join(sorted(_GEOMETRY_KEYS))})")
    kw = {k: _tuplify(d[k]) for k in ("tilt_axis_deg", "dose_weights", "defocus_offsets_A") if k in d}
    for k in ("dose_weights", "defocus_offsets_A"):
        if k in kw:
            kw[k] = _floats(kw[k], k, where)
    if "tilt_angles_deg" in d:
        if any(k in d for k in ("tilt_start_deg", "tilt_increment_deg", "tilt_count")):
            raise InputError(f"[{where}] give either tilt_angles_deg or tilt_start_deg/tilt_increment_deg/tilt_count")
        return Geometry(tilt_angles_deg=_floats(d["tilt_angles_deg"], "tilt_angles_deg", where), **kw)
    if "tilt_count" in d or "tilt_start_deg" in d:
        count = d.get("tilt_count", 1)
        if not isinstance(count, int) or count < 1:
            raise InputError(f"[{where}] tilt_count = {count!r} must be an integer >= 1")
        return Geometry.series(float(d.get("tilt_start_deg", 0.0)), float(d.get("tilt_increment_deg", 0.0)),
                               count, d.get("order", "sequential"), **kw)
    return Geometry(**kw)


def _resolve(path, base):
    if path is None or path == "":
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (Path(base) / p).resolve())


def _particle_from(d, base, i):
    where = f"particles[{i}]"
    names = {f.name for f in fields(ParticleSpec)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in [[particles]] #{i + 1} (known: {', '.join(sorted(names))})")
    if not isinstance(d, dict):
        raise InputError(f"[[particles]] #{i + 1} must be a table, not {d!r}")
    d = {k: _tuplify(v) for k, v in d.items()}
    d.setdefault("name", where)
    for k in ("structure", "transforms", "coords_file"):
        if k in d:
            d[k] = _resolve(d[k], base)
    try:
        return ParticleSpec(**d)
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise InputError(f"[[particles]] #{i + 1}: a value has the wrong type or shape ({exc})") from None


def from_dict(d, base=".", source=""):
    """Build a :class:`RunConfig` from a TOML-shaped dict."""
    try:
        return _from_dict(d, base, source)
    except InputError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type or shape
        raise InputError(f"{source or 'the config'}: a value has the wrong type or shape "
                         f"({type(exc).__name__}: {exc})") from None


def _from_dict(d, base=".", source=""):
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} at the top level of {source or 'the config'} "
                         f"(known: {', '.join(sorted(_TOP_KEYS - {'cutem_version'}))})")
    kw = {}
    for name, cls in _TABLES.items():
        if name in d:
            if not isinstance(d[name], dict):
                raise InputError(f"[{name}] must be a table")
            kw[name] = cls.from_dict({k: _tuplify(v) for k, v in d[name].items()}, where=name)
    if "geometry" in d:
        kw["geometry"] = _geometry_from(d["geometry"])
    parts = d.get("particles", [])
    if isinstance(parts, dict):
        parts = [parts]
    kw["particles"] = tuple(_particle_from(p, base, i) for i, p in enumerate(parts))
    seed = d.get("seed", 0)
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed = {seed!r} must be a non-negative integer")
    return RunConfig(seed=seed, output=str(d.get("output", "micrograph")), source=str(source), **kw)


def load_toml(path):
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    return from_dict(d, base=path.parent, source=path)


# ------------------------------------------------------------------- TEM-simulator
#: TEM-simulator 1.3 keys per component (reference manual, section 3). Those cutem uses
#: are converted below; the rest are accepted and reported as ignored.
TEMSIM_KEYS = {
    "simulation": {"generate_micrographs", "generate_particle_maps", "log_file", "rand_seed"},
    "sample": {"diameter", "thickness_center", "thickness_edge", "offset_x", "offset_y"},
    "particle": {"source", "pdb_file_in", "pdb_transf_file_in", "voxel_size", "nx", "ny", "nz",
                 "map_file_re_in", "map_file_im_in", "map_file_re_out", "map_file_im_out",
                 "map_file_format", "map_file_byte_order", "map_axis_order", "use_imag_pot", "famp",
                 "use_defocus_corr", "add_hydrogen", "make_positive", "contrast_re", "contrast_im",
                 "smoothness"},
    "particleset": {"particle_type", "num_particles", "particle_conc", "particle_coords", "coord_file_in",
                    "coord_file_out", "where", "occupancy"},
    "geometry": {"gen_tilt_data", "ntilts", "theta_start", "theta_incr", "tilt_axis", "geom_errors",
                 "tilt_err", "align_err_rot", "align_err_tr", "geom_file_in", "geom_file_out",
                 "error_file_in", "error_file_out"},
    "electronbeam": {"acc_voltage", "energy_spread", "gen_dose", "total_dose", "dose_per_im",
                     "dose_sd", "dose_file_in", "dose_file_out"},
    "optics": {"magnification", "cs", "cc", "aperture", "focal_length", "cond_ap_angle", "gen_defocus",
               "defocus_nominal", "defocus_syst_error", "defocus_nonsyst_error", "defocus_file_in",
               "defocus_file_out"},
    "detector": {"det_pix_x", "det_pix_y", "pixel_size", "gain", "use_quantization", "dqe", "mtf_a",
                 "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p", "mtf_q", "padding",
                 "image_file_out", "image_file_format", "image_axis_order", "image_file_byte_order"},
}
#: keys whose values change the physics but that cutem does not model: refuse rather than
#: silently simulate something else
_UNSUPPORTED = {("particle", "source"): {"pdb"}, ("geometry", "geom_errors"): {"none"},
                ("geometry", "gen_tilt_data"): {"yes"}, ("optics", "gen_defocus"): {"yes"},
                ("electronbeam", "gen_dose"): {"yes"}, ("particleset", "particle_coords"): {"file", "rand", "random"}}


def parse_temsim(text, source="input"):
    """Split a TEM-simulator input into ``[(component, name, {key: (value, line)})]``."""
    comps, cur = [], None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("="):
            head = line.strip("= ").split()
            if not head or head[0] not in TEMSIM_KEYS:
                raise InputError(f"{source}:{lineno}: unknown component {line!r} "
                                 f"(known: {', '.join(TEMSIM_KEYS)})")
            cur = (head[0], head[1] if len(head) > 1 else "", {})
            comps.append(cur)
            continue
        if "=" not in line:
            raise InputError(f"{source}:{lineno}: expected 'key = value', got {raw.strip()!r}")
        if cur is None:
            raise InputError(f"{source}:{lineno}: parameter before the first '=== component ===' header")
        key, val = (s.strip() for s in line.split("=", 1))
        if key not in TEMSIM_KEYS[cur[0]]:
            raise InputError(f"{source}:{lineno}: unknown key {key!r} in component {cur[0]} "
                             f"(known: {', '.join(sorted(TEMSIM_KEYS[cur[0]]))})")
        allowed = _UNSUPPORTED.get((cur[0], key))
        if allowed and val.lower() not in allowed:
            raise InputError(f"{source}:{lineno}: {cur[0]}.{key} = {val} is not supported by cutem "
                             f"(supported: {', '.join(sorted(allowed))})")
        cur[2][key] = (val, lineno)
    return comps


def _num(comp, key, source, default=None, kind=float, where=None):
    if key not in comp:
        if default is None:
            raise InputError(f"{source}: missing required key {key!r}" + (f" in component {where}" if where else ""))
        return default
    val, lineno = comp[key]
    try:
        v = kind(val)
    except ValueError:
        raise InputError(f"{source}:{lineno}: {key} = {val!r} is not a number") from None
    if kind is float and not math.isfinite(v):
        raise InputError(f"{source}:{lineno}: {key} = {val!r} must be finite")
    return v


def _yes(comp, key, default):
    if key not in comp:
        return default
    val, _ = comp[key]
    return val.lower() in ("yes", "y", "true", "1")


def load_temsim(path):
    """Convert a TEM-simulator input file to a :class:`RunConfig` (units converted)."""
    path = Path(path)
    source = str(path)
    comps = parse_temsim(path.read_text(), source)
    by = {}
    for kind, name, kv in comps:
        by.setdefault(kind, []).append((name, kv))
    base = path.parent
    one = lambda k: by.get(k, [("", {})])[0][1]  # noqa: E731
    ignored = []

    s = one("sample")
    sample = Sample(diameter_A=_num(s, "diameter", source, where="sample") * 10,
                    thickness_center_A=_num(s, "thickness_center", source, where="sample") * 10,
                    thickness_edge_A=_num(s, "thickness_edge", source, where="sample") * 10,
                    offset_x_A=_num(s, "offset_x", source, 0.0) * 10,
                    offset_y_A=_num(s, "offset_y", source, 0.0) * 10) if "sample" in by else Sample(ice=False)

    e, o = one("electronbeam"), one("optics")
    # the pixel at the specimen is the detector pixel over the magnification: required with a
    # detector; a file that only describes a scene (for ``cutem potential``) gets cutem's camera
    mag = _num(o, "magnification", source, where="optics") if "detector" in by else 1.0
    defocus_A = _num(o, "defocus_nominal", source, 0.0) * 1e4
    optics = Optics(voltage_kV=_num(e, "acc_voltage", source, 200.0),
                    energy_spread_eV=_num(e, "energy_spread", source, 0.0),
                    defocus_u_A=defocus_A, defocus_v_A=defocus_A,
                    cs_mm=_num(o, "cs", source, 2.0), cc_mm=_num(o, "cc", source, 2.0),
                    aperture_diameter_um=_num(o, "aperture", source, 0.0) or None,
                    focal_length_mm=_num(o, "focal_length", source, 3.0),
                    illumination_angle_mrad=_num(o, "cond_ap_angle", source, 0.0))

    g = one("geometry")
    ntilts = _num(g, "ntilts", source, 1, int)
    geometry = Geometry.series(_num(g, "theta_start", source, 0.0), _num(g, "theta_incr", source, 0.0),
                               ntilts, tilt_axis_deg=_num(g, "tilt_axis", source, 0.0))
    if "dose_per_im" in e:
        dose_nm2 = _num(e, "dose_per_im", source)
    elif "total_dose" in e:
        dose_nm2 = _num(e, "total_dose", source) / ntilts
    else:
        dose_nm2 = 100.0
    # several detectors: TEM-simulator writes one image file per detector; cutem always
    # writes the noisy image and its noise-free twin, so the first quantised detector
    # (else the first) defines the camera.
    dets = by.get("detector", [("", {})])
    det = next((kv for _, kv in dets if _yes(kv, "use_quantization", True)), dets[0][1])
    if len(dets) > 1:
        ignored.append(f"detector: {len(dets) - 1} further detector component(s) (cutem writes noisy and noise-free)")
    detector = Detector(dose_e_per_A2=dose_nm2 / 100.0) if "detector" not in by else Detector(nx=_num(det, "det_pix_x", source, 400, int), ny=_num(det, "det_pix_y", source, 400, int),
                        pixel_size_A=_num(det, "pixel_size", source, 15.0) * 1e4 / mag,
                        dose_e_per_A2=dose_nm2 / 100.0,
                        quantized=_yes(det, "use_quantization", True),
                        dqe=_num(det, "dqe", source, 1.0), gain=_num(det, "gain", source, 1.0),
                        mtf_a=_num(det, "mtf_a", source, 0.0), mtf_b=_num(det, "mtf_b", source, 0.0),
                        mtf_c=_num(det, "mtf_c", source, 1.0), mtf_alpha=_num(det, "mtf_alpha", source, 0.0),
                        mtf_beta=_num(det, "mtf_beta", source, 0.0), mtf_p=_num(det, "mtf_p", source, 1.0),
                        mtf_q=_num(det, "mtf_q", source, 1.0))

    particles = []
    kinds = {name: kv for name, kv in by.get("particle", [])}
    for _, ps in by.get("particleset", []):
        ptype = ps.get("particle_type", ("", 0))[0]
        if ptype not in kinds:
            raise InputError(f"{source}: particleset refers to particle type {ptype!r}, "
                             f"but only {sorted(kinds) or 'none'} are defined")
        p = kinds[ptype]
        if "pdb_file_in" not in p:
            raise InputError(f"{source}: particle {ptype} has no pdb_file_in")
        coords = ps.get("particle_coords", ("rand", 0))[0].lower()
        conc = _num(ps, "particle_conc", source, 0.0) or None
        n = _num(ps, "num_particles", source, 0 if conc else 1, int)
        particles.append(ParticleSpec(
            name=ptype, structure=_resolve(p["pdb_file_in"][0], base),
            transforms=_resolve(p["pdb_transf_file_in"][0], base) if "pdb_transf_file_in" in p else None,
            implicit_hydrogens=_yes(p, "add_hydrogen", True),
            placement="file" if coords == "file" else "random",
            coords_file=_resolve(ps["coord_file_in"][0], base) if coords == "file" and "coord_file_in" in ps else None,
            count=n, concentration_per_um3=conc if not n else None, where=ps.get("where", ("volume", 0))[0]))
    for kind, name, kv in comps:
        used = _USED.get(kind, set())
        for k in kv:
            if k not in used:
                ignored.append(f"{kind}.{k}")
    # TEM-simulator's image model: absorption from the cross sections (use_imag_pot, default
    # yes), the scattered electrons as blurred background, its map's blur B ≥ 200 × voxel²
    p0 = next(iter(kinds.values()), {})
    simulation = Simulation(absorption_model="cross_section" if _yes(p0, "use_imag_pot", True) else "ratio",
                            inelastic_background=True,
                            b_factor_floor_A2=200.0 * (_num(p0, "voxel_size", source, 0.1) * 10) ** 2)
    seed = _num(one("simulation"), "rand_seed", source, 0, int)
    out = Path(det.get("image_file_out", ("micrograph.mrc", 0))[0]).stem
    return RunConfig(optics=optics, detector=detector, sample=sample, geometry=geometry,
                     particles=tuple(particles), seed=seed, output=out, source=source, simulation=simulation,
                     ignored=tuple(ignored))


_USED = {"sample": {"diameter", "thickness_center", "thickness_edge", "offset_x", "offset_y"},
         "particle": {"source", "pdb_file_in", "pdb_transf_file_in", "add_hydrogen", "use_imag_pot", "voxel_size"},
         "particleset": {"particle_type", "num_particles", "particle_conc", "particle_coords", "coord_file_in",
                         "where"},
         "geometry": {"gen_tilt_data", "ntilts", "theta_start", "theta_incr", "tilt_axis", "geom_errors"},
         "electronbeam": {"acc_voltage", "energy_spread", "gen_dose", "total_dose", "dose_per_im"},
         "optics": {"magnification", "cs", "cc", "aperture", "focal_length", "cond_ap_angle", "gen_defocus",
                    "defocus_nominal"},
         "detector": {"det_pix_x", "det_pix_y", "pixel_size", "gain", "use_quantization", "dqe", "mtf_a",
                      "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p", "mtf_q", "image_file_out"},
         "simulation": {"rand_seed"}}


def is_temsim(path) -> bool:
    try:
        head = Path(path).read_text(errors="replace")[:20000]
    except OSError:
        return False
    return any(line.strip().startswith("===") for line in head.splitlines())


def load_config(path=None):
    """Load a TOML config or a TEM-simulator input file; ``None`` gives the embedded default."""
    if path is None:
        return default_config()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path}: no such file")
    try:
        return load_temsim(path) if is_temsim(path) else load_toml(path)
    except UnicodeDecodeError:
        raise InputError(f"config {path}: not a text file (a TOML or TEM-simulator input file)") from None
    except OSError as exc:
        raise InputError(f"config {path}: cannot read ({exc.strerror or exc})") from None


def default_config():
    """The embedded default: TEM-simulator's TMV example (3 fragments, 200 kV, 5 µm defocus,
    its detector with quantisation, DQE 0.4 and MTF (0.7, 0.2, 0.1, 10, 40), gain 10)."""
    from importlib.resources import files

    return load_toml(Path(str(files("cutem.data") / "default.toml")))


# ---------------------------------------------------------------------- resolved
def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: RunConfig) -> str:
    """The full resolved parameter set as TOML (None fields omitted: they are defaults)."""
    from . import __version__

    lines = [f"# cutem resolved parameters (feed back with `cutem simulate THIS_FILE`)",
             f'cutem_version = "{__version__}"', f"seed = {cfg.seed}", f"output = {_toml_value(cfg.output)}"]
    if cfg.source:
        lines.insert(1, f"# from: {cfg.source}")
    for name in ("optics", "detector", "sample", "simulation", "geometry"):
        obj = getattr(cfg, name)
        lines.append(f"\n[{name}]")
        for f in fields(obj):
            v = getattr(obj, f.name)
            if v is not None:
                lines.append(f"{f.name} = {_toml_value(v)}")
    for p in cfg.particles:
        lines.append("\n[[particles]]")
        for f in fields(p):
            v = getattr(p, f.name)
            if v is not None and v != () and v != f.default:
                lines.append(f"{f.name} = {_toml_value(v)}")
            elif f.name in ("name", "structure", "placement"):
                lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def write_resolved(path, cfg: RunConfig):
    from .io import atomic_path

    with atomic_path(path, suffix=".toml") as tmp:
        Path(tmp).write_text(to_toml(cfg))
