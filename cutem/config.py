"""Run configuration: TOML files, TEM-simulator input files, and the resolved record.

A run is a :class:`RunConfig`: the parameter objects of :mod:`cutem.params`, the
particles (:class:`ParticleSpec`), the seed and the output names. It comes from

- a TOML file whose tables are named after the parameter objects (``[optics]``,
  ``[detector]``, ``[sample]``, ``[geometry]``, ``[simulation]``, ``[[particles]]``) with
  keys equal to their field names (units in the names); or
- a TEM-simulator input file as it is (Rullgård et al., TEM-simulator 1.3 reference
  manual, 2011): ``=== component ===`` headers, ``key = value`` lines. Units are
  converted (nm → Å ×10, µm → Å ×10⁴, mm → Å ×10⁷ where lengths, e⁻/nm² → e⁻/Å² /100,
  mrad kept, detector pixel µm / magnification → Å at the specimen). The keys read
  one-to-one into a field, with their unit factors and TEM-simulator's defaults, are
  declared on the fields (:mod:`cutem.params`, listed in ``docs/parameters.md``); the rest
  are converted by hand in :func:`load_temsim`.

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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import InputError
from .params import (REQUIRED, SECTIONS, SEED_RANGE, Detector, Geometry, Optics, ParticleSpec, Sample, Simulation,
                     check_value, field_type, param)


@dataclass(frozen=True)
class RunConfig:
    optics: Optics = field(default_factory=Optics)
    detector: Detector = field(default_factory=Detector)
    sample: Sample = field(default_factory=Sample)
    geometry: Geometry = field(default_factory=Geometry)
    simulation: Simulation = field(default_factory=Simulation)
    particles: tuple = ()
    seed: int = param(0, "", SEED_RANGE, doc="seed of every random draw of the run", tem="simulation.rand_seed")
    output: str = "micrograph"               #: base name of the output files
    source: str = ""                         #: the file this came from
    ignored: tuple = ()                      #: TEM-simulator keys accepted but not used

    def __post_init__(self):
        object.__setattr__(self, "seed", check_value(RunConfig, "seed", self.seed, "seed"))

    def replace(self, **kw):
        return replace(self, **kw)


# ------------------------------------------------------------------------------ TOML
_TABLES = {k: v for k, v in SECTIONS.items() if k not in ("geometry", "particles")}
_GEOMETRY_KEYS = {"tilt_angles_deg", "tilt_start_deg", "tilt_increment_deg", "tilt_count", "order",
                  "tilt_axis_deg", "dose_weights", "defocus_offsets_A"}
_TOP_KEYS = {"seed", "output", "optics", "detector", "sample", "geometry", "simulation", "particles",
             "cutem_version"}


def _tuplify(v):
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def _geometry_from(d, where="geometry"):
    if not isinstance(d, dict):
        raise InputError(f"[{where}] must be a table")
    unknown = sorted(set(d) - _GEOMETRY_KEYS)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in [{where}] (known: {', '.join(sorted(_GEOMETRY_KEYS))})")
    kw = {k: _tuplify(d[k]) for k in ("tilt_angles_deg", "tilt_axis_deg", "dose_weights", "defocus_offsets_A")
          if k in d}
    if any(k in d for k in ("tilt_start_deg", "tilt_increment_deg", "tilt_count")):
        if "tilt_angles_deg" in d:
            raise InputError(f"[{where}] give either tilt_angles_deg or tilt_start_deg/tilt_increment_deg/tilt_count")
        count = d.get("tilt_count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InputError(f"[{where}] tilt_count = {count!r} must be an integer >= 1")
        start, step = (d.get(k, 0.0) for k in ("tilt_start_deg", "tilt_increment_deg"))
        for k, v in (("tilt_start_deg", start), ("tilt_increment_deg", step)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"[{where}] {k} = {v!r} must be a number (deg)")
        return Geometry.series(float(start), float(step), count, d.get("order", "sequential"), **kw)
    return Geometry(**kw)


def _resolve(path, base):
    if not isinstance(path, str) or path == "":
        return path  # not a name: the parameter object refuses it
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (Path(base) / p).resolve())


def _resolve_paths(cls, kw, base):
    """File names among ``kw`` (fields declared ``path``) resolved against ``base``."""
    declared = cls.__dataclass_fields__
    return {k: _resolve(v, base) if k in declared and declared[k].metadata.get("path") else v for k, v in kw.items()}


def _particle_from(d, base, i):
    where = f"particles[{i}]"
    if not isinstance(d, dict):
        raise InputError(f"[[particles]] #{i + 1} must be a table, not {d!r}")
    names = {f.name for f in fields(ParticleSpec)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in [[particles]] #{i + 1} (known: {', '.join(sorted(names))})")
    d = {k: _tuplify(v) for k, v in d.items()}
    d.setdefault("name", where)
    return ParticleSpec(**_resolve_paths(ParticleSpec, d, base))


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
            kw[name] = cls.from_dict(_resolve_paths(cls, {k: _tuplify(v) for k, v in d[name].items()}, base),
                                     where=name)
    if "geometry" in d:
        kw["geometry"] = _geometry_from(d["geometry"])
    parts = d.get("particles", [])
    if isinstance(parts, dict):
        parts = [parts]
    kw["particles"] = tuple(_particle_from(p, base, i) for i, p in enumerate(parts))
    return RunConfig(seed=d.get("seed", 0), output=str(d.get("output", "micrograph")), source=str(source), **kw)


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
    """A TEM-simulator value that cutem converts by hand (not one-to-one into a field)."""
    if key not in comp:
        if default is None:
            raise InputError(f"{source}: missing required key {key!r}" + (f" in component {where}" if where else ""))
        return default
    val, lineno = comp[key]
    try:
        v = kind(val)
    except ValueError:
        raise InputError(f"{source}:{lineno}: {key} = {val!r} is not {'an integer' if kind is int else 'a number'}") \
            from None
    if kind is float and not math.isfinite(v):
        raise InputError(f"{source}:{lineno}: {key} = {val!r} must be finite")
    return v


_YES, _NO = ("yes", "y", "true", "1"), ("no", "n", "false", "0")


def _yes(comp, key, default, source="input"):
    if key not in comp:
        return default
    val, lineno = comp[key]
    if val.lower() not in _YES + _NO:
        raise InputError(f"{source}:{lineno}: {key} = {val!r} must be yes or no")
    return val.lower() in _YES


def _temsim_value(cls, f, val, base):
    """A TEM-simulator value text as the value of field ``f`` (typed, × the unit factor);
    ValueError where a number does not parse."""
    kind, nullable = field_type(cls, f.name)
    if kind is bool:
        low = val.lower()
        return low in _YES if low in _YES + _NO else val  # else refused by the field's check
    if kind is str:
        return _resolve(val, base) if f.metadata["path"] else val
    v = kind(val)
    if nullable and v == 0:
        return None  # TEM-simulator: 0 = none (no aperture, no concentration)
    return v * f.metadata["tem_scale"] if kind is float else v


def _temsim_fields(cls, comps, source, base):
    """Keyword arguments of ``cls`` from the TEM-simulator keys its fields declare (``tem``):
    ``comps`` maps component names to their ``{key: (value, line)}``. Each value is checked
    against the field's range here, so a refusal names the file's line and key."""
    kw = {}
    for f in fields(cls):
        m = f.metadata
        if not m.get("tem") or m["tem"].split(".")[0] not in comps:
            continue
        comp, key = m["tem"].split(".")
        kv = comps[comp]
        if key not in kv:
            if m["tem_default"] == REQUIRED:
                raise InputError(f"{source}: missing required key {key!r} in component {comp}")
            if m["tem_default"] is not None:
                d = m["tem_default"]
                kw[f.name] = d if isinstance(d, bool) else d * m["tem_scale"]
            continue
        val, lineno = kv[key]
        try:
            kw[f.name] = check_value(cls, f.name, _temsim_value(cls, f, val, base), f"{cls.__name__}.{f.name}")
        except InputError as exc:
            raise InputError(f"{source}:{lineno}: {comp}.{key} = {val}: {exc}") from None
        except ValueError:  # (InputError is one: caught above)
            kind = field_type(cls, f.name)[0]
            raise InputError(f"{source}:{lineno}: {key} = {val!r} is not "
                             f"{'an integer' if kind is int else 'a number'}") from None
    return kw


def load_temsim(path):
    """Convert a TEM-simulator input file to a :class:`RunConfig` (units converted).

    Keys read one-to-one into a field come from the fields' declarations (``tem`` in
    :mod:`cutem.params`); the rest (:data:`_BY_HAND`) are converted below."""
    path = Path(path)
    source = str(path)
    comps = parse_temsim(path.read_text(), source)
    by = {}
    for kind, name, kv in comps:
        by.setdefault(kind, []).append((name, kv))
    base = path.parent
    first = {k: v[0][1] for k, v in by.items()}
    # several detectors: TEM-simulator writes one image file per detector; cutem always
    # writes the noisy image and its noise-free twin, so the first quantised detector
    # (else the first) defines the camera.
    ignored = []
    dets = by.get("detector", [])
    if dets:
        first["detector"] = next((kv for _, kv in dets if _yes(kv, "use_quantization", True, source)), dets[0][1])
    if len(dets) > 1:
        ignored.append(f"detector: {len(dets) - 1} further detector component(s) (cutem writes noisy and noise-free)")
    # every component's keys are read, present or not, so TEM-simulator's defaults apply
    every = {comp: first.get(comp, {}) for comp in TEMSIM_KEYS}
    read = lambda cls, **kw: cls(**{**_temsim_fields(cls, every, source, base), **kw})  # noqa: E731

    sample = read(Sample) if "sample" in by else Sample(ice=False)
    optics = read(Optics)
    e, o, g, det = every["electronbeam"], every["optics"], every["geometry"], every["detector"]
    ntilts = _num(g, "ntilts", source, 1, int)
    geometry = Geometry.series(_num(g, "theta_start", source, 0.0), _num(g, "theta_incr", source, 0.0), ntilts,
                               **_temsim_fields(Geometry, every, source, base))
    if "dose_per_im" in e:
        dose_nm2 = _num(e, "dose_per_im", source)
    elif "total_dose" in e:
        dose_nm2 = _num(e, "total_dose", source) / ntilts
    else:
        dose_nm2 = 100.0
    extra = {}
    if dets:
        # the pixel at the specimen is the detector pixel over the magnification: required with a
        # detector; a file that only describes a scene (for ``cutem potential``) gets cutem's camera
        mag = _num(o, "magnification", source, where="optics")
        if not mag > 0:
            raise InputError(f"{source}:{o['magnification'][1]}: magnification = {o['magnification'][0]} must be > 0")
        extra["pixel_size_A"] = _num(det, "pixel_size", source, 15.0) * 1e4 / mag
    detector = read(Detector, dose_e_per_A2=dose_nm2 / 100.0, **extra)

    particles = []
    kinds = {name: kv for name, kv in by.get("particle", [])}
    for _, ps in by.get("particleset", []):
        ptype = ps.get("particle_type", ("", 0))[0]
        if ptype not in kinds:
            raise InputError(f"{source}: particleset refers to particle type {ptype!r}, "
                             f"but only {sorted(kinds) or 'none'} are defined")
        kw = _temsim_fields(ParticleSpec, {"particle": kinds[ptype], "particleset": ps}, source, base)
        coords = ps.get("particle_coords", ("rand", 0))[0].lower()
        if coords != "file":
            kw.pop("coords_file", None)
        n = _num(ps, "num_particles", source, 0 if kw.get("concentration_per_um3") else 1, int)
        if n:
            kw["concentration_per_um3"] = None
        particles.append(ParticleSpec(name=ptype, placement="file" if coords == "file" else "random", count=n, **kw))
    for kind, name, kv in comps:
        for k in kv:
            if k not in _USED.get(kind, ()):
                ignored.append(f"{kind}.{k}")
    # TEM-simulator's image model: absorption from the cross sections (use_imag_pot, default
    # yes), the scattered electrons as blurred background, its map's blur B ≥ 200 × voxel², the
    # particle map clamped from below by the ice's potential (pdb.c, get_pot_from_pdb), and its
    # detector's pixel centres at (i − (n−1)/2)·pixel (Simulation.grid_origin)
    p0 = next(iter(kinds.values()), {})
    simulation = Simulation(absorption_model="cross_section" if _yes(p0, "use_imag_pot", True) else "ratio",
                            inelastic_background=True,
                            b_factor_floor_A2=200.0 * (_num(p0, "voxel_size", source, 0.1) * 10) ** 2,
                            solvent_model="clamp", solvent_map_voxel_A=_num(p0, "voxel_size", source, 0.1) * 10,
                            grid_origin="middle")
    seed = _num(every["simulation"], "rand_seed", source, 0, int)
    out = Path(det.get("image_file_out", ("micrograph.mrc", 0))[0]).stem
    return RunConfig(optics=optics, detector=detector, sample=sample, geometry=geometry,
                     particles=tuple(particles), seed=seed, output=out, source=source, simulation=simulation,
                     ignored=tuple(ignored))


#: TEM-simulator keys that :func:`load_temsim` converts by hand (or whose value is refused
#: unless supported, :data:`_UNSUPPORTED`)
_BY_HAND = {"particle": {"source", "use_imag_pot", "voxel_size"}, "particleset": {"particle_type", "num_particles", "particle_coords"},
            "geometry": {"gen_tilt_data", "ntilts", "theta_start", "theta_incr", "geom_errors"},
            "electronbeam": {"gen_dose", "total_dose", "dose_per_im"},
            "optics": {"magnification", "gen_defocus"}, "detector": {"pixel_size", "image_file_out"},
            "simulation": {"rand_seed"}}


def _used():
    used = {k: set(v) for k, v in _BY_HAND.items()}
    for cls in SECTIONS.values():
        for f in fields(cls):
            if f.metadata.get("tem"):
                comp, key = f.metadata["tem"].split(".")
                used.setdefault(comp, set()).add(key)
    return used


#: the TEM-simulator keys cutem uses (the others are listed in ``RunConfig.ignored``)
_USED = _used()


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


# ------------------------------------------------------------- a structure, no config
#: a K3-like counting camera in TEM-simulator's MTF form: the fit (p, q form) to the K2 Summit
#: MTF that RELION distributes (mtf_k2_300kV.star; validation/fit_real_detectors.py, RMS 0.0017),
#: DQE(0) 0.8 (the K2 counting curve of McMullan et al., Ultramicroscopy 147:156, 2014, at 0)
_K3_LIKE = dict(quantized=True, dqe=0.8, mtf_a=0.929, mtf_b=0.071, mtf_c=0.0, mtf_alpha=3.79, mtf_beta=10000.0,
                mtf_p=1.92, mtf_q=0.58)


def config_for_structure(path, *, count=1, seed=0) -> RunConfig:
    """A run of one structure file (PDB or mmCIF) with everyday cryo-EM settings.

    ``count = 1``: the structure (its bounding-box centre) at the image centre, turned as in the
    file; more: ``count`` copies
    at random non-overlapping positions and orientations (from ``seed``). In vitreous ice
    100 Å thicker than the particle (at least 300 Å); 300 kV, Cs 2.7 mm, 1.5 µm underfocus,
    amplitude contrast 0.07 (the value RELION users enter); 1 Å pixels on a square field of
    the particle's diameter plus 100 Å on each side (for ``count`` copies, an area of about
    four of those boxes each), rounded up to a multiple of 32 pixels; 40 e⁻/Å² on a K3-like
    counting camera (``_K3_LIKE``). The output is named after the file.
    """
    from .structure import load_particle

    path = Path(path)
    if not path.is_file():
        raise InputError(f"structure {path}: no such file")
    if not isinstance(count, int) or count < 1:
        raise InputError(f"count = {count!r} must be an integer >= 1")
    radius = load_particle(str(path)).radius()
    box = 2 * radius + 200.0
    side = box if count == 1 else math.sqrt(4.0 * count) * box
    n = 32 * int(math.ceil(side / 32.0))
    ice = max(2 * radius + 100.0, 300.0)
    particle = ParticleSpec(name=path.stem, structure=str(path.resolve()),
                            **(dict(placement="list", positions_A=((0.0, 0.0, 0.0),)) if count == 1 else
                               dict(placement="random", count=count)))
    return RunConfig(optics=Optics(voltage_kV=300.0, defocus_u_A=15000.0, defocus_v_A=15000.0, cs_mm=2.7,
                                   amplitude_contrast=0.07),
                     detector=Detector(nx=n, ny=n, pixel_size_A=1.0, dose_e_per_A2=40.0, **_K3_LIKE),
                     sample=Sample(diameter_A=max(10000.0, 2.0 * n), thickness_center_A=ice, thickness_edge_A=ice),
                     particles=(particle,), seed=int(seed), output=path.stem, source=str(path))
