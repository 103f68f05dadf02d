"""Conjugate models (Khan & Rue 2023, Table 1 row 11): one step at ρ = 1 lands on the textbook
posterior, and for ρ < 1 the error contracts geometrically, λ_t − λ* = (1 − ρ)^t (λ_0 − λ*)."""

from __future__ import annotations

import pytest
import torch

import blr
import expfam
from expfam.tree import tmap

f64 = torch.float64


def t(*x):
    return torch.tensor(x, dtype=f64)


def beta_bernoulli():
    fam = expfam.Beta()
    y = t(1, 1, 0, 1, 1, 1, 0, 1)
    prior = expfam.BetaNat(t(1.0)[0], t(1.0)[0])  # Beta(2, 2)
    loss = blr.Exact.linear(fam, expfam.BetaNat(y.sum(), (1 - y).sum()))
    post = expfam.BetaNat(t(7.0)[0], t(3.0)[0])  # Beta(8, 4)
    init = expfam.BetaNat(t(0.5)[0], t(4.0)[0])
    return fam, prior, loss, post, init


def gamma_poisson():
    fam = expfam.Gamma()
    y = t(3, 0, 2, 5, 1, 4)
    a0, b0 = 2.0, 0.5
    prior = expfam.GammaNat(t(a0 - 1)[0], t(-b0)[0])

    def loss(mean):  # Σ_i (θ − y_i log θ + log y_i!) = −Σy·E[log θ] + N·E[θ] + const
        return -y.sum() * mean.mu1 + len(y) * mean.mu2 + torch.lgamma(y + 1).sum()

    post = expfam.GammaNat(t(a0 + y.sum() - 1)[0], t(-(b0 + len(y)))[0])
    init = expfam.GammaNat(t(3.0)[0], t(-2.0)[0])
    return fam, prior, loss, post, init


def dirichlet_categorical():
    fam = expfam.Dirichlet()
    counts = t(4, 0, 7, 2)
    prior = expfam.DirichletNat(t(0.5, 0.5, 0.5, 0.5))
    loss = blr.Exact.linear(fam, expfam.DirichletNat(counts))
    post = expfam.DirichletNat(prior.lam1 + counts)
    init = expfam.DirichletNat(t(2.0, 0.1, 1.0, 3.0))
    return fam, prior, loss, post, init


def gaussian_known_variance():
    """y_i ~ N(θ, σ²) with a N(m₀, v₀) prior on θ."""
    fam = expfam.DiagGaussian()
    y, sigma2, m0, v0 = t(1.2, 0.4, 2.2, 1.7, 0.9), 0.5, 0.0, 4.0
    prior = fam.from_moments(t(m0), t(1 / v0))

    def loss(mean):  # Σ (y_i − θ)²/(2σ²): E = Σ (y_i² − 2 y_i μ₁ + μ₂)/(2σ²)
        return ((y**2).sum() - 2 * y.sum() * mean.mu1 + len(y) * mean.mu2).sum() / (2 * sigma2)

    prec = 1 / v0 + len(y) / sigma2
    post = fam.from_moments(t((m0 / v0 + y.sum() / sigma2) / prec), t(prec))
    init = fam.from_moments(t(-3.0), t(0.1))
    return fam, prior, loss, post, init


def linear_regression():
    """Ridge / Bayesian linear regression: S = XᵀX/σ² + δI, m = S⁻¹Xᵀy/σ²."""
    fam = expfam.FullGaussian()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, dtype=f64, generator=g)
    y = x @ t(1.0, -2.0, 0.5) + 0.3 * torch.randn(20, dtype=f64, generator=g)
    sigma2, delta = 0.09, 2.0
    prior = fam.from_moments(torch.zeros(3, dtype=f64), delta * torch.eye(3, dtype=f64))

    def loss(mean):  # Σ (y − xᵀθ)²/(2σ²) = (yᵀy − 2yᵀXμ₁ + tr(XᵀX μ₂))/(2σ²)
        quad = (x.T @ x * mean.mu2).sum((-2, -1))
        return (y @ y - 2 * (x.T @ y) @ mean.mu1 + quad) / (2 * sigma2)

    prec = x.T @ x / sigma2 + delta * torch.eye(3, dtype=f64)
    post = fam.from_moments(torch.linalg.solve(prec, x.T @ y / sigma2), prec)
    init = fam.from_moments(t(5.0, 5.0, -5.0), 0.3 * torch.eye(3, dtype=f64))
    return fam, prior, loss, post, init


CASES = [
    beta_bernoulli,
    gamma_poisson,
    dirichlet_categorical,
    gaussian_known_variance,
    linear_regression,
]


def max_rel(a: tuple, b: tuple) -> float:
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-300)).item() for x, y in zip(a, b))


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_one_step_at_rho_one_is_the_textbook_posterior(case):
    fam, prior, loss, post, init = case()
    for start in (prior, init):
        got = blr.step(fam, start, loss, 1.0, estimator=blr.Exact(), prior=prior)
        assert max_rel(got, post) <= 1e-10


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_rho_below_one_converges_geometrically(case):
    fam, prior, loss, post, init = case()
    rho, nat = 0.3, init
    for k in range(1, 16):
        nat = blr.step(fam, nat, loss, rho, estimator=blr.Exact(), prior=prior)
        factor = (1 - rho) ** k
        want = tmap(lambda p, i, f=factor: p + f * (i - p), post, init)
        for x, y in zip(nat, want):
            assert (x - y).abs().max() <= 1e-8 * max(1.0, y.abs().max())


def test_prior_inside_the_loss_gives_the_same_posterior():
    """(BLR-prior) vs (BLR-h): the Gaussian prior folded into ℓ̄ and ρ = 1 (h is constant)."""
    fam, prior, loss, post, _ = linear_regression()
    s0 = -2 * prior.lam2

    def total(mean):  # + E[δ/2 ‖θ‖²] = δ/2 tr(μ₂)
        return loss(mean) + 0.5 * (s0 * mean.mu2).sum((-2, -1))

    got = blr.step(fam, prior, total, 1.0, estimator=blr.Exact())
    assert max_rel(got, post) <= 1e-10


@pytest.mark.parametrize(
    "estimator",
    [blr.Delta(), blr.BonnetPrice(points="sigma"), blr.Reparam(points="sigma")],
    ids=["delta", "bonnet-price-sigma", "reparam-sigma"],
)
def test_theta_space_estimators_are_exact_on_linear_regression(estimator):
    """The quadratic loss has exact Gaussian expectations: any of these estimators, written on
    θ, gives the posterior in one step."""
    fam, prior, _, post, init = linear_regression()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, dtype=f64, generator=g)
    y = x @ t(1.0, -2.0, 0.5) + 0.3 * torch.randn(20, dtype=f64, generator=g)

    def loss(theta):
        return ((y - theta @ x.T) ** 2).sum(-1) / (2 * 0.09)

    got = blr.step(fam, init, loss, 1.0, estimator=estimator, prior=prior)
    assert max_rel(got, post) <= 1e-10
