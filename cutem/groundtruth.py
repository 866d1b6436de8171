"""Ground truth of a simulation: what was put where, in the files the field's tools read.

Beside ``NAME.mrc`` a run writes

- ``NAME_particles.star`` (RELION 5 names, written with ``starfile``). One micrograph:
  ``rlnMicrographName``, ``rlnCoordinateX/Y`` in pixels of the written micrograph with RELION's
  origin (pixel 0 is the first pixel: column j is x = j, row i is y = i), ``rlnAngleRot/Tilt/Psi``,
  ``rlnDefocusU/V/Angle``, ``rlnImagePixelSize``, ``rlnVoltage``, ``rlnSphericalAberration``,
  ``rlnAmplitudeContrast``, ``rlnClassNumber`` (one per particle kind, in the order of the
  config's ``[[particles]]``) and, as labels of cutem's own (RELION keeps unknown labels as
  strings), ``cutemParticleName`` and ``cutemStructureFile``. A tilt series: ``rlnTomoName``,
  ``rlnCoordinateX/Y/Z`` in voxels of the tomogram (origin the first voxel) and
  ``rlnCenteredCoordinateX/Y/ZAngst`` (RELION 5's, from the tomogram centre), angles of the
  particle in the tomogram frame, class and structure.
- tilt series only: ``NAME_tomograms.star`` (RELION 5 ``data_global``: optics, pixel size,
  tomogram size, the tilt-series STAR's name), ``NAME_tiltseries.star`` (per tilt in stack
  order: image, nominal tilt angle, tilt axis, pre-exposure, defocus, and the projection
  ``rlnTomoXTilt/YTilt/ZRot`` with zero shifts), IMOD ``NAME.xf`` and ``NAME.defocus``.

Frames (:mod:`cutem.specimen`): a particle's body-frame atoms p (centred on their bounding box)
sit at x = R·p + t in the sample frame; tilt k images T_k·x (T_k the right-handed rotation
by the tilt angle about the axis at ``tilt_axis_deg`` from image x); the beam runs along +z
and image pixel (i, j) lies at x = (j − nx/2)·px, y = (i − ny/2)·px (:mod:`cutem.potential`).
Hence the micrograph coordinate of a particle is (T t)_{x,y}/px + (nx/2, ny/2); with
``Simulation.grid_origin = "middle"`` (TEM-simulator input files: pixel j at (j − (nx−1)/2)·px)
(T t)_{x,y}/px + ((nx−1)/2, (ny−1)/2) (:func:`cutem.grid.detector_shift_A`).

Orientation: RELION's ``Euler_angles2matrix(rot, tilt, psi)`` is
A = Rz(−psi)·Ry(−tilt)·Rz(−rot) with R_a(α) the active right-handed rotation (RELION
conventions page; Heymann, Chagoyen & Belnap, J. Struct. Biol. 151:196, 2005), and RELION's
projector takes the reference's 3D frequency A^T·(kx, ky, 0) for image frequency (kx, ky)
(Scheres, J. Mol. Biol. 415:406, 2012): the image is the projection along z of the reference
turned by A, V(A^T r). cutem's image of a particle is the projection of its atoms turned by
T·R, so A = T·R and the STAR's angles are ``matrix2euler(T @ R)``; the reference map is the
structure's atoms in the body frame (bounding-box centre at the map centre). In the tomogram
frame (the sample frame) A = R.

Tomogram: voxels of the detector pixel size, (nx, ny) of the detector and nz covering the
ice and every particle; voxel (ix, iy, iz) lies at x = (ix − nx/2)·px, ... in the sample
frame, so tilt k projects voxel coordinates X as (T_k·(X − N/2)·px)_{x,y}/px + (nx/2, ny/2).
IMOD's aligned stack has its tilt axis along y: ``NAME.xf`` turns each image by
90° − tilt_axis_deg (a11 a12 a21 a22 dx dy, IMOD's ``xf`` order) and ``NAME.defocus`` holds
ctfplotter's version-2 lines (views, angles, defocus in nm). The signs IMOD and RELION give
to the tilt angle and ZRot (tomogram hand) are not checked here against those programs.

Label maps (``--labels``, ``NAME_labels.mrc``): for a micrograph, per pixel the 1-based row
of the particle in ``NAME_particles.star`` (0: none), where that particle's projected
potential alone (:func:`cutem.potential.projected_potential`, blurred to the particle scale
by a Gaussian of B = ``LABEL_B_A2`` = 300 Å², σ = 1.95 Å) exceeds ``LABEL_FRACTION`` = 10%
of its own maximum; where two particles qualify, the one higher relative to its maximum. For
a tilt series the same in 3D at the tomogram's voxels: the potential in slices one voxel
thick, blurred along z by the same σ. Each particle is computed in a box of its own size, so
the memory is the label array plus one box; :func:`label_bytes` states it before the run.

Per-particle defocus: with ``simulation.method = "projection"`` every particle is imaged at
the run's defocus (the phase object sits on the reference plane); with ``"multislice"`` a
particle at beam height z (down-beam positive, so up-beam height −z) is imaged at Δf + z
(PHYSICS.md: Δf − z_up, underfocus positive); tests/test_groundtruth.py checks it against
cutem's multislice image of a particle 300 Å above and below the centre plane.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import io
from .errors import InputError
from .grid import detector_shift_A
from .specimen import ice_thickness_A, tilt_matrix

_EPS = 1e-9


# ---------------------------------------------------------------------------- Euler angles
def euler_angles2matrix(rot_deg, tilt_deg, psi_deg):
    """RELION's rotation of Euler angles (degrees): A = Rz(−psi)·Ry(−tilt)·Rz(−rot), (..., 3, 3)."""
    a, b, g = (np.radians(np.asarray(v, dtype=np.float64)) for v in (rot_deg, tilt_deg, psi_deg))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    row0 = np.stack([cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb], -1)
    row1 = np.stack([-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb], -1)
    row2 = np.stack([sb * ca, sb * sa, cb], -1)
    return np.stack([row0, row1, row2], -2)


def matrix2euler(A):
    """(rot, tilt, psi) in degrees with ``euler_angles2matrix(rot, tilt, psi) == A``; tilt in [0, 180].

    For tilt 0 or 180 only rot ± psi is defined; rot is set to 0 there.
    """
    A = np.asarray(A, dtype=np.float64)
    tilt = np.arccos(np.clip(A[..., 2, 2], -1.0, 1.0))
    sb = np.sin(tilt)
    general = sb > 1e-6
    rot = np.where(general, np.arctan2(A[..., 2, 1], A[..., 2, 0]), 0.0)
    # rot = 0: row 0 of A is (cos psi cos tilt, sin psi, -cos psi sin tilt)
    psi = np.where(general, np.arctan2(A[..., 1, 2], -A[..., 0, 2]),
                   np.arctan2(A[..., 0, 1], A[..., 0, 0] * np.sign(A[..., 2, 2])))
    return np.degrees(rot), np.degrees(tilt), np.degrees(psi)


#: blur (B-factor, Å²) and relative threshold of the label maps (module docstring)
LABEL_B_A2 = 300.0
LABEL_FRACTION = 0.1


# --------------------------------------------------------------------------- the tables
def _kinds(cfg):
    """Particle name → (class number from 1, structure file), in the config's order."""
    kinds = {}
    for spec in cfg.particles:
        kinds.setdefault(spec.name, (len(kinds) + 1, str(spec.structure)))
    return kinds


def _optics_columns(cfg, n):
    o = cfg.optics
    return {"rlnImagePixelSize": [float(cfg.detector.pixel_size_A)] * n, "rlnVoltage": [float(o.voltage_kV)] * n,
            "rlnSphericalAberration": [float(o.cs_mm)] * n, "rlnAmplitudeContrast": [float(o.amplitude_contrast)] * n}


def _identity_columns(scene, cfg):
    kinds = _kinds(cfg)
    missing = sorted({p.name for p in scene.particles} - set(kinds))
    if missing:
        raise InputError(f"ground truth: particle kind {missing[0]!r} is not among the config's particles")
    return {"rlnClassNumber": [kinds[p.name][0] for p in scene.particles],
            "cutemParticleName": [p.name for p in scene.particles],
            "cutemStructureFile": [kinds[p.name][1] for p in scene.particles]}


def _shift(cfg):
    """(3,) the scene's shift on the micrograph (:func:`cutem.grid.detector_shift_A`, in x and y)."""
    s = detector_shift_A(cfg)
    return np.array([s, s, 0.0])


def micrograph_particles(scene, cfg, k=0, micrograph_name="micrograph.mrc"):
    """RELION 5 particle table (a dict of columns) of tilt ``k`` of ``cfg`` as one micrograph."""
    from .pipeline import tilt_settings

    angle, optics, _ = tilt_settings(cfg, k)
    det = cfg.detector
    T = tilt_matrix(angle, cfg.geometry.tilt_axis_deg)
    n = len(scene)
    x = np.array([T @ p.translation for p in scene.particles]).reshape(n, 3) + _shift(cfg)
    A = np.array([T @ p.rotation for p in scene.particles]).reshape(n, 3, 3)
    rot, tilt, psi = matrix2euler(A)
    dz = x[:, 2] if cfg.simulation.method == "multislice" else np.zeros(n)
    cols = {"rlnMicrographName": [str(micrograph_name)] * n,
            "rlnCoordinateX": list(x[:, 0] / det.pixel_size_A + det.nx / 2),
            "rlnCoordinateY": list(x[:, 1] / det.pixel_size_A + det.ny / 2),
            "rlnAngleRot": list(rot), "rlnAngleTilt": list(tilt), "rlnAnglePsi": list(psi),
            "rlnDefocusU": list(optics.defocus_u_A + dz), "rlnDefocusV": list(optics.defocus_v_A + dz),
            "rlnDefocusAngle": [float(optics.astigmatism_angle_deg)] * n}
    return {**cols, **_optics_columns(cfg, n), **_identity_columns(scene, cfg)}


def tomogram_shape(scene, cfg):
    """(nz, ny, nx) voxels of the tomogram: the detector's field, nz covering ice and particles."""
    det = cfg.detector
    px = det.pixel_size_A
    w, h = det.nx * px, det.ny * px
    gx, gy = np.meshgrid(np.linspace(-w / 2, w / 2, 17), np.linspace(-h / 2, h / 2, 17))
    depth = float(np.max(ice_thickness_A(cfg.sample, gx, gy))) if cfg.sample.ice else 0.0
    for p in scene.particles:
        depth = max(depth, 2 * (abs(float(p.translation[2])) + p.atoms.radius()))
    nz = 2 * max(1, int(math.ceil(depth / (2 * px))))
    return nz, det.ny, det.nx


def tomogram_particles(scene, cfg, tomo_name):
    """RELION 5 particle table of a tilt series: 3D coordinates in the tomogram, angles in its frame."""
    nz, ny, nx = tomogram_shape(scene, cfg)
    px = cfg.detector.pixel_size_A
    n = len(scene)
    t = np.array([p.translation for p in scene.particles], dtype=np.float64).reshape(n, 3)
    rot, tilt, psi = matrix2euler(np.array([p.rotation for p in scene.particles]).reshape(n, 3, 3))
    cols = {"rlnTomoName": [str(tomo_name)] * n,
            "rlnCoordinateX": list(t[:, 0] / px + nx / 2), "rlnCoordinateY": list(t[:, 1] / px + ny / 2),
            "rlnCoordinateZ": list(t[:, 2] / px + nz / 2),
            "rlnCenteredCoordinateXAngst": list(t[:, 0]), "rlnCenteredCoordinateYAngst": list(t[:, 1]),
            "rlnCenteredCoordinateZAngst": list(t[:, 2]),
            "rlnAngleRot": list(rot), "rlnAngleTilt": list(tilt), "rlnAnglePsi": list(psi)}
    return {**cols, **_optics_columns(cfg, n), **_identity_columns(scene, cfg)}


def project_tomogram_coordinates(xyz_vox, cfg, k, tomo_shape):
    """Pixel (x, y) in tilt ``k`` of tomogram voxel coordinates (..., 3) (the module's frames)."""
    from .pipeline import tilt_settings

    nz, ny, nx = tomo_shape
    px = cfg.detector.pixel_size_A
    xyz = (np.asarray(xyz_vox, dtype=np.float64) - np.array([nx / 2, ny / 2, nz / 2])) * px
    angle = tilt_settings(cfg, k)[0]
    m = xyz @ tilt_matrix(angle, cfg.geometry.tilt_axis_deg).T + _shift(cfg)
    return np.stack([m[..., 0] / px + cfg.detector.nx / 2, m[..., 1] / px + cfg.detector.ny / 2], -1)


def tilt_series_tables(scene, cfg, name):
    """(tomograms.star blocks, tilt-series STAR blocks) of a run named ``name`` (RELION 5)."""
    from .pipeline import tilt_settings

    g, det, o = cfg.geometry, cfg.detector, cfg.optics
    n = len(g.tilt_angles_deg)
    nz, ny, nx = tomogram_shape(scene, cfg)
    per = [tilt_settings(cfg, k) for k in range(n)]
    dose = np.array([d.dose_e_per_A2 for _, _, d in per])
    pre = np.concatenate([[0.0], np.cumsum(dose)[:-1]])   # stack order is acquisition order
    tilts = {"rlnMicrographName": [f"{k + 1}@{name}.mrc" for k in range(n)],
             "rlnTomoNominalStageTiltAngle": [a for a, _, _ in per],
             "rlnTomoNominalTiltAxisAngle": [float(g.tilt_axis_deg)] * n,
             "rlnMicrographPreExposure": list(pre),
             "rlnDefocusU": [op.defocus_u_A for _, op, _ in per], "rlnDefocusV": [op.defocus_v_A for _, op, _ in per],
             "rlnDefocusAngle": [float(op.astigmatism_angle_deg) for _, op, _ in per],
             "rlnTomoXTilt": [0.0] * n, "rlnTomoYTilt": [a for a, _, _ in per],
             "rlnTomoZRot": [float(g.tilt_axis_deg) - 90.0] * n,
             "rlnTomoXShiftAngst": [0.0] * n, "rlnTomoYShiftAngst": [0.0] * n}
    glob = {"rlnTomoName": [name], "rlnTomoTiltSeriesStarFile": [f"{name}_tiltseries.star"],
            "rlnVoltage": [float(o.voltage_kV)], "rlnSphericalAberration": [float(o.cs_mm)],
            "rlnAmplitudeContrast": [float(o.amplitude_contrast)],
            "rlnMicrographOriginalPixelSize": [float(det.pixel_size_A)],
            "rlnTomoTiltSeriesPixelSize": [float(det.pixel_size_A)], "rlnTomoHand": [1.0],
            "rlnTomoSizeX": [nx], "rlnTomoSizeY": [ny], "rlnTomoSizeZ": [nz]}
    return {"global": glob}, {name: tilts}


def write_imod(out_dir, name, cfg):
    """IMOD ``NAME.xf`` (the turn putting the tilt axis on y) and ``NAME.defocus`` (ctfplotter v2)."""
    from .pipeline import tilt_settings

    n = len(cfg.geometry.tilt_angles_deg)
    a = math.radians(90.0 - cfg.geometry.tilt_axis_deg)
    c, s = math.cos(a), math.sin(a)
    xf = "".join(f"{c:12.7f}{-s:12.7f}{s:12.7f}{c:12.7f}{0.0:12.3f}{0.0:12.3f}\n" for _ in range(n))
    lines = []
    for k in range(n):
        angle, op, _ = tilt_settings(cfg, k)
        mean_nm = 0.05 * (op.defocus_u_A + op.defocus_v_A)
        lines.append(f"{k + 1} {k + 1} {angle:.2f} {angle:.2f} {mean_nm:.1f}" + (" 2" if k == 0 else ""))
    paths = {"xf": Path(out_dir) / f"{name}.xf", "defocus": Path(out_dir) / f"{name}.defocus"}
    for key, text in (("xf", xf), ("defocus", "\n".join(lines) + "\n")):
        with io.atomic_path(paths[key], suffix="." + key) as tmp:
            Path(tmp).write_text(text)
    return paths


# ------------------------------------------------------------------------------ label maps
def _box(p, px):
    """Even edge (pixels) of the box holding a particle's blurred potential."""
    sigma = math.sqrt(LABEL_B_A2) / (2 * math.pi * math.sqrt(2))
    return 2 * int(math.ceil((p.atoms.radius() + 4 * sigma) / px)) + 2


def _paste(labels, best, box_values, corner, index):
    """Put particle ``index`` where its relative value beats what is there (clipped to the array)."""
    src, dst = [], []
    for c, b, n in zip(corner, box_values.shape, labels.shape):
        lo, hi = max(c, 0), min(c + b, n)
        if hi <= lo:
            return
        src.append(slice(lo - c, hi - c))
        dst.append(slice(lo, hi))
    v = box_values[tuple(src)]
    region, top = labels[tuple(dst)], best[tuple(dst)]
    take = (v > LABEL_FRACTION) & (v > top)
    region[take] = index
    top[take] = v[take]


def label_image(scene, cfg, k=0):
    """(ny, nx) int32 labels of tilt ``k`` (module docstring)."""
    from .pipeline import tilt_settings
    from .potential import projected_potential

    det = cfg.detector
    px, ny, nx = det.pixel_size_A, det.ny, det.nx
    angle, axis = tilt_settings(cfg, k)[0], cfg.geometry.tilt_axis_deg
    T = tilt_matrix(angle, axis)
    labels, best = np.zeros((ny, nx), np.int32), np.zeros((ny, nx), np.float32)
    for idx, p in enumerate(scene.particles):
        c = T @ p.translation + _shift(cfg)
        j0, i0, b = int(round(c[0] / px + nx / 2)), int(round(c[1] / px + ny / 2)), _box(p, px)
        atoms = p.atoms.transformed(T @ p.rotation, c - [(j0 - nx / 2) * px, (i0 - ny / 2) * px, 0], np.float64)
        v = projected_potential(atoms, (b, b), px, b_factor_A2=LABEL_B_A2)[0]
        _paste(labels, best, v / max(float(v.max()), 1e-30), (i0 - b // 2, j0 - b // 2), idx + 1)
    return labels


def label_volume(scene, cfg):
    """(nz, ny, nx) int32 labels in the tomogram (module docstring)."""
    from scipy.ndimage import gaussian_filter1d

    from .potential import projected_potential

    nz, ny, nx = tomogram_shape(scene, cfg)
    px = cfg.detector.pixel_size_A
    sigma = math.sqrt(LABEL_B_A2) / (2 * math.pi * math.sqrt(2))
    labels, best = np.zeros((nz, ny, nx), np.int32), np.zeros((nz, ny, nx), np.float32)
    n = np.array([nx, ny, nz])
    for idx, p in enumerate(scene.particles):
        c = np.rint(p.translation / px + n / 2).astype(int)
        b = _box(p, px)
        atoms = p.atoms.transformed(p.rotation, p.translation - (c - n / 2) * px, np.float64)
        # slice m of the box is voxel c_z - b/2 + m, which spans [(m - b/2 - 1/2) px, (m - b/2 + 1/2) px)
        v = projected_potential(atoms, (b, b), px, slice_thickness_A=px, z_range_A=(-(b / 2 + 0.5) * px,
                                                                                  (b / 2 - 0.5) * px),
                                b_factor_A2=LABEL_B_A2, dtype=np.float64)
        v = gaussian_filter1d(v, sigma / px, axis=0, mode="constant")
        _paste(labels, best, v / max(float(v.max()), 1e-30), (c[2] - b // 2, c[1] - b // 2, c[0] - b // 2), idx + 1)
    return labels


def label_bytes(scene, cfg):
    """Host memory of the label map of a run (labels, running maximum, the largest box)."""
    series = len(cfg.geometry.tilt_angles_deg) > 1
    shape = tomogram_shape(scene, cfg) if series else cfg.detector.shape
    box = max((_box(p, cfg.detector.pixel_size_A) for p in scene.particles), default=0)
    return 8 * int(np.prod(shape)) + 8 * 4 * box ** (3 if series else 2)


def ground_truth_paths(out_dir, name, tilt_series):
    out = Path(out_dir)
    p = {"particles": out / f"{name}_particles.star"}
    if tilt_series:
        p.update(tomograms=out / f"{name}_tomograms.star", tiltseries=out / f"{name}_tiltseries.star",
                 xf=out / f"{name}.xf", defocus=out / f"{name}.defocus")
    return p


def write_ground_truth(scene, cfg, out_dir, name, labels=False):
    """Write the particle STAR (and for a tilt series the tilt-series STARs and IMOD files);
    with ``labels`` also ``NAME_labels.mrc``."""
    series = len(cfg.geometry.tilt_angles_deg) > 1
    paths = ground_truth_paths(out_dir, name, series)
    if labels:
        paths["labels"] = Path(out_dir) / f"{name}_labels.mrc"
        note = f"cutem labels: particle row, potential > {LABEL_FRACTION:g} of max at B {LABEL_B_A2:g}"
        if series:
            io.write_volume(paths["labels"], label_volume(scene, cfg), cfg.detector.pixel_size_A, label=note)
        else:
            io.write_mrc(paths["labels"], label_image(scene, cfg, 0), cfg.detector.pixel_size_A, label=note)
    if series:
        io.write_star(paths["particles"], {"particles": tomogram_particles(scene, cfg, name)})
        tomos, tilts = tilt_series_tables(scene, cfg, name)
        io.write_star(paths["tomograms"], tomos)
        io.write_star(paths["tiltseries"], tilts)
        write_imod(out_dir, name, cfg)
    else:
        io.write_star(paths["particles"], {"particles": micrograph_particles(scene, cfg, 0, f"{name}.mrc")})
    return paths


__all__ = ["euler_angles2matrix", "matrix2euler", "micrograph_particles", "tomogram_particles", "tomogram_shape",
           "project_tomogram_coordinates", "tilt_series_tables", "write_imod", "ground_truth_paths",
           "write_ground_truth", "label_image", "label_volume", "label_bytes", "LABEL_B_A2", "LABEL_FRACTION"]
