"""One code path for NumPy and CuPy.

Arrays carry their module (``array_module(x)``); a device is chosen once by
``get_xp(device)`` where ``device`` is ``"auto"`` (CuPy when a CUDA device is usable,
else NumPy), ``"cpu"`` or ``"gpu"`` (:mod:`adjoints.settings` holds the default device and
the CPU threads). FFTs go through this module: ``scipy.fft`` with worker threads on the
CPU, ``cupyx.scipy.fft`` on the GPU. float32 is the default real dtype; checks run in
float64.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import scipy.fft as _sfft

from .settings import DEVICES, DeviceError, default_device, threads  # noqa: F401 (DeviceError: API)

DEFAULT_DTYPE = np.float32


@lru_cache(maxsize=1)
def _cupy():
    try:
        import cupy  # noqa: F401

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        cupy.zeros(1)  # a driver that is present but broken fails here, not later
        return cupy
    except Exception:  # ImportError, CUDARuntimeError, missing libraries
        return None


def cuda_available() -> bool:
    """True when CuPy imports and a CUDA device answers."""
    return _cupy() is not None


def resolve_device(device: str | None = None) -> str:
    """Return ``"cpu"`` or ``"gpu"`` for ``device`` in ``auto|cpu|gpu`` (or the default device)."""
    device = (device or default_device()).lower()
    if device not in DEVICES:
        raise DeviceError(f"device must be auto, cpu or gpu, not {device!r}")
    if device == "auto":
        return "gpu" if cuda_available() else "cpu"
    if device == "gpu" and not cuda_available():
        raise DeviceError("device 'gpu' requested but no usable CUDA device/CuPy was found")
    return device


def get_xp(device: str | None = None):
    """The array module (numpy or cupy) for ``device``."""
    return _cupy() if resolve_device(device) == "gpu" else np


def array_module(*arrays):
    """numpy or cupy, from the arrays' own type (scalars and None count as numpy)."""
    cp = _cupy() if any(type(a).__module__.startswith("cupy") for a in arrays) else None
    return cp if cp is not None else np


def is_gpu_array(x) -> bool:
    return type(x).__module__.startswith("cupy")


def to_numpy(x):
    """Host copy of an array (no-op for NumPy arrays and scalars)."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def asarray(x, xp=np, dtype=None):
    """``x`` on ``xp``'s device, with ``dtype`` if given."""
    if xp is np:
        return np.asarray(to_numpy(x), dtype=dtype)
    return xp.asarray(x, dtype=dtype)


def complex_dtype(real_dtype):
    """complex64 for float32, complex128 for float64."""
    return np.result_type(real_dtype, np.complex64)


def real_dtype(dtype):
    """float32 for complex64/float32, float64 for complex128/float64."""
    return np.finfo(np.dtype(dtype)).dtype


def _fft_module(x):
    if is_gpu_array(x):
        import cupyx.scipy.fft as cfft

        return cfft, {}
    return _sfft, {"workers": threads()}


def fft2(x, norm="backward"):
    """2D FFT over the last two axes."""
    mod, kw = _fft_module(x)
    return mod.fft2(x, axes=(-2, -1), norm=norm, **kw)


def ifft2(x, norm="backward"):
    """Inverse 2D FFT over the last two axes."""
    mod, kw = _fft_module(x)
    return mod.ifft2(x, axes=(-2, -1), norm=norm, **kw)


def rfft2(x, norm="backward"):
    mod, kw = _fft_module(x)
    return mod.rfft2(x, axes=(-2, -1), norm=norm, **kw)


def irfft2(x, s, norm="backward"):
    mod, kw = _fft_module(x)
    return mod.irfft2(x, s=s, axes=(-2, -1), norm=norm, **kw)


def fftn(x, axes=None, norm="backward"):
    mod, kw = _fft_module(x)
    return mod.fftn(x, axes=axes, norm=norm, **kw)


def ifftn(x, axes=None, norm="backward"):
    mod, kw = _fft_module(x)
    return mod.ifftn(x, axes=axes, norm=norm, **kw)


def fft_backend_name(xp) -> str:
    return "cupyx.scipy.fft (cuFFT)" if xp is not np else f"scipy.fft ({threads()} workers)"


def freq_grid(shape, pixel_size=1.0, xp=np, dtype=DEFAULT_DTYPE, rfft=False):
    """Spatial-frequency coordinates (qy, qx) in 1/length for an FFT of ``shape``.

    Frequencies follow the FFT layout (DC at [0, 0]); ``rfft`` gives the half grid.
    """
    ny, nx = shape
    qy = xp.fft.fftfreq(ny, d=pixel_size).astype(dtype)
    qx = (xp.fft.rfftfreq if rfft else xp.fft.fftfreq)(nx, d=pixel_size).astype(dtype)
    return qy[:, None], qx[None, :]


_POOL = None


def pool():
    """A shared thread pool of :func:`threads` workers for CPU work that releases the GIL
    (NumPy ufuncs, ``add.at``, random draws)."""
    global _POOL
    n = threads()
    if _POOL is None or _POOL._max_workers != n:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cutem")
    return _POOL


def _forget_pool_after_fork():
    """A forked child inherits the pool object but not its threads; the executor would wait
    for ever for idle workers that do not exist (Dask's process scheduler forks). The child
    builds a fresh pool on first use."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


#: elements per block of a blocked random draw (below this: one draw from the generator itself)
DRAW_BLOCK = 2 ** 20


def blocked_draw(rng, draw, shape, dtype):
    """Fill an array of ``shape`` by ``draw(generator, index)`` over fixed blocks of rows, on
    the thread pool.

    NumPy's generators are serial, and a 4096² Poisson draw takes a second; split over
    threads it takes half. Each block draws from its own child generator
    (``rng.spawn``, independent streams by SeedSequence construction) and the blocks
    depend only on the array size, so the result is the same for any number of threads.
    Arrays under :data:`DRAW_BLOCK` elements are drawn from ``rng`` directly (same stream as
    ``draw(rng, ...)`` on the whole array).
    """
    shape = tuple(int(n) for n in shape)
    size = int(np.prod(shape))
    if size < DRAW_BLOCK or len(shape) == 0 or shape[0] < 2:
        return np.asarray(draw(rng, ...)).astype(dtype, copy=False)
    nb = min(shape[0], -(-size // DRAW_BLOCK))
    edges = np.linspace(0, shape[0], nb + 1).astype(np.int64)
    kids = rng.spawn(nb)
    out = np.empty(shape, dtype=dtype)

    def work(k):
        sl = slice(int(edges[k]), int(edges[k + 1]))
        out[sl] = draw(kids[k], sl)

    list(pool().map(work, range(nb)))
    return out


def default_rng(seed=None, xp=np):
    """A seeded generator on ``xp``'s device (numpy.random.Generator or cupy's)."""
    if xp is np:
        return np.random.default_rng(seed)
    return xp.random.default_rng(seed)


class GridCache:
    """A small bounded memo for grid-sized arrays (transfer functions, MTFs).

    A simulation evaluates the same CTF or MTF for every tilt and every micrograph of a
    batch; recomputing it costs more than the FFTs it multiplies. Keys must hold
    everything the array depends on (shape, dtype, device module, parameter values).
    """

    def __init__(self, maxsize=4):
        self.maxsize = maxsize
        self._d = {}

    def get(self, key, make):
        hit = self._d.pop(key, None)
        if hit is None:
            hit = make()
            while len(self._d) >= self.maxsize:
                self._d.pop(next(iter(self._d)))
        self._d[key] = hit  # most recent last
        return hit

    def clear(self):
        self._d.clear()


def scalars_key(values):
    """Hashable key of 0-d arrays or numbers (their float values)."""
    return tuple(float(to_numpy(v)) for v in values)
