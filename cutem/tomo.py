"""Single-axis parallel-beam tomography: projector, back-projector, WBP, SIRT, FSC.

Geometry
--------
A volume is an array ``(nz, ny, nx)`` (z along the beam at zero tilt), a tilt stack is
``(n_tilts, ny, nx)`` with the same in-plane shape as the volume. The tilt axis lies in
the image plane at ``axis_deg`` from image x (``Geometry.tilt_axis_deg``) and passes
through the origin: with ``origin="fft"`` (default) voxel/pixel index n/2 along every
axis, the project's grid convention (:mod:`cutem.potential`: pixel j at x = (j − n/2)·px,
slice k of a volume at z = (k − nz/2)·dz), so simulated tilt series reconstruct in
register; ``origin="middle"`` puts it at (n − 1)/2 (the array's middle). At tilt θ the
specimen is rotated right-handedly by θ about the axis direction a = (cos φ, sin φ, 0)
(x, y, z; the rotation of :func:`cutem.specimen.tilt_matrix`) and projected along z:

    p_θ(u) = ∫ f(R_θᵀ (u + s e_z)) ds,

with u in the image plane. Angles are in degrees at the interface, radians inside.

Because the axis is fixed, the problem separates: each slice of the volume
perpendicular to the axis is an independent 2D Radon problem. The operators therefore

1. bring the tilt axis onto the x axis of the array (an exact transpose/flip when φ is a
   multiple of 90°, otherwise a bilinear in-plane rotation of every z section),
2. apply the 2D Radon matrix A of the (z, y) plane to all x columns at once, as one
   sparse-matrix × dense-matrix product (``A`` has shape (n_tilts·ny, nz·ny) and two
   non-zeros per voxel and tilt; built once and cached), and
3. rotate back in the image plane.

A is voxel driven: voxel (z, y) lands on detector coordinate
``t = (y − c_y) cos θ − (z − c_z) sin θ + c_y`` and is split between the two nearest
detector pixels with linear weights (the interpolating back-projector of filtered
back-projection is its transpose; Kak & Slaney, *Principles of Computerized Tomographic
Imaging*, IEEE Press 1988, ch. 3.3). Every step is linear, and the back-projector is the
exact transpose of the projector (the dot test holds to rounding).

Reconstruction: weighted (filtered) back-projection with a ramp filter and a choice of
apodisation (Kak & Slaney eq. 3.61 for the band-limited ramp; the windows as in
Kak & Slaney §3.3 and Shepp & Logan, IEEE Trans. Nucl. Sci. 21:21, 1974), and SIRT
x ← x + λ C Aᵀ R (b − A x), R and C the inverse row and column sums of A (Gregor & Benson,
IEEE TMI 27:918, 2008), which decreases ‖b − A x‖²_R monotonically for 0 < λ < 2.

The same code runs on NumPy (scipy.sparse) and CuPy (cupyx.scipy.sparse).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import adjoints.backend as B
from adjoints.stage import Stage, register

from .errors import InputError

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


# ----------------------------------------------------------------------------- helpers
def _sparse_module(xp):
    """scipy.sparse or cupyx.scipy.sparse, the sparse twin of ``xp``."""
    if xp is np:
        import scipy.sparse as sp
    else:  # pragma: no cover - GPU only
        import cupyx.scipy.sparse as sp
    return sp


def _to_device(mat, xp):
    """A host CSR matrix on ``xp``'s device (no-op on NumPy)."""
    if xp is np:
        return mat
    sp = _sparse_module(xp)  # pragma: no cover - GPU only
    return sp.csr_matrix(mat)  # pragma: no cover


def _spmm(mat, x2d):
    """``mat @ x2d`` for a sparse ``mat`` and a dense 2D array, result C-contiguous."""
    xp = B.array_module(x2d)
    out = mat @ xp.ascontiguousarray(x2d)
    return xp.ascontiguousarray(out)


def _axis_quarter_turns(axis_deg):
    """k when ``axis_deg`` is k·90° (to 1e-9°), else None."""
    k = float(axis_deg) / 90.0
    r = round(k)
    return int(r) % 4 if abs(k - r) < 1e-11 else None


def _rot_to_aligned(a, k):
    """Exact quarter-turn permutation bringing an axis at k·90° onto +x (last two axes).

    One step maps array coordinates so that the new x is the old y and the new y is
    minus the old x (both about the centre): A = swap(flip_x(V)).
    """
    xp = B.array_module(a)
    for _ in range(k):
        a = xp.swapaxes(xp.flip(a, -1), -1, -2)
    return xp.ascontiguousarray(a)


def _rot_from_aligned(a, k):
    """Inverse (and transpose) of :func:`_rot_to_aligned`."""
    xp = B.array_module(a)
    for _ in range(k):
        a = xp.flip(xp.swapaxes(a, -1, -2), -1)
    return xp.ascontiguousarray(a)


def _bilinear_matrix(shape, src_yx):
    """CSR matrix (n_out, n_in) sampling a (ny, nx) grid at ``src_yx`` (n_out, 2), zero outside."""
    import scipy.sparse as sp

    ny, nx = shape
    y, x = src_yx[:, 0], src_yx[:, 1]
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    rows, cols, vals = [], [], []
    n_out = src_yx.shape[0]
    out_idx = np.arange(n_out)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            rows.append(out_idx[ok])
            cols.append((yy * nx + xx)[ok])
            vals.append((wy * wx)[ok])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_out, ny * nx))


def _inplane_rotation_matrices(shape, axis_deg):
    """(to_aligned, from_aligned) bilinear sampling matrices for a general axis angle.

    Aligned coordinates (x_a along the axis): x = x_a cos φ − y_a sin φ,
    y = x_a sin φ + y_a cos φ (about the centre). ``to_aligned`` samples the original grid
    at the aligned grid's points, ``from_aligned`` samples the aligned grid back.
    """
    ny, nx = shape
    phi = np.deg2rad(axis_deg)
    c, s = np.cos(phi), np.sin(phi)
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(ny) - cy, np.arange(nx) - cx, indexing="ij")
    ya, xa = yy.ravel(), xx.ravel()
    # aligned point (ya, xa) sits at original (y, x):
    src = np.stack([xa * s + ya * c + cy, xa * c - ya * s + cx], -1)
    to_aligned = _bilinear_matrix(shape, src)
    # original point (y, x) sits at aligned (ya, xa) = R^{-1}:
    src_b = np.stack([-xa * s + ya * c + cy, xa * c + ya * s + cx], -1)
    from_aligned = _bilinear_matrix(shape, src_b)
    return to_aligned, from_aligned


def radon_matrix(nz, ny, angles_deg, dtype=np.float64, cy=None, cz=None):
    """The 2D voxel-driven Radon matrix of one (z, y) slice, CSR (n_tilts·ny, nz·ny).

    Column ``z·ny + y`` (voxel), row ``tilt·ny + t`` (detector pixel). Voxel (z, y) lands at
    ``t = (y − c_y) cos θ − (z − c_z) sin θ + c_y`` and is shared linearly by the two
    neighbouring pixels; weights outside the detector are dropped. Entries are line
    integrals in voxel lengths (each voxel's weights sum to 1 where fully on the detector).
    The rotation centre (c_z, c_y) defaults to the middle ((n − 1)/2).
    """
    import scipy.sparse as sp

    th = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cz = (nz - 1) / 2.0 if cz is None else float(cz)
    cy = (ny - 1) / 2.0 if cy is None else float(cy)
    zz, yy = np.meshgrid(np.arange(nz) - cz, np.arange(ny) - cy, indexing="ij")
    zz, yy = zz.ravel(), yy.ravel()
    col = np.arange(nz * ny, dtype=np.int64)
    rows, cols, vals = [], [], []
    for i, t in enumerate(th):
        pos = yy * np.cos(t) - zz * np.sin(t) + cy
        i0 = np.floor(pos).astype(np.int64)
        f = pos - i0
        for d, w in ((0, 1.0 - f), (1, f)):
            idx = i0 + d
            ok = (idx >= 0) & (idx < ny) & (w > 0)
            rows.append(i * ny + idx[ok])
            cols.append(col[ok])
            vals.append(w[ok])
    a = sp.csr_matrix((np.concatenate(vals).astype(dtype), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(th) * ny, nz * ny))
    a.sum_duplicates()
    return a


ORIGINS = ("fft", "middle")


def _centre(n, origin):
    return n / 2.0 if origin == "fft" else (n - 1) / 2.0


def _aligned_centre_y(shape, axis_deg, origin):
    """Row coordinate of the rotation centre in the axis-aligned frame."""
    ny, nx = shape
    cy, cx = _centre(ny, origin), _centre(nx, origin)
    k = _axis_quarter_turns(axis_deg)
    if k is not None:
        for _ in range(k):  # one step: (y, x) -> (nx - 1 - x, y), shapes swap
            cy, cx, ny, nx = nx - 1 - cx, cy, nx, ny
        return cy
    phi = np.deg2rad(axis_deg)
    y, x = cy - (ny - 1) / 2.0, cx - (nx - 1) / 2.0
    return -x * np.sin(phi) + y * np.cos(phi) + (ny - 1) / 2.0


class _Plan:
    """Cached matrices of one geometry (shapes, angles, axis, origin, dtype, device)."""

    def __init__(self, vol_shape, angles_deg, axis_deg, dtype, xp, origin="fft"):
        if origin not in ORIGINS:
            raise InputError(f"tomography origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
        nz, ny, nx = vol_shape
        self.vol_shape = tuple(vol_shape)
        self.n_tilts = len(angles_deg)
        self.k = _axis_quarter_turns(axis_deg)
        if self.k is None:
            to_a, from_a = _inplane_rotation_matrices((ny, nx), axis_deg)
            self.to_a = _to_device(to_a.astype(dtype), xp)
            self.from_a = _to_device(from_a.astype(dtype), xp)
            self.to_a_T = _to_device(to_a.T.tocsr().astype(dtype), xp)
            self.from_a_T = _to_device(from_a.T.tocsr().astype(dtype), xp)
            self.aligned = (ny, nx)
        else:
            self.aligned = (nx, ny) if self.k % 2 else (ny, nx)
        a = radon_matrix(nz, self.aligned[0], angles_deg, dtype, cy=_aligned_centre_y((ny, nx), axis_deg, origin),
                         cz=_centre(nz, origin))
        self.A = _to_device(a, xp)
        self.AT = _to_device(a.T.tocsr(), xp)

    # in-plane steps on (..., ny, nx) arrays
    def _apply_inplane(self, mat, arr):
        lead = arr.shape[:-2]
        flat = arr.reshape(-1, arr.shape[-2] * arr.shape[-1])
        out = _spmm(mat, flat.T).T
        return B.array_module(arr).ascontiguousarray(out).reshape(lead + arr.shape[-2:])

    def to_aligned(self, arr):
        return _rot_to_aligned(arr, self.k) if self.k is not None else self._apply_inplane(self.to_a, arr)

    def to_aligned_T(self, arr):
        return _rot_from_aligned(arr, self.k) if self.k is not None else self._apply_inplane(self.to_a_T, arr)

    def from_aligned(self, arr):
        return _rot_from_aligned(arr, self.k) if self.k is not None else self._apply_inplane(self.from_a, arr)

    def from_aligned_T(self, arr):
        return _rot_to_aligned(arr, self.k) if self.k is not None else self._apply_inplane(self.from_a_T, arr)

    # core Radon transform of aligned arrays
    def radon(self, vol_a):
        nz, nya, nxa = vol_a.shape
        return _spmm(self.A, vol_a.reshape(nz * nya, nxa)).reshape(self.n_tilts, nya, nxa)

    def radon_T(self, stack_a):
        nt, nya, nxa = stack_a.shape
        return _spmm(self.AT, stack_a.reshape(nt * nya, nxa)).reshape(self.vol_shape[0], nya, nxa)

    def project(self, vol):
        return self.from_aligned(self.radon(self.to_aligned(vol)))

    def backproject(self, stack):
        """Exact transpose of :meth:`project`."""
        return self.to_aligned_T(self.radon_T(self.from_aligned_T(stack)))


class _TomoStage(Stage):
    linear = True

    def __init__(self, angles_deg, axis_deg=0.0, thickness=None, origin="fft"):
        self.angles_deg = tuple(float(a) for a in np.atleast_1d(angles_deg))
        if not self.angles_deg:
            raise InputError("tomography: at least one tilt angle is needed")
        if origin not in ORIGINS:
            raise InputError(f"tomography origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
        self.axis_deg = float(axis_deg)
        self.thickness = thickness
        self.origin = origin
        self._plans = {}

    def plan(self, vol_shape, dtype, xp):
        key = (tuple(vol_shape), np.dtype(dtype).str, xp.__name__)
        p = self._plans.get(key)
        if p is None:
            p = self._plans[key] = _Plan(vol_shape, self.angles_deg, self.axis_deg, dtype, xp, self.origin)
        return p


@register
class Project(_TomoStage):
    """Tilt-series projector: volume (nz, ny, nx) → stack (n_tilts, ny, nx).

    P = R_back · (I_x ⊗ A) · R_align, with A the voxel-driven 2D Radon matrix of a slice
    perpendicular to the tilt axis and R the in-plane rotations bringing the axis at
    ``axis_deg`` onto the array's x axis and back (exact permutations for multiples of
    90°). Linear; the adjoint is :class:`BackProject`'s forward (the exact transpose).
    See the module docstring for the geometry.
    """

    def forward(self, ctx, vol):
        xp = B.array_module(vol)
        if vol.ndim != 3:
            raise InputError(f"Project: volume must be 3D (nz, ny, nx), got shape {vol.shape}")
        ctx.plan = self.plan(vol.shape, vol.dtype, xp)
        return ctx.plan.project(vol)

    def adjoint(self, ctx, y):
        return ctx.plan.backproject(y)

    @classmethod
    def cases(cls, xp, dtype, rng):
        from adjoints.ops import _rand
        return [(cls([-50.0, -13.0, 0.0, 27.0, 61.0], 0.0), (_rand(rng, (5, 6, 4), dtype, xp),)),
                (cls([-40.0, 10.0, 35.0], 90.0), (_rand(rng, (4, 6, 5), dtype, xp),)),
                (cls([-30.0, 20.0], 17.0), (_rand(rng, (3, 6, 7), dtype, xp),))]


@register
class BackProject(_TomoStage):
    """Back-projector: stack (n_tilts, ny, nx) → volume (thickness, ny, nx), Pᵀ of :class:`Project`.

    Linear; its adjoint is the projector. ``thickness`` (nz) is required.
    """

    def __init__(self, angles_deg, axis_deg=0.0, thickness=None, origin="fft"):
        if thickness is None or int(thickness) < 1:
            raise InputError("BackProject: thickness (nz of the volume) must be a positive integer")
        super().__init__(angles_deg, axis_deg, int(thickness), origin)

    def forward(self, ctx, stack):
        xp = B.array_module(stack)
        if stack.ndim != 3 or stack.shape[0] != len(self.angles_deg):
            raise InputError(f"BackProject: stack must be (n_tilts={len(self.angles_deg)}, ny, nx), "
                             f"got shape {stack.shape}")
        ctx.plan = self.plan((self.thickness,) + stack.shape[1:], stack.dtype, xp)
        return ctx.plan.backproject(stack)

    def adjoint(self, ctx, y):
        return ctx.plan.project(y)

    @classmethod
    def cases(cls, xp, dtype, rng):
        from adjoints.ops import _rand
        return [(cls([-45.0, 5.0, 60.0], 0.0, 4), (_rand(rng, (3, 6, 5), dtype, xp),)),
                (cls([-20.0, 33.0], -70.0, 3), (_rand(rng, (2, 5, 6), dtype, xp),))]


# ----------------------------------------------------------------------- filtering
def ramp_filter(n, kind="ram-lak", cutoff=1.0, dtype=np.float64):
    """Frequency response (length n, FFT order) of the apodised band-limited ramp.

    The ramp is the DFT of the band-limited spatial kernel h(0) = 1/4,
    h(m odd) = −1/(π m)², h(m even) = 0 (Kak & Slaney eq. 3.61), which avoids the zero
    DC of a sampled |f|; it is multiplied by a window of x = |f| / (cutoff · f_Nyquist):
    ram-lak 1, shepp-logan sinc(x/2) = sin(πx/2)/(πx/2), cosine cos(πx/2),
    hamming 0.54 + 0.46 cos(πx), hann 0.5 + 0.5 cos(πx), and zero for x > 1.
    """
    if kind not in FILTERS:
        raise InputError(f"filter must be one of {', '.join(FILTERS)}, not {kind!r}")
    if not 0 < cutoff <= 1:
        raise InputError(f"filter cutoff = {cutoff} is outside the allowed range (0, 1] (fraction of Nyquist)")
    m = np.fft.fftfreq(n, d=1.0 / n)  # integer offsets in FFT order
    h = np.zeros(n)
    odd = (np.abs(m) % 2) == 1
    h[odd] = -1.0 / (np.pi * m[odd]) ** 2
    h[0] = 0.25
    resp = np.real(np.fft.fft(h))
    x = np.abs(np.fft.fftfreq(n)) / (0.5 * cutoff)
    if kind == "shepp-logan":
        win = np.sinc(x / 2)  # numpy sinc(u) = sin(πu)/(πu)
    elif kind == "cosine":
        win = np.cos(np.pi * x / 2)
    elif kind == "hamming":
        win = 0.54 + 0.46 * np.cos(np.pi * x)
    elif kind == "hann":
        win = 0.5 + 0.5 * np.cos(np.pi * x)
    else:
        win = np.ones(n)
    win = np.where(x <= 1, win, 0.0)
    return (resp * win).astype(dtype)


def angle_weights(angles_deg):
    """Angular quadrature weights in radians: half the distance to the two neighbours
    (the full spacing at the two ends), in the stack's order."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    if a.size == 1:
        return np.array([np.pi])
    order = np.argsort(a)
    s = a[order]
    w = np.empty_like(s)
    w[1:-1] = (s[2:] - s[:-2]) / 2
    w[0] = s[1] - s[0]
    w[-1] = s[-1] - s[-2]
    out = np.empty_like(w)
    out[order] = w
    return out


def filter_projections(stack_a, kind="ram-lak", cutoff=1.0):
    """Ramp-filter aligned projections (n_tilts, ny_a, nx_a) along y_a (axis 1).

    Padded to twice the length (next power of two) so the circular convolution of the
    FFT does not wrap. The padding repeats each line's end values (half on each side)
    instead of zeros: a projection of an isolated object ends in zeros anyway, while a
    slab of ice or carbon does not, and a zero pad would put a step there whose filtered
    ringing crosses the whole tomogram (the old fix, subtracting each image's mean, puts
    the step at the object's own border instead).
    """
    xp = B.array_module(stack_a)
    n = stack_a.shape[1]
    npad = int(2 ** np.ceil(np.log2(max(2 * n, 2))))
    h = xp.asarray(ramp_filter(npad, kind, cutoff, dtype=B.real_dtype(stack_a.dtype)))
    lo = (npad - n) // 2
    padded = xp.pad(stack_a, ((0, 0), (lo, npad - n - lo), (0, 0)), mode="edge")
    f = B.fftn(padded, axes=(1,))
    f *= h[None, :, None]
    return xp.ascontiguousarray(B.ifftn(f, axes=(1,)).real[:, lo:lo + n].astype(stack_a.dtype))


def _check_stack(stack, angles_deg):
    if stack.ndim != 3:
        raise InputError(f"tilt stack must be 3D (n_tilts, ny, nx), got shape {stack.shape}")
    if len(angles_deg) != stack.shape[0]:
        raise InputError(f"{len(angles_deg)} tilt angles for a stack of {stack.shape[0]} images")


def wbp(stack, angles_deg, axis_deg=0.0, thickness=None, filter="ram-lak", cutoff=1.0, origin="fft"):
    """Weighted back-projection: f ≈ Σ_θ w_θ Aᵀ(h * p_θ), h the apodised ramp.

    ``stack`` (n_tilts, ny, nx); returns (thickness, ny, nx) (default thickness = ny of
    the aligned frame). ``w_θ`` are :func:`angle_weights` (radians), so a full 180° series
    reconstructs the density in the stack's units per voxel length. For an axis that is
    not a multiple of 90° the images are rotated onto the axis frame and the volume back
    by interpolation (inverse rotations, not transposes).
    """
    xp = B.array_module(stack)
    _check_stack(stack, angles_deg)
    k = _axis_quarter_turns(axis_deg)
    ny, nx = stack.shape[1:]
    aligned = (nx, ny) if (k or 0) % 2 else (ny, nx)
    nz = int(thickness) if thickness else aligned[0]
    plan = _Plan((nz, ny, nx), tuple(float(a) for a in angles_deg), axis_deg, stack.dtype, xp, origin)
    if k is None:
        # interpolating rotations: images into the aligned frame by inverse sampling
        stack_a = plan._apply_inplane(plan.to_a, stack)
    else:
        stack_a = _rot_to_aligned(stack, k)
    filt = filter_projections(stack_a, filter, cutoff)
    filt *= xp.asarray(angle_weights(angles_deg).astype(filt.dtype))[:, None, None]
    vol_a = plan.radon_T(filt)
    return plan._apply_inplane(plan.from_a, vol_a) if k is None else _rot_from_aligned(vol_a, k)


@dataclass
class SirtResult:
    volume: object
    residual_weighted: list  #: ‖b − A x_k‖²_R before update k (what SIRT decreases)
    residual: list           #: ‖b − A x_k‖² before update k
    iterations: int = 0      #: iterations run on the full series
    heldout: list = None     #: held-out tilts' relative misfit per iteration of the trial run


def _sirt_weights(plan, vol_shape, stack):
    """R = 1/(A 1) and C = 1/(Aᵀ 1), zero where the sums vanish."""
    xp = B.array_module(stack)
    row = plan.project(xp.ones(vol_shape, dtype=stack.dtype))
    col = plan.backproject(xp.ones_like(stack))
    r_w = xp.where(row > 1e-6, 1.0 / xp.maximum(row, 1e-6), 0.0).astype(stack.dtype)
    c_w = xp.where(col > 1e-6, 1.0 / xp.maximum(col, 1e-6), 0.0).astype(stack.dtype)
    return r_w, c_w


def _weighted_cgls(plan, vol_shape, b, r_w, c_w, iterations, callback=None):
    """CGLS on min_u ‖R^½ (b − A C^½ u)‖², x = C^½ u: SIRT's objective by conjugate gradients.

    Hestenes & Stiefel's CG on the normal equations in the CGLS arrangement (Björck,
    *Numerical Methods for Least Squares Problems*, SIAM 1996, §7.4): the weighted residual
    falls monotonically, and in k steps it reaches the minimum over the k-dimensional Krylov
    space, where SIRT (a Landweber iteration with the same weights) needs many times as many.
    ``callback(k, x)`` after every step; a true return value stops the iteration.
    """
    xp = B.array_module(b)
    sr, sc = xp.sqrt(r_w), xp.sqrt(c_w)
    u = xp.zeros(vol_shape, dtype=b.dtype)
    r = sr * b
    s = sc * plan.backproject(sr * r)
    p = s.copy()
    gamma = float(B.to_numpy((s * s).sum()))
    res_w, res = [], []
    for k in range(int(iterations)):
        res_w.append(float(B.to_numpy((r * r).sum())))
        res.append(float(B.to_numpy(((r / xp.where(sr > 0, sr, 1)) ** 2).sum())))
        if gamma <= 0:
            break
        q = sr * plan.project(sc * p)
        alpha = gamma / max(float(B.to_numpy((q * q).sum())), 1e-300)
        u += alpha * p
        r -= alpha * q
        s = sc * plan.backproject(sr * r)
        gamma_new = float(B.to_numpy((s * s).sum()))
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
        if callback is not None and callback(k, sc * u):
            break
    return sc * u, res_w, res


def sirt(stack, angles_deg, axis_deg=0.0, thickness=None, iterations=50, relaxation=1.0,
         positivity=False, x0=None, progress=None, origin="fft"):
    """SIRT: the R-weighted least-squares tomogram, min ‖b − A x‖²_R in the C⁻¹ metric,
    R = 1/(A 1), C = 1/(Aᵀ 1) (Gregor & Benson, IEEE TMI 27:918, 2008).

    Without ``positivity`` the objective is minimised by conjugate gradients
    (:func:`_weighted_cgls`), stopped by cross-validation on the tilts: a trial run on the
    even-numbered tilts predicts the odd ones after every iteration, and the full series is
    then run for the iteration count whose prediction was best (at most ``iterations``).
    Noise-free data keep improving, so they run to the cap; noisy data stop where the
    iteration starts fitting noise, which iteration-count SIRT leaves to the user. With
    ``positivity`` (or a start ``x0``) the classic projected iteration
    x ← P₊(x + λ C Aᵀ R (b − A x)) runs ``iterations`` times, which decreases
    ‖b − A x‖²_R monotonically for 0 < λ < 2. ``progress``: optional ``progress(k, residual)``.
    """
    xp = B.array_module(stack)
    _check_stack(stack, angles_deg)
    if not 0 < relaxation < 2:
        raise InputError(f"SIRT relaxation = {relaxation} is outside the allowed range (0, 2)")
    if int(iterations) < 1:
        raise InputError(f"SIRT iterations = {iterations} must be at least 1")
    angles_deg = [float(a) for a in angles_deg]
    k = _axis_quarter_turns(axis_deg)
    aligned_ny = stack.shape[2] if (k or 0) % 2 else stack.shape[1]
    nz = int(thickness) if thickness else aligned_ny
    vol_shape = (nz,) + stack.shape[1:]
    plan = Project(angles_deg, axis_deg, origin=origin).plan(vol_shape, stack.dtype, xp)
    r_w, c_w = _sirt_weights(plan, vol_shape, stack)
    if not positivity and x0 is None:
        n_it, heldout = int(iterations), None
        if len(angles_deg) >= 4:
            n_it, heldout = _heldout_iterations(stack, angles_deg, axis_deg, origin, vol_shape, int(iterations))
        x, res_w, res = _weighted_cgls(plan, vol_shape, stack, r_w, c_w, n_it,
                                       None if progress is None else (lambda it, _x: progress(it, None)))
        return SirtResult(x, res_w, res, n_it, heldout)
    x = xp.zeros(vol_shape, dtype=stack.dtype) if x0 is None else xp.asarray(x0, dtype=stack.dtype).copy()
    if positivity:
        x = xp.maximum(x, 0)
    res_w, res = [], []
    for it in range(int(iterations)):
        r = stack - plan.project(x)
        res.append(float(B.to_numpy((r * r).sum())))
        res_w.append(float(B.to_numpy((r * r * r_w).sum())))
        x += relaxation * c_w * plan.backproject(r * r_w)
        if positivity:
            x = xp.maximum(x, 0, out=x)
        if progress is not None:
            progress(it, res_w[-1])
    return SirtResult(x, res_w, res, int(iterations))


def _heldout_iterations(stack, angles_deg, axis_deg, origin, vol_shape, cap):
    """Best CG iteration count by predicting the odd tilts from a run on the even ones."""
    xp = B.array_module(stack)
    even, odd = list(range(0, len(angles_deg), 2)), list(range(1, len(angles_deg), 2))
    p_even = Project([angles_deg[i] for i in even], axis_deg, origin=origin).plan(vol_shape, stack.dtype, xp)
    p_odd = Project([angles_deg[i] for i in odd], axis_deg, origin=origin).plan(vol_shape, stack.dtype, xp)
    b_odd = stack[odd]
    norm = max(float(B.to_numpy((b_odd * b_odd).sum())), 1e-300)
    misfit = []

    def score(it, x):
        d = b_odd - p_odd.project(x)
        misfit.append(float(B.to_numpy((d * d).sum())) / norm)
        # past the minimum by 5 steps: the misfit of a semi-convergent run does not come back
        return len(misfit) - 1 - int(np.argmin(misfit)) >= 5

    r_w, c_w = _sirt_weights(p_even, vol_shape, stack[even])
    _weighted_cgls(p_even, vol_shape, stack[even], r_w, c_w, cap, score)
    return int(np.argmin(misfit)) + 1, misfit


def reconstruct(stack, angles_deg, axis_deg=0.0, thickness=None, method="wbp", filter="ram-lak",
                cutoff=1.0, iterations=50, relaxation=1.0, positivity=False, progress=None, origin="fft"):
    """Reconstruct a volume (thickness, ny, nx) from a tilt stack by ``wbp`` or ``sirt``."""
    if method == "wbp":
        return wbp(stack, angles_deg, axis_deg, thickness, filter, cutoff, origin)
    if method == "sirt":
        return sirt(stack, angles_deg, axis_deg, thickness, iterations, relaxation, positivity,
                    progress=progress, origin=origin).volume
    raise InputError(f"reconstruction method must be wbp or sirt, not {method!r}")


# ------------------------------------------------------------------ quality measures
def radial_shells(shape, voxel_size=1.0, xp=np):
    """Integer shell index of every FFT voxel (rfftn layout) and the shell frequencies (1/Å).

    Shell s holds |k| in [s − ½, s + ½) in units of 1/(n_max · voxel) where n_max is the
    longest side, up to Nyquist.
    """
    n_max = max(shape)
    freqs = [np.fft.fftfreq(n) * n_max for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1]) * n_max]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    r = np.sqrt(sum(g ** 2 for g in grids))
    shell = np.rint(r).astype(np.int64)
    n_shells = n_max // 2 + 1
    return xp.asarray(shell), np.arange(n_shells) / (n_max * voxel_size)


def fsc(a, b, voxel_size=1.0, mask=None):
    """Fourier shell correlation of two volumes (or images).

    FSC(s) = Re Σ_s F₁ F₂* / sqrt(Σ_s |F₁|² Σ_s |F₂|²) over the shell s (Harauz & van Heel,
    Optik 73:146, 1986). ``mask`` (same shape) multiplies both first. Returns
    ``(frequency_1_per_A, fsc, n_voxels_per_shell)`` up to Nyquist; the half-plane
    (rfftn) is used, each retained voxel once (fine for the ratio).
    """
    xp = B.array_module(a)
    if a.shape != b.shape:
        raise InputError(f"FSC: volumes differ in shape {a.shape} vs {b.shape}")
    a = xp.asarray(a, dtype=np.float64)
    b = xp.asarray(b, dtype=np.float64)
    if mask is not None:
        a = a * mask
        b = b * mask
    fa = xp.fft.rfftn(a)
    fb = xp.fft.rfftn(b)
    shell, freq = radial_shells(a.shape, voxel_size, xp)
    n = len(freq)
    s = shell.ravel()
    keep = s < n
    s = s[keep]
    num = xp.bincount(s, weights=(fa * xp.conj(fb)).real.ravel()[keep], minlength=n)[:n]
    pa = xp.bincount(s, weights=(xp.abs(fa) ** 2).ravel()[keep], minlength=n)[:n]
    pb = xp.bincount(s, weights=(xp.abs(fb) ** 2).ravel()[keep], minlength=n)[:n]
    cnt = xp.bincount(s, minlength=n)[:n]
    val = num / xp.sqrt(xp.maximum(pa * pb, 1e-300))
    return freq, B.to_numpy(val), B.to_numpy(cnt)


def contrast_to_noise(volume, signal_mask, background_mask):
    """CNR = |mean(signal) − mean(background)| / std(background) over boolean masks."""
    xp = B.array_module(volume)
    s = volume[xp.asarray(signal_mask)]
    bg = volume[xp.asarray(background_mask)]
    if s.size == 0 or bg.size < 2:
        raise InputError("contrast_to_noise: empty signal or background mask")
    return float(B.to_numpy(xp.abs(s.mean() - bg.mean()) / xp.maximum(bg.std(), 1e-30)))
