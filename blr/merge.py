r"""Model merging with posteriors: uncertainty-based gradient matching (Daheim, Möllenhoff, Ponti,
Gurevych & Khan, "Model merging by uncertainty-based gradient matching", ICLR 2024) and the
merges it contains as special cases.

A base model with posterior N(θ₀, H₀⁻¹) (the pretrained weights and the precision of the prior
every fine-tuning started from) is fine-tuned on T tasks, each giving a Gaussian posterior
N(θ_t, H̃_t⁻¹) with H̃_t = H₀ + H_t (H_t the task's data part). Gradient matching asks the merged
θ̄ to make the gradient of the prior plus all task losses vanish, with each task loss replaced by
its quadratic model around θ_t; the solution is

.. math::
    \bar\theta = \theta_0 + \bar H^{-1}\sum_t \alpha_t \tilde H_t (\theta_t - \theta_0),\qquad
    \bar H = H_0 + \sum_t \alpha_t H_t ,

exact (the joint posterior's mean) when every task loss is quadratic, as for Bayesian linear
regression with a Gaussian prior (a test checks it to 1e-10). The familiar merges are this
formula with other curvatures: task arithmetic (H₀ = 0, H̃_t = H_t = I: θ₀ + Σα_t(θ_t − θ₀) with
the scale folded into α), simple averaging (α_t = 1/T with H₀ = 0 and H_t = I up to scale: the
mean of the θ_t) and Fisher averaging (H₀ = 0, H̃_t = H_t = F_t: Σ F_tθ_t / Σ F_t).

The posteriors come from any optimizer's ``posterior()`` (IVON, VON, VOGN, ...: diagonal
Gaussians), :class:`blr.nn_laplace.NNLaplace` or the squared gradients of a Fisher estimate, all
as :class:`blr.ParameterPosterior` objects of the same model. Diagonal and full Gaussians.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from blr.posterior import ParameterPosterior
from expfam import DiagGaussian, FullGaussian

__all__ = ["average", "fisher_average", "gradient_matching", "task_arithmetic"]


def _moments(q: ParameterPosterior, name: str) -> tuple[Tensor, Tensor]:
    """(mean, precision) of a Gaussian posterior (the precision a vector or a matrix)."""
    if not isinstance(q, ParameterPosterior):
        raise TypeError(f"{name} must be a blr.ParameterPosterior, got {type(q).__name__}")
    if not isinstance(q.family, (DiagGaussian, FullGaussian)):
        raise ValueError(
            f"{name} must be a diagonal or full Gaussian posterior, got {q.family.name}"
        )
    m, prec = q.family.to_moments(q.nat)
    return m, prec


def _tasks(base: ParameterPosterior | None, tasks: Sequence[ParameterPosterior], alphas):
    if len(tasks) == 0:
        raise ValueError("tasks must hold at least one fine-tuned posterior")
    for i, q in enumerate(tasks):
        if base is not None:
            base.check_compatible(q, f"tasks[{i}]")
        elif i:
            tasks[0].check_compatible(q, f"tasks[{i}]")
    if alphas is None:
        alphas = [1.0] * len(tasks)
    alphas = [float(a) for a in alphas]
    if len(alphas) != len(tasks):
        raise ValueError(f"alphas must give one weight per task ({len(tasks)}), got {len(alphas)}")
    if any(not a >= 0 for a in alphas):
        raise ValueError(f"alphas must be ≥ 0, got {alphas}")
    return alphas


def _means(base, tasks) -> tuple[Tensor | None, list[Tensor]]:
    """The parameter vectors of the base (if any) and the tasks, checked to be of one model:
    posteriors by :meth:`blr.ParameterPosterior.check_compatible`, flat vectors by shape."""
    if len(tasks) == 0:
        raise ValueError("tasks must hold at least one fine-tuned model")
    models = ([] if base is None else [("base", base)]) + [
        (f"tasks[{i}]", t) for i, t in enumerate(tasks)
    ]
    first_name, first = models[0]
    out = []
    for name, t in models:
        if isinstance(t, ParameterPosterior):
            if isinstance(first, ParameterPosterior) and t is not first:
                first.check_compatible(t, name)
            v = t.mean()
        elif isinstance(t, Tensor):
            v = t
        else:
            raise TypeError(
                f"{name} must be a blr.ParameterPosterior or a flat parameter tensor, got "
                f"{type(t).__name__}"
            )
        if v.dim() != 1:
            raise ValueError(f"{name} must be a flat (1-D) parameter vector, got {tuple(v.shape)}")
        if out and v.shape != out[0].shape:
            raise ValueError(
                f"{name} has {v.numel()} parameters, {first_name} {out[0].numel()}: the models "
                "of a merge must have one architecture"
            )
        out.append(v)
    return (out[0], out[1:]) if base is not None else (None, out)


def _apply(prec: Tensor, v: Tensor) -> Tensor:
    return prec * v if prec.dim() == 1 else prec @ v


def gradient_matching(
    base: ParameterPosterior,
    tasks: Sequence[ParameterPosterior],
    alphas: Sequence[float] | None = None,
) -> ParameterPosterior:
    r"""The merged posterior N(θ̄, H̄⁻¹) of uncertainty-based gradient matching (module
    docstring): θ̄ = θ₀ + H̄⁻¹ Σ_t α_t H̃_t (θ_t − θ₀), H̄ = H₀ + Σ_t α_t (H̃_t − H₀).

    Args:
        base: the pretrained model's posterior N(θ₀, H₀⁻¹), whose precision H₀ is the prior's
            that every fine-tuning used.
        tasks: the fine-tuned posteriors N(θ_t, H̃_t⁻¹) of the same model and family.
        alphas: α_t ≥ 0 per task (default 1: the joint posterior for quadratic losses).

    Returns:
        A :class:`blr.ParameterPosterior` of the base's family over the same parameters
        (``mean()`` is θ̄; bound to the base's parameters if it is).

    Example:
        >>> import torch, expfam
        >>> from blr import ParameterPosterior
        >>> from blr.merge import gradient_matching
        >>> fam, model = expfam.DiagGaussian(), torch.nn.Linear(1, 1, bias=False)
        >>> q = lambda m, s: ParameterPosterior(fam, fam.from_moments(torch.tensor([m]),
        ...                                                           torch.tensor([s])), model)
        >>> merged = gradient_matching(q(0.0, 1.0), [q(1.0, 3.0), q(-1.0, 2.0)])
        >>> merged.mean()   # (3·1 + 2·(−1)) / (1 + 2 + 1)
        tensor([0.2500])
    """
    m0, h0 = _moments(base, "base")
    alphas = _tasks(base, tasks, alphas)
    step = torch.zeros_like(m0)
    h_bar = h0.clone()
    for i, (q, a) in enumerate(zip(tasks, alphas)):
        m, prec = _moments(q, f"tasks[{i}]")
        step = step + a * _apply(prec, m - m0)
        h_bar = h_bar + a * (prec - h0)
    if h_bar.dim() == 1:
        if not bool((h_bar > 0).all()):
            raise ValueError("the merged precision H₀ + Σ α_t H_t is not positive")
        mean = m0 + step / h_bar
    else:
        mean = m0 + torch.linalg.solve(h_bar, step)
    fam = base.family
    return ParameterPosterior(fam, fam.from_moments(mean, h_bar), base.params,
                              layout=base.layout)  # fmt: skip


def task_arithmetic(
    base: ParameterPosterior | Tensor, tasks: Sequence[ParameterPosterior | Tensor], alpha: float
) -> Tensor:
    """θ₀ + α Σ_t (θ_t − θ₀) (Ilharco et al. 2023): gradient matching with H₀ = 0 and identity
    curvatures, the scale in α. Posteriors or flat parameter vectors.

    Example:
        >>> import torch
        >>> from blr.merge import task_arithmetic
        >>> task_arithmetic(torch.zeros(2), [torch.ones(2), torch.tensor([1.0, -1.0])], 0.5)
        tensor([1., 0.])
    """
    theta0, thetas = _means(base, tasks)
    return theta0 + alpha * sum(t - theta0 for t in thetas)


def average(tasks: Sequence[ParameterPosterior | Tensor]) -> Tensor:
    """(1/T) Σ_t θ_t: gradient matching with H₀ = 0, equal identity curvatures and α_t = 1/T.

    Example:
        >>> import torch
        >>> from blr.merge import average
        >>> average([torch.zeros(2), torch.tensor([2.0, 4.0])])
        tensor([1., 2.])
    """
    _, means = _means(None, tasks)
    return sum(means) / len(means)


def fisher_average(tasks: Sequence[ParameterPosterior]) -> Tensor:
    """Σ_t F_t θ_t / Σ_t F_t (Matena & Raffel 2022) with F_t each posterior's precision:
    gradient matching with H₀ = 0.

    Example:
        >>> import torch, expfam
        >>> from blr import ParameterPosterior
        >>> from blr.merge import fisher_average
        >>> fam, model = expfam.DiagGaussian(), torch.nn.Linear(1, 1, bias=False)
        >>> q = lambda m, s: ParameterPosterior(fam, fam.from_moments(torch.tensor([m]),
        ...                                                           torch.tensor([s])), model)
        >>> fisher_average([q(1.0, 3.0), q(-1.0, 1.0)])
        tensor([0.5000])
    """
    _tasks(None, tasks, None)
    num, den = None, None
    for i, q in enumerate(tasks):
        m, prec = _moments(q, f"tasks[{i}]")
        num = _apply(prec, m) if num is None else num + _apply(prec, m)
        den = prec if den is None else den + prec
    return num / den if den.dim() == 1 else torch.linalg.solve(den, num)
