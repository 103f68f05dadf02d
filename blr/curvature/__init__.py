r"""Curvature: one home for the likelihoods, their output Hessians Λ and factors, per-example
Jacobians and gradients, and GGN / Fisher matrices and diagonals — what the Gauss–Newton rows of
the BLR need (OGN, VOGN, Laplace: Khan & Rue 2023, Table 1 rows 8, 9 and 12) and what
:class:`~blr.optim.VOGN`, :class:`~blr.nn_laplace.NNLaplace`, :mod:`blr.influence` and
:class:`~blr.glm.GLMQuadrature` use.

For a per-example loss ℓ_i(θ) = ℓ(y_i, f_i(θ)) with outputs f_i, J_i = ∂f_i/∂θ,
e_i = ∂ℓ_i/∂f_i and Λ_i = ∂²ℓ_i/∂f_i²: ∇ℓ_i = J_iᵀe_i, and the generalized Gauss–Newton
matrix Σ_i J_iᵀΛ_iJ_i is ∇²Σ_iℓ_i without the second derivatives of f (positive
semi-definite for the likelihoods here; docs/concepts.md, the Hessian choices).

- :mod:`blr.curvature.likelihoods`: one object per likelihood (:class:`Gaussian`,
  :class:`SquaredError`, :class:`Bernoulli`, :class:`Categorical`, :class:`Poisson`,
  :class:`ElementwiseLoss`) with ℓ, e, Λ, its factor and sampled output gradients;
- :mod:`blr.curvature.jacobians`: :func:`jacobians`, :func:`per_example_grads` (``torch.func``),
  :func:`ggn` and :func:`fisher` (full or diagonal);
- :mod:`blr.curvature.per_example`: :class:`PerExample`, per-example squared gradients, GGN and
  Monte Carlo Fisher diagonals from one forward/backward of a minibatch, by hooks on the layers
  (:mod:`blr.curvature.layers`).

**The names** (:data:`NAMES`, the one vocabulary): every string a user passes as a likelihood —
``likelihood=`` of NNLaplace, ``loss=`` of PerExample, VOGN/OGN and the module functions of
:mod:`blr.influence`, ``link=`` of GLMQuadrature, :func:`blr.glm.laplace` and the GLM functions of
:mod:`blr.influence` — is one of these, and every consumer accepts every name of the
likelihoods it supports:

===============  ======================================================  =========================
likelihood       names                                                   supported by
===============  ======================================================  =========================
``gaussian``     ``"gaussian"``, ``"regression"``                        all (σ² where it applies;
                                                                         GLMs: σ² = 1, ``scale``)
``mse``          ``"mse"`` (‖f − y‖², the Gaussian with σ² = ½ and no    all but NNLaplace
                 constant)
``bernoulli``    ``"bernoulli"``, ``"binary"``, ``"bce_with_logits"``,   all
                 ``"logistic"``
``categorical``  ``"categorical"``, ``"classification"``,                all but GLMQuadrature and
                 ``"cross_entropy"``, ``"multinomial"``                  glm.laplace (one output)
``poisson``      ``"poisson"`` (log link)                                all but NNLaplace
(callable)       an elementwise ℓ(y, f)                                  the GLMs (GLMQuadrature,
                                                                         glm.laplace, influence)
===============  ======================================================  =========================

>>> import torch
>>> from blr.curvature import NAMES, resolve
>>> NAMES["classification"], NAMES["cross_entropy"], NAMES["multinomial"]
('categorical', 'categorical', 'categorical')
>>> lik = resolve("bce_with_logits")
>>> f = torch.tensor([[0.0]])
>>> lik.hessian(f), lik.hessian_factors(f)[:, 0] ** 2     # Λ = σ(0)σ(−0) = VVᵀ
(tensor([[[0.2500]]]), tensor([[0.2500]]))
"""

from __future__ import annotations

from blr.curvature.jacobians import fisher, ggn, jacobians, per_example_grads
from blr.curvature.layers import BatchedLinear
from blr.curvature.likelihoods import (
    NAMES,
    Bernoulli,
    Categorical,
    ElementwiseLoss,
    Gaussian,
    Likelihood,
    Poisson,
    SquaredError,
    loss_hessian_factors,
    resolve,
    sampled_output_grads,
)
from blr.curvature.per_example import PerExample

__all__ = [
    "NAMES",
    "BatchedLinear",
    "Bernoulli",
    "Categorical",
    "ElementwiseLoss",
    "Gaussian",
    "Likelihood",
    "PerExample",
    "Poisson",
    "SquaredError",
    "fisher",
    "ggn",
    "jacobians",
    "loss_hessian_factors",
    "per_example_grads",
    "resolve",
    "sampled_output_grads",
]
