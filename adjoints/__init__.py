"""adjoints: a small reverse-mode engine with hand-derived VJPs on NumPy or CuPy.

EM-agnostic (it never imports cutem, reads no environment variable and changes nothing on
import). The pieces: :mod:`~adjoints.settings` (threads, default device, allocator),
:mod:`~adjoints.backend` (device and FFTs), :mod:`~adjoints.stage` (Stage, Tape, registry),
:mod:`~adjoints.ops` (primitive stages), :mod:`~adjoints.check` (dot test, VJP check,
Taylor test), :mod:`~adjoints.optim` (Adam, L-BFGS-B bridge), :mod:`~adjoints.gradcheck`
(the suite).

Only the settings are imported with the package (an application configures the engine at
its own import without loading NumPy); every other name is imported on first use, and with
it :mod:`~adjoints.ops`, which gives :class:`Var` its arithmetic.
"""
from __future__ import annotations

import importlib

from .settings import keep_freed_memory, set_default_device, set_threads

_LAZY = {"array_module": "backend", "get_xp": "backend", "to_numpy": "backend",
         "check_vjp": "check", "dottest": "check", "taylor_test": "check",
         "Adam": "optim", "minimize_lbfgsb": "optim",
         "REGISTRY": "stage", "Stage": "stage", "active_tape": "stage", "Tape": "stage", "Var": "stage", "register": "stage",
         "unwrap": "stage", "value_and_grad": "stage"}
_MODULES = ("backend", "check", "gradcheck", "nn", "ops", "optim", "stage")


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        importlib.import_module(f"{__name__}.ops")  # Var's operators are installed there
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'adjoints' has no attribute {name!r}")


__all__ = ["backend", "ops", "settings", "keep_freed_memory", "set_default_device", "set_threads",
           *_LAZY]
