"""The stateful wrapper: "a posterior family + a loss (+ a prior)" becomes an optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from blr.engine import apply_step, check_estimate, check_rho, natural_gradient, objective
from blr.estimators import Estimate, Estimator
from blr.gaussian import GaussianOptions, gaussian_step
from blr.schedules import Schedule, as_schedule
from expfam import DiagGaussian, ExpFamily, FullGaussian
from expfam.tree import tmap


class BLR:
    r"""The Bayesian learning rule as an optimizer over a posterior q_λ:

    .. math:: \lambda_{t+1} = \lambda_t - \rho_t\,\nabla_\mu\big(\mathbb{E}_q[\bar\ell]
              - H(q)\big)\ [+\ \gamma(\lambda_t - \lambda_{t-1})].

    Each :meth:`step` asks the estimator for ∇_μE_q[ℓ] at the current λ, takes the step, and
    records an estimate of the objective L(q) = E_q[ℓ̄] − H(q) (E_q[ℓ] + KL(q‖p₀) with a prior)
    at the λ it started from. A step whose loss is NaN/Inf or that leaves the family's domain
    raises ValueError and leaves the state unchanged.

    Args:
        family: the posterior family.
        nat: the initial λ.
        loss: the loss the estimator differentiates (see :func:`blr.step`).
        estimator: an :class:`~blr.Estimator`.
        rho: ρ, a number or a schedule t ↦ ρ_t (t = 1, 2, ...; e.g.
            :func:`blr.schedules.bias_corrected`).
        prior: λ₀ of a conjugate prior in the same family, or None (prior inside the loss).
        momentum: γ ≥ 0, natural momentum (heavy ball in λ-space; Khan et al., ICML 2018).
        gaussian: :class:`~blr.GaussianOptions` to run the (m, S)-form update (separate mean
            rate, improved BLR, square-root scaling, damping); Full/Diag Gaussians only.
        generator: random numbers for Monte Carlo estimators.
        ema: decay of the running objective estimate :attr:`objective`.

    Example:
        >>> import torch, expfam, blr
        >>> fam = expfam.DiagGaussian()
        >>> loss = lambda th: 0.5 * ((th - 1.0) ** 2).sum(-1) * 4.0   # N(1, 1/4) target
        >>> opt = blr.BLR(fam, fam.from_moments(torch.zeros(2, dtype=torch.float64),
        ...                                     torch.ones(2, dtype=torch.float64)),
        ...               loss, estimator=blr.BonnetPrice(points="sigma"), rho=0.5)
        >>> for _ in range(60):
        ...     _ = opt.step()
        >>> [round(float(x), 6) for x in fam.to_moments(opt.posterior)[1]]
        [4.0, 4.0]
    """

    def __init__(
        self,
        family: ExpFamily,
        nat: tuple,
        loss: Callable,
        *,
        estimator: Estimator,
        rho: float | Schedule = 0.1,
        prior: tuple | None = None,
        momentum: float = 0.0,
        gaussian: GaussianOptions | None = None,
        generator: torch.Generator | None = None,
        ema: float = 0.9,
    ) -> None:
        family.validate_nat(nat, "nat")
        if prior is not None:
            family.validate_nat(prior, "prior")
        if not isinstance(estimator, Estimator):
            raise TypeError(f"estimator must be a blr.Estimator, got {type(estimator).__name__}")
        if gaussian is not None and not isinstance(family, (FullGaussian, DiagGaussian)):
            raise TypeError(
                f"gaussian options need a FullGaussian or DiagGaussian, got {family.name}"
            )
        if not float(momentum) >= 0:
            raise ValueError(f"momentum must be ≥ 0, got {momentum}")
        if not 0 <= float(ema) < 1:
            raise ValueError(f"ema must lie in [0, 1), got {ema}")
        self.family, self.loss, self.estimator = family, loss, estimator
        self.schedule = as_schedule(rho)
        self.prior, self.momentum, self.gaussian = prior, float(momentum), gaussian
        self.generator, self.ema = generator, float(ema)
        self._nat = tmap(lambda t: t.detach().clone(), nat)
        self._prev: tuple | None = None
        self.t = 0
        self.objective: Tensor | None = None
        self.last_objective: Tensor | None = None
        self.last_estimate: Estimate | None = None

    @property
    def posterior(self) -> tuple:
        """The current λ.

        Example:
            >>> import torch, expfam, blr
            >>> fam, z = expfam.DiagGaussian(), torch.zeros(2, dtype=torch.float64)
            >>> loss = lambda th: 2.0 * ((th - 1.0) ** 2).sum(-1)   # N(1, 1/4) target
            >>> opt = blr.BLR(fam, fam.from_moments(z, torch.ones_like(z)), loss,
            ...               estimator=blr.BonnetPrice(points="sigma"), rho=0.5)
            >>> _ = opt.step()               # precision (1 − ρ)·1 + ρ·4
            >>> type(opt.posterior).__name__, fam.to_moments(opt.posterior)[1].tolist()
            ('DiagNat', [2.5, 2.5])
        """
        return self._nat

    @property
    def mean(self) -> tuple:
        """The current μ = ∇A(λ).

        Example:
            >>> import torch, expfam, blr
            >>> fam, z = expfam.DiagGaussian(), torch.zeros(2, dtype=torch.float64)
            >>> loss = lambda th: 2.0 * ((th - 1.0) ** 2).sum(-1)   # N(1, 1/4) target
            >>> opt = blr.BLR(fam, fam.from_moments(z, torch.ones_like(z)), loss,
            ...               estimator=blr.BonnetPrice(points="sigma"), rho=0.5)
            >>> [x.tolist() for x in opt.mean]   # (E θ, E θ²) under N(0, 1)
            [[0.0, 0.0], [1.0, 1.0]]
        """
        return self.family.nat_to_mean(self._nat)

    def step(self, loss: Callable | None = None) -> Tensor:
        """One BLR step; ``loss`` overrides the constructor's (e.g. a new minibatch).

        Returns the objective estimate E_q[ℓ̄] − H(q) at the posterior before the step.

        Example:
            >>> import torch, expfam, blr
            >>> fam, z = expfam.DiagGaussian(), torch.zeros(2, dtype=torch.float64)
            >>> loss = lambda th: 2.0 * ((th - 1.0) ** 2).sum(-1)   # N(1, 1/4) target
            >>> opt = blr.BLR(fam, fam.from_moments(z, torch.ones_like(z)), loss,
            ...               estimator=blr.BonnetPrice(points="sigma"), rho=0.5)
            >>> values = [float(opt.step()) for _ in range(5)]
            >>> opt.t, values[-1] < values[0]
            (5, True)
        """
        family, nat = self.family, self._nat
        rho = check_rho(self.schedule(self.t + 1), "rho_t")
        est = self.estimator(
            family, nat, self.loss if loss is None else loss, generator=self.generator
        )
        check_estimate(family, nat, est)
        if self.gaussian is not None:
            total = est.grad if self.prior is None else tmap(torch.sub, est.grad, self.prior)
            use_momentum = self.momentum > 0 and self._prev is not None  # none at t = 1
            new = gaussian_step(
                family,
                nat,
                total,
                rho=rho,
                options=self.gaussian,
                momentum=self.momentum if use_momentum else 0.0,
                prev_nat=self._prev if use_momentum else None,
            )
        else:
            direction = natural_gradient(family, nat, est.grad, self.prior)
            new = apply_step(family, nat, direction, rho)
            if self.momentum > 0 and self._prev is not None:
                new = tmap(lambda x, a, b: x + self.momentum * (a - b), new, nat, self._prev)
                family.validate_nat(new, "nat")
        # commit only after every check passed
        value = objective(family, nat, est.value.sum(), self.prior)  # a scalar: the total
        self._prev, self._nat = nat, tmap(lambda t: t.detach(), new)
        self.t += 1
        self.last_estimate = est
        self.last_objective = value.detach()
        self.objective = (
            self.last_objective
            if self.objective is None
            else self.ema * self.objective + (1 - self.ema) * self.last_objective
        )
        return self.last_objective

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (λ, λ_{t−1}, t, the running objective).

        Example:
            >>> import torch, expfam, blr
            >>> fam, z = expfam.DiagGaussian(), torch.zeros(2, dtype=torch.float64)
            >>> loss = lambda th: 2.0 * ((th - 1.0) ** 2).sum(-1)   # N(1, 1/4) target
            >>> opt = blr.BLR(fam, fam.from_moments(z, torch.ones_like(z)), loss,
            ...               estimator=blr.BonnetPrice(points="sigma"), rho=0.5)
            >>> state = opt.state_dict()   # at t = 0: no previous λ, no objective yet
            >>> sorted(state), state["t"], state["prev"] is None
            (['nat', 'objective', 'prev', 't'], 0, True)
        """
        return {
            "nat": tuple(self._nat),
            "prev": None if self._prev is None else tuple(self._prev),
            "t": self.t,
            "objective": self.objective,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the arrays are validated as λ of this family.

        Example:
            >>> import torch, expfam, blr
            >>> fam, z = expfam.DiagGaussian(), torch.zeros(2, dtype=torch.float64)
            >>> loss = lambda th: 2.0 * ((th - 1.0) ** 2).sum(-1)   # N(1, 1/4) target
            >>> opt = blr.BLR(fam, fam.from_moments(z, torch.ones_like(z)), loss,
            ...               estimator=blr.BonnetPrice(points="sigma"), rho=0.5)
            >>> state, first = opt.state_dict(), opt.step()   # saved at t = 0, then one step
            >>> opt.load_state_dict(state)                    # back to t = 0: the same step again
            >>> opt.t, torch.equal(opt.step(), first)
            (0, True)
        """
        missing = {"nat", "prev", "t", "objective"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        nat = self.family.nat_type(*state["nat"])
        self.family.validate_nat(nat, "state['nat']")
        prev = None if state["prev"] is None else self.family.nat_type(*state["prev"])
        if prev is not None:
            self.family.validate_nat(prev, "state['prev']")
        t = int(state["t"])
        if t < 0:
            raise ValueError(f"state['t'] must be ≥ 0, got {t}")
        self._nat, self._prev, self.t, self.objective = nat, prev, t, state["objective"]
