"""Bad input is refused before any work with one line and exit code 2; internal failures exit 1.

The cases are those of ``validation/bad_inputs.py`` (which writes docs/bad_inputs.md). All of
them run in-process through the CLI's own guard (:func:`cutem.cli.common.run_guarded`, the
code behind the console script); a representative subset, and the internal-failure case
(which needs a library function broken at interpreter start), run the real ``cutem``
console script in a subprocess.
"""
from __future__ import annotations

import importlib.util
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from cutem.config import ParticleSpec, RunConfig
from cutem.errors import InputError
from cutem.params import Detector, Geometry, Sample, Simulation

_spec = importlib.util.spec_from_file_location("bad_inputs", Path(__file__).resolve().parents[1] / "validation"
                                               / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bad_inputs", bad_inputs)
_spec.loader.exec_module(bad_inputs)

CASES = bad_inputs.cases()
IN_PROCESS = [c for c in CASES if not c.env]
CUTEM = shutil.which("cutem")


class _Argv:
    """Stand-in for the click group that run_guarded expects, with explicit argv."""

    def __init__(self, argv):
        self.argv = argv

    def main(self, standalone_mode=False):
        from cutem.cli import main

        return main.main(args=self.argv, prog_name="cutem", standalone_mode=standalone_mode)


def _run_in_process(case, workdir, monkeypatch, capsys):
    from cutem.cli.common import run_guarded

    bad_inputs.write_case_files(case, workdir)
    monkeypatch.chdir(workdir)
    old = signal.getsignal(signal.SIGTERM)
    try:
        rc = run_guarded(_Argv(list(case.argv)))
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.what for c in IN_PROCESS])
def test_bad_input_exit_code_and_one_line_message(case, tmp_path, monkeypatch, capsys):
    rc, err = _run_in_process(case, tmp_path, monkeypatch, capsys)
    assert rc == case.rc, err
    if case.rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip() and "tilt/s" not in ln]
        assert "Traceback" not in err
        assert case.expect in lines[-1], lines[-1]
        assert len(lines[-1]) < 600


SUBSET = ["config file does not exist", "unknown TEM-simulator key", "negative dose", "PDB truncated mid-record",
          "particle outside the field of view", "reconstruct: 2D MRC instead of a stack",
          "internal failure (a library function broken on purpose)"]


@pytest.mark.skipif(CUTEM is None, reason="the cutem console script is not installed")
@pytest.mark.parametrize("what", SUBSET)
def test_console_script_exit_codes(what, tmp_path):
    case = next(c for c in CASES if c.what == what)
    rc, last, err = bad_inputs.run_case(case, tmp_path)
    assert rc == case.rc, err
    if rc == 2:
        assert case.expect in last and "Traceback" not in err
    else:  # internal failure: the traceback, then one line saying so
        assert "Traceback" in err and "deliberate internal failure" in err and "internal error" in last


def test_every_case_is_in_the_committed_table():
    table = (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md").read_text()
    for c in CASES:
        assert f"| {c.what} |" in table, c.what
    assert "**NO**" not in table


# ------------------------------------------------------------------ preflight directly
def _pdb(tmp_path):
    p = tmp_path / "tiny.pdb"
    p.write_text(bad_inputs.tiny_pdb())
    return str(p)


def _cfg(tmp_path, positions=((0.0, 0.0, 0.0),), **kw):
    from cutem.params import Optics  # noqa: F401

    return RunConfig(detector=Detector(nx=32, ny=32, pixel_size_A=2.0, dose_e_per_A2=10.0),
                     sample=Sample(thickness_center_A=100.0, thickness_edge_A=100.0),
                     particles=(ParticleSpec(name="p", structure=_pdb(tmp_path), placement="list",
                                             positions_A=positions),), **kw)


def test_preflight_passes_a_good_config_and_returns_its_scene(tmp_path):
    from cutem.validate import preflight

    pre = preflight(_cfg(tmp_path, positions=((0.0, 0.0, 0.0), (5.0, -3.0, 2.0))))
    assert len(pre.scene) == 2 and pre.scene.n_atoms == 24 and pre.warnings == []


def test_particle_crossing_the_edge_is_a_warning_naming_it(tmp_path):
    from cutem.validate import preflight

    pre = preflight(_cfg(tmp_path, positions=((0.0, 0.0, 0.0), (28.0, 0.0, 0.0))))
    assert len(pre.warnings) == 1
    assert "1 particle(s) cross the edge" in pre.warnings[0] and "p #2" in pre.warnings[0]
    assert "padding_A" in pre.warnings[0]


def test_particle_leaving_the_field_only_at_some_tilts_is_not_an_error(tmp_path):
    from cutem.validate import preflight

    # x = 50 Å: the particle (radius ~9 Å) is outside the 64 Å field at 0°, inside after a 60° tilt
    # about y (x' = x cos 60° = 25 Å)
    cfg = _cfg(tmp_path, positions=((50.0, 0.0, 0.0),), geometry=Geometry(tilt_angles_deg=(0.0, 60.0),
                                                                          tilt_axis_deg=90.0))
    assert len(preflight(cfg).scene) == 1
    with pytest.raises(InputError, match="outside the field of view .* at every tilt"):
        preflight(cfg.replace(geometry=Geometry(tilt_angles_deg=(0.0, 10.0), tilt_axis_deg=90.0)))


def test_grid_limit_names_the_sizes(tmp_path):
    from cutem.validate import preflight

    cfg = _cfg(tmp_path).replace(detector=Detector(nx=65536, ny=65536, pixel_size_A=1.0),
                                 simulation=Simulation(oversampling=2))
    with pytest.raises(InputError, match=r"simulation grid 131072x131072 px .* exceeds 268435456 px"):
        preflight(cfg)


def test_dose_weights_too_large_on_one_tilt(tmp_path):
    from cutem.validate import check_values

    cfg = _cfg(tmp_path).replace(detector=Detector(dose_e_per_A2=8e4),
                                 geometry=Geometry(tilt_angles_deg=(0.0, 1.0), dose_weights=(1.0, 3.0)))
    with pytest.raises(InputError, match="120000 e-/A\\^2 on one tilt"):
        check_values(cfg)
    check_values(cfg.replace(detector=Detector(dose_e_per_A2=4e4)))  # 6e4 peak: allowed


def test_vacuum_config_without_particles_passes(tmp_path):
    from cutem.validate import preflight

    pre = preflight(RunConfig(detector=Detector(nx=16, ny=16)))
    assert len(pre.scene) == 0 and pre.warnings == []
    assert np.isfinite(pre.scene.n_atoms)


def test_infer_elements_is_reachable_from_the_toml_config(tmp_path):
    from cutem.config import load_config
    from cutem.validate import preflight

    (tmp_path / "tiny.pdb").write_text(bad_inputs._unknown_element_pdb())
    text = bad_inputs.config()
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(InputError, match="unknown element"):
        preflight(load_config(tmp_path / "c.toml"))
    (tmp_path / "c.toml").write_text(text + "infer_elements = true\n")
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.particles[0].infer_elements
    pre = preflight(cfg)
    # the atom named O with element Xx is read as oxygen (Z = 8): C, N, O, S all present
    assert pre.scene.n_atoms == 4 and set(pre.scene.particles[0].atoms.species) == {6, 7, 8, 16}
