"""STAR files go through ``starfile`` (the field's reader); ``python -m cutem.cli`` runs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cutem.errors import InputError
from cutem.io import read_star, write_star

REAL = "/work/shared/data/real"
needs_real = pytest.mark.skipif(not Path(REAL).is_dir(), reason="../shared/data/real not present")


@needs_real
def test_read_star_gives_ctffind_values_of_micrographs_ctf():
    t = read_star(f"{REAL}/betagal_power_spectra/micrographs_ctf.star")
    mic = t["micrographs"]
    row = mic[mic["rlnMicrographName"].str.contains("00023")].iloc[0]
    assert row["rlnDefocusU"] == pytest.approx(10675.242188) and row["rlnDefocusAngle"] == pytest.approx(71.78068)
    assert float(t["optics"]["rlnVoltage"].iloc[0]) == 200.0


@needs_real
def test_read_star_gives_the_k2_mtf_curve():
    t = next(iter(read_star(f"{REAL}/detector_mtf/mtf_k2_300kV.star").values()))
    x, y = np.asarray(t["rlnResolutionInversePixel"], float), np.asarray(t["rlnMtfValue"], float)
    assert x[0] == 0.0 and abs(x[-1] - 0.5) < 1e-6 and y[0] == 1.0 and y[-1] == pytest.approx(0.388115) and len(x) == 1001


def test_write_star_round_trips_loops_and_strings(tmp_path):
    write_star(tmp_path / "a.star", {"general": {"rlnTomoName": "ts_01", "rlnVoltage": 300.0},
                                     "particles": {"rlnCoordinateX": [1.5, 2.25], "rlnImageName": ["a.mrc", "b.mrc"]}})
    t = read_star(tmp_path / "a.star")
    assert t["general"]["rlnTomoName"] == "ts_01" and t["general"]["rlnVoltage"] == 300.0
    assert list(t["particles"]["rlnCoordinateX"]) == [1.5, 2.25]
    assert list(t["particles"]["rlnImageName"]) == ["a.mrc", "b.mrc"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left
    first = (tmp_path / "a.star").read_bytes()
    write_star(tmp_path / "a.star", {"general": {"rlnTomoName": "ts_01", "rlnVoltage": 300.0},
                                     "particles": {"rlnCoordinateX": [1.5, 2.25], "rlnImageName": ["a.mrc", "b.mrc"]}})
    assert (tmp_path / "a.star").read_bytes() == first and b"Created by" not in first   # no clock in the header


def test_missing_star_is_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file") as exc:
        read_star(tmp_path / "none.star")
    assert "\n" not in str(exc.value)


def test_python_m_cutem_cli_runs_the_command_line():
    r = subprocess.run([sys.executable, "-m", "cutem.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "simulate" in r.stdout and "fit-ctf" in r.stdout
