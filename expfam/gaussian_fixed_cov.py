"""Gaussian with a fixed, known covariance Σ₀: only the mean is a parameter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.base import ExpFamily, check_finite
from expfam.linalg import chol_or_raise

_LOG_2PI = math.log(2 * math.pi)


class FixedCovNat(NamedTuple):
    """λ of a fixed-covariance Gaussian: ``lam1 = Σ₀⁻¹ m`` (``(*batch, d)``)."""

    lam1: Tensor


class FixedCovMean(NamedTuple):
    """μ of a fixed-covariance Gaussian: ``mu1 = m``."""

    mu1: Tensor


class FixedCovGaussian(ExpFamily):
    r"""Gaussian N(m, Σ₀) with a fixed covariance Σ₀: the family of the GD and SGD rows.

    .. math::
        T(\theta) = \theta,\quad \lambda = \Sigma_0^{-1} m,\quad \mu = m,\quad
        A(\lambda) = \tfrac12 \lambda^\top\Sigma_0\lambda,\\
        \log h(\theta) = -\tfrac12\theta^\top\Sigma_0^{-1}\theta - \tfrac12\log|2\pi\Sigma_0|,
        \quad \nabla_\mu(-H) = \lambda + \nabla_\mu\mathbb{E}_q[\log h] = 0.

    The entropy does not depend on m, so its natural gradient is **0**, not λ: the BLR on this
    family is gradient descent, not a shrinking one.

    Args:
        cov: Σ₀. A positive number (Σ₀ = cov·I, any dimension) or a symmetric positive-definite
            ``(d, d)`` matrix. It is converted to the dtype and device of the parameters at use.

    Example:
        >>> import torch
        >>> from expfam import FixedCovGaussian, FixedCovNat
        >>> fam = FixedCovGaussian(cov=2.0)
        >>> nat = FixedCovNat(torch.tensor([1.0, -1.0], dtype=torch.float64))
        >>> fam.nat_to_mean(nat).mu1
        tensor([ 2., -2.], dtype=torch.float64)
        >>> fam.neg_entropy_grad(nat).lam1
        tensor([0., 0.], dtype=torch.float64)
    """

    name = "gaussian_fixed_cov"
    nat_type = FixedCovNat
    mean_type = FixedCovMean
    event_ndims = (1,)
    has_rsample = True

    def __init__(self, cov: float | Tensor = 1.0) -> None:
        if isinstance(cov, Tensor) and cov.ndim > 0:
            if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
                raise ValueError(
                    f"cov must be a positive number or a (d, d) matrix, got shape "
                    f"{tuple(cov.shape)}"
                )
            cov = cov.detach().to(torch.float64)
            if not torch.allclose(cov, cov.mT, rtol=1e-12, atol=0):
                raise ValueError("cov must be symmetric")
            self._cov: Tensor | None = cov
            self._cov_chol = chol_or_raise(cov, "cov must be symmetric positive definite")
            self._scale = 0.0
        else:
            scale = float(cov)
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"cov must be > 0 when given as a number, got {scale}")
            self._cov, self._cov_chol, self._scale = None, None, scale

    def __repr__(self) -> str:
        cov = self._scale if self._cov is None else f"<{self._cov.shape[0]}x{self._cov.shape[0]}>"
        return f"FixedCovGaussian(cov={cov})"

    # Σ₀ products on tensors of shape (..., d), in the dtype/device of x
    def _cov_mv(self, x: Tensor) -> Tensor:
        if self._cov is None:
            return self._scale * x
        return x @ self._cov.to(x).mT

    def _prec_mv(self, x: Tensor) -> Tensor:
        if self._cov_chol is None:
            return x / self._scale
        chol = self._cov_chol.to(x)
        flat = x.reshape(-1, x.shape[-1]).mT
        return torch.cholesky_solve(flat, chol).mT.reshape(x.shape)

    def _logdet_2pi_cov(self, d: int, like: Tensor) -> Tensor:
        if self._cov_chol is None:
            value = d * (_LOG_2PI + math.log(self._scale))
            return torch.tensor(value, dtype=like.dtype, device=like.device)
        chol = self._cov_chol.to(like)
        return d * _LOG_2PI + 2 * torch.log(torch.diagonal(chol)).sum()

    def _whiten(self, x: Tensor) -> Tensor:
        """L₀⁻¹ x for Σ₀ = L₀L₀ᵀ, so that ‖L₀⁻¹x‖² = xᵀΣ₀⁻¹x."""
        if self._cov_chol is None:
            return x / math.sqrt(self._scale)
        chol = self._cov_chol.to(x)
        flat = x.reshape(-1, x.shape[-1]).mT
        return torch.linalg.solve_triangular(chol, flat, upper=False).mT.reshape(x.shape)

    # GaussianLike: Bonnet chain rule and reparameterization
    hessian_event_ndim = None

    def location(self, nat: FixedCovNat) -> Tensor:
        """The mean m = Σ₀ lam1.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FixedCovGaussian(cov=4.0)
            >>> fam.location(expfam.FixedCovNat(torch.tensor([0.25, -0.5])))
            tensor([ 1., -2.])
        """
        return self._cov_mv(nat.lam1)

    def reparam(self, nat: FixedCovNat, z: Tensor) -> Tensor:
        """θ = m + L₀ z with Σ₀ = L₀L₀ᵀ, differentiable in λ.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FixedCovGaussian(cov=4.0)
            >>> nat = expfam.FixedCovNat(torch.tensor([0.25, -0.5]))  # m = (1, −2)
            >>> fam.reparam(nat, torch.tensor([1.0, 1.0]))  # m + 2 z
            tensor([3., 0.])
        """
        m = self._cov_mv(nat.lam1)
        if self._cov_chol is None:
            return m + math.sqrt(self._scale) * z
        return m + z @ self._cov_chol.to(m).mT

    def mean_grad_from_gh(
        self, nat: FixedCovNat, g_hat: Tensor, h_hat: Tensor | None = None
    ) -> FixedCovNat:
        """∇_μ E_q[ℓ] = ĝ (Bonnet; μ = m, the curvature does not enter).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FixedCovGaussian(cov=4.0)
            >>> nat = expfam.FixedCovNat(torch.tensor([0.25, -0.5]))
            >>> fam.mean_grad_from_gh(nat, torch.tensor([0.5, 1.0]))
            FixedCovNat(lam1=tensor([0.5000, 1.0000]))
        """
        return FixedCovNat(g_hat)

    def gh_from_mean_grad(self, nat: FixedCovNat, grad: FixedCovNat) -> tuple[Tensor, None]:
        """(ĝ, None).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FixedCovGaussian(cov=4.0)
            >>> nat = expfam.FixedCovNat(torch.tensor([0.25, -0.5]))
            >>> fam.gh_from_mean_grad(nat, expfam.FixedCovNat(torch.tensor([0.5, 1.0])))
            (tensor([0.5000, 1.0000]), None)
        """
        return grad.lam1, None

    # the contract
    def _suff_stats(self, x: Tensor) -> FixedCovMean:
        return FixedCovMean(x)

    def _log_base_measure(self, x: Tensor) -> Tensor:
        w = self._whiten(x)
        return -0.5 * w.square().sum(-1) - 0.5 * self._logdet_2pi_cov(x.shape[-1], x)

    def _log_partition(self, nat: FixedCovNat) -> Tensor:
        return 0.5 * (nat.lam1 * self._cov_mv(nat.lam1)).sum(-1)

    def _nat_to_mean(self, nat: FixedCovNat) -> FixedCovMean:
        return FixedCovMean(self._cov_mv(nat.lam1))

    def _mean_to_nat(self, mean: FixedCovMean) -> FixedCovNat:
        return FixedCovNat(self._prec_mv(mean.mu1))

    def _expected_log_base_measure(self, nat: FixedCovNat) -> Tensor:
        # E[θᵀΣ₀⁻¹θ] = tr(Σ₀⁻¹Σ₀) + mᵀΣ₀⁻¹m = d + λᵀΣ₀λ
        d = nat.lam1.shape[-1]
        return -0.5 * (d + 2 * self._log_partition(nat)) - 0.5 * self._logdet_2pi_cov(d, nat.lam1)

    def _neg_entropy_grad(self, nat: FixedCovNat) -> FixedCovNat:
        return FixedCovNat(torch.zeros_like(nat.lam1))

    def _entropy(self, nat: FixedCovNat) -> Tensor:
        d = nat.lam1.shape[-1]
        h = 0.5 * (d + self._logdet_2pi_cov(d, nat.lam1))
        return h.expand(nat.lam1.shape[:-1]).clone()

    def _kl(self, nat_p: FixedCovNat, nat_q: FixedCovNat) -> Tensor:
        diff = nat_p.lam1 - nat_q.lam1
        return 0.5 * (diff * self._cov_mv(diff)).sum(-1)

    def _log_prob(self, nat: FixedCovNat, x: Tensor) -> Tensor:
        w = self._whiten(x - self._cov_mv(nat.lam1))
        return -0.5 * w.square().sum(-1) - 0.5 * self._logdet_2pi_cov(x.shape[-1], x)

    def _sample(self, nat: FixedCovNat, sample_shape, generator) -> Tensor:
        shape = tuple(sample_shape) + tuple(nat.lam1.shape)
        z = torch.randn(shape, dtype=nat.lam1.dtype, device=nat.lam1.device, generator=generator)
        return self.reparam(nat, z)

    def _check_nat(self, nat: FixedCovNat, name: str) -> None:
        if self._cov is not None and nat.lam1.shape[-1] != self._cov.shape[0]:
            raise ValueError(
                f"{name}.lam1 must have event size d = {self._cov.shape[0]} (the size of cov), "
                f"got shape {tuple(nat.lam1.shape)}"
            )
        check_finite(nat.lam1, f"{name}.lam1")

    def _check_mean(self, mean: FixedCovMean, name: str) -> None:
        if self._cov is not None and mean.mu1.shape[-1] != self._cov.shape[0]:
            raise ValueError(f"{name}.mu1 must have event size d = {self._cov.shape[0]}")
        check_finite(mean.mu1, f"{name}.mu1")

    def _to_torch(self, nat: FixedCovNat) -> torch.distributions.Distribution:
        m = self._cov_mv(nat.lam1)
        d = m.shape[-1]
        if self._cov_chol is None:
            chol = math.sqrt(self._scale) * torch.eye(d, dtype=m.dtype, device=m.device)
        else:
            chol = self._cov_chol.to(m)
        return torch.distributions.MultivariateNormal(m, scale_tril=chol, validate_args=False)

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> FixedCovNat:
        """Random λ with mean m uniform in [−3, 3] (or log-uniform magnitude up to 1e6 with
        ``extreme``). ``dim`` is ignored when Σ₀ is a matrix.

        Example:
            >>> import torch, expfam
            >>> gen = torch.Generator().manual_seed(0)
            >>> expfam.FixedCovGaussian(cov=2.0).example_nat((2,), dim=3, generator=gen).lam1.shape
            torch.Size([2, 3])
            >>> fam = expfam.FixedCovGaussian(cov=torch.eye(2))  # d follows Σ₀
            >>> fam.example_nat(dim=5, generator=gen).lam1.shape
            torch.Size([2])
        """
        d = dim if self._cov is None else self._cov.shape[0]
        kw = dict(dtype=dtype, device=device, generator=generator)
        m = 3 * (2 * torch.rand((*batch_shape, d), **kw) - 1)
        if extreme:
            m = m * 10 ** (6 * torch.rand((*batch_shape, d), **kw))
        return FixedCovNat(self._prec_mv(m))
