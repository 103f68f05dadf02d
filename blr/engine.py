r"""The generic rule, :func:`step`: the executable spec every fast path is tested against.

.. math::
    \lambda \leftarrow \lambda - \rho\,\big(\nabla_\mu\mathbb{E}_q[\ell] + \nabla_\mu(-H(q))\big)
    \qquad\text{or, with a conjugate prior } \lambda_0,\qquad
    \lambda \leftarrow (1-\rho)\lambda + \rho\,(\lambda_0 - \nabla_\mu\mathbb{E}_q[\ell]).

Slow, obvious, any family: the estimator supplies ∇_μE_q[ℓ] (the only estimated term), the family
supplies ∇_μ(−H) = λ + ∇_μE_q[log h] (0 for the fixed-covariance Gaussian, so the rule is GD
there, not a shrinking GD).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from blr.estimators import Estimate, Estimator
from expfam import ExpFamily
from expfam.tree import tmap


def check_rho(rho: float, name: str = "rho") -> float:
    """A positive, finite step size."""
    value = float(rho)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {rho}")
    return value


def check_estimate(family: ExpFamily, nat: tuple, est: Estimate) -> None:
    """Raise ValueError if the estimate is not finite or not shaped like λ."""
    if not isinstance(est, Estimate):
        raise TypeError(f"the estimator must return a blr.Estimate, got {type(est).__name__}")
    if not isinstance(est.grad, family.nat_type):
        raise TypeError(
            f"the estimate's grad must be a {family.nat_type.__name__}, got "
            f"{type(est.grad).__name__}"
        )
    for field, g, x in zip(family.nat_type._fields, est.grad, nat):
        if g.shape != x.shape:
            raise ValueError(
                f"the estimate of ∇_μE_q[ℓ] has {field} of shape {tuple(g.shape)}, expected "
                f"{tuple(x.shape)}"
            )
        if not torch.isfinite(g).all():
            raise ValueError(
                f"the loss or its gradient is NaN/Inf at the current posterior (∇_μE_q[ℓ].{field} "
                "is not finite); the state was not changed"
            )
    if not torch.isfinite(est.value).all():
        raise ValueError(
            "the loss returned NaN/Inf at the current posterior; the state was not changed"
        )


def natural_gradient(
    family: ExpFamily, nat: tuple, grad_mean: tuple, prior: tuple | None = None
) -> tuple:
    """∇_μ(E_q[ℓ̄] − H(q)) from ∇_μE_q[ℓ] (``grad_mean``): adds ∇_μ(−H), or with a conjugate
    prior λ₀ (whose base-measure terms cancel) λ − λ₀."""
    if prior is None:
        return tmap(torch.add, grad_mean, family.neg_entropy_grad(nat, validate=False))
    return tmap(lambda g, lam, lam0: g + lam - lam0, grad_mean, nat, prior)


def apply_step(family: ExpFamily, nat: tuple, direction: tuple, rho: float) -> tuple:
    """λ − ρ·direction, checked against the family's domain (the error names the parameter)."""
    new = tmap(lambda lam, d: lam - rho * d, nat, direction)
    try:
        family.validate_nat(new, "nat")
    except ValueError as err:
        raise ValueError(
            f"the BLR step with rho = {rho:g} left the domain of {family.name}: {err}. Lower rho, "
            "use a better Hessian estimate, or the improved BLR (blr.gaussian_step(improved=True))"
        ) from err
    return new


def step_with_estimate(
    family: ExpFamily,
    nat: tuple,
    loss: Callable,
    rho: float,
    *,
    estimator: Estimator,
    prior: tuple | None = None,
    generator: torch.Generator | None = None,
) -> tuple[tuple, Estimate]:
    """:func:`step`, also returning the estimator's :class:`~blr.Estimate`.

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.DiagGaussian()
        >>> nat = fam.from_moments(torch.zeros(2, dtype=torch.float64),
        ...                        torch.ones(2, dtype=torch.float64))
        >>> loss = lambda th: 0.5 * ((th - 1.0) ** 2).sum(-1)   # E_q[ℓ] = ½‖m − 1‖² + ½Σ1/s
        >>> nat, est = blr.step_with_estimate(fam, nat, loss, 1.0, estimator=blr.Delta())
        >>> fam.location(nat), est.value
        (tensor([1., 1.], dtype=torch.float64), tensor(1., dtype=torch.float64))
    """
    family.validate_nat(nat, "nat")
    rho = check_rho(rho)
    if prior is not None:
        family.validate_nat(prior, "prior")
    if not isinstance(estimator, Estimator):
        raise TypeError(f"estimator must be a blr.Estimator, got {type(estimator).__name__}")
    est = estimator(family, nat, loss, generator=generator)
    check_estimate(family, nat, est)
    direction = natural_gradient(family, nat, est.grad, prior)
    return apply_step(family, nat, direction, rho), est


def step(
    family: ExpFamily,
    nat: tuple,
    loss: Callable,
    rho: float,
    *,
    estimator: Estimator,
    prior: tuple | None = None,
    generator: torch.Generator | None = None,
) -> tuple:
    r"""One step of the Bayesian learning rule, for any family:

    .. math::
        \lambda \leftarrow \lambda - \rho\big(\widehat{\nabla_\mu\mathbb{E}_q[\ell]}
        + \nabla_\mu(-H(q))\big),\qquad\text{with a conjugate prior: }
        \lambda \leftarrow (1-\rho)\lambda + \rho\big(\lambda_0 - \widehat{\nabla_\mu
        \mathbb{E}_q[\ell]}\big).

    Args:
        family: the posterior family (an :class:`expfam.ExpFamily`).
        nat: the current λ (a ``family.nat_type``).
        loss: what the estimator differentiates: a vectorized θ ↦ ℓ(θ) (draws in front), a
            :class:`~blr.ModelLoss`, or μ ↦ E_q[ℓ] for :class:`~blr.Exact`. Without ``prior``
            it is the whole ℓ̄ = Σℓ_i + R; with ``prior`` the data part only.
        rho: ρ > 0.
        estimator: an :class:`~blr.Estimator` of ∇_μE_q[ℓ].
        prior: natural parameter λ₀ of a prior in the same family (conjugate split:
            the prior's base-measure terms cancel), or None.
        generator: random numbers for Monte Carlo estimators.

    Returns:
        The new λ. Raises ValueError if the loss is not finite or the step leaves the family's
        domain (e.g. an indefinite precision), TypeError if ``nat`` is not of the family.

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.FullGaussian()   # Newton's method is the BLR with ρ = 1, delta method
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> loss = lambda th: 0.5 * ((th @ A) * th).sum(-1) - th @ b
        >>> nat = fam.from_moments(torch.zeros(2, dtype=torch.float64),
        ...                        torch.eye(2, dtype=torch.float64))
        >>> nat = blr.step(fam, nat, loss, 1.0, estimator=blr.Delta())
        >>> fam.location(nat)   # A⁻¹b in one step
        tensor([ 0.6000, -0.8000], dtype=torch.float64)
    """
    return step_with_estimate(
        family, nat, loss, rho, estimator=estimator, prior=prior, generator=generator
    )[0]


def objective(family: ExpFamily, nat: tuple, expected_loss: Tensor, prior: tuple | None) -> Tensor:
    """E_q[ℓ̄] − H(q): E_q[ℓ] − H(q) without a prior, E_q[ℓ] + KL(q ‖ p₀) with a conjugate prior
    (E_q[−log p₀] − H(q) = KL(q‖p₀)).

    ``expected_loss`` has the family's batch shape, or a prefix of it (a loss that couples the
    trailing batch elements, e.g. one value for D binary weights held as D Bernoullis, or a
    scalar): H and KL are summed over the batch dimensions the loss does not keep.

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.DiagGaussian()
        >>> nat = fam.from_moments(torch.zeros(1), torch.ones(1))
        >>> blr.objective(fam, nat, torch.tensor(0.0), prior=nat)   # KL(q ‖ q) = 0
        tensor(0.)
        >>> bern = expfam.Bernoulli("pm1")                           # 3 weights, one loss value
        >>> blr.objective(bern, expfam.BernoulliNat(torch.zeros(3)), torch.tensor(1.0), None)
        tensor(-1.0794)
    """
    if prior is None:
        term = -family.entropy(nat, validate=False)
    else:
        term = family.kl(nat, prior, validate=False)
    if term.ndim > expected_loss.ndim:  # the loss couples the trailing batch elements
        term = term.sum(tuple(range(expected_loss.ndim, term.ndim)))
    return expected_loss + term
