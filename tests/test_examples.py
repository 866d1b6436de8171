"""The examples run as a user runs them (at a tiny size)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tomography_example_runs_small(tmp_path):
    from PIL import Image

    from cutem import io

    ex = _load("tomography_pipeline")
    out = ex.main(["--tiny", "--out-dir", str(tmp_path), "--quiet"])
    for key in ("raw", "denoised", "halves", "noise-free"):
        assert np.isfinite(out[key]["fsc_mid"]) and np.isfinite(out[key]["cnr"])
        vol, px = io.read_mrc(tmp_path / f"tomogram_{key}.mrc")
        assert vol.ndim == 3 and px == ex.SIZES["tiny"][1]
    # without noise the tomogram must match the ground truth far better than from noisy tilts
    assert out["noise-free"]["fsc_mid"] > out["raw"]["fsc_mid"] + 0.2
    tilts, _ = io.read_mrc(tmp_path / "tilts_raw.mrc")
    assert len(io.read_tlt(tmp_path / "tilts_raw.tlt")) == tilts.shape[0]
    for png in ("tomography_dvr.png", "tomography_slices.png"):
        with Image.open(tmp_path / png) as im:
            assert im.size[0] > 4 * 40
    assert "FSC per shell" in (tmp_path / "results.txt").read_text()
