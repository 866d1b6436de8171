"""cutem.denoise: training loop, checkpoints and resume, tiled inference, model-based denoiser."""
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as psnr

from adjoints.nn import UNet, UNetConfig
from cutem.denoise import (TrainConfig, Trainer, denoise_image, denoise_stack, load_denoiser, model_denoise,
                           mtf_transfer, train)
from cutem.params import Detector


def blobs(rng, n=48, dose=20.0, n2n=False):
    """A tiny synthetic pair source: dark Gaussian blobs on a flat background, Poisson noise."""
    yy, xx = np.mgrid[:n, :n]
    clean = np.ones((n, n))
    for _ in range(int(rng.integers(3, 7))):
        cy, cx, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(3, 8)
        clean -= 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    lam = dose * np.clip(clean, 0.0, None)  # overlapping blobs may dip below zero
    noisy = rng.poisson(lam).astype(np.float32)
    return noisy, (rng.poisson(lam).astype(np.float32) if n2n else lam.astype(np.float32))


TINY = UNetConfig(depth=1, width=4, convs=1, residual=True)


def _cfg(**kw):
    d = dict(steps=6, batch=2, patch=16, pool=2, refresh_every=2, checkpoint_every=3, seed=1)
    d.update(kw)
    return TrainConfig(**d)


def test_training_lowers_loss_and_beats_noisy_input():
    tr = train(blobs, UNetConfig(depth=1, width=6, convs=1), _cfg(steps=60, batch=4, patch=32, lr=5e-3,
                                                                    pool=4, refresh_every=10), progress=False)
    assert np.mean(tr.history[-20:]) < 0.5 * np.mean(tr.history[:5])
    rng = np.random.default_rng(123)
    noisy, clean = blobs(rng, n=64)
    den = denoise_image(tr.net, tr.params, noisy, tile=32, overlap=8)
    dr = float(clean.max() - clean.min())
    assert psnr(clean, den, data_range=dr) > psnr(clean, noisy, data_range=dr) + 5


def test_resume_continues_exactly(tmp_path):
    """4 steps + checkpoint + resume for 2 more = 6 uninterrupted steps, bit for bit."""
    full = Trainer(UNet(TINY), blobs, _cfg())
    full.run(progress=False)
    part = Trainer(UNet(TINY), blobs, _cfg())
    part.run(checkpoint=tmp_path / "ck.h5", progress=False, until=4)  # interrupted after step 4
    assert part.step_count == 4
    resumed = train(blobs, cfg=_cfg(), checkpoint=tmp_path / "ck.h5", resume=True, progress=False)
    assert resumed.step_count == 6
    assert resumed.history == full.history
    for k in full.params:
        assert np.array_equal(resumed.params[k], full.params[k]), k
    net, params, info = load_denoiser(tmp_path / "ck.h5")
    assert info["step"] == 6 and net.config == TINY
    assert all(np.array_equal(params[k], full.params[k]) for k in params)


def test_noise2noise_training_on_noisy_targets_denoises_towards_the_clean_image():
    tr = train(lambda r: blobs(r, n2n=True), UNetConfig(depth=1, width=6, convs=1),
               _cfg(steps=60, batch=4, patch=32, lr=5e-3, pool=4, refresh_every=10, noise2noise=True),
               progress=False)
    # the targets in the pool are integer counts (a second noisy draw), not the clean mean
    assert np.array_equal(tr.pool_target[0], np.round(tr.pool_target[0]))
    # yet the network never shown a clean image learns the conditional mean: closer to it than the input
    rng = np.random.default_rng(123)
    noisy, _ = blobs(rng, n=64)
    rng = np.random.default_rng(123)
    _, clean = blobs(rng, n=64, n2n=False)
    den = denoise_image(tr.net, tr.params, noisy, tile=32, overlap=8)
    dr = float(clean.max() - clean.min())
    assert psnr(clean, den, data_range=dr) > psnr(clean, noisy, data_range=dr) + 3


@pytest.mark.parametrize("shape", [(37, 53), (16, 16), (100, 9)])
def test_tiling_identity_network_is_exact_for_any_size(shape, rng):
    net = UNet(TINY)
    p = net.init(0)
    p["head.w"][:] = 0  # residual net with zero head: output = input
    img = rng.uniform(0, 10, shape).astype(np.float32)
    out = denoise_image(net, p, img, tile=16, overlap=4)
    assert out.shape == img.shape
    assert np.max(np.abs(out - img)) < 1e-4


def test_tiles_blend_to_the_whole_image_result(rng):
    """With the overlap ≥ twice the receptive-field radius, tiles reproduce a single pass."""
    net = UNet(UNetConfig(depth=1, width=4, convs=1, residual=True))
    p = net.init(3)
    img = rng.normal(5, 1, (64, 64)).astype(np.float32)
    whole = denoise_image(net, p, img, tile=64, overlap=0)
    tiled = denoise_image(net, p, img, tile=32, overlap=16)
    err = np.abs(whole - tiled)
    assert np.std(whole - img) > 0.01  # the network does change the image
    assert np.max(err) < 1e-5
    stack = denoise_stack(net, p, np.stack([img, img]), tile=32, overlap=16, symmetries=1)
    assert np.array_equal(stack[1], tiled)


def test_symmetric_denoising_is_odd_and_equivariant_to_the_square_symmetries(rng):
    """With the negation (2) and the 8 square symmetries (16) averaged, the result of a
    transformed input is the transformed result, for any network."""
    from cutem.denoise import denoise_symmetric

    net = UNet(UNetConfig(depth=1, width=4, convs=1))
    p = net.init(4)
    img = rng.normal(0, 1, (32, 32)).astype(np.float32)
    d2 = denoise_symmetric(net, p, img, 2)
    np.testing.assert_allclose(denoise_symmetric(net, p, -img, 2), -d2, atol=1e-6)
    d16 = denoise_symmetric(net, p, img, 16)
    np.testing.assert_allclose(denoise_symmetric(net, p, np.rot90(img).copy(), 16), np.rot90(d16), atol=1e-5)
    np.testing.assert_allclose(denoise_symmetric(net, p, -img[:, ::-1].copy(), 16), -d16[:, ::-1], atol=1e-5)
    d8 = denoise_symmetric(net, p, img, 8)   # the square's symmetries alone: equivariant, not odd
    np.testing.assert_allclose(denoise_symmetric(net, p, np.rot90(img[:, ::-1]).copy(), 8), np.rot90(d8[:, ::-1]),
                               atol=1e-5)
    assert not np.allclose(denoise_symmetric(net, p, -img, 8), -d8, atol=1e-3)
    assert not np.allclose(denoise_image(net, p, -img), -denoise_image(net, p, img), atol=1e-3)  # the net alone is not


def test_negated_pairs_only_when_asked_and_the_same_patches_either_way():
    """Without ``negate`` no patch is negated; with it about half are, and every other draw (which
    image, where, which symmetry) is the same, so the two trainings see the same patches."""
    def patches(negate):
        tr = Trainer(UNet(TINY), blobs, _cfg(negate=negate, batch=32, pool=2))
        tr._fill()
        return [np.asarray(a) for a in tr.batch()]

    (x0, t0), (x1, t1) = patches(False), patches(True)
    same = np.all(x0 == x1, axis=(1, 2, 3))
    flipped = np.all(x0 == -x1, axis=(1, 2, 3)) & np.all(t0 == -t1, axis=(1, 2, 3))
    assert np.all(same | flipped) and 8 <= flipped.sum() <= 24


def test_inference_uses_the_models_own_negation_and_normalisation():
    import json

    from cutem.denoise import inference_options

    def opts(tc, boxes=False):
        o = inference_options({"train_config": json.dumps(tc)} if tc is not None else {}, boxes=boxes)
        return o["symmetries"], o["normalisation"]

    new = {"negate": True, "normalisation": "median-mad"}
    assert (opts(new), opts(new, True)) == ((2, "median-mad"), (16, "median-mad"))
    assert opts({"negate": False, "normalisation": "mean-std"}, True) == (8, "mean-std")
    # files from before both settings: never negated, normalised by mean/std
    assert opts(None) == opts({}) == (1, "mean-std")


def test_normalisations_are_the_mean_std_and_the_median_mad_and_unknown_ones_are_refused():
    from cutem.denoise import image_stats
    from cutem.errors import InputError

    rng = np.random.default_rng(5)
    img = rng.gamma(2.0, 3.0, (64, 64))
    assert image_stats(img, "mean-std") == pytest.approx((img.mean(), img.std()), rel=1e-12)
    med = np.median(img)
    assert image_stats(img) == pytest.approx((med, 1.4826 * np.median(np.abs(img - med))), rel=1e-12)
    with pytest.raises(InputError, match="normalisation"):
        image_stats(img, "minmax")
    with pytest.raises(InputError, match="normalisation"):
        _cfg(normalisation="minmax")


def test_a_model_trains_and_runs_with_its_recorded_normalisation(tmp_path):
    """The pool is normalised by the configured statistics, the checkpoint records them, and a
    checkpoint written without the settings resumes with the legacy ones."""
    import json

    import h5py

    from cutem.denoise import LEGACY_TRAINING, image_stats, inference_options

    tr = Trainer(UNet(TINY), blobs, _cfg(normalisation="mean-std"))
    tr.run(checkpoint=tmp_path / "ck.h5", progress=False)
    assert all(st == pytest.approx(image_stats(n, "mean-std")) for n, st in zip(tr.pool_noisy, tr.pool_stats))
    net, params, info = load_denoiser(tmp_path / "ck.h5")
    opts = inference_options(info)
    assert opts == {"symmetries": 1, "normalisation": "mean-std"}
    img = blobs(np.random.default_rng(9), n=40)[0]
    by_mean = denoise_stack(net, params, img[None], **opts)[0]
    assert not np.allclose(by_mean, denoise_stack(net, params, img[None])[0])  # the choice matters
    with h5py.File(tmp_path / "ck.h5", "r+") as f:  # a file from before the settings existed
        tc = json.loads(f.attrs["train_config"])
        f.attrs["train_config"] = json.dumps({k: v for k, v in tc.items() if k not in LEGACY_TRAINING})
    old = Trainer.resume(tmp_path / "ck.h5", blobs, steps=8)
    assert (old.cfg.negate, old.cfg.normalisation) == (False, "mean-std")


def test_packaged_models_run_with_the_settings_they_were_trained_with():
    from cutem.denoise import default_model_path, inference_options

    _, _, info = load_denoiser(default_model_path())
    assert inference_options(info) == {"symmetries": 1, "normalisation": "median-mad"}
    _, _, info = load_denoiser(default_model_path(particles=True))
    assert inference_options(info, boxes=True) == {"symmetries": 16, "normalisation": "median-mad"}


def test_mtf_matches_tem_simulator_reference_values():
    det = Detector(mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10, mtf_beta=40)
    T = mtf_transfer((64, 64), det, dtype=np.float64)
    assert T[0, 32] == pytest.approx(0.3182, abs=1e-4)   # Nyquist (PHYSICS.md)
    assert T[0, 16] == pytest.approx(0.5879, abs=1e-4)   # Nyquist / 2
    assert T[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("estimator", ["pathwise", "score"])
def test_model_denoiser_improves_psnr(estimator):
    rng = np.random.default_rng(5)
    noisy, clean = blobs(rng, n=48)
    r = model_denoise(noisy, beta=4.0, iterations=120, estimator=estimator, seed=1)
    dr = float(clean.max() - clean.min())
    assert psnr(clean, r.image, data_range=dr) > psnr(clean, noisy, data_range=dr) + 6
    assert r.losses[-1] < r.losses[0]


def test_model_denoiser_gain_and_mtf_units():
    """Counts = gain × blurred electrons: the result stays in counts and λ in electrons
    (whatever the nominal dose: 2 e/Å² × 25 Å² = 50 e per pixel here)."""
    rng = np.random.default_rng(6)
    noisy, clean = blobs(rng, n=32, dose=50.0)
    det = Detector(mtf_a=0.7, mtf_b=0.2, mtf_c=0.1, mtf_alpha=10, mtf_beta=40, gain=10.0)
    r = model_denoise(noisy * 10, detector=det.replace(dose_e_per_A2=2.0, pixel_size_A=5.0), iterations=60)
    assert abs(r.image.mean() / (10 * noisy.mean()) - 1) < 0.02
    assert abs(r.intensity.mean() / noisy.mean() - 1) < 0.02


# ------------------------------------------------------------------------------- CLI
def _write_input(tmp_path, data, px=3.5):
    from cutem.io import write_mrc

    path = tmp_path / "in.mrc"
    write_mrc(path, data, px)
    return path


def test_cli_denoise_learned_keeps_pixel_size_and_shape(tmp_path):
    from click.testing import CliRunner

    from adjoints.nn import save_unet
    from cutem.cli import main
    from cutem.io import read_mrc

    net = UNet(TINY)
    p = net.init(0)
    p["head.w"][:] = 0  # identity network: the output must equal the input
    save_unet(tmp_path / "m.h5", net, p)
    stack = np.random.default_rng(0).poisson(20, (2, 40, 33)).astype(np.float32)
    inp = _write_input(tmp_path, stack)
    res = CliRunner().invoke(main, ["denoise", str(inp), "--model", str(tmp_path / "m.h5"), "--tile", "16",
                                    "--overlap", "4", "-q"])
    assert res.exit_code == 0, res.output
    out, px = read_mrc(tmp_path / "in_denoised.mrc")
    assert px == pytest.approx(3.5) and out.shape == stack.shape
    assert np.max(np.abs(out - stack)) < 1e-3
    assert (tmp_path / "in_denoised.png").is_file()


def test_cli_denoise_model_method(tmp_path):
    from click.testing import CliRunner

    from cutem.cli import main
    from cutem.io import read_mrc

    rng = np.random.default_rng(8)
    noisy, clean = blobs(rng, n=32)
    inp = _write_input(tmp_path, noisy)
    res = CliRunner().invoke(main, ["denoise", str(inp), "--method", "model", "--iterations", "80",
                                    "-o", str(tmp_path / "d.mrc"), "-q"])
    assert res.exit_code == 0, res.output
    out, _ = read_mrc(tmp_path / "d.mrc")
    dr = float(clean.max() - clean.min())
    assert psnr(clean, out, data_range=dr) > psnr(clean, noisy, data_range=dr) + 4


def test_cli_bad_input_exits_2(tmp_path, monkeypatch, capsys):
    from cutem.cli import main, run_guarded

    inp = _write_input(tmp_path, np.ones((16, 16), np.float32))
    monkeypatch.setattr("sys.argv", ["cutem", "denoise", str(inp), "--model", str(tmp_path / "missing.h5")])
    assert run_guarded(main) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_denoise_runs_the_packaged_model_on_a_particle_stack(tmp_path):
    """`cutem denoise particles.mrcs` with no --model: the packaged network, each boxed particle
    on its own, a .mrcs stack out with the input's pixel size; either contrast convention gives
    the same image up to its sign (the network was trained with negated pairs)."""
    import mrcfile
    from click.testing import CliRunner

    from cutem.cli import main
    from cutem.denoise import default_model_path, denoise_particles, load_denoiser

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64] - 32
    blob = np.exp(-(xx ** 2 + yy ** 2) / (2 * 8.0 ** 2))
    parts = (blob[None] + 0.5 * rng.standard_normal((3, 64, 64))).astype(np.float32)
    src = tmp_path / "parts.mrcs"
    with mrcfile.new(src) as m:
        m.set_data(parts)
        m.voxel_size = 3.54
    res = CliRunner().invoke(main, ["denoise", str(src), "-q", "--no-png"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(tmp_path / "parts_denoised.mrcs") as m:
        out = m.data.copy()
        assert out.shape == parts.shape and abs(float(m.voxel_size.x) - 3.54) < 1e-4
    # the blob is kept and the noise reduced: closer to the clean particle than the input
    err_in = np.mean((parts - blob) ** 2)
    err_out = np.mean((out - blob) ** 2)
    assert err_out < 0.5 * err_in
    net, params, _ = load_denoiser(str(default_model_path(particles=True)))
    neg = -denoise_particles(net, params, -parts)  # 16 symmetries with the negation: exactly odd
    np.testing.assert_allclose(neg, out, atol=1e-4 * float(np.abs(out).max()))


def test_detector_from_fit_mtf_toml(tmp_path):
    from cutem.denoise import detector_from_toml

    f = tmp_path / "fit.toml"
    f.write_text("[detector]\nmtf_a = 0.6\nmtf_b = 0.3\nmtf_c = 0.1\nmtf_alpha = 12.0\ngain = 8.0\n"
                 "mtf_a_std = 0.01\n\n[fit]\nloss = 0.5\n")
    d = detector_from_toml(f)
    assert (d.mtf_a, d.mtf_b, d.mtf_alpha, d.gain) == (0.6, 0.3, 12.0, 8.0)
    from cutem.errors import InputError

    (tmp_path / "bad.toml").write_text("[detector]\nnx = 64\n")
    with pytest.raises(InputError, match="no MTF parameters"):
        detector_from_toml(tmp_path / "bad.toml")


def test_simulator_pairs_draw_conditions_within_ranges():
    from cutem.denoise import SimulatorPairs

    src = SimulatorPairs(image_size=32, pixel_size_A=4.0, dose_range=(10, 30), defocus_range=(8000, 9000),
                         ice_range=(200, 300), particles_range=(1, 3), tilt_range=(-30, 30), astigmatism_A=100)
    rng = np.random.default_rng(0)
    cfgs = [src.config(rng) for _ in range(20)]
    for c in cfgs:
        assert 10 <= c.detector.dose_e_per_A2 <= 30 and c.detector.shape == (32, 32)
        assert c.detector.pixel_size_A == 4.0
        mean_df = (c.optics.defocus_u_A + c.optics.defocus_v_A) / 2
        assert 8000 <= mean_df <= 9000 and 0 <= c.optics.defocus_u_A - c.optics.defocus_v_A <= 100
        assert 200 <= c.sample.thickness_center_A == c.sample.thickness_edge_A <= 300
        assert 1 <= sum(p.count for p in c.particles) <= 3
        assert all(p.placement == "random" for p in c.particles)
        assert -30 <= c.geometry.tilt_angles_deg[0] <= 30
    assert len({c.seed for c in cfgs}) == 20
    assert len({round(c.detector.dose_e_per_A2, 6) for c in cfgs}) == 20


def test_learning_rate_warms_up_then_decays_to_the_final_value():
    c = TrainConfig(steps=100, lr=1e-3, lr_final=1e-5, warmup=10)
    lrs = [c.lr_at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3) and lrs[99] == pytest.approx(1e-5)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert TrainConfig(steps=5, warmup=0).lr_at(0) == pytest.approx(TrainConfig().lr)


def test_crowded_scene_fills_the_field_without_3d_overlap(tmp_path):
    """The default training fields are crowded: particles are placed until the field is
    full, bounding spheres never intersect in 3D, and in thick ice some overlap in projection."""
    from cutem.denoise import SimulatorPairs
    from helpers import tiny_pdb

    pdb = tmp_path / "p.pdb"
    pdb.write_text(tiny_pdb(n=30, half_extent_A=10.0))
    src = SimulatorPairs(image_size=32, pixel_size_A=4.0, ice_range=(400, 400), structures=[str(pdb)])
    assert src.particles_range == (40, 80)  # the crowded default
    rng = np.random.default_rng(2)
    cfg = src.config(rng)
    asked = sum(p.count for p in cfg.particles)
    src.scene(cfg, rng)
    c, r = src.last_placed
    assert 0 < len(r) <= asked
    d3 = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(r)) * 1e9
    assert np.all(d3 >= r[:, None] + r[None] - 1e-9)
    d2 = np.sqrt(((c[:, None, :2] - c[None, :, :2]) ** 2).sum(-1)) + np.eye(len(r)) * 1e9
    assert np.any(d2 < r[:, None] + r[None])  # stacked in depth
    assert np.all(np.abs(c[:, 2]) <= 200 - r)  # inside the ice
    # bounding discs cover most of the 128 Å field
    yy, xx = (np.mgrid[:32, :32] - 16 + 0.5) * 4.0
    cover = np.zeros((32, 32), bool)
    for (x, y, _z), ri in zip(c, r):
        cover |= (xx - x) ** 2 + (yy - y) ** 2 < ri * ri
    assert cover.mean() > 0.8


def test_cli_train_denoiser_on_the_simulator_and_resume(tmp_path):
    """Tiny end-to-end run: simulated Noise2Noise pairs, checkpoint, resume to more steps."""
    import json

    import h5py
    from click.testing import CliRunner

    from cutem.cli import main

    out = str(tmp_path / "m.h5")
    args = ["train-denoiser", "-o", out, "--noise2noise", "--batch", "2", "--patch", "32", "--image-size", "48",
            "--pool", "2", "--refresh-every", "2", "--particles", "1,1", "--ice", "400,600", "--depth", "1",
            "--width", "4", "-q", "--device", "cpu"]
    res = CliRunner().invoke(main, args + ["--steps", "3"])
    assert res.exit_code == 0, res.output
    small = str(tmp_path / "small.h5")
    res = CliRunner().invoke(main, args + ["--steps", "4", "--resume", "--export", small])
    assert res.exit_code == 0, res.output
    # the exported model: same weights, no optimiser state or image pool, cannot be resumed
    from cutem.denoise import load_denoiser

    _n1, p_full, _i1 = load_denoiser(out)
    _n2, p_small, i_small = load_denoiser(small)
    assert all(np.array_equal(p_full[k], p_small[k]) for k in p_full) and int(i_small["step"]) == 4
    with h5py.File(small) as f:
        assert "adam" not in f and "pool" not in f and len(f["history/loss"]) == 4
    from cutem.errors import InputError

    res = CliRunner().invoke(main, ["train-denoiser", "-o", small, "--resume", "--steps", "5", "-q"])
    assert isinstance(res.exception, InputError) and "cannot resume" in str(res.exception)
    with h5py.File(out) as f:
        assert int(f.attrs["step"]) == 4 and len(f["history/loss"]) == 4
        src = json.loads(f.attrs["source"])
        assert src["noise2noise"] and src["image_size"] == 48
        noisy, target = f["pool/noisy"][0], f["pool/target"][0]
    # two independent noisy draws of one scene: same mean level, uncorrelated noise
    assert abs(noisy.mean() / target.mean() - 1) < 0.02
    assert np.corrcoef((noisy - noisy.mean()).ravel(), (target - target.mean()).ravel())[0, 1] < 0.5


def test_binned_detector_mtf_is_the_camera_mtf_at_x_over_the_factor():
    from cutem.denoise import REAL_DETECTORS, binned_detector
    from cutem.detector import mtf_radial
    from cutem.params import Detector

    x = np.linspace(0.0, 0.5, 11)
    for name, p in REAL_DETECTORS.items():
        det = Detector(**{k: v for k, v in p.items() if k != "dqe"})
        for f in (1.0, 2.0, 3.7):
            np.testing.assert_allclose(mtf_radial(x, binned_detector(det, f)), mtf_radial(x / f, det),
                                       rtol=1e-12, err_msg=f"{name} binned {f}")
        # binning flattens the MTF at the (binned) Nyquist frequency
        assert mtf_radial([0.5], binned_detector(det, 4.0))[0] > mtf_radial([0.5], det)[0]


def test_image_stats_are_not_set_by_a_contaminant():
    """A dark contaminant over 15 % of a noise image moves median/MAD by less than a quarter
    and a third of the noise σ, where mean/std move by 4 and 10 noise σ."""
    from cutem.denoise import image_stats

    rng = np.random.default_rng(3)
    img = 100.0 + 2.0 * rng.standard_normal((128, 128))
    img[:, :19] -= 60.0
    m, s = image_stats(img)
    assert abs(m - 100.0) < 0.25 * 2.0 and abs(s - 2.0) < 2.0 / 3
    assert abs(img.mean() - 100.0) > 4 * 2.0 and img.std() > 10 * 2.0  # what mean/std would have used


def test_instrument_pairs_span_real_instruments_with_clean_level_matched_targets():
    from cutem.denoise import REAL_DETECTORS, InstrumentPairs

    src = InstrumentPairs(image_size=32, particles_range=(1, 1), edge_fraction=0.5, contaminant_fraction=0.5)
    rng = np.random.default_rng(0)
    cfgs = [src.config(np.random.default_rng(i)) for i in range(40)]
    px = np.array([c.detector.pixel_size_A for c in cfgs])
    assert px.min() >= 0.8 and px.max() <= 4.0 and px.max() / px.min() > 2.5
    assert {c.optics.voltage_kV for c in cfgs} == {200.0, 300.0}
    assert all(1.4 <= c.optics.cs_mm <= 2.7 and c.sample.ice_model == "amorphous" for c in cfgs)
    assert 0.2 < np.mean([c.sample.damage for c in cfgs]) < 0.8  # damaged exposures and cutem's undamaged default
    # the real cameras and the base configuration's own detector (cutem's default), per pixel
    assert {c.detector.dqe for c in cfgs} <= {p["dqe"] for p in REAL_DETECTORS.values()} | {src.base.detector.dqe}
    assert any(c.detector.mtf_alpha == src.base.detector.mtf_alpha for c in cfgs)
    assert any(c.sample.support_film == "carbon" for c in cfgs) and any(c.sample.contaminants for c in cfgs)
    dose = np.array([c.detector.dose_e_per_A2 for c in cfgs])
    assert dose.min() >= 5.0 and dose.max() <= 60.0 and np.median(dose) < 25.0  # log-uniform: low doses as often
    noisy, target = src(rng)
    assert noisy.shape == target.shape == (32, 32)
    # the target: no ice fluctuations, at the input's mean level
    assert abs(noisy.mean() / target.mean() - 1) < 0.05


def test_cli_twin_trains_around_the_twin_and_boxes_train_on_whole_boxes(tmp_path):
    """--twin: dose, defocus and ice drawn within ±30 % of the twin's own values, its optics and
    detector kept; --boxes: ParticleBoxPairs, the patch the whole box, negated pairs (RELION's
    stacks are contrast-inverted), which the twin's micrographs do not get."""
    import json

    import h5py
    from click.testing import CliRunner

    from cutem.cli import main
    from validation.fuzz_cli import CONFIG, pdb_text

    (tmp_path / "tiny.pdb").write_text(pdb_text())
    (tmp_path / "twin.toml").write_text(CONFIG)
    from cutem.config import load_config

    twin = load_config(tmp_path / "twin.toml")
    small = ["--steps", "2", "--batch", "1", "--pool", "1", "--depth", "1", "--width", "2", "-q", "--device", "cpu",
             "--structure", str(tmp_path / "tiny.pdb")]
    res = CliRunner().invoke(main, ["train-denoiser", "--twin", str(tmp_path / "twin.toml"), "-o",
                                    str(tmp_path / "t.h5"), "--patch", "16", "--image-size", "32", *small])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "t.h5") as f:
        src = json.loads(f.attrs["source"])
        assert json.loads(f.attrs["train_config"])["negate"] is False
    d = twin.detector.dose_e_per_A2
    np.testing.assert_allclose(src["dose_range"], [0.7 * d, 1.3 * d])
    assert src["pixel_size_A"] == twin.detector.pixel_size_A and "span" not in src
    res = CliRunner().invoke(main, ["train-denoiser", "--boxes", "32", "-o", str(tmp_path / "b.h5"), *small])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "b.h5") as f:
        src = json.loads(f.attrs["source"])
        tc = json.loads(f.attrs["train_config"])
        assert tc["patch"] == 32 and tc["negate"] is True
    assert src["span"]["box"] == 32 and src["image_size"] == 32


def test_particle_envelope_follows_the_particles_extent():
    """Centred particles of radius 12 px in unit white noise: the stack's envelope is near 1 over
    the particle, near 0 beyond it, and never rises outwards; too few particles give none."""
    from cutem.denoise import particle_envelope

    rng = np.random.default_rng(3)
    n = 64
    yy, xx = np.mgrid[:n, :n] - n // 2
    r = np.hypot(yy, xx)
    disc = (r <= 12).astype(float)
    f = np.fft.fftfreq(n)
    low = np.exp(-2 * (np.pi * 2.0) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    sig = np.fft.ifft2(np.fft.fft2(rng.standard_normal((400, n, n))) * low).real
    sig *= disc / sig.std()
    env = particle_envelope(sig + rng.standard_normal((400, n, n)))
    assert env.shape == (n, n)
    assert env[r <= 8].min() > 0.8 and env[(r >= 18) & (r <= 30)].max() < 0.15
    prof = [env[(r >= k - 0.5) & (r < k + 0.5)].mean() for k in range(31)]
    assert np.all(np.diff(prof) <= 1e-9)
    assert particle_envelope(sig[:5]) is None


def test_denoise_particles_weights_the_network_by_the_envelope():
    """`denoise_particles` = the network over the 16 symmetries, the low-pass, then the envelope:
    outside the particles the output is (near) zero, inside it is the low-passed network's."""
    from cutem.denoise import (PARTICLE_LOWPASS_PX, default_model_path, denoise_particles, denoise_stack,
                               load_denoiser, particle_envelope)

    rng = np.random.default_rng(4)
    n = 32
    yy, xx = np.mgrid[:n, :n] - n // 2
    blob = np.exp(-(xx ** 2 + yy ** 2) / (2 * 4.0 ** 2))
    parts = (blob[None] * rng.uniform(0.5, 1.5, (12, 1, 1)) + 0.5 * rng.standard_normal((12, n, n))).astype(np.float32)
    net, params, _ = load_denoiser(str(default_model_path(particles=True)))
    out = denoise_particles(net, params, parts)
    f = np.fft.fftfreq(n)
    low = np.exp(-2 * (np.pi * PARTICLE_LOWPASS_PX) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    ref = np.fft.ifft2(np.fft.fft2(denoise_stack(net, params, parts, symmetries=16).astype(np.float64)) * low).real
    ref *= particle_envelope(parts)
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max())
    assert out.shape == parts.shape and out.dtype == np.float32
