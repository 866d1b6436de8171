"""Atomic models: read PDB/mmCIF (gemmi), build assemblies, keep atoms compactly.

:class:`Atoms` is the container every later step uses: ``positions`` (n, 3) in Å,
``elements`` (n,) a small integer index into ``species`` (the atomic numbers present), so the
potential can group atoms by element with one ``argsort``; ``b_factors`` (n,) in Å² and
``occupancies`` (n,). Arrays are NumPy (host); the potential moves what it needs to the device.

Reading (:func:`read_structure`): the first model of a PDB or mmCIF file (gzip allowed), every
ATOM/HETATM site including alternate locations (each weighted by its occupancy, so the
alternatives of one atom add up to one atom), hydrogens optional. Bad files raise
:class:`cutem.errors.InputError` naming the file: missing, unreadable, truncated, no atoms,
non-finite coordinates, unknown elements (``infer_elements=True`` takes the element from the
atom name where the element column is empty or unknown).

Assemblies: PDB ``REMARK 350 BIOMT`` / mmCIF ``pdbx_struct_assembly_gen``
(:func:`biological_assembly`; 1f2n: 60 operators) and TEM-simulator transform files
(``pdb_transf_file_in``; :func:`read_transform_file`). The transform file of the TMV example
(2OM3_transf.txt) holds the same numbers as REMARK 350 of 2OM3.pdb, and its translations are in
Å like the PDB coordinates they act on, not nm (the 49 subunits step by 1.408 Å along the helix
axis, the TMV rise); tests/test_structure.py checks both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import elements as E
from .errors import InputError


@dataclass
class Atoms:
    """A set of atoms: positions (Å), element index into ``species``, B (Å²), occupancy."""

    positions: np.ndarray       #: (n, 3) x, y, z in Å
    elements: np.ndarray        #: (n,) int16 index into ``species``
    species: tuple              #: atomic numbers, one per element index
    b_factors: np.ndarray       #: (n,) Å²
    occupancies: np.ndarray     #: (n,)

    def __post_init__(self):
        n = len(self.positions)
        self.positions = np.asarray(self.positions).reshape(n, 3)
        self.elements = np.asarray(self.elements, dtype=np.int16).reshape(n)
        self.species = tuple(int(z) for z in self.species)
        self.b_factors = np.asarray(self.b_factors, dtype=np.float32).reshape(n)
        self.occupancies = np.asarray(self.occupancies, dtype=np.float32).reshape(n)

    def __len__(self):
        return len(self.positions)

    @property
    def n(self) -> int:
        return len(self.positions)

    @property
    def atomic_numbers(self) -> np.ndarray:
        return np.asarray(self.species, dtype=np.int16)[self.elements]

    def counts(self) -> dict:
        """Number of atoms per element symbol."""
        c = np.bincount(self.elements, minlength=len(self.species))
        return {E.symbol(z): int(k) for z, k in zip(self.species, c) if k}

    def select(self, mask) -> "Atoms":
        return Atoms(self.positions[mask], self.elements[mask], self.species, self.b_factors[mask],
                     self.occupancies[mask])

    def transformed(self, rotation=None, translation=None, dtype=None) -> "Atoms":
        """Atoms at R·x + t (R (3, 3), t (3,) in Å); other fields shared."""
        p = self.positions if dtype is None else self.positions.astype(dtype, copy=False)
        if rotation is not None:
            p = p @ np.asarray(rotation, dtype=p.dtype).T
        if translation is not None:
            p = p + np.asarray(translation, dtype=p.dtype)
        return Atoms(p, self.elements, self.species, self.b_factors, self.occupancies)

    def bounding_box(self):
        """``(min (3,), max (3,))`` of the positions in Å."""
        return self.positions.min(0), self.positions.max(0)

    def centered(self, how="bbox") -> "Atoms":
        """Shift so that the bounding-box centre (``"bbox"``) or the mean (``"mean"``) is at 0."""
        if how == "mean":
            c = self.positions.mean(0)
        elif how == "bbox":
            lo, hi = self.bounding_box()
            c = 0.5 * (lo + hi)
        else:
            raise InputError(f"centre must be bbox or mean, not {how!r}")
        return self.transformed(translation=-c)

    def radius(self) -> float:
        """Largest distance of an atom from the bounding-box centre (Å)."""
        lo, hi = self.bounding_box()
        return float(np.sqrt(((self.positions - 0.5 * (lo + hi)) ** 2).sum(1).max()))

    @staticmethod
    def concatenate(parts) -> "Atoms":
        """Join atom sets; element indices are remapped onto the union of the species."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return Atoms(np.zeros((0, 3)), np.zeros(0), (), np.zeros(0), np.zeros(0))
        species = tuple(sorted({z for p in parts for z in p.species}))
        lut = {z: i for i, z in enumerate(species)}
        elems = [np.asarray([lut[z] for z in p.species], dtype=np.int16)[p.elements] if p.n else
                 np.zeros(0, np.int16) for p in parts]
        dtype = np.result_type(*[p.positions.dtype for p in parts])
        return Atoms(np.concatenate([p.positions.astype(dtype, copy=False) for p in parts]),
                     np.concatenate(elems), species,
                     np.concatenate([p.b_factors for p in parts]),
                     np.concatenate([p.occupancies for p in parts]))


# Hydrogens bonded to each heavy atom of the standard residues (neutral side chains, histidine
# as the Nδ1-H tautomer, Arg/Lys protonated, Asp/Glu deprotonated; chain termini ignored), for
# models without explicit hydrogens. This is what TEM-simulator's ``add_hydrogen`` does (it adds
# the hydrogens' scattering at the heavy atom's position); the counts follow from the residues'
# chemical formulas.
_BACKBONE_H = {"N": 1, "CA": 1}
_SIDECHAIN_H = {
    "ALA": {"CB": 3},
    "ARG": {"CB": 2, "CG": 2, "CD": 2, "NE": 1, "NH1": 2, "NH2": 2},
    "ASN": {"CB": 2, "ND2": 2},
    "ASP": {"CB": 2},
    "CYS": {"CB": 2, "SG": 1},
    "GLN": {"CB": 2, "CG": 2, "NE2": 2},
    "GLU": {"CB": 2, "CG": 2},
    "GLY": {"CA": 2},
    "HIS": {"CB": 2, "ND1": 1, "CD2": 1, "CE1": 1},
    "ILE": {"CB": 1, "CG1": 2, "CG2": 3, "CD1": 3},
    "LEU": {"CB": 2, "CG": 1, "CD1": 3, "CD2": 3},
    "LYS": {"CB": 2, "CG": 2, "CD": 2, "CE": 2, "NZ": 3},
    "MET": {"CB": 2, "CG": 2, "CE": 3},
    "PHE": {"CB": 2, "CD1": 1, "CD2": 1, "CE1": 1, "CE2": 1, "CZ": 1},
    "PRO": {"N": 0, "CB": 2, "CG": 2, "CD": 2},
    "SER": {"CB": 2, "OG": 1},
    "THR": {"CB": 1, "OG1": 1, "CG2": 3},
    "TRP": {"CB": 2, "CD1": 1, "NE1": 1, "CE3": 1, "CZ2": 1, "CZ3": 1, "CH2": 1},
    "TYR": {"CB": 2, "CD1": 1, "CD2": 1, "CE1": 1, "CE2": 1, "OH": 1},
    "VAL": {"CB": 1, "CG1": 3, "CG2": 3},
}
_RIBOSE_H = {"C5'": 2, "C4'": 1, "C3'": 1, "C2'": 1, "O2'": 1, "C1'": 1}
_DEOXY_H = {"C5'": 2, "C4'": 1, "C3'": 1, "C2'": 2, "C1'": 1}
_BASE_H = {"A": {"C8": 1, "N6": 2, "C2": 1}, "G": {"C8": 1, "N1": 1, "N2": 2},
           "C": {"C5": 1, "C6": 1, "N4": 2}, "U": {"C5": 1, "C6": 1, "N3": 1},
           "T": {"C6": 1, "N3": 1, "C7": 3}}


def implicit_hydrogen_count(residue: str, atom: str) -> int:
    """Hydrogens bonded to heavy atom ``atom`` of ``residue`` (0 for anything unknown)."""
    res = residue.strip().upper()
    name = atom.strip().upper().replace("*", "'")
    if res in ("HOH", "WAT"):
        return 2 if name == "O" else 0
    if res in _SIDECHAIN_H:
        side = _SIDECHAIN_H[res]
        return side[name] if name in side else _BACKBONE_H.get(name, 0)
    if res in ("A", "G", "C", "U"):
        return _RIBOSE_H.get(name, _BASE_H[res].get(name, 0))
    if res in ("DA", "DG", "DC", "DT"):
        return _DEOXY_H.get(name, _BASE_H[res[1]].get(name, 0))
    return 0


def _element_from_name(name: str):
    """Element guessed from a PDB atom name: first letters that make a known symbol."""
    letters = "".join(ch for ch in name.strip() if ch.isalpha()).upper()
    for cand in (letters[:1], letters[:2]):  # protein names (CA = C alpha) start with the element
        if cand:
            try:
                return E.atomic_number(cand)
            except InputError:
                continue
    return None


def _check_truncated(path):
    """Detect a PDB file cut in the middle of a coordinate record (gemmi may accept it)."""
    low = path.lower()
    if low.endswith((".cif", ".mmcif", ".cif.gz")):
        return
    opener = open
    if low.endswith(".gz"):
        import gzip
        opener = gzip.open
    with opener(path, "rt", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith(("ATOM", "HETATM")) and len(line.rstrip("\n")) < 54:
                raise InputError(f"{path}: line {lineno} is a truncated ATOM/HETATM record")


def _normalise_alternates(occ, site):
    """Scale the alternate locations of each atom so that those present sum to one atom.

    Ensemble models such as 2OM3 store one conformer per MODEL as altloc A..E with
    occupancy 0.2 each; taking model 1 alone must still give whole atoms. Where all the
    alternates of a site are in the model (the usual crystallographic case) their
    occupancies already sum to one and nothing changes; atoms without an altloc keep
    their occupancy (a partially occupied ligand stays partial).
    """
    groups = {}
    for i, key in enumerate(site):
        if key is not None:
            groups.setdefault(key, []).append(i)
    for idx in groups.values():
        total = float(occ[idx].sum())
        if total > 0:
            occ[idx] = occ[idx] / total
    return occ


def read_structure(path, *, hydrogens=True, infer_elements=False, model=0, with_chains=False,
                   implicit_hydrogens=False):
    """Atoms of the first model of a PDB or mmCIF file.

    Parameters
    ----------
    path : str
        PDB (``.pdb``, ``.ent``) or mmCIF (``.cif``) file, optionally gzipped.
    hydrogens : bool
        Keep hydrogen (and deuterium) atoms.
    infer_elements : bool
        Where the element column is empty or not an element, take it from the atom name
        instead of refusing the file.
    model : int
        Model index (0: the first).
    with_chains : bool
        Also return the chain name and subchain (label_asym_id) of every atom (for assemblies).
    implicit_hydrogens : bool
        For a model without hydrogens: add, at each heavy atom of a standard residue, the
        hydrogens bonded to it (one H entry whose occupancy is the count × the heavy atom's;
        :func:`implicit_hydrogen_count`), as TEM-simulator's ``add_hydrogen`` does. Refused for a
        model that has explicit hydrogens.

    Returns
    -------
    Atoms, or (Atoms, chains, subchains) with ``with_chains``.
    """
    import gemmi

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"structure file {path} does not exist")
    try:
        _check_truncated(path)
        st = gemmi.read_structure(path)
        # gemmi decodes names (UTF-8) on access: touch them here, so bad bytes are an InputError
        _ = [(c.name, r.name, r.seqid.icode, a.name, a.altloc) for md in st for c in md for r in c for a in r]
    except InputError:
        raise
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with its own message
        raise InputError(f"{path}: cannot read as PDB or mmCIF ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if len(st) <= model:
        raise InputError(f"{path}: no model {model + 1} (the file has {len(st)} models and no atoms"
                         f"{'' if len(st) else ' at all'})")
    st.setup_entities()
    m = st[model]
    zs, pos, bs, occ, chains, subs, site, implicit = [], [], [], [], [], [], [], []
    for ch in m:
        for res in ch:
            sub = res.subchain
            for at in res:
                el = at.element
                z = el.atomic_number
                if z < 1 or z > E.MAX_Z or el.name in ("X", ""):
                    guess = _element_from_name(at.name) if infer_elements else None
                    if guess is None:
                        raise InputError(f"{path}: atom {at.name!r} of {res.name} {res.seqid.num} chain "
                                         f"{ch.name} has unknown element {el.name!r} "
                                         f"(use infer_elements / --infer-elements to take it from the name)")
                    z = guess
                if z == 1 and not hydrogens:
                    continue
                if z == 1 and implicit_hydrogens:
                    raise InputError(f"{path}: the model has explicit hydrogens; implicit_hydrogens would "
                                     f"count them twice")
                p = at.pos
                key = (ch.name, res.seqid.num, res.seqid.icode, at.name) if at.altloc != "\0" else None
                nh = implicit_hydrogen_count(res.name, at.name) if implicit_hydrogens else 0
                if nh:  # the hydrogens' occupancy follows the heavy atom's (set after normalising)
                    implicit.append((len(zs) + 1, len(zs), nh))
                for zz, oo, kk in ((z, at.occ, key), (1, 0.0, None)) if nh else ((z, at.occ, key),):
                    zs.append(zz)
                    pos.append((p.x, p.y, p.z))
                    bs.append(at.b_iso)
                    occ.append(oo)
                    site.append(kk)
                    if with_chains:
                        chains.append(ch.name)
                        subs.append(sub)
    if not zs:
        raise InputError(f"{path}: the model has no atoms" + ("" if hydrogens else " (hydrogens excluded)"))
    positions = np.asarray(pos, dtype=np.float64)
    if not np.isfinite(positions).all():
        bad = int(np.flatnonzero(~np.isfinite(positions).all(1))[0])
        raise InputError(f"{path}: atom {bad + 1} has non-finite coordinates")
    bs = np.asarray(bs, dtype=np.float32)
    occ = np.asarray(occ, dtype=np.float32)
    if not (np.isfinite(bs).all() and np.isfinite(occ).all()):
        raise InputError(f"{path}: non-finite B-factor or occupancy")
    occ = _normalise_alternates(occ, site)
    for h, heavy, nh in implicit:
        occ[h] = nh * occ[heavy]
    species, elements = np.unique(np.asarray(zs, dtype=np.int16), return_inverse=True)
    atoms = Atoms(positions, elements, tuple(int(z) for z in species), bs, occ)
    if with_chains:
        return atoms, np.asarray(chains), np.asarray(subs)
    return atoms


def assembly_operators(path, assembly=0):
    """Operators of a biological assembly: list of (chains, subchains, R (k,3,3), t (k,3))."""
    import gemmi

    try:
        st = gemmi.read_structure(os.fspath(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot read as PDB or mmCIF ({exc})") from None
    if not st.assemblies:
        raise InputError(f"{path}: no assembly (REMARK 350 BIOMT / pdbx_struct_assembly) in the file")
    if assembly >= len(st.assemblies):
        raise InputError(f"{path}: assembly {assembly + 1} requested, the file has {len(st.assemblies)}")
    out = []
    for gen in st.assemblies[assembly].generators:
        R = np.array([np.array(op.transform.mat.tolist()) for op in gen.operators])
        t = np.array([op.transform.vec.tolist() for op in gen.operators])
        out.append((list(gen.chains), list(gen.subchains), R, t))
    return out


def apply_operators(atoms: Atoms, rotations, translations) -> Atoms:
    """Copies of ``atoms`` at Rₖ·x + tₖ for every operator k (one array op per copy)."""
    R = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    t = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
    k, n = len(R), atoms.n
    pos = np.empty((k * n, 3), dtype=atoms.positions.dtype)
    for i in range(k):
        pos[i * n:(i + 1) * n] = atoms.positions @ R[i].T + t[i]
    return Atoms(pos, np.tile(atoms.elements, k), atoms.species, np.tile(atoms.b_factors, k),
                 np.tile(atoms.occupancies, k))


def biological_assembly(path, assembly=0, **read_kw) -> Atoms:
    """The atoms of a biological assembly (PDB BIOMT or mmCIF assembly generators)."""
    atoms, chains, subs = read_structure(path, with_chains=True, **read_kw)
    parts = []
    for gen_chains, gen_subs, R, t in assembly_operators(path, assembly):
        if gen_subs:
            mask = np.isin(subs, gen_subs)
        elif gen_chains:
            mask = np.isin(chains, gen_chains)
        else:
            mask = np.ones(atoms.n, bool)
        if mask.any():
            parts.append(apply_operators(atoms.select(mask), R, t))
    if not parts:
        raise InputError(f"{path}: the assembly's operators apply to chains that have no atoms")
    return Atoms.concatenate(parts)


def _read_matrix_text(path, what):
    """TEM-simulator's matrix text format: '#' comments, a 'rows cols' line, then the rows."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} {path} does not exist")
    rows, header = [], None
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            s = line.split("#", 1)[0].strip()
            if not s:
                continue
            try:
                vals = [float(v) for v in s.split()]
            except ValueError:
                raise InputError(f"{path}: line {lineno} is not a row of numbers: {s[:40]!r}") from None
            if header is None:
                if len(vals) != 2 or vals[0] != int(vals[0]) or vals[1] != int(vals[1]) or vals[0] < 1:
                    raise InputError(f"{path}: line {lineno} must be the size line 'rows columns', got {s!r}")
                header = (int(vals[0]), int(vals[1]))
                continue
            if len(vals) != header[1]:
                raise InputError(f"{path}: line {lineno} has {len(vals)} numbers, the size line says {header[1]}")
            rows.append(vals)
    if header is None:
        raise InputError(f"{path}: empty {what} (no 'rows columns' line)")
    if len(rows) != header[0]:
        raise InputError(f"{path}: {len(rows)} data rows, the size line says {header[0]} (truncated file?)")
    data = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(data).all():
        raise InputError(f"{path}: non-finite number in the {what}")
    return data


def euler_matrix(phi_deg, theta_deg, psi_deg):
    """Rotation of TEM-simulator's Euler angles: R = Rz(ψ) · Rx(θ) · Rz(φ) (active, right-handed).

    A body point p goes to R·p: first φ about z, then θ about the (fixed) x axis, then ψ about
    z. This is the transpose of the matrix TEM-simulator builds for its sample-to-particle map
    (``rotate_particle``: Rz(−φ)·Rx(−θ)·Rz(−ψ), as in its port diff_tem/particleset.py,
    ``get_particle_rotation_matrix``), and it matches the example TMV_coord.txt: angles
    (0, 90, 90) mean "90° about x, then 90° about z". Works on arrays of angles ((..., 3, 3)).
    """
    f, t, p = (np.radians(np.asarray(a, dtype=np.float64)) for a in (phi_deg, theta_deg, psi_deg))
    cf, sf, ct, st, cp, sp = np.cos(f), np.sin(f), np.cos(t), np.sin(t), np.cos(p), np.sin(p)
    one, zero = np.ones_like(cf), np.zeros_like(cf)

    def rz(c, s):
        return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1),
                         np.stack([zero, zero, one], -1)], -2)

    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, ct, -st], -1),
                   np.stack([zero, st, ct], -1)], -2)
    return rz(cp, sp) @ rx @ rz(cf, sf)


def read_transform_file(path):
    """A TEM-simulator ``pdb_transf_file_in``: ``(R (k,3,3), t (k,3) in Å)``.

    Four columns: k blocks of three rows [R | t] (a BIOMT-like 3×4 matrix). Six columns: one row
    per copy, ``x y z phi theta psi`` (translation in Å, Euler angles in degrees, see
    :func:`euler_matrix`).
    """
    data = _read_matrix_text(path, "transform file")
    if data.shape[1] == 4:
        if len(data) % 3:
            raise InputError(f"{path}: {len(data)} rows is not a multiple of 3 (3 rows per transform)")
        m = data.reshape(-1, 3, 4)
        R, t = m[:, :, :3], m[:, :, 3]
    elif data.shape[1] == 6:
        t = data[:, :3]
        R = euler_matrix(data[:, 3], data[:, 4], data[:, 5])
    else:
        raise InputError(f"{path}: {data.shape[1]} columns; a transform file has 4 or 6")
    det = np.linalg.det(R)
    if not np.allclose(det, 1.0, atol=1e-3):
        k = int(np.argmax(np.abs(det - 1)))
        raise InputError(f"{path}: transform {k + 1} is not a rotation (determinant {det[k]:.4f})")
    return R, t


def load_particle(path, transform_file=None, *, assembly=None, center="bbox", **read_kw) -> Atoms:
    """One particle: a structure, optionally expanded by a transform file or a biological assembly,
    then centred (``center``: ``"bbox"``, ``"mean"`` or None)."""
    if assembly is not None:
        atoms = biological_assembly(path, assembly, **read_kw)
    else:
        atoms = read_structure(path, **read_kw)
    if transform_file is not None:
        R, t = read_transform_file(transform_file)
        atoms = apply_operators(atoms, R, t)
    return atoms.centered(center) if center else atoms


def _data_path(*parts):
    from importlib import resources

    return str(resources.files("cutem.data").joinpath(*parts))


def tmv_fragment(center="bbox") -> Atoms:
    """The TEM-simulator example particle: 2OM3 (first model) × the 49 transforms of
    2OM3_transf.txt (62,671 atoms), shipped in cutem/data/tmv."""
    return load_particle(_data_path("tmv", "2OM3_model1.pdb"), _data_path("tmv", "2OM3_transf.txt"),
                         center=center)


__all__ = ["Atoms", "read_structure", "implicit_hydrogen_count", "assembly_operators", "apply_operators", "biological_assembly",
           "read_transform_file", "euler_matrix", "load_particle", "tmv_fragment"]
