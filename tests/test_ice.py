"""Amorphous ice (cutem.ice): the random field has the spectrum of vitreous water, a zero mean,
a structure factor with the amorphous-ice peak, and its stage's VJP matches finite differences."""
import numpy as np

from adjoints import REGISTRY, check_vjp
from cutem import ice as I
from cutem.config import RunConfig
from cutem.imaging import ImageModel
from cutem.params import Detector, Sample
from cutem.potential import ice_potential_V
from cutem.spectra import RadialBins


def test_structure_factor_peaks_at_the_amorphous_ice_ring_with_the_compressibility_limit():
    q = np.linspace(0.001, 0.5, 5000)
    s = I.structure_factor(q)
    assert abs(q[s.argmax()] - 1 / 3.70) < 0.003          # LDA: Q = 1.70 Å⁻¹
    assert abs(s[0] - 0.6 ** 4 / 1.8 ** 2) < 1e-3           # PY S(0) at η = 0.4
    assert 1.9 < s.max() < 2.2 and abs(s[-1] - 1) < 0.2


def test_molecule_transform_at_zero_gives_the_continuum_potential():
    assert abs(I.molecule_transform(0.0) * I.ICE_DENSITY_PER_A3 - ice_potential_V()) < 1e-9


def test_random_field_radial_power_matches_the_slab_spectrum_and_has_zero_mean():
    n, px, L = 128, 1.4, 250.0
    g = I.unit_field(24, (n, n), px, np.random.default_rng(1)) * np.sqrt(L)
    assert np.abs(g.mean(axis=(1, 2))).max() < 1e-9 * np.abs(g).max()
    # periodogram of a sampled field: E|FFT|² = N · P / a
    per = (np.abs(np.fft.fft2(g)) ** 2).mean(0) * px ** 2 / (n * n)
    bins = RadialBins((n, n), px)
    sel = (bins.q > 0.03) & (bins.q < 0.34)
    ratio = bins.average(per)[sel] / I.ice_power_spectrum(bins.q[sel], L)
    assert abs(ratio.mean() - 1) < 0.02 and np.abs(ratio - 1).max() < 0.15


def test_stage_vjp_matches_finite_differences():
    for stage, inputs in REGISTRY["cutem.ice.AmorphousIceStage"].cases(np, np.float64, np.random.default_rng(0)):
        r = check_vjp(stage, inputs, tol=1e-6)
        assert r.passed, r.details


def _model(ice_model, seed=3):
    cfg = RunConfig(detector=Detector(nx=64, ny=64, pixel_size_A=1.5),
                    sample=Sample(diameter_A=1e6, thickness_center_A=300.0, thickness_edge_A=300.0,
                                  ice_model=ice_model), seed=seed)
    return ImageModel.from_config(cfg, 0, xp=np, dtype=np.float64)


def test_amorphous_ice_keeps_the_mean_potential_and_reproduces_per_seed():
    v0, _ = _model("continuum").potential()
    v1, _ = _model("amorphous").potential()
    v2, _ = _model("amorphous").potential()
    v3, _ = _model("amorphous", seed=4).potential()
    assert abs(v1.mean() - v0.mean()) < 1e-9 * v0.mean() and v1.std() > 0.01 * v0.mean()
    np.testing.assert_array_equal(v1, v2)
    assert not np.allclose(v1, v3)


def test_closed_form_spectrum_matches_the_mean_periodogram_of_noise_free_amorphous_ice_images():
    from adjoints import unwrap
    from cutem.fitting.specimen import SpecimenModel
    from cutem.params import Optics, Simulation

    n, px = 96, 1.5
    # thin ice: the weak-phase regime the closed form is exact in (first order in the ice's phase)
    cfg = RunConfig(optics=Optics(defocus_u_A=15000.0, defocus_v_A=14000.0),
                    detector=Detector(nx=n, ny=n, pixel_size_A=px, quantized=False, mtf_a=0.6, mtf_b=0.3,
                                      mtf_c=0.1),
                    sample=Sample(diameter_A=1e6, thickness_center_A=30.0, thickness_edge_A=30.0,
                                  ice_model="amorphous", ice_absorption=0.02),
                    simulation=Simulation(inelastic_background=True, dtype="float64"))
    S = np.asarray(unwrap(SpecimenModel(cfg)({})[0]))
    per = []
    for s in range(40):
        im = ImageModel.from_config(cfg.replace(seed=s), 0, xp=np, dtype=np.float64).render(estimator="none").image
        per.append(np.abs(np.fft.fft2(im - im.mean())) ** 2 / n ** 2)
    b = RadialBins((n, n), px)
    sel = (b.q > 1 / 30) & (b.q < 1 / 4)
    ratio = b.average(np.mean(per, 0))[sel] / b.average(S)[sel]
    assert abs(ratio.mean() - 1) < 0.03 and abs(np.median(ratio) - 1) < 0.03
    assert np.percentile(ratio, 90) < 1.1 and np.percentile(ratio, 10) > 0.95


def test_particle_continuum_has_its_spectrum_and_the_closed_form_matches_its_images():
    """The particles' continuum: a draw's radial power follows particle_continuum_spectrum (Porod's
    q⁻⁴ above 1/(2π·50 Å)), and the closed form's particle term (P_ref × the response to the
    kernel) matches the mean periodogram of noise-free images with it (thin ice, weak phase)."""
    from adjoints import unwrap
    from cutem.fitting.specimen import SpecimenModel
    from cutem.ice import PARTICLE_Q_REF, particle_continuum_spectrum, particle_field
    from cutem.params import Optics, Simulation

    n, px = 96, 1.5
    b = RadialBins((n, n), px)
    sel = (b.q > 1 / 30) & (b.q < 1 / 4)
    rng = np.random.default_rng(1)
    per = np.mean([np.abs(np.fft.fft2(particle_field((n, n), px, rng, 3.0))) ** 2 for _ in range(60)], 0)
    # E|FFT g|² = N·P/a (the field's normalisation, as the ice's)
    ratio = b.average(per)[sel] / (n * n * particle_continuum_spectrum(b.q[sel], 3.0) / px ** 2)
    assert abs(np.median(ratio) - 1) < 0.04
    assert particle_continuum_spectrum(PARTICLE_Q_REF, 3.0) == 3.0
    assert abs(particle_continuum_spectrum(0.2) / particle_continuum_spectrum(0.1) - 1 / 16) < 0.002

    cfg = RunConfig(optics=Optics(defocus_u_A=15000.0, defocus_v_A=14000.0),
                    detector=Detector(nx=n, ny=n, pixel_size_A=px, quantized=False),
                    sample=Sample(diameter_A=1e6, thickness_center_A=30.0, thickness_edge_A=30.0,
                                  ice_model="amorphous", particle_continuum_power=2e4),
                    simulation=Simulation(dtype="float64"))
    S = np.asarray(unwrap(SpecimenModel(cfg)({})[0]))
    S0 = np.asarray(unwrap(SpecimenModel(cfg.replace(sample=cfg.sample.replace(particle_continuum_power=0.0)))({})[0]))
    low = (b.q > 1 / 30) & (b.q < 1 / 10)
    assert b.average(S)[low].mean() > 3 * b.average(S0)[low].mean()   # the continuum dominates there
    per = []
    for sd in range(40):
        im = ImageModel.from_config(cfg.replace(seed=sd), 0, xp=np, dtype=np.float64).render(estimator="none").image
        per.append(np.abs(np.fft.fft2(im - im.mean())) ** 2 / n ** 2)
    ratio = b.average(np.mean(per, 0))[sel] / b.average(S)[sel]
    assert abs(np.median(ratio) - 1) < 0.05 and np.percentile(ratio, 90) < 1.15 and np.percentile(ratio, 10) > 0.9
