"""Energy filter: zero-loss imaging attenuates the image by exp(−t/λ_in) over the ice path."""
import math

import numpy as np
import pytest

from adjoints import check_vjp, ops
from cutem.config import RunConfig
from cutem.energyfilter import ICE_MFP_300KV_A, ZeroLossFilter, inelastic_mfp_A
from cutem.errors import InputError
from cutem.imaging import ImageModel
from cutem.params import Detector, Geometry, Optics, Sample, Simulation
from cutem.pipeline import value_and_grad_image
from cutem.specimen import Scene


def _ice_config(t, tilt=0.0, slit=20.0, method="projection"):
    return RunConfig(optics=Optics(defocus_u_A=15000, defocus_v_A=15000, energy_filter_slit_eV=slit),
                     detector=Detector(nx=32, ny=32, pixel_size_A=5.0, dose_e_per_A2=10.0, quantized=False),
                     sample=Sample(diameter_A=1e6, thickness_center_A=t, thickness_edge_A=t),
                     simulation=Simulation(dtype="float64", method=method, slice_thickness_A=400.0),
                     geometry=Geometry(tilt_angles_deg=(tilt,)))


def _mean(cfg):
    return float(ImageModel.from_config(cfg, scene=Scene()).noise_free().mean())


@pytest.mark.parametrize("tilt", [0.0, 60.0])
def test_zero_loss_mean_follows_exp_of_path_over_mfp(tilt):
    lam = inelastic_mfp_A(300.0)
    ref = _mean(_ice_config(0.0, tilt))
    for t in (500.0, 1000.0, 2000.0, 3000.0):
        want = math.exp(-t / (lam * math.cos(math.radians(tilt))))
        got = _mean(_ice_config(t, tilt)) / ref
        assert got == pytest.approx(want, rel=0.02), (t, tilt)
        assert abs(got / want - 1) < 1e-6   # exact in this model (uniform slab, DC passes the lens)


def test_multislice_sees_the_same_zero_loss_path():
    # filtered over unfiltered at one thickness: the multislice's own loss of intensity to its
    # band limit at the tilted slab's slice crossings (0.4 % here) cancels
    a = _mean(_ice_config(2000.0, 60.0, method="multislice")) / _mean(_ice_config(2000.0, 60.0, slit=None,
                                                                                   method="multislice"))
    assert a == pytest.approx(math.exp(-2000.0 / (0.5 * inelastic_mfp_A(300.0))), rel=1e-6)


def test_no_filter_no_attenuation():
    assert _mean(_ice_config(3000.0, slit=None)) == pytest.approx(_mean(_ice_config(0.0, slit=None)), rel=1e-9)


def test_mfp_is_the_measured_value_at_300kV_and_shorter_at_lower_voltage():
    assert inelastic_mfp_A(300.0) == ICE_MFP_300KV_A == 3950.0
    assert 0.8 < inelastic_mfp_A(200.0) / 3950.0 < 0.9      # Malis energy scaling: 0.86
    assert inelastic_mfp_A(300.0, 3000.0) == 3000.0


def test_zero_loss_filter_vjp_matches_finite_differences():
    rng = np.random.default_rng(3)
    stage, inputs = ZeroLossFilter.cases(np, np.float64, rng)[0]
    assert check_vjp(stage, inputs, rng).passed


def test_thickness_gradient_flows_through_the_filter():
    cfg = _ice_config(1500.0, 60.0)
    val, g, _ = value_and_grad_image(cfg, lambda im: ops.mean(im), ["thickness_center_A"], estimator="none")
    h = 1.0
    fd = (_mean(_ice_config(1500.0 + h, 60.0)) - _mean(_ice_config(1500.0 - h, 60.0))) / (2 * h)
    # a hole of 1e6 Å: the centre thickness owns the whole field, d mean/dt = −mean/(λ cos θ)
    assert float(g["thickness_center_A"]) == pytest.approx(fd, rel=1e-5)
    assert fd == pytest.approx(-float(val) / (inelastic_mfp_A(300.0) * 0.5), rel=1e-3)


def test_bad_slit_is_refused():
    with pytest.raises(InputError, match="energy_filter_slit_eV"):
        Optics(energy_filter_slit_eV=0.0)
