"""Gaussian with diagonal covariance: θ ∈ R^d, q(θ) = N(θ | m, diag(1/s))."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.base import ExpFamily, check_finite, check_positive
from expfam.tree import sum_event

_LOG_2PI = math.log(2 * math.pi)


class DiagNat(NamedTuple):
    """λ of a diagonal Gaussian: ``lam1 = s ⊙ m``, ``lam2 = −½ s`` (shape ``(*batch, d)``)."""

    lam1: Tensor
    lam2: Tensor


class DiagMean(NamedTuple):
    """μ of a diagonal Gaussian: ``mu1 = E[θ] = m``, ``mu2 = E[θ⊙θ] = m² + 1/s``."""

    mu1: Tensor
    mu2: Tensor


class DiagGaussian(ExpFamily):
    r"""Gaussian with diagonal covariance, the family of IVON, VOGN, Vadam, RMSprop and Adam rows.

    .. math::
        T(\theta) = (\theta, \theta\odot\theta),\quad \lambda = (s\odot m, -\tfrac12 s),\quad
        \mu = (m, m^2 + 1/s),\\
        A(\lambda) = \sum_j \Big(-\frac{\lambda_{1j}^2}{4\lambda_{2j}}
        - \tfrac12\log(-2\lambda_{2j})\Big),\quad \log h(\theta) = -\tfrac d2\log 2\pi,\quad
        \nabla_\mu(-H) = \lambda.

    Events are vectors of size d (the last dimension); leading dimensions are batch dimensions.

    Example:
        >>> import torch
        >>> from expfam import DiagGaussian
        >>> fam = DiagGaussian()
        >>> nat = fam.from_moments(torch.zeros(2, dtype=torch.float64),
        ...                        torch.tensor([1.0, 4.0], dtype=torch.float64))
        >>> fam.nat_to_mean(nat).mu2
        tensor([1.0000, 0.2500], dtype=torch.float64)
    """

    name = "gaussian_diag"
    nat_type = DiagNat
    mean_type = DiagMean
    event_ndims = (1, 1)
    has_rsample = True

    # conversions to and from (m, s)
    def from_moments(self, m: Tensor, prec: Tensor) -> DiagNat:
        """λ from the mean ``m`` and the diagonal precision ``prec`` = s.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5]))
            >>> fam.to_moments(nat)
            (tensor([ 1., -2.]), tensor([4.0000, 0.5000]))
        """
        check_finite(m, "m")
        check_positive(prec, "prec")
        try:
            m, prec = torch.broadcast_tensors(m, prec)
        except RuntimeError:
            raise ValueError(
                f"m {tuple(m.shape)} and prec {tuple(prec.shape)} must have broadcastable shapes"
            ) from None
        return DiagNat(prec * m, -0.5 * prec)

    def to_moments(self, nat: DiagNat) -> tuple[Tensor, Tensor]:
        """(m, s) from λ.

        >>> import torch
        >>> from expfam import DiagGaussian
        >>> fam = DiagGaussian()
        >>> fam.to_moments(fam.from_moments(torch.tensor([1.0]), torch.tensor([4.0])))
        (tensor([1.]), tensor([4.]))
        """
        self.validate_nat(nat)
        prec = -2 * nat.lam2
        return nat.lam1 / prec, prec

    # GaussianLike: Bonnet/Price chain rule and reparameterization
    hessian_event_ndim = 1

    def location(self, nat: DiagNat) -> Tensor:
        """The mean m = −lam1 / (2 lam2).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5]))
            >>> fam.location(nat)
            tensor([ 1., -2.])
        """
        return -0.5 * nat.lam1 / nat.lam2

    def reparam(self, nat: DiagNat, z: Tensor) -> Tensor:
        """θ = m + z / √s, differentiable in λ.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 1.0]))
            >>> fam.reparam(nat, torch.tensor([1.0, 1.0]))  # one standard deviation up
            tensor([ 1.5000, -1.0000])
        """
        s = -2 * nat.lam2
        return nat.lam1 / s + z * torch.rsqrt(s)

    def mean_grad_from_gh(self, nat: DiagNat, g_hat: Tensor, h_hat: Tensor) -> DiagNat:
        """∇_μ E_q[ℓ] = (ĝ − ĥ ⊙ m, ½ ĥ) for the diagonal Hessian estimate ĥ.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5]))
            >>> fam.mean_grad_from_gh(nat, torch.tensor([0.5, 1.0]), torch.tensor([2.0, 3.0]))
            DiagNat(lam1=tensor([-1.5000,  7.0000]), lam2=tensor([1.0000, 1.5000]))
        """
        return DiagNat(g_hat - h_hat * self.location(nat), 0.5 * h_hat)

    def gh_from_mean_grad(self, nat: DiagNat, grad: DiagNat) -> tuple[Tensor, Tensor]:
        """(ĝ, ĥ) = (∇_{μ1} + 2∇_{μ2} ⊙ m, 2∇_{μ2}).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5]))
            >>> grad = fam.mean_grad_from_gh(nat, torch.ones(2), torch.tensor([2.0, 3.0]))
            >>> fam.gh_from_mean_grad(nat, grad)  # the inverse map
            (tensor([1., 1.]), tensor([2., 3.]))
        """
        h_hat = 2 * grad.lam2
        return grad.lam1 + h_hat * self.location(nat), h_hat

    # the contract
    def _suff_stats(self, x: Tensor) -> DiagMean:
        return DiagMean(x, x * x)

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.full_like(x[..., 0], -0.5 * x.shape[-1] * _LOG_2PI)

    def _log_partition(self, nat: DiagNat) -> Tensor:
        return sum_event(-nat.lam1.square() / (4 * nat.lam2) - 0.5 * torch.log(-2 * nat.lam2), 1)

    def _nat_to_mean(self, nat: DiagNat) -> DiagMean:
        var = -0.5 / nat.lam2
        m = nat.lam1 * var
        return DiagMean(m, m * m + var)

    def _mean_to_nat(self, mean: DiagMean) -> DiagNat:
        prec = 1.0 / (mean.mu2 - mean.mu1 * mean.mu1)
        return DiagNat(prec * mean.mu1, -0.5 * prec)

    def _expected_log_base_measure(self, nat: DiagNat) -> Tensor:
        return torch.full_like(nat.lam1[..., 0], -0.5 * nat.lam1.shape[-1] * _LOG_2PI)

    def _neg_entropy_grad(self, nat: DiagNat) -> DiagNat:
        return nat

    def _entropy(self, nat: DiagNat) -> Tensor:
        return sum_event(0.5 * (1 + _LOG_2PI) - 0.5 * torch.log(-2 * nat.lam2), 1)

    def _kl(self, nat_p: DiagNat, nat_q: DiagNat) -> Tensor:
        s_p, s_q = -2 * nat_p.lam2, -2 * nat_q.lam2
        dm = nat_p.lam1 / s_p - nat_q.lam1 / s_q
        ratio = s_q / s_p
        return 0.5 * sum_event(ratio - 1 - torch.log(ratio) + s_q * dm * dm, 1)

    def _log_prob(self, nat: DiagNat, x: Tensor) -> Tensor:
        s = -2 * nat.lam2
        r = x - nat.lam1 / s
        return sum_event(-0.5 * s * r * r + 0.5 * torch.log(s) - 0.5 * _LOG_2PI, 1)

    def _sample(self, nat: DiagNat, sample_shape, generator) -> Tensor:
        s = -2 * nat.lam2
        shape = tuple(sample_shape) + tuple(nat.lam1.shape)
        z = torch.randn(shape, dtype=s.dtype, device=s.device, generator=generator)
        return nat.lam1 / s + z * torch.rsqrt(s)

    def _check_nat(self, nat: DiagNat, name: str) -> None:
        if nat.lam1.shape != nat.lam2.shape:
            raise ValueError(
                f"{name}.lam1 and {name}.lam2 must have the same shape, got "
                f"{tuple(nat.lam1.shape)} and {tuple(nat.lam2.shape)}"
            )
        check_finite(nat.lam1, f"{name}.lam1")
        check_positive(-nat.lam2, f"{name}.lam2", "< 0 (precision s = −2·lam2 > 0)")

    def _check_mean(self, mean: DiagMean, name: str) -> None:
        if mean.mu1.shape != mean.mu2.shape:
            raise ValueError(f"{name}.mu1 and {name}.mu2 must have the same shape")
        check_finite(mean.mu1, f"{name}.mu1")
        check_positive(
            mean.mu2 - mean.mu1 * mean.mu1, f"{name}.mu2 − {name}.mu1²", "> 0 (a variance)"
        )

    def _to_torch(self, nat: DiagNat) -> torch.distributions.Distribution:
        s = -2 * nat.lam2
        normal = torch.distributions.Normal(nat.lam1 / s, torch.rsqrt(s), validate_args=False)
        return torch.distributions.Independent(normal, 1)

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> DiagNat:
        """Random λ with means uniform in [−3, 3] and precisions log-uniform in [0.1, 10]
        ([1e-6, 1e6] with ``extreme``). ``dim`` is appended to ``batch_shape``.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.example_nat((2,), dim=3, generator=torch.Generator().manual_seed(0))
            >>> m, prec = fam.to_moments(nat)
            >>> m.shape, bool((prec > 0).all())
            (torch.Size([2, 3]), True)
        """
        shape = (*batch_shape, dim)
        kw = dict(dtype=dtype, device=device, generator=generator)
        m = 3 * (2 * torch.rand(shape, **kw) - 1)
        lo, hi = (-6.0, 6.0) if extreme else (-1.0, 1.0)
        prec = 10 ** (lo + (hi - lo) * torch.rand(shape, **kw))
        return DiagNat(prec * m, -0.5 * prec)
