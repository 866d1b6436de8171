"""adjoints.fit: parametrisations, the L-BFGS-B / Adam driver, covariances (no microscopy)."""
import math

import numpy as np
import pytest

from adjoints import ops
from adjoints.fit import (FreeParam, Parametrisation, fit, gauss_newton_covariance, observed_information_covariance,
                          value_and_grad_internal)


@pytest.mark.parametrize("transform,lo,hi,val", [("bounds", 0, 10, 3.0), ("log", None, None, 0.02),
                                                  ("softplus", 1.0, None, 4.5), ("logit", 0.0, 0.5, 0.1),
                                                  ("none", None, None, -7.0)])
def test_transforms_round_trip(transform, lo, hi, val):
    p = FreeParam("x", val, lo, hi, transform, scale=2.0 if transform != "log" else 0.01)
    assert math.isclose(float(p.to_physical(p.to_internal(val))), val, rel_tol=1e-9)


def test_chain_rule_through_a_logit_map_matches_finite_differences():
    par = Parametrisation([FreeParam("w", 0.2, 0.0, 0.5, "logit")], {"k": 3.0})

    def loss(th, _):
        return ops.sum(ops.exp(th["w"] * th["k"]) * th["w"])
    vg = value_and_grad_internal(loss, par)
    u0 = par.initial()
    val, g = vg(u0)
    h = 1e-6
    fd = (float(vg({"w": u0["w"] + h})[0]) - float(vg({"w": u0["w"] - h})[0])) / (2 * h)
    assert abs(float(g["w"]) - fd) < 1e-7 * max(1.0, abs(fd))


def test_lbfgsb_and_adam_reach_the_minimum_of_a_bounded_quadratic():
    par = Parametrisation([FreeParam("x", 0.0, -1.0, 1.0), FreeParam("y", 5.0, None, None, scale=5.0)])

    def loss(th, _):
        return (th["x"] - 2.0) * (th["x"] - 2.0) + (th["y"] + 3.0) * (th["y"] + 3.0)
    r = fit(loss, par, "lbfgsb")
    assert abs(r.params["x"] - 1.0) < 1e-8 and abs(r.params["y"] + 3.0) < 1e-5   # x stops at its bound
    r2 = fit(loss, par, "adam", maxiter=600, lr=0.05)
    assert abs(r2.params["x"] - 1.0) < 1e-6 and abs(r2.params["y"] + 3.0) < 0.05
    assert r2.iterations == 600 and r2.evaluations == 601


def test_bad_transform_method_or_duplicate_name_is_a_value_error():
    with pytest.raises(ValueError, match="transform"):
        FreeParam("x", 1.0, transform="exp")
    with pytest.raises(ValueError, match="twice"):
        Parametrisation([FreeParam("x", 1.0), FreeParam("x", 2.0)])
    with pytest.raises(ValueError, match="lbfgsb or adam"):
        fit(lambda th, _: th["x"] * th["x"], Parametrisation([FreeParam("x", 1.0)]), "newton")


def _line(rng):
    x = np.linspace(0, 1, 50)
    y = 2.0 * x + 0.5 + 0.1 * rng.standard_normal(50)
    A = np.stack([x, np.ones_like(x)], 1)
    coef, rss, *_ = np.linalg.lstsq(A, y, rcond=None)
    return x, y, A, coef, rss[0]


def test_gauss_newton_errors_equal_ordinary_least_squares(rng):
    x, y, A, coef, rss = _line(rng)
    cov = rss / 48 * np.linalg.inv(A.T @ A)
    se, _, _ = gauss_newton_covariance(lambda th: th["m"] * x + th["c"] - y, {"m": coef[0], "c": coef[1]},
                                       ["m", "c"])
    np.testing.assert_allclose([se["m"], se["c"]], np.sqrt(np.diag(cov)), rtol=1e-10)


def test_observed_information_of_a_gaussian_likelihood_is_the_least_squares_covariance(rng):
    """−log L = RSS/(2σ²) with σ known: H⁻¹ = σ²(AᵀA)⁻¹ exactly (the loss is quadratic, so the
    central differences of the exact gradient have no truncation error)."""
    x, y, A, coef, _ = _line(rng)
    sigma = 0.1

    def nll(th):
        r = th["m"] * x + th["c"] - y
        return ops.sum(r * r) * (0.5 / sigma ** 2)
    se, cov = observed_information_covariance(nll, {"m": coef[0], "c": coef[1]}, ["m", "c"])
    np.testing.assert_allclose(cov, sigma ** 2 * np.linalg.inv(A.T @ A), rtol=1e-6)
