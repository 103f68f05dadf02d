r"""Estimators of ∇_μ E_q[ℓ(θ)], the only estimated term of the BLR (docs/concepts.md).

An estimator is a callable object ``estimator(family, nat, loss, *, generator=None) -> Estimate``;
they are interchangeable in :func:`blr.step` and :class:`blr.BLR`:

==========================  ================================================================
:class:`Exact`              ``loss`` is E_q[ℓ] as a function of μ (closed form; conjugate models,
                            where ℓ is linear in T(θ))
:class:`Reparam`            generic autodiff through reparameterized samples, μ as the leaf
                            (any family with ``rsample``)
:class:`Delta`              gradient and Hessian at the mean (Gaussian families)
:class:`BonnetPrice`        Monte Carlo ĝ = E[∇ℓ], Ĥ = E[∇²ℓ] with a choice of Hessian:
                            exact, GGN, per-example squared gradients, squared minibatch
                            gradient, Stein ĝ(θ − m)ᵀS (Gaussian families)
:class:`ScoreFunction`      E[(ℓ − b)(T − μ)] then F⁻¹, with a leave-one-out baseline (any family)
:class:`GumbelSoftmax`      relaxed Bernoulli samples (Maddison et al. 2017)
==========================  ================================================================

Losses are vectorized: ``loss(theta)`` takes θ of shape ``(K, *batch, *event)`` (K draws) and
returns ``(K, *batch)`` values, each depending on its own θ only. :class:`ModelLoss` adds the
structure (model outputs and a per-example link loss) that the GGN and per-example Hessians
need, and the minibatch scale N/M.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from blr.quadrature import sigma_points
from expfam import Bernoulli, ExpFamily, GaussianLike, generic
from expfam.linalg import solve_psd
from expfam.tree import flatten, inner, tmap, unflatten

Loss = Callable[[Tensor], Tensor]


class Estimate(NamedTuple):
    """An estimator's output.

    Attributes:
        grad: ∇_μ E_q[ℓ], a container of the family's ``nat_type`` (it lives in λ-space).
        value: an estimate of E_q[ℓ], shape ``batch_shape`` (for diagnostics).
    """

    grad: tuple
    value: Tensor


@dataclasses.dataclass(frozen=True)
class ModelLoss:
    r"""ℓ̄(θ) = scale · Σ_i ℓ(y_i, f_θ(x_i)): a model and a per-example link loss.

    Args:
        model: θ ``(..., d)`` ↦ outputs ``(..., n, o)`` for the n examples of the (mini)batch.
        link: outputs ``(..., n, o)`` ↦ per-example losses ``(..., n)``; ℓ_i may depend on the
            outputs of example i only.
        scale: N/M for a minibatch of M out of N examples (unbiased for the full sum).

    Example:
        >>> import torch
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, 0.0], dtype=torch.float64)
        >>> loss = ModelLoss(model=lambda th: (th @ X.T).unsqueeze(-1),
        ...                  link=lambda f: torch.nn.functional.binary_cross_entropy_with_logits(
        ...                      f.squeeze(-1), y.expand(f.shape[:-1]), reduction="none"))
        >>> loss(torch.zeros(1, 2, dtype=torch.float64))
        tensor([1.3863], dtype=torch.float64)
    """

    model: Callable[[Tensor], Tensor]
    link: Callable[[Tensor], Tensor]
    scale: float = 1.0

    def per_example(self, theta: Tensor) -> Tensor:
        """ℓ_i(θ), shape ``(..., n)``.

        Example:
            >>> import torch
            >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
            >>> loss = ModelLoss(model=lambda th: (th @ X.T).unsqueeze(-1),
            ...                  link=lambda f: 0.5 * f.squeeze(-1) ** 2, scale=3.0)
            >>> theta = torch.ones(1, 2, dtype=torch.float64)
            >>> loss.per_example(theta), loss(theta)   # one value per example; 3·(½ + 2)
            (tensor([[0.5000, 2.0000]], dtype=torch.float64), tensor([7.5000], dtype=torch.float64))
        """
        return self.link(self.model(theta))

    def __call__(self, theta: Tensor) -> Tensor:
        return self.scale * self.per_example(theta).sum(-1)


class Estimator(abc.ABC):
    """Base class of the ∇_μ E_q[ℓ] estimators: ``estimator(family, nat, loss)`` returns an
    :class:`Estimate` (∇_μE_q[ℓ] in the family's ``nat_type``, and E_q[ℓ]).

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.DiagGaussian()
        >>> nat = fam.from_moments(torch.zeros(1), torch.ones(1))
        >>> est = blr.Delta()
        >>> isinstance(est, blr.Estimator)
        True
        >>> out = est(fam, nat, lambda th: 0.5 * (th**2).sum(-1))   # ∇_μ at m = 0: (g − h m, ½h)
        >>> out.grad, out.value
        (DiagNat(lam1=tensor([0.]), lam2=tensor([0.5000])), tensor(0.))
    """

    @abc.abstractmethod
    def __call__(
        self,
        family: ExpFamily,
        nat: tuple,
        loss: Callable,
        *,
        generator: torch.Generator | None = None,
    ) -> Estimate:
        """Estimate ∇_μ E_q[ℓ] at q_λ."""


def _zeros_for_none(grads, like) -> tuple:
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, like))


def _values(loss: Callable, theta, lead: int, batch: torch.Size) -> Tensor:
    """Call a vectorized loss on ``lead`` draws and check the shape of its output: one value
    per draw and per batch element ``(lead, *batch)``, or per draw for a loss that couples the
    batch elements (``(lead, *p)`` with p a prefix of the batch shape, e.g. ``(K,)`` for a loss
    of D binary weights held as a batch of D Bernoullis)."""
    value = loss(theta)
    if not isinstance(value, Tensor):
        raise TypeError(f"loss must return a tensor, got {type(value).__name__}")
    if value.ndim < 1 or value.shape[0] != lead or value.shape[1:] != batch[: value.ndim - 1]:
        raise ValueError(
            f"loss must return shape ({lead}, *batch) = {(lead, *batch)} (or a prefix of it) for "
            f"{lead} draws, got {tuple(value.shape)}; losses are vectorized over the leading "
            "draw dimension"
        )
    return value


# ---------------------------------------------------------------------------- Exact
class Exact(Estimator):
    r"""Exact gradient from a closed-form expected loss: ``loss(mean) = E_q[ℓ]`` as a function of
    μ, differentiated by autograd.

    For a conjugate model each ℓ_i is linear in T(θ), ℓ_i(θ) = −<λ̃_i, T(θ)> + c_i, so
    E_q[ℓ] = −<Σλ̃_i, μ> + c and ∇_μ E_q[ℓ] = −Σλ̃_i: one BLR step at ρ = 1 with the conjugate
    prior λ₀ lands on the posterior λ₀ + Σλ̃_i (Khan & Rue 2023, Table 1 row 11). :meth:`linear`
    builds that loss.

    Example:
        >>> import torch, expfam, blr
        >>> beta = expfam.Beta()
        >>> y = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
        >>> site = expfam.BetaNat(y.sum(), (1 - y).sum())   # Bernoulli likelihood, in λ-space
        >>> prior = expfam.BetaNat(torch.tensor(1.0, dtype=torch.float64),
        ...                        torch.tensor(1.0, dtype=torch.float64))  # Beta(2, 2)
        >>> post = blr.step(beta, prior, blr.Exact.linear(beta, site), 1.0,
        ...                 estimator=blr.Exact(), prior=prior)
        >>> [float(x) for x in post]  # Beta(2 + 3, 2 + 1)
        [4.0, 2.0]
    """

    @staticmethod
    def linear(family: ExpFamily, site: tuple, const: float = 0.0) -> Callable[[tuple], Tensor]:
        """μ ↦ −<λ̃, μ> + const: the expected loss of a likelihood with natural parameter λ̃.

        Example:
            >>> import torch, expfam, blr
            >>> beta = expfam.Beta()
            >>> site = expfam.BetaNat(torch.tensor(3.0), torch.tensor(1.0))  # 3 ones, 1 zero
            >>> q = expfam.BetaNat(torch.tensor(1.0), torch.tensor(1.0))
            >>> est = blr.Exact()(beta, q, blr.Exact.linear(beta, site))
            >>> [float(g) for g in est.grad]   # ∇_μ E_q[ℓ] = −λ̃
            [-3.0, -1.0]
        """
        return lambda mean: -inner(site, mean, family.event_ndims) + const

    def __call__(self, family, nat, loss, *, generator=None) -> Estimate:
        with torch.enable_grad():
            mean = tmap(lambda t: t.detach().requires_grad_(), family.nat_to_mean(nat))
            value = loss(mean)
            grads = torch.autograd.grad(value.sum(), tuple(mean), allow_unused=True)
        return Estimate(family.nat_type(*_zeros_for_none(grads, mean)), value.detach())


# ---------------------------------------------------------------------------- Reparam
class Reparam(Estimator):
    r"""The generic reference estimator: autodiff of a reparameterized Monte Carlo average with μ
    as the autograd leaf,

    .. math:: \nabla_\mu \frac1K\sum_k \ell(\theta_k(\lambda(\mu))),\qquad
              \theta_k = \text{rsample}(\lambda(\mu)).

    It needs only ``rsample`` and a differentiable μ → λ, so it works for every family with a
    reparameterized sampler; it is the oracle the Gaussian estimators are tested against.

    Args:
        n_samples: K.
        points: ``"mc"`` (random draws) or ``"sigma"`` (Gaussian families: the 2d sigma points
            of :func:`sigma_points`, so the average is exact for polynomial losses of degree ≤ 3
            — e.g. quadratics — and the estimator is deterministic).

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.DiagGaussian()
        >>> nat = fam.from_moments(torch.ones(2, dtype=torch.float64),
        ...                        torch.ones(2, dtype=torch.float64))
        >>> est = blr.Reparam(points="sigma")(fam, nat, lambda th: 0.5 * (th**2).sum(-1))
        >>> est.grad  # ∇_μ E[½‖θ‖²] = ∇_μ ½ Σ μ₂ = (0, ½)
        DiagNat(lam1=tensor([0., 0.], dtype=torch.float64), lam2=tensor([0.5000, 0.5000], dtype=torch.float64))
    """  # noqa: E501

    def __init__(self, n_samples: int = 1, *, points: Literal["mc", "sigma"] = "mc") -> None:
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
        if points not in ("mc", "sigma"):
            raise ValueError(f'points must be "mc" or "sigma", got {points!r}')
        self.n_samples, self.points = int(n_samples), points

    def __call__(self, family, nat, loss, *, generator=None) -> Estimate:
        if self.points == "sigma" and not isinstance(family, GaussianLike):
            raise TypeError(f'points="sigma" needs a Gaussian family, got {family.name}')
        if self.points == "mc" and not family.has_rsample:
            raise TypeError(
                f"Reparam needs a reparameterized sampler, which {family.name} lacks; use "
                "ScoreFunction (or GumbelSoftmax for Bernoulli)"
            )
        batch = family.batch_shape(nat)
        with torch.enable_grad():
            mean = tmap(lambda t: t.detach().requires_grad_(), family.nat_to_mean(nat))
            lam = family.mean_to_nat(mean, validate=False)  # μ is the autograd leaf
            if self.points == "mc":
                theta = family.rsample(lam, (self.n_samples,), generator, validate=False)
                w = torch.full((self.n_samples,), 1.0 / self.n_samples, dtype=nat[0].dtype)
            else:
                d = nat[0].shape[-1]
                z, w = sigma_points(d, dtype=nat[0].dtype, device=nat[0].device)
                z = z.reshape(2 * d, *([1] * len(batch)), d).expand(2 * d, *batch, d)
                theta = family.reparam(lam, z)
            values = _values(loss, theta, w.shape[0], batch)
            wb = w.to(values.device).reshape(-1, *([1] * (values.ndim - 1)))
            value = (wb * values).sum(0)
            grads = torch.autograd.grad(value.sum(), tuple(mean), allow_unused=True)
        return Estimate(family.nat_type(*_zeros_for_none(grads, mean)), value.detach())


# ---------------------------------------------------------------------------- Gaussian (ĝ, Ĥ)
Hessian = Literal["exact", "ggn", "per_example", "grad_sq", "stein"]
_HESSIANS = ("exact", "ggn", "per_example", "grad_sq", "stein")


def _hessian_exact(g: Tensor, theta: Tensor, full: bool) -> Tensor:
    """∇²ℓ at each point from the graph of g = ∇ℓ: d backward passes (full or diagonal)."""
    d = theta.shape[-1]
    rows = []
    for j in range(d):
        (row,) = torch.autograd.grad(g[..., j].sum(), theta, retain_graph=True)
        rows.append(row if full else row[..., j])
    return torch.stack(rows, dim=-2) if full else torch.stack(rows, dim=-1)


def _jacobian(model: Callable, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs f = model(θ) ``(..., n, o)`` and J = ∂f/∂θ ``(..., n, o, d)``, by forward mode."""
    d = theta.shape[-1]
    basis = torch.eye(d, dtype=theta.dtype, device=theta.device)

    def push(v: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(model, (theta,), (v.expand_as(theta),))

    f, jac = torch.func.vmap(push, out_dims=(None, -1))(basis)
    return f, jac


def _link_derivatives(link: Callable, f: Tensor) -> tuple[Tensor, Tensor]:
    """∇_f ℓ_i ``(..., n, o)`` and Λ_i = ∇²_f ℓ_i ``(..., n, o, o)`` (examples are independent)."""
    f = f.detach().requires_grad_()
    with torch.enable_grad():
        gf = torch.autograd.grad(link(f).sum(), f, create_graph=True)[0]
        rows = [
            torch.autograd.grad(gf[..., a].sum(), f, retain_graph=True)[0]
            for a in range(f.shape[-1])
        ]
    return gf.detach(), torch.stack(rows, dim=-2)


class BonnetPrice(Estimator):
    r"""Gaussian estimator through Bonnet's and Price's theorems (Opper & Archambeau 2009):

    .. math:: \hat g = \textstyle\sum_k w_k \nabla\ell(\theta_k),\quad
              \hat H = \textstyle\sum_k w_k \widehat{\nabla^2\ell}(\theta_k),\quad
              \nabla_\mu\mathbb{E}_q[\ell] = (\hat g - \hat H m,\ \tfrac12\hat H)

    (diagonal Ĥ for the diagonal family; Ĥ unused for the fixed-covariance family).

    Args:
        n_samples: K Monte Carlo draws θ_k ~ q (``points="mc"``).
        hessian: ``"exact"`` (∇²ℓ by autograd, d backward passes), ``"ggn"`` (Σ_i J_iᵀΛ_iJ_i,
            needs a :class:`ModelLoss`), ``"per_example"`` (scale·Σ_i ∇ℓ_i∇ℓ_iᵀ, the "empirical
            Fisher", needs a :class:`ModelLoss`), ``"grad_sq"`` (ĝĝᵀ, the squared minibatch
            gradient), ``"stein"`` (sym(S(θ − m)∇ℓ(θ)ᵀ); diagonal ∇ℓ(θ)⊙(θ − m)⊙s).
        points: ``"mc"``, ``"mean"`` (θ = m: the delta method, see :class:`Delta`) or ``"sigma"``
            (deterministic sigma points, exact for polynomial losses of degree ≤ 3).

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.FullGaussian()
        >>> nat = fam.from_moments(torch.zeros(2, dtype=torch.float64),
        ...                        torch.eye(2, dtype=torch.float64))
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> loss = lambda th: 0.5 * ((th @ A) * th).sum(-1)
        >>> est = blr.BonnetPrice(points="sigma")(fam, nat, loss)
        >>> est.grad.lam2  # ½ E[∇²ℓ] = ½ A
        tensor([[1.5000, 0.5000],
                [0.5000, 1.0000]], dtype=torch.float64)
    """

    def __init__(
        self,
        n_samples: int = 1,
        hessian: Hessian = "exact",
        *,
        points: Literal["mc", "mean", "sigma"] = "mc",
    ) -> None:
        if hessian not in _HESSIANS:
            raise ValueError(f"hessian must be one of {_HESSIANS}, got {hessian!r}")
        if points not in ("mc", "mean", "sigma"):
            raise ValueError(f'points must be "mc", "mean" or "sigma", got {points!r}')
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
        if points == "mean" and hessian == "stein":
            raise ValueError('hessian="stein" needs draws around the mean, not points="mean"')
        self.n_samples, self.hessian, self.points = int(n_samples), hessian, points

    def _points(self, family, nat, generator) -> tuple[Tensor, Tensor]:
        batch = family.batch_shape(nat)
        dtype, device = nat[0].dtype, nat[0].device
        if self.points == "mean":
            return family.location(nat).unsqueeze(0), torch.ones(1, dtype=dtype, device=device)
        if self.points == "sigma":
            d = nat[0].shape[-1]
            z, w = sigma_points(d, dtype=dtype, device=device)
            z = z.reshape(2 * d, *([1] * len(batch)), d).expand(2 * d, *batch, d)
            return family.reparam(nat, z), w
        k = self.n_samples
        theta = family.sample(nat, (k,), generator, validate=False)
        return theta, torch.full((k,), 1.0 / k, dtype=dtype, device=device)

    def __call__(self, family, nat, loss, *, generator=None) -> Estimate:
        if not isinstance(family, GaussianLike):
            raise TypeError(f"{type(self).__name__} needs a Gaussian family, got {family.name}")
        if self.hessian in ("ggn", "per_example") and not isinstance(loss, ModelLoss):
            raise TypeError(f'hessian="{self.hessian}" needs the loss as a blr.ModelLoss')
        kind = family.hessian_event_ndim
        full = kind == 2
        theta, w = self._points(family, nat, generator)
        theta = theta.detach().requires_grad_()
        batch = family.batch_shape(nat)
        need_graph = kind is not None and self.hessian == "exact"
        with torch.enable_grad():
            values = _values(loss, theta, w.shape[0], batch)
            (g,) = torch.autograd.grad(values.sum(), theta, create_graph=need_graph)
            h = None
            if kind is not None and self.hessian == "exact":
                h = _hessian_exact(g, theta, full)
        wv = w.reshape(-1, *([1] * (values.ndim - 1)))
        wg = wv.unsqueeze(-1)
        g = g.detach()
        g_hat = (wg * g).sum(0)
        if kind is not None:
            if self.hessian == "exact":
                h_hat = ((wg.unsqueeze(-1) if full else wg) * h).sum(0)
            elif self.hessian == "grad_sq":
                h_hat = g_hat.unsqueeze(-1) * g_hat.unsqueeze(-2) if full else g_hat * g_hat
            elif self.hessian == "stein":
                r = theta.detach() - family.location(nat)
                if full:
                    prec = -2 * nat.lam2
                    sr = (prec @ r.unsqueeze(-1)).squeeze(-1)  # S(θ − m)
                    outer = sr.unsqueeze(-1) * g.unsqueeze(-2)
                    h_hat = (wg.unsqueeze(-1) * 0.5 * (outer + outer.mT)).sum(0)
                else:
                    h_hat = (wg * g * r * (-2 * nat.lam2)).sum(0)
            else:
                h_hat = self._model_hessian(loss, theta.detach(), wg, full)
        else:
            h_hat = None
        grad = family.mean_grad_from_gh(nat, g_hat, h_hat)
        return Estimate(grad, (wv * values.detach()).sum(0))

    def _model_hessian(self, loss: ModelLoss, theta: Tensor, wg: Tensor, full: bool) -> Tensor:
        f, jac = _jacobian(loss.model, theta)  # (K, ..., n, o), (K, ..., n, o, d)
        gf, lam = _link_derivatives(loss.link, f)
        if self.hessian == "ggn":
            if full:
                h = torch.einsum("...noa,...nop,...npb->...ab", jac, lam, jac)
            else:
                h = torch.einsum("...noa,...nop,...npa->...a", jac, lam, jac)
        else:  # per-example squared gradients ∇ℓ_i = J_iᵀ ∇_f ℓ_i
            gi = torch.einsum("...noa,...no->...na", jac, gf)
            h = torch.einsum("...na,...nb->...ab", gi, gi) if full else (gi * gi).sum(-2)
        h = loss.scale * h.detach()
        return ((wg.unsqueeze(-1) if full else wg) * h).sum(0)


class Delta(BonnetPrice):
    r"""The delta method: gradient and Hessian at the mean, ĝ = ∇ℓ(m), Ĥ = ∇²ℓ(m) (or its GGN /
    per-example / squared-gradient surrogate), then ∇_μ = (ĝ − Ĥm, ½Ĥ).

    The delta method is applied to the gradient and Hessian, never to the loss itself
    (E_q[ℓ] ≈ ℓ(m) would zero ∇_{μ2} and collapse the precision).

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.FixedCovGaussian()
        >>> nat = expfam.FixedCovNat(torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> blr.Delta()(fam, nat, lambda th: (th**3).sum(-1)).grad  # ∇ℓ(m) = 3m²
        FixedCovNat(lam1=tensor([ 3., 12.], dtype=torch.float64))
    """

    def __init__(self, hessian: Hessian = "exact") -> None:
        super().__init__(1, hessian, points="mean")


# ---------------------------------------------------------------------------- score function
class ScoreFunction(Estimator):
    r"""Score-function (REINFORCE) estimator for any family with a sampler:

    .. math:: \nabla_\mu\mathbb{E}_q[\ell] = F(\lambda)^{-1}\,\mathbb{E}_q[(\ell(\theta) - b)
              (T(\theta) - \mu)],

    since ∇_λ log q = T − μ and ∇_μ = F⁻¹∇_λ. The baseline b_k is the mean loss of the other
    K − 1 draws (leave-one-out), which keeps the estimate unbiased. F is the autograd Fisher of
    :mod:`expfam.generic` (dense: meant for small parameter counts).

    Args:
        n_samples: K ≥ 2 (the baseline needs two draws).
        baseline: subtract the leave-one-out baseline.

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.Poisson()
        >>> nat = expfam.PoissonNat(torch.log(torch.tensor([3.0], dtype=torch.float64)))
        >>> g = torch.Generator().manual_seed(0)
        >>> est = blr.ScoreFunction(4000)(fam, nat, lambda k: k, generator=g)
        >>> round(float(est.grad.lam1), 1)  # ℓ(k) = k ⇒ ∇_μ E[k] = 1
        1.0
    """

    def __init__(self, n_samples: int = 16, *, baseline: bool = True) -> None:
        if int(n_samples) < 2:
            raise ValueError(f"n_samples must be ≥ 2, got {n_samples}")
        self.n_samples, self.baseline = int(n_samples), bool(baseline)

    def __call__(self, family, nat, loss, *, generator=None) -> Estimate:
        k = self.n_samples
        batch = family.batch_shape(nat)
        with torch.no_grad():
            theta = family.sample(nat, (k,), generator, validate=False)
            values = _values(loss, theta, k, batch).to(nat[0].dtype)
            t = flatten(family.suff_stats(theta, validate=False), family.event_ndims)
            t = t.to(nat[0].dtype)
        mu = flatten(family.nat_to_mean(nat, validate=False), family.event_ndims)
        b = (values.sum(0, keepdim=True) - values) / (k - 1) if self.baseline else 0.0
        centred = values - b  # (K, *p) with p a prefix of the batch shape
        centred = centred.reshape(*centred.shape, *([1] * (t.ndim - centred.ndim)))
        score = (centred * (t - mu)).mean(0)  # ∇_λ E[ℓ] = Cov(ℓ, T), per batch element
        fisher = generic.fisher(family, nat)
        sol = solve_psd(fisher, score)
        return Estimate(unflatten(sol, nat, family.event_ndims), values.mean(0))


# ---------------------------------------------------------------------------- Gumbel-softmax
class GumbelSoftmax(Estimator):
    r"""Relaxed Bernoulli estimator (concrete / Gumbel-softmax; Maddison et al. 2017, Jang et
    al. 2017). On {−1, +1}:

    .. math:: \epsilon = \tfrac12\log\tfrac{u}{1-u},\quad
              \theta_\tau = \tanh\frac{\lambda+\epsilon}{\tau},\quad
              \nabla_\mu\mathbb{E}_q[\ell] \approx s\odot\nabla_\theta\ell(\theta_\tau),\quad
              s = \frac{1-\theta_\tau^2}{\tau(1-\tanh^2\lambda)}

    (biased for τ > 0, consistent as τ → 0; s is computed in log space, :meth:`scale`). On
    {0, 1} the loss sees (θ_τ + 1)/2 and the chain rule for μ₀₁ = (μ±₁ + 1)/2 is applied.

    Args:
        temperature: τ > 0.
        n_samples: draws averaged.

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.Bernoulli("pm1")
        >>> nat = expfam.BernoulliNat(torch.zeros(3, dtype=torch.float64))
        >>> est = blr.GumbelSoftmax(1.0, 8)(fam, nat, lambda th: th.sum(-1),
        ...                                 generator=torch.Generator().manual_seed(0))
        >>> est.grad.lam1.shape
        torch.Size([3])
    """

    def __init__(self, temperature: float = 1.0, n_samples: int = 1) -> None:
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
        self.temperature, self.n_samples = float(temperature), int(n_samples)

    def scale(self, arg: Tensor, lam: Tensor) -> Tensor:
        r"""s = (1 − tanh²a)/(τ(1 − tanh²λ)) = exp(2A(λ) − 2A(a))/τ for a relaxed draw
        θ_τ = tanh a, a = (λ + ε)/τ, with A(x) = log(eˣ + e⁻ˣ) the ±1 Bernoulli's
        log-partition: no 0/0 however large |λ| or |a| (1 − tanh² underflows to 0 beyond
        |x| ≈ 19 in float64).

        Example:
            >>> import torch, blr
            >>> lam = torch.tensor([0.0, 40.0], dtype=torch.float64)
            >>> blr.GumbelSoftmax(1.0).scale(lam + 0.5, lam)   # sech²(λ + ½)/sech²(λ)
            tensor([0.7864, 0.3679], dtype=torch.float64)
        """
        a_lam = torch.logaddexp(lam, -lam)
        a_arg = torch.logaddexp(arg, -arg)
        return torch.exp(2 * (a_lam - a_arg)) / self.temperature

    def __call__(self, family, nat, loss, *, generator=None) -> Estimate:
        if not isinstance(family, Bernoulli):
            raise TypeError(f"GumbelSoftmax needs a Bernoulli family, got {family.name}")
        tau, k = self.temperature, self.n_samples
        lam_pm = nat.lam1 if family.support == "pm1" else 0.5 * nat.lam1
        u = torch.rand(
            (k, *lam_pm.shape), dtype=lam_pm.dtype, device=lam_pm.device, generator=generator
        )
        eps = 0.5 * (torch.log(u) - torch.log1p(-u))
        arg = (lam_pm + eps) / tau
        theta_pm = torch.tanh(arg)
        x = theta_pm if family.support == "pm1" else (theta_pm + 1) / 2
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            values = _values(loss, x, k, family.batch_shape(nat))
            (gx,) = torch.autograd.grad(values.sum(), x)
        g_pm = gx if family.support == "pm1" else 0.5 * gx
        grad_pm = (self.scale(arg, lam_pm) * g_pm).mean(0)
        grad = grad_pm if family.support == "pm1" else 2 * grad_pm
        return Estimate(type(nat)(grad), values.detach().mean(0))
