"""Primitive stages with hand-derived VJPs, and the operators of :class:`Var`.

Every stage here is registered: the gradient-check suite runs a dot test on the
linear ones and a finite-difference VJP check on all of them. Complex cotangents
follow DESIGN.md: g = dL/dRe + i dL/dIm, so a holomorphic f has VJP conj(f') g and a
complex-linear A has VJP A^H g.
"""
from __future__ import annotations

import numpy as np

from . import backend as B
from .stage import Stage, Var, register, unwrap


def _rand(rng, shape, dtype, xp):
    """Standard normal array on xp (complex when dtype is complex)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        r = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        r = rng.standard_normal(shape)
    return xp.asarray(r.astype(dtype))


def _cdtype(dtype):
    return B.complex_dtype(dtype)


# ----------------------------------------------------------------------------- FFTs
@register
class FFT2(Stage):
    """2D discrete Fourier transform over the last two axes.

    F[k] = Σ_n x[n] e^{-2πi k·n/N} ("backward" norm); F^H = N · IFFT2. With
    ``norm="ortho"`` both carry 1/sqrt(N) and F^H = F^{-1}.
    """

    linear = True
    inverse = False

    def __init__(self, norm="backward"):
        self.norm = norm

    def _transform(self, x, inverse):
        return (B.ifft2 if inverse else B.fft2)(x, norm=self.norm)

    def forward(self, ctx, x):
        ctx.n = x.shape[-1] * x.shape[-2]
        return self._transform(x, self.inverse)

    def adjoint(self, ctx, y):
        # the adjoint is the other direction, times N (forward) or 1/N (inverse) unless "ortho"
        out = self._transform(y, not self.inverse)
        if self.norm != "backward":
            return out
        return out / ctx.n if self.inverse else out * ctx.n

    @classmethod
    def cases(cls, xp, dtype, rng):
        x = _rand(rng, (6, 5), _cdtype(dtype), xp)
        return [(cls(), (x,)), (cls("ortho"), (_rand(rng, (2, 4, 4), _cdtype(dtype), xp),)),
                (cls(), (_rand(rng, (4, 6), dtype, xp),))]


@register
class IFFT2(FFT2):
    """Inverse 2D DFT over the last two axes; adjoint FFT2/N ("backward" norm)."""

    inverse = True

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(), (_rand(rng, (5, 6), _cdtype(dtype), xp),)),
                (cls("ortho"), (_rand(rng, (3, 4), _cdtype(dtype), xp),))]


# ---------------------------------------------------------------------- elementwise
def _binary_cases(cls, xp, dtype, rng, positive_b=False):
    c = _cdtype(dtype)
    b_shape_vals = []
    for da, db, sa, sb in [(dtype, dtype, (3, 4), (3, 4)), (c, c, (3, 4), (4,)),
                           (dtype, c, (2, 3, 4), (3, 1)), (c, dtype, (3, 4), ())]:
        a = _rand(rng, sa, da, xp)
        b = _rand(rng, sb, db, xp)
        if positive_b:
            b = b + (3.0 if np.dtype(db).kind == "f" else 3.0 + 0j)
        b_shape_vals.append((cls(), (a, b)))
    return b_shape_vals


@register
class Add(Stage):
    """a + b with broadcasting; cotangents are summed back to each input's shape."""

    def forward(self, ctx, a, b):
        return a + b

    def vjp(self, ctx, g):
        return g, g

    cases = classmethod(_binary_cases)


@register
class Sub(Stage):
    """a − b with broadcasting."""

    def forward(self, ctx, a, b):
        return a - b

    def vjp(self, ctx, g):
        return g, -g

    cases = classmethod(_binary_cases)


@register
class Mul(Stage):
    """a · b with broadcasting; VJP conj(b) g and conj(a) g."""

    def forward(self, ctx, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        return g * xp.conj(ctx.b), g * xp.conj(ctx.a)

    cases = classmethod(_binary_cases)


@register
class Div(Stage):
    """a / b; VJP g / conj(b) and −g conj(a / b²)."""

    def forward(self, ctx, a, b):
        out = a / b
        ctx.b, ctx.out = b, out
        return out

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        ga = g / xp.conj(ctx.b)
        return ga, -ga * xp.conj(ctx.out)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return _binary_cases(cls, xp, dtype, rng, positive_b=True)


class _Unary(Stage):
    shapes = ((3, 4),)
    domain = "real"  # real | complex | positive

    @classmethod
    def cases(cls, xp, dtype, rng):
        out = []
        for shape in cls.shapes:
            if cls.domain in ("real", "both"):
                out.append((cls(), (_rand(rng, shape, dtype, xp),)))
            if cls.domain in ("complex", "both"):
                out.append((cls(), (_rand(rng, shape, _cdtype(dtype), xp),)))
            if cls.domain == "positive":
                out.append((cls(), (xp.abs(_rand(rng, shape, dtype, xp)) + 0.5,)))
        return out


@register
class Neg(_Unary):
    """−x."""

    linear = True
    domain = "both"

    def forward(self, ctx, x):
        return -x

    def adjoint(self, ctx, y):
        return -y


@register
class Exp(_Unary):
    """exp(x), real or complex; VJP conj(exp(x)) g."""

    domain = "both"

    def forward(self, ctx, x):
        ctx.out = B.array_module(x).exp(x)
        return ctx.out

    def vjp(self, ctx, g):
        return (g * B.array_module(g).conj(ctx.out),)


@register
class Log(_Unary):
    """Natural log of a positive real array; VJP g / x."""

    domain = "positive"

    def forward(self, ctx, x):
        ctx.x = x
        return B.array_module(x).log(x)

    def vjp(self, ctx, g):
        return (g / ctx.x,)


@register
class Sqrt(_Unary):
    """sqrt(x) of a positive real array; VJP g / (2 sqrt x)."""

    domain = "positive"

    def forward(self, ctx, x):
        ctx.out = B.array_module(x).sqrt(x)
        return ctx.out

    def vjp(self, ctx, g):
        return (g / (2 * ctx.out),)


@register
class Square(_Unary):
    """x² of a real array."""

    def forward(self, ctx, x):
        ctx.x = x
        return x * x

    def vjp(self, ctx, g):
        return (2 * ctx.x * g,)


@register
class ExpI(_Unary):
    """exp(iφ) of a real phase φ; VJP Re(conj(i e^{iφ}) g)."""

    def forward(self, ctx, phi):
        xp = B.array_module(phi)
        ctx.out = xp.exp(1j * phi).astype(_cdtype(phi.dtype))
        return ctx.out

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        return ((g * xp.conj(1j * ctx.out)).real,)


@register
class Abs2(_Unary):
    """|z|² (real output); VJP 2 z g."""

    domain = "both"

    def forward(self, ctx, z):
        ctx.z = z
        return (z.real * z.real + z.imag * z.imag) if B.array_module(z).iscomplexobj(z) else z * z

    def vjp(self, ctx, g):
        return (2 * ctx.z * g,)


@register
class Real(_Unary):
    """Re(z); VJP g (a real cotangent is a purely real-direction gradient)."""

    linear = True
    domain = "complex"

    def forward(self, ctx, z):
        return z.real

    def adjoint(self, ctx, y):
        return y.astype(_cdtype(y.dtype))


@register
class Imag(_Unary):
    """Im(z); VJP i g."""

    linear = True
    domain = "complex"

    def forward(self, ctx, z):
        return z.imag

    def adjoint(self, ctx, y):
        return 1j * y


@register
class Conj(_Unary):
    """conj(z); VJP conj(g). (Real-linear, so its dot test uses the real inner product.)"""

    linear = True
    domain = "complex"

    def forward(self, ctx, z):
        return B.array_module(z).conj(z)

    def adjoint(self, ctx, y):
        return B.array_module(y).conj(y)


@register
class Power(Stage):
    """x^p for positive real x and a fixed exponent p; VJP p x^(p−1) g."""

    def __init__(self, p):
        self.p = float(p)

    def forward(self, ctx, x):
        ctx.x = x
        return x ** self.p

    def vjp(self, ctx, g):
        return (g * self.p * ctx.x ** (self.p - 1),)

    @classmethod
    def cases(cls, xp, dtype, rng):
        x = xp.abs(_rand(rng, (3, 4), dtype, xp)) + 0.5
        return [(cls(2.5), (x,)), (cls(-1.0), (x,))]


# ----------------------------------------------------------------- reductions/shape
@register
class Sum(Stage):
    """Σ over ``axis`` (all when None); adjoint broadcasts back."""

    linear = True

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, ctx, x):
        ctx.shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        if self.axis is not None and not self.keepdims:
            y = xp.expand_dims(y, self.axis)
        return xp.broadcast_to(y, ctx.shape).copy()

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(), (_rand(rng, (3, 4), dtype, xp),)),
                (cls(axis=0), (_rand(rng, (3, 4), _cdtype(dtype), xp),)),
                (cls(axis=(1, 2)), (_rand(rng, (2, 3, 4), dtype, xp),))]


@register
class Mean(Sum):
    """Mean over ``axis``; adjoint broadcasts back divided by the count."""

    def forward(self, ctx, x):
        out = super().forward(ctx, x)
        ctx.count = x.size // max(out.size, 1)
        return out / ctx.count

    def adjoint(self, ctx, y):
        return super().adjoint(ctx, y) / ctx.count


@register
class Reshape(Stage):
    """Reshape; adjoint reshapes back."""

    linear = True

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, ctx, x):
        ctx.shape = x.shape
        return x.reshape(self.shape)

    def adjoint(self, ctx, y):
        return y.reshape(ctx.shape)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls((12,)), (_rand(rng, (3, 4), dtype, xp),))]


@register
class Crop(Stage):
    """Centre-crop the last two axes to ``shape``; adjoint zero-pads."""

    linear = True

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, ctx, x):
        ctx.big = x.shape
        ctx.slices = _centre_slices(self.shape, x.shape[-2:])
        return x[(Ellipsis,) + ctx.slices].copy()

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        out = xp.zeros(ctx.big, dtype=y.dtype)
        out[(Ellipsis,) + ctx.slices] = y
        return out

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls((4, 5)), (_rand(rng, (7, 8), dtype, xp),)),
                (cls((3, 3)), (_rand(rng, (2, 6, 6), _cdtype(dtype), xp),))]


def _centre_slices(small, big):
    return tuple(slice((b - s) // 2, (b - s) // 2 + s) for s, b in zip(small, big))


@register
class Index(Stage):
    """x[key] for a basic or integer-array index; adjoint scatters back (adds repeats)."""

    linear = True

    def __init__(self, key):
        self.key = key

    def forward(self, ctx, x):
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return x[self.key]

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        out = xp.zeros(ctx.shape, dtype=y.dtype)
        if isinstance(self.key, tuple) and all(isinstance(k, (slice, int, type(Ellipsis))) for k in self.key) \
                or isinstance(self.key, (slice, int)):
            out[self.key] += y
        else:
            (xp.add.at if xp is np else _cupy_add_at)(out, self.key, y)
        return out

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls((slice(1, 3), 2)), (_rand(rng, (4, 5), dtype, xp),)),
                (cls(xp.asarray([0, 2, 2])), (_rand(rng, (4, 3), _cdtype(dtype), xp),))]


def _cupy_add_at(out, key, y):
    import cupyx

    cupyx.scatter_add(out, key, y)


@register
class Concat(Stage):
    """Concatenate along ``axis``; each cotangent is its part."""

    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, ctx, *xs):
        ctx.sizes = [x.shape[self.axis] for x in xs]
        return B.array_module(*xs).concatenate(xs, axis=self.axis)

    def vjp(self, ctx, g):
        edges = np.cumsum([0] + ctx.sizes)
        sl = [slice(None)] * g.ndim
        out = []
        for a, b in zip(edges[:-1], edges[1:]):
            sl[self.axis] = slice(int(a), int(b))
            out.append(g[tuple(sl)])
        return tuple(out)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(1), (_rand(rng, (2, 3, 2), dtype, xp), _rand(rng, (2, 1, 2), dtype, xp)))]


@register
class MatMul(Stage):
    """a @ b (batched over leading axes); VJP g b^H and a^H g."""

    def forward(self, ctx, a, b):
        ctx.a, ctx.b = a, b
        return a @ b

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        ga = g @ xp.conj(xp.swapaxes(ctx.b, -1, -2))
        gb = xp.conj(xp.swapaxes(ctx.a, -1, -2)) @ g
        return ga, gb

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(), (_rand(rng, (3, 4), dtype, xp), _rand(rng, (4, 2), dtype, xp))),
                (cls(), (_rand(rng, (2, 3, 4), _cdtype(dtype), xp), _rand(rng, (4, 5), _cdtype(dtype), xp)))]


# ------------------------------------------------- linear interpolation: scatter/gather
def linear_corners(pos, shape, wrap=True):
    """Corner indices and weights of n-linear interpolation.

    ``pos`` is (n, d) in pixel units along the last d axes of a grid of ``shape``
    (pixel centres at integers). Returns ``flat`` (2^d, n) flat indices into the grid,
    ``w`` (2^d, n) weights and ``dw`` (2^d, d, n) derivatives of the weights with respect
    to each coordinate. The grid is periodic when ``wrap``; otherwise corners outside it
    get weight 0 (and an index clipped into the grid).
    """
    xp = B.array_module(pos)
    d = len(shape)
    base = xp.floor(pos)
    frac = pos - base
    base = base.astype(np.int64)
    flats, ws, dws = [], [], []
    strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
    for corner in range(2 ** d):
        bits = [(corner >> (d - 1 - k)) & 1 for k in range(d)]
        flat = 0
        valid = None
        w = None
        parts = []
        for k in range(d):
            idx = base[:, k] + bits[k]
            if wrap:
                idx = idx % shape[k]
            else:
                ok = (idx >= 0) & (idx < shape[k])
                valid = ok if valid is None else valid & ok
                idx = xp.clip(idx, 0, shape[k] - 1)
            flat = flat + idx * int(strides[k])
            wk = frac[:, k] if bits[k] else 1 - frac[:, k]
            parts.append(wk)
            w = wk if w is None else w * wk
        dw = []
        for k in range(d):
            sign = 1.0 if bits[k] else -1.0
            prod = xp.full_like(frac[:, 0], sign)
            for j in range(d):
                if j != k:
                    prod = prod * parts[j]
            dw.append(prod)
        if valid is not None:
            w = w * valid
            dw = [x * valid for x in dw]
        flats.append(flat)
        ws.append(w)
        dws.append(xp.stack(dw))
    return xp.stack(flats), xp.stack(ws), xp.stack(dws)


def _bincount(xp, flat, weights, size):
    if xp.iscomplexobj(weights):
        return (_bincount(xp, flat, weights.real, size)
                + 1j * _bincount(xp, flat, weights.imag, size))
    return xp.bincount(flat.ravel(), weights=weights.ravel(), minlength=size)[:size]


@register
class ScatterAdd(Stage):
    """Splat point values onto a grid with n-linear weights (periodic).

    out[m] = Σ_j v_j w(m − p_j), w the n-linear "tent" kernel. Linear in ``values``;
    piecewise linear in ``positions`` (VJP uses the weights' derivatives). Its
    adjoint in ``values`` is :class:`Gather` at the same positions.
    """

    linear = True

    def __init__(self, shape, wrap=True):
        self.shape, self.wrap = tuple(shape), wrap

    def forward(self, ctx, values, positions):
        xp = B.array_module(values, positions)
        flat, w, dw = linear_corners(positions, self.shape, self.wrap)
        ctx.flat, ctx.w, ctx.dw, ctx.values = flat, w, dw, values
        size = int(np.prod(self.shape))
        dt = xp.result_type(values.dtype, positions.dtype)
        return _bincount(xp, flat, w * values[None], size).reshape(self.shape).astype(dt, copy=False)

    def adjoint(self, ctx, y):
        yf = y.reshape(-1)
        return (yf[ctx.flat] * ctx.w).sum(axis=0)

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        gf = g.reshape(-1)[ctx.flat]  # (2^d, n)
        gv = (gf * ctx.w).sum(axis=0)
        # dL/dp_jk = Σ_corners Re(conj(g_m) ... ) handled by fit_cotangent: cotangent is
        # Σ_c g_c conj(v_j) dw_ck, whose real part is the derivative for real positions.
        gp = (gf[:, None, :] * ctx.dw).sum(axis=0) * xp.conj(ctx.values)[None]
        return gv, gp.T

    @classmethod
    def cases(cls, xp, dtype, rng):
        pos = xp.asarray((rng.random((7, 2)) * np.array([5, 6]) - 0.5).astype(dtype))
        pos3 = xp.asarray((rng.random((5, 3)) * np.array([3, 4, 5])).astype(dtype))
        return [(cls((5, 6)), (_rand(rng, (7,), dtype, xp), pos)),
                (cls((5, 6), wrap=False), (_rand(rng, (7,), dtype, xp), pos)),
                (cls((3, 4, 5)), (_rand(rng, (5,), _cdtype(dtype), xp), pos3))]


@register
class Gather(Stage):
    """Sample a grid at points by n-linear interpolation (periodic); adjoint is ScatterAdd."""

    linear = True

    def __init__(self, wrap=True):
        self.wrap = wrap

    def forward(self, ctx, grid, positions):
        xp = B.array_module(grid, positions)
        flat, w, dw = linear_corners(positions, grid.shape, self.wrap)
        ctx.flat, ctx.w, ctx.dw, ctx.shape = flat, w, dw, grid.shape
        ctx.vals = grid.reshape(-1)[flat]  # (2^d, n)
        return (ctx.vals * w).sum(axis=0)

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        size = int(np.prod(ctx.shape))
        return _bincount(xp, ctx.flat, ctx.w * y[None], size).reshape(ctx.shape)

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        gp = (ctx.vals[:, None, :] * ctx.dw).sum(axis=0)  # d out_j / d p_jk
        return self.adjoint(ctx, g), (xp.conj(gp) * g[None]).T

    @classmethod
    def cases(cls, xp, dtype, rng):
        pos = xp.asarray((rng.random((7, 2)) * np.array([5, 6]) - 0.5).astype(dtype))
        pos3 = xp.asarray((rng.random((4, 3)) * np.array([3, 4, 5])).astype(dtype))
        return [(cls(), (_rand(rng, (5, 6), dtype, xp), pos)),
                (cls(wrap=False), (_rand(rng, (5, 6), _cdtype(dtype), xp), pos)),
                (cls(), (_rand(rng, (3, 4, 5), dtype, xp), pos3))]


def rotation_matrix_2d(angle_rad):
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def rotation_matrix_3d(axis, angle_rad):
    """Right-handed rotation by ``angle_rad`` about unit vector ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


@register
class Rotate(Stage):
    """Rotate a 2D image or 3D volume about its centre by linear interpolation.

    out(p) = in(R^T (p − c) + c) with R the rotation (2×2 from an angle, or any 3×3
    matrix), c = (n − 1)/2 per axis, zero outside. Linear in the image; adjoint is the
    scatter of the same weights (not the inverse rotation: interpolation is not unitary).
    """

    linear = True

    def __init__(self, matrix):
        self.matrix = np.asarray(matrix, dtype=float)
        self._corners = {}  # memo of the last shape's weights; each call's own go on ctx

    def corners(self, shape, dtype, xp):
        """Flat corner indices and weights of every output pixel for a grid of ``shape``."""
        key = (tuple(shape), np.dtype(dtype).str, xp.__name__)
        if key not in self._corners:
            d = len(shape)
            c = (np.asarray(shape) - 1) / 2.0
            grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, d)
            src = (grid - c) @ self.matrix + c  # rows: R^T (p - c) + c
            pos = xp.asarray(src.astype(B.real_dtype(dtype)))
            self._corners = {key: linear_corners(pos, shape, wrap=False)[:2]}
        return self._corners[key]

    def forward(self, ctx, x):
        d = self.matrix.shape[0]
        if x.ndim != d:
            raise ValueError(f"Rotate: a {d}D rotation needs a {d}D array, got shape {x.shape}")
        ctx.shape = x.shape
        ctx.flat, ctx.w = self.corners(x.shape, x.dtype, B.array_module(x))
        return (x.reshape(-1)[ctx.flat] * ctx.w).sum(axis=0).reshape(x.shape)

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        size = int(np.prod(ctx.shape))
        return _bincount(xp, ctx.flat, ctx.w * y.reshape(-1)[None], size).reshape(ctx.shape)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(rotation_matrix_2d(0.3)), (_rand(rng, (6, 7), dtype, xp),)),
                (cls(rotation_matrix_2d(-1.1)), (_rand(rng, (5, 5), dtype, xp),)),
                (cls(rotation_matrix_3d([0, 1, 0], 0.4)), (_rand(rng, (4, 5, 6), dtype, xp),))]


# ---------------------------------------------------------------- convenient calls
_STATELESS = {}


def _s(cls):
    inst = _STATELESS.get(cls)
    if inst is None:
        inst = _STATELESS[cls] = cls()
    return inst


def add(a, b): return _s(Add)(a, b)
def sub(a, b): return _s(Sub)(a, b)
def mul(a, b): return _s(Mul)(a, b)
def div(a, b): return _s(Div)(a, b)
def neg(x): return _s(Neg)(x)
def exp(x): return _s(Exp)(x)
def log(x): return _s(Log)(x)
def sqrt(x): return _s(Sqrt)(x)
def square(x): return _s(Square)(x)
def expi(phi): return _s(ExpI)(phi)
def abs2(z): return _s(Abs2)(z)
def real(z): return _s(Real)(z)
def imag(z): return _s(Imag)(z)
def conj(z): return _s(Conj)(z)
def power(x, p): return Power(p)(x)
def fft2(x, norm="backward"): return FFT2(norm)(x)
def ifft2(x, norm="backward"): return IFFT2(norm)(x)
def sum(x, axis=None, keepdims=False): return Sum(axis, keepdims)(x)  # noqa: A001
def mean(x, axis=None, keepdims=False): return Mean(axis, keepdims)(x)
def reshape(x, shape): return Reshape(shape)(x)
def crop(x, shape): return Crop(shape)(x)
def concat(xs, axis=0): return Concat(axis)(*xs)
def matmul(a, b): return _s(MatMul)(a, b)
def scatter_add(values, positions, shape, wrap=True): return ScatterAdd(shape, wrap)(values, positions)
def gather(grid, positions, wrap=True): return Gather(wrap)(grid, positions)


def _install_operators():
    def rev(f):
        return lambda self, other: f(other, self)

    Var.__add__, Var.__radd__ = add, rev(add)
    Var.__sub__, Var.__rsub__ = sub, rev(sub)
    Var.__mul__, Var.__rmul__ = mul, rev(mul)
    Var.__truediv__, Var.__rtruediv__ = div, rev(div)
    Var.__neg__ = neg
    Var.__pow__ = lambda self, p: square(self) if p == 2 else power(self, p)
    Var.__getitem__ = lambda self, key: Index(key)(self)
    Var.__matmul__, Var.__rmatmul__ = matmul, rev(matmul)
    Var.real = property(real)
    Var.imag = property(imag)
    Var.conj = conj
    Var.sum = lambda self, axis=None, keepdims=False: sum(self, axis, keepdims)
    Var.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
    Var.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)


_install_operators()
__all__ = [n for n in dir() if not n.startswith("_") and n not in ("np", "B", "annotations")] + ["unwrap"]
