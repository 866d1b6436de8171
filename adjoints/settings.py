"""The engine's process-wide settings: CPU threads, default device, allocator.

Plain functions, set by the application (cutem sets them from its ``CUTEM_*`` environment
variables when it is imported); the engine itself reads no environment variable and changes
nothing on import. This module imports neither NumPy nor the rest of the engine, so that an
application can configure it at its own import for free.
"""
from __future__ import annotations

import os

DEVICES = ("auto", "cpu", "gpu")

_threads: int | None = None  # None: every core this process may use
_device = "auto"
_keeps_freed = False


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


def set_threads(n: int | None) -> int | None:
    """Worker threads for CPU FFTs and the engine's thread pool (None: all usable cores).

    Returns the previous setting, so that a caller can put it back.
    """
    global _threads
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 1):
        raise ValueError(f"threads must be a positive integer or None, not {n!r}")
    old, _threads = _threads, (None if n is None else int(n))
    return old


def thread_setting() -> int | None:
    """What :func:`set_threads` was given last (None: not set, all cores)."""
    return _threads


def threads() -> int:
    """Worker threads for CPU work: the :func:`set_threads` value, else the usable cores."""
    if _threads is not None:
        return _threads
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the cores this process may use
    except AttributeError:
        return os.cpu_count() or 1


def set_default_device(name: str) -> str:
    """The device that ``get_xp()`` and ``resolve_device()`` use when given none:
    ``"auto"`` (CuPy when a CUDA device is usable), ``"cpu"`` or ``"gpu"``. Checked for
    availability only when used. Returns the previous default."""
    global _device
    name = str(name).lower()
    if name not in DEVICES:
        raise DeviceError(f"device must be auto, cpu or gpu, not {name!r}")
    old, _device = _device, name
    return old


def default_device() -> str:
    return _device


# glibc's mallopt parameters (<malloc.h>) and their documented defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def keep_freed_memory(keep: bool = True) -> bool:
    """Ask glibc's malloc to keep freed blocks in the heap instead of unmapping them.

    A 4096² simulation allocates and frees dozens of 64-128 MiB arrays (FFT outputs, scatter
    grids). glibc serves each from a fresh ``mmap`` and returns it with ``munmap`` on free, so
    every call page-faults its memory in again; on virtual machines that made a warm 4096²
    potential 0.55-1.0 s instead of a steady 0.55 s (measured, 2-core VM). With ``M_MMAP_MAX``
    = 0 and a high ``M_TRIM_THRESHOLD`` freed memory is reused directly (the process's resident
    memory then stays near its peak until exit, like a caching allocator). ``keep=False``
    puts glibc's default values back (the adaptive mmap threshold stays off once a value has
    been set). No effect off glibc. Returns whether freed memory is now kept.
    """
    global _keeps_freed
    if not keep and not _keeps_freed:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mmap_max, trim = (0, 2 ** 31 - 1) if keep else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM)
        ok = libc.mallopt(_M_MMAP_MAX, mmap_max) == 1
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim)) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        ok = False
    _keeps_freed = bool(keep and ok)
    return _keeps_freed


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` is in effect."""
    return _keeps_freed
