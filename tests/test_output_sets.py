"""Must-show of issue 17: a run killed at a random point (SIGKILL) or stopped by a full disk
leaves under the final names either the whole previous output set or the whole new one,
never a mix, and the re-run completes (simulate, simulate-batch, reconstruct, train-denoiser).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

CUTEM = shutil.which("cutem")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CUTEM is None, reason="the cutem console script is not installed")]
ENV = {**os.environ, "CUTEM_THREADS": "1"}


def _cfg(d):
    from validation.fuzz_cli import CONFIG, pdb_text

    (d / "tiny.pdb").write_text(pdb_text())
    (d / "cfg.toml").write_text(CONFIG)
    return d / "cfg.toml"


def _run(args, cwd=None):
    r = subprocess.run([CUTEM, *args], capture_output=True, text=True, timeout=600, env=ENV, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r


def _set(out, skip=("manifest.csv",)):
    """{name: bytes} of the files under final names (not temporaries, checkpoints, progress records)."""
    return {p.name: p.read_bytes() for p in Path(out).iterdir() if p.is_file() and not p.name.startswith(".")
            and p.name not in skip}


def _killed_at_random(args, seconds, rng):
    p = subprocess.Popen([CUTEM, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.2, seconds))
    p.send_signal(signal.SIGKILL)
    p.wait(60)


def _sets_cases(d):
    cfg = _cfg(d)
    stack = d / "stack.mrc"
    import mrcfile
    import numpy as np

    with mrcfile.new(stack) as m:
        m.set_data(np.random.default_rng(0).normal(size=(9, 48, 48)).astype(np.float32))
    (d / "stack.tlt").write_text("".join(f"{a}\n" for a in range(-40, 41, 10)))
    return {
        "simulate": lambda out, k: ["simulate", str(cfg), "--out", str(out), "--seed", str(k), "-q",
                                    "--set", "geometry.tilt_count=6", "--set", "geometry.tilt_increment_deg=10"],
        "simulate-batch": lambda out, k: ["simulate-batch", str(cfg), "--out", str(out), "-n", "3", "--seed", str(k),
                                          "--scheduler", "sync", "-q"],
        "reconstruct": lambda out, k: ["reconstruct", str(stack), "--out", str(out / "v.mrc"), "--cutoff", str(0.4 * k),
                                       "-q"],
    }


@pytest.mark.parametrize("command", ["simulate", "simulate-batch", "reconstruct"])
def test_sigkill_at_a_random_point_leaves_the_old_or_the_new_set(command, tmp_path):
    from cutem import io

    rng = random.Random(17)
    make = _sets_cases(tmp_path)[command]
    ref = tmp_path / "new_ref"
    t0 = time.time()
    _run(make(ref, 2))
    full = time.time() - t0
    new = _set(ref)
    for trial in range(2):
        out = tmp_path / f"out{trial}"
        _run(make(out, 1))
        old = _set(out)
        assert old != new
        _killed_at_random(make(out, 2), full, rng)
        io.recover(out)  # what every next commit does first: finishes a commit killed half-way
        now = _set(out)
        if command == "simulate-batch":  # each item is its own set
            for i in range(3):
                mine = {k: v for k, v in now.items() if f"_{i:05d}" in k}
                assert mine in ({k: v for k, v in old.items() if f"_{i:05d}" in k},
                                {k: v for k, v in new.items() if f"_{i:05d}" in k}), (trial, i, sorted(mine))
        else:
            assert now in (old, new), (trial, sorted(now))
        _run(make(out, 2))
        assert _set(out) == new


def test_train_denoiser_killed_keeps_a_whole_checkpoint_and_resumes(tmp_path):
    from cutem.denoise import load_denoiser

    args = ["train-denoiser", "--steps", "6", "--batch", "1", "--patch", "16", "--image-size", "32", "--pool", "1",
            "--particles", "1,1", "--depth", "1", "--width", "2", "--checkpoint-every", "1", "-o",
            str(tmp_path / "d.h5"), "--export", str(tmp_path / "e.h5"), "-q"]
    _killed_at_random(args, 8.0, random.Random(3))
    if (tmp_path / "d.h5").exists():
        load_denoiser(tmp_path / "d.h5")  # a whole checkpoint, never half a file
    assert not (tmp_path / "e.h5").exists() or load_denoiser(tmp_path / "e.h5")
    resume = ["--resume"] if (tmp_path / "d.h5").exists() else []
    _run(args[:-5] + [*resume, "-o", str(tmp_path / "d.h5"), "--export", str(tmp_path / "e.h5"), "-q"])
    load_denoiser(tmp_path / "e.h5")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_disk_full_during_a_rerun_leaves_the_previous_set_and_one_line(tmp_path):
    cfg = _cfg(tmp_path)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        out = mnt / "out"
        _run(["simulate", str(cfg), "--out", str(out), "--seed", "1", "-q"])
        old = _set(out)
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(0, free - 8192))
        r = subprocess.run([CUTEM, "simulate", str(cfg), "--out", str(out), "--seed", "2", "-q"],
                           capture_output=True, text=True, env=ENV, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "No space left" in lines[0], r.stderr
        assert _set(out) == old and not [p for p in out.iterdir() if p.name.startswith(".")]
        (mnt / "filler").unlink()
        _run(["simulate", str(cfg), "--out", str(out), "--seed", "2", "-q"])
        assert _set(out) != old
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
