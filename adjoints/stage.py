"""The Stage contract and the Tape.

A :class:`Stage` is one differentiable step. Its configuration (grid shape, pixel
size, anything not differentiated) is given to the constructor; its array inputs go
to ``forward(ctx, *inputs)``, which returns one array and may save what the backward
pass needs on ``ctx``. ``vjp(ctx, g)`` returns one cotangent per input (``None`` where
an input is not differentiable). Before ``vjp`` runs, ``ctx.needs`` holds one bool per
input: whether anybody asked for that cotangent (the tape sets it from the inputs that lead
to the watched values; outside a tape every input is needed). A stage may skip the work of
a cotangent that is not needed and return ``None`` for it; an unneeded cotangent it does
return is dropped. Linear stages (linear in their first input, the
others held fixed) implement ``adjoint(ctx, y)`` instead and inherit a ``vjp`` built
from it, so the dot test and the gradient use the same code.

Complex convention (DESIGN.md): for a real loss L of complex z the cotangent is
dL/dRe(z) + i dL/dIm(z). The VJP of a complex-linear map A is then A^H applied to the
cotangent, of a holomorphic f it is conj(f'(z)) g, and the cotangent of a real input
is the real part of what a complex formula gives (:func:`fit_cotangent`), summed back
over broadcast axes.

The :class:`Tape` records stage applications on :class:`Var` values while it is
active and walks them in reverse recording order (a reverse topological order),
summing cotangents of values used more than once.
"""
from __future__ import annotations

import threading
import weakref
from types import SimpleNamespace

import numpy as np

from .backend import array_module

REGISTRY: dict[str, type] = {}


def register(cls):
    """Class decorator: make a stage visible to the gradient-check suite.

    A registered stage must define ``cases(xp, dtype, rng)`` returning a list of
    ``(stage, inputs)`` pairs; a stage without cases is a gradcheck failure.
    """
    name = f"{cls.__module__}.{cls.__qualname__}"
    REGISTRY[name] = cls
    cls.registered_name = name
    return cls


class Context(SimpleNamespace):
    """What a stage's forward saves for its VJP."""


_state = threading.local()


def _tapes():
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def active_tape():
    stack = _tapes()
    return stack[-1] if stack else None


def unwrap(x):
    """The array inside a :class:`Var` (anything else is returned as is)."""
    return x.value if isinstance(x, Var) else x


def _unbroadcast(g, shape):
    xp = array_module(g)
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return xp.reshape(g, shape)


def fit_cotangent(g, x):
    """Bring cotangent ``g`` to the shape and field of input ``x``.

    Real inputs keep dL/dx = Re(g); broadcast axes are summed back ("unbroadcast").
    """
    if g is None:
        return None
    xp = array_module(g)
    x_is_complex = bool(xp.iscomplexobj(x))
    if xp.iscomplexobj(g) and not x_is_complex:
        g = g.real
    shape = np.shape(x)
    if np.shape(g) != shape:
        g = _unbroadcast(g, shape)
    if np.ndim(x) == 0 and hasattr(g, "reshape"):
        g = g.reshape(())
    return g


def is_differentiable(x) -> bool:
    """Float or complex values carry gradients; integers, booleans and None do not."""
    if x is None or isinstance(x, (bool, str)):
        return False
    dt = getattr(x, "dtype", None)
    if dt is None:
        return isinstance(x, (float, complex))
    return dt.kind in "fc"


class Stage:
    """A differentiable step: ``forward`` and its hand-derived ``vjp`` side by side."""

    linear = False  #: linear in the first input (the others held fixed)
    nondiff: tuple[int, ...] = ()  #: input positions that never get a cotangent

    def forward(self, ctx, *inputs):
        raise NotImplementedError

    def vjp(self, ctx, g):
        if self.linear:
            return (self.adjoint(ctx, g) if ctx.needs[0] else None,) + (None,) * (ctx.n_inputs - 1)
        raise NotImplementedError

    def adjoint(self, ctx, y):
        """A^H y for a linear stage (same ctx as the forward)."""
        raise NotImplementedError

    @classmethod
    def cases(cls, xp, dtype, rng):
        """``[(stage, inputs), ...]`` for the gradient-check suite."""
        raise NotImplementedError(f"{cls.__name__} is registered without check cases")

    # -- application -----------------------------------------------------------------
    def apply(self, *inputs):
        """Run the forward on plain arrays; returns ``(output, ctx)``."""
        ctx = Context(n_inputs=len(inputs), needs=(True,) * len(inputs))
        out = self.forward(ctx, *inputs)
        return out, ctx

    def cotangents(self, ctx, g, inputs, needs=None):
        """``vjp`` fitted to the inputs' shapes and fields.

        ``needs``: one bool per input, the cotangents wanted (default all); the stage sees it
        as ``ctx.needs`` and the others come back as None.
        """
        needs = tuple(bool(n) for n in needs) if needs is not None else (True,) * len(inputs)
        ctx.needs = tuple(n and i not in self.nondiff and is_differentiable(x)
                          for i, (n, x) in enumerate(zip(needs, inputs)))
        gs = self.vjp(ctx, g)
        if len(gs) != len(inputs):
            raise RuntimeError(f"{type(self).__name__}.vjp returned {len(gs)} cotangents "
                               f"for {len(inputs)} inputs")
        return tuple(fit_cotangent(gi, x) if need else None for need, gi, x in zip(ctx.needs, gs, inputs))

    def __call__(self, *inputs):
        values = tuple(unwrap(x) for x in inputs)
        out, ctx = self.apply(*values)
        tape = active_tape()
        if tape is None or not any(isinstance(x, Var) and x.tape is tape for x in inputs):
            return out
        return tape._record(self, ctx, inputs, values, out)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Var:
    """A value recorded on a tape. Arithmetic on Vars records stages."""

    __array_priority__ = 1000  # so ndarray <op> Var defers to Var's reflected operator

    def __init__(self, value, tape):
        self.value = value
        # weak: the tape holds its nodes, each node its output Var; a strong reference back
        # would make a cycle that keeps every stage context (im2col buffers, FFT grids) alive
        # until the next garbage collection instead of freeing it when the tape goes
        self._tape = weakref.ref(tape)

    @property
    def tape(self):
        """The tape that recorded this value (None once that tape is gone)."""
        return self._tape()

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)

    def __repr__(self):
        return f"Var(shape={getattr(self.value, 'shape', ())}, dtype={getattr(self.value, 'dtype', type(self.value))})"

    # arithmetic is defined in adjoints.ops (it needs the stages); see ops._install_operators


class _Node:
    __slots__ = ("stage", "ctx", "inputs", "values", "output")

    def __init__(self, stage, ctx, inputs, values, output):
        self.stage, self.ctx, self.inputs, self.values, self.output = stage, ctx, inputs, values, output


class Tape:
    """Records stage applications; ``gradient`` walks them backwards.

    Use as a context manager::

        with Tape() as tape:
            x = tape.watch(x0)
            loss = f(x)
        (gx,) = tape.gradient(loss, [x])
    """

    def __init__(self):
        self.nodes: list[_Node] = []

    def __enter__(self):
        _tapes().append(self)
        return self

    def __exit__(self, *exc):
        _tapes().remove(self)
        return False

    def watch(self, value):
        """Mark ``value`` as a parameter: a leaf Var whose gradient can be asked for."""
        if isinstance(value, Var):
            value = value.value
        return Var(value, self)

    def _record(self, stage, ctx, inputs, values, out):
        var = Var(out, self)
        self.nodes.append(_Node(stage, ctx, inputs, values, var))
        return var

    def gradient(self, y, wrt, seed=None):
        """Cotangents of ``wrt`` (a list of Vars) for output ``y`` (seed defaults to ones).

        A Var that does not influence ``y`` gets zeros. Only the nodes on a path from ``wrt``
        to ``y`` run their VJP, and each is told (``ctx.needs``) which of its inputs lie on
        such a path: the cotangents of constants are never computed.
        """
        if not isinstance(y, Var) or y.tape is not self:
            raise ValueError("gradient: y was not computed on this tape")
        xp = array_module(y.value)
        if seed is None:
            seed = xp.ones_like(y.value)
        grads = {id(y): seed}
        keep = {id(y): y}  # holds the Vars alive so their ids stay unique
        wanted = {id(v) for v in wrt}
        # the values that depend on a watched one (recording order is a topological order)
        live = set(wanted)
        for node in self.nodes:
            if any(id(x) in live for x in node.inputs if isinstance(x, Var)):
                live.add(id(node.output))
        for node in reversed(self.nodes):
            k_out = id(node.output)
            g = grads.get(k_out) if k_out in wanted else grads.pop(k_out, None)
            if g is None:
                continue
            needs = tuple(isinstance(x, Var) and x.tape is self and id(x) in live for x in node.inputs)
            if not any(needs):
                continue
            cts = node.stage.cotangents(node.ctx, g, node.values, needs)
            for x, gx in zip(node.inputs, cts):
                if gx is None or not isinstance(x, Var) or x.tape is not self:
                    continue
                k = id(x)
                if k in grads:
                    grads[k] = grads[k] + gx  # a value used twice gets the sum
                else:
                    grads[k] = gx
                    keep[k] = x
        out = []
        for v in wrt:
            g = grads.get(id(v))
            out.append(g if g is not None else xp.zeros_like(unwrap(v)))
        return out


def value_and_grad(f, argnums=0):
    """``value_and_grad(f)(*args) -> (f(*args), grads)`` with grads for ``argnums``.

    ``f`` must return a scalar (0-d) Var; ``argnums`` is an int or a tuple of ints,
    and the gradient comes back in the same form.
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    def wrapped(*args, **kwargs):
        with Tape() as tape:
            args = list(args)
            watched = []
            for i in nums:
                args[i] = tape.watch(args[i])
                watched.append(args[i])
            out = f(*args, **kwargs)
        if not isinstance(out, Var):
            xp = array_module(out)
            zeros = [xp.zeros_like(unwrap(w)) for w in watched]
            return out, zeros[0] if single else tuple(zeros)
        if np.size(out.value) != 1:
            raise ValueError("value_and_grad: f must return a scalar")
        grads = tape.gradient(out, watched)
        return out.value, grads[0] if single else tuple(grads)

    return wrapped
