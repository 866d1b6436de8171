"""Alternate locations: whole atoms from ensemble models, crystallographic pairs unchanged."""
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from cutem.structure import read_structure

PDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdb"


def test_first_model_of_ensemble_gives_whole_atoms():
    # 2OM3 stores one conformer per MODEL as altloc A..E at occupancy 0.20
    a = read_structure(str(files("cutem.data") / "tmv" / "2OM3_model1.pdb"), hydrogens=False)
    assert a.n == 1279
    np.testing.assert_allclose(a.occupancies, 1.0)


def test_crystallographic_alternates_keep_their_split(tmp_path):
    pdb = tmp_path / "alt.pdb"
    pdb.write_text(
        "ATOM      1  CA ASER A   1       0.000   0.000   0.000  0.60 20.00           C\n"
        "ATOM      2  CA BSER A   1       1.000   0.000   0.000  0.40 20.00           C\n"
        "HETATM    3  O   HOH A   2       5.000   0.000   0.000  0.50 20.00           O\n"
        "END\n")
    a = read_structure(str(pdb))
    np.testing.assert_allclose(a.occupancies, [0.6, 0.4, 0.5], rtol=1e-6)
    if (PDB / "4E43.pdb").exists():
        b = read_structure(str(PDB / "4E43.pdb"))
        assert b.occupancies.max() <= 1.0 + 1e-6
