"""Reproducibility: the same config and seed give bit-identical files; the resolved parameter
file written with each output reproduces it; NumPy and CuPy agree within float32 rounding."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from cutem.config import ParticleSpec, RunConfig, load_config
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from helpers import tiny_pdb as _tiny_pdb

CUTEM = shutil.which("cutem")
needs_cli = pytest.mark.skipif(CUTEM is None, reason="the cutem console script is not installed")

OUTPUTS = ["rep.mrc", "rep_noisefree.mrc", "rep.tlt", "rep.png"]


def tiny_pdb(n=16, seed=2):
    return _tiny_pdb(n, seed, half_extent_A=7.0, b_factor=15.0)


CONFIG = """seed = 5
output = "rep"
[optics]
voltage_kV = 300.0
defocus_u_A = 12000.0
defocus_v_A = 10000.0
astigmatism_angle_deg = 30.0
energy_spread_eV = 0.8
illumination_angle_mrad = 0.05
[detector]
nx = 64
ny = 48
pixel_size_A = 1.5
dose_e_per_A2 = 30.0
dqe = 0.7
mtf_a = 0.6
mtf_b = 0.3
mtf_c = 0.1
mtf_alpha = 8.0
mtf_beta = 30.0
gain = 3.0
readout_noise = 0.5
[sample]
thickness_center_A = 150.0
thickness_edge_A = 150.0
[simulation]
oversampling = 2
[geometry]
tilt_angles_deg = [0.0, 20.0, -20.0]
[[particles]]
name = "a"
structure = "tiny.pdb"
placement = "list"
positions_A = [[0.0, 0.0, 0.0], [25.0, 10.0, -10.0]]
orientations_deg = [[0.0, 0.0, 0.0], [30.0, 60.0, 90.0]]
[[particles]]
name = "b"
structure = "tiny.pdb"
placement = "random"
count = 2
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("repro")
    (d / "tiny.pdb").write_text(tiny_pdb())
    (d / "rep.toml").write_text(CONFIG)
    return d


def _run(*args, cwd):
    r = subprocess.run([CUTEM, "simulate", *map(str, args), "-q"], cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@needs_cli
def test_same_config_and_seed_give_bit_identical_files(workdir):
    _run("rep.toml", "--out", "a", cwd=workdir)
    _run("rep.toml", "--out", "b", cwd=workdir)
    for f in OUTPUTS + ["rep_params.toml"]:
        assert (workdir / "a" / f).read_bytes() == (workdir / "b" / f).read_bytes(), f
    # and the run is not trivially constant: the noisy image has shot noise
    import mrcfile

    with mrcfile.open(workdir / "a" / "rep.mrc") as m:
        img = np.array(m.data)
    assert img.shape == (3, 48, 64) and img.std() > 1.0


@needs_cli
def test_resolved_parameter_file_reproduces_the_run(workdir):
    if not (workdir / "a" / "rep_params.toml").exists():
        _run("rep.toml", "--out", "a", cwd=workdir)
    # fed back from another folder: every path in it is absolute
    other = workdir / "elsewhere"
    other.mkdir(exist_ok=True)
    _run(workdir / "a" / "rep_params.toml", "--out", "c", cwd=other)
    for f in OUTPUTS:
        assert (other / "c" / f).read_bytes() == (workdir / "a" / f).read_bytes(), f
    # the resolved file of the repeat is the same parameter set (the "# from:" line differs)
    strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("# from:")]  # noqa: E731
    assert strip((other / "c" / "rep_params.toml").read_text()) == strip((workdir / "a" / "rep_params.toml")
                                                                         .read_text())


@needs_cli
def test_another_seed_changes_the_noise_and_the_random_placement_only(workdir):
    import mrcfile

    _run("rep.toml", "--out", "s6", "--seed", "6", cwd=workdir)
    if not (workdir / "a" / "rep.mrc").exists():
        _run("rep.toml", "--out", "a", cwd=workdir)
    with mrcfile.open(workdir / "a" / "rep.mrc") as m5, mrcfile.open(workdir / "s6" / "rep.mrc") as m6:
        assert not np.array_equal(m5.data, m6.data)
    cfg = load_config(workdir / "s6" / "rep_params.toml")
    assert cfg.seed == 6


def _small_cfg(particles, dtype="float32"):
    return RunConfig(optics=Optics(defocus_u_A=15000.0, defocus_v_A=14000.0, energy_spread_eV=0.7,
                                   illumination_angle_mrad=0.05),
                     detector=Detector(nx=48, ny=48, pixel_size_A=2.0, dose_e_per_A2=20.0, mtf_a=0.7, mtf_b=0.2,
                                       mtf_c=0.1, mtf_alpha=10.0, mtf_beta=40.0, gain=2.0),
                     sample=Sample(thickness_center_A=120.0, thickness_edge_A=160.0),
                     simulation=Simulation(oversampling=2, dtype=dtype, method="multislice", slice_thickness_A=30.0),
                     geometry=Geometry(tilt_angles_deg=(0.0, 30.0)), particles=particles, seed=9)


def test_library_simulation_is_deterministic_in_process(tmp_path):
    from cutem.pipeline import simulate

    (tmp_path / "t.pdb").write_text(tiny_pdb())
    parts = (ParticleSpec(name="p", structure=str(tmp_path / "t.pdb"), placement="random", count=3),)
    cfg = _small_cfg(parts)
    r1, r2 = simulate(cfg), simulate(cfg)
    assert np.array_equal(r1.images, r2.images) and np.array_equal(r1.noise_free, r2.noise_free)
    # tilt k's noise does not depend on which tilts ran before it (resume by tilt)
    r3 = simulate(cfg, done={0: (r1.images[0], r1.noise_free[0])})
    assert np.array_equal(r3.images[1], r1.images[1])


@pytest.mark.gpu
def test_numpy_and_cupy_noise_free_images_agree_within_float32_rounding(tmp_path):
    from cutem.pipeline import simulate

    (tmp_path / "t.pdb").write_text(tiny_pdb())
    parts = (ParticleSpec(name="p", structure=str(tmp_path / "t.pdb"), placement="list",
                          positions_A=((0.0, 0.0, 0.0), (20.0, -15.0, 10.0))),)
    cfg = _small_cfg(parts)
    cpu = simulate(cfg, device="cpu").noise_free
    gpu = simulate(cfg, device="gpu").noise_free
    ref = simulate(cfg.replace(simulation=cfg.simulation.replace(dtype="float64")), device="cpu").noise_free
    scale = float(np.abs(ref).max())
    eps = np.finfo(np.float32).eps
    # each float32 backend is within 64 ulps (of the image maximum) of the float64 result (9 measured
    # on the CPU; FFT rounding grows with log N, the grid is 96 px), and the backends agree as closely
    assert np.abs(cpu - ref).max() <= 64 * eps * scale
    assert np.abs(gpu - ref).max() <= 64 * eps * scale
    assert np.abs(gpu - cpu).max() <= 64 * eps * scale
