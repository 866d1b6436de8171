"""examples/fit_defocus.py runs as a user would and recovers the defocus."""
import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fit_defocus.py"


def test_fit_defocus_example_recovers_defocus_within_one_percent():
    mod = runpy.run_path(str(EXAMPLE))
    fitted = mod["main"](size=64)
    assert fitted == pytest.approx(12000.0, rel=0.01)
    assert abs(fitted - 10500.0) > 1000  # it moved from the wrong start
