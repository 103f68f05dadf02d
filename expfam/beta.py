"""Beta distribution on (0, 1): the two-category Dirichlet with scalar events."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.base import ExpFamily, check_finite, check_positive
from expfam.dirichlet import (
    digamma_diff,
    dirichlet_mean_to_concentration,
    sample_log_gamma,
    work_dtype,
)


class BetaNat(NamedTuple):
    """λ of a Beta: ``lam1 = α − 1``, ``lam2 = β − 1`` (same shape, every entry one variable)."""

    lam1: Tensor
    lam2: Tensor


class BetaMean(NamedTuple):
    """μ of a Beta: ``mu1 = E[log θ] = ψ(α) − ψ(α+β)``, ``mu2 = E[log(1−θ)] = ψ(β) − ψ(α+β)``."""

    mu1: Tensor
    mu2: Tensor


class Beta(ExpFamily):
    r"""Beta distribution θ ~ Beta(α, β) on (0, 1), scalar events (every entry of the parameter
    tensors is an independent variable).

    .. math::
        T(\theta) = (\log\theta, \log(1-\theta)),\quad \lambda = (\alpha - 1, \beta - 1),\quad
        \mu = (\psi(\alpha) - \psi(\alpha+\beta), \psi(\beta) - \psi(\alpha+\beta)),\\
        A(\lambda) = \log\Gamma(\alpha) + \log\Gamma(\beta) - \log\Gamma(\alpha+\beta),\quad
        \log h(\theta) = 0,\quad \nabla_\mu(-H) = \lambda.

    μ is computed with stable digamma differences (full relative precision also when α ≫ β);
    μ → λ reuses the Dirichlet solver (:func:`expfam.dirichlet.dirichlet_mean_to_concentration`,
    K = 2). Special functions are evaluated in float64 for float32 input.

    Example:
        >>> import torch
        >>> from expfam.beta import Beta, BetaNat
        >>> fam = Beta()
        >>> nat = fam.from_concentrations(torch.tensor([2.0, 0.5], dtype=torch.float64),
        ...                               torch.tensor([3.0, 0.5], dtype=torch.float64))
        >>> mean = fam.nat_to_mean(nat)
        >>> mean.mu1
        tensor([-1.0833, -1.3863], dtype=torch.float64)
        >>> alpha, beta = fam.concentrations(fam.mean_to_nat(mean))
        >>> alpha
        tensor([2.0000, 0.5000], dtype=torch.float64)
        >>> beta
        tensor([3.0000, 0.5000], dtype=torch.float64)
    """

    name = "beta"
    nat_type = BetaNat
    mean_type = BetaMean
    event_ndims = (0, 0)
    has_rsample = True

    # conversions to and from (α, β)
    def from_concentrations(self, alpha: Tensor, beta: Tensor) -> BetaNat:
        """λ from the concentrations ``alpha``, ``beta`` > 0.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Beta()
            >>> fam.from_concentrations(torch.tensor(2.0), torch.tensor(3.0))
            BetaNat(lam1=tensor(1.), lam2=tensor(2.))
        """
        check_positive(alpha, "alpha", "> 0 (a concentration)")
        check_positive(beta, "beta", "> 0 (a concentration)")
        return BetaNat(alpha - 1, beta - 1)

    def concentrations(self, nat: BetaNat) -> tuple[Tensor, Tensor]:
        """(α, β) = (λ₁ + 1, λ₂ + 1).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Beta()
            >>> nat = fam.from_concentrations(torch.tensor(2.0), torch.tensor(3.0))
            >>> fam.concentrations(nat)
            (tensor(2.), tensor(3.))
        """
        self.validate_nat(nat)
        return nat.lam1 + 1, nat.lam2 + 1

    # the contract
    def _suff_stats(self, x: Tensor) -> BetaMean:
        return BetaMean(torch.log(x), torch.log1p(-x))

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    @staticmethod
    def _log_partition64(a: Tensor, b: Tensor) -> Tensor:
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    def _log_partition(self, nat: BetaNat) -> Tensor:
        a, b = work_dtype(nat.lam1) + 1, work_dtype(nat.lam2) + 1
        return self._log_partition64(a, b).to(nat.lam1.dtype)

    def _nat_to_mean(self, nat: BetaNat) -> BetaMean:
        a, b = work_dtype(nat.lam1) + 1, work_dtype(nat.lam2) + 1
        dtype = nat.lam1.dtype
        return BetaMean((-digamma_diff(a, b)).to(dtype), (-digamma_diff(b, a)).to(dtype))

    def _mean_to_nat(self, mean: BetaMean) -> BetaNat:
        alpha = dirichlet_mean_to_concentration(torch.stack([mean.mu1, mean.mu2], dim=-1))
        return BetaNat(alpha[..., 0] - 1, alpha[..., 1] - 1)

    def _expected_log_base_measure(self, nat: BetaNat) -> Tensor:
        return torch.zeros_like(nat.lam1)

    def _neg_entropy_grad(self, nat: BetaNat) -> BetaNat:
        return nat

    def _entropy(self, nat: BetaNat) -> Tensor:
        # H = A − <λ, μ>
        l1, l2 = work_dtype(nat.lam1), work_dtype(nat.lam2)
        a, b = l1 + 1, l2 + 1
        h = self._log_partition64(a, b) + l1 * digamma_diff(a, b) + l2 * digamma_diff(b, a)
        return h.to(nat.lam1.dtype)

    def _kl(self, nat_p: BetaNat, nat_q: BetaNat) -> Tensor:
        # KL = A(λ_q) − A(λ_p) − <λ_q − λ_p, μ_p>
        ap, bp = work_dtype(nat_p.lam1) + 1, work_dtype(nat_p.lam2) + 1
        aq, bq = work_dtype(nat_q.lam1) + 1, work_dtype(nat_q.lam2) + 1
        kl = (
            self._log_partition64(aq, bq)
            - self._log_partition64(ap, bp)
            + (aq - ap) * digamma_diff(ap, bp)
            + (bq - bp) * digamma_diff(bp, ap)
        )
        return kl.to(nat_p.lam1.dtype)

    def _log_prob(self, nat: BetaNat, x: Tensor) -> Tensor:
        l1, l2, x64 = work_dtype(nat.lam1), work_dtype(nat.lam2), work_dtype(x)
        out = l1 * torch.log(x64) + l2 * torch.log1p(-x64) - self._log_partition64(l1 + 1, l2 + 1)
        return out.to(torch.promote_types(nat.lam1.dtype, x.dtype))

    def _sample(self, nat: BetaNat, sample_shape, generator) -> Tensor:
        shape = tuple(sample_shape) + tuple(nat.lam1.shape)
        log_x = sample_log_gamma((nat.lam1 + 1).expand(shape), generator)
        log_y = sample_log_gamma((nat.lam2 + 1).expand(shape), generator)
        # X / (X + Y) in log space; keep θ and 1 − θ representable so T(θ) stays finite
        theta = torch.sigmoid(log_x - log_y)
        info = torch.finfo(theta.dtype)
        return theta.clamp(info.tiny, 1 - info.eps / 2)

    def _check_nat(self, nat: BetaNat, name: str) -> None:
        if nat.lam1.shape != nat.lam2.shape:
            raise ValueError(
                f"{name}.lam1 and {name}.lam2 must have the same shape, got "
                f"{tuple(nat.lam1.shape)} and {tuple(nat.lam2.shape)}"
            )
        for field, what in (("lam1", "alpha = lam1 + 1"), ("lam2", "beta = lam2 + 1")):
            lam = getattr(nat, field)
            check_finite(lam, f"{name}.{field}")
            if not (lam > -1).all():
                raise ValueError(
                    f"{name}.{field} must be > -1 (concentration {what} > 0), got min "
                    f"{lam.min().item():.6g}"
                )

    def _check_mean(self, mean: BetaMean, name: str) -> None:
        if mean.mu1.shape != mean.mu2.shape:
            raise ValueError(
                f"{name}.mu1 and {name}.mu2 must have the same shape, got "
                f"{tuple(mean.mu1.shape)} and {tuple(mean.mu2.shape)}"
            )
        for field, what in (("mu1", "E[log θ]"), ("mu2", "E[log(1 − θ)]")):
            mu = getattr(mean, field)
            check_finite(mu, f"{name}.{field}")
            if not (mu < 0).all():
                raise ValueError(
                    f"{name}.{field} must be < 0 ({field} = {what}), got max {mu.max().item():.6g}"
                )
        lse = torch.logaddexp(mean.mu1, mean.mu2)
        if not (lse < 0).all():
            raise ValueError(
                f"{name}.mu1 and {name}.mu2 must satisfy exp(mu1) + exp(mu2) < 1 (Jensen: "
                f"exp E[log θ] + exp E[log(1 − θ)] < E[θ] + E[1 − θ] = 1), got max "
                f"log(exp(mu1) + exp(mu2)) = {lse.max().item():.6g}"
            )

    def _to_torch(self, nat: BetaNat) -> torch.distributions.Distribution:
        return torch.distributions.Beta(nat.lam1 + 1, nat.lam2 + 1, validate_args=False)

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> BetaNat:
        """Random λ with α and β log-uniform in [0.3, 30] ([1e-3, 1e4] with ``extreme``).
        ``dim`` is appended to ``batch_shape`` (independent variables).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Beta()
            >>> nat = fam.example_nat((2,), generator=torch.Generator().manual_seed(0))
            >>> alpha, beta = fam.concentrations(nat)
            >>> alpha.shape, bool((alpha > 0).all() and (beta > 0).all())
            (torch.Size([2, 3]), True)
        """
        lo, hi = (math.log(1e-3), math.log(1e4)) if extreme else (math.log(0.3), math.log(30.0))
        shape = (*batch_shape, dim)
        kw = dict(dtype=dtype, device=device, generator=generator)
        a = torch.exp(lo + (hi - lo) * torch.rand(shape, **kw))
        b = torch.exp(lo + (hi - lo) * torch.rand(shape, **kw))
        return BetaNat(a - 1, b - 1)
