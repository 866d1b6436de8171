"""Reading atomic models, assemblies and TEM-simulator transform files."""
import os

import numpy as np
import pytest

from cutem import structure as S
from cutem.errors import InputError

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
PDB = os.path.join(DATA, "pdb")
TMV = os.path.join(DATA, "tmv")
need_shared = pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data not present")


def test_tmv_fragment_has_49_subunits_of_1279_atoms():
    frag = S.tmv_fragment()
    assert frag.n == 62671 == 49 * 1279
    assert frag.counts() == {"C": 38808, "N": 11074, "O": 12593, "P": 147, "S": 49}
    assert set(np.unique(frag.b_factors)) == {90.0}
    lo, hi = frag.bounding_box()
    np.testing.assert_allclose(0.5 * (lo + hi), 0, atol=1e-9)   # centred on its bounding box
    assert 180 < hi[0] - lo[0] < 190                             # TMV is 18 nm across


@need_shared
def test_transform_file_is_the_biomt_of_2om3_in_angstrom():
    R, t = S.read_transform_file(os.path.join(TMV, "2OM3_transf.txt"))
    (chains, subs, R2, t2), = S.assembly_operators(os.path.join(TMV, "2OM3.pdb"))
    assert len(R) == 49
    np.testing.assert_array_equal(R, R2)
    np.testing.assert_array_equal(t, t2)
    # helical rise between consecutive subunits: 1.408 Å (TMV), so the file's unit is Å, not nm
    np.testing.assert_allclose(np.diff(t[:, 2]), 1.4076, atol=1e-4)


@need_shared
def test_first_model_only_and_altlocs_weighted():
    a = S.read_structure(os.path.join(TMV, "2OM3.pdb"))
    assert a.n == 1279
    # 2OM3 keeps one conformer per MODEL (altloc A in model 1, B in model 2, ... each at
    # occupancy 0.20): the first model alone is a whole subunit
    np.testing.assert_allclose(a.occupancies, 1.0)


@need_shared
def test_biomt_assembly_of_1f2n_pdb_and_cif_agree():
    p = S.biological_assembly(os.path.join(PDB, "1f2n.pdb"))
    c = S.biological_assembly(os.path.join(PDB, "1f2n.cif"))
    assert p.n == c.n == 60 * 4730
    np.testing.assert_allclose(np.sort(p.positions[:, 0]), np.sort(c.positions[:, 0]), atol=2e-3)
    # an icosahedral capsid (T=3, ~29 nm): a hollow shell about its centroid
    r = np.sqrt(((p.positions - p.positions.mean(0)) ** 2).sum(1))
    assert 150 < r.max() < 170 and r.min() > 100


@need_shared
def test_hydrogens_optional():
    with_h = S.read_structure(os.path.join(PDB, "1hvr.pdb"))
    no_h = S.read_structure(os.path.join(PDB, "1hvr.pdb"), hydrogens=False)
    assert with_h.n - no_h.n == 330
    assert 1 not in no_h.species


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


ATOM = "ATOM      1  CA  ALA A   1      11.104   6.134  -6.504  1.00 20.00           {el}\n"


def test_bad_files_raise_input_error_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        S.read_structure(str(tmp_path / "missing.pdb"))
    empty = _write(tmp_path, "empty.pdb", "HEADER    NOTHING\nEND\n")
    with pytest.raises(InputError, match="empty.pdb"):
        S.read_structure(empty)
    cut = _write(tmp_path, "cut.pdb", ATOM.format(el="C") + "ATOM      2  CB  ALA A   1      12.0")
    with pytest.raises(InputError, match="cut.pdb: line 2 is a truncated"):
        S.read_structure(cut)
    junk = _write(tmp_path, "junk.cif", "data_x\nloop_\n_atom_site.id\n 'unterminated\n")
    with pytest.raises(InputError, match="junk.cif"):
        S.read_structure(junk)
    nan = _write(tmp_path, "nan.pdb", "ATOM      1  CA  ALA A   1         nan   6.134  -6.504  1.00 20.00           C\n")
    with pytest.raises(InputError, match="nan.pdb"):
        S.read_structure(nan)


def test_unknown_element_and_inference(tmp_path):
    bad = _write(tmp_path, "xx.pdb", ATOM.format(el="Xx"))
    with pytest.raises(InputError, match="xx.pdb.*unknown element"):
        S.read_structure(bad)
    blank = _write(tmp_path, "blank.pdb", ATOM.format(el="  "))
    a = S.read_structure(blank, infer_elements=True)
    assert a.species == (6,) and a.n == 1


def test_transform_file_errors(tmp_path):
    short = _write(tmp_path, "t.txt", "6 4\n1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(InputError, match="3 data rows, the size line says 6"):
        S.read_transform_file(short)
    notrot = _write(tmp_path, "r.txt", "3 4\n2 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(InputError, match="not a rotation"):
        S.read_transform_file(notrot)


def test_euler_convention_of_tem_simulator():
    # TMV_coord.txt: (0, 90, 90) = "90° about x, then 90° about z": the rod axis z -> x
    R = S.euler_matrix(0, 90, 90)
    np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    # phi alone is a rotation about z, counter-clockwise
    np.testing.assert_allclose(S.euler_matrix(90, 0, 0) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_concatenate_remaps_species():
    a = S.Atoms(np.zeros((2, 3)), [0, 0], (6,), [1, 1], [1, 1])
    b = S.Atoms(np.ones((1, 3)), [0], (8,), [2], [1])
    c = S.Atoms.concatenate([a, b])
    assert c.species == (6, 8)
    assert c.atomic_numbers.tolist() == [6, 6, 8]


def test_implicit_hydrogens_follow_the_residue_formulas(tmp_path):
    rows = [("N", "ALA", 1), ("CA", "ALA", 1), ("C", "ALA", 1), ("O", "ALA", 1), ("CB", "ALA", 1),
            ("N", "GLY", 2), ("CA", "GLY", 2), ("C", "GLY", 2), ("O", "GLY", 2)]
    text = "".join(f"ATOM  {i + 1:5d}  {n:<3s} {r} A{k:4d}    {i:8.3f}   0.000   0.000  1.00 20.00           {n[0]}\n"
                   for i, (n, r, k) in enumerate(rows))
    p = _write(tmp_path, "ag.pdb", text)
    a = S.read_structure(p, implicit_hydrogens=True)
    h = a.atomic_numbers == 1
    assert a.occupancies[h].sum() == 5 + 3          # Ala residue C3H5NO, Gly residue C2H3NO
    np.testing.assert_array_equal(a.positions[h][0], a.positions[~h][0])  # at the heavy atom (N of Ala)
    if os.path.isdir(TMV):
        tmv = S.read_structure(os.path.join(TMV, "2OM3.pdb"), implicit_hydrogens=True)
        assert tmv.occupancies[tmv.atomic_numbers == 1].sum() == 1222
        with pytest.raises(InputError, match="explicit hydrogens"):
            S.read_structure(os.path.join(PDB, "1hvr.pdb"), implicit_hydrogens=True)
