"""The tape asks each stage only for the cotangents on a path to the watched values
(``ctx.needs``); a stage that skips the others must return the needed ones unchanged."""
import numpy as np
import pytest

import adjoints.nn  # noqa: F401  (registers the network stages)
import cutem
from adjoints import Tape, ops
from adjoints.stage import REGISTRY, Stage, is_differentiable

cutem.load_all()
NAMES = sorted(n for n in REGISTRY if n.startswith(("adjoints.", "cutem.")))


@pytest.mark.parametrize("name", NAMES)
def test_asking_for_one_cotangent_gives_the_same_number_as_asking_for_all(name):
    rng = np.random.default_rng(7)
    for stage, inputs in REGISTRY[name].cases(np, np.float64, rng):
        out, ctx = stage.apply(*inputs)
        g = rng.standard_normal(np.shape(out)) + (1j * rng.standard_normal(np.shape(out)) if np.iscomplexobj(out) else 0)
        full = stage.cotangents(ctx, g, inputs)
        slots = [k for k, x in enumerate(inputs) if k not in stage.nondiff and is_differentiable(x)]
        for k in slots:
            needs = tuple(j == k for j in range(len(inputs)))
            one = stage.cotangents(stage.apply(*inputs)[1], g, inputs, needs)
            assert all(c is None for j, c in enumerate(one) if j != k), (name, k)
            scale = max(float(np.abs(full[k]).max()), 1e-300)
            np.testing.assert_allclose(one[k], full[k], rtol=1e-12, atol=1e-14 * scale, err_msg=f"{name}: input {k}")


class _Counting(Stage):
    """y = a·b, counting which cotangents its VJP is asked for."""

    asked = []

    def forward(self, ctx, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    def vjp(self, ctx, g):
        _Counting.asked.append(ctx.needs)
        return g * ctx.b, g * ctx.a


def test_the_tape_skips_constants_and_nodes_off_the_path_to_the_watched_values():
    _Counting.asked = []
    with Tape() as tape:
        x = tape.watch(np.array(2.0))
        y = tape.watch(np.array(3.0))
        c = np.array(5.0)
        u = _Counting()(x, c)          # on the path from x: needs (True, False)
        v = _Counting()(y, c)          # on the path from y only: not run when only x is asked for
        loss = ops.sum(u * v)
    gx, = tape.gradient(loss, [x])
    assert float(gx) == pytest.approx(5.0 * 15.0)
    assert _Counting.asked == [(True, False)]
