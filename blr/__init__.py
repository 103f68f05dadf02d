"""blr: the Bayesian learning rule, λ ← λ − ρ ∇_μ(E_q[ℓ] − H(q)), over the families of
:mod:`expfam`.

The top level holds the engine and what it is configured with:

- :func:`step` — the generic rule for any family (the executable spec), :func:`step_with_estimate`
  (the same, also returning the estimate it used) and :func:`objective` (E_q[ℓ] − H(q), or
  E_q[ℓ] + KL(q ‖ p₀) with a prior); :class:`BLR` — the same as a stateful optimizer with
  schedules, momentum and a running objective;
- the estimators of ∇_μE_q[ℓ]: :class:`Exact`, :class:`Reparam`, :class:`Delta`,
  :class:`BonnetPrice`, :class:`ScoreFunction`, :class:`GumbelSoftmax` (+ :class:`ModelLoss`
  for per-example losses), all :class:`Estimator` objects returning an :class:`Estimate`;
- the Gaussian (m, S)-form with its options: :func:`gaussian_step`, :class:`GaussianOptions`;
- :class:`ParameterPosterior` — a posterior over a model's parameters as an object (family, λ,
  layout): what every optimizer's ``posterior()`` returns and every optimizer accepts as
  ``prior=``;
- ``__version__``, the package version.

Everything else is a module of its own, imported where it is used (``import blr.predict`` or
``from blr.predict import predict_classification``; after ``import blr`` each is also reachable
as an attribute, loaded on first use):

- :mod:`blr.optim` — torch.optim optimizers (the generic BLROptimizer for any family; IVON, VON,
  VOGN, OGN, Vadam, BayesBiNN, Bayes-by-backprop);
- :mod:`blr.functional` — a network's loss as a θ-loss for the engine (``ModuleLoss``);
- :mod:`blr.glm` — GLMs: :class:`~blr.glm.GLMQuadrature` (the exact-in-expectation estimator
  that carries its data) and Laplace's method :func:`~blr.glm.laplace`;
- :mod:`blr.nn_laplace` — Laplace for networks (:class:`~blr.nn_laplace.NNLaplace`);
- :mod:`blr.influence` — the memory-perturbation equation (sensitivities, removals);
- :mod:`blr.predict` — Bayesian model averaging over posterior draws;
- :mod:`blr.metrics` — accuracy, NLL, ECE, Brier, reliability diagrams, RMSE, coverage;
- :mod:`blr.mixture` — the mixture-of-Gaussians BLR (Lin, Khan & Schmidt, ICML 2019);
- :mod:`blr.curvature` — likelihoods, output Hessians, per-example Jacobians and gradients,
  GGN and Fisher matrices;
- :mod:`blr.kernels` — fused fast paths, each tested against :func:`step`;
- :mod:`blr.schedules` (ρ_t, bias correction) and :mod:`blr.quadrature` (rules for N(0, I)).

Example: the BLR fits q = N(m, 1/s) to ℓ(θ) = ½(θ − 2)² (delta method, ρ = 1: one Newton step):

>>> import torch, expfam, blr
>>> fam = expfam.DiagGaussian()
>>> nat = fam.from_moments(torch.zeros(1), torch.ones(1))
>>> nat = blr.step(fam, nat, lambda th: 0.5 * ((th - 2.0) ** 2).sum(-1), 1.0,
...                estimator=blr.Delta())
>>> fam.to_moments(nat)
(tensor([2.]), tensor([1.]))
>>> blr.__version__ == expfam.__version__
True
>>> from blr.predict import predict_classification   # a posterior use: its own module
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from blr.posterior import ParameterPosterior
from blr.rule import BLR
from expfam import __version__

if TYPE_CHECKING:  # for type checkers and editors; at run time they load on first use
    from blr import (  # noqa: F401 (the lazy submodules, named for type checkers)
        curvature,
        functional,
        glm,
        influence,
        kernels,
        metrics,
        mixture,
        nn_laplace,
        optim,
        predict,
        quadrature,
        schedules,
    )

__all__ = [
    "BLR",
    "BonnetPrice",
    "Delta",
    "Estimate",
    "Estimator",
    "Exact",
    "GaussianOptions",
    "GumbelSoftmax",
    "ModelLoss",
    "ParameterPosterior",
    "Reparam",
    "ScoreFunction",
    "__version__",
    "gaussian_step",
    "objective",
    "step",
    "step_with_estimate",
]

# the modules reachable as attributes of ``blr`` (loaded on first use); blr.apps is not one of
# them: the applications sit on top of the library and are imported by name
_SUBMODULES = (
    "curvature",
    "functional",
    "glm",
    "influence",
    "kernels",
    "metrics",
    "mixture",
    "nn_laplace",
    "optim",
    "predict",
    "quadrature",
    "schedules",
)

# names the top level exported up to version 0.1.0, and their homes now
_MOVED = {
    "GLMQuadrature": "blr.glm",
    "laplace": "blr.glm",
    "NNLaplace": "blr.nn_laplace",
    "FullGaussianState": "blr.kernels",
    "full_gaussian_step": "blr.kernels",
    "MixtureExpectations": "blr.mixture",
    "mixture_expectations": "blr.mixture",
    "mixture_objective": "blr.mixture",
    "mixture_step": "blr.mixture",
    "predict_classification": "blr.predict",
    "predict_regression": "blr.predict",
    **dict.fromkeys(
        [
            "Removal",
            "Sensitivity",
            "glm_removal",
            "glm_sensitivity",
            "module_removal",
            "module_sensitivity",
            "mpe_removal",
            "mpe_sensitivity",
            "optimizer_posterior",
        ],
        "blr.influence",
    ),
}


def __getattr__(name: str) -> Any:
    """The submodules of :data:`_SUBMODULES` on first use; a name that moved to a submodule
    raises an AttributeError that says where it lives now."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _MOVED:
        home = _MOVED[name]
        also = "; Laplace for networks is blr.nn_laplace.NNLaplace" if name == "laplace" else ""
        raise AttributeError(
            f"blr.{name} moved to {home}: use `from {home} import {name}`{also} (blr's top "
            "level holds the engine, BLR, the estimators and the Gaussian helpers only)"
        )
    raise AttributeError(f"module 'blr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES})
