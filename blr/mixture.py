r"""The mixture BLR (Lin, Khan & Schmidt, ICML 2019; Khan & Rue 2023, Table 1 rows
3 and 17).

q(θ) = Σ_k π_k N(θ | m_k, S_k⁻¹) is handled as the joint exponential family over (θ, z) of
:class:`expfam.Mixture`; the objective keeps the MARGINAL entropy inside the loss,

.. math::
    \mathcal L(q) = \mathbb E_{q(\theta)}[f(\theta)],\qquad
    f(\theta) = \bar\ell(\theta) + \log q(\theta)\quad(q\text{ held fixed for the step}),

and since π_k cancels from ∇_{μ1_k}, ∇_{μ2_k}, the natural-gradient step is, per component,

.. math::
    S_k &\leftarrow S_k + \rho\,\mathbb E_{q_k}[\nabla^2 f]
          \;[+\ \tfrac{\rho^2}{2} G_k S_k^{-1} G_k,\ G_k = \mathbb E_{q_k}[\nabla^2 f]],\\
    m_k &\leftarrow m_k - \rho\,S_k^{-1}\,\mathbb E_{q_k}[\nabla f]\qquad(\text{new } S_k),\\
    c_k &\leftarrow c_k - \rho\,(\Phi_k - \Phi_K),\quad
    \Phi_k = \mathbb E_{q_k}[f] - m_k^\top\mathbb E_{q_k}[\nabla f]
             + \tfrac12\operatorname{tr}\big(\mathbb E_{q_k}[\nabla^2 f]
             (m_km_k^\top - \Sigma_k)\big),

with q_k = N(m_k, S_k⁻¹) and c_k = log(π_k/π_K) − A_k + A_K (:attr:`expfam.MixtureNat.c`), so the
"exact" weight rule is the λ-space BLR itself. Lin et al.'s first-order weight rule
log(π_k/π_K) ← log(π_k/π_K) − ρ(E_{q_k}[f] − E_{q_K}[f]) agrees with it to first order in ρ only;
both have the same fixed points. The component expectations come from tensor-product
Gauss–Hermite quadrature in each component's own coordinates, reparameterized Monte Carlo draws
from each component, or importance weights r_k(θ)/π_k on draws from the mixture. The log q terms
are in closed form with the responsibilities r_j(θ) = π_j N_j(θ)/q(θ) and d_j = −S_j(θ − m_j):

.. math::
    \nabla\log q = \textstyle\sum_j r_j d_j =: \bar d,\qquad
    \nabla^2\log q = \textstyle\sum_j r_j\big((d_j - \bar d)(d_j - \bar d)^\top - S_j\big).

Example (two components fitted to ℓ(θ) = ½θ², whose optimum q = N(0, 1) has the objective
E_q[ℓ] − H(q) = −½ log 2π ≈ −0.9189):

>>> import torch
>>> from expfam import FullGaussian, Mixture
>>> from blr.mixture import mixture_objective, mixture_step
>>> fam, comp = Mixture(FullGaussian()), FullGaussian()
>>> nat = fam.from_components(
...     torch.tensor([0.5, 0.5], dtype=torch.float64),
...     comp.from_moments(torch.tensor([[-1.0], [1.0]], dtype=torch.float64),
...                       torch.full((2, 1, 1), 4.0, dtype=torch.float64)))
>>> loss = lambda th: 0.5 * th[..., 0] ** 2
>>> before = float(mixture_objective(fam, nat, loss))
>>> for _ in range(50):
...     nat = mixture_step(fam, nat, loss, 0.5)
>>> round(before, 4), round(float(mixture_objective(fam, nat, loss)), 4)
(-0.7335, -0.9184)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from blr.engine import check_rho
from blr.estimators import _hessian_exact, _values
from blr.gaussian import GaussianOptions
from blr.quadrature import gauss_hermite_product
from expfam import DiagGaussian, Mixture, MixtureNat
from expfam.linalg import sym

__all__ = [
    "MixtureExpectations",
    "MixtureOptions",
    "mixture_expectations",
    "mixture_objective",
    "mixture_step",
]

Expectation = Literal["gh", "mc", "importance"]
WeightRule = Literal["exact", "lin", "fixed"]
_EXPECTATIONS = ("gh", "mc", "importance")
_WEIGHTS = ("exact", "lin", "fixed")
_DEFAULT_POINTS = {"gh": 32, "mc": 100, "importance": 1000}
_MAX_GH_POINTS = 1_000_000
_LOG_2PI = math.log(2 * math.pi)
_NAN_MESSAGE = (
    "the loss returned NaN/Inf at the mixture's evaluation points; the state was not changed"
)


class MixtureExpectations(NamedTuple):
    """The component expectations the mixture BLR needs, f = ℓ̄ + log q.

    Attributes:
        value: E_{q_k}[f], shape ``(K,)``.
        grad: E_{q_k}[∇f], shape ``(K, d)``.
        hess: E_{q_k}[∇²f], shape ``(K, d, d)`` (full components) or its diagonal ``(K, d)``
            (diagonal components).
    """

    value: Tensor
    grad: Tensor
    hess: Tensor


@dataclasses.dataclass(frozen=True)
class MixtureOptions(GaussianOptions):
    """Options of the mixture BLR in :class:`blr.optim.BLROptimizer` (its ``gaussian=`` for an
    :class:`expfam.Mixture` family): ``improved`` and the weight rule of :func:`mixture_step`,
    and the weights' own rate. The other fields of :class:`~blr.GaussianOptions` do not apply.

    Attributes:
        improved: the improved-BLR correction of the components (default True: every S_k stays
            positive definite).
        weights: ``"lin"`` (Lin et al.'s rule; the default), ``"exact"`` (the λ-space BLR of c;
            needs ``improved=False``) or ``"fixed"`` (π unchanged).
        weights_lr: ρ_π > 0, the rate of the ``"lin"`` rule
            log(π_k/π_K) ← log(π_k/π_K) − ρ_π(E_{q_k}[f] − E_{q_K}[f]); None: the group's lr.

    Example:
        >>> from blr.mixture import MixtureOptions
        >>> MixtureOptions(weights="fixed").improved
        True
        >>> MixtureOptions(improved=True, weights="exact")
        Traceback (most recent call last):
        ...
        ValueError: weights='exact' is the λ-space BLR of c and needs improved=False
    """

    improved: bool = True
    weights: WeightRule = "lin"
    weights_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weights not in _WEIGHTS:
            raise ValueError(f"weights must be one of {_WEIGHTS}, got {self.weights!r}")
        if self.weights == "exact" and self.improved:
            raise ValueError("weights='exact' is the λ-space BLR of c and needs improved=False")
        if self.weights_lr is not None:
            if self.weights != "lin":
                raise ValueError(f"weights_lr is the rate of weights='lin', got {self.weights!r}")
            if not float(self.weights_lr) > 0:
                raise ValueError(f"weights_lr must be > 0, got {self.weights_lr}")


# ---------------------------------------------------------------------------- helpers
def _check_options(family, nat, expectation, n_points, weights=None, improved=False) -> int:
    if not isinstance(family, Mixture):
        raise TypeError(f"family must be an expfam.Mixture, got {type(family).__name__}")
    family.validate_nat(nat, "nat")
    if nat.c.ndim != 1:
        raise ValueError(
            f"nat must be unbatched (nat.c of shape (K − 1,)), got nat.c of shape "
            f"{tuple(nat.c.shape)}"
        )
    if expectation not in _EXPECTATIONS:
        raise ValueError(f"expectation must be one of {_EXPECTATIONS}, got {expectation!r}")
    if weights is not None and weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
    if improved and weights == "exact":
        raise ValueError(
            "weights='exact' is the λ-space update of c = log(π_k/π_K) − A_k + A_K and is only "
            "consistent with the λ-space component update; with improved=True use weights='lin' "
            "or 'fixed'"
        )
    if n_points is None:
        return _DEFAULT_POINTS[expectation]
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ValueError(f"n_points must be a positive integer, got {n_points!r}")
    d = nat.lam1.shape[-1]
    if expectation == "gh" and int(n_points) ** d > _MAX_GH_POINTS:
        raise ValueError(
            f"n_points = {n_points} per dimension gives {n_points}^{d} Gauss–Hermite points per "
            f"component (more than {_MAX_GH_POINTS}); lower n_points or use expectation='mc'"
        )
    return int(n_points)


class _State(NamedTuple):
    """The components in working form, from one Cholesky factorization per step."""

    full: bool
    m: Tensor  # (K, d)
    prec: Tensor  # S (K, d, d) or s (K, d)
    root: Tensor  # L with S = L Lᵀ (K, d, d), or √s (K, d)
    half_logdet: Tensor  # ½ log|S_k| (K,)
    log_w: Tensor  # log π (K,)


def _log_partition(full: bool, m: Tensor, prec: Tensor, half_logdet: Tensor) -> Tensor:
    """A_k = ½ m_kᵀ S_k m_k − ½ log|S_k|."""
    if full:
        quad = (m.unsqueeze(-2) @ prec @ m.unsqueeze(-1)).reshape(m.shape[:-1])
    else:
        quad = (prec * m * m).sum(-1)
    return 0.5 * quad - half_logdet


def _state(family: Mixture, nat: MixtureNat) -> _State:
    full = not isinstance(family.component, DiagGaussian)
    if full:
        prec = -(nat.lam2 + nat.lam2.mT)
        root = torch.linalg.cholesky(prec)
        m = torch.cholesky_solve(nat.lam1.unsqueeze(-1), root).squeeze(-1)
        half_logdet = torch.log(torch.diagonal(root, dim1=-2, dim2=-1)).sum(-1)
    else:
        prec = -2 * nat.lam2
        root = prec.sqrt()
        m = nat.lam1 / prec
        half_logdet = torch.log(root).sum(-1)
    a = _log_partition(full, m, prec, half_logdet)
    log_w = torch.log_softmax(torch.cat([nat.c, nat.c.new_zeros(1)]) + a, dim=-1)
    return _State(full, m, prec, root, half_logdet, log_w)


def _whiten(st: _State, diff: Tensor) -> Tensor:
    """Lᵀ(θ − m_k) (or √s ⊙ (θ − m_k)) for diff ``(P, K, d)``."""
    if st.full:
        return (st.root.mT @ diff.unsqueeze(-1)).squeeze(-1)
    return st.root * diff


def _unwhiten(st: _State, z: Tensor) -> Tensor:
    """m_k + L_k⁻ᵀ z (or m_k + z / √s) for z ``(P, K, d)``: θ ~ q_k when z ~ N(0, I)."""
    if st.full:
        eye = torch.eye(st.m.shape[-1], dtype=st.m.dtype, device=st.m.device)
        inv_upper = torch.linalg.solve_triangular(st.root.mT, eye, upper=True)  # L⁻ᵀ
        return st.m + (inv_upper @ z.unsqueeze(-1)).squeeze(-1)
    return st.m + z / st.root


def _log_q_derivatives(st: _State, theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log q, ∇log q, ∇²log q (its diagonal for diagonal components) and the log
    responsibilities at θ ``(P, d)``, in closed form (module docstring); the covariance form of
    the Hessian has no cancellation in the tails of a component."""
    d = theta.shape[-1]
    diff = theta.unsqueeze(-2) - st.m  # (P, K, d)
    white = _whiten(st, diff)
    log_n = -0.5 * white.square().sum(-1) + st.half_logdet - 0.5 * d * _LOG_2PI
    logits = st.log_w + log_n  # (P, K)
    log_q = torch.logsumexp(logits, dim=-1)
    log_r = logits - log_q.unsqueeze(-1)
    r = torch.exp(log_r)
    if st.full:
        dj = -(st.prec @ diff.unsqueeze(-1)).squeeze(-1)
    else:
        dj = -st.prec * diff
    grad = (r.unsqueeze(-1) * dj).sum(-2)
    e = dj - grad.unsqueeze(-2)
    rr = r.unsqueeze(-1)
    if st.full:
        outer = e.unsqueeze(-1) * e.unsqueeze(-2) - st.prec
        hess = (rr.unsqueeze(-1) * outer).sum(-3)
    else:
        hess = (rr * (e * e - st.prec)).sum(-2)
    return log_q, grad, hess, log_r


def _loss_derivatives(loss: Callable, theta: Tensor, full: bool) -> tuple[Tensor, Tensor, Tensor]:
    """ℓ̄, ∇ℓ̄ and ∇²ℓ̄ (or its diagonal) at θ ``(P, d)`` by autograd (d backward passes)."""
    theta = theta.detach().requires_grad_()
    with torch.enable_grad():
        values = _values(loss, theta, theta.shape[0], torch.Size([]))
        if not torch.isfinite(values).all():
            raise ValueError(_NAN_MESSAGE)
        (g,) = torch.autograd.grad(values.sum(), theta, create_graph=True)
        h = _hessian_exact(g, theta, full)
    g, h = g.detach(), h.detach()
    if not (torch.isfinite(g).all() and torch.isfinite(h).all()):
        raise ValueError(
            "the loss's gradient or Hessian is NaN/Inf at the mixture's evaluation points; the "
            "state was not changed"
        )
    return values.detach(), g, h


def _points(st: _State, expectation: str, n: int, generator) -> tuple[Tensor, Tensor | None]:
    """Evaluation points θ ``(P, d)`` and weights ``(P, K)`` with E_{q_k}[φ] ≈ Σ_p w_pk φ(θ_p)
    (for ``"importance"`` the weights need the responsibilities: ``None`` is returned and
    :func:`_expectations` fills them in)."""
    k, d = st.m.shape
    dtype, device = st.m.dtype, st.m.device
    if expectation == "importance":  # n draws from q: component by π, then θ ~ q_z
        idx = torch.multinomial(torch.exp(st.log_w), n, replacement=True, generator=generator)
        z = torch.randn((n, 1, d), dtype=dtype, device=device, generator=generator)
        theta = _unwhiten(st, z.expand(n, k, d))  # (n, K, d)
        theta = theta[torch.arange(n, device=device), idx]
        return theta, None
    if expectation == "gh":
        z, w1 = gauss_hermite_product(n, d, dtype=dtype, device=device)
        z = z.unsqueeze(-2).expand(-1, k, d)
    else:  # independent draws for each component
        z = torch.randn((n, k, d), dtype=dtype, device=device, generator=generator)
        w1 = torch.full((n,), 1.0 / n, dtype=dtype, device=device)
    theta = _unwhiten(st, z)  # (P, K, d): θ_pk ~ q_k
    p = theta.shape[0]
    # every component's points are evaluated once; point (p, j) carries weight only for q_j
    w = torch.zeros(p, k, k, dtype=dtype, device=device)
    w[:, torch.arange(k), torch.arange(k)] = w1.unsqueeze(-1)
    return theta.reshape(p * k, d), w.reshape(p * k, k)


def _expect(w: Tensor, phi: Tensor) -> Tensor:
    """Σ_p w_pk φ_p for φ ``(P, *event)`` → ``(K, *event)``."""
    return (w.mT @ phi.reshape(phi.shape[0], -1)).reshape(w.shape[-1], *phi.shape[1:])


def _expectations(st, loss, expectation, n, delta, generator, need_derivs=True):
    theta, w = _points(st, expectation, n, generator)
    log_q, gq, hq, log_r = _log_q_derivatives(st, theta)
    if w is None:  # importance weights r_k(θ) / (π_k n)
        w = torch.exp(log_r - st.log_w) / theta.shape[0]
    if delta:  # the loss part at the component means, log q by the expectation
        lv, lg, lh = _loss_derivatives(loss, st.m, st.full)
        value = lv + _expect(w, log_q)
        grad = lg + _expect(w, gq)
        hess = lh + _expect(w, hq)
    elif need_derivs:
        lv, lg, lh = _loss_derivatives(loss, theta, st.full)
        value = _expect(w, lv + log_q)
        grad = _expect(w, lg + gq)
        hess = _expect(w, lh + hq)
    else:
        lv = _values(loss, theta, theta.shape[0], torch.Size([]))
        if not torch.isfinite(lv).all():
            raise ValueError(_NAN_MESSAGE)
        return MixtureExpectations(_expect(w, lv + log_q), None, None)
    if st.full:
        hess = sym(hess)
    return MixtureExpectations(value, grad, hess)


# ---------------------------------------------------------------------------- public API
def mixture_expectations(
    family: Mixture,
    nat: MixtureNat,
    loss: Callable[[Tensor], Tensor],
    *,
    expectation: Expectation = "gh",
    n_points: int | None = None,
    delta: bool = False,
    generator: torch.Generator | None = None,
) -> MixtureExpectations:
    r"""The component expectations of f = ℓ̄ + log q (q held fixed),

    .. math:: \big(\mathbb E_{q_k}[f],\ \mathbb E_{q_k}[\nabla f],
              \ \mathbb E_{q_k}[\nabla^2 f]\big)_{k=1}^K,\qquad
              \mathbb E_{q_k}[\varphi] = \mathbb E_q\big[\tfrac{r_k(\theta)}{\pi_k}
              \varphi(\theta)\big],

    the inputs of :func:`mixture_step`.

    Args:
        family: an :class:`expfam.Mixture` (FullGaussian or DiagGaussian components).
        nat: its λ, unbatched (``nat.c`` of shape ``(K − 1,)``).
        loss: vectorized θ ↦ ℓ̄(θ): θ of shape ``(P, d)`` → values ``(P,)``.
        expectation: ``"gh"`` (tensor-product Gauss–Hermite in each component's coordinates
            θ = m_k + L_k⁻ᵀz, n_points per dimension), ``"mc"`` (n_points reparameterized draws
            from each component) or ``"importance"`` (n_points draws from q with weights
            r_k(θ)/(π_k n)).
        n_points: points per dimension (``"gh"``, default 32) or draws (``"mc"`` per component,
            default 100; ``"importance"`` in all, default 1000).
        delta: the loss part at the component means (ℓ̄(m_k), ∇ℓ̄(m_k), ∇²ℓ̄(m_k)), the log q
            part by ``expectation`` (Table 1 row 3).
        generator: random numbers for ``"mc"`` and ``"importance"``.

    Returns:
        :class:`MixtureExpectations` (Hessians diagonal for diagonal components).

    Example:
        >>> import torch
        >>> from expfam import Mixture, FullGaussian
        >>> from blr.mixture import mixture_expectations
        >>> fam = Mixture(FullGaussian())
        >>> comp = FullGaussian().from_moments(torch.tensor([[-9.0], [9.0]], dtype=torch.float64),
        ...                                    torch.full((2, 1, 1), 4.0, dtype=torch.float64))
        >>> nat = fam.from_components(torch.tensor([0.5, 0.5], dtype=torch.float64), comp)
        >>> e = mixture_expectations(fam, nat, lambda th: (th**2).sum(-1))
        >>> e.hess.flatten().round(decimals=12)   # ∇²ℓ̄ = 2 plus E_{q_k}[∇² log q] ≈ −S_k = −4
        tensor([-2., -2.], dtype=torch.float64)
    """
    n = _check_options(family, nat, expectation, n_points)
    with torch.no_grad():
        st = _state(family, nat)
    return _expectations(st, loss, expectation, n, bool(delta), generator)


def mixture_objective(
    family: Mixture,
    nat: MixtureNat,
    loss: Callable[[Tensor], Tensor],
    *,
    expectation: Expectation = "gh",
    n_points: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The objective L(q) = E_q[ℓ̄ + log q] = Σ_k π_k E_{q_k}[ℓ̄ + log q] (for ℓ̄ = −log p̃,
    KL(q ‖ p) − log Z), for diagnostics.

    Args:
        family, nat, loss, expectation, n_points, generator: as in :func:`mixture_expectations`.

    Returns:
        A scalar tensor.

    Example:
        >>> import torch
        >>> from expfam import Mixture, FullGaussian
        >>> from blr.mixture import mixture_objective
        >>> fam = Mixture(FullGaussian())
        >>> comp = FullGaussian().from_moments(torch.tensor([[-1.0], [2.0]], dtype=torch.float64),
        ...                                    torch.ones(2, 1, 1, dtype=torch.float64))
        >>> nat = fam.from_components(torch.tensor([0.3, 0.7], dtype=torch.float64), comp)
        >>> target = lambda th: -fam.marginal_log_prob(nat, th)   # q = p: KL = 0, log Z = 0
        >>> abs(float(mixture_objective(fam, nat, target, n_points=60))) < 1e-12
        True
    """
    n = _check_options(family, nat, expectation, n_points)
    with torch.no_grad():
        st = _state(family, nat)
        e = _expectations(st, loss, expectation, n, False, generator, need_derivs=False)
        return (torch.exp(st.log_w) * e.value).sum(-1)


def mixture_step(
    family: Mixture,
    nat: MixtureNat,
    loss: Callable[[Tensor], Tensor],
    rho: float,
    *,
    expectation: Expectation = "gh",
    n_points: int | None = None,
    weights: WeightRule = "exact",
    improved: bool = False,
    delta: bool = False,
    generator: torch.Generator | None = None,
) -> MixtureNat:
    r"""One step of the mixture BLR (Lin, Khan & Schmidt 2019; module docstring), f = ℓ̄ + log q:

    .. math::
        S_k &\leftarrow S_k + \rho G_k\ [+\ \tfrac{\rho^2}{2}G_kS_k^{-1}G_k],\quad
              G_k = \mathbb E_{q_k}[\nabla^2 f],\qquad
        m_k \leftarrow m_k - \rho S_k^{-1}\mathbb E_{q_k}[\nabla f]\ (\text{new } S_k),\\
        c_k &\leftarrow c_k - \rho(\Phi_k - \Phi_K)\ (\text{exact}),\qquad
        \log\tfrac{\pi_k}{\pi_K} \leftarrow \log\tfrac{\pi_k}{\pi_K}
              - \rho\big(\mathbb E_{q_k}[f] - \mathbb E_{q_K}[f]\big)\ (\text{lin}).

    Diagonal components use the diagonal of E_{q_k}[∇²f] (Price's theorem per σ_j²).

    Args:
        family: an :class:`expfam.Mixture` (FullGaussian or DiagGaussian components).
        nat: the current λ = (c, lam1, lam2), unbatched.
        loss: vectorized θ ↦ ℓ̄(θ): θ of shape ``(P, d)`` → ``(P,)``; the entropy is added by
            the rule (as log q), not by the loss.
        rho: ρ > 0.
        expectation: ``"gh"``, ``"mc"`` or ``"importance"`` (:func:`mixture_expectations`).
        n_points: Gauss–Hermite points per dimension, or Monte Carlo draws.
        weights: ``"exact"`` (the λ-space BLR of c), ``"lin"`` (Lin et al.'s first-order rule)
            or ``"fixed"`` (π unchanged).
        improved: the improved-BLR correction ρ²/2 G_kS_k⁻¹G_k per component (Lin et al. 2020),
            which keeps every S_k positive definite for any symmetric estimate G_k (the mean
            uses the new precision). Needs ``weights="lin"`` or ``"fixed"``: the exact rule
            updates c = log(π_k/π_K) − A_k + A_K, which presumes the λ-space component step.
        delta: the delta method for the loss part (ℓ̄, ∇ℓ̄, ∇²ℓ̄ at m_k); the log q terms keep
            ``expectation`` (Table 1 row 3).
        generator: random numbers for ``"mc"`` and ``"importance"``.

    Returns:
        The new λ. Raises ValueError naming the argument for a bad option, if the loss returns
        NaN/Inf, or if the step leaves a component precision not positive definite (lower rho or
        use ``improved=True``); the input is never modified.

    Example:
        >>> import torch
        >>> from expfam import Mixture, FullGaussian
        >>> from blr.mixture import mixture_step
        >>> fam, comp = Mixture(FullGaussian()), FullGaussian()
        >>> nat = fam.from_components(   # the double well (θ² − 1)², Table 1 row 3
        ...     torch.tensor([0.5, 0.5], dtype=torch.float64),
        ...     comp.from_moments(torch.tensor([[-0.5], [0.7]], dtype=torch.float64),
        ...                       torch.full((2, 1, 1), 10.0, dtype=torch.float64)))
        >>> for _ in range(20):
        ...     nat = mixture_step(fam, nat, lambda th: (th[..., 0] ** 2 - 1) ** 2, 1.0,
        ...                        weights="fixed", delta=True, n_points=60)
        >>> comp.location(fam.components(nat)).flatten()   # both minima, pushed apart by log q
        tensor([-1.0055,  1.0055], dtype=torch.float64)
    """
    n = _check_options(family, nat, expectation, n_points, weights, bool(improved))
    rho = check_rho(rho)
    with torch.no_grad():
        st = _state(family, nat)
        e = _expectations(st, loss, expectation, n, bool(delta), generator)
        return _update(nat, st, e, rho, weights, bool(improved))


def _update(nat, st: _State, e: MixtureExpectations, rho, weights, improved) -> MixtureNat:
    """The parameter update from the expectations (module docstring)."""
    m, prec, g, h = st.m, st.prec, e.grad, e.hess
    if st.full:
        s_new = prec + rho * h
        if improved:  # ½ρ² G S⁻¹ G
            s_new = s_new + 0.5 * rho**2 * h @ torch.cholesky_solve(h, st.root)
        s_new = sym(s_new)
        root, info = torch.linalg.cholesky_ex(s_new)
        bad = torch.nonzero(info).flatten().tolist()
        if bad:
            raise ValueError(_not_pd_message(rho, bad))
        m_new = m - rho * torch.cholesky_solve(g.unsqueeze(-1), root).squeeze(-1)
        half_logdet = torch.log(torch.diagonal(root, dim1=-2, dim2=-1)).sum(-1)
        lam1 = (s_new @ m_new.unsqueeze(-1)).squeeze(-1)
    else:
        s_new = prec + rho * h
        if improved:
            s_new = s_new + 0.5 * rho**2 * h * h / prec
        bad = torch.nonzero(~(s_new > 0).all(-1)).flatten().tolist()
        if bad:
            raise ValueError(_not_pd_message(rho, bad))
        m_new = m - rho * g / s_new
        half_logdet = 0.5 * torch.log(s_new).sum(-1)
        lam1 = s_new * m_new

    if weights == "exact":  # c ← c − ρ ∇_{μ0}: Φ_k − Φ_K
        if st.full:
            cov = torch.cholesky_inverse(st.root)
            quad = (m.unsqueeze(-2) @ h @ m.unsqueeze(-1)).reshape(-1) - (h * cov).sum((-2, -1))
        else:
            quad = (h * (m * m - 1 / prec)).sum(-1)
        phi = e.value - (m * g).sum(-1) + 0.5 * quad
        c_new = nat.c - rho * (phi[:-1] - phi[-1])
    else:
        ratio = st.log_w[:-1] - st.log_w[-1]
        if weights == "lin":
            ratio = ratio - rho * (e.value[:-1] - e.value[-1])
        a = _log_partition(st.full, m_new, s_new, half_logdet)
        c_new = ratio - a[:-1] + a[-1]
    new = MixtureNat(c_new, lam1, -0.5 * s_new)
    for field, value in zip(new._fields, new):
        if not torch.isfinite(value).all():
            raise ValueError(
                f"nat.{field} must be finite: the mixture BLR step with rho = {rho:g} gave NaN/Inf "
                "entries; the state was not changed"
            )
    return new


def _not_pd_message(rho: float, bad: list) -> str:
    return (
        f"nat.lam2 must be negative definite: the mixture BLR step with rho = {rho:g} made the "
        f"precision of component(s) {bad} not positive definite (lower rho, use more points, or "
        "improved=True); the state was not changed"
    )
