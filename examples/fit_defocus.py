"""Recover the defocus of a simulated micrograph through the whole differentiable pipeline.

Simulates a noisy image of a TMV coat-protein subunit, then starts from a wrong defocus and
minimises the squared difference between the model's expected image and the observation with
L-BFGS-B, using the gradient of the full chain (potential → phase object → CTF → detector
MTF) from cutem's hand-derived adjoints.

    python examples/fit_defocus.py            # 128² image, prints the iterations
    python examples/fit_defocus.py --size 64  # what CI runs
"""
from __future__ import annotations

import argparse
from importlib.resources import files

import numpy as np

import cutem
from adjoints import minimize_lbfgsb, ops
from cutem.config import ParticleSpec, RunConfig


def main(size=128, true_defocus_A=12000.0, start_defocus_A=10500.0, seed=4):
    subunit = str(files("cutem.data") / "tmv" / "2OM3_model1.pdb")
    cfg = RunConfig(
        optics=cutem.Optics(voltage_kV=300, defocus_u_A=true_defocus_A, defocus_v_A=true_defocus_A, cs_mm=2.7),
        detector=cutem.Detector(nx=size, ny=size, pixel_size_A=1.5, dose_e_per_A2=100.0, mtf_a=0.7, mtf_b=0.2,
                                mtf_c=0.1, mtf_alpha=10, mtf_beta=40),
        sample=cutem.Sample(ice=False),
        simulation=cutem.Simulation(dtype="float64"),
        particles=(ParticleSpec(name="cp", structure=subunit, placement="list", positions_A=((0.0, 0.0, 0.0),)),),
        seed=seed)
    observed = cutem.simulate(cfg).images[0]
    loss = lambda img: ops.mean(ops.square(img - observed))
    wrong = cfg.replace(optics=cfg.optics.replace(defocus_u_A=start_defocus_A, defocus_v_A=start_defocus_A))

    def value_and_grad(p):
        # one defocus for u and v: the chain rule sums the two gradients
        d = float(p["defocus"])
        c = wrong.replace(optics=wrong.optics.replace(defocus_u_A=d, defocus_v_A=d))
        val, g, _ = cutem.value_and_grad_image(c, loss, ["defocus_u_A", "defocus_v_A"], estimator="none")
        return val, {"defocus": np.asarray(float(g["defocus_u_A"]) + float(g["defocus_v_A"]))}

    history = []
    best, res = minimize_lbfgsb(value_and_grad, {"defocus": np.asarray(start_defocus_A)},
                                bounds={"defocus": (5000.0, 20000.0)}, maxiter=30,
                                callback=lambda x: history.append(float(x[0])))
    fitted = float(best["defocus"])
    for i, d in enumerate(history):
        print(f"iteration {i + 1:2d}: defocus {d:9.1f} Å")
    print(f"true {true_defocus_A:.1f} Å, start {start_defocus_A:.1f} Å, fitted {fitted:.1f} Å "
          f"({res.nfev} evaluations)")
    return fitted


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    main(ap.parse_args().size)
