"""The specimen: particles placed and oriented in an ice layer (TEM-simulator's sample model).

Frames. *Body* frame: a particle's own atoms, centred (bounding-box centre at 0). *Sample*
frame: the ice layer lies in the plane z = 0 (its mid-plane), particle ``k`` at
``x = Rₖ·p + tₖ``. *Microscope* frame (what the potential and the image use): the sample turned
by the tilt, ``x_mic = T(θ, φ)·x_sample``, with T the right-handed rotation by the tilt angle θ
about the in-plane axis (cos φ, sin φ, 0) — φ = ``tilt_axis_deg`` measured counter-clockwise
from the image x axis; φ = 0 is TEM-simulator's default (tilt about x). The beam runs along +z
of the microscope frame; image pixel (i, j) sits at x = (j − nx/2)·px, y = (i − ny/2)·px
(cutem.potential; TEM-simulator input files: (j − (nx−1)/2)·px, cutem.grid's ``grid_origin``).
The atoms are rotated, never a voxel map: :meth:`Scene.atoms` is what the pipeline calls once
per tilt.

Orientations: TEM-simulator Euler angles (φ, θ, ψ) in degrees, R = Rz(ψ)·Rx(θ)·Rz(φ)
(:func:`cutem.structure.euler_matrix`, which cites the convention). Coordinate files
(``coord_file_in``, e.g. TMV_coord.txt): a ``rows 6`` line, then ``x y z φ θ ψ`` per particle
with positions in nm (converted to Å here).

Ice (TEM-simulator ``sample``, Rullgård et al., J. Microsc. 243:234, 2011): a circular hole of
diameter D centred at (offset_x, offset_y); inside it the ice is a slab symmetric about z = 0
whose thickness grows parabolically from ``thickness_center`` at the centre to
``thickness_edge`` at the rim, h(r) = t_c + (t_e − t_c)·(2r/D)² (the surfaces
z = ±(t_c/2 + 2(t_e − t_c) r²/D²) of TEM-simulator's particle placement, as in its port
diff_tem/particleset.py). Outside the hole TEM-simulator has the support slab, of thickness
``thickness_edge``: here, with ``support_film="carbon"``, amorphous carbon (2.0 g/cm³) of
thickness ``support_thickness_A`` (``thickness_edge`` when 0); without a support film the ice
simply continues outside the hole at ``thickness_edge``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .params import Sample
from .structure import Atoms, euler_matrix, load_particle, _read_matrix_text


# ------------------------------------------------------------------------------ geometry
def tilt_matrix(tilt_deg=0.0, tilt_axis_deg=0.0):
    """Right-handed rotation by ``tilt_deg`` about the in-plane axis at ``tilt_axis_deg`` from x."""
    th = math.radians(float(tilt_deg))
    ph = math.radians(float(tilt_axis_deg))
    a = np.array([math.cos(ph), math.sin(ph), 0.0])
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(th) * K + (1 - math.cos(th)) * (K @ K)


def ice_thickness_A(sample: Sample, x, y):
    """Ice thickness (Å) at sample-frame positions (x, y) in Å (TEM-simulator's parabolic hole)."""
    x = np.asarray(x, dtype=np.float64) - sample.offset_x_A
    y = np.asarray(y, dtype=np.float64) - sample.offset_y_A
    rho2 = (x * x + y * y) * (4.0 / sample.diameter_A ** 2)
    inside = rho2 <= 1.0
    h_in = sample.thickness_center_A + (sample.thickness_edge_A - sample.thickness_center_A) * rho2
    if sample.support_film == "carbon":
        h_out = 0.0
    else:
        h_out = sample.thickness_edge_A
    return np.where(inside, h_in, h_out)


def support_thickness_A(sample: Sample, x, y):
    """Carbon support film thickness (Å) at sample-frame (x, y): outside the hole only."""
    if sample.support_film != "carbon":
        return np.zeros(np.broadcast(np.asarray(x), np.asarray(y)).shape)
    x = np.asarray(x, dtype=np.float64) - sample.offset_x_A
    y = np.asarray(y, dtype=np.float64) - sample.offset_y_A
    outside = (x * x + y * y) * (4.0 / sample.diameter_A ** 2) > 1.0
    t = sample.support_thickness_A or sample.thickness_edge_A
    return np.where(outside, t, 0.0)


def random_contaminants(sample: Sample, count, radius_A, field_A, rng, side="top"):
    """``count`` balls of ice resting on the layer, for ``Sample.contaminants``.

    Centres uniform over the field ``field_A = (width, height)`` (Å, centred on the optical
    axis), radii uniform in ``radius_A = (lo, hi)`` (Å), each touching the ``side`` ("top",
    "bottom" or "both", a fair coin per ball) surface of the layer from outside at its centre:
    z = ±(h(x, y)/2 + r), h :func:`ice_thickness_A`. ``rng``: a seeded generator or int.
    Returns a tuple of (x, y, z, r); ``sample.replace(contaminants=...)`` puts them in.
    The heights are computed here, once: the sample holds them as data, so they do not move
    with a thickness that is later changed or differentiated (cutem.potential.IcePotentialStage).
    """
    rng = np.random.default_rng(rng)
    lo, hi = (float(v) for v in radius_A)
    if not 0 < lo <= hi:
        raise InputError(f"contaminant radii {radius_A} Å must satisfy 0 < lo <= hi")
    if side not in ("top", "bottom", "both"):
        raise InputError(f"contaminant side must be top, bottom or both, not {side!r}")
    n = int(count)
    w, h = (float(v) for v in field_A)
    x = (rng.random(n) - 0.5) * w
    y = (rng.random(n) - 0.5) * h
    r = lo + (hi - lo) * rng.random(n)
    up = np.ones(n) if side == "top" else -np.ones(n) if side == "bottom" else np.where(rng.random(n) < 0.5, 1.0, -1.0)
    z = up * (0.5 * ice_thickness_A(sample, x, y) + r)
    return tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in zip(x, y, z, r))


# ------------------------------------------------------------------------------- scene
@dataclass
class Particle:
    """One placed particle: body-frame atoms (shared between copies), rotation, translation (Å)."""

    atoms: Atoms
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    name: str = "particle"


class Scene:
    """Particles in an ice layer. ``Scene.atoms(tilt_deg, tilt_axis_deg)`` gives all atoms in the
    microscope frame for one tilt (one pass per particle into one preallocated array)."""

    def __init__(self, particles=(), sample: Sample | None = None):
        self.particles = list(particles)
        self.sample = sample
        self._static = None

    def __len__(self):
        return len(self.particles)

    @property
    def n_atoms(self) -> int:
        return sum(p.atoms.n for p in self.particles)

    def add(self, atoms, rotation=None, translation=None, name="particle"):
        self.particles.append(Particle(atoms, np.eye(3) if rotation is None else np.asarray(rotation, float),
                                       np.zeros(3) if translation is None else np.asarray(translation, float),
                                       name))
        self._static = None
        return self

    def _static_arrays(self):
        """Element index, B and occupancy of all atoms (the same for every tilt; cached)."""
        if self._static is None:
            species = tuple(sorted({z for p in self.particles for z in p.atoms.species}))
            lut = {z: i for i, z in enumerate(species)}
            n = self.n_atoms
            el = np.empty(n, np.int16)
            b = np.empty(n, np.float32)
            o = np.empty(n, np.float32)
            i = 0
            for p in self.particles:
                m = p.atoms.n
                el[i:i + m] = np.asarray([lut[z] for z in p.atoms.species], np.int16)[p.atoms.elements]
                b[i:i + m] = p.atoms.b_factors
                o[i:i + m] = p.atoms.occupancies
                i += m
            self._static = (species, el, b, o)
        return self._static

    def atoms(self, tilt_deg=0.0, tilt_axis_deg=0.0, dtype=np.float32) -> Atoms:
        """All atoms in the microscope frame for a tilt: x = T·(Rₖ·p + tₖ)."""
        species, el, b, o = self._static_arrays()
        T = tilt_matrix(tilt_deg, tilt_axis_deg)
        pos = np.empty((self.n_atoms, 3), dtype=dtype)
        i = 0
        for p in self.particles:
            m = p.atoms.n
            M = (T @ p.rotation).astype(dtype)
            t = (T @ p.translation).astype(dtype)
            src = p.atoms.positions
            out = pos[i:i + m]
            # 3×3 by hand, not matmul: a BLAS call on an (m, 3) array leaves OpenBLAS threads
            # spinning on the cores that the FFTs and the scatter need next
            for k in range(3):
                np.multiply(src[:, 0], M[k, 0], out=out[:, k], casting="unsafe")
                out[:, k] += src[:, 1] * M[k, 1]
                out[:, k] += src[:, 2] * M[k, 2]
                out[:, k] += t[k]
            i += m
        return Atoms(pos, el, species, b, o)

    def z_extent(self, tilt_deg=0.0, tilt_axis_deg=0.0):
        """(zmin, zmax) in Å of the particles' bounding spheres in the microscope frame."""
        if not self.particles:
            return (-1.0, 1.0)
        T = tilt_matrix(tilt_deg, tilt_axis_deg)
        z = np.array([(T @ p.translation)[2] for p in self.particles])
        r = np.array([p.atoms.radius() for p in self.particles])
        return float((z - r).min()), float((z + r).max())


# ---------------------------------------------------------------------------- placement
def read_coord_file(path):
    """TEM-simulator particle coordinate file → (positions (k,3) Å, Euler angles (k,3) degrees)."""
    data = _read_matrix_text(path, "particle coordinate file")
    if data.shape[1] not in (3, 6):
        raise InputError(f"{path}: {data.shape[1]} columns; a coordinate file has 6 (x y z phi theta psi) or 3")
    pos = data[:, :3] * 10.0  # nm -> Å
    ang = data[:, 3:6] if data.shape[1] == 6 else np.zeros((len(data), 3))
    return pos, ang


def scene_from_list(atoms: Atoms, placements, sample=None, name="particle") -> Scene:
    """Scene from ``[(x_A, y_A, z_A, phi_deg, theta_deg, psi_deg), ...]``."""
    sc = Scene(sample=sample)
    for row in placements:
        row = [float(v) for v in row]
        if len(row) not in (3, 6) or not all(math.isfinite(v) for v in row):
            raise InputError(f"particle placement {row} must be x, y, z (Å) and optionally phi, theta, psi (deg)")
        ang = row[3:6] if len(row) == 6 else (0, 0, 0)
        sc.add(atoms, euler_matrix(*ang), row[:3], name)
    return sc


def scene_from_coord_file(atoms: Atoms, path, sample=None, name="particle", num_particles=None) -> Scene:
    """Scene from a TEM-simulator coordinate file (positions nm, Euler angles degrees)."""
    pos, ang = read_coord_file(path)
    if num_particles is not None:
        if num_particles > len(pos):
            raise InputError(f"{path}: num_particles = {num_particles} but the file lists {len(pos)}")
        pos, ang = pos[:num_particles], ang[:num_particles]
    sc = Scene(sample=sample)
    R = euler_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    for k in range(len(pos)):
        sc.add(atoms, R[k], pos[k], name)
    return sc


def random_rotations(n, rng):
    """Uniformly distributed rotations (Shoemake's quaternion method), (n, 3, 3)."""
    u1, u2, u3 = rng.random((3, n))
    q = np.stack([np.sqrt(1 - u1) * np.sin(2 * np.pi * u2), np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
                  np.sqrt(u1) * np.sin(2 * np.pi * u3), np.sqrt(u1) * np.cos(2 * np.pi * u3)], 1)
    x, y, z, w = q.T
    return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
                     np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
                     np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def random_scene(atoms: Atoms, *, region_A, count=None, concentration_per_um3=None, sample=None,
                 seed=0, rng=None, max_tries=200000, name="particle", keep_in_ice=True,
                 margin_A=0.0, where="volume", existing=None) -> Scene:
    """Particles at random non-overlapping positions and uniformly random orientations.

    Parameters
    ----------
    atoms : Atoms
        Body-frame atoms of the particle (centred).
    region_A : (width, height)
        The xy extent (Å) centred on the optical axis in which particle centres are drawn
        (usually the field of view).
    count, concentration_per_um3 : int or float
        How many: a number, or a concentration in particles per µm³ of ice in the region.
    sample : cutem.params.Sample
        The ice layer; with ``keep_in_ice`` every particle lies entirely inside the ice
        (|z| + radius ≤ h/2 at its xy) — a particle that cannot fit is an error.
    seed, rng : reproducible draws.
    where : str
        ``"volume"`` (anywhere in the ice), ``"top"`` / ``"bottom"`` (touching the surface the
        beam meets first, z < 0 / last, z > 0; TEM-simulator's particleset ``where``).
    existing : Scene or None
        Particles already placed, which the new ones must not overlap.

    Overlap is judged on bounding spheres (radius = farthest atom from the centre, plus
    ``margin_A``), which is conservative for elongated particles.
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    sample = sample if sample is not None else Sample()
    w, h = (float(v) for v in region_A)
    r = atoms.radius() + float(margin_A)
    if count is None:
        if concentration_per_um3 is None:
            raise InputError("random placement needs count or concentration_per_um3")
        gx = np.linspace(-w / 2, w / 2, 64)
        gy = np.linspace(-h / 2, h / 2, 64)
        mean_t = float(ice_thickness_A(sample, gx[None, :], gy[:, None]).mean())
        count = int(round(float(concentration_per_um3) * w * h * mean_t * 1e-12))
    count = int(count)
    if count < 0:
        raise InputError(f"particle count {count} must be >= 0")
    if where not in ("volume", "top", "bottom"):
        raise InputError(f"random placement where = {where!r}: volume, top or bottom")
    centres = np.zeros((0, 3))
    old_c = np.array([p.translation for p in existing.particles]) if existing is not None and len(existing) else np.zeros((0, 3))
    old_r = np.array([p.atoms.radius() for p in existing.particles]) if len(old_c) else np.zeros(0)
    tries = 0
    while len(centres) < count:
        tries += 1
        if tries > max_tries:
            raise InputError(f"could place only {len(centres)} of {count} particles (radius {r:.0f} Å) "
                             f"without overlap in {w:.0f}×{h:.0f} Å; lower the count or enlarge the region")
        x = rng.uniform(-w / 2 + r, w / 2 - r) if w > 2 * r else 0.0
        y = rng.uniform(-h / 2 + r, h / 2 - r) if h > 2 * r else 0.0
        half = 0.5 * float(ice_thickness_A(sample, x, y))
        if keep_in_ice:
            room = half - r
            if room < 0:
                if float(ice_thickness_A(sample, 0, 0)) < 2 * r and float(
                        np.max(ice_thickness_A(sample, np.linspace(-w / 2, w / 2, 9), 0))) < 2 * r:
                    raise InputError(f"particle diameter {2 * r:.0f} Å does not fit in the ice "
                                     f"({2 * half:.0f} Å thick here); thicken the ice or keep_in_ice=False")
                continue
            zc = rng.uniform(-room, room) if where == "volume" else (-room if where == "top" else room)
        else:
            zc = rng.uniform(-half, half) if half > 0 else 0.0
        c = np.array([x, y, zc])
        if len(centres) and (((centres - c) ** 2).sum(1) < (2 * r) ** 2).any():
            continue
        if len(old_c) and (np.sqrt(((old_c - c) ** 2).sum(1)) < old_r + r).any():
            continue
        centres = np.vstack([centres, c])
    sc = Scene(sample=sample)
    R = random_rotations(count, rng)
    for k in range(count):
        sc.add(atoms, R[k], centres[k], name)
    return sc


# ---------------------------------------------------------------- configured scenes
def scene_from_config(cfg) -> Scene:
    """Scene of a :class:`cutem.config.RunConfig`: its sample and particle specifications
    (placement ``file`` / ``list`` / ``random``; random draws from ``cfg.seed``, inside the
    detector's field of view, without overlapping earlier particles)."""
    sample = cfg.sample
    rng = np.random.default_rng(cfg.seed)
    scene = Scene(sample=sample)
    cache = {}
    det = cfg.detector
    region = (det.nx * det.pixel_size_A, det.ny * det.pixel_size_A)
    for spec in cfg.particles:
        key = (spec.structure, spec.transforms, spec.assembly, spec.hydrogens, spec.implicit_hydrogens,
               spec.infer_elements)
        if key not in cache:
            cache[key] = load_particle(spec.structure, spec.transforms, assembly=0 if spec.assembly else None,
                                       hydrogens=spec.hydrogens, implicit_hydrogens=spec.implicit_hydrogens,
                                       infer_elements=spec.infer_elements)
        atoms = cache[key]
        if spec.placement == "file":
            sub = scene_from_coord_file(atoms, spec.coords_file, sample, spec.name)
        elif spec.placement == "list":
            ori = spec.orientations_deg or [(0.0, 0.0, 0.0)] * len(spec.positions_A)
            sub = scene_from_list(atoms, [tuple(p) + tuple(o) for p, o in zip(spec.positions_A, ori)], sample,
                                  spec.name)
        else:
            sub = random_scene(atoms, region_A=region, count=spec.count or None,
                               concentration_per_um3=spec.concentration_per_um3, sample=sample, rng=rng,
                               name=spec.name, where=spec.where, existing=scene)
        scene.particles.extend(sub.particles)
    return scene


__all__ = ["tilt_matrix", "ice_thickness_A", "support_thickness_A", "random_contaminants", "Particle", "Scene", "read_coord_file",
           "scene_from_list", "scene_from_coord_file", "random_rotations", "random_scene",
           "scene_from_config"]
