"""``cutem simulate STRUCTURE`` without a config, ``--count`` and ``--set``."""
from importlib.resources import files
import tomllib

import numpy as np
import pytest
import starfile
from click.testing import CliRunner

from cli import main
from cutem.config import config_for_structure
from cutem.structure import load_particle

PDB = str(files("cutem.data") / "pdb" / "1hvr.pdb")


def _run(*args):
    return CliRunner().invoke(main, ["simulate", *args, "-q"])


def test_simulate_a_pdb_without_config_writes_the_outputs_and_star(tmp_path):
    res = _run(PDB, "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    cfg = tomllib.loads((tmp_path / "1hvr_params.toml").read_text())
    assert cfg["optics"]["voltage_kV"] == 300.0 and cfg["optics"]["defocus_u_A"] == 15000.0
    assert cfg["detector"]["pixel_size_A"] == 1.0 and cfg["detector"]["dose_e_per_A2"] == 40.0
    star = starfile.read(tmp_path / "1hvr_particles.star")
    n = cfg["detector"]["nx"]
    assert len(star) == 1 and abs(star["rlnCoordinateX"][0] - n / 2) < 1e-6 and abs(star["rlnCoordinateY"][0] - n / 2) < 1e-6


def test_set_changes_the_defocus_in_the_resolved_toml(tmp_path):
    res = _run(PDB, "--out", str(tmp_path), "--set", "optics.defocus_u_A=20000", "--set", "optics.defocus_v_A=20000",
               "--set", "simulation.method=multislice")
    assert res.exit_code == 0, res.output
    cfg = tomllib.loads((tmp_path / "1hvr_params.toml").read_text())
    assert cfg["optics"]["defocus_u_A"] == 20000.0 and isinstance(cfg["optics"]["defocus_u_A"], float)
    assert cfg["simulation"]["method"] == "multislice"
    assert starfile.read(tmp_path / "1hvr_particles.star")["rlnDefocusU"][0] == pytest.approx(20000.0, abs=1e-3)


@pytest.mark.parametrize("setting,message", [("optics.defocus=1", "unknown key 'defocus' in [optics]"),
                                             ("lens.cs_mm=2", "unknown section 'lens'"),
                                             ("optics.cs_mm", "give SECTION.KEY=VALUE"),
                                             ("detector.nx=7", "Detector.nx = 7")])
def test_bad_set_is_one_line_bad_input(tmp_path, setting, message):
    res = CliRunner().invoke(main, ["simulate", PDB, "--out", str(tmp_path), "--set", setting], standalone_mode=False)
    assert res.exception is not None and message in str(res.exception) and "\n" not in str(res.exception)
    assert not list(tmp_path.iterdir())


def test_count_places_that_many_copies_inside_field_and_ice(tmp_path):
    res = _run(PDB, "--out", str(tmp_path), "--count", "3", "--set", "detector.dose_e_per_A2=5")
    assert res.exit_code == 0, res.output
    star = starfile.read(tmp_path / "1hvr_particles.star")
    n = tomllib.loads((tmp_path / "1hvr_params.toml").read_text())["detector"]["nx"]
    assert len(star) == 3 and star["rlnCoordinateX"].between(0, n).all() and star["rlnCoordinateY"].between(0, n).all()


def test_config_for_structure_fits_the_particle_in_field_and_ice():
    r = load_particle(PDB).radius()
    cfg = config_for_structure(PDB)
    assert cfg.detector.nx * cfg.detector.pixel_size_A >= 2 * r + 200 and cfg.detector.nx % 32 == 0
    assert cfg.sample.thickness_center_A >= 2 * r and cfg.particles[0].positions_A == ((0.0, 0.0, 0.0),)
    many = config_for_structure(PDB, count=10, seed=4)
    assert many.particles[0].count == 10 and many.detector.nx > cfg.detector.nx and many.seed == 4


def test_count_with_a_config_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["simulate", "--count", "2", "--out", str(tmp_path)], standalone_mode=False)
    assert res.exception is not None and "only with a structure file" in str(res.exception)
