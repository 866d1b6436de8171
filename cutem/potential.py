"""Projected electrostatic potential of atoms and ice, computed in Fourier space.

Grid convention (used by every function here and by the pipeline): an image of shape
``(ny, nx)`` with pixel size ``px`` (Å) has pixel ``(i, j)`` centred at
``x = (j − nx/2)·px``, ``y = (i − ny/2)·px`` (Å); scene coordinate (0, 0) is the image centre
(the pixel ``(ny/2, nx/2)``). The electron travels along +z; slice 0 is the one at the lowest z
(met first); an atom's whole projected potential goes to the slice holding its centre. The field is periodic (an FFT grid): atoms whose centre lies outside the field are
left out, the tails of atoms near an edge wrap around (pad the field against that).

Method (PHYSICS.md; Peng et al., Acta Cryst. A52:257, 1996). The 2D Fourier transform of a
slice's projected potential is

    V̂(q) = Σ_atoms oⱼ K f_Zⱼ(q/2) exp(−Bⱼ q²/4) exp(−2πi q·rⱼ),     K = h²/(2π m₀ e),

evaluated on the grid's frequencies. It is computed as: atoms grouped by (element, B pivot) →
each group spread onto the grid with cubic B-spline weights (16 per atom; ``add.at`` into a
reused float32 buffer per thread, atoms in blocks of 65,536 split over the CPU threads) →
rfft2 of each group's grid → multiplied by the group's transform K f_Z(q/2) e^{−B q²/4}
divided by the transfer function of the spreading itself, sinc⁴(k_y/n_y)·sinc⁴(k_x/n_x) (the
transform of the cubic B-spline; sinc² for ``spread_order=1``, the bilinear "tent") → summed
over the groups in Fourier space → one inverse rfft2 → ÷ px² (a Fourier series over the
field area). The per-group transforms are separable (every factor is a Gaussian in q_x times
one in q_y), so each is (ny×5)·(5×nx/2+1): it is made row block by row block while it
multiplies the group's spectrum into the sum (:meth:`_Plan.apply`), never as a whole grid.
The division by sinc⁴ corrects the spreading's mean transfer but not its aliases (the error at
frequency q is of order the atom's transform times sinc⁴(1 − q·px)/sinc⁴(q·px)).
validation/potential_checks.py measures the result against the exact band-limited Fourier sum
(every atom's own phase factor at every grid frequency, :func:`exact_fourier_potential`): for
the TMV fragment (B = 90 Å²) at 1 Å pixels the relative L2 error is 9.1e-4 with the default
``spread_order=3`` (cubic B-spline, 16 weights per atom, sinc⁴ correction) and 6.0e-3 with
``spread_order=1`` (bilinear, 4 weights; cheaper, for previews); the exact sum itself differs from gemmi's real-space DensityCalculatorE map
(projected along z) by 3.7e-4. A single carbon atom on a 0.005 Å grid matches the analytic
V_z(r) to 7.5e-4 of its peak, and every slice integrates to K Σ oⱼ f_Zⱼ(0) exactly.

B-factors: per element, the atoms' e^{−Bs} (s = q²/4) are written on a few pivot Gaussians,
e^{−Bs} ≈ Σₖ cₖ(B) e^{−B̃ₖ s} with Σₖ cₖ = 1, each atom on its p nearest pivots with
least-squares coefficients (:func:`_b_fit`; one group per (element, pivot): one FFT per pivot,
p scatters per atom). The pivots span the element's B range (widened by 5 Å², snapped outwards)
and are added until every B in it has a relative L2 error (over the grid's frequencies,
weighted by f_Z(q/2)²) ≤ ``b_tolerance`` (default 1e-3) and its dB derivative one ≤ 1e-2; p
(2 to 4) is chosen to minimise scatters + transforms for the atom count and grid. Atoms that
share one B (cryo-EM models; all TMV atoms have 90 Å²) get one exact Gaussian at that B. The
forward is smooth in B while the pivots stay put (between snap points) and the B cotangent is
its derivative. Without a solvent term the elements with several B values share one set of
pivots (:class:`_Groups`): f_ref(q/2) e^{−B̃ₖs} of the element with the most atoms, on which
every element's f_Z(q/2) e^{−Bs} is fitted the same way (Σₖ cₖ = f_Z(0)/f_ref(0): integrals
exact), the pivots added until each element meets the tolerances; an element with few atoms
that does not fit may take wider windows of them, else it keeps its own pivots. A group is then
one pivot with the atoms of all those elements. Measured on PDB 1F2N (B from 2 to 100 Å²,
tests/test_potential.py): 9 groups at 1 Å (256² and 4096²: C, N, O, S on carbon's 9 pivots,
within 4e-4 of their own transforms, Ca on windows of 8 of them, 3e-2 on 4); 34 with every
element on its own pivots (with a solvent term), 52 at 0.5 Å, where N does not fit on carbon's
(a 5 Å² lattice: 70); relative L2 against the exact sum 2.95e-2 at 1 Å (shared or not) and 3.9e-3 at 0.5 Å (lattice: 2.97e-2, 4.9e-3) — at 1 Å the scatter's aliasing of the
B = 2 Å² atoms dominates (6.4e-3 even with every B = 50 Å²), not the B representation.

Cost: one forward rfft2 per group and slice, one inverse per slice, plus a scatter of 4
(bilinear) or 16 (cubic) weights per atom and pivot it uses (1 with a single B; 2–5 otherwise,
the pivots of the atom's cell of the coefficient table and no other).

Solvent: :func:`ice_potential` gives the projected potential of the ice layer, V_ice·(length of
ice in the slice), V_ice = K·n·(f_O(0) + 2 f_H(0)) = 4.877 V for n = 0.0335 Å⁻³. So that ice is
not counted twice where a particle sits, each atom (when ``solvent_V`` > 0) subtracts the ice
it displaces: a Gaussian blob of unit peak density and volume vⱼ (Fourier transform
vⱼ·exp(−π vⱼ^{2/3} q²), the "dummy atom" of Fraser, MacRae & Suzuki, J. Appl. Cryst. 11:693,
1978) times V_ice, with vⱼ = 1.212 Å³/Da × atomic mass (protein partial specific volume
0.73 cm³/g). Linear and differentiable, unlike TEM-simulator's max(V_atoms, V_ice); hydrogens
missing from a model are not counted (their volume is ~8% of a protein's).

Absorption: an imaginary part equal to ``absorption`` × the real potential of the atoms, plus
``Sample.ice_absorption`` × the ice's.

Public API (the image model calls these)
-------------------------------------
``projected_potential(atoms, shape, pixel_size_A, *, slice_thickness_A=None, z_range_A=None,
b_factor_A2=0.0, xp=numpy, dtype=float32, b_tolerance=1e-3, solvent_V=0.0, scale=1.0,
spread_order=3)`` → (n_slices, ny, nx) real array in V·Å. ``atoms``: :class:`cutem.structure.Atoms` (positions
    in the microscope frame, e.g. ``Scene.atoms(tilt_deg)``). No slice thickness: one slice
    (projection approximation). ``z_range_A = (z0, z1)``: the slices tile [z0, z1) (default: the
    atoms' z extent); atoms outside are left out.
``ice_potential(sample, shape, pixel_size_A, *, slice_thickness_A=None, z_range_A=None,
tilt_deg=0.0, tilt_axis_deg=0.0, xp=numpy, dtype=float32)`` → (n_slices, ny, nx) V·Å.
``slab_z_range(sample, shape, pixel_size_A, tilt_deg, tilt_axis_deg)`` → the extent of the
    tilted ice slab (and the contaminants) over the field along the beam.
``contaminant_path_A(sample, shape, pixel_size_A, tilt_deg, tilt_axis_deg)`` → the path length
    through ``Sample.contaminants`` per pixel. The specimen of an image (atoms + ice,
    absorption, slicing) is composed once, by :class:`cutem.imaging.ImageModel`.
``potential_volume(atoms, shape_zyx, voxel_size_A, ...)`` → the 3D map in V (``--volume``).
Stages (on the tape): ``ProjectedPotentialStage(atoms, shape, pixel_size_A, ...)`` with inputs
``(positions (n,3), b_factors (n,), scale ())`` and ``IcePotentialStage(sample, shape, ...)``
with inputs ``(thickness_center_A (), thickness_edge_A ())``.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

import adjoints.backend as B
from adjoints import Stage, register

from . import elements as E
from .errors import InputError
from .params import Sample
from .specimen import tilt_matrix
from .structure import Atoms

#: protein partial specific volume 0.73 cm³/g in Å³ per dalton (displaced solvent per atom)
VOLUME_PER_DALTON_A3 = 0.73e24 / 6.02214076e23
#: amorphous carbon support film, 2.0 g/cm³, in atoms per Å³
CARBON_DENSITY_PER_A3 = 2.0 / 12.011 * 6.02214076e23 * 1e-24

_MASS_DA = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999, 9: 18.998, 11: 22.990, 12: 24.305, 15: 30.974,
            16: 32.06, 17: 35.45, 19: 39.098, 20: 40.078, 25: 54.938, 26: 55.845, 27: 58.933,
            29: 63.546, 30: 65.38, 34: 78.971, 35: 79.904, 53: 126.904}


def atomic_mass_Da(z: int) -> float:
    """Atomic mass in daltons (common biological elements; others from gemmi)."""
    m = _MASS_DA.get(int(z))
    if m is None:
        import gemmi

        m = gemmi.Element(int(z)).weight
    return float(m)


def ice_potential_V() -> float:
    """Mean inner potential of amorphous ice, K·n·(f_O(0) + 2 f_H(0)) (4.877 V)."""
    return E.ice_mean_inner_potential_V()


def carbon_potential_V() -> float:
    """Mean inner potential of the amorphous carbon support film (2.0 g/cm³), K·n·f_C(0)."""
    return E.POTENTIAL_CONSTANT_V_A2 * CARBON_DENSITY_PER_A3 * E.f0(6)


# ------------------------------------------------------------------------------ plan
class _Plan:
    """Grid quantities for one (shape, pixel size, device, dtype): 1D frequency factors."""

    def __init__(self, shape, px, xp, dtype, order=1):
        ny, nx = (int(n) for n in shape)
        if order not in (1, 3):
            raise InputError(f"spread order must be 1 (bilinear) or 3 (cubic B-spline), not {order!r}")
        self.order = order
        if ny < 2 or nx < 2:
            raise InputError(f"grid shape {shape} must be at least 2×2")
        if not (px > 0 and math.isfinite(px)):
            raise InputError(f"pixel size {px} Å must be positive")
        self.ny, self.nx, self.nxh, self.px = ny, nx, nx // 2 + 1, float(px)
        self.xp, self.dtype = xp, np.dtype(dtype)
        ky = np.fft.fftfreq(ny) * ny  # signed integer frequencies
        kx = np.arange(self.nxh, dtype=np.float64)
        self.qy2 = (ky / (ny * px)) ** 2
        self.qx2 = (kx / (nx * px)) ** 2
        # 1 / transfer function of the scatter: sinc² per axis (bilinear), sinc⁴ (cubic B-spline)
        self.inv_ty = 1.0 / np.sinc(ky / ny) ** (order + 1)
        self.inv_tx = 1.0 / np.sinc(kx / nx) ** (order + 1)
        # int32 indices when the grid allows: half the memory traffic of the taps
        self.index_dtype = np.int32 if ny * nx < 2 ** 31 else np.int64
        off = np.asarray(_offsets(order))
        self.tap_offsets = xp.asarray((off[:, None] * nx + off[None, :]).ravel().astype(self.index_dtype))  # y-major

    @property
    def band(self):
        """The grid's frequency distribution (:func:`_band`), computed once per plan."""
        b = self.__dict__.get("_band")
        if b is None:
            b = self.__dict__["_band"] = _band(self.px, (self.ny, self.nx))
        return b

    #: multiply-adds of the kernel's factors per row block of :meth:`apply` on the CPU (a block of
    #: 32 rows at 4096² with m = 5): the block's kernel rows, its spectrum and the accumulator's
    #: stay in the cache between the product and the sum, instead of streaming a materialised
    #: (ny, nx/2+1) kernel and the spectrum through memory twice (34 kernels of 32 MiB for 1F2N
    #: at 4096² did not fit any cache worth keeping). Small on purpose: OpenBLAS runs a product
    #: twice this size on its threads, measured 0.5 s instead of 2 ms for the 4096² kernel on
    #: the 2 busy cores
    APPLY_BLOCK = 5 * 2 ** 16

    def factors(self, z, b_level, solvent_V=0.0, d_b=False):
        """The separable factors (ey (ny, m), ex (m, nxh)) of :meth:`kernel` (cached: they are
        (ny + nxh)·m numbers). ``b_level`` a tuple ((B̃, c), ...): the kernel Σ c·kernel(B̃)."""
        key = (int(z), b_level if isinstance(b_level, tuple) else float(b_level), float(solvent_V), bool(d_b))
        cache = self.__dict__.setdefault("_fcache", {})
        f = cache.get(key)
        if f is None:
            if isinstance(b_level, tuple):
                parts = [self._factors(z, bk, solvent_V, d_b) for bk, _ in b_level]
                ey = np.hstack([c * a for (_, c), (a, _) in zip(b_level, parts)])
                ex = np.vstack([b for _, b in parts])
            else:
                ey, ex = self._factors(z, b_level, solvent_V, d_b)
            # ≤ 64 MiB of factors (147 KiB per kernel at 4096² in float32)
            if (len(cache) + 1) * (self.ny + self.nxh) * ey.shape[1] * self.dtype.itemsize > 64 * 2 ** 20:
                cache.clear()
            xp = self.xp
            f = cache[key] = (xp.asarray(ey.astype(self.dtype)), xp.asarray(ex.astype(self.dtype)))
        return f

    def kernel(self, z, b_level, solvent_V=0.0, d_b=False):
        """K f_Z(q/2) e^{−B q²/4} / T(q) / px² on the rfft half grid (float, on xp), materialised
        (:meth:`apply` multiplies by it without)."""
        ey, ex = self.factors(z, b_level, solvent_V, d_b)
        return ey @ ex

    def apply(self, spec, z, b_level, solvent_V=0.0, d_b=False, acc=None):
        """``spec`` × :meth:`kernel` (in place, returned), or with ``acc``: acc += spec × kernel
        (``spec`` is overwritten). The kernel is made row block by row block from its separable
        factors (one (rows×m)·(m×nxh) product each); on the GPU one block."""
        ey, ex = self.factors(z, b_level, solvent_V, d_b)
        step = self.ny if self.xp is not np else max(1, self.APPLY_BLOCK // (self.nxh * ey.shape[1]))
        for r in range(0, self.ny, step):
            blk = spec[r:r + step]
            blk *= ey[r:r + step] @ ex
            if acc is not None:
                acc[r:r + step] += blk
        return spec if acc is None else acc

    def _factors(self, z, b_level, solvent_V=0.0, d_b=False):
        """Host float64 factors of K f_Z(q/2) e^{−B q²/4} / T(q) / px²; with ``d_b`` those of its
        derivative d/dB (the factor −q²/4 = −(q_y² + q_x²)/4; the solvent term has no B).

        The kernel is (ny×m)·(m×nxh) with m = 5 (+1 for the solvent; ×2 for d/dB): every term is
        separable.
        """
        a, b = E.scattering_params(z)
        amp = list(E.POTENTIAL_CONSTANT_V_A2 * a)
        widths = list((b + b_level) / 4.0)  # f(q/2) e^{−Bq²/4} = Σ a e^{−(b + B) q²/4}
        if solvent_V and not d_b:
            v = VOLUME_PER_DALTON_A3 * atomic_mass_Da(z)
            amp.append(-solvent_V * v)
            widths.append(math.pi * v ** (2.0 / 3.0))
        amp = np.asarray(amp) / self.px ** 2
        widths = np.asarray(widths)
        ey = np.exp(-np.outer(self.qy2, widths)) * self.inv_ty[:, None] * amp[None, :]
        ex = np.exp(-np.outer(widths, self.qx2)) * self.inv_tx[None, :]
        if d_b:
            ey, ex = np.hstack([-0.25 * self.qy2[:, None] * ey, ey]), np.vstack([ex, -0.25 * self.qx2[None, :] * ex])
        return ey, ex


_PLANS: dict = {}


def _plan(shape, px, xp, dtype, order=1):
    key = (tuple(int(n) for n in shape), float(px), xp.__name__, np.dtype(dtype).str, order)
    p = _PLANS.get(key)
    if p is None:
        if len(_PLANS) > 16:
            _PLANS.clear()
        p = _PLANS[key] = _Plan(shape, px, xp, dtype, order)
    return p


# ------------------------------------------------------------------------- scatter
def _taps(t, order, xp, deriv=False):
    """B-spline spreading weights along one axis for fractional offsets t ∈ [0, 1).

    order 1: linear (2 taps at 0, 1); order 3: cubic B-spline (4 taps at −1, 0, 1, 2).
    Returns (taps, n) weights (tap-major: each row a long contiguous array, so that the
    products of the y and x weights run as long loops) and, with ``deriv``, their d/dt.
    """
    if order == 1:
        w = xp.stack([1 - t, t])
        return w, (xp.stack([-xp.ones_like(t), xp.ones_like(t)]) if deriv else None)
    u = 1 - t
    t2, t3 = t * t, t * t * t
    w = xp.stack([u * u * u / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6])
    if not deriv:
        return w, None
    return w, xp.stack([-u * u / 2, (9 * t2 - 12 * t) / 6, (-9 * t2 + 6 * t + 3) / 6, t2 / 2])


def _offsets(order):
    return (0, 1) if order == 1 else (-1, 0, 1, 2)


def _corners(plan, xy, xp, dtype):
    """Base pixel (iy, ix), fractions (ty, tx) and the in-field mask of atoms at ``xy`` (Å)."""
    fx = xy[:, 0] / plan.px + plan.nx / 2
    fy = xy[:, 1] / plan.px + plan.ny / 2
    inside = (fx >= 0) & (fx < plan.nx) & (fy >= 0) & (fy < plan.ny)
    ix = xp.floor(fx)
    iy = xp.floor(fy)
    tx = (fx - ix).astype(dtype)
    ty = (fy - iy).astype(dtype)
    return iy.astype(np.int64), ix.astype(np.int64), ty, tx, inside


def _tap_index(i, n, order, xp):
    """(taps, m) periodic grid indices of the taps."""
    if order == 1:  # i ∈ [0, n): only i + 1 can wrap
        i1 = i + 1
        i1[i1 == n] = 0
        return xp.stack([i, i1])
    return (i[None, :] + xp.asarray(np.asarray(_offsets(order), dtype=i.dtype))[:, None]) % i.dtype.type(n)


def _scatter_add(grid, idx, w, xp):
    """grid[idx] += w with repeated indices summed, in the grid's own dtype and buffer
    (NumPy ≥ 2's ``add.at`` is several times faster than ``bincount`` here and allocates nothing)."""
    if xp is np:
        np.add.at(grid, idx, w.astype(grid.dtype, copy=False))
    else:
        import cupyx

        cupyx.scatter_add(grid, idx, w.astype(grid.dtype, copy=False))


#: atoms per block of the CPU scatter: its 16 int32 indices and 16 weights per atom (8 MiB) stay
#: near the cache instead of streaming 30 M taps through memory twice
_SPREAD_BLOCK = 65536


def _block_taps(plan, iy, ix, xp):
    """(taps², m) flat periodic grid indices of the B-spline taps of a block of atoms.

    Tap-major (row k: tap k of every atom): consecutive atoms are neighbours in space, so each
    row sweeps the block's patch of the grid in order, and the index and weight products run
    as long loops (5× faster than atom-major (m, 16) products, whose inner loops are 4 long).
    An interior atom's taps are its base index plus the plan's fixed offsets; the few atoms
    near an edge, whose taps wrap around, take the modular path.
    """
    order, ny, nx, it = plan.order, plan.ny, plan.nx, plan.index_dtype
    lo, hi = -_offsets(order)[0], _offsets(order)[-1]
    idx = plan.tap_offsets[:, None] + (iy.astype(it) * it(nx) + ix.astype(it))[None, :]
    edge = (ix < lo) | (ix >= nx - hi) | (iy < lo) | (iy >= ny - hi)
    if bool(edge.any()):
        e = xp.flatnonzero(edge)
        jy = _tap_index(iy[e].astype(it), ny, order, xp) * it(nx)
        jx = _tap_index(ix[e].astype(it), nx, order, xp)
        idx[:, e] = (jy[:, None, :] + jx[None, :, :]).reshape(-1, len(e))
    return idx


def _spread_block(plan, grid, iy, ix, ty, tx, w, xp):
    """Scatter one block of atoms into the flat grid (B-spline weights, periodic)."""
    idx = _block_taps(plan, iy, ix, xp)
    wy, _ = _taps(ty, plan.order, xp)
    wx, _ = _taps(tx, plan.order, xp)
    wy *= w[None, :]
    wts = wy[:, None, :] * wx[None, :, :]
    _scatter_add(grid, idx.ravel(), wts.ravel(), xp)


def _gather_block(plan, h, iy, ix, ty, tx, deriv, xp):
    """The adjoint of :func:`_spread_block` for a block of atoms: Σ_taps h[tap]·weight per atom,
    and with ``deriv`` the same with the weights' derivatives along y and x (per pixel).

    Returns (p, p_y, p_x) (``p_y``, ``p_x`` None without ``deriv``)."""
    n = plan.order + 1
    vals = h[_block_taps(plan, iy, ix, xp)].reshape(n, n, len(iy))
    wy, dwy = _taps(ty, plan.order, xp, deriv)
    wx, dwx = _taps(tx, plan.order, xp, deriv)
    rx = (vals * wx[None, :, :]).sum(axis=1)          # contract x first: (taps, m)
    p = (rx * wy).sum(axis=0)
    if not deriv:
        return p, None, None
    return p, (rx * dwy).sum(axis=0), ((vals * dwx[None, :, :]).sum(axis=1) * wy).sum(axis=0)


def _gather(plan, h, iy, ix, ty, tx, deriv, xp):
    """:func:`_gather_block` over all atoms: on the CPU in blocks of ``_SPREAD_BLOCK`` split
    over the threads like the forward scatter (each thread writes its own range of atoms, so
    no sums are shared); on the GPU one call. Returns host float64 (p, p_y, p_x)."""
    m = len(iy)
    if xp is not np:
        return tuple(None if a is None else B.to_numpy(a).astype(np.float64)
                     for a in _gather_block(plan, h, iy, ix, ty, tx, deriv, xp))
    out = [np.empty(m) for _ in range(3 if deriv else 1)]

    def work(ab):
        a, b = ab
        for k, r in enumerate(_gather_block(plan, h, iy[a:b], ix[a:b], ty[a:b], tx[a:b], deriv, xp)):
            if r is not None:
                out[k][a:b] = r

    blocks = [(a, min(a + _SPREAD_BLOCK, m)) for a in range(0, m, _SPREAD_BLOCK)]
    if B.threads() > 1 and len(blocks) > 1:
        list(B.pool().map(work, blocks))
    else:
        for ab in blocks:
            work(ab)
    return out[0], (out[1] if deriv else None), (out[2] if deriv else None)


def _spread(plan, grid, iy, ix, ty, tx, w, xp, spare=None):
    """grid (flat, ny·nx) += the atoms spread with the plan's B-spline.

    On the CPU with more than one thread (``CUTEM_THREADS``), the atoms are split between the
    threads, each scattering into its own grid (``grid`` and the ``spare`` buffers, which are
    zeroed here) in blocks of ``_SPREAD_BLOCK``; the grids are then summed. On the GPU one
    ``scatter_add`` takes all atoms.
    """
    m = len(w)
    if xp is not np:
        _spread_block(plan, grid, iy, ix, ty, tx, w, xp)
        return
    nthr = min(B.threads(), max(1, m // _SPREAD_BLOCK))
    bounds = np.linspace(0, m, nthr + 1).astype(np.int64)

    def work(k, g):
        for a in range(int(bounds[k]), int(bounds[k + 1]), _SPREAD_BLOCK):
            b = min(a + _SPREAD_BLOCK, int(bounds[k + 1]))
            _spread_block(plan, g, iy[a:b], ix[a:b], ty[a:b], tx[a:b], w[a:b], xp)

    if nthr == 1:
        work(0, grid)
        return
    grids = [grid] + list(spare[:nthr - 1])
    for g in grids[1:]:
        g.fill(0)
    list(B.pool().map(work, range(nthr), grids))
    for g in grids[1:]:
        grid += g


#: default relative L2 error of the B representation per atom (:class:`_Groups`); the B-spline
#: scatter's own error is larger (9e-4 on TMV at 1 Å; 3e-2 on 1F2N, whose B = 2 Å² atoms alias)
B_TOLERANCE = 1e-3
#: relative error allowed to the dB derivative of the B representation (the B cotangent)
_B_DERIVATIVE_TOLERANCE = 1e-2
#: half-width (Å²) added around the atoms' B range, so that the representation is accurate where
#: a B derivative looks (and the pivots stay put while the B values move inside it)
_B_MARGIN_A2 = 5.0
#: the snap points of the range sit at (k + this)·``_B_MARGIN_A2``, away from the round B values
#: models use (a B on a snap point is where finite differences meet two sets of pivots)
_B_SNAP_OFFSET = 0.382
#: Gaussians per atom tried (each atom uses its p nearest pivots; fewer per atom, more pivots)
_B_WINDOWS = (2, 3, 4)
#: most pivots per element
_MAX_B_PIVOTS = 48
#: cost of one rfft2 over the cost of scattering one atom once, per grid pixel (measured with
#: NumPy on one core: a 1024² or 4096² rfft2 costs as much as scattering 0.05–0.06 atoms per
#: pixel); it decides the Gaussians per atom (:func:`_b_fit`)
_FFT_PER_PIXEL_IN_ATOMS = 0.06


def _band(px, shape=None, n=128):
    """Samples s = q²/4 (Å⁻²) of a square-pixel grid's band and their weights (the share of the
    grid's frequencies there). With ``shape`` (ny, nx): the grid's own frequencies, binned in
    ``n`` bins of s (on a sub-grid of ≤ 2²⁰ points for large grids); without: the continuous
    density up to the corner frequency (∝ q times the angular share of the Nyquist square)."""
    qn = 0.5 / px
    if shape is None:
        q = (np.arange(n) + 0.5) * (math.sqrt(2.0) * qn / n)
        frac = np.where(q <= qn, 1.0, 1.0 - 4.0 / math.pi * np.arccos(np.minimum(1.0, qn / q)))
        return q * q / 4.0, np.maximum(q * frac, 0.0)
    ny, nx = (int(k) for k in shape)
    stride = max(1, int(math.ceil(math.sqrt(ny * (nx // 2 + 1) / 2 ** 20))))
    qy2 = (np.fft.fftfreq(ny, d=px) ** 2)[::stride]
    qx2 = (np.fft.rfftfreq(nx, d=px) ** 2)[::stride]
    s2 = ((qy2[:, None] + qx2[None, :]) / 4.0).ravel()
    cnt, edges = np.histogram(s2, bins=n, range=(0.0, float(s2.max()) * (1 + 1e-12)))
    tot, _ = np.histogram(s2, bins=edges, weights=s2)
    keep = cnt > 0
    return tot[keep] / cnt[keep], cnt[keep].astype(np.float64)


def _root_weight(z, band):
    """sqrt(frequency weight) · f_Z(q/2) on the band's samples."""
    s, w = band
    a, bb = E.scattering_params(z)
    return np.sqrt(w) * (a[:, None] * np.exp(-bb[:, None] * s[None, :])).sum(0)


def _windows(piv, b, p):
    """Start of the window of the ``p`` pivots nearest to each B (a contiguous run of ``piv``)."""
    start = np.clip(np.searchsorted(piv, b) - p // 2, 0, len(piv) - p)
    # slide right while the pivot past the window is nearer than its first one
    for _ in range(p):
        right = start + p < len(piv)
        nxt = piv[np.minimum(start + p, len(piv) - 1)]
        move = right & (np.abs(nxt - b) < np.abs(b - piv[start]))
        if not move.any():
            break
        start = start + move
    return start


def _window_fits(z, piv, p, band, b, ref=None):
    """Constrained least-squares coefficients of element ``z``'s f_z(q/2) e^{−Bs} on each B's
    window of ``p`` pivots f_ref(q/2) e^{−B̃ₖs} of the basis element ``ref`` (default ``z``: the
    pivots are e^{−B̃ₖs} times the atom's own form factor), with Σ cₖ = f_z(0)/f_ref(0) (1 for
    ``ref`` = ``z``: the atom's integral exact).

    Returns (window starts (n,), coefficients (n, p), dB derivatives (n, p), relative errors of
    the values and of the derivatives (n,))."""
    s = band[0]
    root = _root_weight(z, band)
    ref = z if ref is None else ref
    base = root if ref == z else _root_weight(ref, band)
    total = 1.0 if ref == z else E.f0(z) / E.f0(ref)
    start = _windows(piv, b, p)
    y = np.exp(-np.outer(s, b)) * root[:, None]
    d = -s[:, None] * y
    coef, dcoef = np.empty((len(b), p)), np.empty((len(b), p))
    err, d_err = np.empty(len(b)), np.empty(len(b))
    for j0 in np.unique(start):
        sel = start == j0
        A = np.exp(-np.outer(s, piv[j0:j0 + p])) * base[:, None]
        M = A[:, :-1] - A[:, -1:]          # Σ c = total eliminated: c_last = total − Σ_{<last} c
        pinv = np.linalg.pinv(M)
        c = pinv @ (y[:, sel] - total * A[:, -1:])
        dc = pinv @ d[:, sel]
        coef[sel] = np.vstack([c, total - c.sum(0)]).T
        dcoef[sel] = np.vstack([dc, -dc.sum(0)]).T
        err[sel] = (np.linalg.norm(M @ c - (y[:, sel] - total * A[:, -1:]), axis=0)
                    / np.linalg.norm(y[:, sel], axis=0))
        d_err[sel] = np.linalg.norm(M @ dc - d[:, sel], axis=0) / np.linalg.norm(d[:, sel], axis=0)
    return start, coef, dcoef, err, d_err


_BASES: dict = {}


def _b_pivots(z, lo, hi, band, tol, p, targets=None, cap=_MAX_B_PIVOTS):
    """Pivots of element ``z`` over [lo, hi] for windows of ``p`` (cached): p evenly spaced, then
    greedily the midpoint of the widest gap in the window of the candidate (97 points of
    [lo, hi]) with the worst error, until every candidate's
    value error is ≤ ``tol`` and its dB derivative's ≤ ``_B_DERIVATIVE_TOLERANCE`` (the errors
    are smooth in B, so the dense candidates stand for the whole range). ``targets``: the
    elements whose atoms are written on them (:func:`_window_fits` with ``ref`` = ``z``; default
    ``z`` alone); the worst of them decides. ``cap``: stop beyond that many pivots (more would
    not pay). Returns (pivots, worst value error)."""
    targets = (z,) if targets is None else tuple(int(t) for t in targets)
    cap = min(int(cap), _MAX_B_PIVOTS)
    key = (z, targets, lo, hi, tol, p, cap, band[0].tobytes(), band[1].tobytes())
    hit = _BASES.get(key)
    if hit is not None:
        return hit
    cand = np.linspace(lo, hi, 97)
    piv = np.linspace(lo, hi, p)
    while True:
        fits = [_window_fits(t, piv, p, band, cand, ref=z) for t in targets]
        start = fits[0][0]
        err = np.max([f[3] for f in fits], axis=0)
        d_err = np.max([f[4] for f in fits], axis=0)
        # half the tolerances on the candidates: the B values between them stay within them
        bad = np.maximum(err / (0.5 * tol), d_err / (0.5 * _B_DERIVATIVE_TOLERANCE))
        if bad.max() <= 1.0 or len(piv) >= cap:
            break
        # split the widest gap of the worst candidate's window and of the two pivots around it:
        # a window of the p nearest pivots need not bracket the B (with p = 2 it is often both
        # on one side), and splitting only inside it halved the same gap until two pivots
        # coincided (1e-10 Å² apart on 630k carbon atoms: coefficients of ±7e10, float32 noise)
        worst = int(np.argmax(bad))
        j0 = int(start[worst])
        i = int(np.clip(np.searchsorted(piv, cand[worst]), 1, len(piv) - 1))
        w = piv[min(j0, i - 1):max(j0 + p, i + 1)]
        g = int(np.argmax(np.diff(w)))
        piv = np.sort(np.append(piv, 0.5 * (w[g] + w[g + 1])))
    if len(_BASES) > 256:
        _BASES.clear()
    out = _BASES[key] = (piv, float(err.max()))
    return out


def _b_fit(z, b_values, band, tol, fft_cost_atoms, spread=False):
    """The B representation of an element's atoms (module docstring, B-factors).

    Returns a :class:`_BFit`. One B value: one pivot at that B (exact, see
    :meth:`_Groups.entries`), unless ``spread``.
    Several: each atom's e^{−Bs} ≈
    Σ cₖ(B) e^{−B̃ₖ s} over its p nearest pivots, Σ cₖ = 1 (the atom's integral stays exact),
    cₖ the least-squares fit over the grid's band weighted by the frequency count × f_Z(q/2)²
    (so the error is the atom's relative L2 error on the grid). The pivots span the atoms' B
    range widened by ``_B_MARGIN_A2`` and snapped outwards to (k + ``_B_SNAP_OFFSET``)·margin (the pivots stay put
    while B values move inside: the forward is smooth in B between window changes and the B
    cotangent dcₖ/dB is its derivative). p is the window of ``_B_WINDOWS`` with the least cost
    n·p + ``fft_cost_atoms``·K (scatters per atom against transforms per pivot).
    """
    b_values = np.asarray(b_values, dtype=np.float64)
    lo, hi = float(b_values.min()), float(b_values.max())
    if hi - lo <= 1e-12 * max(1.0, hi) and not spread:
        return _BFit(np.array([lo]))
    lo, hi = _b_range(lo, hi)
    p, piv, err = _b_window(int(z), lo, hi, band, tol, len(b_values), fft_cost_atoms)
    return _b_fit_on(z, b_values, lo, hi, band, tol, p, piv, err)


def _b_range(lo, hi):
    """[lo, hi] widened by ``_B_MARGIN_A2`` and snapped outwards (:func:`_b_fit`)."""
    m, o = _B_MARGIN_A2, _B_SNAP_OFFSET
    return max(0.0, (math.floor(lo / m - o) - 1 + o) * m), (math.ceil(hi / m - o) + 1 + o) * m


def _b_window(z, lo, hi, band, tol, n, fft_cost_atoms):
    """(p, pivots, worst error) of the window p of ``_B_WINDOWS`` with the least cost
    n·p + ``fft_cost_atoms``·K among those whose pivots met the tolerances (value and dB
    derivative) below ``_MAX_B_PIVOTS``: a window stopped by the cap is cheap only because it
    is short of them (2-wide windows of carbon over 5-115 Å²: 48 pivots, dB error 0.019, chosen
    for 630k atoms on a 518² grid); the most accurate when none did."""
    best = None
    for p in _B_WINDOWS:
        piv, err = _b_pivots(int(z), lo, hi, band, float(tol), p)
        met = len(piv) < _MAX_B_PIVOTS   # _b_pivots stops at the tolerances or at the cap
        rank = (not met, n * p + fft_cost_atoms * len(piv) if met else err)
        if best is None or rank < best[0]:
            best = (rank, p, piv, err)
    return best[1:]


def _b_fit_on(z, b_values, lo, hi, band, tol, p, piv, err, ref=None, targets=None, cap=_MAX_B_PIVOTS, window=None):
    """The :class:`_BFit` of element ``z``'s atoms on the pivots ``piv`` (of ``ref``, :func:`_b_table`)."""
    nodes, left, right = _b_table(int(z), lo, hi, band, float(tol), p, ref=ref, targets=targets, cap=cap,
                                  window=window)
    # the coefficients are read off a table over the range, linearly interpolated: O(n) for
    # millions of atoms, smooth in B, and their derivative is the table's slope exactly
    step = nodes[1] - nodes[0]
    u = (b_values - lo) / step
    cell = np.clip(np.floor(u).astype(np.int64), 0, len(nodes) - 2)
    return _BFit(piv, cell, u - cell, left, (right - left) / step, step, err)


class _BFit:
    """An element's B representation: pivots, and per atom its table cell and the fraction
    across it; pivot k's coefficient of an atom in cell c at fraction f is
    left[k, c] + f·step·slope[k, c], its dB derivative slope[k, c]. One pivot: every
    coefficient is 1 (``cell`` None).

    Each atom uses the pivots ``k0`` to ``k1`` of its cell (the windows of the cell's two
    nodes: p pivots, p + 1 where the window moves across the cell), at most ``width``;
    ``order`` sorts the atoms by (``k0``, ``k1``) (stable: file order, i.e. spatial coherence,
    within), after which (:meth:`permute`) the atoms that use pivot k are one contiguous range
    (the atoms with k1 = k of the block k0 = k − p, then the blocks k0 = k − p + 1, ..., k) —
    every atom is scattered onto the pivots it uses and no other (a window of ``width`` from
    ``k0`` scattered a fifth of 1F2N's atoms with zero coefficients).
    """

    def __init__(self, piv, cell=None, frac=None, left=None, slope=None, step=1.0, err=0.0):
        self.piv, self.cell, self.frac, self.left, self.slope, self.step, self.err = (
            piv, cell, frac, left, slope, step, err)
        self.order = None
        if cell is not None:
            used = (left != 0) | (slope != 0)                    # (K, cells)
            n_piv = used.shape[0]
            first = used.argmax(axis=0)                          # each cell's first pivot ...
            last = n_piv - 1 - used[::-1].argmax(axis=0)         # ... and last
            self.width = int((last - first + 1).max())
            # int16 (≤ 48² keys): NumPy's stable argsort is a radix sort for 16-bit keys
            self.key = (first * n_piv + last).astype(np.int16)[cell]
            order = np.argsort(self.key, kind="stable")
            self.order = None if (np.diff(order) > 0).all() else order
            self.bounds = np.searchsorted(self.key[order], np.arange(n_piv * n_piv + 1))

    def permute(self, order):
        """Reorder the atoms (``order`` from :attr:`order`)."""
        self.cell, self.frac, self.key = self.cell[order], self.frac[order], self.key[order]
        self.order = None

    def groups(self, b0):
        """(pivot, atoms (a slice, offset by b0), coefficients, their dB derivatives) of each
        pivot with atoms, for exactly the atoms that use it; the atoms must be in :attr:`order`.
        A pivot whose atoms are not one range (not met with windows that move by one pivot
        at a time) yields one entry per range, consecutively."""
        for k in range(len(self.piv)):
            yield from self.pivot(k, b0)

    def pivot(self, k, b0):
        """:meth:`groups` of pivot ``k`` alone."""
        if self.order is not None:
            raise RuntimeError("_BFit.groups needs the atoms sorted by their first pivot")
        n_piv, bk = len(self.piv), self.piv[k]
        runs = []
        for j in range(max(k - self.width + 1, 0), k + 1):   # the atoms k0 = j, k1 ≥ k
            a, b = int(self.bounds[j * n_piv + k]), int(self.bounds[(j + 1) * n_piv])
            if a < b:
                if runs and runs[-1][1] == a:
                    runs[-1][1] = b
                else:
                    runs.append([a, b])
        for a, b in runs:
            c = self.cell[a:b]
            d = self.slope[k][c]
            yield float(bk), slice(b0 + a, b0 + b), self.left[k][c] + (self.frac[a:b] * self.step) * d, d


def _b_table(z, lo, hi, band, tol, p, n_nodes=1025, ref=None, targets=None, cap=_MAX_B_PIVOTS, window=None):
    """Coefficients of :func:`_window_fits` on ``n_nodes`` evenly spaced B of [lo, hi] (cached):
    (nodes, left (K, cells), right (K, cells)), the coefficients of every pivot at each cell's
    left and right node (0 outside the node's window). ``ref``, ``targets``: element ``z``
    written on the pivots of :func:`_b_pivots` (``ref``, ``targets``, ``p``), with windows of
    ``window`` pivots (default ``p``)."""
    ref = z if ref is None else ref
    targets = None if targets is None else tuple(int(t) for t in targets)
    w = p if window is None else int(window)
    key = (z, ref, targets, lo, hi, tol, p, cap, w, n_nodes, band[0].tobytes(), band[1].tobytes())
    hit = _BASES.get(key)
    if hit is not None:
        return hit
    piv, _ = _b_pivots(ref, lo, hi, band, tol, p, targets, cap)
    nodes = np.linspace(lo, hi, n_nodes)
    start, coef, _, _, _ = _window_fits(z, piv, w, band, nodes, ref=ref)
    dense = np.zeros((n_nodes, len(piv)))
    np.put_along_axis(dense, start[:, None] + np.arange(w)[None, :], coef, axis=1)
    out = _BASES[key] = (nodes, np.ascontiguousarray(dense[:-1].T), np.ascontiguousarray(dense[1:].T))
    return out


class _Groups:
    """Atoms grouped by (element, B pivot) for one set of atoms: host-side bookkeeping.

    Each element's atoms carry coefficients on Gaussians e^{−B̃ₖ s} at the element's pivots
    (:func:`_b_fit`; one pivot at the atoms' own B when they share one value); a group is one
    (element, pivot) pair and holds the atoms whose window includes that pivot.
    ``npix``: the grid's pixels (the transform's cost, against the scatter's).

    ``shared``: the elements with several B values may share one set of pivots, the
    Gaussians f_ref(q/2) e^{−B̃ₖs} of the element with the most atoms (``ref``): every such
    atom's f_Z(q/2) e^{−Bs} is written on them (:func:`_window_fits` with ``ref``; the pivots
    are added until every element meets the tolerances), so that a pivot is one group of the
    atoms of all those elements: one FFT per pivot instead of one per (element, pivot) (1F2N
    at 1 Å, 4096²: 9 groups instead of 34, C, N, O and S on carbon's 9 pivots within 4e-4 of
    their own transforms, Ca, 3e-2 on 4-wide windows of them, on 8-wide ones). Taken when
    it meets ``tol`` and costs less (scatters + transforms, :func:`_b_window`). Only without
    a solvent term, whose per-element Gaussian is not B-dependent (the caller decides).
    """

    def __init__(self, elements, species, b_total, band, tol=B_TOLERANCE, npix=2 ** 22, shared=False):
        if not (tol > 0):
            raise InputError(f"b_tolerance {tol!r} must be > 0")
        self.species = species
        self.elements = np.asarray(elements, dtype=np.int64)
        self.b_total = np.asarray(b_total, dtype=np.float64)
        self.band, self.tol, self.fft_cost = band, tol, _FFT_PER_PIXEL_IN_ATOMS * npix
        self.bounds = np.concatenate([[0], np.cumsum(np.bincount(self.elements, minlength=len(species)))])
        self.fits = {}
        self.shared = None   # (basis element ref, pivots, elements e written on them)
        multi = {}
        for e, z in enumerate(species):
            b0, b1 = int(self.bounds[e]), int(self.bounds[e + 1])
            if b1 <= b0:
                continue
            bv = self.b_total[b0:b1]
            lo, hi = float(bv.min()), float(bv.max())
            if shared and hi - lo > 1e-12 * max(1.0, hi):
                multi[e] = (lo, hi)
            else:
                self.fits[e] = _b_fit(z, bv, band, tol, self.fft_cost)
        if len(multi) > 1:
            self._share(multi)
        for e in multi:
            if e not in self.fits:
                b0, b1 = int(self.bounds[e]), int(self.bounds[e + 1])
                self.fits[e] = _b_fit(species[e], self.b_total[b0:b1], band, tol, self.fft_cost)
        self.fits = dict(sorted(self.fits.items()))

    def _share(self, multi):
        """Fit elements of ``multi`` ({e: (B min, B max)}) on shared pivots when that meets the
        tolerance and costs less than their own pivots; False when none. The basis is the
        element with the most atoms; while the shared pivots miss the tolerance or cost more,
        the element that fits on them worst is left out (Ca on carbon's: 3e-2); when fewer
        than two are left, the next element is tried as the basis (hydrogens, the most atoms of a model that has them, take no
        other element)."""
        size = {e: int(self.bounds[e + 1] - self.bounds[e]) for e in multi}
        own = {}
        for e, (elo, ehi) in multi.items():   # the cost of the element's own pivots
            elo, ehi = _b_range(elo, ehi)
            pe, pive, _ = _b_window(int(self.species[e]), elo, ehi, self.band, self.tol, size[e], self.fft_cost)
            own[e] = size[e] * pe + self.fft_cost * len(pive)
        for ref_e in sorted(multi, key=lambda e: -size[e]):
            ref = int(self.species[ref_e])
            # first leave out the elements far off the basis element's own pivots (10× the
            # tolerance, e.g. Ca on carbon's), before the searches over several elements
            lo, hi = _b_range(min(v[0] for v in multi.values()), max(v[1] for v in multi.values()))
            pw, cand = _B_WINDOWS[-1], np.linspace(lo, hi, 97)
            pivw, _ = _b_pivots(ref, lo, hi, self.band, float(self.tol), pw)
            members = {e: v for e, v in multi.items() if e == ref_e or _window_fits(
                int(self.species[e]), pivw, pw, self.band, cand, ref=ref)[3].max() <= 10 * self.tol}
            while len(members) > 1:
                zs = tuple(int(self.species[e]) for e in members)
                lo, hi = _b_range(min(v[0] for v in members.values()), max(v[1] for v in members.values()))
                n, budget = sum(size[e] for e in members), sum(own[e] for e in members)
                best, widest = None, None
                for p in _B_WINDOWS[::-1]:
                    # pivots beyond what would cost less than the members' own are not searched,
                    # nor windows whose basis element alone needs too many (the others add more)
                    cap = int((budget - n * p) / max(self.fft_cost, 1e-300) - 1e-9)
                    alone = len(_b_pivots(ref, lo, hi, self.band, float(self.tol), p)[0])
                    if cap < max(p, alone) or (best is not None and n * p + self.fft_cost * alone >= best[0]):
                        continue
                    piv, err = _b_pivots(ref, lo, hi, self.band, float(self.tol), p, zs, cap)
                    widest = widest or (p, piv)
                    if err <= self.tol and len(piv) <= cap and len(piv) < _MAX_B_PIVOTS:
                        cost = n * p + self.fft_cost * len(piv)
                        if best is None or cost < best[0]:
                            best = (cost, p, piv, err, cap)
                if best is not None:
                    _, p, piv, err, cap = best
                    window = dict.fromkeys(members, p)
                    # a left-out element with few atoms may still fit on a wider window of the
                    # shared pivots (1F2N's Ca: 1e-4 with 8 of the 9), cheaper than its own
                    for e in sorted(set(multi) - set(members)):
                        elo, ehi = _b_range(*multi[e])
                        if elo < lo or ehi > hi:
                            continue
                        cand = np.linspace(elo, ehi, 97)
                        for pe in range(p + 1, len(piv) + 1):
                            if size[e] * pe >= own[e]:
                                break
                            _, _, _, e_err, e_derr = _window_fits(int(self.species[e]), piv, pe, self.band, cand,
                                                                  ref=ref)
                            if e_err.max() <= 0.5 * self.tol and e_derr.max() <= 0.5 * _B_DERIVATIVE_TOLERANCE:
                                window[e] = pe
                                err = max(err, float(e_err.max()))
                                break
                    for e, pe in window.items():
                        b0, b1 = int(self.bounds[e]), int(self.bounds[e + 1])
                        self.fits[e] = _b_fit_on(self.species[e], self.b_total[b0:b1], lo, hi, self.band, self.tol,
                                                 p, piv, err, ref=ref, targets=zs, cap=cap, window=pe)
                    self.shared = (ref, piv, tuple(sorted(window)))
                    return True
                if widest is None:
                    break
                # leave out the element that fits worst on the widest window's pivots
                pw, pivw = widest
                cand = np.linspace(lo, hi, 97)
                del members[max((e for e in members if e != ref_e), key=lambda e: _window_fits(
                    int(self.species[e]), pivw, pw, self.band, cand, ref=ref)[3].max())]
        return False

    def order(self):
        """The permutation that sorts each element's atoms by first pivot (None: sorted), applied
        to the fits (the caller applies it to its own arrays)."""
        parts, moved = [], False
        for e in range(len(self.species)):
            b0, b1 = int(self.bounds[e]), int(self.bounds[e + 1])
            fit = self.fits.get(e)
            if fit is not None and fit.order is not None:
                parts.append(b0 + fit.order)
                fit.permute(fit.order)
                moved = True
            else:
                parts.append(np.arange(b0, b1))
        if not moved:
            return None
        perm = np.concatenate(parts)
        self.b_total = self.b_total[perm]
        return perm

    @property
    def n_groups(self) -> int:
        own = sum(len(f.piv) for e, f in self.fits.items() if self.shared is None or e not in self.shared[2])
        return own + (0 if self.shared is None else len(self.shared[1]))

    @property
    def worst_error(self) -> float:
        return max((f.err for f in self.fits.values()), default=0.0)

    def entries(self, derivative=False):
        """Yield (z, pivot B̃, atoms, coefficients) per group. The elements must be sorted;
        ``atoms`` is a slice (the element's, for a single pivot) or an index array,
        ``coefficients`` None (all 1) or an array.

        ``derivative=True`` yields (z, pivot B̃, atoms, coefficients, d coefficients/dB, value):
        ``value`` False marks a group that only carries a B derivative. An element whose atoms
        share one B is rendered exactly by one Gaussian at that B. With several atoms that is a
        point where the representation switches (moving one atom's B spreads them over
        pivots): their B cotangent is the derivative of the spread representation there (the
        limit of the cotangents of nearby B values, and what finite differences in a generic
        direction see); as they share dcₖ/dB, that is one derivative-only group whose pivot is
        the combination ((B̃ₖ, c′ₖ), ...) (one transform of Σₖ c′ₖ·kernelₖ). A single atom stays
        exact whatever its B: d coefficients/dB is the string ``"exact"``, the cotangent of the
        exact dB kernel.
        """
        if self.shared is not None:   # pivot by pivot, the ranges of every element on it
            ref, piv, members = self.shared
            for k in range(len(piv)):
                for e in members:
                    for bk, idx, wl, dwl in self.fits[e].pivot(k, int(self.bounds[e])):
                        yield (ref, bk, idx, wl, dwl, True) if derivative else (ref, bk, idx, wl)
        for e, fit in self.fits.items():
            if self.shared is not None and e in self.shared[2]:
                continue
            b0, b1 = int(self.bounds[e]), int(self.bounds[e + 1])
            z = self.species[e]
            if len(fit.piv) > 1:
                for bk, idx, wl, dwl in fit.groups(b0):
                    yield (z, bk, idx, wl, dwl, True) if derivative else (z, bk, idx, wl)
                continue
            sl = slice(b0, b1)
            if not derivative:
                yield z, float(fit.piv[0]), sl, None
                continue
            yield z, float(fit.piv[0]), sl, None, ("exact" if b1 - b0 == 1 else None), True
            if b1 - b0 == 1:
                continue
            # every atom has the same B, hence the same dcₖ/dB: one combined kernel Σₖ c′ₖ·kernelₖ
            spread = _b_fit(z, self.b_total[b0:b0 + 1], self.band, self.tol, self.fft_cost, spread=True)
            combo = tuple((bk, float(dwl[0])) for bk, _, _, dwl in spread.groups(0))
            yield z, combo, sl, None, np.ones(b1 - b0), False


def group_count(species, elements, b_total, pixel_size_A, shape, tol=B_TOLERANCE, solvent_V=0.0) -> int:
    """(element, B pivot) groups, i.e. Fourier transforms, of a projected potential of these
    atoms on a grid of ``shape``."""
    order = np.argsort(np.asarray(elements), kind="stable")
    ny, nx = (int(k) for k in shape)
    return _Groups(np.asarray(elements)[order], species, np.asarray(b_total)[order],
                   _band(float(pixel_size_A), shape), tol, ny * nx, shared=not solvent_V).n_groups


def n_slices(z_range_A, slice_thickness_A=None) -> int:
    """Slices of thickness ``slice_thickness_A`` tiling ``z_range_A = (z0, z1)`` (1 without
    slices: the projection approximation). The one slice-count rule of cutem: the potential,
    the ice and the memory plan all count slices with it."""
    if slice_thickness_A is None:
        return 1
    dz = float(slice_thickness_A)
    if not dz > 0:
        raise InputError(f"slice_thickness_A = {slice_thickness_A} must be > 0")
    z0, z1 = (float(v) for v in z_range_A)
    return max(1, int(math.ceil((z1 - z0) / dz - 1e-9)))


def _slice_assignment(z, slice_thickness_A, z_range_A):
    """Slice index per atom (−1 outside) and (z0, dz, n_slices)."""
    z = np.asarray(z, dtype=np.float64)
    if z_range_A is None:
        if len(z) == 0:
            z0, z1 = 0.0, 1.0
        else:
            z0, z1 = float(z.min()), float(z.max())
            z1 = np.nextafter(z1, np.inf) if z1 > z0 else z0 + 1.0
    else:
        z0, z1 = (float(v) for v in z_range_A)
        if not (math.isfinite(z0) and math.isfinite(z1) and z1 > z0):
            raise InputError(f"z_range_A {z_range_A} must be two finite numbers z0 < z1 (Å)")
    n = n_slices((z0, z1), slice_thickness_A)
    dz = z1 - z0 if slice_thickness_A is None else float(slice_thickness_A)
    s = np.floor((z - z0) / dz).astype(np.int64)
    if z_range_A is None:  # every atom belongs to the stack (guard against rounding at the top)
        np.clip(s, 0, n - 1, out=s)
    else:
        s[(z < z0) | (z >= z0 + n * dz) | (s >= n) | (s < 0)] = -1
    return s, z0, dz, n


def _as_atoms(atoms):
    if isinstance(atoms, Atoms):
        return atoms
    if hasattr(atoms, "atoms") and callable(atoms.atoms):  # a Scene
        return atoms.atoms()
    raise InputError(f"projected_potential needs cutem.structure.Atoms, not {type(atoms).__name__}")


class _SliceAtoms:
    """The atoms of one slice, ready to scatter: device arrays plus host-side grouping.

    The atoms are reordered by element and, within an element, by their first B pivot (stable
    radix sorts: otherwise they keep their file order, which is spatially coherent), so that
    each group is a contiguous range and its arrays are views, not copies; ``perm`` maps back
    to the caller's order.
    """

    def __init__(self, plan, xy, elements, species, weights, b_total, b_tolerance, xp, solvent_V=0.0):
        self.n = len(xy)
        self.species = species
        elements = np.asarray(elements)
        perm = np.argsort(elements.astype(np.int16), kind="stable")
        self.perm = None if (np.diff(perm) > 0).all() else perm
        if self.perm is not None:
            xy, elements = xy[perm], elements[perm]
            weights, b_total = np.asarray(weights)[perm], np.asarray(b_total)[perm]
        self.elements = elements
        # shared pivots only without the solvent term (_Groups)
        self.groups = (_Groups(self.elements, species, b_total, plan.band, b_tolerance, plan.ny * plan.nx,
                               shared=not solvent_V) if self.n else None)
        # then by first B pivot within each element, so that each group's atoms are one range
        sub = self.groups.order() if self.n else None
        if sub is not None:
            xy, weights = xy[sub], np.asarray(weights)[sub]
            self.perm = sub if self.perm is None else self.perm[sub]
        if self.n:
            self.iy, self.ix, self.ty, self.tx, self.inside = _corners(plan, xp.asarray(xy), xp, plan.dtype)
            self.w = xp.asarray(np.asarray(weights, dtype=plan.dtype))

    def unpermute(self, a):
        """Host array in the sorted order → the caller's order."""
        if self.perm is None:
            return a
        out = np.empty_like(a)
        out[self.perm] = a
        return out


def _gather_select(sa, idx, xp):
    """Device arrays of the atoms ``idx`` (a slice: views; host indices: copies)."""
    if isinstance(idx, slice):
        return sa.iy[idx], sa.ix[idx], sa.ty[idx], sa.tx[idx], sa.w[idx], sa.inside[idx]
    d = xp.asarray(idx)
    return sa.iy[d], sa.ix[d], sa.ty[d], sa.tx[d], sa.w[d], sa.inside[d]


def _forward_slice(plan, sa, solvent_V, xp):
    """One slice's projected potential (ny, nx) in V·Å."""
    dtype = plan.dtype
    if sa.n == 0:
        return xp.zeros((plan.ny, plan.nx), dtype=dtype)
    acc = None
    npix = plan.ny * plan.nx
    grid = None  # scatter buffers, reused by every group
    spare = []
    # a group may come as several consecutive ranges of atoms (_BFit.groups): one grid, one FFT
    for (z, b_level), parts in itertools.groupby(sa.groups.entries(), key=lambda e: (e[0], e[1])):
        filled = False
        for _, _, idx, wl in parts:
            iy, ix, ty, tx, w, ins = _gather_select(sa, idx, xp)
            if wl is not None:
                w = w * xp.asarray(wl.astype(dtype))
            if not bool(ins.all()):
                iy, ix, ty, tx, w = iy[ins], ix[ins], ty[ins], tx[ins], w[ins]
            if len(w) == 0:
                continue
            if grid is None:
                grid = xp.zeros(npix, dtype=dtype)
                if xp is np:
                    spare = [np.empty(npix, dtype=dtype) for _ in range(B.threads() - 1)]
            elif not filled:
                grid.fill(0)
            filled = True
            _spread(plan, grid, iy, ix, ty, tx, w, xp, spare)
        if not filled:
            continue
        spec = B.rfft2(grid.reshape(plan.ny, plan.nx))
        acc = plan.apply(spec, z, b_level, solvent_V, acc=acc)
        del spec
    if acc is None:
        return xp.zeros((plan.ny, plan.nx), dtype=dtype)
    return B.irfft2(acc, s=(plan.ny, plan.nx)).astype(dtype, copy=False)


def _backward_slice(plan, sa, g, solvent_V, xp, need_xy=True, need_b=True):
    """Cotangents of one slice's atoms for the output cotangent ``g`` (ny, nx).

    The forward is V = Σ_groups C_g(scatter_g) with C_g a circular convolution by a real,
    symmetric kernel (self-adjoint), so C_gᵀ g = irfft2(rfft2(g)·kernel_g): one rfft2 per slice
    and one irfft2 per (element, B pivot) group, as many transforms as the forward. The
    scatter's adjoint is a gather with the same B-spline weights (:func:`_gather`, blocked over
    the threads); differentiating the weights gives the position cotangent, the pivots'
    coefficients' dB derivatives the B cotangent (an element whose atoms share one B: one
    transform of the combined derivative kernel, :meth:`_Groups.entries`). ``need_xy``/``need_b``:
    which of the two to compute; the groups only the other one needs are skipped.

    Returns (d_xy (n, 2) or None, d_b (n,) or None) as host float64 arrays.
    """
    n = sa.n
    d_xy = np.zeros((n, 2)) if need_xy else None
    d_b = np.zeros(n) if need_b else None
    if n == 0:
        return d_xy, d_b
    dtype = plan.dtype
    G = B.rfft2(xp.asarray(g, dtype=dtype))
    inside = B.to_numpy(sa.inside)

    last = [None, None]

    def adjoint(z, b_level, d_b=False):
        # b_level a tuple: a combination of pivots ((B̃, weight), ...), one kernel Σ weight·kernel;
        # kept for the next range of atoms of the same group (_BFit.groups)
        key = (z, b_level, d_b)
        if last[0] != key:
            last[0], last[1] = key, None
            spec = plan.apply(G.copy(), z, b_level, solvent_V, d_b)
            last[1] = B.irfft2(spec, s=(plan.ny, plan.nx)).astype(dtype, copy=False).ravel()
        return last[1]

    for z, b_level, idx, wl, dwl, value in sa.groups.entries(derivative=True):
        multi = dwl is not None and not isinstance(dwl, str)   # its own B derivative
        if not ((value and need_xy) or (need_b and dwl is not None)):
            continue
        sel = inside[idx]
        if not sel.all():  # atoms outside the field were not scattered
            idx = (np.arange(idx.start, idx.stop) if isinstance(idx, slice) else idx)[sel]
            if not len(idx):
                continue
        iy, ix, ty, tx, _, _ = _gather_select(sa, idx, xp)
        if value and need_xy or multi:
            p, py, pxx = _gather(plan, adjoint(z, b_level), iy, ix, ty, tx, need_xy and value, xp)
        if value and need_xy:
            lw = 1.0 if wl is None else wl[sel]
            d_xy[idx, 0] += lw * pxx
            d_xy[idx, 1] += lw * py
        if need_b and isinstance(dwl, str):   # one atom: the exact dB kernel
            d_b[idx] += _gather(plan, adjoint(z, b_level, True), iy, ix, ty, tx, False, xp)[0]
        elif need_b and multi:
            d_b[idx] += dwl[sel] * p
    wn = B.to_numpy(sa.w).astype(np.float64)
    if need_xy:
        d_xy *= (wn / plan.px)[:, None]
    if need_b:
        d_b *= wn
    return None if d_xy is None else sa.unpermute(d_xy), None if d_b is None else sa.unpermute(d_b)


def _prepare(atoms, b_factor_A2, scale):
    a = _as_atoms(atoms)
    b_total = a.b_factors.astype(np.float64) + float(b_factor_A2)
    if len(b_total) and b_total.min() < 0:
        raise InputError(f"total B-factor {b_total.min():.3g} Å² < 0 (file B + b_factor_A2)")
    w = a.occupancies.astype(np.float64) * float(scale)
    return a, b_total, w


def _slices(positions, slice_thickness_A, z_range_A):
    """(list of host index arrays, one per slice, n_slices)."""
    s, z0, dz, n = _slice_assignment(positions[:, 2], slice_thickness_A, z_range_A)
    if n == 1:
        keep = np.flatnonzero(s == 0)
        return [keep], n
    order = np.argsort(s, kind="stable")
    bounds = np.searchsorted(s[order], np.arange(-1, n + 1))
    return [order[bounds[k + 1]:bounds[k + 2]] for k in range(n)], n


def projected_potential(atoms, shape, pixel_size_A, *, slice_thickness_A=None, z_range_A=None,
                        b_factor_A2=0.0, xp=np, dtype=np.float32, b_tolerance=B_TOLERANCE, solvent_V=0.0,
                        scale=1.0, spread_order=3):
    """Projected potential per slice, (n_slices, ny, nx) in V·Å (see the module docstring).

    Parameters
    ----------
    atoms : cutem.structure.Atoms
        Positions in Å in the microscope frame (already rotated for the tilt).
    shape : (ny, nx)
    pixel_size_A : float
    slice_thickness_A : float or None
        None: one slice holding every atom (projection approximation). Each atom's whole
        projected potential goes to the slice that holds its centre.
    z_range_A : (z0, z1) or None
        Extent of the slice stack along the beam (default: the atoms' z extent).
    b_factor_A2 : float
        Global B added to every atom's B.
    xp : module
        numpy or cupy.
    b_tolerance : float
        Relative L2 error per atom allowed to the B Gaussians (module docstring, B-factors).
    solvent_V : float
        Mean inner potential of the embedding solvent (0 in vacuum; ``ice_potential_V()`` in
        ice) whose displaced volume each atom subtracts.
    scale : float
        Global multiplier of the atoms' potential.
    spread_order : int
        3: cubic B-spline scatter (16 weights per atom, sinc⁴ correction; the default, 9e-4
        relative L2 from the exact Fourier sum on the TMV fragment); 1: bilinear (4 weights,
        sinc² correction, faster, 6e-3).
    """
    a, b_total, w = _prepare(atoms, b_factor_A2, scale)
    plan = _plan(shape, pixel_size_A, xp, dtype, spread_order)
    groups, n = _slices(a.positions, slice_thickness_A, z_range_A)
    out = xp.empty((n, plan.ny, plan.nx), dtype=dtype)
    pos = a.positions[:, :2]
    for k, idx in enumerate(groups):
        whole = len(idx) == a.n
        sl = slice(None) if whole else idx
        sa = _SliceAtoms(plan, pos[sl].astype(dtype, copy=False), a.elements[sl], a.species, w[sl],
                         b_total[sl], b_tolerance, xp, solvent_V)
        out[k] = _forward_slice(plan, sa, solvent_V, xp)
    return out


@register
class ProjectedPotentialStage(Stage):
    """Projected potential per slice as a function of atom positions, B-factors and a scale.

    ``forward(ctx, positions (n, 3) Å, b_factors (n,) Å², scale ()) -> (n_slices, ny, nx)`` V·Å,
    the same computation as :func:`projected_potential` (module docstring: Fourier-space sum of
    K f_Z(q/2) e^{−Bq²/4} e^{−2πi q·r}, B-spline scatter, B pivots), times ``scale``. The
    element, occupancy, grid, slicing and solvent are configuration.

    VJP (exact for the discrete forward, :func:`_backward_slice`): the adjoint of each group's
    convolution is itself (real symmetric kernel); the scatter's adjoint gathers with the same
    B-spline weights, whose derivatives give ∂/∂x, ∂/∂y; ∂/∂B = Σₖ c′ₖ(B)·(gather of pivot k)
    (for atoms sharing one B: the derivative of the spread representation, :meth:`_Groups.entries`);
    ∂/∂scale = <g, V/scale>. The slice an atom falls in is piecewise constant in z, so ∂/∂z = 0.
    Only the cotangents in ``ctx.needs`` are computed.
    """

    def __init__(self, atoms, shape, pixel_size_A, *, slice_thickness_A=None, z_range_A=None,
                 b_factor_A2=0.0, b_tolerance=B_TOLERANCE, solvent_V=0.0, spread_order=3):
        a = _as_atoms(atoms)
        self.elements, self.species = a.elements.copy(), a.species
        self.occupancies = a.occupancies.astype(np.float64)
        self.shape = tuple(int(n) for n in shape)
        self.px = float(pixel_size_A)
        self.slice_thickness_A, self.z_range_A = slice_thickness_A, z_range_A
        self.b_factor_A2, self.b_tolerance, self.solvent_V = float(b_factor_A2), float(b_tolerance), float(solvent_V)
        self.order = spread_order

    def _slice_atoms(self, plan, positions, b_factors, xp):
        pos = B.to_numpy(positions).astype(np.float64)
        b_total = B.to_numpy(b_factors).astype(np.float64) + self.b_factor_A2
        if len(b_total) and b_total.min() < 0:
            raise InputError(f"total B-factor {b_total.min():.3g} Å² < 0")
        groups, n = _slices(pos, self.slice_thickness_A, self.z_range_A)
        out = []
        for idx in groups:
            out.append((idx, _SliceAtoms(plan, pos[idx, :2].astype(plan.dtype), self.elements[idx],
                                         self.species, self.occupancies[idx], b_total[idx], self.b_tolerance,
                                         xp, self.solvent_V)))
        return out

    def forward(self, ctx, positions, b_factors, scale):
        xp = B.array_module(positions)
        dtype = B.real_dtype(positions.dtype)
        plan = _plan(self.shape, self.px, xp, dtype, self.order)
        sl = self._slice_atoms(plan, positions, b_factors, xp)
        P = xp.stack([_forward_slice(plan, sa, self.solvent_V, xp) for _, sa in sl])
        ctx.plan, ctx.slices, ctx.P, ctx.scale, ctx.n = plan, sl, P, scale, len(positions)
        ctx.xp = xp
        return P * xp.asarray(scale, dtype=dtype)

    def vjp(self, ctx, g):
        xp, plan = ctx.xp, ctx.plan
        n = ctx.n
        dtype = B.real_dtype(g.dtype)
        need_xy, need_b, need_s = ctx.needs
        d_pos = np.zeros((n, 3)) if need_xy else None
        d_b = np.zeros(n) if need_b else None
        if need_xy or need_b:
            s = float(B.to_numpy(ctx.scale))
            for k, (idx, sa) in enumerate(ctx.slices):
                dxy, db = _backward_slice(plan, sa, g[k], self.solvent_V, xp, need_xy, need_b)
                if need_xy:
                    d_pos[idx, :2] = dxy * s
                if need_b:
                    d_b[idx] = db * s
        return (None if d_pos is None else xp.asarray(d_pos.astype(dtype)),
                None if d_b is None else xp.asarray(d_b.astype(dtype)),
                xp.sum(g * ctx.P).astype(dtype) if need_s else None)

    @classmethod
    def cases(cls, xp, dtype, rng):
        n = 12
        pos = rng.uniform(-6, 6, size=(n, 3))
        species_idx = rng.integers(0, 3, size=n)
        occ = rng.uniform(0.5, 1.0, size=n)
        b = rng.uniform(8, 37, size=n)   # random B: several pivots per element
        atoms = Atoms(pos, species_idx, (1, 6, 8), b, occ)
        out = []
        for kw in ({}, {"slice_thickness_A": 5.0, "z_range_A": (-7.0, 8.0), "solvent_V": 4.9},
                   {"spread_order": 1, "b_tolerance": 1e-3}):
            stage = cls(atoms, (16, 20), 1.0, **kw)
            out.append((stage, (xp.asarray(pos.astype(dtype)), xp.asarray(b.astype(dtype)),
                                xp.asarray(np.asarray(1.3, dtype=dtype)))))
        return out


def exact_fourier_potential(atoms, shape, pixel_size_A, *, b_factor_A2=0.0, solvent_V=0.0,
                            chunk=4096):
    """Reference: the band-limited Fourier sum evaluated exactly (float64, NumPy, slow).

    V̂(k) = Σⱼ oⱼ K f_Zⱼ(q/2) e^{−Bⱼq²/4} e^{−2πi q·rⱼ} at every rfft frequency of the grid,
    with every atom's own phase factor and B (no grouping, no scatter), then the inverse rfft2
    ÷ px². The phase and B factors are separable in (q_x, q_y), so the sum over atoms is a
    complex matrix product per element: cost ny·(nx/2+1)·n_atoms. One slice (projection).
    """
    a, b_total, w = _prepare(atoms, b_factor_A2, 1.0)
    ny, nx = (int(n) for n in shape)
    px = float(pixel_size_A)
    qy = np.fft.fftfreq(ny, d=px)
    qx = np.fft.rfftfreq(nx, d=px)
    x = a.positions[:, 0].astype(np.float64)
    y = a.positions[:, 1].astype(np.float64)
    fx = x / px + nx / 2
    fy = y / px + ny / 2
    keep = (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < ny)
    # phases relative to the grid origin: pixel j sits at (j − nx/2)·px
    xs, ys = x - (-nx / 2 * px), y - (-ny / 2 * px)
    spec = np.zeros((ny, len(qx)), dtype=np.complex128)
    for e, z in enumerate(a.species):
        idx = np.flatnonzero((a.elements == e) & keep)
        if not len(idx):
            continue
        acc = np.zeros_like(spec)
        for c in range(0, len(idx), chunk):
            j = idx[c:c + chunk]
            bj = b_total[j][:, None]
            ey = np.exp(-2j * np.pi * np.outer(ys[j], qy) - bj * qy[None, :] ** 2 / 4) * w[j][:, None]
            ex = np.exp(-2j * np.pi * np.outer(xs[j], qx) - bj * qx[None, :] ** 2 / 4)
            acc += ey.T @ ex
        aa, bb = E.scattering_params(z)
        q2 = qy[:, None] ** 2 + qx[None, :] ** 2
        fz = E.POTENTIAL_CONSTANT_V_A2 * (aa[:, None, None] * np.exp(-bb[:, None, None] * q2 / 4)).sum(0)
        if solvent_V:
            v = VOLUME_PER_DALTON_A3 * atomic_mass_Da(z)
            fz = fz - solvent_V * v * np.exp(-np.pi * v ** (2 / 3) * q2)
        spec += acc * fz
    return (np.fft.irfft2(spec, s=(ny, nx)) / px ** 2)[None]


# ----------------------------------------------------------------------------------- ice
def _ice_geometry(sample, shape, px, tilt_deg, tilt_axis_deg, shift_A=0.0):
    """Per pixel: sample-plane (x, y) where the beam line crosses the mid-plane, its z in the
    microscope frame, and 1/|n_z| (path length per unit slab thickness). ``shift_A``: the scene
    moved by that in x and y (:attr:`cutem.grid.Grid.scene_shift_A`), i.e. pixel (i, j) sees the
    scene at ((j − nx/2)·px − shift, (i − ny/2)·px − shift).

    The crossing point is (X, Y, zm) with zm = −(n_x X + n_y Y)/n_z, and its sample-frame
    coordinates are Tᵀ of it: every one of them is affine in the pixel indices, a(j) + b(i).
    So xs, ys and zm come back as :class:`_Affine` (two vectors, two coefficients), to be
    combined or filled in by the caller; no (ny, nx, 3) stack and no per-pixel matmul (at
    4096² that stack and its product were most of the stage's set-up)."""
    ny, nx = (int(n) for n in shape)
    T = tilt_matrix(tilt_deg, tilt_axis_deg)
    nrm = T[:, 2]  # the sample normal in the microscope frame
    if abs(nrm[2]) < 1e-6:
        raise InputError(f"tilt {tilt_deg}° puts the ice layer edge-on to the beam")
    x = (np.arange(nx) - nx / 2) * px - shift_A
    y = (np.arange(ny) - ny / 2) * px - shift_A
    # zm = cx·X + cy·Y; the sample frame's coordinate k is X·T[0,k] + Y·T[1,k] + zm·T[2,k]
    cx, cy = -nrm[0] / nrm[2], -nrm[1] / nrm[2]
    zm = _Affine(x, y, cx, cy)
    xs = _Affine(x, y, T[0, 0] + cx * T[2, 0], T[1, 0] + cy * T[2, 0])
    ys = _Affine(x, y, T[0, 1] + cx * T[2, 1], T[1, 1] + cy * T[2, 1])
    return xs, ys, zm, 1.0 / abs(nrm[2])


class _Affine:
    """f(i, j) = a·x[j] + b·y[i] on a (ny, nx) grid, kept as its two vectors and coefficients."""

    def __init__(self, x, y, a, b):
        self.x, self.y, self.a, self.b = x, y, float(a), float(b)

    def full(self):
        return (self.b * self.y)[:, None] + (self.a * self.x)[None, :]


def _rho2(xs, ys, x0, y0, diameter_A):
    """(ρ = 2r/D)² at the sample-frame points (xs, ys) (:class:`_Affine`) about (x0, y0).

    dx = u(j) + b_x·y(i), dy = p(j) + b_y·y(i) with u = a_x·x − x0, p = a_y·x − y0, so
    dx² + dy² = (u² + p²)(j) + (b_x² + b_y²)·y(i)² + 2·y(i)·(b_x u + b_y p)(j): two vectors
    and one outer product, instead of full dx, dy and their squares."""
    u, p = xs.a * xs.x - x0, ys.a * ys.x - y0
    s = 4.0 / diameter_A ** 2
    out = np.multiply.outer((2.0 * s) * xs.y, xs.b * u + ys.b * p)
    out += (s * (u * u + p * p))[None, :]
    out += (s * (xs.b ** 2 + ys.b ** 2) * xs.y * xs.y)[:, None]
    return out


def _overlap(zm, L, z0, z1, derivative=True):
    """Length of [zm − L/2, zm + L/2] inside [z0, z1), and its derivative d/dL.

    The derivative is the one for a growing slab: each surface moving out by dL/2 adds ice to
    the slice it moves into, the top surface to the slice holding [top, top + ε) (z0 ≤ top <
    z1), the bottom one to the slice holding (bot − ε, bot] (z0 < bot ≤ z1). So a surface that
    sits exactly on a slice boundary still counts once, in the slice the ice grows into (the
    former test, on overlap > 0 and strict inequalities, dropped it there). The work is done
    in two buffers (a 4096² slice is 134 MB in float64); without ``derivative`` d is None."""
    half = np.multiply(L, 0.5)
    top = np.add(zm, half)
    bot = np.subtract(zm, half, out=half if np.ndim(half) else None)
    d = _overlap_derivative(top, bot, z0, z1) if derivative else None
    if np.ndim(top) == 0:
        return max(min(top, z1) - max(bot, z0), 0.0), d
    np.minimum(top, z1, out=top)
    np.maximum(bot, z0, out=bot)
    ov = np.subtract(top, bot, out=top)
    np.maximum(ov, 0.0, out=ov)
    return ov, d


def _overlap_derivative(top, bot, z0, z1):
    """∂overlap/∂L of :func:`_overlap` from the surfaces' heights."""
    return 0.5 * ((top >= z0) & (top < z1)) + 0.5 * ((bot > z0) & (bot <= z1))


def _slice_bounds(slice_thickness_A, z_range_A):
    if z_range_A is None:
        if slice_thickness_A is not None:
            raise InputError("ice_potential with slices needs z_range_A (the extent of the slice stack)")
        return [(-np.inf, np.inf)]
    z0, z1 = (float(v) for v in z_range_A)
    if slice_thickness_A is None:
        return [(z0, z1)]
    n = n_slices((z0, z1), slice_thickness_A)
    return [(z0 + k * slice_thickness_A, z0 + (k + 1) * slice_thickness_A) for k in range(n)]


def _contaminant_chords(sample, shape, px, tilt_deg, tilt_axis_deg, shift_A=0.0):
    """The balls of ``sample.contaminants`` whose disc meets the field, each as (rows, cols,
    centre z, chord): the pixel ranges of its disc's bounding box, the centre's z in the
    microscope frame, and the chord 2·sqrt(r² − d²) through it along the beam per pixel of the
    box (d: the pixel centre's distance from the centre's projection). A ball is a ball in
    every frame, so the tilt only moves its centre, x_mic = T·x_sample (+ ``shift_A`` in x, y:
    :func:`_ice_geometry`)."""
    if not sample.contaminants:
        return []
    ny, nx = (int(n) for n in shape)
    T = tilt_matrix(tilt_deg, tilt_axis_deg)
    out = []
    for x, y, z, r in sample.contaminants:
        cx, cy, cz = T @ np.array([x, y, z]) + np.array([shift_A, shift_A, 0.0])
        # pixel j sits at (j − nx/2)·px: the columns whose centres lie within r of cx
        j0, j1 = max(0, int(math.ceil((cx - r) / px + nx / 2))), min(nx, int(math.floor((cx + r) / px + nx / 2)) + 1)
        i0, i1 = max(0, int(math.ceil((cy - r) / px + ny / 2))), min(ny, int(math.floor((cy + r) / px + ny / 2)) + 1)
        if j0 >= j1 or i0 >= i1:
            continue
        X = (np.arange(j0, j1) - nx / 2) * px - cx
        Y = (np.arange(i0, i1) - ny / 2) * px - cy
        d2 = X[None, :] ** 2 + Y[:, None] ** 2
        out.append((slice(i0, i1), slice(j0, j1), float(cz), 2.0 * np.sqrt(np.maximum(r * r - d2, 0.0)), float(r)))
    return out


def contaminant_path_A(sample, shape, pixel_size_A, tilt_deg=0.0, tilt_axis_deg=0.0, shift_A=0.0):
    """(ny, nx) path length (Å) of the beam through the balls of ``sample.contaminants``."""
    out = np.zeros(tuple(int(n) for n in shape))
    for rows, cols, _, chord, _ in _contaminant_chords(sample, shape, float(pixel_size_A), tilt_deg, tilt_axis_deg,
                                                       shift_A):
        out[rows, cols] += chord
    return out


@register
class IcePotentialStage(Stage):
    """Projected potential of the ice layer (and support film) per slice, V·Å.

    ``forward(ctx, thickness_center_A (), thickness_edge_A ()) -> (n_slices, ny, nx)``:
    V_ice · (length of the ice slab inside each slice along the beam) + V_carbon · (film length),
    the slab being the sample's parabolic hole profile h(r) = t_c + (t_e − t_c)(2r/D)²
    (cutem.specimen) tilted with the specimen (locally flat: path length h/|n_z|, centred on the
    mid-plane crossing). VJP: ∂/∂t_c = V_ice Σ g·(∂overlap/∂L)·(1 − ρ²)/|n_z|, ∂/∂t_e likewise
    with ρ² (ρ = 2r/D; 1 outside the hole when the ice continues there).

    Contaminants (``Sample.contaminants``): each ball of ice adds V_ice · (length of its chord
    inside the slice), the chord 2·sqrt(r² − d²) centred on the ball's centre along the beam
    (:func:`_contaminant_chords`; sampled at the pixel centres, like the hole's rim). Their
    geometry is data of the sample, not a function of the thicknesses (a ball placed on the
    top surface stays where it was put when the layer thickens), so they add a constant to
    the forward and nothing to the VJP; with ``Sample.ice_absorption`` they absorb as the ice,
    and the energy filter, the ice's inelastic scattering and its amorphous fluctuations all
    read their path length from these slices. ``shift_A``: the scene moved by that in x and y
    before it is sampled (:attr:`cutem.grid.Grid.scene_shift_A`; geometry only, no input).
    """

    def __init__(self, sample, shape, pixel_size_A, *, slice_thickness_A=None, z_range_A=None,
                 tilt_deg=0.0, tilt_axis_deg=0.0, ice_V=None, shift_A=0.0):
        self.sample = sample
        self.shape = tuple(int(n) for n in shape)
        self.px = float(pixel_size_A)
        self.bounds = _slice_bounds(slice_thickness_A, z_range_A)
        xs, ys, zm, self.inv_nz = _ice_geometry(sample, self.shape, self.px, tilt_deg, tilt_axis_deg, shift_A)
        # one unbounded slice (the projection): every overlap is the whole path, ∂overlap/∂L = 1,
        # and the mid-plane's height is never needed
        self.unbounded = self.bounds == [(-np.inf, np.inf)]
        self.zm = None if self.unbounded else zm.full()
        self._zm_rows, self._zm_cols = zm.b * zm.y, zm.a * zm.x   # zm = rows[:, None] + cols[None, :]
        self.rho2 = _rho2(xs, ys, sample.offset_x_A, sample.offset_y_A, sample.diameter_A)
        self.inside = self.rho2 <= 1.0
        self.ice_V = ice_potential_V() if ice_V is None else float(ice_V)
        self.carbon_out = sample.support_film == "carbon"
        # path length in the film (outside the hole only, cutem.specimen.support_thickness_A)
        self.carbon_A = (sample.support_thickness_A or sample.thickness_edge_A) * self.inv_nz if self.carbon_out \
            else 0.0
        self.balls = _contaminant_chords(sample, self.shape, self.px, tilt_deg, tilt_axis_deg, shift_A)

    def _h(self, tc, te):
        h_out = 0.0 if self.carbon_out else te
        return np.where(self.inside, tc + (te - tc) * self.rho2, h_out)

    def _box(self, z0, z1, half_max):
        """Rows and columns outside which slice [z0, z1) holds no ice and no surface.

        A pixel's slab meets the slice (overlap > 0, or a surface in it) only if top ≥ z0 and
        bot ≤ z1, so only if z0 − L_max/2 ≤ zm ≤ z1 + L_max/2. zm = rows(i) + cols(j), so the
        rows whose range of zm meets that interval are a contiguous run, and so are the
        columns: a tilted slab crosses a thin slice in a band, and the work of a slice is that
        of its band's bounding box, not of the whole grid (80 slices of 100 Å at 60°: ~10× less).
        A margin of 1 Å covers the rounding of zm ± L/2."""
        lo, hi = z0 - half_max - 1.0, z1 + half_max + 1.0
        r, c = self._zm_rows, self._zm_cols

        def run(v, other):
            ok = np.flatnonzero((v + other.max() >= lo) & (v + other.min() <= hi))
            return slice(int(ok[0]), int(ok[-1]) + 1) if len(ok) else None

        rows, cols = run(r, c), run(c, r)
        return None if rows is None or cols is None else (rows, cols)

    def _unbounded_slice(self, out, tc, te):
        """The projection's one slice into ``out`` (its dtype): ice_V·max(L, 0) + V_c·film, with
        L = h/|n_z| = (t_c + (t_e − t_c)ρ²)/|n_z| in the hole and a constant outside it (t_e, or
        0 ice and the film with a carbon support). One rounding pass per term, no float64 copy."""
        k = self.ice_V * self.inv_nz
        np.multiply(self.rho2, k * (te - tc), out=out)
        out += k * tc
        h_out = 0.0 if self.carbon_out else te
        outside = self.ice_V * max(h_out * self.inv_nz, 0.0) + carbon_potential_V() * self.carbon_A
        np.copyto(out, outside, where=~self.inside)
        if min(tc, te) < 0:   # h is a convex combination of t_c and t_e in the hole: ≥ 0 unless one is
            np.maximum(out, 0.0, out=out, where=self.inside)

    def forward(self, ctx, thickness_center_A, thickness_edge_A):
        xp = B.array_module(thickness_center_A)
        dtype = B.real_dtype(np.asarray(B.to_numpy(thickness_center_A)).dtype)
        tc = float(B.to_numpy(thickness_center_A))
        te = float(B.to_numpy(thickness_edge_A))
        L = None
        if self.unbounded:
            out = np.empty((1, *self.shape), dtype)
            self._unbounded_slice(out[0], tc, te)
        else:
            out = np.zeros((len(self.bounds), *self.shape), dtype)
            L = self._h(tc, te)
            L *= self.inv_nz
            film = np.where(self.inside, 0.0, self.carbon_A) if self.carbon_out else None
            half = 0.5 * max(float(np.abs(L).max()), self.carbon_A)
            for k, (z0, z1) in enumerate(self.bounds):
                box = self._box(z0, z1, half)
                if box is None:
                    continue
                zm = self.zm[box]
                ov, _ = _overlap(zm, L[box], z0, z1, derivative=False)
                np.multiply(ov, self.ice_V, out=out[k][box])
                if film is not None:
                    ovc, _ = _overlap(zm, film[box], z0, z1, derivative=False)
                    ovc *= carbon_potential_V()
                    out[k][box] += ovc
        for k, (z0, z1) in enumerate(self.bounds):
            for rows, cols, cz, chord, _ in self.balls:
                out[k, rows, cols] += self.ice_V * _overlap(cz, chord, z0, z1, derivative=False)[0]
        # the VJP needs ∂overlap/∂L per slice: recomputed there from L (one grid, not one per slice)
        ctx.L, ctx.xp, ctx.dtype = L, xp, dtype
        return xp.asarray(out)

    def vjp(self, ctx, g):
        gn = B.to_numpy(g).astype(np.float64)
        if self.unbounded:
            gh = gn[0]   # ∂overlap/∂L = 1
        else:
            gh = np.zeros(self.shape)
            half = 0.5 * ctx.L
            half_max = float(np.abs(half).max())   # the forward's boxes (the film has no derivative)
            for k, (z0, z1) in enumerate(self.bounds):
                box = self._box(z0, z1, half_max)
                if box is None:
                    continue
                zm, hb = self.zm[box], half[box]
                gh[box] += gn[k][box] * _overlap_derivative(zm + hb, zm - hb, z0, z1)
        gh = gh * (self.ice_V * self.inv_nz)
        d_tc = float((gh * np.where(self.inside, 1 - self.rho2, 0.0)).sum())
        d_te = float((gh * np.where(self.inside, self.rho2, 0.0 if self.carbon_out else 1.0)).sum())
        xp = ctx.xp
        return xp.asarray(np.asarray(d_tc, ctx.dtype)), xp.asarray(np.asarray(d_te, ctx.dtype))

    @classmethod
    def cases(cls, xp, dtype, rng):
        # a small hole so that the field holds its rim; slices cut through the slab
        s = Sample(diameter_A=40.0, thickness_center_A=30.0, thickness_edge_A=45.0)
        tc = xp.asarray(np.asarray(31.3, dtype=dtype))
        te = xp.asarray(np.asarray(44.1, dtype=dtype))
        # and a contaminant resting on the top surface, cut by the slices as well
        sc = s.replace(contaminants=((4.0, -3.0, 31.0, 9.0),))
        return [(cls(s, (24, 28), 2.0, slice_thickness_A=7.0, z_range_A=(-40.0, 40.0), tilt_deg=23.0,
                     tilt_axis_deg=17.0), (tc, te)),
                (cls(s, (16, 16), 3.0), (tc, te)),
                (cls(sc, (24, 28), 2.0, slice_thickness_A=7.0, z_range_A=(-40.0, 48.0), tilt_deg=23.0,
                     tilt_axis_deg=17.0), (tc, te)),
                # TEM-simulator's pixel centres (grid_origin = "middle"): the scene half a pixel over
                (cls(sc, (24, 28), 2.0, slice_thickness_A=7.0, z_range_A=(-40.0, 48.0), tilt_deg=23.0,
                     tilt_axis_deg=17.0, shift_A=-1.0), (tc, te))]


def ice_potential(sample, shape, pixel_size_A, *, slice_thickness_A=None, z_range_A=None, tilt_deg=0.0,
                  tilt_axis_deg=0.0, xp=np, dtype=np.float32):
    """Projected potential of the ice (and support film), (n_slices, ny, nx) in V·Å.

    ``sample``: :class:`cutem.params.Sample`. Without slices and z range the whole layer is
    projected (projection approximation); with ``slice_thickness_A`` give ``z_range_A`` (the
    same as for :func:`projected_potential`). See :class:`IcePotentialStage`.
    """
    st = IcePotentialStage(sample, shape, pixel_size_A, slice_thickness_A=slice_thickness_A,
                           z_range_A=z_range_A, tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg)
    out = st(xp.asarray(np.asarray(sample.thickness_center_A, dtype=dtype)),
             xp.asarray(np.asarray(sample.thickness_edge_A, dtype=dtype)))
    return out


def slab_z_range(sample, shape, pixel_size_A, tilt_deg=0.0, tilt_axis_deg=0.0, shift_A=0.0):
    """(z0, z1) in the microscope frame holding the ice layer (and support film) over the
    field: the tilted mid-plane's height at the field's corners (it is linear in x, y) ± half
    the longest path through the slab (the thickest of centre, edge and film over |n_z|), and
    the contaminants whose disc meets the field (centre z ± radius); ``shift_A`` as
    :class:`IcePotentialStage`'s."""
    ny, nx = (int(n) for n in shape)
    nrm = tilt_matrix(tilt_deg, tilt_axis_deg)[:, 2]
    if abs(nrm[2]) < 1e-6:
        raise InputError(f"tilt {tilt_deg}° puts the ice layer edge-on to the beam")
    x = np.array([-nx / 2, nx / 2 - 1, -nx / 2, nx / 2 - 1]) * pixel_size_A - shift_A
    y = np.array([-ny / 2, -ny / 2, ny / 2 - 1, ny / 2 - 1]) * pixel_size_A - shift_A
    zm = -(nrm[0] * x + nrm[1] * y) / nrm[2]
    t = max(sample.thickness_center_A, sample.thickness_edge_A,
            sample.support_thickness_A if sample.support_film == "carbon" else 0.0)
    half = 0.5 * t / abs(nrm[2])
    lo, hi = float(zm.min()) - half, float(zm.max()) + half
    for _, _, cz, _, r in _contaminant_chords(sample, shape, float(pixel_size_A), tilt_deg, tilt_axis_deg, shift_A):
        lo, hi = min(lo, cz - r), max(hi, cz + r)
    return lo, hi


# ------------------------------------------------------------------------------- volume
def potential_volume(atoms, shape_zyx, voxel_size_A, *, b_factor_A2=0.0, b_tolerance=B_TOLERANCE, solvent_V=0.0,
                     xp=np, dtype=np.float32, gaussian_floor_A2=0.0):
    """3D potential map V(x, y, z) in volts on a (nz, ny, nx) grid centred like the images
    (voxel (k, i, j) at ((j − nx/2), (i − ny/2), (k − nz/2))·voxel). Same method in 3D: trilinear
    scatter, rfftn, × K f_Z(q/2) e^{−Bq²/4} / (sinc² per axis) / voxel³, one inverse FFT.

    ``gaussian_floor_A2``: each of an atom's five Gaussians widened to at least this, bᵢ + B ≥
    floor (TEM-simulator's ``add_atomic_pot``: ``b[i] = max(b[i] + temp_fact, 200 voxel²)``)."""
    a, b_total, w = _prepare(atoms, b_factor_A2, 1.0)
    nz, ny, nx = (int(n) for n in shape_zyx)
    vs = float(voxel_size_A)
    f = a.positions / vs + np.array([nx / 2, ny / 2, nz / 2])
    inside = ((f >= 0) & (f < np.array([nx, ny, nz]))).all(1)
    order = np.flatnonzero(inside)
    order = order[np.argsort(a.elements[order], kind="stable")]  # grouped by element
    f, el, b_total, w = f[order], a.elements[order], b_total[order], w[order]
    i0 = np.floor(f).astype(np.int64)
    t = f - i0
    qz = np.fft.fftfreq(nz, d=vs)
    qy = np.fft.fftfreq(ny, d=vs)
    qx = np.fft.rfftfreq(nx, d=vs)
    inv_t = [1 / np.sinc(np.fft.fftfreq(nz)) ** 2, 1 / np.sinc(np.fft.fftfreq(ny)) ** 2,
             1 / np.sinc(np.arange(nx // 2 + 1) / nx) ** 2]
    acc = np.zeros((nz, ny, nx // 2 + 1), dtype=np.complex128 if np.dtype(dtype) == np.float64 else np.complex64)
    groups = _Groups(el, a.species, b_total, _band(vs), b_tolerance, nz * ny * nx)
    sub = groups.order()
    if sub is not None:
        i0, t, w = i0[sub], t[sub], w[sub]
    for z, b_level, idx, wl in groups.entries():
        grid = np.zeros(nz * ny * nx)
        ii, tt, ww = i0[idx], t[idx], (w[idx] if wl is None else w[idx] * wl)
        for cz in (0, 1):
            wz = tt[:, 2] if cz else 1 - tt[:, 2]
            kz = (ii[:, 2] + cz) % nz
            for cy in (0, 1):
                wy = tt[:, 1] if cy else 1 - tt[:, 1]
                ky = (ii[:, 1] + cy) % ny
                for cx in (0, 1):
                    wx = tt[:, 0] if cx else 1 - tt[:, 0]
                    kx = (ii[:, 0] + cx) % nx
                    grid += np.bincount((kz * ny + ky) * nx + kx, ww * wz * wy * wx, minlength=grid.size)
        spec = np.fft.rfftn(grid.reshape(nz, ny, nx).astype(dtype))
        aa, bb = E.scattering_params(z)
        amp = E.POTENTIAL_CONSTANT_V_A2 * aa / vs ** 3
        wid = np.maximum(bb + b_level, gaussian_floor_A2) / 4
        terms = [(amp[i], wid[i]) for i in range(5)]
        if solvent_V:
            v = VOLUME_PER_DALTON_A3 * atomic_mass_Da(z)
            terms.append((-solvent_V * v / vs ** 3, math.pi * v ** (2 / 3)))
        kern = 0
        for am, wd in terms:
            kern = kern + am * (np.exp(-wd * qz ** 2) * inv_t[0])[:, None, None] * \
                (np.exp(-wd * qy ** 2) * inv_t[1])[None, :, None] * (np.exp(-wd * qx ** 2) * inv_t[2])[None, None, :]
        acc += spec * kern
    vol = np.fft.irfftn(acc, s=(nz, ny, nx), axes=(0, 1, 2)).astype(dtype)
    return xp.asarray(vol)
