"""Finite mixtures of Gaussians as a joint exponential family over (θ, z) (Lin, Khan & Schmidt,
ICML 2019; Khan & Rue 2023, Table 1 rows 3 and 17)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from expfam.base import ExpFamily, Tolerances, check_finite, check_simplex
from expfam.gaussian_diag import DiagGaussian
from expfam.gaussian_full import FullGaussian


class MixtureNat(NamedTuple):
    """λ of the joint q(θ, z): ``c`` (``(*batch, K−1)``) with c_k = log(π_k/π_K) − A_k + A_K, and
    the components' natural parameters with a component dimension K before their event
    dimensions: ``lam1`` (``(*batch, K, d)``), ``lam2`` (``(*batch, K, d)`` diagonal or
    ``(*batch, K, d, d)`` full)."""

    c: Tensor
    lam1: Tensor
    lam2: Tensor


class MixtureMean(NamedTuple):
    """μ of the joint: ``mu0 = π_{1:K−1}``, ``mu1[k] = π_k m_k``, ``mu2[k] = π_k E_k[T₂(θ)]``."""

    mu0: Tensor
    mu1: Tensor
    mu2: Tensor


class MixturePoint(NamedTuple):
    """A point of the joint space: ``theta`` (``(*batch, d)``) and the one-hot component ``z``
    (``(*batch, K)``)."""

    theta: Tensor
    z: Tensor


def _pad(c: Tensor) -> Tensor:
    return torch.cat([c, torch.zeros_like(c[..., :1])], dim=-1)


class Mixture(ExpFamily):
    r"""Mixture of K Gaussians q(θ) = Σ_k π_k N(θ | m_k, S_k⁻¹), handled as the joint exponential
    family q(θ, z) = Cat(z | π) N(θ | m_z, S_z⁻¹) (Lin, Khan & Schmidt, ICML 2019):

    .. math::
        T(\theta, z) = \big(1[z{=}k]_{k<K},\ 1[z{=}k]\,T_c(\theta)\big),\quad
        \lambda = (c, \lambda_k),\quad
        c_k = \log\frac{\pi_k}{\pi_K} - A_c(\lambda_k) + A_c(\lambda_K),\\
        A(\lambda) = \log\sum_k e^{c_k + A_c(\lambda_k)}\ (c_K = 0),\quad
        \mu = (\pi_{1:K-1},\ \pi_k\,\mu_c(\lambda_k)),\quad \nabla_\mu(-H_{joint}) = \lambda.

    The exponential-family methods (``log_prob``, ``entropy``, ``kl``, ``sample``) are those of
    the joint over :class:`MixturePoint` (θ, z). The marginal q(θ), which is not an exponential
    family, has :meth:`marginal_log_prob`, :meth:`responsibilities` and
    :meth:`rsample_components` (reparameterized draws from every component, what the mixture BLR
    needs for E_{q_k}[·]); its entropy has no closed form and stays inside the BLR's loss as
    log q(θ) (Lin, Khan & Schmidt, ICML 2019).

    Args:
        component: the Gaussian family of the components, :class:`FullGaussian` (default) or
            :class:`DiagGaussian`.

    Example:
        >>> import torch
        >>> from expfam import Mixture, FullGaussian
        >>> fam = Mixture(FullGaussian())
        >>> comp = FullGaussian().from_moments(
        ...     torch.tensor([[-2.0], [2.0]], dtype=torch.float64),
        ...     torch.ones(2, 1, 1, dtype=torch.float64))
        >>> nat = fam.from_components(torch.tensor([0.5, 0.5], dtype=torch.float64), comp)
        >>> fam.marginal_log_prob(nat, torch.zeros(1, dtype=torch.float64))
        tensor(-2.9189, dtype=torch.float64)
    """

    mean_type = MixtureMean
    nat_type = MixtureNat
    has_rsample = False
    tolerances = Tolerances(roundtrip=1e-10)

    def __init__(self, component: FullGaussian | DiagGaussian | None = None) -> None:
        component = FullGaussian() if component is None else component
        if not isinstance(component, (FullGaussian, DiagGaussian)):
            raise TypeError(
                f"component must be a FullGaussian or DiagGaussian, got {type(component).__name__}"
            )
        self.component = component
        self.name = f"mixture_{component.name.removeprefix('gaussian_')}"
        self.event_ndims = (1, *(k + 1 for k in component.event_ndims))

    def __repr__(self) -> str:
        return f"Mixture({type(self.component).__name__}())"

    # ------------------------------------------------------------------ helpers
    def components(self, nat: MixtureNat) -> tuple:
        """The components' natural parameters (component dimension K as the last batch dim).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Mixture(expfam.DiagGaussian())
            >>> comp = fam.component.from_moments(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
            >>> nat = fam.from_components(torch.tensor([0.25, 0.75]), comp)
            >>> fam.component.to_moments(fam.components(nat))
            (tensor([[-2.],
                    [ 2.]]), tensor([[1.],
                    [1.]]))
        """
        return self.component.nat_type(nat.lam1, nat.lam2)

    def _comp_log_partition(self, nat: MixtureNat) -> Tensor:
        return self.component._log_partition(self.components(nat))

    def _log_weights(self, nat: MixtureNat) -> Tensor:
        return torch.log_softmax(_pad(nat.c) + self._comp_log_partition(nat), dim=-1)

    def log_weights(self, nat: MixtureNat) -> Tensor:
        """log π, shape ``(*batch, K)``.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Mixture(expfam.DiagGaussian())
            >>> comp = fam.component.from_moments(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
            >>> nat = fam.from_components(torch.tensor([0.25, 0.75]), comp)
            >>> fam.log_weights(nat).exp()
            tensor([0.2500, 0.7500])
        """
        self.validate_nat(nat)
        return self._log_weights(nat)

    def from_components(self, weights: Tensor, comp_nat: tuple) -> MixtureNat:
        """λ from mixture weights π (``(*batch, K)``, positive, summing to one) and the
        components' natural parameters (component dimension K last among the batch dims).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Mixture(expfam.DiagGaussian())
            >>> comp = fam.component.from_moments(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
            >>> nat = fam.from_components(torch.tensor([0.25, 0.75]), comp)
            >>> nat.c.shape, fam.log_weights(nat).exp()
            (torch.Size([1]), tensor([0.2500, 0.7500]))
        """
        check_simplex(weights, "weights")
        self.component.validate_nat(comp_nat, "comp_nat")
        a = self.component._log_partition(comp_nat)
        logw = torch.log(weights)
        c = (logw[..., :-1] - logw[..., -1:]) - a[..., :-1] + a[..., -1:]
        return MixtureNat(c, *comp_nat)

    def _comp_log_prob(self, nat: MixtureNat, theta: Tensor) -> Tensor:
        """log N_k(θ) for every k, shape ``(*batch, K)``."""
        return self.component._log_prob(self.components(nat), theta.unsqueeze(-2))

    def marginal_log_prob(self, nat: MixtureNat, theta: Tensor) -> Tensor:
        """log q(θ) = log Σ_k π_k N(θ | m_k, S_k⁻¹), for θ of shape ``(*sample, *batch, d)``.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Mixture(expfam.DiagGaussian())
            >>> comp = fam.component.from_moments(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
            >>> nat = fam.from_components(torch.tensor([0.25, 0.75]), comp)
            >>> fam.marginal_log_prob(nat, torch.zeros(5, 1)).shape  # five points θ ∈ R¹
            torch.Size([5])
        """
        self.validate_nat(nat)
        return torch.logsumexp(self._log_weights(nat) + self._comp_log_prob(nat, theta), dim=-1)

    def responsibilities(self, nat: MixtureNat, theta: Tensor) -> Tensor:
        """r_k(θ) = π_k N_k(θ) / q(θ), shape ``(*sample, *batch, K)``; sums to one over k.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Mixture(expfam.DiagGaussian())
            >>> comp = fam.component.from_moments(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
            >>> nat = fam.from_components(torch.tensor([0.25, 0.75]), comp)
            >>> fam.responsibilities(nat, torch.zeros(1))  # midway: r = π
            tensor([0.2500, 0.7500])
        """
        self.validate_nat(nat)
        return torch.softmax(self._log_weights(nat) + self._comp_log_prob(nat, theta), dim=-1)

    def rsample_components(
        self,
        nat: MixtureNat,
        sample_shape: Sequence[int] = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Reparameterized draws θ_k ~ N(m_k, S_k⁻¹) from every component:
        shape ``(*sample_shape, *batch, K, d)``, differentiable in the component parameters.

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Mixture(expfam.DiagGaussian())
            >>> comp = fam.component.from_moments(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
            >>> nat = fam.from_components(torch.tensor([0.25, 0.75]), comp)
            >>> gen = torch.Generator().manual_seed(0)
            >>> fam.rsample_components(nat, (4,), generator=gen).shape  # (sample, K, d)
            torch.Size([4, 2, 1])
        """
        self.validate_nat(nat)
        return self.component._sample(self.components(nat), tuple(sample_shape), generator)

    # ------------------------------------------------------------------ the contract
    def _suff_stats(self, x: MixturePoint) -> MixtureMean:
        z = x.z if x.z.is_floating_point() else x.z.to(x.theta.dtype)
        t = self.component._suff_stats(x.theta.unsqueeze(-2))
        zk1 = z.unsqueeze(-1)
        mu2 = zk1 * t.mu2 if t.mu2.ndim == zk1.ndim else zk1.unsqueeze(-1) * t.mu2
        return MixtureMean(z[..., :-1], zk1 * t.mu1, mu2)

    def _log_base_measure(self, x: MixturePoint) -> Tensor:
        return self.component._log_base_measure(x.theta)

    def _log_partition(self, nat: MixtureNat) -> Tensor:
        return torch.logsumexp(_pad(nat.c) + self._comp_log_partition(nat), dim=-1)

    def _nat_to_mean(self, nat: MixtureNat) -> MixtureMean:
        w = torch.exp(self._log_weights(nat))
        mc = self.component._nat_to_mean(self.components(nat))
        w1 = w.unsqueeze(-1)
        w2 = w1 if mc.mu2.ndim == w1.ndim else w1.unsqueeze(-1)
        return MixtureMean(w[..., :-1], w1 * mc.mu1, w2 * mc.mu2)

    def _weights_from_mean(self, mean: MixtureMean) -> Tensor:
        last = 1 - mean.mu0.sum(-1, keepdim=True)
        return torch.cat([mean.mu0, last], dim=-1)

    def _mean_to_nat(self, mean: MixtureMean) -> MixtureNat:
        w = self._weights_from_mean(mean)
        w1 = w.unsqueeze(-1)
        w2 = w1 if mean.mu2.ndim == w1.ndim else w1.unsqueeze(-1)
        comp_mean = self.component.mean_type(mean.mu1 / w1, mean.mu2 / w2)
        comp_nat = self.component._mean_to_nat(comp_mean)
        a = self.component._log_partition(comp_nat)
        logw = torch.log(w)
        c = (logw[..., :-1] - logw[..., -1:]) - a[..., :-1] + a[..., -1:]
        return MixtureNat(c, *comp_nat)

    def _expected_log_base_measure(self, nat: MixtureNat) -> Tensor:
        w = torch.exp(self._log_weights(nat))
        return (w * self.component._expected_log_base_measure(self.components(nat))).sum(-1)

    def _neg_entropy_grad(self, nat: MixtureNat) -> MixtureNat:
        return nat

    def _entropy(self, nat: MixtureNat) -> Tensor:
        logw = self._log_weights(nat)
        w = torch.exp(logw)
        return -(w * logw).sum(-1) + (w * self.component._entropy(self.components(nat))).sum(-1)

    def _kl(self, nat_p: MixtureNat, nat_q: MixtureNat) -> Tensor:
        logw_p, logw_q = self._log_weights(nat_p), self._log_weights(nat_q)
        w_p = torch.exp(logw_p)
        kl_c = self.component._kl(self.components(nat_p), self.components(nat_q))
        return (w_p * (logw_p - logw_q)).sum(-1) + (w_p * kl_c).sum(-1)

    def _log_prob(self, nat: MixtureNat, x: MixturePoint) -> Tensor:
        joint = self._log_weights(nat) + self._comp_log_prob(nat, x.theta)
        return torch.where(x.z > 0.5, joint, torch.zeros_like(joint)).sum(-1)

    def _sample(self, nat: MixtureNat, sample_shape, generator) -> MixturePoint:
        w = torch.exp(self._log_weights(nat))
        k = w.shape[-1]
        n = 1
        for s in sample_shape:
            n *= s
        idx = torch.multinomial(w.reshape(-1, k), n, replacement=True, generator=generator)
        idx = idx.mT.reshape((*sample_shape, *w.shape[:-1]))
        z = F.one_hot(idx, k).to(w.dtype)
        thetas = self.component._sample(self.components(nat), tuple(sample_shape), generator)
        theta = (z.unsqueeze(-1) * thetas).sum(-2)
        return MixturePoint(theta, z)

    def _check_point(self, x: MixturePoint, name: str) -> None:
        if not isinstance(x, MixturePoint):
            raise TypeError(f"{name} must be a MixturePoint(theta, z), got {type(x).__name__}")
        z = x.z
        if not (((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all()):
            raise ValueError(f"{name}.z must be one-hot along its last dimension")

    def _check_nat(self, nat: MixtureNat, name: str) -> None:
        k = nat.lam1.shape[-2] if nat.lam1.ndim >= 2 else 0
        if k < 2 or nat.c.shape[-1] != k - 1:
            raise ValueError(
                f"{name}.c must have K − 1 entries for the K = {k} components in {name}.lam1 "
                f"(K ≥ 2), got shape {tuple(nat.c.shape)}"
            )
        check_finite(nat.c, f"{name}.c")
        self.component._check_nat(self.components(nat), name)

    def _check_mean(self, mean: MixtureMean, name: str) -> None:
        w = self._weights_from_mean(mean)
        if not (w > 0).all():
            raise ValueError(f"{name}.mu0 must hold K − 1 positive weights with sum < 1 (π_K > 0)")
        w1 = w.unsqueeze(-1)
        w2 = w1 if mean.mu2.ndim == w1.ndim else w1.unsqueeze(-1)
        comp_mean = self.component.mean_type(mean.mu1 / w1, mean.mu2 / w2)
        self.component._check_mean(comp_mean, f"({name} / π)")

    def example_nat(
        self,
        batch_shape: Sequence[int] = (),
        dim: int = 3,
        *,
        extreme: bool = False,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        num_components: int = 3,
    ) -> MixtureNat:
        """Random λ: components from the component family's ``example_nat`` and weights from a
        flat Dirichlet (log-weights down to −20 with ``extreme``).

        Example:
            >>> import torch, expfam
            >>> fam = expfam.Mixture()
            >>> gen = torch.Generator().manual_seed(0)
            >>> nat = fam.example_nat(dim=2, num_components=4, generator=gen)
            >>> nat.c.shape, nat.lam1.shape, nat.lam2.shape
            (torch.Size([3]), torch.Size([4, 2]), torch.Size([4, 2, 2]))
        """
        kw = dict(dtype=dtype, device=device, generator=generator)
        comp = self.component.example_nat(
            (*batch_shape, num_components), dim, extreme=extreme, **kw
        )
        lo = -20.0 if extreme else -2.0
        logw = torch.log_softmax(lo * torch.rand((*batch_shape, num_components), **kw), -1)
        a = self.component._log_partition(comp)
        c = (logw[..., :-1] - logw[..., -1:]) - a[..., :-1] + a[..., -1:]
        return MixtureNat(c, *comp)
