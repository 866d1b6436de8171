"""Run the checks over every registered stage and tabulate them.

Each registered stage supplies ``cases(xp, dtype, rng)``. For each case, linear stages
get a dot test and every stage a VJP check against float64 finite differences. A
registered stage without cases, or whose cases raise, is a failure, not a skip.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass

import numpy as np

from . import backend as B
from .check import check_vjp, dottest
from .stage import REGISTRY

#: (dot-test tolerance, VJP tolerance) per real dtype
TOLERANCES = {np.dtype(np.float64): (1e-10, 1e-6), np.dtype(np.float32): (1e-5, 2e-3)}


@dataclass
class Row:
    stage: str
    backend: str
    dtype: str
    dot_error: float | None
    dot_ratio: float | None
    vjp_error: float | None
    passed: bool
    note: str = ""


def run(backends=("numpy",), dtypes=(np.float64,), names=None, seed=0):
    """Check every registered stage; returns a list of :class:`Row`."""
    rows = []
    for backend in backends:
        xp = np if backend == "numpy" else B.get_xp("gpu")
        for dtype in dtypes:
            dtol, vtol = TOLERANCES[np.dtype(dtype)]
            for name in sorted(REGISTRY):
                if names and not any(n in name for n in names):
                    continue
                cls = REGISTRY[name]
                rng = np.random.default_rng(seed)
                short = name.split(".", 1)[1] if name.count(".") else name
                try:
                    cases = cls.cases(xp, dtype, rng)
                    if not cases:
                        raise NotImplementedError("no check cases")
                except Exception as exc:  # a stage without cases is a failure
                    rows.append(Row(short, backend, np.dtype(dtype).name, None, None, None, False,
                                    f"cases: {exc}"))
                    continue
                dmax, rworst, vmax, ok, note = None, None, 0.0, True, ""
                for stage, inputs in cases:
                    try:
                        if stage.linear:
                            d = dottest(stage, inputs, rng, tol=dtol)
                            if dmax is None or d.error > dmax:
                                dmax = d.error
                            if rworst is None or abs(d.ratio - 1) > abs(rworst - 1):
                                rworst = d.ratio
                            ok &= d.passed
                        v = check_vjp(stage, inputs, rng, tol=vtol)
                        vmax = max(vmax, v.error)
                        ok &= v.passed
                    except Exception as exc:
                        ok, note = False, f"{type(exc).__name__}: {exc}"
                        note += " | " + traceback.format_exc(limit=2).splitlines()[-1]
                        break
                rows.append(Row(short, backend, np.dtype(dtype).name, dmax, rworst, vmax, bool(ok), note))
    return rows


def format_table(rows) -> str:
    def f(x):
        return "-" if x is None else f"{x:.1e}"

    w = max([len(r.stage) for r in rows] + [5])
    lines = [f"{'stage':<{w}}  backend  dtype    dot-err  dot-ratio  vjp-err  result"]
    for r in rows:
        ratio = "-" if r.dot_ratio is None else f"{r.dot_ratio:.9f}"
        lines.append(f"{r.stage:<{w}}  {r.backend:<7}  {r.dtype:<7}  {f(r.dot_error):>7}  {ratio:>9}  "
                     f"{f(r.vjp_error):>7}  {'PASS' if r.passed else 'FAIL'}"
                     + (f"  {r.note}" if r.note else ""))
    n_fail = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)
