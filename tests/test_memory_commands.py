"""The memory plan of the commands other than simulate (cutem.memory: reconstruct_bytes,
render_bytes): each estimate bounds the tracemalloc peak from above by less than 2x, and a
command refuses before allocating, naming the option that drives the estimate."""
from __future__ import annotations

import numpy as np
import pytest

from cutem import memory


@pytest.mark.parametrize("method", ["wbp", "sirt"])
def test_reconstruct_estimate_bounds_the_measured_peak_within_2x(method):
    from cutem import tomo

    n, ny, nx, nz = 21, 64, 96, 48
    st = np.random.default_rng(0).normal(size=(n, ny, nx)).astype(np.float32)
    ang = np.linspace(-60, 60, n)
    _, peak = memory.measure_peak(lambda: tomo.reconstruct(st, ang, 0.0, nz, method, "shepp-logan", 1.0, 5, 1.0,
                                                           False))
    est = memory.reconstruct_bytes(n, ny, nx, nz, method)
    assert peak <= est <= 2 * peak, (peak, est)


def test_denoise_halves_estimate_bounds_the_measured_peak_within_2x():
    from cutem import tomo_denoise

    rng = np.random.default_rng(0)
    tiny = [tuple(rng.normal(size=(8, 8, 8)) for _ in range(2))]
    tomo_denoise.denoise_halves(tiny, mask=None)  # scikit-image loads its TV lazily: not the filter's peak
    shape = (24, 64, 80)
    halves = [tuple(rng.normal(size=shape).astype(np.float32) + 0.5 for _ in range(2)) for _ in range(2)]
    _, peak = memory.measure_peak(lambda: tomo_denoise.denoise_halves(halves))
    est = memory.denoise_halves_bytes(*shape, splits=2) - 2 * 2 * 4 * int(np.prod(shape))  # the halves exist
    assert peak <= est <= 2 * peak, (peak, est)


@pytest.mark.parametrize("mode", ["dvr", "mip"])
def test_render_estimate_bounds_the_measured_peak_within_2x(mode):
    from cutem import render as R

    v = np.random.default_rng(0).normal(size=(40, 64, 80)).astype(np.float32)
    tf = R.TransferFunction.load("cryo") if mode == "dvr" else None
    _, peak = memory.measure_peak(lambda: R.render(v, mode, tf, 30, 20, False, (1, 99.9), 0.5, 1.0))
    est = memory.render_bytes(v.shape, mode, max_size=0)
    assert peak <= est <= 2 * peak, (peak, est)


def test_refusal_is_one_line_naming_the_setting(monkeypatch):
    from cutem.errors import InputError

    monkeypatch.setenv("CUTEM_MEMORY_LIMIT", "10M")
    need = memory.reconstruct_bytes(61, 512, 512, 512)
    with pytest.raises(InputError, match=r"needs an estimated .* GB, over the 0\.01 GB free on cpu; "
                                         r"a smaller --thickness") as e:
        memory.check_bytes(need, "reconstructing", "a smaller --thickness or a binned stack", "cpu")
    assert "\n" not in str(e.value)
