"""Property-based tests over the config and parameter space (hypothesis).

- random valid configs (32-64 px, a few atoms) simulate without error: finite images of the
  right shape; the noise-free mean is gain · dose · pixel area · mean intensity, the mean
  intensity of a phase object (no absorption) lies in (0, 1]; the noisy mean is within 6σ of
  the noise-free one (σ from Poisson/Wald counts and readout noise);
- the vacuum (no particles, no ice): the noise-free image is gain · dose · pixel area in every
  pixel, within float32 rounding, whatever the optics and detector;
- random invalid configs (negative dose, NaN/inf anywhere, MTF outside TEM-simulator's ranges,
  out-of-range defocus/voltage/aperture, unknown keys in TOML tables or TEM-simulator
  components) raise InputError with the message naming the key and the range.

CI runs a bounded number of examples (``CUTEM_HYPOTHESIS_SCALE`` = 1); validation/hypothesis_many.py
runs the same suites with the scale raised.
"""
from __future__ import annotations

import math
import os
import re
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cutem.config import ParticleSpec, RunConfig, from_dict, parse_temsim
from cutem.errors import InputError
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from helpers import tiny_pdb

SCALE = float(os.environ.get("CUTEM_HYPOTHESIS_SCALE", "1"))


def n_examples(k):
    return max(1, int(round(k * SCALE)))


COMMON = dict(deadline=None, derandomize=SCALE == 1, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


def _tiny_pdb_text(n, seed):
    return tiny_pdb(n, seed, half_extent_A=5.0, b_factor=10.0, elements="CNOSP")


@pytest.fixture(scope="module")
def pdb_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("hyp") / "few.pdb"
    p.write_text(_tiny_pdb_text(8, 4))
    return str(p)


# ---------------------------------------------------------------------------- strategies
def fl(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def optics_st(draw):
    return Optics(voltage_kV=draw(st.sampled_from([80.0, 120.0, 200.0, 300.0])) + draw(fl(-5, 5)),
                  defocus_u_A=draw(fl(-3e4, 5e4)), defocus_v_A=draw(fl(-3e4, 5e4)),
                  astigmatism_angle_deg=draw(fl(-180, 180)), cs_mm=draw(fl(0, 4)), cc_mm=draw(fl(0, 4)),
                  energy_spread_eV=draw(fl(0, 2)), illumination_angle_mrad=draw(fl(0, 0.3)),
                  aperture_diameter_um=draw(st.none() | fl(10, 150)), focal_length_mm=draw(fl(1, 5)),
                  amplitude_contrast=draw(fl(0, 0.2)), phase_shift_deg=draw(fl(-90, 90)))


@st.composite
def detector_st(draw, quantized=None):
    a, b, c = draw(fl(0, 1)), draw(fl(0, 1)), draw(fl(0, 1))
    assume(a + b + c > 0.05)
    return Detector(nx=draw(st.integers(32, 64)), ny=draw(st.integers(32, 64)), pixel_size_A=draw(fl(1.0, 4.0)),
                    dose_e_per_A2=draw(fl(0.5, 100)),
                    quantized=draw(st.booleans()) if quantized is None else quantized,
                    dqe=draw(fl(0.1, 1.0)), mtf_a=a, mtf_b=b, mtf_c=c, mtf_alpha=draw(fl(0, 60)),
                    mtf_beta=draw(fl(0, 60)), mtf_p=draw(fl(0.2, 3)), mtf_q=draw(fl(0.2, 3)),
                    gain=draw(fl(0.2, 20)), readout_noise=draw(st.sampled_from([0.0, 0.0, 1.5])))


@st.composite
def valid_config_st(draw, structure):
    det = draw(detector_st())
    ice = draw(st.booleans())
    t = draw(fl(20, 300))
    sample = Sample(thickness_center_A=t, thickness_edge_A=t + draw(fl(0, 100)), ice=ice)
    method = draw(st.sampled_from(["projection", "multislice"]))
    sim = Simulation(method=method, slice_thickness_A=draw(fl(25, 80)), oversampling=draw(st.integers(1, 2)),
                     b_factor_A2=draw(fl(0, 50)))
    tilts = tuple(draw(st.lists(fl(-60, 60), min_size=1, max_size=2)))
    geometry = Geometry(tilt_angles_deg=tilts, tilt_axis_deg=draw(fl(-90, 90)))
    hx, hy = 0.5 * det.nx * det.pixel_size_A - 8, 0.5 * det.ny * det.pixel_size_A - 8
    k = draw(st.integers(0, 3))
    pos = tuple((draw(fl(-hx, hx)), draw(fl(-hy, hy)), draw(fl(-10, 10))) for _ in range(k))
    ori = tuple((draw(fl(0, 360)), draw(fl(0, 180)), draw(fl(0, 360))) for _ in range(k))
    parts = (ParticleSpec(name="few", structure=structure, placement="list", positions_A=pos,
                          orientations_deg=ori),) if k else ()
    return RunConfig(optics=draw(optics_st()), detector=det, sample=sample, simulation=sim, geometry=geometry,
                     particles=parts, seed=draw(st.integers(0, 2 ** 31)))


def _mean_intensity(cfg, scene, k):
    """Mean |ψ|² of tilt k on the detector grid: the image model's expected counts over dose × pixel area."""
    from cutem.imaging import ImageModel

    model = ImageModel.from_config(cfg, k, scene=scene, dtype=np.float64)
    n_bar = model.render(estimator="none").expected_counts
    return float(np.mean(n_bar)) / (model.detector.dose_e_per_A2 * model.detector.pixel_size_A ** 2)


# ------------------------------------------------------------------------ valid configs
@settings(max_examples=n_examples(12), **COMMON)
@given(data=st.data())
def test_random_valid_configs_give_finite_images_with_the_right_shape_and_mean(data, pdb_path):
    from cutem.pipeline import simulate
    from cutem.validate import preflight

    cfg = data.draw(valid_config_st(pdb_path))
    pre = preflight(cfg)
    res = simulate(cfg, scene=pre.scene)
    n, d = len(cfg.geometry.tilt_angles_deg), cfg.detector
    assert res.images.shape == res.noise_free.shape == (n, d.ny, d.nx)
    assert np.isfinite(res.images).all() and np.isfinite(res.noise_free).all()
    scale = d.gain * d.dose_e_per_A2 * d.pixel_size_A ** 2
    npix = d.nx * d.ny
    for k in range(n):
        mean_i = _mean_intensity(cfg, pre.scene, k)
        # a phase object without absorption: |exit wave| = 1, the lens only removes power
        assert 0.0 < mean_i <= 1.0 + 1e-6
        nf_mean = float(res.noise_free[k].astype(np.float64).mean())
        assert nf_mean == pytest.approx(scale * mean_i, rel=2e-5)
        # noisy mean: the MTF keeps the DC term, so it is gain × mean count (+ readout);
        # count variance N̄/dqe (Poisson then Wald), readout σ per pixel
        nbar = d.dose_e_per_A2 * d.pixel_size_A ** 2 * mean_i * npix
        var = (d.gain ** 2 * nbar / d.dqe if d.quantized else 0.0) + d.readout_noise ** 2 * npix
        sigma = math.sqrt(var) / npix
        assert abs(float(res.images[k].astype(np.float64).mean()) - nf_mean) <= 6 * sigma + 1e-5 * nf_mean


@settings(max_examples=n_examples(15), **COMMON)
@given(optics=optics_st(), det=detector_st(), method=st.sampled_from(["projection", "multislice"]),
       os_=st.integers(1, 2), tilt=fl(-70, 70), seed=st.integers(0, 2 ** 31))
def test_vacuum_noise_free_image_is_gain_dose_pixel_area_everywhere(optics, det, method, os_, tilt, seed):
    from cutem.pipeline import simulate

    cfg = RunConfig(optics=optics, detector=det, sample=Sample(ice=False),
                    simulation=Simulation(method=method, oversampling=os_),
                    geometry=Geometry(tilt_angles_deg=(tilt,)), seed=seed)
    res = simulate(cfg)
    expected = det.gain * det.dose_e_per_A2 * det.pixel_size_A ** 2
    nf = res.noise_free[0].astype(np.float64)
    assert nf.shape == (det.ny, det.nx)
    assert np.abs(nf - expected).max() <= 16 * np.finfo(np.float32).eps * expected


# ---------------------------------------------------------------------- invalid configs
#: numeric fields per table, with a value inside the range (to build valid dicts)
NUMERIC = {"optics": {f: getattr(Optics(), f) for f in ("voltage_kV", "defocus_u_A", "defocus_v_A",
                                                         "astigmatism_angle_deg", "cs_mm", "cc_mm",
                                                         "energy_spread_eV", "illumination_angle_mrad",
                                                         "focal_length_mm", "amplitude_contrast",
                                                         "phase_shift_deg")},
           "detector": {f: getattr(Detector(), f) for f in ("pixel_size_A", "dose_e_per_A2", "dqe", "mtf_a",
                                                             "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta", "mtf_p",
                                                             "mtf_q", "gain", "readout_noise")},
           "sample": {f: getattr(Sample(), f) for f in ("diameter_A", "thickness_center_A", "thickness_edge_A",
                                                         "offset_x_A", "offset_y_A", "ice_absorption")},
           "simulation": {f: getattr(Simulation(), f) for f in ("slice_thickness_A", "b_factor_A2", "absorption",
                                                                 "padding_A")}}
CLASS = {"optics": "Optics", "detector": "Detector", "sample": "Sample", "simulation": "Simulation"}
#: (table, field) → (lo, hi) allowed; values outside must be refused naming the range
RANGES = {("detector", "mtf_a"): (0.0, 1.0), ("detector", "mtf_b"): (0.0, 1.0), ("detector", "mtf_c"): (0.0, 1.0),
          ("detector", "mtf_p"): (0.0, 10.0), ("detector", "mtf_q"): (0.0, 10.0),
          ("detector", "dose_e_per_A2"): (0.0, 1e5), ("detector", "pixel_size_A"): (0.0, 1000.0),
          ("detector", "gain"): (0.0, 1e6), ("optics", "defocus_u_A"): (-2e5, 2e5),
          ("optics", "defocus_v_A"): (-2e5, 2e5), ("optics", "voltage_kV"): (1.0, 3000.0),
          ("optics", "aperture_diameter_um"): (0.0, 1000.0), ("optics", "cs_mm"): (0.0, 20.0),
          ("sample", "thickness_center_A"): (0.0, 1e5), ("sample", "thickness_edge_A"): (0.0, 1e5)}
OPEN_LOW = {("detector", "pixel_size_A"), ("detector", "gain"), ("optics", "aperture_diameter_um")}


def _fmt(x):
    return f"{x:g}"


@settings(max_examples=n_examples(60), **COMMON)
@given(table=st.sampled_from(sorted(NUMERIC)), data=st.data(),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_value_anywhere_is_refused_naming_the_field(table, data, bad):
    key = data.draw(st.sampled_from(sorted(NUMERIC[table])))
    with pytest.raises(InputError, match=rf"^{CLASS[table]}\.{key} must be finite, got "):
        from_dict({table: {key: bad}})


@settings(max_examples=n_examples(80), **COMMON)
@given(data=st.data())
def test_out_of_range_value_is_refused_with_the_allowed_range(data):
    table, key = data.draw(st.sampled_from(sorted(RANGES)))
    lo, hi = RANGES[(table, key)]
    below = fl(lo - 1e6, lo) if (table, key) in OPEN_LOW else fl(lo - 1e6, lo).filter(lambda x: x < lo)
    v = data.draw(below | fl(hi, hi + 1e6).filter(lambda x: x > hi))
    with pytest.raises(InputError) as exc:
        from_dict({table: {key: v}})
    msg = str(exc.value)
    assert msg.startswith(f"{CLASS[table]}.{key} = {v} is outside the allowed range"), msg
    assert f"{lo}, {hi}]" in msg and "\n" not in msg


@settings(max_examples=n_examples(40), **COMMON)
@given(dose=fl(-1e6, -1e-9))
def test_negative_dose_is_refused(dose):
    with pytest.raises(InputError, match=re.escape(f"Detector.dose_e_per_A2 = {dose} is outside the allowed range")):
        from_dict({"detector": {"dose_e_per_A2": dose}})


IDENT = st.text(string.ascii_lowercase + "_", min_size=1, max_size=14)


@settings(max_examples=n_examples(60), **COMMON)
@given(table=st.sampled_from(sorted(NUMERIC) + ["geometry", "particles", "top"]), key=IDENT, value=fl(-10, 10))
def test_unknown_toml_key_is_named(table, key, value):
    from dataclasses import fields

    known = {"top": {"seed", "output", "optics", "detector", "sample", "geometry", "simulation", "particles",
                     "cutem_version"},
             "geometry": {"tilt_angles_deg", "tilt_start_deg", "tilt_increment_deg", "tilt_count", "order",
                          "tilt_axis_deg", "dose_weights", "defocus_offsets_A"},
             "particles": {f.name for f in fields(ParticleSpec)}}
    cls = {"optics": Optics, "detector": Detector, "sample": Sample, "simulation": Simulation}
    names = known.get(table) or {f.name for f in fields(cls[table])}
    assume(key not in names)
    if table == "top":
        d, pat = {key: value}, rf"unknown key '{key}' at the top level"
    elif table == "particles":
        d, pat = {"particles": [{"structure": "x.pdb", "placement": "random", "count": 1, key: value}]}, \
            rf"unknown key '{key}' in \[\[particles\]\] #1"
    else:
        d, pat = {table: {key: value}}, rf"unknown key '{key}' in \[{table}\]"
    with pytest.raises(InputError, match=pat):
        from_dict(d)


TEMSIM_COMPONENTS = ["simulation", "sample", "particle", "particleset", "geometry", "electronbeam", "optics",
                     "detector"]


@settings(max_examples=n_examples(60), **COMMON)
@given(comp=st.sampled_from(TEMSIM_COMPONENTS), key=IDENT, pre=st.integers(0, 5))
def test_unknown_temsim_key_is_named_with_its_line(comp, key, pre):
    from cutem.config import TEMSIM_KEYS

    assume(key not in TEMSIM_KEYS[comp])
    text = "\n" * pre + f"=== {comp} ===\n# a comment\n{key} = 1\n"
    with pytest.raises(InputError, match=rf"^in\.txt:{pre + 3}: unknown key '{key}' in component {comp} "):
        parse_temsim(text, "in.txt")


@settings(max_examples=n_examples(40), **COMMON)
@given(a=fl(-5, 5), b=fl(-5, 5), c=fl(-5, 5), p=fl(-20, 20), q=fl(-20, 20))
def test_mtf_parameters_accepted_exactly_in_tem_simulator_ranges(a, b, c, p, q):
    ok = all(0 <= x <= 1 for x in (a, b, c)) and a + b + c > 0 and 0 <= p <= 10 and 0 <= q <= 10
    kw = dict(mtf_a=a, mtf_b=b, mtf_c=c, mtf_p=p, mtf_q=q)
    if ok:
        Detector(**kw)
    else:
        with pytest.raises(InputError, match=r"^Detector\.mtf_"):
            Detector(**kw)
