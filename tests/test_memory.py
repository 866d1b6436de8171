"""Memory plan: estimate vs measured peak, refusal naming a setting that fits, atom chunking."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cutem import memory as M
from cutem import pipeline as P
from cutem.config import from_dict
from cutem.errors import InputError
from cutem.params import Geometry

DATA = Path(__file__).resolve().parents[1] / "cutem" / "data" / "tmv"


def _cfg(n=256, px=2.0, method="projection", oversampling=1, ice=True, count=1):
    return from_dict({
        "seed": 3, "output": "m",
        "optics": {"voltage_kV": 300.0, "defocus_u_A": 15000.0, "defocus_v_A": 15000.0},
        "detector": {"nx": n, "ny": n, "pixel_size_A": px, "dose_e_per_A2": 30.0},
        "sample": {"diameter_A": 1e5, "thickness_center_A": 300.0, "thickness_edge_A": 300.0, "ice": ice},
        "simulation": {"method": method, "oversampling": oversampling, "slice_thickness_A": 20.0},
        "geometry": {"tilt_angles_deg": [0.0]},
        "particles": [{"name": "TMV", "structure": str(DATA / "2OM3_model1.pdb"),
                       "transforms": str(DATA / "2OM3_transf.txt"), "placement": "random", "count": count}],
    })


CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.test_memory import _cfg
from cutem import memory as M, pipeline as P
kw = json.loads(sys.argv[2])
cfg = _cfg(**kw)
_, peak = M.measure_peak(lambda: P.simulate(cfg))
est = M.estimate(cfg, P.build_scene(cfg), "cpu")
print(json.dumps({"peak": peak, "estimate": est.peak}))
"""


@pytest.mark.parametrize("kw", [{"n": 1024, "px": 1.0, "ice": False},
                                {"n": 512, "px": 1.0, "method": "multislice", "ice": True}])
def test_estimate_is_within_25_percent_of_the_measured_peak(kw):
    # a fresh interpreter: caches filled by other tests would hide allocations
    r = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).resolve().parents[1]), json.dumps(kw)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["peak"] > 20e6
    assert abs(d["estimate"] / d["peak"] - 1) < 0.25, d


def test_estimate_grows_with_grid_slices_and_atoms():
    base = M.estimate(_cfg(), 10_000, "cpu")
    assert M.estimate(_cfg(oversampling=2), 10_000, "cpu").peak > 2.5 * base.peak
    ms = M.estimate(_cfg(method="multislice"), 10_000, "cpu")
    # 300 Å of ice (±150 Å, padded 1 Å) in 20 Å slices on the lattice z = 20k Å: [−160, 160)
    assert ms.n_slices == 16 and ms.peak > base.peak
    # the plan counts the slices its image model cuts, at the run's steepest tilt
    from cutem.imaging import ImageModel

    tilted = _cfg(method="multislice").replace(geometry=Geometry(tilt_angles_deg=(0.0, 60.0)))
    scene = P.build_scene(tilted)
    want = max(ImageModel.from_config(tilted, k, scene=scene).n_slices for k in range(2))
    assert M.estimate(tilted, scene, "cpu").n_slices == want > 30  # 300 Å / cos 60° and the tilted field


def test_refusal_is_one_line_and_names_a_setting_that_fits(monkeypatch):
    cfg = _cfg(n=256, oversampling=3)
    n = 62671
    need1 = M.estimate(cfg.replace(simulation=cfg.simulation.replace(oversampling=1)), n, "cpu").peak
    need2 = M.estimate(cfg.replace(simulation=cfg.simulation.replace(oversampling=2)), n, "cpu").peak
    limit = (need1 + need2) // 2
    with pytest.raises(InputError) as e:
        M.check(cfg, n, "cpu", available=limit)
    msg = str(e.value)
    assert "\n" not in msg and "exceeds" in msg
    assert "simulation.oversampling = 1 would fit" in msg
    # through simulate: the same refusal before any work (env override of the free memory)
    monkeypatch.setenv(M.LIMIT_ENV, str(limit))
    with pytest.raises(InputError, match="simulation.oversampling = 1 would fit"):
        P.simulate(cfg)
    ms = _cfg(n=256, method="multislice")
    e1 = M.estimate(ms, n, "cpu").peak
    thick = ms.replace(simulation=ms.simulation.replace(slice_thickness_A=40.0))
    with pytest.raises(InputError, match="slice_thickness_A = 40 would fit"):
        M.check(ms, n, "cpu", available=(e1 + M.estimate(thick, n, "cpu").peak) // 2)


def test_atom_chunks_add_up_to_the_one_call_potential():
    from cutem.imaging import ImageModel

    cfg = _cfg(n=96, px=3.0, method="multislice")
    cfg = cfg.replace(simulation=cfg.simulation.replace(dtype="float64", slice_thickness_A=40.0))
    scene = P.build_scene(cfg)
    full, _ = ImageModel.from_config(cfg, scene=scene).potential()
    parts, _ = ImageModel.from_config(cfg, scene=scene, atom_chunk=10_000).potential()
    assert scene.n_atoms > 3 * 10_000 and full.shape == parts.shape and full.shape[0] >= 8
    assert np.abs(parts - full).max() < 1e-9 * np.abs(full).max()


def test_simulate_chunks_atoms_when_only_they_do_not_fit(monkeypatch):
    cfg = _cfg(n=128, px=4.0, count=2)
    scene = P.build_scene(cfg)
    est = M.estimate(cfg, scene, "cpu")
    one = M.estimate(cfg, scene, "cpu", atom_chunk=1)
    budget = one.peak + (est.peak - one.peak) // 3
    plan = M.check(cfg, scene, "cpu", available=budget)
    assert 10_000 <= plan.atom_chunk < scene.n_atoms and plan.peak <= budget
    ref = P.simulate(cfg)
    monkeypatch.setenv(M.LIMIT_ENV, str(budget))
    got = P.simulate(cfg)
    assert np.abs(got.noise_free - ref.noise_free).max() <= 1e-4 * np.abs(ref.noise_free).max()


def test_free_memory_and_sizes(monkeypatch):
    monkeypatch.delenv(M.LIMIT_ENV, raising=False)
    assert M.available_bytes("cpu") > 10 * 2 ** 20
    assert M.parse_bytes("1.5G") == int(1.5 * 2 ** 30) and M.parse_bytes("200M") == 200 * 2 ** 20
    assert M.parse_bytes("4096") == 4096
    with pytest.raises(InputError):
        M.parse_bytes("lots")
    scene = P.build_scene(_cfg())
    # TMV: every atom has B = 90 Å²: one exact Gaussian, one group per element
    assert M.kernel_groups(scene, _cfg()) == len(scene._static_arrays()[0])


GRAD_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.test_memory import _cfg
from adjoints import ops
from cutem import memory as M, pipeline as P
kw, wrt = json.loads(sys.argv[2]), sys.argv[3].split(",")
cfg = _cfg(**kw)
scene = P.build_scene(cfg)
loss = lambda im: ops.mean(ops.square(im - 1.0))
_, peak = M.measure_peak(lambda: P.value_and_grad_image(cfg, loss, wrt, scene=scene))
est = M.estimate(cfg, scene, "cpu", gradient=wrt)
print(json.dumps({"peak": peak, "estimate": est.peak}))
"""


@pytest.mark.parametrize("kw,wrt", [({"n": 512, "px": 1.0, "ice": False}, "positions"),
                                    ({"n": 512, "px": 1.0, "ice": False}, "defocus_u_A,mtf_a"),
                                    ({"n": 256, "px": 1.0, "method": "multislice", "ice": True}, "positions,b_factors")])
def test_gradient_peak_is_within_the_estimate(kw, wrt):
    # a fresh interpreter (cold caches: the first gradient of a process is its largest)
    r = subprocess.run([sys.executable, "-c", GRAD_CHILD, str(Path(__file__).resolve().parents[1]), json.dumps(kw),
                        wrt], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["peak"] > 10e6
    assert d["peak"] <= d["estimate"] < 1.6 * d["peak"], d


def test_a_4096_positions_gradient_that_cannot_fit_is_refused_before_it_starts(monkeypatch):
    cfg = _cfg(n=4096, px=1.0, ice=False, count=30)
    scene = P.build_scene(cfg)
    est = M.estimate(cfg, scene, "cpu", gradient=("positions",))
    fwd = M.estimate(cfg, scene, "cpu")
    assert est.phases["backward"] > fwd.peak          # the backward is the gradient's peak
    # room for the simulation but not for the gradient
    monkeypatch.setenv(M.LIMIT_ENV, str(int(fwd.peak * 1.05)))
    assert M.check(cfg, scene, "cpu").peak <= fwd.peak * 1.05
    calls = []
    monkeypatch.setattr(P.ImageModel, "from_config", classmethod(lambda *a, **k: calls.append(1)))
    with pytest.raises(InputError) as e:
        P.value_and_grad_image(cfg, lambda im: im, ["positions"], scene=scene)
    msg = str(e.value)
    assert "\n" not in msg and "gradient for positions" in msg and "exceeds" in msg
    assert not calls                                   # refused before the model was built
