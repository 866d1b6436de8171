"""Interrupted runs: `cutem simulate` killed mid tilt series leaves no partial file under a
final name, and a re-run resumes from the per-tilt checkpoints to a bit-identical result.

Runs the real console script in a subprocess and kills it with SIGINT, SIGTERM (handled like
SIGINT: temporaries removed) and SIGKILL (no handler: temporaries may stay, but only under
their temporary ``.NAME.*`` names).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from helpers import tiny_pdb as _tiny_pdb

CUTEM = shutil.which("cutem")
pytestmark = pytest.mark.skipif(CUTEM is None, reason="the cutem console script is not installed")

NAME = "series"
NTILT = 8
FINAL = [f"{NAME}.mrc", f"{NAME}_noisefree.mrc", f"{NAME}.tlt", f"{NAME}.png", f"{NAME}_params.toml",
         f"{NAME}_particles.star", f"{NAME}_tomograms.star", f"{NAME}_tiltseries.star", f"{NAME}.xf", f"{NAME}.defocus"]


def tiny_pdb(n=20, seed=0):
    return _tiny_pdb(n, seed, half_extent_A=8.0, b_factor=20.0)


CONFIG = f"""seed = 11
output = "{NAME}"
[detector]
nx = 256
ny = 256
pixel_size_A = 2.0
dose_e_per_A2 = 20.0
[simulation]
method = "multislice"
slice_thickness_A = 20.0
oversampling = 2
[sample]
thickness_center_A = 200.0
thickness_edge_A = 200.0
[geometry]
tilt_start_deg = -35.0
tilt_increment_deg = 10.0
tilt_count = {NTILT}
[[particles]]
structure = "tiny.pdb"
placement = "list"
positions_A = [[0.0, 0.0, 0.0], [60.0, -40.0, 20.0]]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("interrupt")
    (d / "tiny.pdb").write_text(tiny_pdb())
    (d / "series.toml").write_text(CONFIG)
    ref = d / "ref"
    r = subprocess.run([CUTEM, "simulate", str(d / "series.toml"), "--out", str(ref), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d, ref


def _checkpoints(out):
    ck = out / f".{NAME}.ckpt"
    return sorted(p for p in ck.glob("*.npz") if not p.name.startswith(".")) if ck.is_dir() else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_killed_run_leaves_no_partial_output_and_resumes_bit_identical(setup, sig, tmp_path):
    d, ref = setup
    out = tmp_path / "out"
    proc = subprocess.Popen([CUTEM, "simulate", str(d / "series.toml"), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while len(_checkpoints(out)) < 2 and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    n_ck = len(_checkpoints(out))

    # interrupted: the exit status says so, and nothing sits under a final name
    expected_rc = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[sig]
    assert proc.returncode == expected_rc, err
    assert 2 <= n_ck < NTILT
    present = sorted(p.name for p in out.iterdir())
    assert not [f for f in FINAL if f in present], present
    # every entry is a temporary (.NAME.*) name or the checkpoint folder
    assert all(p.startswith(f".{NAME}.") for p in present), present
    if sig != signal.SIGKILL:  # the handlers removed the temporaries of the interrupted write
        leftovers = [p.name for p in (out / f".{NAME}.ckpt").iterdir() if p.name.startswith(".")]
        assert leftovers == [] and present == [f".{NAME}.ckpt"], (present, leftovers)
        assert ("cutem: aborted" if sig == signal.SIGINT else "cutem: terminated") in err

    # re-run: resumes from the checkpoints and ends bit-identical to the uninterrupted run
    r = subprocess.run([CUTEM, "simulate", str(d / "series.toml"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {n_ck} of {NTILT} tilts" in r.stderr
    for f in FINAL[:4]:
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    with mrcfile.open(out / f"{NAME}.mrc") as m:
        assert m.data.shape == (NTILT, 256, 256)
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL)  # checkpoints and temporaries gone


def _key(d):
    from cutem.config import load_config
    from cutem.run import config_hash

    return config_hash(load_config(d / "series.toml"))


def test_no_resume_flag_ignores_a_valid_checkpoint(setup, tmp_path):
    d, ref = setup
    out = tmp_path / "out"
    ck = out / f".{NAME}.ckpt"
    ck.mkdir(parents=True)
    zeros = np.zeros((256, 256), np.float32)
    np.savez(ck / f"{_key(d)}_0000.npz", image=zeros, noise_free=zeros)
    r = subprocess.run([CUTEM, "simulate", str(d / "series.toml"), "--out", str(out), "--no-resume"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" not in r.stderr
    assert (out / f"{NAME}.mrc").read_bytes() == (ref / f"{NAME}.mrc").read_bytes()
    assert not ck.exists()


def test_damaged_checkpoint_is_recomputed_not_trusted(setup, tmp_path):
    d, ref = setup
    out = tmp_path / "out"
    ck = out / f".{NAME}.ckpt"
    ck.mkdir(parents=True)
    (ck / f"{_key(d)}_0000.npz").write_bytes(b"PK\x03\x04 truncated checkpoint")
    r = subprocess.run([CUTEM, "simulate", str(d / "series.toml"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" not in r.stderr  # the only checkpoint was unreadable
    assert (out / f"{NAME}.mrc").read_bytes() == (ref / f"{NAME}.mrc").read_bytes()


def test_stale_temporaries_of_a_killed_run_are_removed_on_rerun(setup, tmp_path):
    from cutem.config import load_config
    from cutem.run import run_simulation

    d, ref = setup
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f".{NAME}.mrc.k1ll3d.mrc", out / f".{NAME}_params.toml.x.toml"]
    for p in stale:
        p.write_bytes(b"half")
    other = out / ".other.mrc.k1ll3d.mrc"  # not this run's: left alone
    other.write_bytes(b"x")
    run_simulation(load_config(d / "series.toml"), out, progress=False)
    assert not any(p.exists() for p in stale) and other.exists()
    assert (out / f"{NAME}.mrc").read_bytes() == (ref / f"{NAME}.mrc").read_bytes()


def test_exception_during_the_final_writes_leaves_the_previous_set_whole(setup, tmp_path, monkeypatch):
    """An exception while the outputs are written (here: the PNG writer fails half-way) leaves
    the previous set (here: none) under the final names -- not the files written before the
    failure --, no temporaries, and the checkpoints for the re-run."""
    from cutem import io
    from cutem.config import load_config
    from cutem.run import run_simulation

    d, ref = setup
    out = tmp_path / "out"
    real = io.write_png

    def failing_png(path, image, stretch=True):
        with io.atomic_path(path, suffix=".png") as tmp:
            tmp.write_bytes(b"\x89PNG half a file")
            raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(io, "write_png", failing_png)
    cfg = load_config(d / "series.toml")
    with pytest.raises(RuntimeError, match="disk full"):
        run_simulation(cfg, out, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == [f".{NAME}.ckpt"], names
    assert len(_checkpoints(out)) == NTILT
    monkeypatch.setattr(io, "write_png", real)
    res, _ = run_simulation(cfg, out, progress=False)
    assert res.extra["resumed_tilts"] == list(range(NTILT))
    assert (out / f"{NAME}.png").read_bytes() == (ref / f"{NAME}.png").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
