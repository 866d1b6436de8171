"""Configuration: TOML, TEM-simulator input files, resolved round trip, errors."""
import re
from pathlib import Path

import pytest

from cutem.config import load_config, load_temsim, to_toml
from cutem.errors import InputError

#: TEM-simulator's TMV example as shipped with the package (the embedded default's source)
TMV = Path(__file__).resolve().parents[1] / "cutem" / "data" / "tmv"


@pytest.fixture
def tmv_input():
    return TMV / "input_TMV.txt"


def test_temsim_units_are_converted_to_angstrom_and_e_per_A2(tmv_input):
    c = load_temsim(tmv_input)
    assert c.detector.pixel_size_A == pytest.approx(15e4 / 30000)  # 15 um / 30000 = 5 A
    assert c.detector.dose_e_per_A2 == pytest.approx(1.0)          # 100 e/nm^2
    assert c.optics.defocus_u_A == pytest.approx(5e4)              # 5 um
    assert c.optics.voltage_kV == 200 and c.optics.cs_mm == 2
    assert c.sample.thickness_center_A == 500 and c.sample.diameter_A == 1e4
    assert c.geometry.tilt_angles_deg == (-2.0, 0.0, 2.0)
    assert c.particles[0].count == 3 and c.particles[0].structure.endswith("2OM3_model1.pdb")


def test_resolved_toml_reproduces_the_config(tmv_input, tmp_path):
    c = load_temsim(tmv_input)
    p = tmp_path / "resolved.toml"
    p.write_text(to_toml(c))
    c2 = load_config(p)
    for name in ("optics", "detector", "sample", "geometry", "simulation", "particles", "seed"):
        assert getattr(c2, name) == getattr(c, name), name


def test_unknown_temsim_key_is_named_with_line(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("=== optics ===\nmagnification = 30000\ndefocus_nominl = 3\n")
    with pytest.raises(InputError, match=r"in.txt:3: unknown key 'defocus_nominl' in component optics"):
        load_config(p)


def test_unknown_toml_key_is_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optics]\ndefocus_um = 1.0\n")
    with pytest.raises(InputError, match="unknown key 'defocus_um' in \\[optics\\]"):
        load_config(p)


def test_negative_dose_is_rejected_with_range(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[detector]\ndose_e_per_A2 = -1.0\n")
    with pytest.raises(InputError, match=r"Detector.dose_e_per_A2 = -1.0 is outside the allowed range \[0.0"):
        load_config(p)


def test_nan_parameter_is_rejected(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optics]\ncs_mm = nan\n")
    with pytest.raises(InputError, match="Optics.cs_mm must be finite"):
        load_config(p)


def test_mtf_outside_temsim_range_is_rejected(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[detector]\nmtf_p = 11.0\n")
    with pytest.raises(InputError, match=r"mtf_p = 11.0 is outside the allowed range \[0.0, 10.0\]"):
        load_config(p)


def test_dose_symmetric_order_starts_at_zero_and_alternates(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[geometry]\ntilt_start_deg = -6.0\ntilt_increment_deg = 3.0\ntilt_count = 5\n"
                 "order = \"dose-symmetric\"\n")
    assert load_config(p).geometry.tilt_angles_deg == (0.0, 3.0, -3.0, 6.0, -6.0)


def test_embedded_default_is_the_tmv_example():
    c = load_config(None)
    assert c.optics.voltage_kV == 200 and c.optics.defocus_u_A == 5e4
    assert c.detector.quantized and c.detector.dqe == 0.4 and c.detector.gain == 10
    assert len(c.particles) == 1 and c.particles[0].placement == "file"


# ------------------------------------------------- every declared field, from its declaration
from dataclasses import fields  # noqa: E402

from cutem import params as P  # noqa: E402
from cutem.config import TEMSIM_KEYS, from_dict, parse_temsim  # noqa: E402


def _declared():
    for section, cls in P.SECTIONS.items():
        for f in fields(cls):
            yield section, cls, f


def _as_toml(section, name, v):
    """A TOML-shaped config setting ``section.name`` to ``v`` (lists for per-tilt fields)."""
    if section == "geometry":
        per_tilt = name != "tilt_axis_deg"
        return {"geometry": {name: [v] if per_tilt else v}}
    if section == "particles":
        return {"particles": [{"structure": "x.pdb", "placement": "random", "count": 1, name: v}]}
    return {section: {name: v}}


def _just_outside(cls, f):
    """Values just outside each finite end of the declared range (the end itself where open)."""
    lo, hi = f.metadata["range"]
    op = f.metadata["open"] or ""
    integer = P.field_type(cls, f.name)[0] is int
    out = []
    for end, sign, is_open in ((lo, -1, op in ("lo", "both")), (hi, 1, op in ("hi", "both"))):
        if end is None:
            continue
        step = 1 if integer else 1e-6 * max(1.0, abs(end))
        out.append(end if is_open else end + sign * step)
    return out


RANGED = [(s, c, f, v) for s, c, f in _declared() if f.metadata["range"] for v in _just_outside(c, f)]


@pytest.mark.parametrize("section,cls,f,v", RANGED, ids=[f"{s}.{f.name}={v!r}" for s, _, f, v in RANGED])
def test_value_just_outside_a_declared_range_is_refused_naming_key_value_and_range(section, cls, f, v):
    with pytest.raises(InputError) as exc:
        from_dict(_as_toml(section, f.name, v))
    msg = str(exc.value)
    assert f.name in msg and repr(v) in msg and P.allowed(cls, f.name) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("section,cls,f,v", RANGED, ids=[f"{s}.{f.name}={v!r}" for s, _, f, v in RANGED])
def test_the_ends_of_a_declared_range_are_accepted_unless_open(section, cls, f, v):
    lo, hi = f.metadata["range"]
    end = lo if (lo is not None and v <= lo) else hi
    if v != end:   # a closed end: the end itself is inside
        value = (end,) if P.field_type(cls, f.name)[0] is tuple else end
        assert P.check_value(cls, f.name, value, f.name) == value


def _wrong_types(cls, f):
    base, _ = P.field_type(cls, f.name)
    if base is float:
        return [True, str(f.default), [1.0]]
    if base is int:
        return [True, str(f.default), float(f.default) + 0.5 if f.default is not None else 1.5, 64.0]
    if base is bool:
        return ["no", "true", 1, 0]
    if base is tuple:
        return ["abc", 5.0, [True]] if not f.metadata["width"] else ["abc", [[1.0, 2.0]], [["a", 1.0, 2.0]]]
    return [5, True, ["a"]]


TYPED = [(s, c, f, v) for s, c, f in _declared() for v in _wrong_types(c, f)]


@pytest.mark.parametrize("section,cls,f,v", TYPED, ids=[f"{s}.{f.name}={v!r}" for s, _, f, v in TYPED])
def test_value_of_the_wrong_type_is_refused_naming_the_key(section, cls, f, v):
    d = ({section: {"tilt_angles_deg": [0.0], f.name: v}} if section == "geometry" and f.name != "tilt_angles_deg"
         else _as_toml(section, f.name, v) if section != "geometry" else {"geometry": {f.name: v}})
    with pytest.raises(InputError) as exc:
        from_dict(d)
    assert f.name in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


@pytest.mark.parametrize("text", ['voltage_kV = "300"', "voltage_kV = true"])
def test_optics_refuses_a_string_or_boolean_voltage(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(f"[optics]\n{text}\n")
    with pytest.raises(InputError, match=r"^Optics.voltage_kV = .* must be a number in \[1.0, 3000.0\] kV$"):
        load_config(p)


def test_seed_true_and_quantized_no_are_refused(tmp_path):
    for text, key in (("seed = true\n", "seed = True"), ('[detector]\nquantized = "no"\n', "Detector.quantized")):
        p = tmp_path / "c.toml"
        p.write_text(text)
        with pytest.raises(InputError, match=key):
            load_config(p)


def test_integer_for_a_float_field_is_stored_as_float_and_round_trips(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("seed = 3\n[optics]\nvoltage_kV = 300\n[geometry]\ntilt_angles_deg = [0, 30]\n")
    c = load_config(p)
    assert type(c.optics.voltage_kV) is float and c.geometry.tilt_angles_deg == (0.0, 30.0)
    p.write_text(to_toml(c))
    assert load_config(p).optics == c.optics and load_config(p).seed == 3


def test_every_bounds_box_lies_inside_its_declared_range():
    for name, (lo, hi) in P.BOUNDS.items():
        section, key = name.split(".") if "." in name else (None, name)
        cls = P.SECTIONS[section] if section else next(c for c in P.SECTIONS.values() if key in c.__dataclass_fields__)
        for end in (lo, hi):
            if end is not None:
                assert P.in_range(cls, key, end), (name, end)
    assert P.bounds("mtf_p") == (0.0, 10.0) and P.bounds("detector.dqe") == (1e-3, 1.0)
    assert 0 < P.bounds("gain")[0] <= 1e-8
    with pytest.raises(InputError, match="no declared range for parameter 'mtf_z'"):
        P.bounds("mtf_z")


# ------------------------------------------------------------------ TEM-simulator key map
from validation.bad_inputs import TEMSIM_OK  # noqa: E402

TEM = [(s, c, f) for s, c, f in _declared() if f.metadata["tem"]]


def test_every_declared_tem_simulator_key_exists_in_tem_simulator():
    for _, _, f in TEM:
        comp, key = f.metadata["tem"].split(".")
        assert key in TEMSIM_KEYS[comp], f.metadata["tem"]


def _temsim_with(comp, key, value):
    """TEMSIM_OK (a valid input) with ``comp.key = value``; particles added where needed."""
    comps = {c: dict(kv) for c, _, kv in parse_temsim(TEMSIM_OK)}
    comps.setdefault("particle p", {}).update({"source": ("pdb", 0), "pdb_file_in": ("x.pdb", 0)})
    comps.setdefault("particleset", {}).update({"particle_type": ("p", 0), "num_particles": ("1", 0)})
    name = "particle p" if comp == "particle" else comp
    comps.setdefault(name, {})[key] = (value, 0)
    if key == "particle_conc":
        del comps["particleset"]["num_particles"]
    return "".join(f"=== {c} ===\n" + "".join(f"{k} = {v}\n" for k, (v, _) in kv.items())
                   for c, kv in comps.items())


def test_temsim_with_reproduces_the_valid_input(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text(_temsim_with("optics", "cs", "2.7"))
    c = load_temsim(p)
    assert c.optics.cs_mm == 2.7 and c.detector.pixel_size_A == pytest.approx(6e4 / 30000)
    assert c.particles[0].structure == str(tmp_path / "x.pdb")


TEM_OUT = [(s, c, f, v) for s, c, f in TEM if f.metadata["range"] for v in _just_outside(c, f)
           if not (v == 0 and P.field_type(c, f.name)[1])]   # TEM-simulator: 0 = none


@pytest.mark.parametrize("section,cls,f,v", TEM_OUT, ids=[f"{f.metadata['tem']}={v!r}" for _, _, f, v in TEM_OUT])
def test_tem_simulator_value_outside_the_range_is_refused_naming_line_and_key(tmp_path, section, cls, f, v):
    comp, key = f.metadata["tem"].split(".")
    integer = P.field_type(cls, f.name)[0] is int
    text = _temsim_with(comp, key, str(v) if integer else repr(v / f.metadata["tem_scale"]))
    p = tmp_path / "in.txt"
    p.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(f"{key} = "))
    # (the two defocus fields read one key: either may be the one named)
    pat = rf"^{p}:{line}: {comp}\.{key} = .*: {cls.__name__}\.\w+ = .* {re.escape(P.allowed(cls, f.name))}$"
    with pytest.raises(InputError, match=pat):
        load_temsim(p)


@pytest.mark.parametrize("comp,key,value,msg", [
    ("optics", "magnification", "0", "magnification = 0 must be > 0"),
    ("simulation", "rand_seed", "-1", "seed = -1 must be an integer"),
    ("detector", "use_quantization", "maybe", "use_quantization = 'maybe' must be yes or no"),
    ("detector", "det_pix_x", "64.5", "det_pix_x = '64.5' is not an integer"),
])
def test_bad_tem_simulator_values_are_refused_in_one_line(tmp_path, comp, key, value, msg):
    p = tmp_path / "in.txt"
    p.write_text(_temsim_with(comp, key, value))
    with pytest.raises(InputError, match=re.escape(msg)):
        load_temsim(p)
