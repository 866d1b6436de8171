"""Gradients after issue 18's backward-pass work equal those of the code before it (1e-10, float64).

The reference numbers were recorded by tests/grad_reference.py on main at 788b0b9 (before the
change); the cases differentiate one parameter family or several at once (the tape then skips
different cotangents).
"""
from pathlib import Path

import numpy as np
import pytest

from grad_reference import CASES, gradients

REF = np.load(Path(__file__).parent / "data" / "grad_reference.npz")


@pytest.mark.parametrize("name,method,wrt", CASES, ids=[c[0] for c in CASES])
def test_gradients_equal_the_recorded_ones_of_the_code_before(name, method, wrt):
    val, grads = gradients(name, method, wrt)
    assert val == pytest.approx(float(REF[f"{name}/loss"]), rel=1e-10)
    for k in wrt:
        want = REF[f"{name}/{k}"]
        assert float(np.abs(want).max()) > 0, k      # the case really has a gradient for k
        err = float(np.abs(grads[k] - want).max() / np.abs(want).max())
        assert err < 1e-10, (k, err)
