"""Shared test inputs."""
import numpy as np


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
