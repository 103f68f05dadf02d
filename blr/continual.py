r"""Continual learning with posteriors as memory (Khan & Rue 2023, §5: "adaptation").

- **VCL** (Nguyen et al. 2018): the next task's prior is the last task's posterior. With the
  optimizers of :mod:`blr.optim` that is ``prior=opt.posterior()`` (any of them);
  :func:`vcl_prior` checks that the posterior fits the model.
- **Online EWC** (Schwarz et al. 2018), the Laplace special case: the quadratic penalty
  ½ Σ_j F_j (θ_j − θ*_j)² of a diagonal Gaussian posterior N(θ*, F⁻¹) (:class:`WeightPrior`; F may
  be decayed by γ between tasks, :meth:`WeightPrior.decayed`).
- **FROMP** (Pan et al., NeurIPS 2020): memorable points, the inputs of largest Λ_i (the
  curvature of the loss in the model's output: :func:`memorable_points`), and a functional
  regularizer ½τ(f(θ) − f_old)ᵀK⁻¹(f(θ) − f_old) over the predictions there, with the GP kernel
  K = JΣJᵀ of the old posterior's covariance Σ and the Jacobian J of the predictions at the old
  mean (:class:`FunctionalPrior`). For a linear model with as many independent memorable points
  as weights it is the weight-space penalty ½(θ − θ_old)ᵀΣ⁻¹(θ − θ_old) (a test checks it).
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

__all__ = ["FunctionalPrior", "KPrior", "WeightPrior", "memorable_points", "vcl_prior"]

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


def _predictions(model: nn.Module, x: Tensor, likelihood: str) -> Tensor:
    """The predictions FROMP regularizes: probabilities (``bce_with_logits``,
    ``cross_entropy``) or the outputs (``gaussian``), flattened."""
    out = model(x)
    if likelihood == "bce_with_logits":
        out = out.reshape(len(x), -1)
    return _PREDICT[likelihood](out).reshape(-1)


def memorable_points(model: nn.Module, x: Tensor, likelihood: str, k: int) -> Tensor:
    """The indices of the ``k`` inputs of largest Λ_i = tr ∂²ℓ/∂f² (FROMP's memorable points:
    p(1 − p) for ``bce_with_logits``, Σ_c p_c(1 − p_c) for ``cross_entropy``; every point ties
    for ``gaussian``, whose Λ is constant: the first k), most curved first.

    Example:
        >>> import torch
        >>> from blr.continual import memorable_points
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(1.0)
        >>> memorable_points(model, torch.tensor([[3.0], [0.1], [-1.0]]), "bce_with_logits", 2)
        tensor([1, 2])
    """
    if likelihood not in _SOFT_LOSSES:
        raise ValueError(f"likelihood must be one of {sorted(_SOFT_LOSSES)}, got {likelihood!r}")
    if int(k) != k or not 0 < k <= len(x):
        raise ValueError(f"k must be an integer in [1, {len(x)}], got {k}")
    with torch.no_grad():
        if likelihood == "gaussian":
            return torch.arange(int(k))
        p = _predictions(model, x, likelihood).reshape(len(x), -1)
        lam = (p * (1 - p)).sum(-1)
        return torch.argsort(lam, descending=True, stable=True)[: int(k)]


class FunctionalPrior:
    r"""FROMP's functional regularizer over memorable points (Pan et al., NeurIPS 2020):

    .. math::
        \tfrac{\tau}{2}\,(f(\theta) - f_{\text{old}})^\top K^{-1} (f(\theta) - f_{\text{old}}),
        \qquad K = J\,\Sigma\,J^\top + \epsilon I,

    f the predictions at the memory (probabilities, or the outputs of a Gaussian likelihood),
    f_old and J their values and Jacobian at the old mean, Σ the old posterior's covariance
    (diagonal or full), ε a small jitter. An empty memory gives 0 (only the weight-space terms
    of the training remain).

    Args:
        model: the model, holding the old posterior's mean when the regularizer is built.
        memory: the memorable inputs (:func:`memorable_points`), possibly empty.
        posterior: the old posterior, a diagonal or full Gaussian over the model's parameters.
        likelihood: ``"bce_with_logits"``, ``"cross_entropy"`` or ``"gaussian"``.
        tau: τ ≥ 0, the regularizer's weight.
        jitter: ε ≥ 0.

    Example:
        >>> import torch, expfam
        >>> from blr import ParameterPosterior
        >>> from blr.continual import FunctionalPrior
        >>> model, fam = torch.nn.Linear(2, 1, bias=False), expfam.DiagGaussian()
        >>> q = ParameterPosterior(fam, fam.from_moments(torch.zeros(2), torch.ones(2)), model)
        >>> reg = FunctionalPrior(model, torch.randn(3, 2), q, "bce_with_logits")
        >>> float(reg())   # at the old mean: 0
        0.0
    """

    def __init__(
        self,
        model: nn.Module,
        memory: Tensor,
        posterior: ParameterPosterior,
        likelihood: str,
        tau: float = 1.0,
        jitter: float = 1e-8,
    ):
        if likelihood not in _SOFT_LOSSES:
            raise ValueError(
                f"likelihood must be one of {sorted(_SOFT_LOSSES)}, got {likelihood!r}"
            )
        if not isinstance(memory, Tensor) or memory.dim() == 0:
            raise ValueError("memory must be a tensor of inputs (examples along dimension 0)")
        if not float(tau) >= 0 or not float(jitter) >= 0:
            raise ValueError(f"tau and jitter must be ≥ 0, got {tau}, {jitter}")
        self.posterior = vcl_prior(posterior, model)
        if not isinstance(posterior.family, (DiagGaussian, FullGaussian)):
            raise ValueError(
                f"posterior must be a diagonal or full Gaussian, got {posterior.family.name}"
            )
        self.model, self.memory, self.likelihood = model, memory, likelihood
        self.tau = float(tau)
        self.empty = memory.shape[0] == 0
        if self.empty:
            return
        _, prec = posterior.family.to_moments(posterior.nat)
        names = [n for n, _ in model.named_parameters()]
        values = {n: p.detach() for n, p in model.named_parameters()}

        def predictions(flat: Tensor) -> Tensor:
            chunks = flat.split([values[n].numel() for n in names])
            params = {n: c.view_as(values[n]) for n, c in zip(names, chunks)}
            out = torch.func.functional_call(model, params, (memory,))
            if likelihood == "bce_with_logits":
                out = out.reshape(len(memory), -1)
            return _PREDICT[likelihood](out).reshape(-1)

        theta_old = torch.cat([values[n].reshape(-1) for n in names])
        with torch.no_grad():
            self.f_old = predictions(theta_old).detach()
        jac = torch.func.jacrev(predictions)(theta_old).detach()  # (M·C, P)
        cov = 1.0 / prec if prec.dim() == 1 else torch.linalg.inv(prec)
        kernel = jac * cov @ jac.T if prec.dim() == 1 else jac @ cov @ jac.T
        kernel = kernel + float(jitter) * torch.eye(len(kernel), dtype=kernel.dtype)
        self.kernel_chol = torch.linalg.cholesky(0.5 * (kernel + kernel.T))

    def __call__(self) -> Tensor:
        """The regularizer at the model's current parameters (differentiable)."""
        if self.empty:
            return torch.zeros((), dtype=next(self.model.parameters()).dtype)
        r = _predictions(self.model, self.memory, self.likelihood) - self.f_old
        sol = torch.cholesky_solve(r.unsqueeze(-1), self.kernel_chol).squeeze(-1)
        return 0.5 * self.tau * (r * sol).sum()
