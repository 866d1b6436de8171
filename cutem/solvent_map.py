"""TEM-simulator's particle map: the potential on a voxel grid, clamped from below by the ice's, projected.

TEM-simulator 1.3 (Rullgård et al., J. Microsc. 243:234, 2011; C source ``pdb.c``,
``get_pot_from_pdb``; DiffTEM's port ``diff_tem/particle.py``, ``_get_pot_from_pdb_``, and
``diff_tem/utils/tensor_ops.py``, ``boundary_mean``) builds each particle type's potential on a
voxel grid of ``voxel_size``: the box is the atoms' bounding box padded by 5 Å, n = ⌈extent/voxel⌉
voxels per axis centred on the box centre (voxel i at c + (i − (n−1)/2)·voxel). Every voxel below
the ice's mean inner potential is raised to it and the mean over the box's boundary voxels is
subtracted:

    M = max(V, V_ice) − mean_∂ max(V, V_ice)      (= max(V − V_ice, 0) when the box edge is ice),

so a particle's contrast is the excess of its (blurred) atoms over the ice wherever they exceed
it and zero elsewhere. cutem's own model (:mod:`cutem.potential`) instead subtracts the ice each
atom displaces as a dummy atom of 1.212 Å³/Da; with TEM-simulator's map blur (B ≥ 200 Å² at
1 Å voxels) the clamp's region is wider than the dummy atoms' volume, and on the TMV example
(``input_TMV.txt``) ∫M is 0.70× the dummy-atom contrast (DiffTEM's own map: 0.67×).

The imaginary (absorption) map is built and clamped the same way (``add_atomic_abs_pot``: one
Gaussian per atom of width max(B + 20 Å², 200 × voxel²) and integral σ_tot(Z)/(2σ), hydrogens
with their own cross section; raised to the ice's absorption potential where below it;
:func:`absorption_map`).

Each copy k of the particle (rotation Rₖ, centre tₖ in the microscope frame) is projected along
the beam as TEM-simulator does (``particle_project`` + ``vecf2d_add``): the map's layers across
the axis closest to the beam are sheared along the beam onto the plane through the box centre
(bilinear at the voxel pitch), and that plane is spread bilinearly onto a grid s =
round(pixel/voxel) times finer than the image, each pixel summing its s × s sub-pixels (the
area average of the map's linear interpolation over the pixel), ÷ pixel² → V·Å
(:class:`MapProjection`).

Defocus within a particle (``use_defocus_corr``, ``particle_project`` in TEM-simulator's
particle.c): a voxel at depth z below the copy's centre (along the beam, microscope frame) acts
as if placed on the centre plane and propagated by −z, to first order
exp(iπλz q²) = 1 − i z ∇²/(2k): each voxel's V + iV′ becomes V + iV′ − i (z/2k)(∇²V + i∇²V′),
∇² the 7-point Laplacian of the map / voxel² (``laplace_array``), so the projection gains
+Σ z∇²V′/(2k) in its real part and −Σ z∇²V/(2k) in its imaginary part (DiffTEM's port has the
opposite sign: it negates the matrix entry). The TMV example changes by 0.15 % rms.

Stages (forward and VJP side by side):

* :class:`SolventClamp`: V → max(V, V_s) − mean_∂ max(V, V_s); VJP g_V = 1[V > V_s] (g − 1_∂ Σg / n_∂).
* :class:`MapProjection`: M → Σₖ bin(spread(shear(M; Rₖ), tₖ)) · voxel³/pixel², linear; the
  adjoint replicates each pixel's cotangent over its sub-pixels and gathers it back through the
  same bilinear weights, plane and layers. With ``depth=True`` each voxel is weighted by its depth z.
* :class:`DiscreteLaplacian`: the 7-point Laplacian / voxel² with zero padding; symmetric, so it
  is its own adjoint.
"""
from __future__ import annotations

import math

import numpy as np

import adjoints.backend as B
from adjoints.stage import Stage, register

from .potential import potential_volume

TEMSIM_MAP_PADDING_A = 5.0   #: TEM-simulator's box padding around the atoms (pdb.c, ``padding = 5``)


def map_geometry(atoms, voxel_size_A, padding_A=TEMSIM_MAP_PADDING_A):
    """(centre (3,) Å, n (nx, ny, nz)) of TEM-simulator's box around ``atoms`` (module docstring)."""
    lo, hi = atoms.bounding_box()
    lo, hi = np.asarray(lo, float) - padding_A, np.asarray(hi, float) + padding_A
    n = np.maximum(1, np.ceil((hi - lo) / float(voxel_size_A) - 1e-9)).astype(np.int64)
    return 0.5 * (lo + hi), n


def particle_map(atoms, voxel_size_A, *, b_factor_A2=0.0, gaussian_floor_A2=0.0, padding_A=TEMSIM_MAP_PADDING_A,
                 dtype=np.float64):
    """The atoms' potential V (volts) on TEM-simulator's box, (nz, ny, nx), and the box (centre (3,) Å,
    n (nx, ny, nz)) of :func:`map_geometry` (:func:`voxel_centres` lists its voxel centres)."""
    c, n = map_geometry(atoms, voxel_size_A, padding_A)
    vs = float(voxel_size_A)
    # potential_volume puts voxel j at (j − n/2)·voxel; TEM-simulator's box has it at c + (j − (n−1)/2)·voxel
    shifted = atoms.transformed(translation=-(c + 0.5 * vs))
    vol = potential_volume(shifted, (int(n[2]), int(n[1]), int(n[0])), vs, b_factor_A2=b_factor_A2, dtype=dtype,
                           gaussian_floor_A2=gaussian_floor_A2)
    return np.asarray(vol), (c, n)


def absorption_map(atoms, voxel_size_A, voltage_kV, *, b_floor_A2=0.0, b_factor_A2=0.0,
                   padding_A=TEMSIM_MAP_PADDING_A):
    """The atoms' imaginary potential V′ (volts) on TEM-simulator's box (nz, ny, nx).

    TEM-simulator's ``add_atomic_abs_pot``: per atom one normalised 3D Gaussian of width
    β = max(B + 20 Å², ``b_floor_A2``) and integral oⱼ σ_tot(Zⱼ)/(2σ) (:mod:`cutem.absorption`),
    hydrogens with their own cross section. Computed as :func:`cutem.potential.potential_volume`
    computes the real part: trilinear spread, rfftn, × Π exp(−β q²/4)/sinc², one inverse FFT.
    """
    from .absorption import ABSORPTION_EXTRA_B_A2, total_cross_section_A2
    from .electron import interaction_constant

    c, n = map_geometry(atoms, voxel_size_A, padding_A)
    vs = float(voxel_size_A)
    nx, ny, nz = (int(v) for v in n)
    zs = np.asarray(atoms.species, dtype=np.int64)[np.asarray(atoms.elements, dtype=np.int64)]
    sig = interaction_constant(voltage_kV)
    per_z = {int(z): total_cross_section_A2(voltage_kV, z) / (2 * sig) for z in np.unique(zs)}
    w = np.asarray(atoms.occupancies, float) * np.array([per_z[int(z)] for z in zs])
    beta = np.maximum(np.asarray(atoms.b_factors, float) + b_factor_A2 + ABSORPTION_EXTRA_B_A2, b_floor_A2)
    f = (np.asarray(atoms.positions, float) - c) / vs + 0.5 * (n - 1)   # fractional voxel index, x y z
    i0 = np.floor(f).astype(np.int64)
    t = f - i0
    q = [np.fft.fftfreq(nz, vs), np.fft.fftfreq(ny, vs), np.fft.rfftfreq(nx, vs)]
    sinc2 = [np.sinc(np.fft.fftfreq(nz)) ** 2, np.sinc(np.fft.fftfreq(ny)) ** 2,
             np.sinc(np.arange(nx // 2 + 1) / nx) ** 2]
    acc = np.zeros((nz, ny, nx // 2 + 1), dtype=np.complex128)
    for b in np.unique(beta):
        idx = np.flatnonzero(beta == b)
        grid = np.zeros(nz * ny * nx)
        for cz in (0, 1):
            wz = t[idx, 2] if cz else 1 - t[idx, 2]
            for cy in (0, 1):
                wy = t[idx, 1] if cy else 1 - t[idx, 1]
                for cx in (0, 1):
                    wx = t[idx, 0] if cx else 1 - t[idx, 0]
                    k = (((i0[idx, 2] + cz) % nz) * ny + (i0[idx, 1] + cy) % ny) * nx + (i0[idx, 0] + cx) % nx
                    grid += np.bincount(k, w[idx] * wz * wy * wx, minlength=grid.size)
        g = [np.exp(-b * qa ** 2 / 4) / sa for qa, sa in zip(q, sinc2)]
        kern = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        acc += np.fft.rfftn(grid.reshape(nz, ny, nx)) * kern
    return np.fft.irfftn(acc, s=(nz, ny, nx), axes=(0, 1, 2)) / vs ** 3


def voxel_centres(centre, n, voxel_size_A):
    """(m, 3) coordinates (Å) of the voxel centres of a box, x fastest (``ravel`` order of (nz, ny, nx))."""
    nx, ny, nz = (int(v) for v in n)
    ax = [(np.arange(k) - 0.5 * (k - 1)) * voxel_size_A + c for k, c in zip((nx, ny, nz), centre)]
    z, y, x = np.meshgrid(ax[2], ax[1], ax[0], indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], 1)


def boundary_mask(shape):
    """True on the voxels with any index 0 or maximal (TEM-simulator's ``boundary_mean_array``)."""
    m = np.zeros(shape, dtype=bool)
    m[[0, -1]] = True
    m[:, [0, -1]] = True
    m[:, :, [0, -1]] = True
    return m


@register
class SolventClamp(Stage):
    """V (nz, ny, nx) → max(V, V_s) − mean over the boundary voxels of max(V, V_s) (module docstring).

    Piecewise linear: the VJP is exact away from V = V_s, where the derivative jumps.
    """

    def __init__(self, solvent_V):
        self.solvent_V = float(solvent_V)

    def forward(self, ctx, v):
        xp = B.array_module(v)
        mask = xp.asarray(boundary_mask(v.shape))
        # max(V, V_s) − mean_∂ max(V, V_s) written as the excess e = max(V − V_s, 0) − mean_∂ e: the
        # same number, but exactly 0 in the ice (no rounding residue of V_s − mean_∂), so the
        # projection skips those voxels
        e = xp.maximum(v - self.solvent_V, 0.0)
        ctx.above, ctx.mask, ctx.nb = v > self.solvent_V, mask, int(mask.sum())
        return e - xp.sum(e * mask) / ctx.nb

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        gc = g - ctx.mask * (xp.sum(g) / ctx.nb)
        return (xp.where(ctx.above, gc, 0.0).astype(g.dtype),)

    @classmethod
    def cases(cls, xp, dtype, rng):
        # values kept 0.2 V or more from the kink, so finite differences see one linear piece
        v = rng.uniform(0.2, 1.0, (4, 5, 6)) * rng.choice([-1.0, 1.0], (4, 5, 6)) + 4.9
        return [(cls(4.9), (xp.asarray(v.astype(dtype)),))]


@register
class MapProjection(Stage):
    """A particle map (nz, ny, nx) → its projected potential (n_slices, ny_img, nx_img) in V·Å.

    ``box`` = (centre (3,) Å, n (nx, ny, nz)): the map's voxel centres in the particle frame,
    c + (i − (n−1)/2)·voxel (:func:`map_geometry`); ``placements``: [(M (3, 3), t (3,))] taking
    them to the microscope frame, x = M p + t; ``slices``: the slice index of each placement
    (TEM-simulator puts a whole particle in the slice of its centre; all 0 for one slice). Image
    pixel (i, j) is at ((j − nx/2), (i − ny/2))·pixel, as every cutem image grid.

    Per copy, TEM-simulator's projection (``particle_project``, DiffTEM ``Particle.project``):
    the map's axis a closest to the beam d = Mᵀe_z is the layer axis; layer iₐ is moved along d
    onto the plane through the box centre, a shift of −(iₐ − (nₐ−1)/2)·d_b/dₐ voxels along each
    other axis b, spread bilinearly onto that plane's voxel grid (each voxel carrying value ×
    voxel³); the plane's points, at x = M p + t, are spread bilinearly onto an image grid s =
    round(pixel/voxel) times finer and each pixel sums its s × s sub-pixels (the area average
    of ``vecf2d_add``), ÷ pixel². Moving along d leaves x, y unchanged, so the result is the
    beam-direction projection; every step conserves the integral. Linear: the adjoint runs the
    same steps backwards (sub-pixel replication, bilinear gathers).
    """

    linear = True

    def __init__(self, box, voxel_size_A, placements, shape, pixel_size_A, slices=None, n_slices=1, depth=False):
        c, n = box
        self.depth = bool(depth)
        self.centre = np.asarray(c, dtype=np.float64)
        self.n = np.asarray(n, dtype=np.int64)
        self.vox = float(voxel_size_A)
        self.placements = [(np.asarray(M, float), np.asarray(t, float)) for M, t in placements]
        self.shape = tuple(int(v) for v in shape)
        self.px = float(pixel_size_A)
        self.s = max(1, int(round(self.px / self.vox)))
        self.slices = [0] * len(self.placements) if slices is None else [int(k) for k in slices]
        self.n_slices = int(n_slices)
        self.weight = self.vox ** 3 / self.px ** 2

    # -- the shear onto the central plane ---------------------------------------------------------
    def _shear(self, M):
        """Layer axis a, plane axes (b, c) (x = 0, y = 1, z = 2), the per-layer shifts (nₐ, 2) in
        plane voxels (+ offsets so that indices start at 0) and the plane's shape (n_c', n_b')."""
        d = M[2]
        a = int(np.argmax(np.abs(d)))
        b, c = [k for k in range(3) if k != a]
        k = np.arange(self.n[a]) - 0.5 * (self.n[a] - 1)
        sh = np.stack([-k * d[b] / d[a], -k * d[c] / d[a]], 1)
        off = np.ceil(np.abs(sh).max(0)) + 1 if len(sh) else np.ones(2)
        sh = sh + off
        size = (int(self.n[c] + 2 * off[1] + 1), int(self.n[b] + 2 * off[0] + 1))
        return a, b, c, sh, off, size

    def _layers(self, m, a, b, c):
        """The map as (nₐ, n_c, n_b): layers along a, rows c, columns b (map axes are z, y, x)."""
        ax = {0: 2, 1: 1, 2: 0}   # particle axis → map array axis
        return np.transpose(m, (ax[a], ax[c], ax[b]))

    def _plane_xy(self, M, t, a, b, c, off, size):
        """x, y (Å) of the plane's points (n_c' × n_b', row-major)."""
        jc, jb = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
        p = np.zeros((jc.size, 3)) + self.centre
        p[:, b] += (jb.ravel() - off[0] - 0.5 * (self.n[b] - 1)) * self.vox
        p[:, c] += (jc.ravel() - off[1] - 0.5 * (self.n[c] - 1)) * self.vox
        return p @ M[:2].T + t[:2]

    # -- the plane onto the image -----------------------------------------------------------------
    def _window(self, xy):
        """(y0, x0, h, w): the image pixels (wrapped) the points ``xy`` reach, so the fine grid is
        the copy's footprint, not the whole field (4096² at s = 5 would be 419 M sub-pixels)."""
        ny, nx = self.shape
        out = []
        for col, n in ((1, ny), (0, nx)):
            q = xy[:, col] / self.px + n / 2
            lo, hi = int(math.floor(q.min())) - 1, int(math.ceil(q.max())) + 2
            out.append((0, n) if hi - lo >= n else (lo, hi - lo))
        (y0, h), (x0, w) = out
        return y0, x0, h, w

    def _corners(self, xy, win):
        """Indices (4, k) into the window's fine grid and bilinear weights (4, k) of the points ``xy``."""
        ny, nx = self.shape
        y0, x0, h, w = win
        s = self.s
        fu = (xy[:, 0] / self.px + nx / 2 - x0 + 0.5) * s - 0.5
        fv = (xy[:, 1] / self.px + ny / 2 - y0 + 0.5) * s - 0.5
        iu, iv = np.floor(fu).astype(np.int64), np.floor(fv).astype(np.int64)
        tu, tv = fu - iu, fv - iv
        idx, wt = [], []
        for dv, wv in ((0, 1 - tv), (1, tv)):
            for du, wu in ((0, 1 - tu), (1, tu)):
                idx.append(((iv + dv) % (h * s)) * (w * s) + (iu + du) % (w * s))
                wt.append(wv * wu)
        return np.stack(idx), np.stack(wt)

    def _pixels(self, win):
        y0, x0, h, w = win
        return np.ix_((y0 + np.arange(h)) % self.shape[0], (x0 + np.arange(w)) % self.shape[1])

    def _depth(self, M, a, b, c):
        """Depth z (Å) below the box centre along the beam of every voxel, as (nₐ, n_c, n_b) (or None)."""
        if not self.depth:
            return None
        ax = [(np.arange(self.n[k]) - 0.5 * (self.n[k] - 1)) * self.vox for k in range(3)]
        d = M[2]
        return (d[a] * ax[a][:, None, None] + d[c] * ax[c][None, :, None] + d[b] * ax[b][None, None, :])

    @staticmethod
    def _bilinear_parts(shift):
        j = np.floor(shift).astype(np.int64)
        f = shift - j
        return j, ((0, 0, (1 - f[0]) * (1 - f[1])), (0, 1, f[0] * (1 - f[1])),
                   (1, 0, (1 - f[0]) * f[1]), (1, 1, f[0] * f[1]))

    def forward(self, ctx, m):
        xp = B.array_module(m)
        ctx.xp, ctx.dtype, ctx.map_shape = xp, m.dtype, m.shape
        vals = np.asarray(B.to_numpy(m), dtype=np.float64)
        if vals.shape != (self.n[2], self.n[1], self.n[0]):
            raise ValueError(f"map of shape {vals.shape} for a box of {tuple(self.n[::-1])} voxels (z, y, x)")
        ny, nx = self.shape
        s = self.s
        out = np.zeros((self.n_slices, ny, nx))
        for (M, t), k in zip(self.placements, self.slices):
            a, b, c, sh, off, size = self._shear(M)
            layers = self._layers(vals, a, b, c)
            z = self._depth(M, a, b, c)
            if z is not None:
                layers = layers * z
            nb_, nc_ = layers.shape[2], layers.shape[1]
            plane = np.zeros(size)
            for i in range(layers.shape[0]):
                if not layers[i].any():
                    continue
                j, parts = self._bilinear_parts(sh[i])
                for dc, db, w in parts:
                    plane[j[1] + dc:j[1] + dc + nc_, j[0] + db:j[0] + db + nb_] += w * layers[i]
            xy = self._plane_xy(M, t, a, b, c, off, size)
            keep = np.flatnonzero(plane.ravel())
            if not len(keep):
                continue
            win = self._window(xy[keep])
            idx, wt = self._corners(xy[keep], win)
            h, w = win[2], win[3]
            fine = np.bincount(idx.ravel(), (wt * plane.ravel()[keep]).ravel(), minlength=h * s * w * s)
            out[k][self._pixels(win)] += fine.reshape(h, s, w, s).sum((1, 3))
        return xp.asarray((out * self.weight).astype(m.dtype))

    def adjoint(self, ctx, y):
        s = self.s
        g = np.asarray(B.to_numpy(y), dtype=np.float64).reshape((self.n_slices,) + self.shape) * self.weight
        out = np.zeros((int(self.n[2]), int(self.n[1]), int(self.n[0])))
        for (M, t), k in zip(self.placements, self.slices):
            a, b, c, sh, off, size = self._shear(M)
            xy = self._plane_xy(M, t, a, b, c, off, size)
            win = self._window(xy)
            fine = np.repeat(np.repeat(g[k][self._pixels(win)], s, 0), s, 1).ravel()
            idx, wt = self._corners(xy, win)
            plane = (wt * fine[idx]).sum(0).reshape(size)
            layers = self._layers(out, a, b, c)   # a view: written through into out
            z = self._depth(M, a, b, c)
            nb_, nc_ = layers.shape[2], layers.shape[1]
            for i in range(layers.shape[0]):
                j, parts = self._bilinear_parts(sh[i])
                acc = 0
                for dc, db, w in parts:
                    acc = acc + w * plane[j[1] + dc:j[1] + dc + nc_, j[0] + db:j[0] + db + nb_]
                layers[i] += acc if z is None else acc * z[i]
        return ctx.xp.asarray(out.astype(ctx.dtype))

    @classmethod
    def cases(cls, xp, dtype, rng):
        box = (np.array([0.3, -0.2, 0.1]), np.array([5, 4, 3]))
        R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        pl = [(np.eye(3), np.array([1.3, -2.1, 0.0])), (R, np.array([-4.0, 3.3, 5.0]))]
        m = xp.asarray(rng.normal(size=(3, 4, 5)).astype(dtype))
        return [(cls(box, 1.0, pl, (8, 10), 2.0), (m,)),
                (cls(box, 1.0, pl, (6, 6), 3.0, slices=[1, 0], n_slices=2), (m,)),
                (cls(box, 1.0, pl, (24, 20), 1.0), (m,)),   # footprint windows inside a larger field
                (cls(box, 1.0, pl, (8, 10), 2.0, depth=True), (m,))]


@register
class DiscreteLaplacian(Stage):
    """M (nz, ny, nx) → (Σ over the 6 neighbours − 6 M) / voxel², zero outside the box
    (TEM-simulator's ``laplace_array``; DiffTEM ``DiscreteLaplace``). Symmetric: its own adjoint."""

    linear = True

    def __init__(self, voxel_size_A):
        self.vox = float(voxel_size_A)

    def forward(self, ctx, m):
        xp = B.array_module(m)
        p = xp.pad(m, 1)
        out = (p[2:, 1:-1, 1:-1] + p[:-2, 1:-1, 1:-1] + p[1:-1, 2:, 1:-1] + p[1:-1, :-2, 1:-1]
               + p[1:-1, 1:-1, 2:] + p[1:-1, 1:-1, :-2] - 6 * m)
        return out / self.vox ** 2

    def adjoint(self, ctx, y):
        return self.forward(ctx, y)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(0.7), (xp.asarray(rng.normal(size=(4, 5, 6)).astype(dtype)),))]


def clamped_particle_potential(scene, tilt_matrix, shape, pixel_size_A, voxel_size_A, solvent_V, *,
                               b_factor_floor_A2=0.0, b_factor_A2=0.0, slice_of=None, n_slices=1, dtype=np.float64,
                               voltage_kV=None, defocus_corrected=(), wave_number_per_A=None, shift_A=0.0):
    """Σ over the scene's particles of their TEM-simulator maps, projected: (n_slices, ny, nx) V·Å.

    Copies sharing one :class:`cutem.structure.Atoms` share one map (TEM-simulator computes one
    map per particle type); ``slice_of(z)`` gives a copy's slice from its centre's z (Å). With
    ``voltage_kV``: ``(V, V′)``, V′ the imaginary maps (:func:`absorption_map`) clamped from
    below by the ice's (:func:`cutem.absorption.ice_absorption_V`) and projected the same way.
    ``defocus_corrected``: names of the particles whose copies get the defocus correction
    (module docstring; needs ``wave_number_per_A``, k = 2π/λ). ``shift_A``: every copy moved by
    that in x and y (:attr:`cutem.grid.Grid.scene_shift_A`).
    """
    from .absorption import ice_absorption_V

    groups = {}
    for p in scene.particles:
        groups.setdefault(id(p.atoms), (p.atoms, []))[1].append(p)
    # the maps are in the particle frame, the same for every tilt of a run: kept on the scene
    cache = scene.__dict__.setdefault("_temsim_maps", {})
    out = out_abs = None
    clamp = SolventClamp(solvent_V)
    lap = DiscreteLaplacian(voxel_size_A)

    def once(key, make):
        if key not in cache:
            cache[key] = make()
        return cache[key]

    for key, (raw, parts) in groups.items():
        ck = (key, float(voxel_size_A), float(b_factor_floor_A2), float(b_factor_A2), float(solvent_V))

        def real_map():
            # TEM-simulator floors each Gaussian, bᵢ + B ≥ 200 voxel² (add_atomic_pot), not the atom's B
            vol, bx = particle_map(raw, voxel_size_A, b_factor_A2=b_factor_A2, gaussian_floor_A2=b_factor_floor_A2,
                                   dtype=np.float64)
            return clamp(vol), bx

        m_re, box = once(ck, real_map)   # clamped maps are in the particle frame: the same for every tilt
        shift = np.array([shift_A, shift_A, 0.0])
        placements = [(tilt_matrix @ p.rotation, tilt_matrix @ p.translation + shift) for p in parts]
        slices = [0 if slice_of is None else slice_of(t[2]) for _, t in placements]
        keep = [k for k, s in enumerate(slices) if 0 <= s < n_slices]
        proj = MapProjection(box, voxel_size_A, [placements[k] for k in keep], shape, pixel_size_A,
                             [slices[k] for k in keep], n_slices)
        v = proj(m_re)
        m_im = va = None
        if voltage_kV is not None:
            ak = ck + (float(voltage_kV),)
            m_im = once(ak, lambda: SolventClamp(ice_absorption_V(voltage_kV))(absorption_map(
                raw, voxel_size_A, voltage_kV, b_floor_A2=b_factor_floor_A2, b_factor_A2=b_factor_A2)))
            va = proj(m_im)
        corr = [p.name in defocus_corrected for p in parts]
        if any(corr) and m_im is not None:
            if wave_number_per_A is None:
                raise ValueError("the defocus correction needs the wave number")
            zproj = MapProjection(box, voxel_size_A, [placements[k] for k in keep if corr[k]], shape, pixel_size_A,
                                  [slices[k] for k in keep if corr[k]], n_slices, depth=True)
            h = 1.0 / (2.0 * float(wave_number_per_A))
            v = v + zproj(once(ak + ("laplacian",), lambda: lap(m_im))) * h
            va = va - zproj(once(ck + ("laplacian",), lambda: lap(m_re))) * h
        out = v if out is None else out + v
        if va is not None:
            out_abs = va if out_abs is None else out_abs + va
    zero = np.zeros((n_slices,) + tuple(shape))
    out = zero if out is None else out
    if voltage_kV is None:
        return out.astype(dtype)
    return out.astype(dtype), (zero if out_abs is None else out_abs).astype(dtype)


__all__ = ["SolventClamp", "MapProjection", "DiscreteLaplacian", "particle_map", "absorption_map", "voxel_centres",
           "map_geometry", "boundary_mask", "clamped_particle_potential", "TEMSIM_MAP_PADDING_A"]
