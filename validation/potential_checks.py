"""Physics checks of cutem.potential against analytic formulas and independent references.

1. Single carbon atom (B = 0) on a 0.005 Å grid against the analytic projected potential
   V_z(r) = K Σ aᵢ (4π/bᵢ) exp(−4π² r²/bᵢ) (Peng 1996), and its plane integral K·f(0).
2. TMV fragment (2OM3 model 1 × 49 transforms) on a 1 Å grid against the exact band-limited
   Fourier sum (every atom's own phase factor at every grid frequency, float64).
3. The same fragment against gemmi's DensityCalculatorE (real-space 3D map of the same
   c4322 = Peng Gaussians, sampled on a 1 Å grid, cutoff 1e-5) summed along z × K.
   The models differ: gemmi samples the 3D Gaussians in real space (aliasing of what lies
   beyond Nyquist, truncation at its cutoff radius), cutem evaluates the band-limited
   Fourier series; the figure printed is that difference.
4. Ice: mean projected potential per Å of thickness.

Run:  python validation/potential_checks.py      (≈ 20 s on 2 cores)
Writes validation/results/potential_checks.txt.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from cutem import elements as E
from cutem import potential as P
from cutem import structure as S
from cutem.params import Sample

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "potential_checks.txt")


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def single_atom(lines):
    px, n = 0.005, 2048
    for pos in ((0.0, 0.0), (0.0123, -0.031), (0.0025, 0.0025)):
        atoms = S.Atoms(np.array([[pos[0], pos[1], 0.0]]), [0], (6,), [0.0], [1.0])
        v = P.projected_potential(atoms, (n, n), px, dtype=np.float64)[0]
        yy, xx = (np.mgrid[:n, :n] - n / 2) * px
        ref = E.projected_atom_potential(6, np.hypot(xx - pos[0], yy - pos[1]))
        lines.append(f"carbon at {pos} Å, {px} Å grid: max |V − V_analytic| / max V = "
                     f"{np.abs(v - ref).max() / ref.max():.2e}, rel. L2 {rel_l2(v, ref):.2e}, "
                     f"∫V d²r = {v.sum() * px * px:.4f} V·Å³ (K·f(0) = "
                     f"{E.POTENTIAL_CONSTANT_V_A2 * E.f0(6):.4f})")


def gemmi_projection(frag, L):
    import gemmi

    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(L, L, L, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    model, chain = gemmi.Model("1"), gemmi.Chain("A")
    res = gemmi.Residue()
    res.name, res.seqid = "UNK", gemmi.SeqId(1, " ")
    pos = frag.positions + L / 2  # cell coordinates: our (0, 0) is the grid centre
    for k in range(frag.n):
        a = gemmi.Atom()
        a.name = "X"
        a.element = gemmi.Element(int(frag.species[frag.elements[k]]))
        a.pos = gemmi.Position(*pos[k])
        a.b_iso = float(frag.b_factors[k])
        a.occ = float(frag.occupancies[k])
        res.add_atom(a)
    chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    dc = gemmi.DensityCalculatorE()
    dc.d_min, dc.rate = 2.0, 1.0   # grid spacing d_min / (2 rate) = 1 Å
    dc.set_grid_cell_and_spacegroup(st)
    dc.put_model_density_on_grid(st[0])
    g = np.array(dc.grid, copy=True)  # [x, y, z], ρ in Å⁻² (3D transform of f in Å)
    assert g.shape == (int(L),) * 3 and dc.grid.spacing == (1.0, 1.0, 1.0)
    return E.POTENTIAL_CONSTANT_V_A2 * g.sum(axis=2).T * 1.0  # × Δz = 1 Å → V·Å, rows = y


def main():
    lines = ["# cutem potential checks",
             "# command: python validation/potential_checks.py",
             f"# machine: {platform.machine()} {os.cpu_count()} CPU cores (no GPU), python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    lines.append("## 1. single carbon atom vs analytic formula")
    single_atom(lines)

    frag = S.tmv_fragment()
    lines += ["", f"## 2. TMV fragment ({frag.n} atoms, B = 90 Å²) vs the exact band-limited Fourier sum, 1 Å pixels"]
    for n in (128, 256):
        t = time.perf_counter()
        ref = P.exact_fourier_potential(frag, (n, n), 1.0)[0]
        t_ref = time.perf_counter() - t
        for order, name in ((1, "bilinear"), (3, "cubic (default)")):
            v = P.projected_potential(frag, (n, n), 1.0, dtype=np.float64, spread_order=order)[0]
            lines.append(f"{n}²: {name:<20} rel. L2 = {rel_l2(v, ref):.2e}, max |Δ|/max = "
                         f"{np.abs(v - ref).max() / np.abs(ref).max():.2e}  (exact sum {t_ref:.1f} s)")
        v32 = P.projected_potential(frag, (n, n), 1.0)[0]
        lines.append(f"{n}²: cubic float32         rel. L2 = {rel_l2(v32, ref):.2e}")

    L = 200
    lines += ["", f"## 3. TMV fragment vs gemmi {__import__('gemmi').__version__} DensityCalculatorE "
                  f"(3D map on a 1 Å grid, {L}³ cell, summed along z × K)"]
    t = time.perf_counter()
    gem = gemmi_projection(frag, float(L))
    t_g = time.perf_counter() - t
    ref = P.exact_fourier_potential(frag, (L, L), 1.0)[0]
    lines.append(f"gemmi map + projection: {t_g:.1f} s; integral gemmi {gem.sum():.6g} V·Å³, "
                 f"exact Fourier {ref.sum():.6g} V·Å³")
    for order, name in ((1, "bilinear"), (3, "cubic (default)")):
        v = P.projected_potential(frag, (L, L), 1.0, dtype=np.float64, spread_order=order)[0]
        lines.append(f"cutem {name:<20} vs gemmi: rel. L2 = {rel_l2(v, gem):.2e}")
    lines.append(f"exact Fourier sum          vs gemmi: rel. L2 = {rel_l2(ref, gem):.2e}  "
                 f"(the difference of the two models)")

    lines += ["", "## 4. ice"]
    s = Sample(diameter_A=1e6, thickness_center_A=500.0, thickness_edge_A=500.0)
    vi = P.ice_potential(s, (64, 64), 5.0, dtype=np.float64)[0]
    lines.append(f"mean projected potential / thickness = {vi.mean() / 500:.4f} V "
                 f"(K·0.0335·(f_O(0) + 2 f_H(0)) = {E.ice_mean_inner_potential_V():.4f} V; target 4.88 ± 1%)")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
