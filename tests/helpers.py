"""Shared test inputs."""
from pathlib import Path

import numpy as np
import pytest


def tiny_pdb(n=20, seed=0, half_extent_A=8.0, b_factor=20.0, elements="CNOS"):
    """A small PDB text: ``n`` atoms at random positions in a cube of half-width
    ``half_extent_A``, elements cycling through ``elements`` (fixed PDB v3.3 columns)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        x, y, z = rng.uniform(-half_extent_A, half_extent_A, 3)
        e = elements[i % len(elements)]
        rows.append(f"ATOM  {i + 1:5d}  {e:<3s} ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00{b_factor:6.2f}"
                    f"          {e:>2s}")
    return "\n".join(rows) + "\nEND\n"


#: the shared data folder beside the repository (../shared/data; see its MANIFEST.md)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts):
    """Path of a file under ../shared/data; skips the calling test when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (the shared data folder sits beside the repository)")
    return p
