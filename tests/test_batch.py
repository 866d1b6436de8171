"""Batch generation: per-item seeds and parameters, manifest, resume, kill, distributed path."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cutem import batch as Bt
from cutem.config import load_config
from cutem.errors import InputError

CUTEM = shutil.which("cutem")
DATA = Path(__file__).resolve().parents[1] / "cutem" / "data" / "tmv"

TOML = f"""
seed = 0
output = "m"
[optics]
voltage_kV = 300.0
defocus_u_A = 15000.0
defocus_v_A = 14000.0
[detector]
nx = 32
ny = 32
pixel_size_A = 10.0
dose_e_per_A2 = 20.0
[sample]
diameter_A = 20000.0
thickness_center_A = 300.0
thickness_edge_A = 450.0
[geometry]
tilt_angles_deg = [0.0]
[[particles]]
name = "TMV"
structure = "{DATA / '2OM3_model1.pdb'}"
transforms = "{DATA / '2OM3_transf.txt'}"
placement = "random"
count = 1
"""


@pytest.fixture
def base(tmp_path):
    p = tmp_path / "base.toml"
    p.write_text(TOML)
    return p


def test_item_parameters_are_in_range_and_do_not_depend_on_the_batch_size(base):
    cfg = load_config(base)
    ranges = {"particles": (1, 3), "defocus_A": (1e4, 2e4), "dose_e_per_A2": (10, 30), "ice_thickness_A": (250, 400)}
    a = Bt.items_from_ranges(cfg, 5, 7, ranges)
    b = Bt.items_from_ranges(cfg, 9, 7, dict(reversed(list(ranges.items()))))
    for x, y in zip(a, b):
        assert x.seed == y.seed and x.params == y.params
    assert len({it.seed for it in b}) == 9
    assert Bt.items_from_ranges(cfg, 1, 8, ranges)[0].seed != a[0].seed
    for it in b:
        p = it.params
        assert 1 <= p["particles"] <= 3 and isinstance(p["particles"], int)
        assert 1e4 <= p["defocus_A"] <= 2e4 and 10 <= p["dose_e_per_A2"] <= 30
        c = it.config
        # astigmatism of the base (1000 Å) kept around the drawn mean defocus
        assert c.optics.defocus_u_A - c.optics.defocus_v_A == pytest.approx(1000.0)
        assert 0.5 * (c.optics.defocus_u_A + c.optics.defocus_v_A) == pytest.approx(p["defocus_A"])
        assert c.detector.dose_e_per_A2 == p["dose_e_per_A2"]
        assert c.sample.thickness_center_A == p["ice_thickness_A"]
        assert c.sample.thickness_edge_A == pytest.approx(1.5 * p["ice_thickness_A"])
        assert c.particles[0].count == p["particles"] and c.particles[0].placement == "random"
        assert c.seed == it.seed and c.output == f"m_{it.index:05d}"
    counts = {it.params["particles"] for it in Bt.items_from_ranges(cfg, 40, 1, ranges)}
    assert counts == {1, 2, 3}


def test_table_rows_set_the_named_fields(base, tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("item,defocus_A,detector.dose_e_per_A2,optics.cs_mm,seed\n0,12000,5.5,1.2,42\n1,30000,7,2.7,43\n")
    items = Bt.items_from_table(load_config(base), t, 0)
    assert [it.seed for it in items] == [42, 43]
    assert items[1].config.detector.dose_e_per_A2 == 7.0
    assert items[0].config.optics.cs_mm == 1.2
    # a field whose default is none is typed by its declaration, not by its default
    opt = tmp_path / "opt.csv"
    opt.write_text("optics.aperture_diameter_um,detector.quantized\n40,no\n")
    (it,) = Bt.items_from_table(load_config(base), opt, 0)
    assert it.config.optics.aperture_diameter_um == 40.0 and it.config.detector.quantized is False
    bad = tmp_path / "bad.csv"
    bad.write_text("optics.nothing\n1\n")
    with pytest.raises(InputError, match=r"bad.csv:2: optics has no field 'nothing'"):
        Bt.items_from_table(load_config(base), bad, 0)
    bad.write_text("particles\n0\n")
    with pytest.raises(InputError, match="particles"):
        Bt.items_from_table(load_config(base), bad, 0)
    with pytest.raises(InputError, match="LO <= HI"):
        Bt.parse_range("5:1", "dose")


def _mtimes(out, names):
    return {n: (out / n).stat().st_mtime_ns for n in names}


def test_batch_writes_manifest_and_resume_skips_complete_items(base, tmp_path):
    cfg = load_config(base)
    items = Bt.items_from_ranges(cfg, 3, 5, {"defocus_A": (1e4, 2e4)})
    out = tmp_path / "o"
    r = Bt.run_batch(items, out, scheduler="sync", progress=False)
    assert (r.done, r.skipped) == (3, 0)
    rows = Bt.read_manifest(out)
    assert [rows[i]["status"] for i in range(3)] == ["done"] * 3
    assert rows[1]["seed"] == str(items[1].seed) and float(rows[1]["defocus_A"]) == items[1].params["defocus_A"]
    names = [f"m_{i:05d}.mrc" for i in range(3)]
    before = _mtimes(out, names)
    # an item whose output went missing is redone; the others are skipped untouched
    (out / "m_00001_noisefree.mrc").unlink()
    r = Bt.run_batch(items, out, scheduler="threads", workers=2, progress=False)
    assert (r.done, r.skipped) == (1, 2)
    after = _mtimes(out, names)
    assert after["m_00000.mrc"] == before["m_00000.mrc"] and after["m_00002.mrc"] == before["m_00002.mrc"]
    # the same item simulated again gives the same image (its seed is its own)
    with mrcfile.open(out / "m_00001.mrc") as m:
        img = m.data.copy()
    Bt.run_batch(Bt.items_from_ranges(cfg, 2, 5, {"defocus_A": (1e4, 2e4)})[1:], tmp_path / "o2",
                 scheduler="sync", progress=False)
    with mrcfile.open(tmp_path / "o2" / "m_00001.mrc") as m:
        assert np.array_equal(m.data, img)
    # a different batch seed changes the items: nothing is skipped
    r = Bt.run_batch(Bt.items_from_ranges(cfg, 3, 6, {"defocus_A": (1e4, 2e4)}), out, scheduler="sync",
                     progress=False)
    assert (r.done, r.skipped) == (3, 0)


def _manifest_done(out):
    try:
        return {int(r["item"]) for r in csv.DictReader(open(out / "manifest.csv")) if r["status"] == "done"}
    except (OSError, KeyError, ValueError):
        return set()


def _files_done(out):
    """Items whose params file (an item's last output) exists."""
    return {int(f.name[2:7]) for f in out.glob("m_*_params.toml")}


@pytest.mark.skipif(CUTEM is None, reason="the cutem console script is not installed")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_batch_leaves_no_partial_files_and_resumes(base, tmp_path, sig):
    out = tmp_path / "k"
    n = 20
    cmd = [CUTEM, "simulate-batch", str(base), "--out", str(out), "-n", str(n),
           "--defocus", "10000:20000", "--scheduler", "sync", "-q"]
    env = {**os.environ, "CUTEM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while len(_files_done(out)) < 3 and time.time() - t0 < 60 and p.poll() is None:
            time.sleep(0.02)
        assert p.poll() is None, "the batch finished before it could be killed"
        os.kill(p.pid, sig)
        p.wait(30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    done = _files_done(out)
    assert 3 <= len(done) < n
    assert _manifest_done(out) <= done  # the manifest may lag behind the files, never run ahead
    # every file under a final name is complete
    for f in out.glob("m_*.mrc"):
        with mrcfile.open(f) as m:
            assert m.data.shape == (32, 32) and np.isfinite(m.data).all()
    before = _mtimes(out, [f"m_{i:05d}.mrc" for i in done])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _manifest_done(out) == set(range(n))
    assert _mtimes(out, [f"m_{i:05d}.mrc" for i in done]) == before  # finished items not redone
    assert not [f for f in out.iterdir() if f.name.startswith(".")]


@pytest.mark.skipif(CUTEM is None, reason="the cutem console script is not installed")
def test_process_scheduler_and_cli_table(base, tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("defocus_A,ice_thickness_A\n12000,300\n18000,350.5\n")
    out = tmp_path / "p"
    r = subprocess.run([CUTEM, "simulate-batch", str(base), "--out", str(out), "--table",
                        str(t), "--workers", "2", "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = Bt.read_manifest(out)
    assert float(rows[1]["ice_thickness_A"]) == 350.5 and rows[1]["status"] == "done"
    r = subprocess.run([CUTEM, "simulate-batch", str(base), "--out", str(out), "--table",
                        str(t), "--count", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "either --table" in r.stderr


def test_distributed_local_cluster_on_loopback(base, tmp_path):
    distributed = pytest.importorskip("distributed")
    cfg = load_config(base)
    items = Bt.items_from_ranges(cfg, 3, 2, {"dose_e_per_A2": (5, 10)})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1",
                                  protocol="tcp", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        r = Bt.run_batch(items, tmp_path / "d", scheduler=cluster.scheduler_address, progress=False)
    assert (r.done, r.skipped) == (3, 0)
    rows = Bt.read_manifest(tmp_path / "d")
    assert all(rows[i]["status"] == "done" for i in range(3))
    # the distributed result equals the local one item for item
    Bt.run_batch(items[2:], tmp_path / "s", scheduler="sync", progress=False)
    with mrcfile.open(tmp_path / "d" / "m_00002.mrc") as a, mrcfile.open(tmp_path / "s" / "m_00002.mrc") as b:
        assert np.array_equal(a.data, b.data)


def test_process_workers_run_their_share_of_fft_threads_and_one_blas_thread(base, tmp_path, engine_threads):
    # a task's share of the cores is its FFT threads and its thread pool; BLAS threads left at
    # all cores spin after each call and take the other worker's core
    if Bt._cores() < 2:
        pytest.skip("needs 2 cores")
    items = Bt.items_from_ranges(load_config(base), 4, 3, {"dose_e_per_A2": (5, 10)})
    engine_threads(None)  # as when CUTEM_THREADS is unset: the batch shares the cores out
    r = Bt.run_batch(items, tmp_path / "p", scheduler="processes", workers=2, progress=False)
    assert r.done == 4 and set(r.tasks) == {0, 1, 2, 3}
    assert os.getpid() not in r.workers and 1 <= len(r.workers) <= 2
    for fft, blas in r.workers.values():
        assert fft == Bt._cores() // 2
        assert blas and all(b == 1 for b in blas)
    assert all(t["cpu_seconds"] > 0 for t in r.tasks.values())


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_tasks_in_the_driver_run_one_blas_thread_and_its_setting_comes_back(base, tmp_path, scheduler):
    import cutem.run  # noqa: F401  (loads SciPy's OpenBLAS too)

    before = Bt.blas_threads()
    if not before:
        pytest.skip("no OpenBLAS loaded (another BLAS or not Linux)")
    old = Bt.set_blas_threads(3)
    try:
        assert Bt.blas_threads() == [3] * len(before)
        items = Bt.items_from_ranges(load_config(base), 2, 3, {"dose_e_per_A2": (5, 10)})
        r = Bt.run_batch(items, tmp_path / "t", scheduler=scheduler, workers=2, progress=False)
        assert r.done == 2 and set(r.workers) == {os.getpid()}
        for t in r.tasks.values():
            assert t["blas_threads"] == [1] * len(before)
        assert Bt.blas_threads() == [3] * len(before)
    finally:
        Bt.set_blas_threads(old)
    assert Bt.blas_threads() == before


def _pool_answer(_):
    import adjoints.backend as B

    return B.pool().submit(int, "7").result(timeout=10)


def test_forked_worker_gets_a_working_thread_pool(engine_threads):
    # the parent's pool object survives fork without its threads; with the same thread count the
    # child would reuse it and wait for ever (batch drops it in the child)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import adjoints.backend as B

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    engine_threads(2)
    assert B.pool().submit(int, "5").result(timeout=10) == 5
    with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
        assert ex.submit(_pool_answer, 0).result(timeout=30) == 7


def test_items_finished_but_not_in_the_manifest_are_not_redone(base, tmp_path):
    # a driver killed between a worker's last file and its manifest row: the item's own
    # params file (written last) proves it complete
    cfg = load_config(base)
    items = Bt.items_from_ranges(cfg, 3, 4, {"defocus_A": (1e4, 2e4)})
    out = tmp_path / "o"
    Bt.run_batch(items, out, scheduler="sync", progress=False)
    names = [f"m_{i:05d}.mrc" for i in range(3)]
    before = _mtimes(out, names)
    (out / "manifest.csv").unlink()
    r = Bt.run_batch(items, out, scheduler="sync", progress=False)
    assert (r.done, r.skipped) == (0, 3)
    assert _mtimes(out, names) == before
    assert all(row["status"] == "done" for row in Bt.read_manifest(out).values())
    # an item whose params file is not its resolved config (half-finished, or another config)
    # is recomputed, and so is every item after a change of a base field that is not varied
    (out / "m_00001_params.toml").write_text("seed = 1\n")
    r = Bt.run_batch(items, out, scheduler="sync", progress=False)
    assert (r.done, r.skipped) == (1, 2)
    other = Bt.items_from_ranges(cfg.replace(detector=cfg.detector.replace(dose_e_per_A2=25.0)), 3, 4,
                                 {"defocus_A": (1e4, 2e4)})
    r = Bt.run_batch(other, out, scheduler="sync", progress=False)
    assert (r.done, r.skipped) == (3, 0)


def test_params_file_is_the_last_output_written(base, tmp_path):
    # is_complete relies on run_simulation writing NAME_params.toml after every other output
    from cutem.run import output_paths

    items = Bt.items_from_ranges(load_config(base), 1, 4, {})
    Bt.run_batch(items, tmp_path, scheduler="sync", progress=False)
    paths = output_paths(tmp_path, items[0].config.output)
    last = paths.pop("params").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= last for p in paths.values())
