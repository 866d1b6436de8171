"""adjoints: a small reverse-mode engine with hand-derived VJPs on NumPy or CuPy.

EM-agnostic (it never imports cutem). The pieces: :mod:`~adjoints.backend` (device and
FFTs), :mod:`~adjoints.stage` (Stage, Tape, registry), :mod:`~adjoints.ops` (primitive
stages), :mod:`~adjoints.check` (dot test, VJP check, Taylor test),
:mod:`~adjoints.optim` (Adam, L-BFGS-B bridge), :mod:`~adjoints.gradcheck` (the suite).
"""
from . import backend, ops
from .backend import array_module, get_xp, to_numpy
from .check import check_vjp, dottest, taylor_test
from .optim import Adam, minimize_lbfgsb
from .stage import REGISTRY, Stage, Tape, Var, register, unwrap, value_and_grad

__all__ = ["backend", "ops", "array_module", "get_xp", "to_numpy", "check_vjp", "dottest",
           "taylor_test", "Adam", "minimize_lbfgsb", "REGISTRY", "Stage", "Tape", "Var",
           "register", "unwrap", "value_and_grad"]
