"""Optimisers over dicts of arrays: Adam, and a bridge to scipy.optimize (L-BFGS-B).

Both take a ``value_and_grad(params) -> (value, grads)`` callable where ``params`` and
``grads`` are dicts of arrays (or scalars) with the same keys.
"""
from __future__ import annotations

import numpy as np
import scipy.optimize

from . import backend as B


class Adam:
    """Adam (Kingma & Ba 2015, arXiv:1412.6980): bias-corrected first and second moments.

    ``step(params, grads)`` returns the updated dict; state is kept per key.
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m, self.v, self.t = {}, {}, 0

    def step(self, params, grads):
        self.t += 1
        out = {}
        for k, p in params.items():
            g = grads.get(k)
            if g is None:
                out[k] = p
                continue
            m = self.m.get(k, 0 * g)
            v = self.v.get(k, 0 * g)
            m = self.b1 * m + (1 - self.b1) * g
            v = self.b2 * v + (1 - self.b2) * g * g
            self.m[k], self.v[k] = m, v
            mhat = m / (1 - self.b1 ** self.t)
            vhat = v / (1 - self.b2 ** self.t)
            xp = B.array_module(vhat)
            out[k] = p - self.lr * mhat / (xp.sqrt(vhat) + self.eps)
        return out

    def state_dict(self):
        return {"t": self.t, "m": dict(self.m), "v": dict(self.v), "lr": self.lr}

    def load_state_dict(self, state):
        self.t, self.m, self.v, self.lr = int(state["t"]), dict(state["m"]), dict(state["v"]), state["lr"]


def _flatten(params, keys):
    return np.concatenate([np.ravel(B.to_numpy(params[k])).astype(np.float64) for k in keys])


def minimize_lbfgsb(value_and_grad, params, bounds=None, maxiter=100, tol=None, callback=None):
    """Minimise with scipy's L-BFGS-B using exact gradients.

    ``bounds`` maps a key to ``(low, high)`` (None for open). Returns
    ``(best_params, scipy_result)``; arrays come back on the device and dtype they had.
    """
    keys = list(params)
    shapes = {k: np.shape(params[k]) for k in keys}
    xps = {k: B.array_module(params[k]) for k in keys}
    dtypes = {k: getattr(params[k], "dtype", np.float64) for k in keys}
    sizes = [int(np.prod(shapes[k])) for k in keys]

    def unflatten(vec):
        out, i = {}, 0
        for k, n in zip(keys, sizes):
            arr = vec[i:i + n].reshape(shapes[k])
            out[k] = xps[k].asarray(arr.astype(dtypes[k]))
            i += n
        return out

    def fun(vec):
        val, grads = value_and_grad(unflatten(vec))
        return float(B.to_numpy(val)), _flatten(grads, keys)

    bnds = None
    if bounds:
        bnds = []
        for k, n in zip(keys, sizes):
            lo, hi = bounds.get(k, (None, None))
            bnds += [(lo, hi)] * n
    res = scipy.optimize.minimize(fun, _flatten(params, keys), jac=True, method="L-BFGS-B",
                                  bounds=bnds, tol=tol, callback=callback,
                                  options={"maxiter": maxiter})
    return unflatten(res.x), res
