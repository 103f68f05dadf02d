"""blr: the Bayesian learning rule, λ ← λ − ρ ∇_μ(E_q[ℓ] − H(q)), over the families of
:mod:`expfam`.

- :func:`step` — the generic rule for any family (the executable spec), :class:`BLR` — the same as a
  stateful optimizer with schedules, momentum and a running objective;
- estimators of ∇_μE_q[ℓ]: :class:`Exact`, :class:`Reparam`, :class:`Delta`,
  :class:`BonnetPrice`, :class:`ScoreFunction`, :class:`GumbelSoftmax` (+ :class:`ModelLoss`);
- :class:`GLMQuadrature` (exact-in-expectation GLM losses) and :func:`laplace`;
- the Gaussian (m, S)-form with its options: :func:`gaussian_step`, :class:`GaussianOptions`;
- mixtures of Gaussians (Lin, Khan & Schmidt, ICML 2019): :func:`mixture_step`,
  :func:`mixture_objective`;
- :mod:`blr.schedules` (constant, bias correction as ρ_t);
- predictions and their quality: :func:`predict_classification`, :func:`predict_regression`
  (Bayesian model averaging over any optimizer's or BLR posterior's draws,
  :class:`ParameterPosterior`) and :mod:`blr.metrics` (accuracy, NLL, ECE, Brier, reliability
  diagrams; RMSE, Gaussian log-likelihood, interval coverage);
- Laplace for networks (:class:`NNLaplace`: full, diagonal and last-layer GGN posteriors, GLM
  predictive, marginal likelihood) and the memory-perturbation equation (:mod:`blr.influence`:
  per-example sensitivities and "what if these examples were removed" without retraining);
- :mod:`blr.curvature`: the likelihoods (one vocabulary of names), output Hessians and their
  factors, per-example Jacobians and gradients, GGN and Fisher matrices, and the per-example
  curvature hooks of VOGN (:class:`~blr.curvature.PerExample`);
- :mod:`blr.kernels`: fused fast paths, each tested against :func:`step` (batched full-covariance
  Gaussians: :func:`full_gaussian_step`).

``__version__`` is the package version. Example: the BLR fits q = N(m, 1/s) to ℓ(θ) = ½(θ − 2)²
(delta method, ρ = 1: one Newton step):

>>> import torch, expfam, blr
>>> fam = expfam.DiagGaussian()
>>> nat = fam.from_moments(torch.zeros(1), torch.ones(1))
>>> nat = blr.step(fam, nat, lambda th: 0.5 * ((th - 2.0) ** 2).sum(-1), 1.0,
...                estimator=blr.Delta())
>>> fam.to_moments(nat)
(tensor([2.]), tensor([1.]))
>>> blr.__version__ == expfam.__version__
True
"""

from __future__ import annotations

from blr import curvature, influence, kernels, metrics, quadrature, schedules
from blr.engine import objective, step, step_with_estimate
from blr.estimators import (
    BonnetPrice,
    Delta,
    Estimate,
    Estimator,
    Exact,
    GumbelSoftmax,
    ModelLoss,
    Reparam,
    ScoreFunction,
)
from blr.gaussian import GaussianOptions, gaussian_step
from blr.glm import GLMQuadrature, laplace
from blr.influence import (
    Removal,
    Sensitivity,
    glm_removal,
    glm_sensitivity,
    module_removal,
    module_sensitivity,
    mpe_removal,
    mpe_sensitivity,
    optimizer_posterior,
)
from blr.kernels import FullGaussianState, full_gaussian_step
from blr.mixture import (
    MixtureExpectations,
    mixture_expectations,
    mixture_objective,
    mixture_step,
)
from blr.nn_laplace import NNLaplace
from blr.predict import (
    ParameterPosterior,
    predict_classification,
    predict_regression,
)
from blr.rule import BLR
from expfam import __version__

__all__ = [
    "BLR",
    "BonnetPrice",
    "Delta",
    "Estimate",
    "Estimator",
    "Exact",
    "FullGaussianState",
    "GLMQuadrature",
    "GaussianOptions",
    "GumbelSoftmax",
    "MixtureExpectations",
    "ModelLoss",
    "NNLaplace",
    "ParameterPosterior",
    "Removal",
    "Reparam",
    "ScoreFunction",
    "Sensitivity",
    "__version__",
    "curvature",
    "full_gaussian_step",
    "gaussian_step",
    "glm_removal",
    "glm_sensitivity",
    "influence",
    "kernels",
    "laplace",
    "metrics",
    "mixture_expectations",
    "mixture_objective",
    "mixture_step",
    "module_removal",
    "module_sensitivity",
    "mpe_removal",
    "mpe_sensitivity",
    "objective",
    "optimizer_posterior",
    "predict_classification",
    "predict_regression",
    "quadrature",
    "schedules",
    "step",
    "step_with_estimate",
]
