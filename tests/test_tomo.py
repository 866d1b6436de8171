"""Tomography: projector/back-projector adjointness, geometry, WBP, SIRT, tape gradients, FSC."""
import sys

import numpy as np
import pytest

import adjoints
import adjoints.backend as B
from adjoints import ops
from adjoints.check import dottest
from adjoints.ops import rotation_matrix_3d
from cutem import tomo
from cutem.errors import InputError

CLI = [sys.executable, "-c", "from cutem.cli import entry; entry()"]  # `cutem` as a user runs it


@pytest.mark.parametrize("axis_deg", [0.0, 90.0, -90.0, 180.0, 17.0, -63.5])
def test_projector_backprojector_pass_dot_test_float64(axis_deg, rng):
    angles = [-60.0, -31.0, -2.0, 0.0, 24.0, 58.0]
    vol = rng.standard_normal((7, 10, 9))
    res = dottest(tomo.Project(angles, axis_deg), (vol,), rng=rng, trials=4)
    assert res.error < 1e-10 and abs(res.ratio - 1) < 1e-10
    stack = rng.standard_normal((6, 10, 9))
    res = dottest(tomo.BackProject(angles, axis_deg, thickness=5), (stack,), rng=rng, trials=4)
    assert res.error < 1e-10 and abs(res.ratio - 1) < 1e-10


@pytest.mark.parametrize("origin", ["fft", "middle"])
@pytest.mark.parametrize("axis_deg", [0.0, 90.0, -90.0, 180.0, 30.0])
def test_point_projects_where_a_right_handed_tilt_about_the_axis_puts_it(axis_deg, origin):
    n, nz, dz = 40, 30, 6.0
    c = (lambda k: k / 2.0) if origin == "fft" else (lambda k: (k - 1) / 2.0)
    zz, yy3, xx3 = np.meshgrid(*[np.arange(k) - c(k) for k in (nz, n, n)], indexing="ij")
    vol = np.exp(-((zz - dz) ** 2 + (yy3 - 2) ** 2 + (xx3 + 3) ** 2) / (2 * 1.5 ** 2))
    vol /= vol.sum()  # a smooth blob of unit mass at (x, y, z) = (-3, 2, dz) from the origin
    angles = [-50.0, -20.0, 0.0, 35.0]
    proj = tomo.Project(angles, axis_deg, origin=origin).apply(vol)[0]
    axis = [np.cos(np.deg2rad(axis_deg)), np.sin(np.deg2rad(axis_deg)), 0.0]
    exact = axis_deg % 90 == 0
    # the blob's discrete centroid (x, y, z) (its tails are cut a little by the box)
    mean = [float((vol * g).sum()) for g in (xx3, yy3, zz)]
    yy, xx = np.mgrid[:n, :n] - c(n)
    for img, th in zip(proj, angles):
        want = rotation_matrix_3d(axis, np.deg2rad(th)) @ np.array(mean)
        total = img.sum()
        # linear splatting conserves mass and the centroid exactly on axis-aligned frames;
        # the bilinear in-plane rotations of a general axis only approximately (lattice-sum
        # error of resampling a σ = 1.5 px blob: 0.2-0.7 % here)
        assert total == pytest.approx(1.0, abs=1e-12 if exact else 1e-2)
        cx, cy = (img * xx).sum() / total, (img * yy).sum() / total
        tol = 1e-9 if exact else 0.02
        assert abs(cx - want[0]) < tol and abs(cy - want[1]) < tol


def test_quarter_turn_axis_matches_interpolated_rotation_near_it(rng):
    vol = rng.standard_normal((5, 12, 12))
    angles = [-40.0, 10.0, 55.0]
    exact = tomo.Project(angles, 90.0).apply(vol)[0]
    interp = tomo.Project(angles, 90.0 + 1e-6).apply(vol)[0]
    inner = (slice(None), slice(1, -1), slice(1, -1))  # the rotated frame drops border pixels
    assert np.max(np.abs(exact[inner] - interp[inner])) < 1e-4 * np.max(np.abs(exact))


def _disc_volume(n=64, nx=6, radius=20):
    yy, zz = np.meshgrid(np.arange(n) - (n - 1) / 2, np.arange(n) - (n - 1) / 2, indexing="ij")
    disc = ((yy ** 2 + zz ** 2) < radius ** 2).astype(float).T  # (z, y)
    return np.repeat(disc[:, :, None], nx, axis=2), disc


def test_wbp_of_full_angular_range_recovers_disc_density():
    vol, disc = _disc_volume()
    angles = np.arange(-90.0, 90.0, 1.0)
    stack = tomo.Project(angles).apply(vol)[0]
    rec = tomo.wbp(stack, angles, thickness=vol.shape[0])
    c = slice(22, 42)
    assert rec[c, c, 3].mean() == pytest.approx(1.0, abs=0.01)
    assert np.abs(rec[:, :, 3] - disc).mean() < 0.05
    # the same series seen with the axis at −90° (images turned by a quarter turn about
    # the array's middle, which the turn keeps in place) gives the turned volume
    rec = tomo.wbp(stack, angles, thickness=vol.shape[0], origin="middle")
    turn = tomo._rot_from_aligned  # turns an axis-along-x frame to the axis at k·90°
    rec90 = tomo.wbp(turn(stack, 3), angles, axis_deg=-90.0, thickness=vol.shape[0], origin="middle")
    assert np.allclose(rec90, turn(rec, 3), atol=1e-9)


def test_ramp_filter_is_ramp_and_windows_have_their_nyquist_values():
    n = 256
    f = np.abs(np.fft.fftfreq(n))
    h = tomo.ramp_filter(n, "ram-lak")
    mid = (f > 0.1) & (f < 0.4)
    assert np.max(np.abs(h[mid] - f[mid]) / f[mid]) < 0.01
    assert h[0] == pytest.approx(0.0, abs=2 / (np.pi ** 2 * n))  # the kernel's sum → 0
    ny = n // 2
    assert tomo.ramp_filter(n, "hann")[ny] == pytest.approx(0.0, abs=1e-12)
    assert tomo.ramp_filter(n, "hamming")[ny] == pytest.approx(0.08 * h[ny], rel=1e-9)
    assert tomo.ramp_filter(n, "shepp-logan")[ny] == pytest.approx(2 / np.pi * h[ny], rel=1e-9)
    assert tomo.ramp_filter(n, "cosine")[n // 4] == pytest.approx(np.cos(np.pi / 4) * h[n // 4], rel=1e-9)
    assert np.all(tomo.ramp_filter(n, "ram-lak", cutoff=0.5)[f > 0.25] == 0)
    with pytest.raises(InputError):
        tomo.ramp_filter(n, "gauss")


def test_angle_weights_sum_to_covered_range():
    w = tomo.angle_weights(np.arange(-60.0, 61.0, 2.0)[::-1])
    assert w.sum() == pytest.approx(np.deg2rad(122.0), rel=1e-12)
    assert np.allclose(w, np.deg2rad(2.0))


@pytest.mark.parametrize("positivity", [False, True])
def test_sirt_decreases_weighted_residual_monotonically(positivity, rng):
    vol, _ = _disc_volume(n=32, nx=4, radius=10)
    vol = vol + 0.3 * (rng.random(vol.shape) > 0.9)
    angles = np.arange(-60.0, 61.0, 6.0)
    clean = tomo.Project(angles).apply(vol)[0]
    stack = clean + 0.2 * rng.standard_normal(clean.shape)
    res = tomo.sirt(stack, angles, thickness=32, iterations=15, positivity=positivity)
    r = np.array(res.residual_weighted)
    assert np.all(np.diff(r) < 0), r
    assert r[-1] < 0.2 * r[0]
    if positivity:
        assert res.volume.min() >= 0
    # the error to the truth falls too (noise is mild)
    assert np.linalg.norm(res.volume - vol) < 0.6 * np.linalg.norm(vol)


def test_gradient_descent_on_tape_decreases_projection_residual(rng):
    angles = [-45.0, -15.0, 15.0, 45.0]
    truth = rng.random((6, 8, 5))
    P = tomo.Project(angles, 30.0)
    b = P.apply(truth)[0]
    x = np.zeros_like(truth)
    loss_grad = adjoints.value_and_grad(lambda v: ops.sum(ops.square(P(v) - b)))
    # step below 1/L with L = 2‖P‖² (power iteration for ‖P‖²)
    v = rng.standard_normal(truth.shape)
    for _ in range(30):
        v = P.apply(v)[1].plan.backproject(P.apply(v)[0])
        lam = np.linalg.norm(v)
        v /= lam
    step = 1.0 / (2 * lam)
    losses = []
    for _ in range(6):
        loss, g = loss_grad(x)
        losses.append(float(loss))
        # the tape gradient is exactly 2 Pᵀ(P x − b)
        out, ctx = P.apply(x)
        assert np.allclose(g, 2 * P.adjoint(ctx, out - b), rtol=1e-12, atol=1e-12)
        x = x - step * g
    assert np.all(np.diff(losses) < 0) and losses[-1] < 0.8 * losses[0]


def test_fsc_known_cases(rng):
    shape = (24, 24, 24)
    a = rng.standard_normal(shape)
    freq, f_self, n = tomo.fsc(a, a, voxel_size=2.0)
    assert np.allclose(f_self, 1.0) and freq[-1] == pytest.approx(0.25)
    # white signal + independent white noise of equal power: FSC = 1/sqrt(2) in every shell
    b = a + rng.standard_normal(shape)
    _, f_half, n = tomo.fsc(a, b)
    ok = n > 50
    assert np.all(np.abs(f_half[ok] - 1 / np.sqrt(2)) < 4 / np.sqrt(n[ok]))
    # independent volumes: FSC ~ 0 within the 1/sqrt(n) spread
    _, f0, n = tomo.fsc(a, rng.standard_normal(shape))
    assert np.all(np.abs(f0[ok]) < 4 / np.sqrt(n[ok]))
    # shared below shell 5, independent above: FSC 1 below the cut, ~0 above
    shell, _ = tomo.radial_shells(shape)
    c = rng.standard_normal(shape)
    low = shell <= 5
    mixed = np.fft.irfftn(np.fft.rfftn(a) * low + np.fft.rfftn(c) * ~low, s=shape, axes=(0, 1, 2))
    _, f_mix, n = tomo.fsc(a, mixed)
    assert np.allclose(f_mix[1:6], 1.0, atol=1e-12)
    assert np.all(np.abs(f_mix[6:]) < 4 / np.sqrt(n[6:]))


def test_contrast_to_noise_of_known_volume(rng):
    v = rng.normal(0.0, 0.5, size=(40, 40, 40))
    sig = np.zeros(v.shape, bool)
    sig[10:20, 10:20, 10:20] = True
    v[sig] = 1.0 + 0 * v[sig]
    cnr = tomo.contrast_to_noise(v, sig, ~sig)
    assert cnr == pytest.approx(2.0, rel=0.03)


def test_bad_inputs_are_refused():
    with pytest.raises(InputError):
        tomo.wbp(np.zeros((3, 4, 4)), [0.0, 1.0])
    with pytest.raises(InputError):
        tomo.sirt(np.zeros((2, 4, 4)), [0.0, 1.0], relaxation=2.5)
    with pytest.raises(InputError):
        tomo.reconstruct(np.zeros((2, 4, 4)), [0.0, 1.0], method="art")


@pytest.mark.gpu
def test_cupy_projector_matches_numpy(rng):
    cp = B.get_xp("gpu")
    vol = rng.standard_normal((6, 16, 12)).astype(np.float32)
    for axis in (0.0, 90.0, 23.0):
        P = tomo.Project([-50.0, 0.0, 33.0], axis)
        a = P.apply(vol)[0]
        b = B.to_numpy(P.apply(cp.asarray(vol))[0])
        assert np.allclose(a, b, atol=1e-4 * np.abs(a).max())
    st = tomo.Project([-50.0, 0.0, 33.0]).apply(vol)[0]
    r_np = tomo.sirt(st, [-50.0, 0.0, 33.0], thickness=6, iterations=3).volume
    r_cp = B.to_numpy(tomo.sirt(cp.asarray(st), [-50.0, 0.0, 33.0], thickness=6, iterations=3).volume)
    assert np.allclose(r_np, r_cp, atol=1e-4 * np.abs(r_np).max())


def test_reconstruct_command_writes_volume_with_stack_voxel_size(tmp_path):
    import subprocess

    from cutem import io

    zz, yy, xx = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in (16, 24, 20)], indexing="ij")
    vol = np.exp(-((zz - 1.5) ** 2 + (yy - 3.5) ** 2 + (xx + 2.5) ** 2) / 8.0).astype(np.float32)
    angles = np.arange(-60.0, 61.0, 5.0)
    stack = tomo.Project(angles, 90.0).apply(vol)[0]
    io.write_mrc(tmp_path / "ts.mrc", stack, 4.2, label="cutem tilt_axis_deg=90")
    io.write_tlt(tmp_path / "ts.tlt", angles)
    for method, extra in (("wbp", []), ("sirt", []), ("fit", ["--prior-weight", "1", "--positivity"])):
        out = tmp_path / f"{method}.mrc"
        r = subprocess.run([*CLI, "reconstruct", str(tmp_path / "ts.mrc"), *extra,
                            "--method", method, "--thickness", "16", "--iterations", "30", "-q",
                            "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        rec, px = io.read_mrc(out)
        assert rec.shape == vol.shape and px == pytest.approx(4.2)
        # the axis came from the header label: the blob is found where it is
        assert np.unravel_index(np.argmax(rec), rec.shape) == np.unravel_index(np.argmax(vol), vol.shape)
    r = subprocess.run([*CLI, "reconstruct", str(tmp_path / "ts.mrc"), "--thickness", "16", "--denoise", "halves",
                        "-q", "--out", str(tmp_path / "halves.mrc")], capture_output=True, text=True)
    assert r.returncode == 0 and "denoised from 2 splits into halves" in r.stdout, r.stderr
    rec, _ = io.read_mrc(tmp_path / "halves.mrc")
    assert rec.shape == vol.shape and np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.8
    r = subprocess.run([*CLI, "reconstruct", str(tmp_path / "ts.mrc"), "--method", "fit", "--denoise", "halves",
                        "--out", str(tmp_path / "x.mrc")], capture_output=True, text=True)
    assert r.returncode == 2 and "--method fit" in r.stderr and not (tmp_path / "x.mrc").exists()
    r = subprocess.run([*CLI, "reconstruct", str(tmp_path / "ts.mrc"),
                        "--tlt", str(tmp_path / "none.tlt"), "--out", str(tmp_path / "x.mrc")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "none.tlt" in r.stderr
    r = subprocess.run([*CLI, "reconstruct", str(tmp_path / "ts.mrc"), "--ctf", "model", "--defocus-A", "2e4",
                        "--out", str(tmp_path / "x.mrc")], capture_output=True, text=True)
    assert r.returncode == 2 and "--method fit" in r.stderr and not (tmp_path / "x.mrc").exists()


def test_reconstruct_reads_axis_and_angles_written_by_cutem_simulate(tmp_path):
    import subprocess

    from cutem import io

    zz, yy, xx = np.meshgrid(*[np.arange(n) - n / 2 for n in (12, 20, 16)], indexing="ij")
    vol = np.exp(-((zz - 2) ** 2 + (yy + 4) ** 2 + (xx - 3) ** 2) / 6.0).astype(np.float32)
    angles = np.arange(-60.0, 61.0, 10.0)
    stack = tomo.Project(angles, 90.0).apply(vol)[0]
    # the file names `cutem simulate` writes: NAME_noisefree.mrc, NAME.tlt, NAME_params.toml
    io.write_mrc(tmp_path / "run_noisefree.mrc", stack, 3.0)
    io.write_tlt(tmp_path / "run.tlt", angles)
    (tmp_path / "run_params.toml").write_text("seed = 0\n[geometry]\ntilt_axis_deg = 90.0\n")
    out = tmp_path / "v.mrc"
    r = subprocess.run([*CLI, "reconstruct",
                        str(tmp_path / "run_noisefree.mrc"), "--thickness", "12", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "axis 90" in r.stdout
    rec, _ = io.read_mrc(out)
    assert np.unravel_index(np.argmax(rec), rec.shape) == np.unravel_index(np.argmax(vol), vol.shape)


@pytest.mark.parametrize("axis_deg, tol", [(0.0, 0.08), (90.0, 0.08), (30.0, 0.2)])
def test_projector_matches_simulator_projection_of_tilted_atoms(axis_deg, tol):
    """Project(potential_volume(atoms)) ≈ projected_potential(atoms tilted as the pipeline tilts
    them): same tilt sign, axis and origin as cutem.specimen/cutem.potential. The remaining
    difference is interpolation (2 Å voxels, B = 400 Å²; the general axis adds two in-plane
    resamplings); the opposite tilt sign is ~100 % off."""
    from cutem.potential import potential_volume, projected_potential
    from cutem.specimen import tilt_matrix
    from cutem.structure import Atoms

    rng = np.random.default_rng(3)
    n, px, shape = 12, 2.0, (32, 32, 32)
    pos = np.column_stack([rng.uniform(-20, 20, n), rng.uniform(-20, 20, n), rng.uniform(-12, 12, n)])

    def atoms(p):
        return Atoms(p, np.zeros(n), (6,), np.full(n, 400.0), np.ones(n))

    vol = potential_volume(atoms(pos), shape, px, dtype=np.float64)  # V
    angles = [-50.0, 35.0]
    proj = tomo.Project(angles, axis_deg).apply(vol)[0] * px  # line integral in V·Å
    for img, th in zip(proj, angles):
        for sign in (1, -1):
            ref = projected_potential(atoms(pos @ tilt_matrix(sign * th, axis_deg).T), shape[1:], px,
                                      dtype=np.float64)[0]
            err = np.linalg.norm(img - ref) / np.linalg.norm(ref)
            assert err < tol if sign == 1 else err > 0.5


# ------------------------------------------------------------ IMOD conventions and quality
def _run(*args):
    import subprocess

    return subprocess.run([*CLI, "reconstruct", *map(str, args)], capture_output=True, text=True)


def _blob(shape, centre_zyx, width=2.5):
    zz, yy, xx = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    cz, cy, cx = centre_zyx
    return np.exp(-((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2)).astype(np.float32)


def test_stack_without_cutem_label_is_read_with_imod_axis_along_y_and_cutem_label_along_x(tmp_path):
    from cutem import io

    vol = _blob((12, 20, 16), (3, -4, 5))
    angles = np.arange(-60.0, 61.0, 10.0)
    for axis, label in ((90.0, None), (0.0, "cutem tilt_series seed=0")):
        stack = tomo.Project(angles, axis).apply(vol)[0]
        io.write_mrc(tmp_path / "ts.mrc", stack, 3.0, label=label)
        io.write_tlt(tmp_path / "ts.tlt", angles)
        r = _run(tmp_path / "ts.mrc", "--thickness", 12, "--out", tmp_path / "v.mrc")
        assert r.returncode == 0, r.stderr
        assert f"axis {axis:g}°" in r.stdout
        rec, _ = io.read_mrc(tmp_path / "v.mrc")
        assert np.unravel_index(np.argmax(rec), rec.shape) == np.unravel_index(np.argmax(vol), vol.shape)


def test_xf_beside_raw_stack_turns_its_axis_onto_y_and_mdoc_gives_the_angles(tmp_path):
    from cutem import imod, io

    vol = _blob((12, 24, 24), (-2, 5, -6))
    angles = np.arange(-60.0, 61.0, 10.0)
    aligned = tomo.Project(angles, 90.0, origin="middle").apply(vol)[0]
    raw = np.ascontiguousarray(np.rot90(aligned, k=1, axes=(1, 2)))  # the axis now lies along x
    xf = imod.xf_for_axis(len(angles), 0.0)
    back = imod.apply_xf(raw, xf)
    assert np.max(np.abs(back - aligned)) < 1e-4 * np.max(aligned)  # a quarter turn is exact
    assert imod.xf_axis_deg(xf) == pytest.approx(0.0, abs=1e-9)
    io.write_mrc(tmp_path / "ts.st", raw, 3.0)
    imod.write_xf(tmp_path / "ts.xf", xf)
    (tmp_path / "ts.mdoc").write_text("PixelSpacing = 3.0\n" + "".join(
        f"\n[ZValue = {i}]\nTiltAngle = {a:.2f}\nExposureDose = 2.5\n" for i, a in enumerate(angles)))
    assert np.allclose(imod.read_mdoc(tmp_path / "ts.mdoc")["tilt_deg"], angles)
    r = _run(tmp_path / "ts.st", "--thickness", 12, "--out", tmp_path / "v.mrc")
    assert r.returncode == 0, r.stderr
    assert "ts.xf" in r.stdout
    rec, _ = io.read_mrc(tmp_path / "v.mrc")
    peak = np.unravel_index(np.argmax(rec), rec.shape)
    assert np.abs(np.array(peak) - np.unravel_index(np.argmax(vol), vol.shape)).max() <= 1


def test_defocus_files_of_ctfplotter_versions_2_and_3_read_in_angstrom(tmp_path):
    from cutem import imod

    p = tmp_path / "a.defocus"
    p.write_text("1 1 -60.00 -60.00 3010.5 2\n2 3 -58.0 -56.0 3020.0\n5 5 -52.0 -52.0 3040.0\n")
    d = imod.read_defocus(p, 5)
    assert np.allclose(d, [30105.0, 30200.0, 30200.0, 30300.0, 30400.0])  # view 4 interpolated
    p.write_text("1 0 0.0 0.0 0.0 3\n1 1 -60.0 -60.0 3000.0 3200.0 45.0\n2 2 -58.0 -58.0 2900.0 2900.0 0.0\n")
    assert np.allclose(imod.read_defocus(p, 2), [31000.0, 29000.0])
    imod.write_defocus(tmp_path / "b.defocus", [-3.0, 0.0, 3.0], [20000.0, 21000.0, 22000.0])
    assert np.allclose(imod.read_defocus(tmp_path / "b.defocus", 3), [20000.0, 21000.0, 22000.0])
    p.write_text("garbage here\n")
    with pytest.raises(InputError):
        imod.read_defocus(p, 2)


def _correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_reconstruct_defaults_match_or_beat_scikit_image_on_its_own_radon_phantom(tmp_path):
    """An independent phantom and projector: the Shepp-Logan slice projected by scikit-image's
    `radon` at θ (its rows run along −z through row n/2, its columns along x), stacked as an
    IMOD stack (axis along y, .tlt, no cutem label). `cutem reconstruct` with no option
    (WBP) and with only `--method sirt` are compared with scikit-image's `iradon` and two
    `iradon_sart` passes on the same sinograms."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, iradon_sart, radon, rescale

    from cutem import io

    img = rescale(shepp_logan_phantom(), 128 / 400, anti_aliasing=True)
    n, ny = img.shape[0], 2
    angles = np.arange(-60.0, 61.0, 2.0)
    sino = radon(img, theta=angles, circle=True)  # (detector x, tilt)
    truth = np.repeat(np.roll(img[::-1], 1, axis=0)[:, None, :], ny, axis=1)  # z = n/2 − row
    io.write_mrc(tmp_path / "sl.mrc", np.repeat(sino.T[:, None, :], ny, axis=1), 1.0)
    io.write_tlt(tmp_path / "sl.tlt", angles)
    ref_wbp = _correlation(iradon(sino, theta=angles, circle=True), img)
    sart = iradon_sart(sino, theta=angles)
    ref_sart = _correlation(iradon_sart(sino, theta=angles, image=sart), img)
    got = {}
    for method in ("wbp", "sirt"):
        r = _run(tmp_path / "sl.mrc", "--method", method, "-q", "--out", tmp_path / f"{method}.mrc")
        assert r.returncode == 0, r.stderr
        got[method] = _correlation(io.read_mrc(tmp_path / f"{method}.mrc")[0], truth)
    assert got["wbp"] >= 0.85 and got["wbp"] >= ref_wbp - 0.02, (got, ref_wbp)
    assert got["sirt"] >= 0.90 and got["sirt"] >= ref_sart, (got, ref_sart)


def test_sirt_stops_before_fitting_noise_and_beats_wbp_on_noisy_data(rng):
    vol, _ = _disc_volume(n=48, nx=3, radius=14)
    vol[:, 20:28] += 1.0
    angles = np.arange(-60.0, 61.0, 3.0)
    clean = tomo.Project(angles).apply(vol)[0]
    noisy = clean + 0.5 * clean.std() * rng.standard_normal(clean.shape)
    res = tomo.sirt(noisy, angles, thickness=48, iterations=50)
    assert res.iterations < 25  # the held-out tilts stop it early
    assert res.iterations == int(np.argmin(res.heldout)) + 1
    full = tomo.sirt(noisy, angles, thickness=48, iterations=50, positivity=False)
    err = lambda v: np.linalg.norm(v - vol) / np.linalg.norm(vol)  # noqa: E731
    w = tomo.wbp(noisy, angles, thickness=48)
    assert err(res.volume) < err(w)
    assert full.iterations == res.iterations


def test_phase_flip_in_strips_makes_fsc_positive_past_the_first_ctf_zero():
    """A cutem-simulated noise-free TMV series (64² px of 10 Å, 13 tilts, 3 µm underfocus,
    200 kV): past the first CTF zero (1/27.4 Å) the uncorrected tomogram's FSC with the
    scene's potential is negative (inverted contrast), the phase-flipped and the Wiener-filtered
    ones are positive. The sign of each FSC is fixed on the band below the zero, where the
    CTF does not change sign."""
    from cutem import ctfcorrect, pipeline
    from cutem.config import default_config
    from cutem.electron import wavelength_A
    from cutem.params import Geometry
    from cutem.potential import ice_potential_V, potential_volume

    cfg = default_config()
    cfg = cfg.replace(detector=cfg.detector.replace(nx=64, ny=64, pixel_size_A=10.0),
                      simulation=cfg.simulation.replace(oversampling=2),
                      optics=cfg.optics.replace(defocus_u_A=30000.0, defocus_v_A=30000.0),
                      geometry=Geometry.series(-60.0, 10.0, 13, tilt_axis_deg=0.0), seed=0)
    res = pipeline.simulate(cfg)
    scene = pipeline.build_scene(cfg)
    truth = np.asarray(potential_volume(scene.atoms(0.0, 0.0), (64, 64, 64), 10.0,
                                        solvent_V=ice_potential_V(), dtype=np.float64))
    nf = res.noise_free.astype(np.float64)
    contrast = nf / nf.mean(axis=(1, 2), keepdims=True) - 1
    angles = np.asarray(res.angles_deg)
    o = cfg.optics
    q0 = 1 / np.sqrt(wavelength_A(o.voltage_kV) * o.defocus_u_A)
    past = {}
    for mode in ("none", "phaseflip", "wiener"):
        st = contrast if mode == "none" else ctfcorrect.correct_ctf(
            contrast, angles, 0.0, 10.0, np.full(len(angles), o.defocus_u_A), o.voltage_kV, o.cs_mm,
            o.amplitude_contrast, mode=mode)
        f, c, _ = tomo.fsc(tomo.wbp(st, angles, 0.0, thickness=64), truth, voxel_size=10.0)
        c = c * np.sign(c[(f > 0.3 * q0) & (f < 0.9 * q0)].mean())
        past[mode] = c[f > 1.05 * q0].mean()
    assert past["none"] < -0.1 and past["phaseflip"] > 0.15 and past["wiener"] > 0.15, past


def test_strip_defocus_follows_the_tilted_plane_and_exposure_filter_halves_at_critical_exposure():
    from cutem import ctfcorrect

    # axis along y: b = −x, so at +30° the defocus falls by x·tan 30° to the right
    xb = ctfcorrect.axis_distance((8, 10), 90.0)
    assert np.allclose(xb[0], -(np.arange(10) - 5.0)) and np.allclose(xb[:, 3], xb[0, 3])
    # a tilted plane's ladder: the corrected image of a uniform-defocus view is the plain filter
    rng = np.random.default_rng(1)
    img = rng.standard_normal((1, 32, 32))
    flat = ctfcorrect.correct_ctf(img, [0.0], 90.0, 4.0, [20000.0])
    q2 = ctfcorrect._freq2((32, 32), 4.0, np)
    want = np.fft.irfft2(np.fft.rfft2(img[0]) * np.sign(np.sin(ctfcorrect.ctf_phase(q2, 20000.0, 300.0, 2.7, 0.07))),
                         s=(32, 32))
    assert np.allclose(flat[0], want, atol=1e-12)
    # Grant & Grigorieff: at N = 2 N_e(q) the amplitude weight is 1/e
    q = 1 / 8.0
    ne = 0.245 * q ** -1.665 + 2.81
    assert ctfcorrect.critical_exposure(q) == pytest.approx(ne, rel=1e-12)
    img = np.zeros((1, 64, 64))
    img[0, 0, 8] = 1.0  # a delta: every frequency present; rfft index [0, 8] is q = 8/(64·1 Å) = 1/8 Å⁻¹
    spec_in = np.abs(np.fft.rfft2(img[0]))
    out = ctfcorrect.exposure_filter(img, 1.0, [2 * ne])
    ratio = np.abs(np.fft.rfft2(out[0]))[0, 8] / spec_in[0, 8]
    assert ratio == pytest.approx(np.exp(-1), rel=1e-9)


def test_first_ctf_zero_reported_by_tomo_ctf_is_where_sin_chi_first_changes_sign():
    from cutem import ctfcorrect
    from validation.tomo_ctf import first_zero_A

    for df, kv, cs, w in ((30000.0, 200.0, 2.0, 0.0), (30000.0, 300.0, 2.7, 0.07), (8000.0, 300.0, 0.0, 0.1)):
        z = first_zero_A(df, kv, cs, w)
        q = np.linspace(1e-4, 1.0 / z, 20001)
        s = np.sin(ctfcorrect.ctf_phase(q * q, df, kv, cs, w))
        assert (s[:-50] > 0).all() and abs(s[-1]) < 1e-9, (df, kv, cs, w, z)
        assert np.sin(ctfcorrect.ctf_phase((1.001 / z) ** 2, df, kv, cs, w)) < 0
