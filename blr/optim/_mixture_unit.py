r"""A mixture-of-Gaussians posterior over a param group of :class:`blr.optim.BLROptimizer`: the
mixture BLR of Lin, Khan & Schmidt (ICML 2019) (:mod:`blr.mixture`) inside a training loop.

The group's family is ``expfam.Mixture(expfam.DiagGaussian())`` or
``expfam.Mixture(expfam.FullGaussian())`` over its D flattened parameters,
q(θ) = Σ_k π_k N(θ | m_k, S_k⁻¹), and ``init=`` gives λ at the start (an
:class:`expfam.MixtureNat` with K ≥ 2 components, ``lam1`` of shape ``(K, D)``). As in
:mod:`blr.mixture` the objective keeps the marginal entropy inside the loss,
f(θ) = N·ℓ(θ) − log p₀(θ) + log q(θ) (q held fixed for the step), and each step is
:func:`blr.mixture.mixture_step` with ``expectation="mc"``: the component expectations
E_{q_k}[f], E_{q_k}[∇f], E_{q_k}[∇²f] come from draws of each component.

**Draws.** The training draws go round the components: the draws of a step are taken in rounds
of K, each round draws z ~ N(0, I) of shape ``(1, K, D)`` from the optimizer's generator (the
call :func:`blr.mixture.mixture_step` makes for ``expectation="mc", n_points=1``) and its k-th
draw is θ = m_k + L_k⁻ᵀ z_k ~ q_k (S_k = L_kL_kᵀ). So a step needs at least K draws (``mc_samples
= K``, or K ``sampled_params(train=True)`` contexts before ``step()``); with n_k draws
θ_{k,1..n_k} of component k,

.. math::
    \mathbb E_{q_k}[\varphi] \approx \frac1{n_k}\sum_{i=1}^{n_k}\varphi(\theta_{k,i}),

the Monte Carlo expectation of :mod:`blr.mixture` (n_points draws of every component). With
exactly K draws per step and ``hessian="exact"`` a step is ``mixture_step(..., expectation="mc",
n_points=1)`` on the same draws.

**The terms of f at a draw.** N·ℓ(θ) and N·∇ℓ(θ) are the loop's loss and gradient (the loss is
needed: ``step(closure)`` records it, or ``draw.set_loss(loss)`` inside ``sampled_params``);
∇²(Nℓ) is Stein's estimate sym(S_k(θ − m_k)·N∇ℓ(θ)ᵀ) (its diagonal for diagonal components; the
default ``BonnetPrice(hessian="stein")``) or the exact Hessian (``BonnetPrice(hessian="exact")``,
``loss.backward(create_graph=True)``); log q, ∇log q and ∇²log q are in closed form
(:mod:`blr.mixture`); the prior is the default N(0, (Nδ)⁻¹I) as ½Nδ‖θ‖² (δ = ``weight_decay``,
none for δ = 0) or a given mixture p₀ (``prior=``: a :class:`expfam.MixtureNat` over the same D
coordinates with any number of components, or a ``BLROptimizer.posterior()`` of this family) as
−log p₀(θ), with its derivatives in closed form.

**The step** is :mod:`blr.mixture`'s, per component k (G_k = E_{q_k}[∇²f]):

.. math::
    S_k \leftarrow S_k + \rho G_k\ [+\ \tfrac{\rho^2}{2}G_kS_k^{-1}G_k],\qquad
    m_k \leftarrow m_k - \rho\,S_k^{-1}\mathbb E_{q_k}[\nabla f]\ (\text{new }S_k),

and log(π_k/π_K) by the weight rule, chosen by ``gaussian=`` (a
:class:`~blr.mixture.MixtureOptions`, or a plain :class:`~blr.GaussianOptions` for ``improved``
alone):

- None or ``MixtureOptions()``: the improved-BLR term, which keeps every S_k positive definite,
  and Lin et al.'s weight rule log(π_k/π_K) ← log(π_k/π_K) − ρ_π(E_{q_k}[f] − E_{q_K}[f]) with
  ρ_π = ``weights_lr`` (None: ρ); ``weights="fixed"`` keeps π;
- ``GaussianOptions(improved=False)`` or ``MixtureOptions(improved=False, weights="exact")``:
  the plain λ-space BLR with the exact weight rule of ``c``; a step that would make some S_k not
  positive definite is halved (counted in :attr:`BLROptimizer.halvings`, at most
  ``max_halvings`` times; then refused with ValueError, nothing changed).

The other fields of :class:`~blr.GaussianOptions` (``lr``, ``sqrt_scaling``, ``damping``,
``improved_mean``) do not apply to mixtures and are refused.

Between steps the parameters hold E_q[θ] = Σ_k π_k m_k (as for every family of
:class:`BLROptimizer`); with well-separated components that is not a good network: predict with
draws (``sampled_params()``, θ ~ q: a component by π, then its Gaussian) or per component
(``posterior()`` gives λ; ``expfam.Mixture.components`` the components).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from blr.estimators import BonnetPrice, Estimator
from blr.gaussian import GaussianOptions
from blr.mixture import (
    MixtureExpectations,
    MixtureOptions,
    _log_q_derivatives,
    _State,
    _state,
    _unwhiten,
    _update,
)
from expfam import DiagGaussian, FullGaussian, MixtureNat
from expfam.linalg import sym

__all__ = ["MixtureUnit"]

_NOT_PD = "must be negative definite"


@dataclasses.dataclass
class MixtureDraw:
    """One training draw: θ, the component it was drawn from (``replay``), and the gradient,
    exact Hessian and loss the loop computed there (the fields of the generic draw)."""

    theta: Tensor
    replay: int | None = None
    grad: Tensor | None = None
    hess: Tensor | None = None
    value: Tensor | None = None


class MixtureUnit:
    """The block of a param group whose family is an :class:`expfam.Mixture` (module
    docstring): the interface of the generic optimizer's blocks (``nat``, ``prior``, ``coords``,
    ``center``, ``draw``, ``update``, ``as_nat``, ``exact_hess``)."""

    per_example = None  # no per-example curvature
    center_field = None

    def __init__(self, family, coords, device, dtype, ess, weight_decay, where) -> None:
        self.family, self.coords, self.device, self.dtype = family, coords, device, dtype
        self.ess, self.weight_decay, self.where = ess, weight_decay, where
        self.dim = coords.stop - coords.start
        self.full = isinstance(family.component, FullGaussian)
        self._nat: MixtureNat | None = None
        self._prior: MixtureNat | None = None
        self._st: _State | None = None
        self._prior_st: _State | None = None
        self._round: Tensor | None = None  # the round's z ~ N(0, I), (1, K, D)
        self._next = 0  # the next component of the round
        self._last: Tensor | None = None  # the last training draw

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls, family, coords, theta0, group, where, estimator, prior, init, options, device, dtype
    ) -> MixtureUnit:
        """The block, every argument checked (errors name it)."""
        if not isinstance(family.component, (DiagGaussian, FullGaussian)):
            raise TypeError(
                f"family: a mixture's components must be a DiagGaussian or FullGaussian ({where}), "
                f"got {type(family.component).__name__}"
            )
        unit = cls(family, coords, device, dtype, float(group["ess"]),
                   float(group["weight_decay"]), where)  # fmt: skip
        unit.options = unit.resolve_options(options)
        unit.estimator = unit.resolve_estimator(estimator)
        unit.exact_hessian = unit.estimator.hessian == "exact"
        if init is None:
            raise ValueError(
                f"init is needed for {family.name} ({where}): pass λ at the start as an "
                f"expfam.MixtureNat with K ≥ 2 components over the {unit.dim} coordinates "
                "(e.g. Mixture.from_components(weights, component λ with lam1 of shape "
                f"(K, {unit.dim})))"
            )
        unit.nat = unit.as_nat(init, "init")
        unit.prior_as_loss = prior is None and unit.weight_decay > 0
        if prior is not None:
            prior = unit.as_nat(prior, "prior", check=False)
            family.validate_nat(prior, "prior")
            unit.prior = prior
        return unit

    def resolve_options(self, options: GaussianOptions | None) -> MixtureOptions:
        """``gaussian=`` as :class:`~blr.mixture.MixtureOptions`: None gives the default
        (improved, Lin et al.'s weights); a plain ``GaussianOptions`` its ``improved`` with
        Lin et al.'s weights (improved) or the exact λ-space rule (not improved). The fields of
        the Gaussian step that do not apply must keep their defaults."""
        if options is None:
            return MixtureOptions()
        other = {
            name: getattr(options, name)
            for name in ("lr", "sqrt_scaling", "damping", "improved_mean")
            if getattr(options, name) != getattr(GaussianOptions(), name)
        }
        if other:
            raise ValueError(
                f"gaussian: only improved= (and the weight rule of blr.mixture.MixtureOptions) "
                f"apply to a mixture ({self.where}); got "
                f"{', '.join(f'{k}={v!r}' for k, v in other.items())}"
            )
        if isinstance(options, MixtureOptions):
            return options
        improved = bool(options.improved)
        return MixtureOptions(improved=improved, weights="lin" if improved else "exact")

    def resolve_estimator(self, estimator: Estimator | None) -> BonnetPrice:
        if estimator is None:
            return BonnetPrice(hessian="stein")
        if not isinstance(estimator, Estimator):
            raise TypeError(f"estimator must be a blr.Estimator, got {type(estimator).__name__}")
        if not isinstance(estimator, BonnetPrice):
            raise TypeError(
                f"estimator: a mixture ({self.where}) takes BonnetPrice(hessian='stein') or "
                f"BonnetPrice(hessian='exact'), got {type(estimator).__name__}"
            )
        if estimator.points != "mc":
            raise ValueError(
                f'estimator: a mixture ({self.where}) draws from its components (points="mc"), '
                f"got points={estimator.points!r}"
            )
        if estimator.hessian not in ("stein", "exact"):
            raise ValueError(
                f"estimator: a mixture ({self.where}) takes hessian='stein' or 'exact', got "
                f"{estimator.hessian!r}"
            )
        if estimator.n_samples != 1:
            raise ValueError(
                f"the estimator's n_samples ({estimator.n_samples}) must be 1: the draws per step "
                "are the optimizer's (mc_samples, or the sampled_params(train=True) contexts)"
            )
        return estimator

    def as_nat(self, value: Any, name: str, check: bool = True) -> MixtureNat:
        """``value`` as λ of this block (shapes checked; ``check``: valid, and K as now)."""
        fam = self.family
        if not (isinstance(value, tuple) and len(value) == len(MixtureNat._fields)):
            raise TypeError(
                f"{name} must be a MixtureNat of the family {fam.name} ({self.where}), got "
                f"{type(value).__name__}"
            )
        nat = MixtureNat(*(torch.as_tensor(t).detach().to(self.device, self.dtype) for t in value))
        d = self.dim
        if nat.lam1.ndim != 2 or nat.lam1.shape[-1] != d:
            raise ValueError(
                f"{name}.lam1 has shape {tuple(nat.lam1.shape)}: {fam.name} over the {d} "
                f"coordinates of {self.where} needs (K, {d})"
            )
        k = nat.lam1.shape[0]
        want = (k, d, d) if self.full else (k, d)
        if tuple(nat.lam2.shape) != want:
            raise ValueError(
                f"{name}.lam2 has shape {tuple(nat.lam2.shape)}: {fam.name} with K = {k} "
                f"components over the {d} coordinates of {self.where} needs {want}"
            )
        if tuple(nat.c.shape) != (k - 1,):
            raise ValueError(
                f"{name}.c has shape {tuple(nat.c.shape)}: K = {k} components need ({k - 1},)"
            )
        if check and self._nat is not None and k != self.num_components:
            raise ValueError(
                f"{name} has K = {k} components, λ of {self.where} {self.num_components}"
            )
        if check:
            fam.validate_nat(nat, name)
        return nat

    # ------------------------------------------------------------------ state
    @property
    def nat(self) -> MixtureNat:
        return self._nat

    @nat.setter
    def nat(self, value: MixtureNat) -> None:  # a new λ (a step, a loaded state): a new round
        self._nat, self._st, self._round = value, None, None

    @property
    def prior(self) -> MixtureNat | None:
        return self._prior

    @prior.setter
    def prior(self, value: MixtureNat | None) -> None:
        self._prior, self._prior_st = value, None

    @property
    def num_components(self) -> int:
        return self._nat.lam1.shape[0]

    def state(self) -> _State:
        """The components (m_k, S_k, a Cholesky factor, log π) of λ, computed once per λ."""
        if self._st is None:
            with torch.no_grad():
                self._st = _state(self.family, self._nat)
        return self._st

    def prior_state(self) -> _State:
        if self._prior_st is None:
            with torch.no_grad():
                self._prior_st = _state(self.family, self._prior)
        return self._prior_st

    # ------------------------------------------------------------------ draws
    def center(self) -> Tensor:
        """E_q[θ] = Σ_k π_k m_k."""
        st = self.state()
        return (torch.exp(st.log_w).unsqueeze(-1) * st.m).sum(0)

    def draw(self, gen: torch.Generator, train: bool) -> MixtureDraw:
        """θ ~ q (``train=False``: a component by π, then its Gaussian), or the next training
        draw of the round over the components (module docstring)."""
        if not train:
            return MixtureDraw(self.family.sample(self._nat, (), gen, validate=False).theta)
        st = self.state()
        k = self.num_components
        if self._round is None or self._next >= k:
            self._round = torch.randn(
                (1, k, self.dim), dtype=self.dtype, device=self.device, generator=gen
            )
            self._next = 0
        j = self._next
        self._next += 1
        theta = _unwhiten(st, self._round)[0, j]
        self._last = theta  # for exact_hess (the group's parameters hold E_q[θ] by then)
        return MixtureDraw(theta, replay=j)

    def exact_hess(self, params: list[Tensor], grads: list[Tensor | None]) -> Tensor:
        """∇²ℓ over the block's coordinates (full, or its diagonal for diagonal components) at
        the draw, by one backward pass per coordinate through the gradients' graph."""
        if any(g is not None and g.grad_fn is None for g in grads):
            raise RuntimeError(
                'hessian="exact" needs the gradients\' graph: call loss.backward('
                "create_graph=True) inside sampled_params(train=True)"
            )

        def flat(parts):
            return torch.cat(
                [
                    torch.zeros(p.numel(), device=p.device, dtype=p.dtype)
                    if g is None
                    else g.reshape(-1)
                    for p, g in zip(params, parts)
                ]
            )

        g = flat(grads)
        # The graph of the gradients refers to the parameters themselves, which hold E_q[θ] again
        # when the draw is collected: put the draw back for the backward passes (the block is the
        # whole group, a mixture being no block of a Product).
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, v in zip(params, self._last.split([p.numel() for p in params])):
                p.data.copy_(v.reshape(p.shape))
        rows = []
        try:
            with torch.enable_grad():
                for j in range(self.coords.start, self.coords.stop):
                    parts = torch.autograd.grad(g[j], params, retain_graph=True, allow_unused=True)
                    row = flat(parts)[self.coords]
                    rows.append(row if self.full else row[j - self.coords.start])
        finally:
            with torch.no_grad():
                for p, v in zip(params, saved):
                    p.data.copy_(v)
        return torch.stack(rows).to(self.dtype).detach()

    # ------------------------------------------------------------------ the update
    def expectations(self, draws: list[MixtureDraw]) -> MixtureExpectations:
        """E_{q_k}[f], E_{q_k}[∇f], E_{q_k}[∇²f] from the draws of a step (module docstring)."""
        k, n = self.num_components, self.ess
        comp = torch.tensor([d.replay for d in draws], device=self.device)
        counts = torch.bincount(comp, minlength=k)
        missing = torch.nonzero(counts == 0).flatten().tolist()
        if missing:
            raise ValueError(
                f"the mixture BLR ({self.where}) needs a draw of each of its K = {k} components "
                f"per step, got {len(draws)} draw(s) (none of components {missing}): use "
                f"mc_samples={k} (or a multiple) with step(closure), or {k} "
                "sampled_params(train=True) draws before each step()"
            )
        fixed = self.options.weights == "fixed"  # E_{q_k}[f] enters the weights' step only
        if any(d.value is None for d in draws) and not fixed:
            raise ValueError(
                "the mixture BLR needs the loss of each draw (E_{q_k}[f] in the weights' step): "
                "use step(closure), or record it with draw.set_loss(loss) inside "
                "sampled_params(train=True)"
            )
        st = self.state()
        theta = torch.stack([d.theta for d in draws])
        grad = torch.stack([d.grad for d in draws]).to(self.dtype) * n  # ∇(Nℓ)
        if any(d.value is None for d in draws):  # (weights fixed: not used)
            value = torch.zeros(len(draws), dtype=self.dtype, device=self.device)
        else:
            value = torch.stack([d.value for d in draws]).to(self.dtype) * n
        if self.exact_hessian:
            hess = torch.stack([d.hess for d in draws]) * n
        else:  # Stein: sym(S_k (θ − m_k) ∇(Nℓ)ᵀ), or its diagonal
            r = theta - st.m[comp]
            if self.full:
                sr = (st.prec[comp] @ r.unsqueeze(-1)).squeeze(-1)
                hess = sym(sr.unsqueeze(-1) * grad.unsqueeze(-2))
            else:
                hess = st.prec[comp] * r * grad
        if self.prior_as_loss:  # −log p₀ = ½Nδ‖θ‖² (+ const)
            nd = n * self.weight_decay
            value = value + 0.5 * nd * (theta * theta).sum(-1)
            grad = grad + nd * theta
            ones = torch.ones(self.dim, dtype=self.dtype, device=self.device)
            hess = hess + nd * (torch.diag(ones) if self.full else ones)
        elif self._prior is not None:  # −log p₀ in closed form
            lp, gp, hp, _ = _log_q_derivatives(self.prior_state(), theta)
            value, grad, hess = value - lp, grad - gp, hess - hp
        log_q, gq, hq, _ = _log_q_derivatives(st, theta)
        w = torch.nn.functional.one_hot(comp, k).to(self.dtype) / counts.to(self.dtype)  # (P, K)
        value = w.mT @ (value + log_q)
        grad = w.mT @ (grad + gq)
        hess = torch.einsum("pk,p...->k...", w, hess + hq)
        return MixtureExpectations(value, grad, sym(hess) if self.full else hess)

    def update(self, rho: float, draws: list[MixtureDraw], max_halvings: int) -> tuple:
        """λ_{t+1} of the block (and the number of halvings it took)."""
        self._round = None  # the next step starts a new round
        e = self.expectations(draws)
        st = self.state()
        opts = self.options
        own_rate = opts.weights == "lin" and opts.weights_lr is not None
        for j in range(max_halvings + 1):
            r = rho / 2**j
            try:
                new = _update(self._nat, st, e, r, "fixed" if own_rate else opts.weights,
                              opts.improved)  # fmt: skip
            except ValueError as err:
                if _NOT_PD not in str(err):
                    raise
                if j == max_halvings:
                    raise ValueError(
                        f"the mixture BLR step left the domain of {self.family.name} "
                        f"({self.where}) even at rho/2^{max_halvings}: {err} (lower lr, raise "
                        "max_halvings, or use improved=True)"
                    ) from err
                continue
            if own_rate:  # log(π_k/π_K) −= ρ_π (E_{q_k}[f] − E_{q_K}[f]); c moves with it
                step = opts.weights_lr / 2**j * (e.value[:-1] - e.value[-1])
                new = new._replace(c=new.c - step)
            return new, j
        raise AssertionError("unreachable")  # pragma: no cover
