"""Network stages (adjoints.nn): forward against references, VJPs, U-Net, HDF5 round trip."""
import numpy as np
import pytest
from scipy.signal import correlate

import adjoints.backend as B
from adjoints.gradcheck import run
from adjoints.nn import (AvgPool2d, Conv2d, L1Loss, LeakyRelu, MaxPool2d, MSELoss, UNet, UNetConfig,
                         Upsample, load_unet, save_unet)


def _conv_reference(x, w, b, stride, padding):
    """Direct cross-correlation with scipy, channel by channel."""
    sh, sw = stride
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, co = x.shape[0], w.shape[0]
    full = np.array([[sum(correlate(xp[i, c], w[o, c], mode="valid") for c in range(x.shape[1]))
                      for o in range(co)] for i in range(n)])
    out = full[:, :, ::sh, ::sw]
    return out + (b[None, :, None, None] if b is not None else 0)


@pytest.mark.parametrize("stride,padding,bias", [((1, 1), (1, 1), True), ((2, 2), (1, 1), True),
                                                 ((1, 2), (0, 2), False), ((3, 1), (2, 0), True)])
def test_conv2d_matches_direct_correlation(rng, stride, padding, bias):
    x = rng.standard_normal((2, 3, 9, 11))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4) if bias else None
    y, _ = Conv2d(stride, padding, bias).apply(*((x, w, b) if bias else (x, w)))
    ref = _conv_reference(x, w, b, stride, padding)
    assert y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < 1e-12 * np.max(np.abs(ref)) * 100


def test_every_network_stage_passes_gradcheck_float64():
    rows = run(("numpy",), (np.float64,), names=["nn."])
    names = {r.stage for r in rows}
    assert {"nn.Conv2d", "nn.Upsample", "nn.AvgPool2d", "nn.MaxPool2d", "nn.LeakyRelu",
            "nn.MSELoss", "nn.L1Loss"} <= names
    for r in rows:
        assert r.passed, r
        assert r.vjp_error < 1e-7
    conv = next(r for r in rows if r.stage == "nn.Conv2d")
    assert conv.dot_error < 1e-12 and abs(conv.dot_ratio - 1) < 1e-12  # bias-free cases dot-tested


def test_conv2d_vjp_each_input_matches_finite_differences(rng):
    """Input, weights and bias separately, float64, central differences."""
    st = Conv2d(2, 1, True)
    x, w, b = rng.standard_normal((2, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    y, ctx = st.apply(x, w, b)
    u = rng.standard_normal(y.shape)
    gx, gw, gb = st.vjp(ctx, u)
    for i, g in enumerate((gx, gw, gb)):
        v = rng.standard_normal(g.shape)
        args_p = [x, w, b]
        args_m = [x, w, b]
        h = 1e-6
        args_p[i] = args_p[i] + h * v
        args_m[i] = args_m[i] - h * v
        fd = np.sum(u * (st.apply(*args_p)[0] - st.apply(*args_m)[0])) / (2 * h)
        assert abs(fd - np.sum(g * v)) < 1e-7 * max(abs(fd), 1)


def test_pooling_and_upsampling_values():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    assert np.array_equal(AvgPool2d(2).apply(x)[0][0, 0], [[2.5, 4.5], [10.5, 12.5]])
    assert np.array_equal(MaxPool2d(2).apply(x)[0][0, 0], [[5, 7], [13, 15]])
    up = Upsample(2).apply(np.array([[[[1.0, 2.0]]]]))[0]
    assert np.array_equal(up[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2]])
    assert np.array_equal(LeakyRelu(0.25).apply(np.array([-4.0, 2.0]))[0], [-1.0, 2.0])
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.0, 4.0, 3.0])
    assert MSELoss().apply(a, b)[0] == pytest.approx(5 / 3)
    assert L1Loss().apply(a, b)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_unet_gradient_matches_finite_differences(pool):
    net = UNet(depth=2, width=3, convs=1, pool=pool)
    p = net.init(1, dtype=np.float64)
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((2, 1, 8, 8)), rng.standard_normal((2, 1, 8, 8))
    _, g = net.loss_and_grad(p, x, t)
    d = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    h = 1e-6
    fp = net.loss_and_grad({k: p[k] + h * d[k] for k in p}, x, t)[0]
    fm = net.loss_and_grad({k: p[k] - h * d[k] for k in p}, x, t)[0]
    fd = (fp - fm) / (2 * h)
    an = sum(float(np.sum(g[k] * d[k])) for k in p)
    assert abs(fd - an) < 1e-6 * abs(an)


def test_he_init_reproducible_and_scaled():
    net = UNet(depth=1, width=32, convs=1)
    a, b, c = net.init(7), net.init(7), net.init(8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["enc1.0.w"], c["enc1.0.w"])
    w = a["enc1.0.w"]  # fan_in = 32 * 9
    assert abs(w.std() / np.sqrt(2 / (32 * 9)) - 1) < 0.05
    assert w.dtype == np.float32 and set(net.shapes()) == set(a)


def test_unet_shapes_and_size_check():
    net = UNet(depth=2, width=4, in_channels=2, out_channels=1)
    p = net.init(0)
    y = net.apply(p, np.zeros((3, 2, 12, 16), np.float32))
    assert y.shape == (3, 1, 12, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        net.apply(p, np.zeros((1, 2, 10, 16), np.float32))


def test_save_load_round_trip_gives_identical_output(tmp_path, rng):
    net = UNet(UNetConfig(depth=2, width=4, convs=2, pool="avg", slope=0.2))
    p = net.init(5)
    p = {k: v + 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in p.items()}
    save_unet(tmp_path / "net.h5", net, p)
    net2, p2 = load_unet(tmp_path / "net.h5")
    assert net2.config == net.config
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    assert np.array_equal(net.apply(p, x), net2.apply(p2, x))


@pytest.mark.gpu
def test_checkpoint_cross_backend_same_output(tmp_path, rng):
    cp = B.get_xp("gpu")
    net = UNet(depth=2, width=8)
    p = {k: v + 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in net.init(2).items()}
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    # saved on CPU, loaded on GPU
    save_unet(tmp_path / "cpu.h5", net, p)
    n_g, p_g = load_unet(tmp_path / "cpu.h5", xp=cp)
    y_cpu = net.apply(p, x)
    y_gpu = B.to_numpy(n_g.apply(p_g, cp.asarray(x)))
    assert np.max(np.abs(y_gpu - y_cpu)) < 1e-4 * np.max(np.abs(y_cpu))
    # saved on GPU, loaded on CPU
    save_unet(tmp_path / "gpu.h5", n_g, p_g)
    n_c, p_c = load_unet(tmp_path / "gpu.h5")
    assert all(np.array_equal(p_c[k], p[k]) for k in p)
    assert np.array_equal(n_c.apply(p_c, x), y_cpu)
