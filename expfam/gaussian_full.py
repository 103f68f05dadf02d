"""Gaussian with full covariance, held through the Cholesky factor of its precision."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.base import ExpFamily, Tolerances, check_finite, check_symmetric
from expfam.linalg import chol_or_raise, sym

_LOG_2PI = math.log(2 * math.pi)


class FullNat(NamedTuple):
    """λ of a full Gaussian: ``lam1 = S m`` (``(*batch, d)``), ``lam2 = −½ S`` (``(*batch, d, d)``,
    symmetric)."""

    lam1: Tensor
    lam2: Tensor


class FullMean(NamedTuple):
    """μ of a full Gaussian: ``mu1 = m``, ``mu2 = E[θθᵀ] = Σ + m mᵀ``."""

    mu1: Tensor
    mu2: Tensor


def prec_cholesky(lam2: Tensor, name: str = "nat.lam2") -> Tensor:
    """Lower Cholesky factor L of the precision S = −(lam2 + lam2ᵀ) (= −2·lam2 for symmetric
    lam2), S = L Lᵀ. Raises ValueError naming ``name`` when S is not positive definite."""
    return chol_or_raise(
        -(lam2 + lam2.mT),
        f"{name} must be negative definite (the precision S = −2·lam2 must be positive definite)",
    )


class FullGaussian(ExpFamily):
    r"""Gaussian with full covariance, the family of the Newton and Laplace rows.

    .. math::
        T(\theta) = (\theta, \theta\theta^\top),\quad \lambda = (Sm, -\tfrac12 S),\quad
        \mu = (m, \Sigma + mm^\top),\\
        A(\lambda) = \tfrac12 \lambda_1^\top S^{-1}\lambda_1 - \tfrac12\log|S|
                   = \tfrac12\|L^{-1}\lambda_1\|^2 - \textstyle\sum_i \log L_{ii},
        \quad \nabla_\mu(-H) = \lambda.

    Every quantity is computed through the Cholesky factor ``L`` of the precision ``S = L Lᵀ``
    (solves, log-determinants, sampling θ = m + L⁻ᵀz); no explicit inverse is formed except
    Σ in :meth:`nat_to_mean`, which μ₂ needs. Matrix gradients follow the symmetric convention
    of docs/concepts.md: A is written in ``−(lam2 + lam2ᵀ)``, so ∇_{lam2}A = μ₂ is symmetric.

    Example:
        >>> import torch
        >>> from expfam import FullGaussian
        >>> fam = FullGaussian()
        >>> nat = fam.from_moments(torch.zeros(2, dtype=torch.float64),
        ...                        torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
        >>> fam.entropy(nat)
        tensor(2.2886, dtype=torch.float64)
    """

    name = "gaussian_full"
    nat_type = FullNat
    mean_type = FullMean
    event_ndims = (1, 2)
    has_rsample = True
    tolerances = Tolerances(roundtrip=1e-11)

    def from_moments(self, m: Tensor, prec: Tensor) -> FullNat:
        """λ from the mean ``m`` (``(*batch, d)``) and the precision ``prec``
        (``(*batch, d, d)``).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FullGaussian()
            >>> m, prec = torch.tensor([1.0, 2.0]), torch.tensor([[2.0, 1.0], [1.0, 2.0]])
            >>> m2, prec2 = fam.to_moments(fam.from_moments(m, prec))
            >>> torch.allclose(m2, m), torch.allclose(prec2, prec)
            (True, True)
        """
        check_finite(m, "m")
        check_symmetric(prec, "prec")
        if m.ndim < 1 or prec.shape[-1] != m.shape[-1]:
            raise ValueError(
                f"m (*batch, d) and prec (*batch, d, d) must share d: got m {tuple(m.shape)}, "
                f"prec {tuple(prec.shape)}"
            )
        try:
            torch.broadcast_shapes(m.shape[:-1], prec.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"the batch shapes of m {tuple(m.shape[:-1])} and prec {tuple(prec.shape[:-2])} "
                "do not broadcast"
            ) from None
        chol_or_raise(sym(prec), "prec must be symmetric positive definite")
        return FullNat((prec @ m.unsqueeze(-1)).squeeze(-1), -0.5 * prec)

    def to_moments(self, nat: FullNat) -> tuple[Tensor, Tensor]:
        """(m, S) from λ.

        >>> import torch
        >>> from expfam import FullGaussian
        >>> fam = FullGaussian()
        >>> nat = fam.from_moments(torch.tensor([1.0, 2.0]), 4 * torch.eye(2))
        >>> m, S = fam.to_moments(nat)
        >>> m, S.diagonal()
        (tensor([1., 2.]), tensor([4., 4.]))
        """
        self.validate_nat(nat)
        return self.mean_and_chol(nat)[0], -2 * sym(nat.lam2)

    def mean_and_chol(self, nat: FullNat) -> tuple[Tensor, Tensor]:
        """(m, L) with S = L Lᵀ the precision: the working representation of this family.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FullGaussian()
            >>> m, prec = torch.tensor([1.0, 2.0]), torch.diag(torch.tensor([4.0, 9.0]))
            >>> nat = fam.from_moments(m, prec)
            >>> fam.mean_and_chol(nat)
            (tensor([1., 2.]), tensor([[2., 0.],
                    [0., 3.]]))
        """
        chol = prec_cholesky(nat.lam2)
        m = torch.cholesky_solve(nat.lam1.unsqueeze(-1), chol).squeeze(-1)
        return m, chol

    # GaussianLike: Bonnet/Price chain rule and reparameterization
    hessian_event_ndim = 2

    def location(self, nat: FullNat) -> Tensor:
        """The mean m = S⁻¹ lam1 (Cholesky solve).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FullGaussian()
            >>> m, prec = torch.tensor([1.0, 2.0]), torch.diag(torch.tensor([4.0, 9.0]))
            >>> nat = fam.from_moments(m, prec)
            >>> fam.location(nat)
            tensor([1., 2.])
        """
        return self.mean_and_chol(nat)[0]

    def reparam(self, nat: FullNat, z: Tensor) -> Tensor:
        """θ = m + L⁻ᵀ z with S = L Lᵀ (so Cov θ = S⁻¹), differentiable in λ.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FullGaussian()
            >>> m, prec = torch.tensor([1.0, 2.0]), torch.diag(torch.tensor([4.0, 9.0]))
            >>> nat = fam.from_moments(m, prec)
            >>> fam.reparam(nat, torch.tensor([1.0, 3.0]))  # (1 + 1/2, 2 + 3/3)
            tensor([1.5000, 3.0000])
        """
        m, chol = self.mean_and_chol(nat)
        upper = chol.mT.expand(*z.shape[:-1], *chol.shape[-2:])
        return m + torch.linalg.solve_triangular(upper, z.unsqueeze(-1), upper=True).squeeze(-1)

    def mean_grad_from_gh(self, nat: FullNat, g_hat: Tensor, h_hat: Tensor) -> FullNat:
        """∇_μ E_q[ℓ] = (ĝ − Ĥ m, ½ Ĥ) for a symmetric Hessian estimate Ĥ.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FullGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, 2.0]), torch.eye(2))
            >>> grad = fam.mean_grad_from_gh(nat, torch.tensor([1.0, 0.0]), 2 * torch.eye(2))
            >>> grad.lam1, grad.lam2.diagonal()
            (tensor([-1., -4.]), tensor([1., 1.]))
        """
        m = self.location(nat)
        return FullNat(g_hat - (h_hat @ m.unsqueeze(-1)).squeeze(-1), 0.5 * h_hat)

    def gh_from_mean_grad(self, nat: FullNat, grad: FullNat) -> tuple[Tensor, Tensor]:
        """(ĝ, Ĥ) = (∇_{μ1} + 2∇_{μ2} m, 2∇_{μ2}).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FullGaussian()
            >>> nat = fam.from_moments(torch.tensor([1.0, 2.0]), torch.eye(2))
            >>> grad = fam.mean_grad_from_gh(nat, torch.tensor([1.0, 0.0]), 2 * torch.eye(2))
            >>> g, h = fam.gh_from_mean_grad(nat, grad)  # the inverse map
            >>> g, h.diagonal()
            (tensor([1., 0.]), tensor([2., 2.]))
        """
        h_hat = 2 * sym(grad.lam2)
        m = self.location(nat)
        return grad.lam1 + (h_hat @ m.unsqueeze(-1)).squeeze(-1), h_hat

    # the contract
    def _suff_stats(self, x: Tensor) -> FullMean:
        return FullMean(x, x.unsqueeze(-1) * x.unsqueeze(-2))

    def _log_base_measure(self, x: Tensor) -> Tensor:
        return torch.full_like(x[..., 0], -0.5 * x.shape[-1] * _LOG_2PI)

    def _log_partition(self, nat: FullNat) -> Tensor:
        chol = prec_cholesky(nat.lam2)
        w = torch.linalg.solve_triangular(chol, nat.lam1.unsqueeze(-1), upper=False)
        logdet_half = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * w.squeeze(-1).square().sum(-1) - logdet_half

    def _nat_to_mean(self, nat: FullNat) -> FullMean:
        m, chol = self.mean_and_chol(nat)
        cov = torch.cholesky_inverse(chol)
        return FullMean(m, sym(cov) + m.unsqueeze(-1) * m.unsqueeze(-2))

    def _mean_to_nat(self, mean: FullMean) -> FullNat:
        m = mean.mu1
        cov = mean.mu2 - m.unsqueeze(-1) * m.unsqueeze(-2)
        cov_chol = torch.linalg.cholesky(sym(cov))
        prec = sym(torch.cholesky_inverse(cov_chol))
        return FullNat((prec @ m.unsqueeze(-1)).squeeze(-1), -0.5 * prec)

    def _expected_log_base_measure(self, nat: FullNat) -> Tensor:
        return torch.full_like(nat.lam1[..., 0], -0.5 * nat.lam1.shape[-1] * _LOG_2PI)

    def _neg_entropy_grad(self, nat: FullNat) -> FullNat:
        return nat

    def _entropy(self, nat: FullNat) -> Tensor:
        chol = prec_cholesky(nat.lam2)
        d = nat.lam1.shape[-1]
        return 0.5 * d * (1 + _LOG_2PI) - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    def _kl(self, nat_p: FullNat, nat_q: FullNat) -> Tensor:
        m_p, l_p = self.mean_and_chol(nat_p)
        m_q, l_q = self.mean_and_chol(nat_q)
        l_p, l_q = torch.broadcast_tensors(l_p, l_q)
        d = m_p.shape[-1]
        # tr(S_q Σ_p) = ‖L_p⁻¹ L_q‖_F²;  (m_p − m_q)ᵀ S_q (m_p − m_q) = ‖L_qᵀ (m_p − m_q)‖²
        trace = torch.linalg.solve_triangular(l_p, l_q, upper=False).square().sum((-2, -1))
        maha = (l_q.mT @ (m_p - m_q).unsqueeze(-1)).squeeze(-1).square().sum(-1)
        logdet_p = 2 * torch.log(torch.diagonal(l_p, dim1=-2, dim2=-1)).sum(-1)
        logdet_q = 2 * torch.log(torch.diagonal(l_q, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * (trace + maha - d + logdet_p - logdet_q)

    def _log_prob(self, nat: FullNat, x: Tensor) -> Tensor:
        m, chol = self.mean_and_chol(nat)
        r = (chol.mT @ (x - m).unsqueeze(-1)).squeeze(-1)
        half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * r.square().sum(-1) + half_logdet - 0.5 * x.shape[-1] * _LOG_2PI

    def _sample(self, nat: FullNat, sample_shape, generator) -> Tensor:
        shape = tuple(sample_shape) + tuple(nat.lam1.shape)
        z = torch.randn(shape, dtype=nat.lam1.dtype, device=nat.lam1.device, generator=generator)
        return self.reparam(nat, z)

    def _check_nat(self, nat: FullNat, name: str) -> None:
        d = nat.lam1.shape[-1]
        if nat.lam2.shape[-2:] != (d, d):
            raise ValueError(
                f"{name}.lam2 must have event shape (d, d) = ({d}, {d}) to match {name}.lam1, "
                f"got {tuple(nat.lam2.shape)}"
            )
        check_finite(nat.lam1, f"{name}.lam1")
        check_finite(nat.lam2, f"{name}.lam2")
        asym = (nat.lam2 - nat.lam2.mT).abs().amax()
        scale = nat.lam2.abs().amax()
        if asym > 1e3 * torch.finfo(nat.lam2.dtype).eps * scale:
            raise ValueError(f"{name}.lam2 must be symmetric, got max |lam2 − lam2ᵀ| = {asym:.3g}")
        prec_cholesky(nat.lam2, f"{name}.lam2")

    def _check_mean(self, mean: FullMean, name: str) -> None:
        d = mean.mu1.shape[-1]
        if mean.mu2.shape[-2:] != (d, d):
            raise ValueError(f"{name}.mu2 must have event shape ({d}, {d}) to match {name}.mu1")
        check_finite(mean.mu1, f"{name}.mu1")
        check_finite(mean.mu2, f"{name}.mu2")
        cov = mean.mu2 - mean.mu1.unsqueeze(-1) * mean.mu1.unsqueeze(-2)
        if (torch.linalg.cholesky_ex(sym(cov))[1] != 0).any():
            raise ValueError(
                f"{name}.mu2 − {name}.mu1 {name}.mu1ᵀ must be positive definite (a covariance)"
            )

    def _to_torch(self, nat: FullNat) -> torch.distributions.Distribution:
        m, chol = self.mean_and_chol(nat)
        return torch.distributions.MultivariateNormal(
            m, precision_matrix=chol @ chol.mT, validate_args=False
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
    ) -> FullNat:
        """Random λ: S = c·Q diag(e) Qᵀ with eigenvalues e in [0.3, 3] and an overall scale c,
        log-uniform in [0.1, 10] (or [1e-6, 1e6] with ``extreme``).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.FullGaussian()
            >>> nat = fam.example_nat((2,), dim=3, generator=torch.Generator().manual_seed(0))
            >>> nat.lam1.shape, nat.lam2.shape, torch.allclose(nat.lam2, nat.lam2.mT)
            (torch.Size([2, 3]), torch.Size([2, 3, 3]), True)
        """
        kw = dict(dtype=dtype, device=device, generator=generator)
        batch = tuple(batch_shape)
        q, _ = torch.linalg.qr(torch.randn((*batch, dim, dim), **kw))
        eig = 0.3 * 10 ** torch.rand((*batch, dim), **kw)
        lo, hi = (-6.0, 6.0) if extreme else (-1.0, 1.0)
        scale = 10 ** (lo + (hi - lo) * torch.rand((*batch, 1, 1), **kw))
        prec = sym(scale * (q * eig.unsqueeze(-2)) @ q.mT)
        m = 3 * (2 * torch.rand((*batch, dim), **kw) - 1)
        return FullNat((prec @ m.unsqueeze(-1)).squeeze(-1), -0.5 * prec)
