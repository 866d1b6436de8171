"""Pixel centres: TEM-simulator input files put pixel i at (i − (n−1)/2)·pixel, TOML configs at (i − n/2)·pixel.

``Simulation.grid_origin`` (cutem.grid, Origin): ``"middle"`` for a TEM-simulator input file moves
the whole scene (atoms, clamped particle maps, the ice's hole, contaminants) by −½ simulation pixel
in x and y before it meets the grid; ``"fft"``, every TOML config's default, leaves the images as
they were. ``python tests/test_grid_origin.py OUT.npz`` records :func:`toml_images`; the stored
tests/data/grid_origin_toml.npz was written by it on branch grid at 55ac376, before the option
existed, so :func:`test_toml_images_are_bit_for_bit_those_of_the_code_before` compares with that
code, not with itself.
"""
from __future__ import annotations

import dataclasses
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np

SUBUNIT = str(files("cutem.data") / "tmv" / "2OM3_model1.pdb")
REF = Path(__file__).parent / "data" / "grid_origin_toml.npz"

TEMSIM = """=== simulation ===
generate_micrographs = yes
{sample}
=== particle C ===
source = pdb
pdb_file_in = one.pdb
voxel_size = 0.1
=== particleset ===
particle_type = C
num_particles = 1
particle_coords = file
coord_file_in = coord.txt
=== electronbeam ===
acc_voltage = 200
dose_per_im = 100
=== optics ===
magnification = 30000
defocus_nominal = 1
=== detector ===
det_pix_x = {n}
det_pix_y = {n}
pixel_size = 6
use_quantization = no
"""
SAMPLE = """=== sample ===
diameter = 1000
thickness_edge = 10
thickness_center = 10
"""


def _temsim_one_atom(tmp_path, x_A=0.0, y_A=0.0, n=32, ice=False, element="C"):
    """A TEM-simulator input file of one atom at (x_A, y_A, 0), 2 Å pixels, n × n."""
    e = element
    (tmp_path / "one.pdb").write_text(f"ATOM      1  {e:<3s} ALA A   1    {0:8.3f}{0:8.3f}{0:8.3f}  1.00 20.00"
                                      f"          {e:>2s}\nEND\n")
    (tmp_path / "coord.txt").write_text(f"# x y z phi theta psi\n1 6\n{x_A / 10:.4f} {y_A / 10:.4f} 0 0 0 0\n")
    p = tmp_path / "input.txt"
    p.write_text(TEMSIM.format(n=n, sample=SAMPLE if ice else ""))
    return p


def _centroid(v):
    """(x, y) centroid of an image in pixel indices (column, row)."""
    ii, jj = np.indices(v.shape)
    return float((jj * v).sum() / v.sum()), float((ii * v).sum() / v.sum())


def _atom_image(cfg, oversampling=1):
    """The atoms' projected potential (V·Å) binned to the detector, and the detector's n."""
    from cutem.imaging import ImageModel

    cfg = cfg.replace(simulation=cfg.simulation.replace(oversampling=oversampling))
    m = ImageModel.from_config(cfg, 0, dtype="float64")
    v = np.asarray(m.grid.bin(m.potential()[0][0]))
    return v - np.median(v), cfg.detector.nx   # the median: the uniform ice of the ice case


def test_one_atoms_centroid_lands_at_temsims_pixel_centre_for_a_temsim_input_and_at_cutems_otherwise(tmp_path):
    from cutem.config import load_temsim
    from cutem.groundtruth import micrograph_particles
    from cutem.specimen import scene_from_config

    x0, y0 = 3.3, -5.1   # Å; 2 Å pixels
    cfg = load_temsim(_temsim_one_atom(tmp_path, x0, y0))
    assert cfg.simulation.grid_origin == "middle"
    for over in (1, 2):   # every simulation pixel and every detector pixel on TEM-simulator's centres
        v, n = _atom_image(cfg, over)
        cx, cy = _centroid(v)
        assert abs(cx - (x0 / 2.0 + (n - 1) / 2)) < 0.01 and abs(cy - (y0 / 2.0 + (n - 1) / 2)) < 0.01, (over, cx, cy)
    # the same file with cutem's own grid (every TOML config's default): pixel i at (i − n/2)·pixel
    fft = cfg.replace(simulation=cfg.simulation.replace(grid_origin="fft"))
    cx, cy = _centroid(_atom_image(fft)[0])
    assert abs(cx - (x0 / 2.0 + n / 2)) < 0.01 and abs(cy - (y0 / 2.0 + n / 2)) < 0.01, (cx, cy)
    # the ground truth written beside each image names the pixel its atom landed on
    for c in (cfg, fft):
        star = micrograph_particles(scene_from_config(c), c)
        cx, cy = _centroid(_atom_image(c)[0])
        assert abs(star["rlnCoordinateX"][0] - cx) < 0.01 and abs(star["rlnCoordinateY"][0] - cy) < 0.01


def test_clamped_particle_map_of_a_temsim_input_moves_with_the_atoms(tmp_path):
    from cutem.config import load_temsim

    x0, y0 = -4.2, 2.7
    # gold: a carbon blurred to B ≥ 200 Å² stays below the ice's potential and is clamped away
    cfg = load_temsim(_temsim_one_atom(tmp_path, x0, y0, ice=True, element="AU"))
    assert cfg.simulation.solvent_model == "clamp" and cfg.sample.ice
    v, n = _atom_image(cfg)
    v = np.where(v > 0, v, 0.0)   # the atom's excess over the ice (uniform 100 Å here)
    cx, cy = _centroid(v)
    # the map is the atom's excess on 1 Å voxels spread bilinearly: a few hundredths of a pixel
    assert abs(cx - (x0 / 2.0 + (n - 1) / 2)) < 0.05 and abs(cy - (y0 / 2.0 + (n - 1) / 2)) < 0.05, (cx, cy)


def test_ice_hole_and_contaminant_are_mirror_symmetric_about_the_middle_with_temsims_centres():
    from cutem.config import RunConfig
    from cutem.imaging import ImageModel
    from cutem.params import Detector, Geometry, Sample, Simulation

    # a hole smaller than the field and a ball on its axis: the ice map is even about the scene's
    # origin, so it is the mirror image of itself about the field's middle exactly when the pixels
    # sit at ±(k + ½)·pixel ("middle"), and about pixel n/2 with cutem's grid
    s = Sample(diameter_A=40.0, thickness_center_A=30.0, thickness_edge_A=60.0, contaminants=((0.0, 0.0, 40.0, 9.0),))
    base = RunConfig(detector=Detector(nx=32, ny=32, pixel_size_A=2.0), sample=s, particles=(),
                     geometry=Geometry(tilt_angles_deg=(0.0,)), simulation=Simulation(dtype="float64"))
    for origin in ("middle", "fft"):
        cfg = base.replace(simulation=base.simulation.replace(grid_origin=origin))
        v = np.asarray(ImageModel.from_config(cfg, 0).potential()[0][0])
        mirror = v[::-1, ::-1] if origin == "middle" else np.roll(v[::-1, ::-1], 1, axis=(0, 1))
        assert np.abs(mirror - v).max() < 1e-9 * np.abs(v).max(), origin
        assert np.ptp(v) > 0.2 * np.abs(v).max()  # the rim and the ball are in the field


def _toml_config(method="projection", temsim_model=False, tilt=30.0):
    """A small TOML-style config: one TMV subunit, a hole whose rim crosses the field, a contaminant,
    a tilt about an oblique axis, oversampling and padding (every piece the origin moves)."""
    from cutem.config import ParticleSpec, RunConfig
    from cutem.params import Detector, Geometry, Optics, Sample, Simulation

    part = ParticleSpec(name="cp", structure=SUBUNIT, placement="list", positions_A=((10.0, -6.0, 0.0),),
                        orientations_deg=((0.0, 30.0, 0.0),))
    sim = dict(absorption_model="cross_section", inelastic_background=True, b_factor_floor_A2=200.0,
               solvent_model="clamp") if temsim_model else dict(absorption=0.1)
    return RunConfig(optics=Optics(voltage_kV=300, defocus_u_A=15000, defocus_v_A=13000, astigmatism_angle_deg=20,
                                   cs_mm=2.7),
                     detector=Detector(nx=40, ny=40, pixel_size_A=3.0, dose_e_per_A2=20.0, quantized=False),
                     sample=Sample(diameter_A=200.0, thickness_center_A=150.0, thickness_edge_A=250.0,
                                   offset_x_A=30.0, ice_absorption=0.05, contaminants=((-20.0, 25.0, 140.0, 12.0),)),
                     simulation=Simulation(method=method, slice_thickness_A=40.0, dtype="float64", oversampling=2,
                                           padding_A=12.0, **sim),
                     geometry=Geometry(tilt_angles_deg=(tilt,), tilt_axis_deg=20.0), particles=(part,), seed=3)


def toml_images():
    """{case: noise-free image} of TOML configs (the recorded reference's cases)."""
    from cutem.imaging import ImageModel

    cases = {"projection": _toml_config(), "multislice": _toml_config("multislice"),
             "temsim_model_fft": _toml_config(temsim_model=True)}
    return {k: np.asarray(ImageModel.from_config(c, 0).noise_free()) for k, c in cases.items()}


def test_toml_images_are_those_of_the_code_before_the_option():
    ref = np.load(REF)
    got = toml_images()
    assert sorted(got) == sorted(ref.files)
    for k, v in got.items():
        assert np.ptp(v) > 1e-3 * v.mean(), k     # the case has contrast a half-pixel shift would move
        np.testing.assert_allclose(v, ref[k], rtol=1e-5, atol=1e-7 * float(np.abs(ref[k]).max()), err_msg=k)  # FFT builds differ in the last bits


def test_temsim_origin_is_the_fft_image_of_the_scene_moved_by_half_a_pixel_and_its_gradient_too():
    """"middle" = "fft" with every atom moved by −½ simulation pixel in x and y: the image, and the
    positions' gradient (a translation: the same cotangent), on the differentiable path."""
    from adjoints import Tape, ops
    from adjoints.stage import unwrap
    from cutem.imaging import ImageModel

    cfg = _toml_config(tilt=0.0).replace(sample=_toml_config().sample.replace(ice=False))
    mid = ImageModel.from_config(cfg.replace(simulation=cfg.simulation.replace(grid_origin="middle")), 0)
    fft = ImageModel.from_config(cfg, 0)
    half = 0.5 * mid.grid.pixel_size_A
    assert mid.grid.scene_shift_A == -half and fft.grid.scene_shift_A == 0.0
    p = mid.inputs()["positions"]
    moved = p - np.array([half, half, 0.0])
    target = np.asarray(fft.noise_free())

    def loss_and_grad(model, pos):
        with Tape() as tape:
            w = tape.watch(pos)
            val = ops.sum(ops.abs2(model.noise_free({"positions": w}) - target))
            (g,) = tape.gradient(val, [w])
        return float(np.asarray(unwrap(val))), np.asarray(g)

    lm, gm = loss_and_grad(mid, p)
    lf, gf = loss_and_grad(fft, moved)
    assert lm > 0 and np.abs(gm).max() > 0
    np.testing.assert_allclose(lm, lf, rtol=1e-10)
    np.testing.assert_allclose(gm, gf, rtol=1e-8, atol=1e-10 * np.abs(gf).max())
    # and the shift is not nothing: the unmoved positions on cutem's grid give another image
    assert np.abs(np.asarray(mid.noise_free()) - target).max() > 1e-3 * np.abs(target - target.mean()).max()


if __name__ == "__main__":
    np.savez(sys.argv[1], **toml_images())
