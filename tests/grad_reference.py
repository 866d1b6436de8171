"""The check cases of tests/test_grad_reference.py and the script that recorded their gradients.

``python tests/grad_reference.py OUT.npz`` writes the loss and gradients of every case; the
stored file tests/data/grad_reference.npz was written by this script on main at commit 788b0b9
(before issue 18's backward-pass changes), so the test compares today's gradients with that
code's, not with themselves.
"""
from __future__ import annotations

import sys
from importlib.resources import files

import numpy as np

SUBUNIT = str(files("cutem.data") / "tmv" / "2OM3_model1.pdb")

#: (case name, method, parameters differentiated together)
CASES = [
    ("defocus", "projection", ("defocus_u_A",)),
    ("mtf", "projection", ("mtf_a", "mtf_b", "gain", "dqe")),
    ("positions", "projection", ("positions",)),
    ("b_factors", "projection", ("b_factors",)),
    ("scale_ice", "projection", ("potential_scale", "thickness_center_A")),
    ("mixed", "projection", ("defocus_u_A", "positions", "gain", "b_factors")),
    ("ms_positions", "multislice", ("positions", "defocus_v_A", "mtf_b")),
]


def config(method):
    from cutem.config import ParticleSpec, RunConfig
    from cutem.params import Detector, Geometry, Optics, Sample, Simulation

    det = Detector(nx=32, ny=32, pixel_size_A=3.0, dose_e_per_A2=20.0, dqe=0.6, mtf_a=0.7, mtf_b=0.2, mtf_c=0.1,
                   mtf_alpha=10.0, mtf_beta=40.0, gain=2.0)
    part = ParticleSpec(name="cp", structure=SUBUNIT, placement="list", positions_A=((0.0, 0.0, 0.0),),
                        orientations_deg=((0.0, 30.0, 0.0),))
    # B = 90 Å² (the file's) for every atom: exact under the old 5 Å² lattice and the new single Gaussian alike
    return RunConfig(optics=Optics(voltage_kV=300, defocus_u_A=15000, defocus_v_A=13000, astigmatism_angle_deg=20,
                                   cs_mm=2.7, illumination_angle_mrad=0.05, energy_spread_eV=0.8),
                     detector=det, sample=Sample(thickness_center_A=200, thickness_edge_A=300, ice=True),
                     simulation=Simulation(method=method, slice_thickness_A=25.0, dtype="float64", oversampling=2),
                     geometry=Geometry(tilt_angles_deg=(0.0,)), particles=(part,), seed=3)


def gradients(name, method, wrt):
    """(loss, {parameter: gradient}) of one case: mean squared difference to a fixed target."""
    from adjoints import ops
    from cutem.pipeline import build_scene, simulate, value_and_grad_image

    cfg = config(method)
    scene = build_scene(cfg)
    target = simulate(cfg, scene=scene).images[0] * 0.98 + 0.3
    val, grads, _ = value_and_grad_image(cfg, lambda im: ops.mean(ops.square(im - target)), list(wrt), scene=scene,
                                         estimator="pathwise")
    return float(val), {k: np.asarray(v, dtype=np.float64) for k, v in grads.items()}


def record(path):
    out = {}
    for name, method, wrt in CASES:
        val, g = gradients(name, method, wrt)
        out[f"{name}/loss"] = np.float64(val)
        for k, v in g.items():
            out[f"{name}/{k}"] = v
    np.savez_compressed(path, **out)


if __name__ == "__main__":
    record(sys.argv[1])
