"""Poisson counts, parameterized by the log-rate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.base import ExpFamily, check_finite, check_positive


class PoissonNat(NamedTuple):
    """λ of a Poisson: ``lam1 = log r`` (r the rate)."""

    lam1: Tensor


class PoissonMean(NamedTuple):
    """μ of a Poisson: ``mu1 = r``."""

    mu1: Tensor


def _expect_over_counts(rate: Tensor, fn) -> Tensor:
    """E_{k~Poisson(rate)}[fn(k)], summed exactly over the counts that carry mass.

    The sum runs over k in [r − 12√r − 30, r + 12√r + 30] ∩ N, computed in float64 (the
    omitted tails are below 1e−25 of the total). Differentiable in ``rate``.
    """
    r = rate.to(torch.float64)
    with torch.no_grad():
        half = 12 * torch.sqrt(r) + 30
        lo = torch.clamp(torch.floor(r - half), min=0)
        width = int(torch.ceil(2 * half.max()).item()) + 1 if r.numel() else 1
    k = lo.unsqueeze(-1) + torch.arange(width, dtype=torch.float64, device=r.device)
    logr = torch.log(r).unsqueeze(-1)
    logp = k * logr - r.unsqueeze(-1) - torch.lgamma(k + 1)
    return (torch.exp(logp) * fn(k)).sum(-1).to(rate.dtype)


class Poisson(ExpFamily):
    r"""Poisson distribution over counts k ∈ {0, 1, 2, ...} (scalar events), mostly used as a
    likelihood (Gamma–Poisson conjugacy, Poisson regression).

    .. math::
        T(k) = k,\quad \lambda = \log r,\quad A(\lambda) = e^\lambda,\quad \mu = r,\quad
        h(k) = 1/k!,\\
        H = r - r\log r + \mathbb{E}[\log k!],\quad
        \nabla_\mu(-H) = \lambda - \mathbb{E}[\log(k+1)].

    E[log k!] has no closed form; it and E[log(k+1)] are summed exactly over the counts that carry
    mass (in float64).

    Example:
        >>> import torch
        >>> from expfam import Poisson, PoissonNat
        >>> fam = Poisson()
        >>> nat = PoissonNat(torch.log(torch.tensor([0.5, 4.0], dtype=torch.float64)))
        >>> fam.entropy(nat)
        tensor([0.9276, 2.0867], dtype=torch.float64)
    """

    name = "poisson"
    nat_type = PoissonNat
    mean_type = PoissonMean
    event_ndims = (0,)
    has_rsample = False

    # the contract
    def _suff_stats(self, x: Tensor) -> PoissonMean:
        return PoissonMean(x if x.is_floating_point() else x.to(torch.get_default_dtype()))

    def _log_base_measure(self, x: Tensor) -> Tensor:
        k = self._suff_stats(x).mu1
        return -torch.lgamma(k + 1)

    def _log_partition(self, nat: PoissonNat) -> Tensor:
        return torch.exp(nat.lam1)

    def _nat_to_mean(self, nat: PoissonNat) -> PoissonMean:
        return PoissonMean(torch.exp(nat.lam1))

    def _mean_to_nat(self, mean: PoissonMean) -> PoissonNat:
        return PoissonNat(torch.log(mean.mu1))

    def _expected_log_base_measure(self, nat: PoissonNat) -> Tensor:
        return -_expect_over_counts(torch.exp(nat.lam1), lambda k: torch.lgamma(k + 1))

    def _neg_entropy_grad(self, nat: PoissonNat) -> PoissonNat:
        # d/dr E[f(k)] = E[f(k+1) − f(k)], so ∇_μ E[log h] = −E[log(k+1)]
        return PoissonNat(nat.lam1 - _expect_over_counts(torch.exp(nat.lam1), torch.log1p))

    def _entropy(self, nat: PoissonNat) -> Tensor:
        # −Σ p log p summed directly: no cancellation between r log r and E[log k!]
        r = torch.exp(nat.lam1)
        logr = nat.lam1.to(torch.float64).unsqueeze(-1)
        r64 = r.to(torch.float64).unsqueeze(-1)

        def neg_logp(k: Tensor) -> Tensor:
            return -(k * logr - r64 - torch.lgamma(k + 1))

        return _expect_over_counts(r, neg_logp)

    def _kl(self, nat_p: PoissonNat, nat_q: PoissonNat) -> Tensor:
        r_p, r_q = torch.exp(nat_p.lam1), torch.exp(nat_q.lam1)
        return r_p * (nat_p.lam1 - nat_q.lam1) - r_p + r_q

    def _log_prob(self, nat: PoissonNat, x: Tensor) -> Tensor:
        k = self._suff_stats(x).mu1
        return k * nat.lam1 - torch.exp(nat.lam1) - torch.lgamma(k + 1)

    def _sample(self, nat: PoissonNat, sample_shape, generator) -> Tensor:
        rate = torch.exp(nat.lam1).expand(tuple(sample_shape) + tuple(nat.lam1.shape))
        return torch.poisson(rate.contiguous(), generator=generator)

    def _check_point(self, x: Tensor, name: str) -> None:
        if not ((x >= 0).all() and (x == torch.floor(x)).all()):
            raise ValueError(f"{name} must hold non-negative integer counts")

    def _check_nat(self, nat: PoissonNat, name: str) -> None:
        check_finite(nat.lam1, f"{name}.lam1")
        if (nat.lam1 > math.log(1e8)).any():
            raise ValueError(
                f"{name}.lam1 must be ≤ log(1e8) (rates above 1e8 are outside this family's "
                "exact-summation range)"
            )

    def _check_mean(self, mean: PoissonMean, name: str) -> None:
        check_positive(mean.mu1, f"{name}.mu1", "> 0 (a rate)")

    def _to_torch(self, nat: PoissonNat) -> torch.distributions.Distribution:
        return torch.distributions.Poisson(torch.exp(nat.lam1), validate_args=False)

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> PoissonNat:
        """Random λ with rates log-uniform in [0.1, 30] ([1e-6, 1e4] with ``extreme``).

        Example:
            >>> import torch
            >>> from expfam import Poisson
            >>> fam, gen = Poisson(), torch.Generator().manual_seed(0)
            >>> rate = fam.nat_to_mean(fam.example_nat((4,), generator=gen)).mu1
            >>> rate.shape, bool(((rate >= 0.1) & (rate <= 30.0)).all())
            (torch.Size([4, 3]), True)
        """
        lo, hi = (math.log(1e-6), math.log(1e4)) if extreme else (math.log(0.1), math.log(30.0))
        u = torch.rand((*batch_shape, dim), dtype=dtype, device=device, generator=generator)
        return PoissonNat(lo + (hi - lo) * u)
