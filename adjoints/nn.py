"""Network stages with hand-derived VJPs, and a small U-Net built from them.

EM-agnostic (never imports cutem). Arrays are NCHW (batch, channels, rows, columns).

Stages (all registered, so ``cutem gradcheck`` checks them):

- :class:`Conv2d` — cross-correlation with stride, zero padding, optional bias, any
  number of input/output channels. Built as im2col + one matrix product (BLAS on the
  CPU, cuBLAS on the GPU; no cuDNN): the k_h·k_w shifted, strided views of the padded
  input (the sliding windows) are gathered into a column matrix of shape
  (C_in·k_h·k_w, N·H_out·W_out) and multiplied by the (C_out, C_in·k_h·k_w) weight matrix.
  The loop runs over the k_h·k_w kernel offsets, never over pixels.
- :class:`Upsample` (nearest neighbour, integer factor), :class:`AvgPool2d`,
  :class:`MaxPool2d`, :class:`LeakyRelu`, and the losses :class:`MSELoss` (L2) and
  :class:`L1Loss`. Concatenation and the residual connection are ``adjoints.ops.Concat``
  and ``adjoints.ops.Add``.

:class:`UNet` composes them (Ronneberger et al., MICCAI 2015, arXiv:1505.04597, in the
small residual form used for image denoising: the network predicts a correction added
to its input, Zhang et al., IEEE TIP 26:3142, 2017). Weights are He-initialised
(He et al., ICCV 2015, arXiv:1502.01852: N(0, 2/fan_in)) from a seed and saved to HDF5
together with the configuration.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from . import backend as B
from .ops import Add, Concat, _rand
from .stage import Stage, Tape, register, unwrap


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


# -------------------------------------------------------------------------- conv2d
def _im2col(xpad, kh, kw, sh, sw, ho, wo):
    """Columns (C, kh, kw, N, ho, wo) of a padded NCHW input: one strided view per offset."""
    xp = B.array_module(xpad)
    n, c = xpad.shape[:2]
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=xpad.dtype)
    xt = xpad.transpose(1, 0, 2, 3)  # (C, N, H, W) view; the copies below do the reordering
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xt[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return cols


def _col2im(cols, shape_pad, kh, kw, sh, sw, ho, wo):
    """Adjoint of :func:`_im2col`: add each offset's columns back into the padded input."""
    xp = B.array_module(cols)
    n, c, hp, wp = shape_pad
    out = xp.zeros((c, n, hp, wp), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cols[:, i, j]
    return out.transpose(1, 0, 2, 3)


@register
class Conv2d(Stage):
    r"""2D cross-correlation of an NCHW batch: y = W ⋆ x + b.

    .. math::
        y[n, o, u, v] = b[o] + \sum_{c, i, j} W[o, c, i, j]\,
        x_p[n, c, s_h u + i, s_w v + j]

    with x_p the input zero-padded by ``padding`` on each side. With the columns
    X[(c,i,j), (n,u,v)] = x_p[n, c, s_h u + i, s_w v + j] (im2col) this is one matrix
    product Y = W_m X + b. VJPs (g the output cotangent, G its matrix form):
    dW_m = G X^T, db = Σ_{n,u,v} g, dX = W_m^T G, and dx is dX scattered back by the
    adjoint of im2col (col2im, overlapping windows add up) with the padding cropped.

    Inputs ``(x, w)`` or ``(x, w, b)``: x (N, C_in, H, W), w (C_out, C_in, k_h, k_w),
    b (C_out,). Without bias the stage is linear in x (``linear`` is set per instance,
    so the gradient-check suite dot-tests the bias-free cases).
    """

    def __init__(self, stride=1, padding=0, bias=True):
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.bias = bool(bias)
        self.linear = not self.bias

    def forward(self, ctx, x, w, b=None):
        xp = B.array_module(x, w)
        n, c, h, wd = x.shape
        co, ci, kh, kw = w.shape
        if ci != c:
            raise ValueError(f"Conv2d: input has {c} channels, weights expect {ci}")
        ph, pw = self.padding
        sh, sw = self.stride
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (wd + 2 * pw - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d: input {h}x{wd} too small for kernel {kh}x{kw}")
        xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
        cols = _im2col(xpad, kh, kw, sh, sw, ho, wo).reshape(c * kh * kw, n * ho * wo)
        wm = w.reshape(co, c * kh * kw)
        y = wm @ cols  # (C_out, N·ho·wo): the one BLAS call
        ctx.cols, ctx.w, ctx.geom = cols, w, (xpad.shape, kh, kw, sh, sw, ho, wo, n, h, wd)
        y = y.reshape(co, n, ho, wo).transpose(1, 0, 2, 3)
        if b is not None:
            y = y + b.reshape(1, co, 1, 1)
        return xp.ascontiguousarray(y)

    def _gx(self, ctx, gm):
        xp = B.array_module(gm)
        shape_pad, kh, kw, sh, sw, ho, wo, n, h, wd = ctx.geom
        w = ctx.w
        co = w.shape[0]
        wm = w.reshape(co, -1)
        dcols = (xp.conj(wm) if xp.iscomplexobj(wm) else wm).T @ gm
        dcols = dcols.reshape(w.shape[1], kh, kw, n, ho, wo)
        gpad = _col2im(dcols, shape_pad, kh, kw, sh, sw, ho, wo)
        ph, pw = self.padding
        return xp.ascontiguousarray(gpad[:, :, ph:ph + h, pw:pw + wd])

    def adjoint(self, ctx, y):
        co = ctx.w.shape[0]
        gm = y.transpose(1, 0, 2, 3).reshape(co, -1)
        return self._gx(ctx, gm)

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        co = ctx.w.shape[0]
        gm = xp.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(co, -1)
        cols = xp.conj(ctx.cols) if xp.iscomplexobj(ctx.cols) else ctx.cols  # conj copies: only if complex
        gw = (cols @ gm.T).T.reshape(ctx.w.shape)  # (K, N·ho·wo) @ (N·ho·wo, C_out): the fast BLAS layout
        gx = self._gx(ctx, gm)
        if ctx.n_inputs == 3:
            return gx, gw, g.sum(axis=(0, 2, 3))
        return gx, gw

    @classmethod
    def cases(cls, xp, dtype, rng):
        def r(*s):
            return _rand(rng, s, dtype, xp)
        return [
            (cls(1, 1, True), (r(2, 3, 6, 5), r(4, 3, 3, 3), r(4))),
            (cls(2, 1, True), (r(1, 2, 7, 8), r(3, 2, 3, 3), r(3))),
            (cls((1, 2), (0, 1), True), (r(2, 1, 5, 6), r(2, 1, 2, 3), r(2))),
            (cls(1, 0, False), (r(2, 2, 5, 5), r(3, 2, 1, 1))),
            (cls(1, 1, False), (r(1, 3, 6, 6), r(2, 3, 3, 3))),
            (cls(2, 0, False), (r(2, 2, 6, 6), r(2, 2, 2, 2))),
        ]

    def __repr__(self):
        return f"Conv2d(stride={self.stride}, padding={self.padding}, bias={self.bias})"


# ---------------------------------------------------------------- resampling/pooling
@register
class Upsample(Stage):
    """Nearest-neighbour upsampling of the last two axes by an integer factor f.

    y[..., u, v] = x[..., ⌊u/f⌋, ⌊v/f⌋]; the adjoint sums each f×f block.
    """

    linear = True

    def __init__(self, factor=2):
        self.factor = int(factor)

    def forward(self, ctx, x):
        xp = B.array_module(x)
        f = self.factor
        s = x.shape
        y = xp.broadcast_to(x[..., :, None, :, None], s[:-2] + (s[-2], f, s[-1], f))
        return y.reshape(s[:-2] + (s[-2] * f, s[-1] * f))

    def adjoint(self, ctx, y):
        f = self.factor
        s = y.shape
        return y.reshape(s[:-2] + (s[-2] // f, f, s[-1] // f, f)).sum(axis=(-3, -1))

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(2), (_rand(rng, (2, 3, 3, 4), dtype, xp),)), (cls(3), (_rand(rng, (1, 2, 2, 2), dtype, xp),))]


def _blocks(x, k):
    s = x.shape
    h, w = s[-2] // k, s[-1] // k
    return x[..., :h * k, :w * k].reshape(s[:-2] + (h, k, w, k))


def _unblocks(blk, shape):
    """Adjoint of :func:`_blocks`: (..., h, k, w, k) blocks into zeros of ``shape`` (the dropped
    remainder rows/columns get no cotangent)."""
    xp = B.array_module(blk)
    s = blk.shape
    out = xp.zeros(shape, dtype=blk.dtype)
    out[..., :s[-4] * s[-3], :s[-2] * s[-1]] = blk.reshape(s[:-4] + (s[-4] * s[-3], s[-2] * s[-1]))
    return out


class _Pool(Stage):
    """Non-overlapping k×k blocks of the last two axes (a trailing remainder row/column is
    dropped); the check cases cover a remainder."""

    def __init__(self, k=2):
        self.k = int(k)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(2), (_rand(rng, (2, 2, 4, 6), dtype, xp),)), (cls(3), (_rand(rng, (1, 1, 6, 7), dtype, xp),))]


@register
class AvgPool2d(_Pool):
    """Mean over each block; the adjoint spreads g/k² over the block."""

    linear = True

    def forward(self, ctx, x):
        ctx.shape = x.shape
        return _blocks(x, self.k).mean(axis=(-3, -1))

    def adjoint(self, ctx, y):
        xp = B.array_module(y)
        k = self.k
        s = y.shape
        return _unblocks(xp.broadcast_to((y / (k * k))[..., :, None, :, None], s[:-2] + (s[-2], k, s[-1], k)),
                         ctx.shape)


@register
class MaxPool2d(_Pool):
    """Max over each block; the cotangent goes to the (first) maximum."""

    def forward(self, ctx, x):
        xp = B.array_module(x)
        k = self.k
        blk = _blocks(x, k)  # (..., h, k, w, k)
        s = blk.shape
        flat = xp.moveaxis(blk, -3, -2).reshape(s[:-4] + (s[-4], s[-2], k * k))
        idx = flat.argmax(axis=-1)
        ctx.idx, ctx.shape, ctx.bshape = idx, x.shape, s
        return xp.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        k = self.k
        s = ctx.bshape
        onehot = ctx.idx[..., None] == xp.arange(k * k)
        flat = onehot * g[..., None]
        blk = xp.moveaxis(flat.reshape(s[:-4] + (s[-4], s[-2], k, k)), -2, -3)
        return (_unblocks(blk, ctx.shape),)


# ----------------------------------------------------------------------- activation
@register
class LeakyRelu(Stage):
    """max(x, 0) + slope·min(x, 0); VJP g·(1 if x > 0 else slope)."""

    def __init__(self, slope=0.1):
        self.slope = float(slope)

    def forward(self, ctx, x):
        xp = B.array_module(x)
        ctx.mask = x > 0
        return xp.where(ctx.mask, x, x * x.dtype.type(self.slope))

    def vjp(self, ctx, g):
        xp = B.array_module(g)
        return (xp.where(ctx.mask, g, g * g.dtype.type(self.slope)),)

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(0.1), (_rand(rng, (2, 3, 4, 4), dtype, xp),)), (cls(0.0), (_rand(rng, (3, 5), dtype, xp),))]


# --------------------------------------------------------------------------- losses
@register
class MSELoss(Stage):
    """Mean squared error mean((a − b)²) (L2 loss), a 0-d array; VJP ±2(a − b)g/n."""

    def forward(self, ctx, a, b):
        xp = B.array_module(a, b)
        d = a - b
        ctx.d, ctx.n = d, d.size
        return xp.asarray((d * d).sum() / d.size, dtype=d.dtype)

    def vjp(self, ctx, g):
        ga = (2.0 / ctx.n) * g * ctx.d
        return ga, -ga

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(), (_rand(rng, (2, 1, 4, 5), dtype, xp), _rand(rng, (2, 1, 4, 5), dtype, xp)))]


@register
class L1Loss(Stage):
    """Mean absolute error mean|a − b| (L1 loss); VJP ±sign(a − b)g/n (0 where a = b)."""

    def forward(self, ctx, a, b):
        xp = B.array_module(a, b)
        d = a - b
        ctx.sign, ctx.n = xp.sign(d), d.size
        return xp.asarray(xp.abs(d).sum() / d.size, dtype=d.dtype)

    def vjp(self, ctx, g):
        ga = g * ctx.sign / ctx.n
        return ga, -ga

    @classmethod
    def cases(cls, xp, dtype, rng):
        return [(cls(), (_rand(rng, (2, 1, 4, 5), dtype, xp), _rand(rng, (2, 1, 4, 5), dtype, xp)))]


# ----------------------------------------------------------------------------- U-Net
@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet`.

    ``depth`` levels of downsampling (input sides must be multiples of 2**depth),
    ``width`` channels at the top level (doubled per level down), ``convs`` 3×3
    convolutions per level and side, ``pool`` "max" or "avg", ``residual``: output =
    input + network (first ``out_channels`` input channels).
    """

    in_channels: int = 1
    out_channels: int = 1
    depth: int = 2
    width: int = 16
    convs: int = 1
    kernel: int = 3
    pool: str = "max"
    slope: float = 0.1
    residual: bool = False

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "width", "convs", "kernel"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1")
        if not 0 <= int(self.depth) <= 6:
            raise ValueError("UNetConfig.depth must be in [0, 6]")
        if self.kernel % 2 != 1:
            raise ValueError("UNetConfig.kernel must be odd")
        if self.pool not in ("max", "avg"):
            raise ValueError("UNetConfig.pool must be max or avg")
        if self.residual and self.out_channels > self.in_channels:
            raise ValueError("UNetConfig.residual needs out_channels <= in_channels")

    @property
    def multiple(self):
        return 2 ** self.depth


class UNet:
    """A small U-Net on NCHW arrays built from the stages above.

    Level l (0 = top) has ``width·2^l`` channels. Encoder: ``convs`` (3×3 conv +
    LeakyReLU) per level, then pooling; decoder: nearest upsampling, a 3×3 conv to the
    level's width, concatenation with the encoder's skip, ``convs`` (conv + LeakyReLU);
    a final 1×1 conv; with ``residual`` the input is added (ops.Add).

    ``params`` is a dict name -> array; :meth:`apply` works on plain arrays (inference)
    and on tape Vars (training).
    """

    def __init__(self, config: UNetConfig | None = None, **kw):
        self.config = config if config is not None else UNetConfig(**kw)

    # -- parameters -------------------------------------------------------------------
    def shapes(self):
        """Ordered dict of parameter name -> shape."""
        c = self.config
        k = c.kernel
        out = {}
        cin = c.in_channels
        for lev in range(c.depth + 1):
            w = c.width * 2 ** lev
            for i in range(c.convs):
                out[f"enc{lev}.{i}.w"] = (w, cin if i == 0 else w, k, k)
                out[f"enc{lev}.{i}.b"] = (w,)
            cin = w
        for lev in range(c.depth - 1, -1, -1):
            w = c.width * 2 ** lev
            out[f"up{lev}.w"] = (w, 2 * w, k, k)
            out[f"up{lev}.b"] = (w,)
            for i in range(c.convs):
                out[f"dec{lev}.{i}.w"] = (w, 2 * w if i == 0 else w, k, k)
                out[f"dec{lev}.{i}.b"] = (w,)
        out["head.w"] = (c.out_channels, c.width, 1, 1)
        out["head.b"] = (c.out_channels,)
        return out

    def init(self, seed=0, xp=np, dtype=np.float32):
        """He-normal weights (std sqrt(2/fan_in)), zero biases, from a seeded NumPy stream
        (so the same seed gives the same weights on every backend). The 1×1 head is
        scaled by 0.1 so that a residual net starts close to the identity."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in self.shapes().items():
            if name.endswith(".b"):
                a = np.zeros(shape)
            else:
                fan_in = int(np.prod(shape[1:]))
                a = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
                if name == "head.w":
                    a *= 0.1
            params[name] = xp.asarray(a.astype(dtype))
        return params

    def n_params(self):
        return int(sum(np.prod(s) for s in self.shapes().values()))

    # -- forward ----------------------------------------------------------------------
    def apply(self, params, x):
        """Network output for an NCHW batch ``x`` (array or Var)."""
        c = self.config
        m = c.multiple
        h, w = x.shape[-2:]
        if h % m or w % m:
            raise ValueError(f"UNet: input {h}x{w} must be a multiple of {m} (depth {c.depth})")
        p = c.kernel // 2
        conv = Conv2d(1, p, True)
        act = LeakyRelu(c.slope)
        pool = MaxPool2d(2) if c.pool == "max" else AvgPool2d(2)
        up = Upsample(2)
        cat = Concat(axis=1)
        skips = []
        h_ = x
        for lev in range(c.depth + 1):
            if lev:
                h_ = pool(h_)
            for i in range(c.convs):
                h_ = act(conv(h_, params[f"enc{lev}.{i}.w"], params[f"enc{lev}.{i}.b"]))
            skips.append(h_)
        for lev in range(c.depth - 1, -1, -1):
            h_ = act(conv(up(h_), params[f"up{lev}.w"], params[f"up{lev}.b"]))
            h_ = cat(h_, skips[lev])
            for i in range(c.convs):
                h_ = act(conv(h_, params[f"dec{lev}.{i}.w"], params[f"dec{lev}.{i}.b"]))
        y = Conv2d(1, 0, True)(h_, params["head.w"], params["head.b"])
        if c.residual:
            skip = x if c.out_channels == c.in_channels else _first_channels(x, c.out_channels)
            y = Add()(skip, y)
        return y

    __call__ = apply

    def loss_and_grad(self, params, x, target, loss="l2"):
        """(loss value, dict of gradients) for one batch."""
        with Tape() as tape:
            watched = {k: tape.watch(v) for k, v in params.items()}
            y = self.apply(watched, x)
            L = (MSELoss() if loss == "l2" else L1Loss())(y, target)
        names = list(watched)
        grads = tape.gradient(L, [watched[k] for k in names])
        return unwrap(L), dict(zip(names, grads))


def _first_channels(x, n):
    from .ops import Index

    return Index((slice(None), slice(0, n)))(x)


# ------------------------------------------------------------------------------ HDF5
def save_params(group, params):
    """Write a parameter dict into an h5py group (host float arrays)."""
    for k, v in params.items():
        if k in group:
            del group[k]
        group.create_dataset(k, data=B.to_numpy(v))


def load_params(group, xp=np, dtype=None):
    return {k: xp.asarray(np.asarray(group[k], dtype=dtype) if dtype else np.asarray(group[k]))
            for k in group.keys()}


def save_unet(path_or_group, net: UNet, params, extra=None):
    """Save configuration (JSON attribute) and weights; ``path_or_group`` is a file path or
    an open h5py group."""
    import h5py

    def write(g):
        g.attrs["unet_config"] = json.dumps(asdict(net.config))
        if extra:
            for k, v in extra.items():
                g.attrs[k] = v
        w = g.require_group("weights")
        save_params(w, params)

    if isinstance(path_or_group, (h5py.Group, h5py.File)):
        write(path_or_group)
    else:
        with h5py.File(path_or_group, "w") as f:
            write(f)


def load_unet(path_or_group, xp=np, dtype=np.float32):
    """``(UNet, params)`` from a file written by :func:`save_unet` (any backend)."""
    import h5py

    def read(g):
        cfg = UNetConfig(**json.loads(g.attrs["unet_config"]))
        return UNet(cfg), load_params(g["weights"], xp, dtype)

    if isinstance(path_or_group, (h5py.Group, h5py.File)):
        return read(path_or_group)
    with h5py.File(path_or_group, "r") as f:
        return read(f)


__all__ = ["Conv2d", "Upsample", "AvgPool2d", "MaxPool2d", "LeakyRelu", "MSELoss", "L1Loss",
           "UNetConfig", "UNet", "save_unet", "load_unet", "save_params", "load_params"]
