r"""Continual learning with posteriors as memory (Khan & Rue 2023, §5: "adaptation").

- **VCL** (Nguyen et al. 2018): the next task's prior is the last task's posterior. With the
  optimizers of :mod:`blr.optim` that is ``prior=opt.posterior()`` (any of them);
  :func:`vcl_prior` checks that the posterior fits the model.
- **Online EWC** (Schwarz et al. 2018), the Laplace special case: the quadratic penalty
  ½ Σ_j F_j (θ_j − θ*_j)² of a diagonal Gaussian posterior N(θ*, F⁻¹) (:class:`WeightPrior`; F may
  be decayed by γ between tasks, :meth:`WeightPrior.decayed`).
- **K-priors** (Khan & Swaroop, NeurIPS 2021): a weight term and a function term over a memory of
  past inputs with the old model's predictions as soft labels,

  .. math::
      \mathcal K(\theta) = \sum_{i\in\mathcal M} \ell\big(\hat y_i, f_i(\theta)\big)
          + \tfrac{\delta}{2}\,\lVert\theta - \theta_{\text{old}}\rVert^2,\qquad
      \hat y_i = \text{the old model's prediction at } x_i,

  whose gradient equals that of the old data's loss plus the prior ½δ‖θ‖² whenever θ_old
  minimised it and the memory holds all the old inputs (for GLMs: the gradient reconstruction
  is exact), so adding data, removing data or changing the regularizer needs the memory only
  (:class:`KPrior`).

A test checks each claim: sequential conjugate Bayesian linear regression equals the batch
posterior (1e-10), a K-prior with all past inputs reproduces batch retraining of logistic
regression (1e-6).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from blr.posterior import ParameterPosterior
from expfam import DiagGaussian, FullGaussian

__all__ = ["KPrior", "WeightPrior", "vcl_prior"]

_SOFT_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    # ℓ(ŷ, f) summed over the memory, with soft labels ŷ
    "bce_with_logits": lambda f, y: nn.functional.binary_cross_entropy_with_logits(
        f, y, reduction="sum"
    ),
    "cross_entropy": lambda f, y: nn.functional.cross_entropy(f, y, reduction="sum"),
    "gaussian": lambda f, y: 0.5 * ((f - y) ** 2).sum(),
}
_PREDICT: dict[str, Callable[[Tensor], Tensor]] = {
    "bce_with_logits": torch.sigmoid,
    "cross_entropy": lambda f: torch.softmax(f, -1),
    "gaussian": lambda f: f,
}


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.reshape(-1) for p in model.parameters()])


def vcl_prior(posterior: ParameterPosterior, model: nn.Module) -> ParameterPosterior:
    """The last task's posterior as the next task's prior (VCL), checked against ``model``
    (the same parameter names and shapes) and bound to it; pass it as ``prior=`` to any
    optimizer of :mod:`blr.optim`.

    Example:
        >>> import torch
        >>> from blr.optim import IVON
        >>> from blr.continual import vcl_prior
        >>> model = torch.nn.Linear(2, 1)
        >>> task1 = IVON(model.parameters(), lr=0.1, ess=10)
        >>> task2 = IVON(model.parameters(), lr=0.1, ess=10,
        ...              prior=vcl_prior(task1.posterior(model), model))
    """
    if not isinstance(posterior, ParameterPosterior):
        raise TypeError(
            f"posterior must be a blr.ParameterPosterior, got {type(posterior).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mine = ParameterPosterior.layout_of(model)
    if mine.names != posterior.layout.names or mine.shapes != posterior.layout.shapes:
        raise ValueError(
            "posterior is a posterior over another model: its parameters "
            f"{list(zip(posterior.layout.names, posterior.layout.shapes))[:3]}..., the model's "
            f"{list(zip(mine.names, mine.shapes))[:3]}..."
        )
    return posterior.bind(model)


class WeightPrior:
    r"""The quadratic penalty ½(θ − θ*)ᵀF(θ − θ*) of a Gaussian posterior N(θ*, F⁻¹) over a
    model's parameters: online EWC's regularizer (F a diagonal Fisher or a posterior precision),
    the Laplace special case of VCL.

    Args:
        posterior: a diagonal or full Gaussian :class:`blr.ParameterPosterior` of the model.
        model: the model whose parameters θ the penalty is of.
        weight: λ, the penalty's weight.

    Example:
        >>> import torch, expfam
        >>> from blr import ParameterPosterior
        >>> from blr.continual import WeightPrior
        >>> model, fam = torch.nn.Linear(1, 1, bias=False), expfam.DiagGaussian()
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(3.0)
        >>> q = ParameterPosterior(fam, fam.from_moments(torch.ones(1), torch.full((1,), 2.0)),
        ...                        model)
        >>> float(WeightPrior(q, model)())   # ½·2·(3 − 1)²
        4.0
    """

    def __init__(self, posterior: ParameterPosterior, model: nn.Module, weight: float = 1.0):
        self.posterior = vcl_prior(posterior, model)
        if not isinstance(posterior.family, (DiagGaussian, FullGaussian)):
            raise ValueError(
                f"posterior must be a diagonal or full Gaussian, got {posterior.family.name}"
            )
        if not float(weight) >= 0:
            raise ValueError(f"weight must be ≥ 0, got {weight}")
        self.model, self.weight = model, float(weight)
        self.mean, self.precision = posterior.family.to_moments(posterior.nat)

    def decayed(self, gamma: float) -> WeightPrior:
        """The same penalty with F scaled by γ ∈ [0, 1] (online EWC's decay between tasks)."""
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        out = WeightPrior.__new__(WeightPrior)
        out.__dict__.update(self.__dict__)
        out.precision = self.precision * float(gamma)
        return out

    def __call__(self) -> Tensor:
        """½λ(θ − θ*)ᵀF(θ − θ*) at the model's current parameters (differentiable)."""
        r = _flat(self.model) - self.mean.to(_flat(self.model).dtype)
        quad = (
            (self.precision * r * r).sum() if self.precision.dim() == 1 else r @ self.precision @ r
        )
        return 0.5 * self.weight * quad


class KPrior:
    r"""A K-prior (Khan & Swaroop, NeurIPS 2021) over a memory of past inputs: the loss of the
    model's outputs on the memory against the old model's predictions (soft labels), plus
    ½δ‖θ − θ_old‖² (module docstring). Add it to the new data's loss; its gradient is the old
    data's (with the prior ½δ‖θ‖²) when the memory holds all old inputs and θ_old minimised
    that loss.

    Args:
        model: the model, holding θ_old when the K-prior is built (its outputs on the memory
            become the soft labels, its parameters θ_old).
        memory: the memory's inputs (a tensor the model takes, examples along dimension 0).
        likelihood: ``"bce_with_logits"``, ``"cross_entropy"`` or ``"gaussian"`` (the old
            task's loss, summed over examples).
        delta: δ ≥ 0, the prior precision of the old training.

    Example:
        >>> import torch
        >>> from blr.continual import KPrior
        >>> model = torch.nn.Linear(2, 1)
        >>> k = KPrior(model, torch.randn(5, 2), "bce_with_logits", delta=0.1)
        >>> loss = k()          # at θ_old: the soft labels' own entropy, no weight term
        >>> loss.backward()
    """

    def __init__(self, model: nn.Module, memory: Tensor, likelihood: str, delta: float):
        if likelihood not in _SOFT_LOSSES:
            raise ValueError(
                f"likelihood must be one of {sorted(_SOFT_LOSSES)}, got {likelihood!r}"
            )
        if not isinstance(memory, Tensor) or memory.dim() == 0 or memory.shape[0] == 0:
            raise ValueError("memory must be a tensor of at least one example (dimension 0)")
        if not float(delta) >= 0:
            raise ValueError(f"delta must be ≥ 0, got {delta}")
        self.model, self.memory, self.likelihood = model, memory, likelihood
        self.delta = float(delta)
        with torch.no_grad():
            out = model(memory)
            if likelihood == "bce_with_logits":
                out = out.reshape(len(memory), -1).squeeze(-1)
            self.soft_labels = _PREDICT[likelihood](out).detach()
            self.theta_old = _flat(model).detach().clone()

    def __call__(self) -> Tensor:
        """𝒦(θ) at the model's current parameters (differentiable)."""
        out = self.model(self.memory)
        if self.likelihood == "bce_with_logits":
            out = out.reshape(len(self.memory), -1).squeeze(-1)
        function = _SOFT_LOSSES[self.likelihood](out, self.soft_labels)
        r = _flat(self.model) - self.theta_old
        return function + 0.5 * self.delta * (r * r).sum()
