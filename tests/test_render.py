"""Volume rendering: MIP geometry, emission–absorption against the analytic slab, TF files, orbits."""
import sys

import numpy as np
import pytest

import adjoints.backend as B
from cutem import render as R
from cutem.errors import InputError

CLI = [sys.executable, "-c", "from cutem.cli import entry; entry()"]  # `cutem` as a user runs it


def _offsets(shape):
    h, w, _ = R._frame_shape(shape)
    return h, w, (h - shape[1]) // 2, (w - shape[2]) // 2


def test_mip_front_view_is_max_along_z(rng):
    v = rng.random((9, 12, 14)).astype(np.float32)
    m = R.mip(v)
    h, w, oy, ox = _offsets(v.shape)
    assert m.shape == (h, w)
    assert np.array_equal(m[oy:oy + 12, ox:ox + 14], v.max(axis=0))
    outside = m.copy()
    outside[oy:oy + 12, ox:ox + 14] = 0
    assert not outside.any()  # nothing outside the volume


@pytest.mark.parametrize("az, el, expect", [
    (0, 0, lambda z, y, x, c: (y + c, x + c)),        # along +z: rows y, columns x
    (90, 0, lambda z, y, x, c: (y + c, 20 - z + c)),  # along +x: columns run along −z
    (-90, 0, lambda z, y, x, c: (y + c, z + c)),
    (180, 0, lambda z, y, x, c: (y + c, 20 - x + c)),
    (0, 90, lambda z, y, x, c: (z + c, x + c)),        # tipped: rows run along +z
])
def test_mip_of_single_bright_voxel_lights_exactly_its_ray(az, el, expect):
    vol = np.zeros((21, 21, 21), np.float32)
    z, y, x = 5, 7, 13
    vol[z, y, x] = 1.0
    m = R.mip(vol, az, el)
    c = (m.shape[0] - 21) // 2
    lit = np.argwhere(m > 0)
    assert lit.tolist() == [list(expect(z, y, x, c))]
    assert m.max() == pytest.approx(1.0, abs=1e-6)


def test_emission_absorption_of_uniform_slab_matches_beer_lambert():
    nz, alpha = 10, 0.2
    vol = np.ones((nz, 8, 8), np.float32)
    tf = R.TransferFunction([(0, 1, 1, 1, 0), (1, 1, 1, 1, alpha)])
    img = R.dvr(vol, tf, step=1.0)
    h, w, oy, ox = _offsets(vol.shape)
    inside = img[oy:oy + 8, ox:ox + 8]
    want = 1 - (1 - alpha) ** nz  # white emission, nz voxel lengths of opacity alpha each
    assert np.allclose(inside, want, atol=1e-5)
    # halving the step with the opacity correction gives the same slab opacity
    img2 = R.dvr(vol, tf, step=0.5)
    assert np.allclose(img2[oy + 1:oy + 7, ox + 1:ox + 7], want, atol=0.03)
    # outside the volume: background
    assert np.all(img[0, 0] == 0)
    bg = R.dvr(vol, tf, step=1.0, background=(0.0, 0.0, 1.0))
    assert np.allclose(bg[0, 0], (0, 0, 1))
    assert np.allclose(bg[oy + 3, ox + 3], (want, want, want + (1 - want)), atol=1e-5)


def test_render_is_deterministic_and_has_expected_shapes(rng):
    vol = rng.random((16, 20, 24)).astype(np.float32)
    a = R.render(vol, "dvr", "cryo", 30, 20)
    b = R.render(vol, "dvr", "cryo", 30, 20)
    h, w, _ = R._frame_shape(vol.shape)
    assert a.shape == (h, w, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and a.max() > 0
    assert R.render(vol, "mip", azimuth_deg=45).shape == (h, w)
    s = R.render(vol, "slices")
    assert s.shape == (20 + 2 + 16, 24 + 2 + 16)


def test_slices_montage_places_the_three_central_planes(rng):
    vol = rng.random((6, 7, 8))
    s = R.slices(vol)
    assert np.array_equal(s[:7, :8], vol[3])
    assert np.array_equal(s[:7, 10:], vol[:, :, 4].T)
    assert np.array_equal(s[9:, :8], vol[:, 3, :])


def test_transfer_function_file_round_trip_and_errors(tmp_path):
    tf = R.TransferFunction.load("bone")
    p = tmp_path / "tf.txt"
    tf.save(p)
    back = R.TransferFunction.load(str(p))
    assert np.allclose(back.points, tf.points, atol=1e-4)
    v = np.array([0.0, 0.7, 1.0], np.float32)
    assert np.allclose(back(v)[1], tf.points[2, 1:], atol=1e-4)
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\n0 0 0 0 0\n0.5 1 1 1\n")
    with pytest.raises(InputError, match="bad.txt:3"):
        R.TransferFunction.load(str(bad))
    with pytest.raises(InputError):
        R.TransferFunction([(0.5, 0, 0, 0, 0), (0.2, 1, 1, 1, 1)])
    with pytest.raises(InputError):
        R.TransferFunction.load("no-such-preset")


def test_orbit_gif_has_requested_frames(tmp_path, rng):
    from PIL import Image

    vol = rng.random((8, 10, 10)).astype(np.float32)
    frames = R.orbit(vol, 4, mode="mip")
    assert len(frames) == 4 and not np.array_equal(frames[0], frames[1])
    # a quarter turn of a MIP about the vertical axis looks along x: the 90° frame
    R.save_gif(frames, tmp_path / "o.gif")
    with Image.open(tmp_path / "o.gif") as im:
        assert im.n_frames == 4


def test_bin_volume_averages():
    v = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    b = R.bin_volume(v, 2)
    assert b.shape == (2, 2, 2)
    assert b[0, 0, 0] == pytest.approx(v[:2, :2, :2].mean())


@pytest.mark.gpu
def test_cupy_render_matches_numpy(rng):
    cp = B.get_xp("gpu")
    vol = rng.random((12, 14, 16)).astype(np.float32)
    a = R.render(vol, "dvr", "cryo", 25, 10)
    b = R.render(cp.asarray(vol), "dvr", "cryo", 25, 10)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_render_command_writes_png_and_gif(tmp_path, rng):
    import subprocess

    from PIL import Image

    from cutem import io

    vol = rng.random((10, 12, 14)).astype(np.float32)
    io.write_volume(tmp_path / "v.mrc", vol, 5.0)
    for args, name in ((["--mode", "dvr", "--tf", "bone"], "d.png"), (["--mode", "mip"], "m.png"),
                       (["--mode", "slices"], "s.png"), (["--orbit", "3", "-q"], "o.gif")):
        r = subprocess.run([*CLI, "render", str(tmp_path / "v.mrc"), *args,
                            "--out", str(tmp_path / name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 10
            if name == "o.gif":
                assert im.n_frames == 3
    r = subprocess.run([*CLI, "render", str(tmp_path / "v.mrc"), "--tf", "nope",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "nope" in r.stderr
