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

- **The Laplace posterior** these methods start from (:func:`diag_laplace`): N(θ*, P⁻¹) with
  P = δ + diag Σ_i J_iᵀΛ_iJ_i, the diagonal generalized Gauss–Newton matrix of a trained model
  from one pass of :class:`blr.curvature.PerExample` (for the likelihoods here it is also the
  diagonal Fisher information that EWC penalizes).

**Multi-head models.** In task-incremental learning each task has its own output head. Every
function here takes ``select``, a map from the model's output to the outputs of the task in
question (e.g. ``lambda out: out[:, 2 * t : 2 * t + 2]`` when the heads are the columns of one
linear layer); the parameters stay those of the whole model, so one posterior covers all heads.

A test checks each claim: sequential conjugate Bayesian linear regression equals the batch
posterior (1e-10), a K-prior with all past inputs reproduces batch retraining of logistic
regression (1e-6), FROMP with as many independent points as weights is the weight-space penalty
(1e-10), :func:`diag_laplace` equals :class:`blr.nn_laplace.NNLaplace`'s diagonal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from blr.posterior import ParameterPosterior
from expfam import DiagGaussian, FullGaussian

__all__ = [
    "FunctionalPrior",
    "KPrior",
    "WeightPrior",
    "diag_laplace",
    "memorable_points",
    "vcl_prior",
]

Select = Callable[[Tensor], Tensor]
"""A map from a model's output to the outputs of one task (one head of a multi-head model)."""

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


def _check_likelihood(likelihood: str) -> None:
    if likelihood not in _SOFT_LOSSES:
        raise ValueError(f"likelihood must be one of {sorted(_SOFT_LOSSES)}, got {likelihood!r}")


def _check_select(select: Select | None) -> None:
    if select is not None and not callable(select):
        raise TypeError(f"select must be callable (output → a task's outputs), got {select!r}")


def _outputs(model: nn.Module, x: Tensor, likelihood: str, select: Select | None) -> Tensor:
    """The task's outputs f(x): the model's output through ``select``; ``(n,)`` logits for
    ``bce_with_logits``."""
    out = model(x)
    if select is not None:
        out = select(out)
    if likelihood == "bce_with_logits":
        out = out.reshape(len(x), -1).squeeze(-1)
    return out


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
        tau: τ ≥ 0, the weight of the function term (1: the exact reconstruction above; with a
            memory of M of the N_old past inputs, N_old/M restores the old data's scale).
        select: the task's outputs from the model's output (a head of a multi-head model;
            module docstring); default the whole output.

    Example:
        >>> import torch
        >>> from blr.continual import KPrior
        >>> model = torch.nn.Linear(2, 1)
        >>> k = KPrior(model, torch.randn(5, 2), "bce_with_logits", delta=0.1)
        >>> loss = k()          # at θ_old: the soft labels' own entropy, no weight term
        >>> loss.backward()
    """

    def __init__(
        self,
        model: nn.Module,
        memory: Tensor,
        likelihood: str,
        delta: float,
        *,
        tau: float = 1.0,
        select: Select | None = None,
    ):
        _check_likelihood(likelihood)
        _check_select(select)
        if not isinstance(memory, Tensor) or memory.dim() == 0 or memory.shape[0] == 0:
            raise ValueError("memory must be a tensor of at least one example (dimension 0)")
        if not float(delta) >= 0:
            raise ValueError(f"delta must be ≥ 0, got {delta}")
        if not float(tau) >= 0:
            raise ValueError(f"tau must be ≥ 0, got {tau}")
        self.model, self.memory, self.likelihood = model, memory, likelihood
        self.delta, self.tau, self.select = float(delta), float(tau), select
        with torch.no_grad():
            out = _outputs(model, memory, likelihood, select)
            self.soft_labels = _PREDICT[likelihood](out).detach()
            self.theta_old = _flat(model).detach().clone()

    def __call__(self) -> Tensor:
        """𝒦(θ) at the model's current parameters (differentiable)."""
        out = _outputs(self.model, self.memory, self.likelihood, self.select)
        function = _SOFT_LOSSES[self.likelihood](out, self.soft_labels)
        r = _flat(self.model) - self.theta_old
        return self.tau * function + 0.5 * self.delta * (r * r).sum()


def _predictions(
    model: nn.Module, x: Tensor, likelihood: str, select: Select | None = None
) -> Tensor:
    """The predictions FROMP regularizes: probabilities (``bce_with_logits``,
    ``cross_entropy``) or the outputs (``gaussian``), flattened."""
    return _PREDICT[likelihood](_outputs(model, x, likelihood, select)).reshape(-1)


def memorable_points(
    model: nn.Module, x: Tensor, likelihood: str, k: int, *, select: Select | None = None
) -> Tensor:
    """The indices of the ``k`` inputs of largest Λ_i = tr ∂²ℓ/∂f² (FROMP's memorable points:
    p(1 − p) for ``bce_with_logits``, Σ_c p_c(1 − p_c) for ``cross_entropy``; every point ties
    for ``gaussian``, whose Λ is constant: the first k), most curved first; ``select`` picks
    the task's outputs (a head) from the model's output.

    Example:
        >>> import torch
        >>> from blr.continual import memorable_points
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(1.0)
        >>> memorable_points(model, torch.tensor([[3.0], [0.1], [-1.0]]), "bce_with_logits", 2)
        tensor([1, 2])
    """
    _check_likelihood(likelihood)
    _check_select(select)
    if int(k) != k or not 0 < k <= len(x):
        raise ValueError(f"k must be an integer in [1, {len(x)}], got {k}")
    with torch.no_grad():
        if likelihood == "gaussian":
            return torch.arange(int(k))
        p = _predictions(model, x, likelihood, select).reshape(len(x), -1)
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

    With several outputs per example the kernel is either the full (M·C)×(M·C) matrix or, as
    FROMP's implementation does, one M×M block K_c = J_cΣJ_cᵀ + εI per output c (the
    correlations between outputs dropped): ``kernel="per_output"``. The softmax probabilities
    of ``cross_entropy`` sum to one, so their full kernel is singular (ΣJ_c = 0): ``"auto"``
    takes the blocks there and the full kernel otherwise.

    Args:
        model: the model, holding the old posterior's mean when the regularizer is built.
        memory: the memorable inputs (:func:`memorable_points`), possibly empty.
        posterior: the old posterior, a diagonal or full Gaussian over the model's parameters.
        likelihood: ``"bce_with_logits"``, ``"cross_entropy"`` or ``"gaussian"``.
        tau: τ ≥ 0, the regularizer's weight.
        jitter: ε ≥ 0.
        select: the task's outputs from the model's output (a head of a multi-head model;
            module docstring); default the whole output.
        kernel: ``"full"``, ``"per_output"`` or ``"auto"`` (above).

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
        *,
        select: Select | None = None,
        kernel: str = "auto",
    ):
        _check_likelihood(likelihood)
        _check_select(select)
        if kernel not in ("auto", "full", "per_output"):
            raise ValueError(f"kernel must be 'auto', 'full' or 'per_output', got {kernel!r}")
        if kernel == "auto":
            kernel = "per_output" if likelihood == "cross_entropy" else "full"
        self.kernel = kernel
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
        self.tau, self.select = float(tau), select
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
            if select is not None:
                out = select(out)
            if likelihood == "bce_with_logits":
                out = out.reshape(len(memory), -1)
            return _PREDICT[likelihood](out).reshape(-1)

        theta_old = torch.cat([values[n].reshape(-1) for n in names])
        with torch.no_grad():
            self.f_old = predictions(theta_old).detach()
        jac = torch.func.jacrev(predictions)(theta_old).detach()  # (M·C, P)
        cov = 1.0 / prec if prec.dim() == 1 else torch.linalg.inv(prec)
        m = memory.shape[0]
        # blocks: (1, M·C, P) for the full kernel, (C, M, P) per output
        blocks = (
            jac[None] if kernel == "full" else jac.reshape(m, -1, jac.shape[-1]).transpose(0, 1)
        )
        k = blocks * cov @ blocks.mT if prec.dim() == 1 else blocks @ cov @ blocks.mT
        k = k + float(jitter) * torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
        self.kernel_chol = torch.linalg.cholesky(0.5 * (k + k.mT))

    def __call__(self) -> Tensor:
        """The regularizer at the model's current parameters (differentiable)."""
        if self.empty:
            return torch.zeros((), dtype=next(self.model.parameters()).dtype)
        r = _predictions(self.model, self.memory, self.likelihood, self.select) - self.f_old
        # (blocks, rows): one row vector for the full kernel, (C, M) per output
        r = r[None] if self.kernel == "full" else r.reshape(self.memory.shape[0], -1).T
        sol = torch.cholesky_solve(r.unsqueeze(-1), self.kernel_chol).squeeze(-1)
        return 0.5 * self.tau * (r * sol).sum()


def diag_laplace(
    model: nn.Module,
    x: Tensor,
    likelihood: str,
    prior_precision: float | Tensor,
    *,
    select: Select | None = None,
    batch_size: int = 1024,
) -> ParameterPosterior:
    r"""The diagonal Laplace posterior N(θ*, P⁻¹) of a trained model (Khan & Rue 2023, Table 1
    row 12, with the GGN in place of the Hessian):

    .. math::
        P = \delta + \operatorname{diag}\sum_i J_i^\top \Lambda_i J_i ,

    θ* the model's current parameters, J_i the Jacobian of the task's outputs at x_i and Λ_i the
    likelihood's Hessian in them (:mod:`blr.curvature`; no labels needed). One forward pass per
    batch with :class:`blr.curvature.PerExample` (``mode="ggn"``), never a per-example Jacobian.
    The data part is the diagonal Fisher information of online EWC.

    Args:
        model: the trained model (its parameters are θ*).
        x: the task's inputs (examples along dimension 0).
        likelihood: ``"bce_with_logits"``, ``"cross_entropy"`` or ``"gaussian"`` (σ² = 1).
        prior_precision: δ ≥ 0, a scalar or a vector over the flattened parameters (P must be
            positive).
        select: the task's outputs from the model's output (a head; module docstring).
        batch_size: examples per pass.

    Returns:
        A diagonal-Gaussian :class:`blr.ParameterPosterior` bound to ``model``.

    Example:
        >>> import torch
        >>> from blr.continual import diag_laplace
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(0.0)
        >>> q = diag_laplace(model, torch.tensor([[1.0], [2.0]]), "bce_with_logits", 1.0)
        >>> q.family.to_moments(q.nat)[1]   # 1 + ¼·(1² + 2²)
        tensor([2.2500])
    """
    from blr.curvature import PerExample

    _check_likelihood(likelihood)
    _check_select(select)
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] == 0:
        raise ValueError("x must be a tensor of at least one example (dimension 0)")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    theta = _flat(model).detach()
    delta = torch.as_tensor(prior_precision, dtype=theta.dtype, device=theta.device)
    if delta.dim() > 1 or (delta.dim() == 1 and delta.shape != theta.shape):
        raise ValueError(
            f"prior_precision must be a scalar or a vector of the {theta.numel()} parameters, "
            f"got shape {tuple(delta.shape)}"
        )
    if not bool((delta >= 0).all()):
        raise ValueError("prior_precision must be ≥ 0")
    params = list(model.parameters())
    ggn = torch.zeros_like(theta)
    loss = "gaussian" if likelihood == "gaussian" else likelihood
    with PerExample(model, mode="ggn", loss=loss, output_fn=select) as pe:
        for xb in x.split(int(batch_size)):
            model(xb)
            h = pe.squared_grads()
            ggn += torch.cat([h[p].reshape(-1) for p in params])
            pe.reset()
    precision = ggn + delta
    if not bool((precision > 0).all()):
        raise ValueError(
            "the Laplace precision δ + diag GGN is not positive everywhere: give a positive "
            "prior_precision (some parameters do not affect the task's outputs)"
        )
    fam = DiagGaussian()
    return ParameterPosterior(fam, fam.from_moments(theta.clone(), precision), model)
