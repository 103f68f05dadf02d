"""Bernoulli on {0, 1} or on {−1, +1} (binary weights), parameterized by λ directly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from expfam.base import ExpFamily, check_finite


class BernoulliNat(NamedTuple):
    """λ of a Bernoulli: ``lam1 = log(p/(1−p))`` on {0,1}; ``lam1 = ½ log(p/(1−p))`` on {−1,+1}."""

    lam1: Tensor


class BernoulliMean(NamedTuple):
    """μ of a Bernoulli: ``mu1 = p`` on {0,1}; ``mu1 = 2p − 1 = tanh(λ)`` on {−1,+1}."""

    mu1: Tensor


def _entropy_from_logit(logit: Tensor) -> Tensor:
    # H = softplus(ℓ) − ℓσ(ℓ) = softplus(−|ℓ|) + |ℓ|σ(−|ℓ|): no cancellation, exact for |ℓ| ≫ 1
    a = logit.abs()
    return F.softplus(-a) + a * torch.sigmoid(-a)


class Bernoulli(ExpFamily):
    r"""Independent Bernoulli variables (scalar events; every dimension is a batch dimension).

    On {0, 1} (``support="01"``):

    .. math:: T(\theta)=\theta,\ \lambda=\log\tfrac{p}{1-p},\ A=\operatorname{softplus}(\lambda),
              \ \mu=\sigma(\lambda),

    on {−1, +1} (``support="pm1"``, the binary weights of STE and BayesBiNN;
    Meng, Bachmann & Khan, ICML 2020):

    .. math:: T(\theta)=\theta,\ \lambda=\tfrac12\log\tfrac{p}{1-p},\ A=\log(2\cosh\lambda),
              \ \mu=\tanh\lambda,

    and in both cases h = 1 and ∇_μ(−H) = λ. λ is the source of truth: the entropy, KL and
    log-probabilities are computed from λ with softplus/sigmoid identities that stay exact at
    logits of ±100 (where ``torch.distributions``' generic exponential-family entropy gives NaN).

    Args:
        support: ``"01"`` or ``"pm1"``.

    Example:
        >>> import torch
        >>> from expfam import Bernoulli, BernoulliNat
        >>> fam = Bernoulli()
        >>> fam.entropy(BernoulliNat(torch.tensor([100.0, -100.0, 5.0], dtype=torch.float64)))
        tensor([3.7573e-42, 3.7573e-42, 4.0180e-02], dtype=torch.float64)
    """

    nat_type = BernoulliNat
    mean_type = BernoulliMean
    event_ndims = (0,)
    has_rsample = False

    def __init__(self, support: Literal["01", "pm1"] = "01") -> None:
        if support not in ("01", "pm1"):
            raise ValueError(f'support must be "01" or "pm1", got {support!r}')
        self.support = support
        self.name = "bernoulli" if support == "01" else "bernoulli_pm1"
        self._c = 1.0 if support == "01" else 2.0  # logit = c·λ

    def __repr__(self) -> str:
        return f"Bernoulli(support={self.support!r})"

    def logits(self, nat: BernoulliNat) -> Tensor:
        """log(p/(1−p)) for λ.

        Example:
            >>> import torch, expfam
            >>> nat = expfam.BernoulliNat(torch.tensor([0.0, 1.5]))
            >>> expfam.Bernoulli().logits(nat)
            tensor([0.0000, 1.5000])
            >>> expfam.Bernoulli(support="pm1").logits(nat)  # logit = 2λ on {−1, +1}
            tensor([0., 3.])
        """
        self.validate_nat(nat)
        return self._c * nat.lam1

    def from_logits(self, logits: Tensor) -> BernoulliNat:
        """λ for the log-odds ``logits``.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Bernoulli(support="pm1")
            >>> nat = fam.from_logits(torch.tensor([0.0, 3.0]))
            >>> nat
            BernoulliNat(lam1=tensor([0.0000, 1.5000]))
            >>> fam.logits(nat)
            tensor([0., 3.])
        """
        check_finite(logits, "logits")
        return BernoulliNat(logits / self._c)

    # the contract
    def _suff_stats(self, x: Tensor) -> BernoulliMean:
        return BernoulliMean(x if x.is_floating_point() else x.to(torch.get_default_dtype()))

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape, dtype=self._suff_stats(x).mu1.dtype, device=x.device)

    def _log_partition(self, nat: BernoulliNat) -> Tensor:
        # logaddexp, not F.softplus: softplus is linear above 20, which breaks ∇A and ∇²A there
        if self.support == "01":
            return torch.logaddexp(nat.lam1, torch.zeros_like(nat.lam1))
        return torch.logaddexp(nat.lam1, -nat.lam1)  # log(e^λ + e^−λ)

    def _nat_to_mean(self, nat: BernoulliNat) -> BernoulliMean:
        if self.support == "01":
            return BernoulliMean(torch.sigmoid(nat.lam1))
        return BernoulliMean(torch.tanh(nat.lam1))

    def _mean_to_nat(self, mean: BernoulliMean) -> BernoulliNat:
        if self.support == "01":
            return BernoulliNat(torch.log(mean.mu1) - torch.log1p(-mean.mu1))
        return BernoulliNat(torch.atanh(mean.mu1))

    def _expected_log_base_measure(self, nat: BernoulliNat) -> Tensor:
        return torch.zeros_like(nat.lam1)

    def _neg_entropy_grad(self, nat: BernoulliNat) -> BernoulliNat:
        return nat

    def _entropy(self, nat: BernoulliNat) -> Tensor:
        return _entropy_from_logit(self._c * nat.lam1)

    def _kl(self, nat_p: BernoulliNat, nat_q: BernoulliNat) -> Tensor:
        lp, lq = self._c * nat_p.lam1, self._c * nat_q.lam1
        p = torch.sigmoid(lp)
        # Σ_x p(x) log p(x)/q(x) with log-sigmoids: exact in the saturated regime
        return p * (F.logsigmoid(lp) - F.logsigmoid(lq)) + (1 - p) * (
            F.logsigmoid(-lp) - F.logsigmoid(-lq)
        )

    def _log_prob(self, nat: BernoulliNat, x: Tensor) -> Tensor:
        logit = self._c * nat.lam1
        x01 = x if self.support == "01" else (x + 1) / 2
        return torch.where(x01 > 0.5, F.logsigmoid(logit), F.logsigmoid(-logit))

    def _sample(self, nat: BernoulliNat, sample_shape, generator) -> Tensor:
        p = torch.sigmoid(self._c * nat.lam1).expand(tuple(sample_shape) + tuple(nat.lam1.shape))
        x01 = torch.bernoulli(p, generator=generator)
        return x01 if self.support == "01" else 2 * x01 - 1

    def _check_point(self, x: Tensor, name: str) -> None:
        allowed = (0, 1) if self.support == "01" else (-1, 1)
        if not ((x == allowed[0]) | (x == allowed[1])).all():
            raise ValueError(f"{name} must take values in {{{allowed[0]}, {allowed[1]}}}")

    def _check_nat(self, nat: BernoulliNat, name: str) -> None:
        check_finite(nat.lam1, f"{name}.lam1")

    def _check_mean(self, mean: BernoulliMean, name: str) -> None:
        lo = 0.0 if self.support == "01" else -1.0
        if not ((mean.mu1 > lo) & (mean.mu1 < 1)).all():
            raise ValueError(f"{name}.mu1 must lie in the open interval ({lo:g}, 1)")

    def _to_torch(self, nat: BernoulliNat) -> torch.distributions.Distribution | None:
        if self.support != "01":
            return None
        return torch.distributions.Bernoulli(logits=nat.lam1, validate_args=False)

    @property
    def has_torch_twin(self) -> bool:
        """Whether :meth:`to_torch` is available: on {0, 1} only (a torch ``Bernoulli``).

        Example:
            >>> import expfam
            >>> expfam.Bernoulli().has_torch_twin, expfam.Bernoulli(support="pm1").has_torch_twin
            (True, False)
        """
        return self.support == "01"

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> BernoulliNat:
        """Random λ with logits uniform in [−4, 4], or [−36, 36] with ``extreme`` (beyond ±36 the
        mean p = σ(logit) rounds to 0 or 1 in float64, so μ can no longer represent λ; λ itself
        stays exact there: entropy, KL and log_prob are exact at logits ±100). ``dim`` is
        appended to ``batch_shape`` (independent variables).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Bernoulli()
            >>> nat = fam.example_nat((2,), dim=3, generator=torch.Generator().manual_seed(0))
            >>> nat.lam1.shape, nat.lam1.dtype
            (torch.Size([2, 3]), torch.float64)
        """
        bound = 36.0 if extreme else 4.0
        logit = bound * (
            2 * torch.rand((*batch_shape, dim), dtype=dtype, device=device, generator=generator) - 1
        )
        return BernoulliNat(logit / self._c)
