"""The families under test: every entry of ``expfam.FAMILIES`` plus configured variants that the
registry's default instances do not cover (a matrix Σ₀ for the fixed-covariance Gaussian), two
families declared through ``expfam.GenericFamily`` (T, A and the domain only), so that the
generic derivations face the whole contract too, and products of blocks (``expfam.Product``):
Gaussians only (reparameterized), Gaussian + binary + positive blocks (no reparameterization,
h = 1), and blocks with h ≠ 1 including a generic family and a vector-event non-Gaussian."""

from __future__ import annotations

from typing import NamedTuple

import torch

import expfam
from expfam import ExpFamily
from expfam.base import check_finite, check_positive
from expfam.generic import GenericFamily

f64 = torch.float64


_cov = torch.tensor([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]], dtype=torch.float64)


class AutoGamma(GenericFamily):
    """Gamma(a, b) declared by T = (log θ, θ), A = log Γ(a) − a log b, λ = (a − 1, −b)."""

    name, nat_type, mean_type, event_ndims, has_rsample = (
        "auto_gamma",
        expfam.GammaNat,
        expfam.GammaMean,
        (0, 0),
        True,
    )

    def _suff_stats(self, x):
        return expfam.GammaMean(torch.log(x), x)

    def _log_partition(self, nat):
        a, b = nat.lam1 + 1, -nat.lam2
        return torch.lgamma(a) - a * torch.log(b)

    def _check_nat(self, nat, name):
        check_positive(nat.lam1 + 1, f"{name}.lam1", "> -1")
        check_positive(-nat.lam2, f"{name}.lam2", "< 0")

    def _nat_init(self, mean):
        return expfam.GammaNat(torch.zeros_like(mean.mu1), -torch.ones_like(mean.mu2))

    def _sample(self, nat, sample_shape, generator):
        return expfam.Gamma()._sample(nat, sample_shape, generator)

    def example_nat(self, batch_shape=(), dim=3, **kw):
        return expfam.Gamma().example_nat(batch_shape, dim, **kw)


class LogNatT(NamedTuple):
    lam1: torch.Tensor
    lam2: torch.Tensor


class LogMeanT(NamedTuple):
    mu1: torch.Tensor  # E[log θ]
    mu2: torch.Tensor  # E[(log θ)²]


class AutoLogNormal(GenericFamily):
    """LogNormal(m, v): T = (log θ, (log θ)²), λ = (m/v, −1/(2v)), h(θ) = 1/θ (≠ 1)."""

    name, nat_type, mean_type, event_ndims, has_rsample = (
        "auto_lognormal",
        LogNatT,
        LogMeanT,
        (0, 0),
        True,
    )

    def _suff_stats(self, x):
        return LogMeanT(torch.log(x), torch.log(x) ** 2)

    def _log_partition(self, nat):
        return (
            -(nat.lam1**2) / (4 * nat.lam2)
            - 0.5 * torch.log(-2 * nat.lam2)
            + 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=nat.lam1.dtype))
        )

    def _log_base_measure(self, x):
        return -torch.log(x)

    def _expected_log_base_measure(self, nat):
        return nat.lam1 / (2 * nat.lam2)  # −E[log θ] = −m

    def _check_nat(self, nat, name):
        check_finite(nat.lam1, f"{name}.lam1")
        check_positive(-nat.lam2, f"{name}.lam2", "< 0")

    def _nat_init(self, mean):
        return LogNatT(torch.zeros_like(mean.mu1), -0.5 * torch.ones_like(mean.mu2))

    def _sample(self, nat, sample_shape, generator):
        v = -0.5 / nat.lam2
        shape = tuple(sample_shape) + tuple(nat.lam1.shape)
        z = torch.randn(shape, dtype=nat.lam1.dtype, generator=generator)
        return torch.exp(nat.lam1 * v + v.sqrt() * z)

    def _to_torch(self, nat):
        v = -0.5 / nat.lam2
        return torch.distributions.LogNormal(nat.lam1 * v, v.sqrt())

    def example_nat(self, batch_shape=(), dim=3, *, generator=None, dtype=f64, **kw):
        u = torch.rand((2, *batch_shape), dtype=dtype, generator=generator)
        m, v = 2 * u[0] - 1, 0.2 + u[1]
        return LogNatT(m / v, -0.5 / v)


UNDER_TEST: dict[str, ExpFamily] = {
    **expfam.FAMILIES,
    "gaussian_fixed_cov[matrix]": expfam.FixedCovGaussian(cov=_cov),
    "generic[gamma]": AutoGamma(),
    "generic[lognormal]": AutoLogNormal(),
    "product[full+diag]": expfam.Product([(expfam.FullGaussian(), 2), (expfam.DiagGaussian(), 3)]),
    "product[diag+pm1+gamma]": expfam.Product(
        [(expfam.DiagGaussian(), 2), (expfam.Bernoulli("pm1"), 2), (expfam.Gamma(), 2)]
    ),
    "product[lognormal+dirichlet+poisson+fixed]": expfam.Product(
        [
            (AutoLogNormal(), 1),
            (expfam.Dirichlet(), 3),
            (expfam.Poisson(), 2),
            (expfam.FixedCovGaussian(cov=_cov), 3),
        ]
    ),
}
IDS = list(UNDER_TEST)
ALL = [UNDER_TEST[k] for k in IDS]
