r"""The Gaussian BLR in (m, S) coordinates, with the options the deep-learning rows need.

From ĝ ≈ E_q[∇ℓ̄] and Ĥ ≈ E_q[∇²ℓ̄] (recovered from any estimator's ∇_μ; docs/concepts.md):

.. math::
    S_{t+1} &= S_t + \beta G_t \;[+\ \gamma(S_t - S_{t-1})]\;
              [+\ \tfrac{\beta^2}{2} G_t S_t^{-1} G_t],\qquad G_t = \hat H - S_t,\\
    m_{t+1} &= m_t - \alpha\,(P_{t+1} + \epsilon I)^{-1}\hat g\;
              [+\ \gamma S_{t+1}^{-1}S_{t-1}(m_t - m_{t-1})],\qquad
    P_{t+1} = S_{t+1}\ \text{or}\ S_{t+1}^{1/2}.

With α = β, no momentum, no correction, no square root and ε = 0 this is exactly
:func:`blr.step` (a test checks it); α ≠ β is the BLR in (m, S) coordinates with per-block rates,
not a λ-space BLR. The bracketed options:

- natural momentum γ (heavy ball in λ-space, Khan et al. 2018; ``momentum_kind="natural"``), or the
  slow-moving-scale approximation γ(m_t − m_{t−1}) (``"heavy_ball"``);
- the improved BLR (Lin, Schmidt & Khan, ICML 2020): the ρ²/2 term keeps S positive
  definite for any symmetric Ĥ, e.g. Stein estimates; the mean uses the new precision (IVON) or
  the old one (Lin et al.'s code), ``improved_mean``;
- square-root scaling P = S^{1/2} (RMSprop/Adam) and damping ε.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from expfam import DiagGaussian, FullGaussian
from expfam.linalg import chol_or_raise, sym


@dataclasses.dataclass(frozen=True)
class GaussianOptions:
    """Options of :func:`gaussian_step` (see the module docstring for the math).

    Attributes:
        lr: α, the mean's rate; None means α = ρ (the BLR).
        momentum_kind: ``"natural"`` or ``"heavy_ball"`` (used when momentum γ > 0).
        improved: add the improved-BLR correction.
        improved_mean: ``"new"`` (IVON) or ``"old"`` (Lin et al.) precision in the mean step.
        sqrt_scaling: precondition the mean step with S^{1/2} (RMSprop/Adam).
        damping: ε added to the preconditioner.

    Example:
        >>> from blr import GaussianOptions
        >>> opts = GaussianOptions(lr=0.1, sqrt_scaling=True)   # an Adam-like mean step
        >>> opts.momentum_kind, opts.damping >= 0
        ('natural', True)
    """

    lr: float | None = None
    momentum_kind: Literal["natural", "heavy_ball"] = "natural"
    improved: bool = False
    improved_mean: Literal["new", "old"] = "new"
    sqrt_scaling: bool = False
    damping: float = 0.0

    def __post_init__(self) -> None:
        if self.lr is not None and not (float(self.lr) > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.momentum_kind not in ("natural", "heavy_ball"):
            raise ValueError(
                f"momentum_kind must be 'natural' or 'heavy_ball', got {self.momentum_kind!r}"
            )
        if self.improved_mean not in ("new", "old"):
            raise ValueError(f"improved_mean must be 'new' or 'old', got {self.improved_mean!r}")
        if not float(self.damping) >= 0:
            raise ValueError(f"damping must be ≥ 0, got {self.damping}")


def _mv(a: Tensor, v: Tensor) -> Tensor:
    return (a @ v.unsqueeze(-1)).squeeze(-1)


def _sqrtm(s: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(s)
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.mT


def diag_moments_step(
    m: Tensor,
    s: Tensor,
    g_hat: Tensor,
    h_hat: Tensor,
    *,
    rho: float,
    options: GaussianOptions,
    lr: float | None = None,
    s_shift: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The diagonal Gaussian's (m, s)-form step of :func:`gaussian_step` on the moments, from
    the total ĝ = E_q[∇ℓ̄] and ĥ = E_q[diag ∇²ℓ̄] (prior included), with G = ĥ − s:

    .. math::
        s' = s + \rho G\ [+\ \text{s\_shift}]\ [+\ \tfrac12\rho^2 G^2/s],\qquad
        m' = m - \alpha\,\hat g/(\phi(s') + \varepsilon),

    φ(s') = s' (or s with ``improved_mean="old"``; √· with ``sqrt_scaling``), α = ``lr`` (None:
    ``options.lr``, then ρ). Returns (m', s'); raises ValueError if s' is not positive.
    :func:`gaussian_step` is this after λ → (m, s) and ∇_μ → (ĝ, ĥ); callers that hold m, s,
    ĝ and ĥ already (the optimizers) call it directly.

    Example:
        >>> import torch, blr
        >>> from blr.gaussian import diag_moments_step
        >>> m, s = torch.zeros(1), torch.ones(1)
        >>> diag_moments_step(m, s, torch.ones(1), torch.full((1,), -3.0), rho=0.5,
        ...                   options=blr.GaussianOptions(improved=True))  # s' = 1 − 2 + 2
        (tensor([-0.5000]), tensor([1.]))
    """
    alpha = lr if lr is not None else (rho if options.lr is None else float(options.lr))
    big_g = h_hat - s
    s_new = s + rho * big_g
    if s_shift is not None:
        s_new = s_new + s_shift
    if options.improved:
        s_new = s_new + 0.5 * rho**2 * big_g * big_g / s
    mean_prec = s if options.improved and options.improved_mean == "old" else s_new
    precond = mean_prec.clamp_min(0).sqrt() if options.sqrt_scaling else mean_prec
    if options.damping:
        precond = precond + options.damping
    # (the preconditioner is positive where s_new is, unless a negative damping is given)
    if not (s_new > 0).all() or (options.damping < 0 and not (precond > 0).all()):
        raise ValueError(
            "nat.lam2 must be < 0: the updated precision s_{t+1} = −2·lam2 has non-positive "
            f"entries (min {s_new.min().item():.3g}); use GaussianOptions(improved=True), a "
            "smaller rho, or a non-negative Hessian estimate"
        )
    return m - alpha * g_hat / precond, s_new


def gaussian_step(
    family: FullGaussian | DiagGaussian,
    nat: tuple,
    grad_mean: tuple,
    *,
    rho: float,
    options: GaussianOptions = GaussianOptions(),
    momentum: float = 0.0,
    prev_nat: tuple | None = None,
    validate: bool = True,
) -> tuple:
    r"""One Gaussian BLR step in (m, S) coordinates (module docstring), from the total
    ∇_μE_q[ℓ̄] (``grad_mean``; add a Gaussian prior as ∇_μ − λ₀ first).

    Args:
        family: :class:`~expfam.FullGaussian` or :class:`~expfam.DiagGaussian`.
        nat: λ_t.
        grad_mean: ∇_μE_q[ℓ̄] at λ_t (a ``family.nat_type``).
        rho: β, the precision's rate (and the mean's, unless ``options.lr``).
        options: :class:`GaussianOptions`.
        momentum: γ ≥ 0 (needs ``prev_nat`` = λ_{t−1} when > 0).
        prev_nat: λ_{t−1}.
        validate: check λ_t on entry and λ_{t+1} (finite, in the domain) on exit; a caller that
            keeps λ valid and has checked ``grad_mean`` for NaN/Inf passes False (the
            precision's positivity is checked either way).

    Returns:
        λ_{t+1}. Raises ValueError naming ``nat.lam2`` if the precision is no longer positive
        definite (use ``options.improved``).

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.DiagGaussian()
        >>> nat = fam.from_moments(torch.zeros(1, dtype=torch.float64),
        ...                        torch.ones(1, dtype=torch.float64))
        >>> g = fam.mean_grad_from_gh(nat, torch.tensor([1.0], dtype=torch.float64),
        ...                           torch.tensor([-3.0], dtype=torch.float64))  # Ĥ < 0
        >>> new = blr.gaussian_step(fam, nat, g, rho=0.5,
        ...                         options=blr.GaussianOptions(improved=True))
        >>> fam.to_moments(new)[1]   # s + ρG + ρ²G²/(2s) = 1 − 2 + 2 > 0
        tensor([1.], dtype=torch.float64)
    """
    if not isinstance(family, (FullGaussian, DiagGaussian)):
        raise TypeError(f"gaussian_step needs a FullGaussian or DiagGaussian, got {family.name}")
    if validate:
        family.validate_nat(nat, "nat")
    beta = float(rho)
    if not beta > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    gamma = float(momentum)
    if gamma < 0:
        raise ValueError(f"momentum must be ≥ 0, got {momentum}")
    if gamma > 0:
        if prev_nat is None:
            raise ValueError("momentum > 0 needs prev_nat (λ_{t−1})")
        if validate:
            family.validate_nat(prev_nat, "prev_nat")
    alpha = beta if options.lr is None else float(options.lr)
    g_hat, h_hat = family.gh_from_mean_grad(nat, grad_mean)
    full = isinstance(family, FullGaussian)

    if full:
        m, chol = family.mean_and_chol(nat)
        s = -(nat.lam2 + nat.lam2.mT)
        big_g = sym(h_hat) - s
        s_new = s + beta * big_g
        if gamma > 0:
            s_new = s_new + gamma * (s + (prev_nat.lam2 + prev_nat.lam2.mT))  # γ(S_t − S_{t−1})
        if options.improved:  # ½β² G S⁻¹ G
            s_new = s_new + 0.5 * beta**2 * big_g @ torch.cholesky_solve(big_g, chol)
        s_new = sym(s_new)
        mean_prec = s if options.improved and options.improved_mean == "old" else s_new
        precond = _sqrtm(mean_prec) if options.sqrt_scaling else mean_prec
        if options.damping:
            eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
            precond = precond + options.damping * eye
        p_chol = chol_or_raise(
            precond,
            "nat.lam2 must be negative definite: the updated precision S_{t+1} = −2·lam2 is not "
            "positive definite (use GaussianOptions(improved=True), a smaller rho, or a PSD "
            "Hessian estimate)",
        )
        m_new = m - alpha * torch.cholesky_solve(g_hat.unsqueeze(-1), p_chol).squeeze(-1)
        if gamma > 0:
            m_prev = family.location(prev_nat)
            if options.momentum_kind == "natural":
                s_prev = -(prev_nat.lam2 + prev_nat.lam2.mT)
                sn_chol = chol_or_raise(s_new, "the updated precision must be positive definite")
                push = torch.cholesky_solve(_mv(s_prev, m - m_prev).unsqueeze(-1), sn_chol)
                m_new = m_new + gamma * push.squeeze(-1)
            else:
                m_new = m_new + gamma * (m - m_prev)
        new = family.nat_type(_mv(s_new, m_new), -0.5 * s_new)
    else:
        s = -2 * nat.lam2
        m = nat.lam1 / s
        shift = gamma * (s + 2 * prev_nat.lam2) if gamma > 0 else None  # γ(s_t − s_{t−1})
        m_new, s_new = diag_moments_step(
            m, s, g_hat, h_hat, rho=beta, options=options, lr=alpha, s_shift=shift
        )
        if gamma > 0:
            m_prev = family.location(prev_nat)
            if options.momentum_kind == "natural":
                m_new = m_new + gamma * (-2 * prev_nat.lam2) * (m - m_prev) / s_new
            else:
                m_new = m_new + gamma * (m - m_prev)
        new = family.nat_type(s_new * m_new, -0.5 * s_new)
    if validate:
        family.validate_nat(new, "nat")
    return new
