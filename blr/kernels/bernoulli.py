r"""Fused BayesBiNN updates on flat buffers (Meng, Bachmann & Khan, ICML 2020; Khan & Rue
2023, Table 1 row 10).

Binary weights θ ∈ {−1, +1}^D with q(θ) = Π_j Bernoulli on {−1, +1}, natural parameter λ
(μ = tanh λ). With the Gumbel-softmax relaxation at temperature τ,

.. math::
    \epsilon = \tfrac12\log\tfrac{u}{1-u},\quad a = \frac{\lambda+\epsilon}{\tau},\quad
    \theta_\tau = \tanh a,\quad
    s = \frac{1-\theta_\tau^2}{\tau\,(1-\tanh^2\lambda)}
      = \frac{\operatorname{sech}^2 a}{\tau\,\operatorname{sech}^2\lambda},\\
    \lambda \leftarrow \lambda
      - \alpha\big[N\,\overline{s\odot\hat g} + \kappa(\lambda-\lambda_0)\big]

(ĝ the minibatch-mean gradient at θ_τ, averaged over the draws; κ the KL weight; optionally an
exponential average of the bracket with bias correction). With κ = 1 and no averaging this is
:func:`blr.step` on the {−1,+1}-Bernoulli family with the :class:`blr.GumbelSoftmax` estimator
and the prior λ₀, on ℓ̄ = N·(mean loss) (a test checks it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG2 = math.log(2.0)


def _log_sech2_(x: Tensor) -> Tensor:
    """log sech²(x) = 2(log 2 − |x| − log1p(e^{−2|x|})), in place, exact for any |x|."""
    x.abs_()
    return x.neg_().sub_(torch.log1p(torch.exp(-2 * x.neg()))).add_(_LOG2).mul_(2)


def relaxed_sample_(
    lam: Tensor,
    *,
    temperature: float,
    generator: torch.Generator | None = None,
    out: Tensor,
) -> Tensor:
    """The argument a = (λ + ε)/τ of a relaxed draw θ_τ = tanh a, written into ``out``."""
    torch.rand(lam.shape, generator=generator, out=out, dtype=lam.dtype, device=lam.device)
    eps = out.log().sub_(torch.log1p(-out)).mul_(0.5)  # ½ log(u / (1 − u))
    return out.copy_(eps).add_(lam).div_(temperature)


def relaxed_scale(arg: Tensor, lam: Tensor, temperature: float) -> Tensor:
    """s = sech²(a) / (τ sech²(λ)), computed in log space (no 0/0 when |λ| or |a| is large)."""
    return (_log_sech2_(arg.clone()) - _log_sech2_(lam.clone())).exp_().div_(temperature)


@torch.no_grad()
def bayesbinn_step_(
    lam: Tensor,
    momentum: Tensor,
    stat: Tensor,
    *,
    lr: float,
    ess: float,
    prior_lam: float | Tensor = 0.0,
    kl_weight: float = 1.0,
    beta: float = 0.0,
    step: int = 1,
) -> None:
    """λ ← λ − α·ĝ_λ with ĝ_λ = N·stat + κ(λ − λ₀) (``stat`` = E[s⊙ĝ]), optionally averaged:
    ḡ ← βḡ + (1 − β)ĝ_λ and ĝ_λ = ḡ/(1 − β^t). In place on ``lam`` and ``momentum``; ``stat`` is
    used as a work buffer.

    Example:
        >>> lam, mom = torch.zeros(2), torch.zeros(2)
        >>> bayesbinn_step_(lam, mom, torch.tensor([1.0, -1.0]), lr=0.1, ess=10.0)
        >>> lam
        tensor([-1.,  1.])
    """
    grad = stat.mul_(ess)
    if kl_weight:
        grad.add_(lam, alpha=kl_weight)
        if isinstance(prior_lam, Tensor) or prior_lam != 0.0:
            grad.sub_(
                prior_lam * kl_weight
                if not isinstance(prior_lam, Tensor)
                else prior_lam.mul(kl_weight)
            )
    if beta > 0.0:
        momentum.mul_(beta).add_(grad, alpha=1.0 - beta)
        lam.sub_(momentum, alpha=lr / (1.0 - beta**step))
    else:
        lam.sub_(grad, alpha=lr)
