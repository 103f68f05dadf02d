"""Categorical over K classes in its minimal parameterization (K − 1 free logits)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from expfam.base import ExpFamily, check_finite, check_simplex


class CategoricalNat(NamedTuple):
    """λ of a Categorical: ``lam1[k] = log(π_k / π_K)``, k < K (shape ``(*batch, K − 1)``)."""

    lam1: Tensor


class CategoricalMean(NamedTuple):
    """μ of a Categorical: ``mu1[k] = π_k``, k < K."""

    mu1: Tensor


def _full_logits(lam1: Tensor) -> Tensor:
    return torch.cat([lam1, torch.zeros_like(lam1[..., :1])], dim=-1)


class Categorical(ExpFamily):
    r"""Categorical distribution over K classes, minimal parameterization (class K is the
    reference). Points θ are one-hot vectors of length K (as in ``OneHotCategorical``);
    :meth:`one_hot` turns integer labels into points.

    .. math::
        T(\theta) = \theta_{1:K-1},\quad \lambda_k = \log\frac{\pi_k}{\pi_K},\quad
        A(\lambda) = \log\Big(1 + \sum_{k<K} e^{\lambda_k}\Big),\quad \mu = \pi_{1:K-1},\quad
        h = 1,\quad \nabla_\mu(-H) = \lambda.

    Example:
        >>> import torch
        >>> from expfam import Categorical, CategoricalNat
        >>> fam = Categorical()
        >>> nat = CategoricalNat(torch.zeros(2, dtype=torch.float64))  # three equal classes
        >>> fam.entropy(nat)
        tensor(1.0986, dtype=torch.float64)
    """

    name = "categorical"
    nat_type = CategoricalNat
    mean_type = CategoricalMean
    event_ndims = (1,)
    has_rsample = False

    @staticmethod
    def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype | None = None) -> Tensor:
        """One-hot points (``(*labels.shape, K)``) from integer class labels in [0, K).

        Example:
            >>> import torch, expfam
            >>> expfam.Categorical.one_hot(torch.tensor([0, 2]), 3)
            tensor([[1., 0., 0.],
                    [0., 0., 1.]])
        """
        return F.one_hot(labels.long(), num_classes).to(dtype or torch.get_default_dtype())

    def log_probs(self, nat: CategoricalNat) -> Tensor:
        """log π, all K classes (shape ``(*batch, K)``).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Categorical()
            >>> nat = expfam.CategoricalNat(torch.zeros(2))  # three equal classes
            >>> fam.log_probs(nat).exp()
            tensor([0.3333, 0.3333, 0.3333])
        """
        self.validate_nat(nat)
        return torch.log_softmax(_full_logits(nat.lam1), dim=-1)

    def from_probs(self, probs: Tensor) -> CategoricalNat:
        """λ from class probabilities π (shape ``(*batch, K)``, positive, summing to one).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Categorical()
            >>> nat = fam.from_probs(torch.tensor([0.2, 0.3, 0.5]))
            >>> fam.log_probs(nat).exp()
            tensor([0.2000, 0.3000, 0.5000])
        """
        check_simplex(probs, "probs")
        logp = torch.log(probs)
        return CategoricalNat(logp[..., :-1] - logp[..., -1:])

    # the contract
    def _suff_stats(self, x: Tensor) -> CategoricalMean:
        x = x if x.is_floating_point() else x.to(torch.get_default_dtype())
        return CategoricalMean(x[..., :-1])

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[:-1], dtype=self._suff_stats(x).mu1.dtype, device=x.device)

    def _log_partition(self, nat: CategoricalNat) -> Tensor:
        return torch.logsumexp(_full_logits(nat.lam1), dim=-1)

    def _nat_to_mean(self, nat: CategoricalNat) -> CategoricalMean:
        return CategoricalMean(torch.softmax(_full_logits(nat.lam1), dim=-1)[..., :-1])

    def _mean_to_nat(self, mean: CategoricalMean) -> CategoricalNat:
        last = 1 - mean.mu1.sum(-1, keepdim=True)
        return CategoricalNat(torch.log(mean.mu1) - torch.log(last))

    def _expected_log_base_measure(self, nat: CategoricalNat) -> Tensor:
        return torch.zeros_like(nat.lam1[..., 0])

    def _neg_entropy_grad(self, nat: CategoricalNat) -> CategoricalNat:
        return nat

    def _entropy(self, nat: CategoricalNat) -> Tensor:
        logp = torch.log_softmax(_full_logits(nat.lam1), dim=-1)
        return -(logp.exp() * logp).sum(-1)

    def _kl(self, nat_p: CategoricalNat, nat_q: CategoricalNat) -> Tensor:
        logp = torch.log_softmax(_full_logits(nat_p.lam1), dim=-1)
        logq = torch.log_softmax(_full_logits(nat_q.lam1), dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1)

    def _log_prob(self, nat: CategoricalNat, x: Tensor) -> Tensor:
        logp = torch.log_softmax(_full_logits(nat.lam1), dim=-1)
        return (torch.where(x > 0.5, logp, torch.zeros_like(logp))).sum(-1)

    def _sample(self, nat: CategoricalNat, sample_shape, generator) -> Tensor:
        probs = torch.softmax(_full_logits(nat.lam1), dim=-1)
        k = probs.shape[-1]
        flat = probs.reshape(-1, k)
        n = 1
        for s in sample_shape:
            n *= s
        idx = torch.multinomial(flat, n, replacement=True, generator=generator)  # (B, n)
        idx = idx.mT.reshape((*sample_shape, *probs.shape[:-1]))
        return F.one_hot(idx, k).to(probs.dtype)

    def _check_point(self, x: Tensor, name: str) -> None:
        if x.ndim < 1 or not (((x == 0) | (x == 1)).all() and (x.sum(-1) == 1).all()):
            raise ValueError(f"{name} must be one-hot along its last dimension")

    def _check_nat(self, nat: CategoricalNat, name: str) -> None:
        if nat.lam1.shape[-1] < 1:
            raise ValueError(f"{name}.lam1 must have K − 1 ≥ 1 entries in its last dimension")
        check_finite(nat.lam1, f"{name}.lam1")

    def _check_mean(self, mean: CategoricalMean, name: str) -> None:
        last = 1 - mean.mu1.sum(-1)
        if not ((mean.mu1 > 0).all() and (last > 0).all()):
            raise ValueError(
                f"{name}.mu1 must hold K − 1 positive probabilities with sum < 1 (π_K > 0)"
            )

    def _to_torch(self, nat: CategoricalNat) -> torch.distributions.Distribution:
        return torch.distributions.OneHotCategorical(
            logits=_full_logits(nat.lam1), validate_args=False
        )

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> CategoricalNat:
        """Random λ for K = ``dim`` + 1 classes, logits uniform in [−3, 3] ([−30, 30] with
        ``extreme``).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Categorical()
            >>> nat = fam.example_nat((2,), dim=3, generator=torch.Generator().manual_seed(0))
            >>> nat.lam1.shape, fam.log_probs(nat).shape  # K = 4 classes
            (torch.Size([2, 3]), torch.Size([2, 4]))
        """
        bound = 30.0 if extreme else 3.0
        u = torch.rand((*batch_shape, dim), dtype=dtype, device=device, generator=generator)
        return CategoricalNat(bound * (2 * u - 1))
