"""The adjoints engine: stages, tape, checks, optimisers, settings."""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import adjoints.backend as B
from adjoints import (Adam, Stage, Tape, check_vjp, dottest, minimize_lbfgsb, ops, settings, taylor_test,
                      value_and_grad)
from adjoints.gradcheck import run
from adjoints.stage import REGISTRY, register


def test_every_primitive_stage_passes_gradcheck_in_float64():
    rows = run(("numpy",), (np.float64,), names=["ops."])
    assert len(rows) >= 25
    bad = [(r.stage, r.note, r.dot_error, r.vjp_error) for r in rows if not r.passed]
    assert not bad
    assert max(r.vjp_error for r in rows) < 1e-6
    assert max(r.dot_error for r in rows if r.dot_error is not None) < 1e-10


def test_primitive_stages_pass_in_float32_against_float64_reference():
    rows = run(("numpy",), (np.float32,), names=["ops."])
    assert all(r.passed for r in rows), [(r.stage, r.vjp_error) for r in rows if not r.passed]


class _BrokenExp(ops.Exp):
    """exp with a VJP that forgets the conjugate: wrong for complex inputs."""

    def vjp(self, ctx, g):
        return (g * ctx.out,)


class _ScaledFFT(ops.FFT2):
    """An FFT whose adjoint forgets the factor N."""

    def adjoint(self, ctx, y):
        return B.ifft2(y)


def test_broken_vjp_is_reported_failing():
    rng = np.random.default_rng(0)
    z = ops._rand(rng, (4, 4), np.complex128, np)
    assert check_vjp(ops.Exp(), (z,)).passed
    res = check_vjp(_BrokenExp(), (z,))
    assert not res.passed and res.error > 0.1


def test_adjoint_off_by_constant_is_caught_by_dottest_ratio():
    rng = np.random.default_rng(0)
    z = ops._rand(rng, (4, 4), np.complex128, np)
    res = dottest(_ScaledFFT(), (z,))
    assert not res.passed
    assert res.ratio == pytest.approx(16.0, rel=1e-9)  # N = 16 missing from the adjoint


def test_registered_stage_without_cases_fails_the_suite():
    @register
    class _NoCases(Stage):
        def forward(self, ctx, x):
            return x

        def vjp(self, ctx, g):
            return (g,)

    try:
        rows = run(("numpy",), (np.float64,), names=["_NoCases"])
        assert len(rows) == 1 and not rows[0].passed and "cases" in rows[0].note
    finally:
        REGISTRY.pop(_NoCases.registered_name)


def test_injected_broken_vjp_fails_the_suite():
    @register
    class _Broken(_BrokenExp):
        pass

    try:
        rows = run(("numpy",), (np.float64,), names=["_Broken"])
        assert rows and not rows[0].passed
    finally:
        REGISTRY.pop(_Broken.registered_name)


def _composed(x, w):
    """Uses x twice, mixes real and complex stages, and broadcasts w (row) against x."""
    z = ops.fft2(ops.expi(x * w))          # complex from real, broadcast (4,5)*(5,)
    y = ops.abs2(ops.ifft2(z * x))         # x used a second time (real * complex)
    return ops.sum(y * y) + ops.sum(x)     # and a third


def test_tape_gradient_matches_finite_differences_for_shared_complex_broadcast_graph(rng):
    x = rng.standard_normal((4, 5))
    w = rng.standard_normal(5)
    val, (gx, gw) = value_and_grad(_composed, argnums=(0, 1))(x, w)
    assert gx.shape == x.shape and gw.shape == w.shape
    f = lambda x_, w_: float(_composed(x_, w_))
    h = 1e-6
    for arr, g, which in ((x, gx, 0), (w, gw, 1)):
        d = rng.standard_normal(arr.shape)
        args_p = [x, w]; args_m = [x, w]
        args_p[which] = arr + h * d
        args_m[which] = arr - h * d
        fd = (f(*args_p) - f(*args_m)) / (2 * h)
        assert fd == pytest.approx(float(np.sum(g * d)), rel=1e-6)
    assert float(val) == pytest.approx(f(x, w), rel=1e-12)


def test_tape_accumulates_gradient_of_value_used_twice():
    with Tape() as tape:
        x = tape.watch(np.array([3.0]))
        y = x * x + x  # d/dx = 2x + 1 = 7
        (g,) = tape.gradient(ops.sum(y), [x])
    assert g[0] == pytest.approx(7.0)


def test_tape_gives_gradient_of_requested_intermediate():
    with Tape() as tape:
        x = tape.watch(np.array([2.0]))
        y = x * x
        loss = ops.sum(y * 3.0)
        gx, gy = tape.gradient(loss, [x, y])
    assert gy[0] == pytest.approx(3.0) and gx[0] == pytest.approx(12.0)


def test_stage_contexts_are_freed_with_the_tape_not_at_the_next_garbage_collection():
    import gc
    import weakref

    held = []

    class _Keeps(Stage):
        def forward(self, ctx, x):
            ctx.buffer = np.ones(1000)   # stands for an im2col buffer or an FFT grid
            held.append(weakref.ref(ctx.buffer))
            return x * 2.0

        def vjp(self, ctx, g):
            return (g * 2.0,)

    gc.disable()
    try:
        for _ in range(3):
            v, g = value_and_grad(lambda x: ops.sum(_Keeps()(x) * x))(np.arange(3.0))
            assert np.allclose(g, 4 * np.arange(3.0))
        assert all(r() is None for r in held)   # freed by reference counting alone
    finally:
        gc.enable()


def test_complex_gradient_convention_real_and_imag_parts(rng):
    # L = |z|^2 summed: dL/dRe = 2x, dL/dIm = 2y, so the stored gradient is 2z
    z = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    _, g = value_and_grad(lambda v: ops.sum(ops.abs2(v)))(z)
    np.testing.assert_allclose(g, 2 * z, rtol=1e-12)


def test_taylor_test_slopes_are_one_and_two(rng):
    x = rng.standard_normal((4, 5))
    d = rng.standard_normal((4, 5))
    f = lambda v: _composed(v, np.ones(5))
    _, g = value_and_grad(f)(x)
    res = taylor_test(f, x, d, g)
    assert res.passed
    assert np.median(res.slopes0) == pytest.approx(1.0, abs=0.2)
    assert np.median(res.slopes1) == pytest.approx(2.0, abs=0.2)
    bad = taylor_test(f, x, d, g * 1.01)
    assert not bad.passed


def test_adam_and_lbfgsb_minimise_a_quadratic_with_bounds():
    target = np.array([1.0, -2.0, 3.0])

    def vg(params):
        return value_and_grad(lambda p: ops.sum(ops.square(p - target)))(params["p"])

    def vg_dict(params):
        v, g = vg(params)
        return v, {"p": g}

    opt = Adam(lr=0.1)
    params = {"p": np.zeros(3)}
    for _ in range(500):
        params = opt.step(params, vg_dict(params)[1])
    np.testing.assert_allclose(params["p"], target, atol=1e-3)
    best, res = minimize_lbfgsb(vg_dict, {"p": np.zeros(3)}, bounds={"p": (-1.5, 2.0)})
    np.testing.assert_allclose(best["p"], [1.0, -1.5, 2.0], atol=1e-6)
    assert res.success


def test_default_device_setting_selects_cpu_and_refuses_unknown_names():
    old = settings.set_default_device("cpu")
    try:
        assert B.get_xp() is np
        with pytest.raises(B.DeviceError, match="tpu"):
            settings.set_default_device("tpu")
        assert settings.default_device() == "cpu"
    finally:
        settings.set_default_device(old)


def test_thread_setting_is_checked_and_returns_the_previous_value():
    old = settings.set_threads(3)
    try:
        assert B.threads() == 3 and settings.set_threads(2) == 3
        for bad in (0, -3, 1.5, "2", True):
            with pytest.raises(ValueError):
                settings.set_threads(bad)
        assert B.threads() == 2
    finally:
        settings.set_threads(old)


def test_gpu_request_without_cuda_is_a_clear_error():
    if B.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(B.DeviceError, match="no usable CUDA"):
        B.get_xp("gpu")


@pytest.mark.gpu
def test_primitive_stages_pass_on_cupy_float32_and_float64():
    rows = run(("cupy",), (np.float64, np.float32), names=["ops."])
    assert all(r.passed for r in rows), [(r.stage, r.dtype, r.note) for r in rows if not r.passed]


def test_rotation_by_quarter_turn_is_exact_permutation(rng):
    img = rng.standard_normal((5, 5))
    out = ops.Rotate(ops.rotation_matrix_2d(np.pi / 2))(img)
    # out(p) = in(R^T (p - c) + c) gives out[i, j] = in[j, n-1-i], numpy's rot90(k=1)
    np.testing.assert_allclose(out, np.rot90(img, k=1), atol=1e-12)


def test_rotation_refuses_an_array_of_another_rank():
    with pytest.raises(ValueError, match="a 2D rotation needs a 2D array"):
        ops.Rotate(ops.rotation_matrix_2d(0.3))(np.zeros((2, 4, 4)))


def test_scatter_then_gather_of_integer_points_is_identity(rng):
    pos = np.array([[1.0, 2.0], [3.0, 0.0]])
    v = np.array([2.0, -1.0])
    grid = ops.scatter_add(v, pos, (4, 4))
    assert grid[1, 2] == 2.0 and grid[3, 0] == -1.0 and grid.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(ops.gather(grid, pos), v)


def _python(code, **env):
    """stdout and stderr of ``python -c code`` with the CUTEM_* variables replaced by ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CUTEM_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env})
    return r.stdout.strip(), r.stderr.strip()


_SETTINGS = ("import sys, adjoints.settings as S; print(S.threads(), S.default_device(), "
             "S.keeps_freed_memory(), 'numpy' in sys.modules)")


def test_the_engine_reads_no_environment_and_changes_nothing_on_import():
    out, err = _python(_SETTINGS, CUTEM_THREADS="1", CUTEM_DEVICE="gpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert out == f"{cores} auto False False", err


def test_cutem_configures_the_engine_from_its_environment_at_import_without_numpy():
    out, err = _python("import cutem; " + _SETTINGS, CUTEM_THREADS="3", CUTEM_DEVICE="CPU")
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out == f"3 cpu {glibc} False", err
    out, err = _python("import cutem; " + _SETTINGS, CUTEM_KEEP_MEMORY="0")
    assert out.split()[1:] == ["auto", "False", "False"], err


@pytest.mark.parametrize("name, value", [("CUTEM_THREADS", "abc"), ("CUTEM_THREADS", "-3"), ("CUTEM_THREADS", "0"),
                                         ("CUTEM_DEVICE", "tpu"), ("CUTEM_KEEP_MEMORY", "yes")])
def test_bad_cutem_variables_are_one_line_input_errors(name, value):
    from cutem import configure_engine
    from cutem.errors import InputError

    before = (settings.thread_setting(), settings.default_device(), settings.keeps_freed_memory())
    with pytest.raises(InputError, match=f"^{name} must be .*{value!r}$"):
        configure_engine({name: value})
    assert (settings.thread_setting(), settings.default_device(), settings.keeps_freed_memory()) == before


def test_a_bad_variable_fails_the_first_use_of_cutem_naming_it():
    _, err = _python("import cutem; cutem.simulate", CUTEM_THREADS="abc")
    assert err.splitlines()[-1] == "cutem.errors.InputError: CUTEM_THREADS must be a positive integer, not 'abc'"


def test_a_bad_variable_is_one_line_bad_input_for_the_cli():
    r = subprocess.run([sys.executable, "-c", "from cutem.cli import entry; entry()", "info"], capture_output=True,
                       text=True, env={**os.environ, "CUTEM_THREADS": "-3"}, timeout=60)
    assert r.returncode == 2 and r.stderr == "cutem: error: CUTEM_THREADS must be a positive integer, not '-3'\n"
