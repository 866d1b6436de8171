"""Ground truth: the particle STAR says where each particle is and how it is turned."""
from importlib.resources import files
import numpy as np
import pytest
import starfile

from cutem import groundtruth as G
from cutem.config import from_dict
from cutem.potential import projected_potential
from cutem.run import run_simulation
from cutem.specimen import Scene, random_rotations, scene_from_config, tilt_matrix
from helpers import tiny_pdb

POSITIONS = [(-40.0, 22.0, -15.0), (38.0, -30.0, 30.0)]
ORIENTATIONS = [(30.0, 60.0, 90.0), (-120.0, 45.0, 10.0)]


def _config(tmp_path, tilts=(0.0,), axis=0.0, method="projection"):
    (tmp_path / "p.pdb").write_text(tiny_pdb(n=40, seed=3, elements="C"))
    d = {"output": "gt", "seed": 1,
         "optics": {"voltage_kV": 300.0, "defocus_u_A": 15000.0, "defocus_v_A": 14000.0,
                    "astigmatism_angle_deg": 25.0, "amplitude_contrast": 0.07},
         "detector": {"nx": 72, "ny": 64, "pixel_size_A": 2.0, "dose_e_per_A2": 20.0},
         "sample": {"thickness_center_A": 200.0, "thickness_edge_A": 200.0},
         "simulation": {"method": method},
         "geometry": {"tilt_angles_deg": list(tilts), "tilt_axis_deg": axis},
         "particles": [{"name": "a", "structure": str(tmp_path / "p.pdb"), "placement": "list",
                        "positions_A": [POSITIONS[0]], "orientations_deg": [ORIENTATIONS[0]]},
                       {"name": "b", "structure": str(tmp_path / "p.pdb"), "placement": "list",
                        "positions_A": [POSITIONS[1]], "orientations_deg": [ORIENTATIONS[1]]}]}
    return from_dict(d)


def _alone(particle, angle, axis, det):
    """Projected potential of one particle alone at a tilt, (ny, nx)."""
    return projected_potential(Scene([particle]).atoms(angle, axis), det.shape, det.pixel_size_A,
                               dtype=np.float64)[0]


def _centre_px(particle, angle, axis, det):
    """Where the particle's bounding-box centre shows in the image (pixels, RELION origin), from its
    projected potential: the centroid (all atoms carbon, so weights are equal) less the turned
    offset of the atoms' mean from the bounding-box centre."""
    v = _alone(particle, angle, axis, det)
    i, j = np.indices(v.shape)
    c = tilt_matrix(angle, axis) @ particle.rotation @ particle.atoms.positions.mean(0)
    return np.array([(j * v).sum() / v.sum(), (i * v).sum() / v.sum()]) - c[:2] / det.pixel_size_A


def test_euler_angles_round_trip_through_the_matrix():
    R = random_rotations(200, np.random.default_rng(0))
    R = np.concatenate([R, G.euler_angles2matrix([10.0, -30.0], [0.0, 180.0], [40.0, 70.0])])
    back = G.euler_angles2matrix(*G.matrix2euler(R))
    assert np.abs(back - R).max() < 1e-12


def test_euler_angles2matrix_is_relions_zyz_of_the_reference():
    # RELION: A = Rz(-psi) Ry(-tilt) Rz(-rot); rot alone turns x toward -y in A's rows
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    assert np.allclose(G.euler_angles2matrix(30, 0, 0), [[c, s, 0], [-s, c, 0], [0, 0, 1]], atol=1e-15)
    assert np.allclose(G.euler_angles2matrix(0, 30, 0), [[c, 0, -s], [0, 1, 0], [s, 0, c]], atol=1e-15)
    A = G.euler_angles2matrix(20, 50, 80)
    assert np.allclose(A, G.euler_angles2matrix(0, 0, 80) @ G.euler_angles2matrix(0, 50, 0)
                       @ G.euler_angles2matrix(20, 0, 0), atol=1e-15)


@pytest.mark.parametrize("tilt,axis", [(0.0, 0.0), (35.0, 20.0)])
def test_particles_star_gives_each_particle_within_1px_and_its_rotation(tmp_path, tilt, axis):
    cfg = _config(tmp_path, (tilt,), axis)
    _, paths = run_simulation(cfg, tmp_path / "o", progress=False)
    star = starfile.read(paths["particles"])
    scene = scene_from_config(cfg)
    det = cfg.detector
    T = tilt_matrix(tilt, axis)
    assert list(star["rlnClassNumber"]) == [1, 2] and list(star["rlnMicrographName"]) == ["gt.mrc"] * 2
    for k, p in enumerate(scene.particles):
        row = star.iloc[k]
        xy = np.array([row["rlnCoordinateX"], row["rlnCoordinateY"]])
        assert np.abs(xy - _centre_px(p, tilt, axis, det)).max() < 1.0
        A = G.euler_angles2matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"])
        assert np.abs(A - T @ p.rotation).max() < 1e-6
        assert row["rlnDefocusU"] == 15000.0 and row["rlnDefocusV"] == 14000.0 and row["rlnDefocusAngle"] == 25.0
        assert row["rlnImagePixelSize"] == 2.0 and row["rlnVoltage"] == 300.0 and row["rlnAmplitudeContrast"] == 0.07
        assert row["cutemStructureFile"] == str(tmp_path / "p.pdb")


def test_reference_turned_by_the_star_angles_reprojects_the_particle(tmp_path):
    # the reference (body-frame atoms) turned by RELION's A and put at the STAR coordinate
    # gives the particle's own projection; the transposed matrix (the other convention) does not
    cfg = _config(tmp_path, (35.0,), 20.0)
    scene = scene_from_config(cfg)
    star = G.micrograph_particles(scene, cfg, 0)
    det = cfg.detector
    for k, p in enumerate(scene.particles):
        truth = _alone(p, 35.0, 20.0, det)
        A = G.euler_angles2matrix(star["rlnAngleRot"][k], star["rlnAngleTilt"][k], star["rlnAnglePsi"][k])
        xy = (np.array([star["rlnCoordinateX"][k], star["rlnCoordinateY"][k]]) - [det.nx / 2, det.ny / 2]) * 2.0
        z = (tilt_matrix(35.0, 20.0) @ p.translation)[2]

        def reproject(M):
            from cutem.specimen import Particle
            return _alone(Particle(p.atoms, M, np.array([xy[0], xy[1], z])), 0.0, 0.0, det)

        err = np.linalg.norm(reproject(A) - truth) / np.linalg.norm(truth)
        wrong = np.linalg.norm(reproject(A.T) - truth) / np.linalg.norm(truth)
        assert err < 1e-4 and wrong > 0.3


def test_multislice_defocus_follows_each_particles_height(tmp_path):
    cfg = _config(tmp_path, method="multislice")
    t = G.micrograph_particles(scene_from_config(cfg), cfg, 0)
    assert np.allclose(t["rlnDefocusU"], [15000.0 + z for _, _, z in POSITIONS])


def test_tilt_series_coordinates_reproject_onto_every_tilt_within_1px(tmp_path):
    tilts = (0.0, -40.0, 40.0)
    cfg = _config(tmp_path, tilts, 10.0)
    _, paths = run_simulation(cfg, tmp_path / "o", progress=False)
    star = starfile.read(paths["particles"])
    tomos = starfile.read(paths["tomograms"])
    shape = (int(tomos["rlnTomoSizeZ"][0]), int(tomos["rlnTomoSizeY"][0]), int(tomos["rlnTomoSizeX"][0]))
    scene = scene_from_config(cfg)
    worst = 0.0
    for k, angle in enumerate(tilts):
        for i, p in enumerate(scene.particles):
            xyz = star.loc[i, ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
            uv = G.project_tomogram_coordinates(xyz, cfg, k, shape)
            worst = max(worst, float(np.abs(uv - _centre_px(p, angle, 10.0, cfg.detector)).max()))
            A = G.euler_angles2matrix(*star.loc[i, ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
            assert np.abs(A - p.rotation).max() < 1e-6
    assert worst < 1.0
    ts = starfile.read(paths["tiltseries"])
    assert list(ts["rlnTomoNominalStageTiltAngle"]) == list(tilts)
    assert list(ts["rlnMicrographPreExposure"]) == [0.0, 20.0, 40.0]
    xf = np.loadtxt(paths["xf"])
    axis = np.array([np.cos(np.radians(10.0)), np.sin(np.radians(10.0))])
    assert xf.shape == (3, 6) and np.allclose(xf[0, :4].reshape(2, 2) @ axis, [0, 1], atol=1e-6)   # the axis onto y
    first = paths["defocus"].read_text().splitlines()[0].split()
    assert first == ["1", "1", "0.00", "0.00", "1450.0", "2"]


PDB = str(files("cutem.data") / "pdb" / "1hvr.pdb")


def _two_1hvr(tilts=(0.0,)):
    from cutem.config import ParticleSpec, config_for_structure
    from cutem.params import Detector, Optics, Sample

    cfg = config_for_structure(PDB)
    spec = ParticleSpec(name="hvr", structure=PDB, placement="list", positions_A=((-55.0, 5.0, 0.0), (60.0, -8.0, 20.0)),
                        orientations_deg=((0.0, 0.0, 0.0), (40.0, 70.0, -30.0)))
    # in focus, no Cs, pure amplitude contrast, no ice, the label blur: the image is the projection
    return cfg.replace(optics=Optics(defocus_u_A=0.0, defocus_v_A=0.0, cs_mm=0.0, amplitude_contrast=1.0),
                       detector=Detector(nx=256, ny=160, pixel_size_A=1.0, dose_e_per_A2=40.0),
                       sample=Sample(ice=False), particles=(spec,),
                       simulation=cfg.simulation.replace(b_factor_A2=G.LABEL_B_A2),
                       geometry=cfg.geometry.replace(tilt_angles_deg=tuple(tilts)))


def test_label_image_overlaps_each_noise_free_particle_with_iou_above_0_9():
    from cutem.pipeline import simulate

    cfg = _two_1hvr()
    scene = scene_from_config(cfg)
    labels = G.label_image(scene, cfg)
    nf = simulate(cfg, scene=scene).noise_free[0]
    contrast = np.abs(nf - np.median(nf))   # the median pixel is background (no ice)
    star = G.micrograph_particles(scene, cfg)
    i, j = np.indices(labels.shape)
    d = [np.hypot(j - x, i - y) for x, y in zip(star["rlnCoordinateX"], star["rlnCoordinateY"])]
    nearest = np.argmin(d, axis=0)
    ious = []
    for k in range(2):
        region = np.where(nearest == k, contrast, 0.0)
        ref = region > G.LABEL_FRACTION * region.max()
        got = labels == k + 1
        ious.append((ref & got).sum() / (ref | got).sum())
    assert min(ious) >= 0.9, ious
    assert set(np.unique(labels)) == {0, 1, 2}


def test_label_volume_holds_each_particles_atoms_at_tomogram_voxels():
    cfg = _two_1hvr((-30.0, 0.0, 30.0))
    scene = scene_from_config(cfg)
    vol = G.label_volume(scene, cfg)
    nz, ny, nx = shape = G.tomogram_shape(scene, cfg)
    assert vol.shape == shape
    for k, p in enumerate(scene.particles):
        x = p.atoms.transformed(p.rotation, p.translation).positions / cfg.detector.pixel_size_A + [nx / 2, ny / 2, nz / 2]
        ix, iy, iz = np.rint(x).astype(int).T
        inside = (vol[iz, iy, ix] == k + 1).mean()
        volume_A3 = 1.212 * 12.5 * p.atoms.n        # 1.21 Å³/Da, ~12.5 Da per heavy atom
        assert inside > 0.95 and 0.5 < (vol == k + 1).sum() / volume_A3 < 3.0, (inside, (vol == k + 1).sum(), volume_A3)


@pytest.mark.parametrize("z", [300.0, -300.0])
def test_multislice_image_of_a_particle_shows_the_star_defocus(z):
    # a particle at beam height z imaged by multislice looks like its projection at the STAR's
    # defocus Δf + z, not at Δf or Δf − z (PHYSICS.md: objects up-beam are nearer focus)
    from cutem.config import ParticleSpec, config_for_structure
    from cutem.params import Detector, Optics, Sample, Simulation
    from cutem.pipeline import simulate

    def image(method, df, zz=z):
        spec = ParticleSpec(name="h", structure=PDB, placement="list", positions_A=((0.0, 0.0, zz),))
        cfg = config_for_structure(PDB).replace(
            optics=Optics(defocus_u_A=df, defocus_v_A=df, cs_mm=0.0),
            detector=Detector(nx=96, ny=96, pixel_size_A=1.0, dose_e_per_A2=40.0, quantized=False),
            sample=Sample(thickness_center_A=1000.0, thickness_edge_A=1000.0),
            particles=(spec,),
            simulation=Simulation(method=method, slice_thickness_A=10.0))
        return cfg, simulate(cfg).noise_free[0].ravel()

    cfg, ms = image("multislice", 5000.0)
    star_df = G.micrograph_particles(scene_from_config(cfg), cfg)["rlnDefocusU"][0]
    assert star_df == pytest.approx(5000.0 + z)
    corr = {df: np.corrcoef(ms, image("projection", df, 0.0)[1])[0, 1] for df in (5000.0 - z, 5000.0, star_df)}
    assert corr[star_df] > corr[5000.0] > corr[5000.0 - z] and corr[star_df] > 0.9, corr
