"""fit_mtf_specimen / `cutem fit-mtf --kind specimen`: detector MTF, ice thickness and defocus
recovered from simulated micrographs of a known specimen in ice (closed-form expected spectrum)."""
import math

import numpy as np
import pytest
from click.testing import CliRunner

import cutem
from cutem import fitting as F
from cutem.config import ParticleSpec, RunConfig, load_config, write_resolved
from cutem.errors import InputError
from cutem.io import write_mrc
from cutem.pipeline import simulate

from helpers import tiny_pdb

TRUTH = {"mtf_b": 0.2, "mtf_beta": 40.0, "ice_thickness_A": 600.0, "defocus_A": 15000.0}
N_IMAGES = 16


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Four copies of a 600-atom blob (tests/helpers.tiny_pdb) in 600–800 Å of absorbing ice,
    128² pixels of 1.5 Å, 300 kV, 1.5 µm underfocus, 100 e⁻/Å², DQE 0.7, gain 2; 16 micrographs."""
    d = tmp_path_factory.mktemp("specimen")
    pdb = d / "blob.pdb"
    pdb.write_text(tiny_pdb(n=600, seed=3, half_extent_A=12.0))
    cfg = RunConfig(
        optics=cutem.Optics(voltage_kV=300, defocus_u_A=TRUTH["defocus_A"], defocus_v_A=TRUTH["defocus_A"], cs_mm=2.7,
                            amplitude_contrast=0.07),
        detector=cutem.Detector(nx=128, ny=128, pixel_size_A=1.5, dose_e_per_A2=100.0, dqe=0.7, mtf_a=0.7,
                                mtf_b=TRUTH["mtf_b"], mtf_c=0.1, mtf_alpha=10.0, mtf_beta=TRUTH["mtf_beta"], gain=2.0),
        sample=cutem.Sample(thickness_center_A=TRUTH["ice_thickness_A"], thickness_edge_A=TRUTH["ice_thickness_A"] + 200,
                            ice_absorption=0.1),
        particles=(ParticleSpec(name="blob", structure=str(pdb), placement="list",
                                positions_A=((-48.0, -48.0, 0.0), (48.0, -48.0, 0.0), (-48.0, 48.0, 0.0),
                                             (48.0, 48.0, 0.0))),),
        seed=1)
    imgs = np.concatenate([simulate(cfg.replace(seed=100 + s)).images for s in range(N_IMAGES)])
    return cfg, imgs, d


def _rel(p):
    return {"mtf_b": p["mtf_b"] / TRUTH["mtf_b"] - 1, "mtf_beta": p["mtf_beta"] / TRUTH["mtf_beta"] - 1,
            "ice_thickness_A": p["ice_thickness_A"] / TRUTH["ice_thickness_A"] - 1,
            "defocus_A": p["defocus_A"] - TRUTH["defocus_A"]}


# starts: b ±35 %, β ∓30 %, ice ±30 %, defocus ±250 Å (inside one Thon-ring basin)
STARTS = [{"mtf_b": 0.27, "mtf_beta": 28.0, "ice_thickness_A": 420.0, "defocus_A": 15250.0},
          {"mtf_b": 0.13, "mtf_beta": 52.0, "ice_thickness_A": 780.0, "defocus_A": 14750.0}]


@pytest.mark.parametrize("objective", ["whittle", "log_radial"])
def test_specimen_fit_recovers_mtf_ice_thickness_and_defocus(scene, objective):
    cfg, imgs, _ = scene
    free = ("mtf_b", "mtf_beta", "ice_thickness_A", "defocus_A")
    for start in STARTS:
        # the config handed to the fit holds the wrong values too (only `start` is not enough)
        wrong = F.specimen_config_with(cfg, start)
        r = F.fit_mtf_specimen(imgs, wrong, free=free, objective=objective)
        e = _rel(r.fit.params)
        # measured with these seeds (both starts reach the same optimum):
        #   whittle:    b −1.2 %, β −0.04 %, ice −0.05 % (−0.3 Å), defocus +34 Å; 1σ: 3.7 %, 8 %, 0.3 Å, 17 Å
        #   log_radial: b −1.4 %, β +1.1 %, ice −0.05 %, defocus +146 Å;          1σ: 3.5 %, 8 %, 0.3 Å, 117 Å
        # (the ring average loses most of the defocus information of four particles' Thon rings)
        s = r.errors
        assert abs(e["mtf_b"]) < 0.08 and abs(e["mtf_beta"]) < 0.16, (objective, e)
        assert abs(e["ice_thickness_A"]) < 0.003, (objective, e)
        assert abs(e["defocus_A"]) < (60.0 if objective == "whittle" else 3 * s["defocus_A"]), (objective, e, s)
        # the stated uncertainties are of the size of the errors they describe
        assert 0.01 < s["mtf_b"] / TRUTH["mtf_b"] < 0.08 and 0.03 < s["mtf_beta"] / TRUTH["mtf_beta"] < 0.2
        assert 0.05 < s["ice_thickness_A"] < 3.0
        assert 5.0 < s["defocus_A"] < (40.0 if objective == "whittle" else 200.0)


def test_ice_thickness_needs_absorption(scene):
    cfg, imgs, _ = scene
    flat = cfg.replace(sample=cfg.sample.replace(ice_absorption=0.0))
    with pytest.raises(InputError, match="ice_absorption"):
        F.fit_mtf_specimen(imgs, flat, free=("mtf_b", "ice_thickness_A"))


def test_closed_form_spectrum_is_the_mean_of_simulated_periodograms(scene):
    """S(q) of SpecimenModel against the mean periodogram of 16 noisy micrographs, ring by ring:
    the ring means agree within their sampling error (≈ 1/sqrt(count·16/2)), and the image means
    within 0.1 %."""
    from cutem.spectra import RadialBins, power_spectrum

    cfg, imgs, _ = scene
    model = F.SpecimenModel(cfg)
    S, mu = model({})
    bins = RadialBins((128, 128), 1.5)
    m = bins.average(np.asarray(S.value if hasattr(S, "value") else S))
    d = bins.average(power_spectrum(imgs))
    sel = slice(2, 88)
    z = (np.log(d[sel]) - np.log(m[sel])) * np.sqrt(bins.count_np[sel] * N_IMAGES / 2.0)
    assert abs(np.mean(z)) < 0.5 and 0.6 < np.std(z) < 1.5, (np.mean(z), np.std(z))
    assert abs(float(np.asarray(mu.value if hasattr(mu, "value") else mu)) / imgs.mean() - 1) < 1e-3


def test_cli_fit_mtf_on_specimen_micrographs_writes_a_config_with_the_fitted_thickness(scene, tmp_path):
    cfg, imgs, _ = scene
    wrong = F.specimen_config_with(cfg, {"mtf_b": 0.27, "mtf_beta": 28.0, "ice_thickness_A": 450.0})
    write_resolved(tmp_path / "scene.toml", wrong)
    write_mrc(tmp_path / "stack.mrc", imgs.astype(np.float32), 1.5)
    from cli import main

    res = CliRunner().invoke(main, ["fit-mtf", str(tmp_path / "stack.mrc"), "--config", str(tmp_path / "scene.toml"),
                                    "--free", "mtf_b,mtf_beta,ice_thickness_A", "--ps-objective", "whittle",
                                    "-o", str(tmp_path / "fit")])
    assert res.exit_code == 0, res.output
    assert "specimen" in res.output and "ice_thickness_A" in res.output
    out = load_config(tmp_path / "fit.toml")
    assert abs(out.sample.thickness_center_A / TRUTH["ice_thickness_A"] - 1) < 0.003
    assert abs(out.sample.thickness_edge_A - out.sample.thickness_center_A - 200.0) < 1e-6
    assert abs(out.detector.mtf_beta / TRUTH["mtf_beta"] - 1) < 0.16
    assert len(out.particles) == 1 and (tmp_path / "fit.png").stat().st_size > 1000
    assert "±" in (tmp_path / "fit.txt").read_text() or "1σ" in (tmp_path / "fit.txt").read_text()
