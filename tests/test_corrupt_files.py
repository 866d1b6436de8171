"""Random corrupt PDB / mmCIF / MRC / config bytes never crash: the readers either return a
clean result (finite atoms, a finite array of an accepted dimensionality, a valid config) or
raise InputError naming the file — never another exception (which the CLI would report as an
internal failure with a traceback).

Corruptions: random bytes; a valid file truncated at a random byte; random bytes overwritten
at random offsets; random lines inserted. CI runs a bounded number of examples
(``CUTEM_HYPOTHESIS_SCALE`` = 1); validation/hypothesis_many.py raises it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cutem.errors import InputError
from validation.bad_inputs import TEMSIM_OK

SCALE = float(os.environ.get("CUTEM_HYPOTHESIS_SCALE", "1"))
COMMON = dict(deadline=None, derandomize=SCALE == 1, suppress_health_check=[HealthCheck.too_slow])


def n_examples(k):
    return max(1, int(round(k * SCALE)))


def _pdb_text():
    rng = np.random.default_rng(1)
    rows = ["HEADER    TEST", "REMARK 350 BIOMOLECULE: 1",
            "REMARK 350   BIOMT1   1  1.000000  0.000000  0.000000        0.00000",
            "REMARK 350   BIOMT2   1  0.000000  1.000000  0.000000        0.00000",
            "REMARK 350   BIOMT3   1  0.000000  0.000000  1.000000        0.00000",
            "CRYST1   50.000   50.000   50.000  90.00  90.00  90.00 P 1           1"]
    for i in range(10):
        x, y, z = rng.uniform(-9, 9, 3)
        e = "CNOS"[i % 4]
        rows.append(f"ATOM  {i + 1:5d}  {e:<3s} GLY A{i // 3 + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 12.00"
                    f"          {e:>2s}")
    rows.append("HETATM   11 ZN    ZN A 101       1.000   2.000   3.000  1.00 30.00          ZN")
    return ("\n".join(rows) + "\nEND\n").encode()


def _cif_text():
    """The same atoms as mmCIF (written by gemmi from the PDB text)."""
    import gemmi

    st = gemmi.read_pdb_string(_pdb_text().decode())
    st.setup_entities()
    return st.make_mmcif_document().as_string().encode()


PDB, CIF = _pdb_text(), _cif_text()


@st.composite
def corrupted(draw, base: bytes):
    how = draw(st.sampled_from(["random", "truncate", "overwrite", "insert"]))
    if how == "random":
        return draw(st.binary(min_size=0, max_size=2000))
    if how == "truncate":
        return base[:draw(st.integers(0, len(base)))]
    data = bytearray(base)
    if how == "overwrite":
        for _ in range(draw(st.integers(1, 12))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    lines = bytes(data).split(b"\n")
    at = draw(st.integers(0, len(lines)))
    junk = draw(st.binary(max_size=90) | st.text(max_size=90).map(lambda s: s.encode("utf-8", "replace")))
    return b"\n".join(lines[:at] + [junk] + lines[at:])


def _write(data: bytes, suffix):
    fd, p = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return p


def _check_structure(data, suffix):
    from cutem.structure import read_structure

    p = _write(data, suffix)
    try:
        atoms = read_structure(p, infer_elements=True)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    finally:
        os.unlink(p)
    assert len(atoms) >= 1 and np.isfinite(atoms.positions).all()
    assert np.isfinite(atoms.b_factors).all() and np.isfinite(atoms.occupancies).all()
    assert min(atoms.species) >= 1


def test_the_uncorrupted_files_read():
    from cutem.structure import read_structure

    for data, suffix, n in ((PDB, ".pdb", 11), (CIF, ".cif", 11)):
        p = _write(data, suffix)
        try:
            assert len(read_structure(p)) == n
        finally:
            os.unlink(p)


@settings(max_examples=n_examples(150), **COMMON)
@given(data=corrupted(PDB))
def test_corrupt_pdb_never_crashes(data):
    _check_structure(data, ".pdb")


@settings(max_examples=n_examples(150), **COMMON)
@given(data=corrupted(CIF))
def test_corrupt_mmcif_never_crashes(data):
    _check_structure(data, ".cif")


def _mrc_bytes(shape=(3, 16, 16)):
    import mrcfile

    p = _write(b"", ".mrc")
    with mrcfile.new(p, overwrite=True) as m:
        m.set_data(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
        m.voxel_size = 2.0
    data = Path(p).read_bytes()
    os.unlink(p)
    return data


MRC = _mrc_bytes()


@st.composite
def corrupted_mrc(draw):
    data = draw(corrupted(MRC))
    if draw(st.booleans()):  # aim at the header words (mode, nx/ny/nz, nsymbt, ...)
        data = bytearray(data if len(data) >= 1024 else MRC)
        for _ in range(draw(st.integers(1, 4))):
            word = draw(st.integers(0, 55))
            data[4 * word:4 * word + 4] = draw(st.binary(min_size=4, max_size=4))
        data = bytes(data)
    return data


@settings(max_examples=n_examples(150), **COMMON)
@given(data=corrupted_mrc(), ndim=st.sampled_from([2, 3, (2, 3)]))
def test_corrupt_mrc_never_crashes(data, ndim):
    import warnings

    from cutem.io import read_mrc

    p = _write(data, ".mrc")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mrcfile warns about the corrupt header it reads permissively
            arr, px = read_mrc(p, ndim=ndim, name="stack")
    except InputError as exc:
        assert str(exc).startswith(f"stack {p}") and "\n" not in str(exc)
        return
    finally:
        os.unlink(p)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    assert arr.ndim in allowed and arr.dtype == np.float32 and np.isfinite(arr).all()
    assert np.isfinite(px) and px > 0


TOML = b"""seed = 1
output = "x"
[optics]
voltage_kV = 300.0
defocus_u_A = 10000.0
[detector]
nx = 32
ny = 32
[geometry]
tilt_angles_deg = [0.0, 10.0]
[[particles]]
structure = "a.pdb"
placement = "random"
count = 1
"""
# the valid TEM-simulator input of the bad-inputs table, with tilts and one MTF key
TEMSIM = (TEMSIM_OK + "mtf_a = 0.5\n=== geometry ===\nntilts = 3\ntheta_start = -10\ntheta_incr = 10\n").encode()


@settings(max_examples=n_examples(150), **COMMON)
@given(data=corrupted(TOML) | corrupted(TEMSIM), suffix=st.sampled_from([".toml", ".txt"]))
def test_corrupt_config_never_crashes(data, suffix):
    from cutem.config import RunConfig, load_config

    p = _write(data, suffix)
    try:
        cfg = load_config(p)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    finally:
        os.unlink(p)
    assert isinstance(cfg, RunConfig)
