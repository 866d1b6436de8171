"""One stage instance applied twice on one tape: each application's gradient is its own.

A stage that keeps per-call state on ``self`` instead of ``ctx`` (interpolation corners, a
saved input, a shape) hands the second call's state to the first call's backward pass. For
every registered stage, the instance of one of its check cases is applied to two inputs on
one tape (another case's inputs where the instance accepts them, else its own inputs scaled
by 0.9, so the two calls never see the same values), and the gradients are compared with
those of each application on its own tape, computed with fresh instances.
"""
from __future__ import annotations

import numpy as np
import pytest

import adjoints.nn  # noqa: F401  (registers the network stages)
import cutem
from adjoints.stage import REGISTRY, Tape, is_differentiable

cutem.load_all()
NAMES = sorted(n for n in REGISTRY if n.startswith(("adjoints.", "cutem.")))


def _cases(cls):
    return cls.cases(np, np.float64, np.random.default_rng(7))  # same seed: equal, fresh instances


def _slots(stage, inputs):
    return [k for k, x in enumerate(inputs) if k not in stage.nondiff and is_differentiable(x)]


def _accepts(stage, inputs):
    try:
        stage.apply(*inputs)
    except (ValueError, TypeError, IndexError):  # a shape or arity the instance's configuration refuses
        return False
    return True


def _second_inputs(cases, i):
    """Inputs of another case that the instance of case ``i`` accepts, else case ``i``'s own
    (scaled by 0.9: different values, same domain), and the index of the case they come from."""
    stage, own = cases[i]
    for j, (_, other) in enumerate(cases):
        if j != i and len(other) == len(own) and _accepts(stage, other):
            return j, other
    return i, tuple(x * 0.9 if is_differentiable(x) and np.ndim(x) else x for x in own)


def _seed(out, rng):
    r = rng.standard_normal(np.shape(out))
    if np.iscomplexobj(out):
        r = r + 1j * rng.standard_normal(np.shape(out))
    return np.asarray(r)


def _pairing(out, seed):
    """L = Re <seed, out>, whose cotangent with respect to ``out`` is ``seed``."""
    prod = (out * np.conj(seed)).sum()
    return prod.real if np.iscomplexobj(seed) else prod


def _taped(stage, inputs, seed, tape):
    slots = _slots(stage, inputs)
    args = list(inputs)
    for k in slots:
        args[k] = tape.watch(inputs[k])
    return _pairing(stage(*args), seed), [args[k] for k in slots]


def _alone(stage, inputs, seed):
    with Tape() as tape:
        loss, wrt = _taped(stage, inputs, seed, tape)
    return tape.gradient(loss, wrt)


@pytest.mark.parametrize("name", NAMES)
def test_one_instance_applied_twice_on_a_tape_gives_each_call_its_own_gradient(name):
    cls = REGISTRY[name]
    cases = _cases(cls)
    stage, x1 = cases[0]
    j, x2 = _second_inputs(cases, 0)
    if not _slots(stage, x1):
        pytest.skip(f"{name}: no differentiable input")
    rng = np.random.default_rng(3)
    s1 = _seed(stage.apply(*x1)[0], rng)
    s2 = _seed(stage.apply(*x2)[0], rng)
    with Tape() as tape:
        l1, w1 = _taped(stage, x1, s1, tape)
        l2, w2 = _taped(stage, x2, s2, tape)
        total = l1 + l2
    together = tape.gradient(total, w1 + w2)
    apart = _alone(_cases(cls)[0][0], x1, s1) + _alone(_cases(cls)[0][0], x2, s2)
    assert len(together) == len(apart)
    for k, (a, b) in enumerate(zip(together, apart)):
        scale = max(float(np.abs(b).max()), 1e-300) if np.size(b) else 1.0
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * scale,
                                   err_msg=f"{name}: input {k} (second call with case {j}'s inputs)")
