"""Output sets are transactional (cutem.io.transaction): all files of a run appear together,
a failed run leaves the previous set, a commit killed half-way is finished by the next one,
and concurrent runs on one name leave one run's set."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cutem import io


def _write(path, text):
    with io.atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def test_outputs_appear_only_when_the_whole_set_is_complete(tmp_path):
    with io.transaction():
        _write(tmp_path / "a.txt", "new a")
        assert not (tmp_path / "a.txt").exists()  # held under its temporary name
        _write(tmp_path / "b.txt", "new b")
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_failed_run_leaves_the_previous_set_whole(tmp_path):
    for n in "ab":
        (tmp_path / f"{n}.txt").write_text(f"old {n}")
    with pytest.raises(OSError):
        with io.transaction():
            _write(tmp_path / "a.txt", "new a")
            raise OSError(28, "No space left on device")  # the disk fills before b is written
    assert [(tmp_path / f"{n}.txt").read_text() for n in "ab"] == ["old a", "old b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporaries


def test_a_commit_killed_half_way_is_finished_by_recover(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    tmps = []
    for n in "ab":
        t = tmp_path / f".{n}.txt.999999.x.tmp"
        t.write_text(f"new {n}")
        tmps.append(t)
    journal = tmp_path / f"{io.JOURNAL_PREFIX}999999.x.json"
    journal.write_text(json.dumps({"rename": [[str(t), str(tmp_path / f"{n}.txt")] for t, n in zip(tmps, "ab")],
                                   "remove": []}))
    os.replace(tmps[0], tmp_path / "a.txt")  # SIGKILL after the first rename: a mix on disk ...
    assert io.recover(tmp_path) == 1  # ... which the next run finishes first
    assert [(tmp_path / f"{n}.txt").read_text() for n in "ab"] == ["new a", "new b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_an_output_over_a_protected_input_is_refused_before_any_rename(tmp_path):
    from cutem.errors import InputError

    src = tmp_path / "in.txt"
    src.write_text("input")
    with io.protected([src]), pytest.raises(InputError, match="would overwrite the input"):
        with io.transaction():
            _write(tmp_path / "other.txt", "x")
            _write(src, "clobbered")
    assert src.read_text() == "input" and not (tmp_path / "other.txt").exists()


def test_stale_temporaries_are_only_those_of_dead_writers(tmp_path):
    final = tmp_path / "x.mrc"
    live = tmp_path / f".x.mrc.{os.getppid()}.abc.mrc"
    dead = tmp_path / ".x.mrc.999999999.abc.mrc"
    for p in (live, dead):
        p.write_text("")
    assert io.stale_temporaries(final) == [dead]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cutem") is None, reason="the cutem console script is not installed")
def test_four_concurrent_simulate_runs_on_one_name_leave_one_runs_set(tmp_path):
    from validation.concurrent_runs import trial
    from validation.fuzz_cli import CONFIG, pdb_text

    for t in range(2):
        d = tmp_path / f"t{t}"
        d.mkdir()
        (d / "tiny.pdb").write_text(pdb_text())
        (d / "cfg.toml").write_text(CONFIG)
        ok, what = trial(d, 4)
        assert ok, what
