r"""The Bayesian learning rule as a ``torch.optim`` optimizer for any family: declare a family,
get an optimizer for a network.

Each param group g has a posterior q_{λ_g} from :mod:`expfam` over its flattened parameters
θ_g ∈ R^{D_g} (:class:`~blr.functional.ParameterLayout`), a step ρ = ``lr`` and a prior p₀. With
the user's loss ℓ (the mean over a minibatch), N = ``ess`` and ℓ̄ = N·ℓ − log p₀, a step is

.. math::
    \lambda \leftarrow \lambda - \rho\,\widehat{\nabla_\mu}\big(\mathbb{E}_q[N\ell]\big)
        - \rho\,\big(\lambda - \lambda_0\big)\quad\text{(a conjugate prior } \lambda_0\text{)},
    \qquad
    \lambda \leftarrow \lambda - \rho\,\big(\widehat{\nabla_\mu}\mathbb{E}_q[\bar\ell]
        + \nabla_\mu(-H(q))\big)\quad\text{(otherwise)},

Khan & Rue (2023), eqs. (3)–(5); for the diagonal and full Gaussians the step is taken in (m, S)
coordinates by :func:`blr.gaussian_step` with the improved-BLR correction (Lin, Schmidt & Khan,
2020), which keeps S positive definite for any Hessian estimate.

The estimate of ∇_μE_q[Nℓ] comes from the draws the training loop evaluates
(``sampled_params(train=True)`` or ``step(closure)``), as in :mod:`blr.estimators`:

================================  ===========================================================
estimator                         from each draw θ_k (K draws per step)
================================  ===========================================================
``BonnetPrice(hessian="stein")``  θ_k ~ q, ∇ℓ(θ_k): ĝ = N·mean ∇ℓ, Ĥ = N·mean sym(S(θ_k − m)
                                  ∇ℓ(θ_k)ᵀ) (Gaussian families; the default for them)
``BonnetPrice(hessian=            Ĥ = ĝĝᵀ (ĝ⊙ĝ for the diagonal family)
"grad_sq")``, ``Delta("grad_sq")``
``BonnetPrice(hessian="exact")``, Ĥ = N·mean ∇²ℓ(θ_k) by D backward passes through the gradient's
``Delta("exact")``                graph: call ``loss.backward(create_graph=True)`` (small D)
``BonnetPrice(hessian="ggn")``,   Ĥ = N·(1/M)Σ_i diag(J_iᵀΛ_iJ_i) over the minibatch's M examples
``Delta("ggn")``                  (diagonal Gaussians; ``model=`` and ``curvature_loss=``: the
                                  per-example pass of :class:`blr.curvature.PerExample`, as VOGN
                                  and OGN); ``"per_example"``: N·(1/M)Σ_i (∇ℓ_i)²
``Reparam()``                     θ_k = rsample(λ(μ)), the loss gradient pulled back to μ by
                                  autograd through the family's sampler (any family with
                                  ``rsample``; the default for them)
``ScoreFunction()``               F⁻¹·mean (Nℓ(θ_k) − b_k)(T(θ_k) − μ), leave-one-out baseline
                                  (any family; K ≥ 2 draws)
``GumbelSoftmax(τ)``              relaxed Bernoulli draws (the default for Bernoulli)
================================  ===========================================================

A step that would leave the family's domain is never applied. Gaussians use the improved BLR
(the default ``gaussian=GaussianOptions(improved=True)``); for every other family the step is
halved until λ − (ρ/2ʲ)·d is valid (backtracking, at most ``max_halvings`` times, counted in
:attr:`BLROptimizer.halvings`); a NaN/Inf loss or gradient raises FloatingPointError (or skips
the step with ``nonfinite="skip"``). Nothing is written before every group's step is valid.

A group's family may be a mixture of Gaussians, :class:`expfam.Mixture` (the mixture BLR of Lin,
Khan & Schmidt, ICML 2019, :mod:`blr.mixture`: K draws a step, one per component, Stein or exact
curvature, options in :class:`blr.mixture.MixtureOptions`; see docs/mixture_network.md).

A group's family may be an :class:`expfam.Product`: each block (a full Gaussian on the last
layer's coordinates, a diagonal Gaussian elsewhere, ±1 Bernoulli weights, ...) is drawn, estimated
and updated by its own rule above, with its own estimator (``estimator=`` one for all blocks, or
one per block) and prior.

Outside ``sampled_params`` the parameters hold E_q[θ] (the mean m for Gaussians, tanh λ for ±1
Bernoulli weights); each keeps its own storage. :meth:`BLROptimizer.posterior` hands the posterior
back as a :class:`blr.ParameterPosterior`, and ``prior=`` takes one (the last task's posterior as
the next task's prior).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from blr.curvature import PerExample, resolve
from blr.curvature.likelihoods import FACTORED
from blr.engine import natural_gradient
from blr.estimators import BonnetPrice, Estimator, GumbelSoftmax, Reparam, ScoreFunction
from blr.functional import ParameterLayout
from blr.gaussian import GaussianOptions, diag_moments_step, gaussian_step
from blr.optim._args import MonteCarloOptions, Unpack, hyper_rules
from blr.optim._base import MonteCarloOptimizer
from blr.optim._checkpoint import check_layout, header, restore_header
from blr.posterior import ParameterPosterior, as_prior, identity_statistic
from expfam import (
    Bernoulli,
    DiagGaussian,
    ExpFamily,
    FixedCovGaussian,
    FullGaussian,
    GaussianLike,
    Mixture,
    Product,
)
from expfam import generic as expfam_generic
from expfam.linalg import solve_psd
from expfam.tree import flatten, tmap, unflatten

__all__ = ["BLROptimizer"]

_GAUSSIAN_STEP = (DiagGaussian, FullGaussian)


@dataclasses.dataclass
class _Draw:
    """One training draw of one block: θ (its coordinates), what the estimator needs to replay
    it, and the gradient, exact Hessian and loss the loop computed there."""

    theta: Tensor
    replay: Any = None  # Reparam: the generator state before the draw; Gumbel: a = (λ + ε)/τ
    grad: Tensor | None = None
    hess: Tensor | None = None
    value: Tensor | None = None


class DrawHandle:
    """What ``sampled_params(train=True)`` yields: :meth:`set_loss` records the loss of the
    draw (needed by the score-function estimator; ``step(closure)`` records it itself).

    Example:
        >>> import torch, expfam
        >>> from blr.optim import BLROptimizer
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=8, seed=0)
        >>> with opt.sampled_params(train=True) as draw:
        ...     loss = model(torch.ones(8, 2)).pow(2).mean()
        ...     loss.backward()
        ...     draw.set_loss(loss)
        >>> torch.equal(draw.loss, loss.detach())
        True
    """

    def __init__(self) -> None:
        self.loss: Tensor | None = None

    def set_loss(self, loss: Tensor) -> None:
        """Record the (mean minibatch) loss ℓ(θ_k) of this draw."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("loss must be a scalar tensor (the loss of this draw)")
        self.loss = loss.detach().reshape(())


class BLROptimizer(MonteCarloOptimizer):
    r"""The Bayesian learning rule for any exponential family, as a ``torch.optim`` optimizer
    (see the module docstring for the update and the estimators).

    Every param group is one posterior over its parameters, flattened in order: the group's
    ``family`` must describe D_g coordinates (a ``DiagGaussian`` with ``(D,)`` fields, a
    ``FullGaussian`` with a D × D precision, D Bernoulli or Gamma coordinates, a
    :class:`expfam.Product` of blocks, ...), and the group's parameters must lie in its support at
    construction (±1 for a ±1 Bernoulli, > 0 for a Gamma). Groups may have their own ``family``,
    ``lr``, ``ess``, ``weight_decay``, ``prior``, ``estimator`` and ``init``.

    Args:
        params: parameters or param groups.
        family: the posterior family of the parameters (an :class:`expfam.ExpFamily`).
        lr: ρ ≥ 0, the BLR step (schedulers change it as any ``lr``).
        ess: N > 0, the effective sample size (the loss is a mean over N examples).
        estimator: how ∇_μE_q[ℓ] is estimated from the draws (table in the module docstring);
            None picks Stein for Gaussians, Gumbel-softmax (τ = 1) for Bernoulli, ``Reparam``
            for families with ``rsample``, else the score function. For a Product, one
            estimator for every block or a sequence of one per block (None entries: defaults).
        prior: a :class:`blr.ParameterPosterior` of the same family over the same parameters
            (e.g. the previous task's ``posterior()``), or λ₀ as a ``family.nat_type`` shaped like
            λ; either enters as a conjugate prior (λ − λ₀). None gives the default prior
            N(0, (N·weight_decay)⁻¹ I) for real-valued parameters (conjugate for the diagonal
            and full Gaussians, a term ½N·δ‖θ‖² of ℓ̄ otherwise) and the uniform prior λ₀ = 0
            for Bernoulli weights.
        weight_decay: δ ≥ 0, the default prior's precision per example (0: no prior term).
        hess_init: h₀ > 0: Gaussians start at precision N(h₀ + δ) around the parameters' values.
        init: λ at the start (a ``family.nat_type``); None: Gaussians as above, Bernoulli
            λ = ±1 at the initial ±1 weights; other families need it.
        gaussian: :class:`~blr.GaussianOptions` of the (m, S)-form step of diagonal and full
            Gaussians (default: ``GaussianOptions(improved=True)``; ``lr=α`` gives the mean its
            own rate, as IVON; ``damping=ε`` is added to the mean's preconditioner).
            ``GaussianOptions(sqrt_scaling=True)`` is refused here: see ``sqrt_scaling``.
        sqrt_scaling: the square-root scaling of Vprop/Vadam (Khan et al., ICML 2018; Khan & Rue
            2023, Table 1 rows 5 and 9) for diagonal Gaussians: S − S₀ (the data part of the
            precision) moves by the group's rule, and the mean step is

            .. math::
                m \leftarrow m - \alpha\,\frac{\hat g + S_0(m - m_0)}
                    {\sqrt{N (S - S_0)/c_t} + S_0 + \varepsilon},\qquad
                c_t = 1 - \textstyle\prod_{i\le t}(1 - \rho_i)

            (Adam's bias correction, 1 − β₂ᵗ for a constant ρ = 1 − β₂; c_t = 1 while every
            ρ_i has been 0), ĝ = ∇(Nℓ) and α = ``gaussian.lr`` (None: ρ). With it, the squared
            gradient curvature ``hessian="grad_sq"`` is taken per example, Ĥ = N·ḡ⊙ḡ (ḡ the
            mean-loss gradient averaged over the draws), so that S stays the precision of the
            draws; other curvature estimates are already N times a per-example one. Vadam
            (β₁ = 0) is this with ``estimator=BonnetPrice(hessian="grad_sq")``,
            ``lr=1 − β₂``, ``weight_decay=δ/N``, ``hess_init=s₀`` and
            ``gaussian=GaussianOptions(lr=α, improved=False)`` (a test checks it).
        draw_ahead: the weights hold a training draw between steps (from the start; the step
            writes the next one), so loops that never call ``sampled_params`` train at draws;
            :meth:`mean_params` gives E_q[θ]. Needs an estimator that works from the gradients
            alone (not per-example curvature, the score function or a mixture).
        max_halvings: backtracking steps of the non-Gaussian families (above).
        model: the ``nn.Module`` whose per-example curvature ``hessian="ggn"`` or
            ``"per_example"`` needs (entered inside ``sampled_params(train=True)``: run the
            model's forward, and for ``"per_example"`` the backward of the minibatch-mean loss,
            inside it).
        curvature_loss: the likelihood of ``hessian="ggn"`` (a name of
            :data:`blr.curvature.NAMES`, e.g. ``"cross_entropy"``, ``"gaussian"``).
        sigma2: σ² of the ``"gaussian"`` likelihood.
        mc_samples, nonfinite, seed, missing_sample: as in :class:`~blr.optim.IVON`.

    Example: a diagonal Gaussian over a linear model, with a closure:

        >>> import torch, expfam
        >>> from blr.optim import BLROptimizer
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(3, 1)
        >>> x = torch.randn(64, 3)
        >>> y = x @ torch.tensor([[1.0], [-1.0], [0.5]])
        >>> opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=64,
        ...                    weight_decay=1e-3, seed=0)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> for _ in range(200):
        ...     _ = opt.step(closure)
        >>> model.weight.detach().round(decimals=1)
        tensor([[ 1.0000, -1.0000,  0.5000]])
        >>> q = opt.posterior(model)     # a blr.ParameterPosterior: family, λ, layout
        >>> q.family.name, q.layout.names
        ('gaussian_diag', ('weight', 'bias'))
    """

    # torch.amp.GradScaler hands the scale to step(): removed from the collected draws
    _step_supports_amp_scaling = True
    _hyper = hyper_rules(nonnegative=("lr", "weight_decay"), positive=("ess", "hess_init"))

    def __init__(
        self,
        params: Any,
        family: ExpFamily,
        lr: float,
        ess: float,
        *,
        estimator: Estimator | Sequence[Estimator | None] | None = None,
        prior: ParameterPosterior | tuple | None = None,
        weight_decay: float = 1e-4,
        hess_init: float = 1.0,
        init: tuple | None = None,
        gaussian: GaussianOptions | None = None,
        sqrt_scaling: bool = False,
        draw_ahead: bool = False,
        max_halvings: int = 30,
        model: torch.nn.Module | None = None,
        curvature_loss: str | None = None,
        sigma2: float = 1.0,
        **options: Unpack[MonteCarloOptions],
    ) -> None:
        if int(max_halvings) != max_halvings or max_halvings < 0:
            raise ValueError(f"max_halvings must be an integer ≥ 0, got {max_halvings}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if curvature_loss is not None:
            resolve(curvature_loss, sigma2=sigma2, supported=FACTORED, arg="curvature_loss")
        self.model, self.curvature_loss, self.sigma2 = model, curvature_loss, float(sigma2)
        self.max_halvings = int(max_halvings)
        self.halvings = 0
        self.draw_ahead = bool(draw_ahead)
        self._held: list[list[_Draw]] | None = None  # draw_ahead: the draws the weights hold
        self._collected_norm: Tensor | None = None  # ‖grads‖ at the last collection
        self._posts: list[_Group] = []
        self._pending: list[list[list[_Draw]]] = []
        params = list(params) if not isinstance(params, Tensor) else [params]
        if isinstance(prior, ParameterPosterior) and params and isinstance(params[0], dict):
            params = _spread_prior(prior, params)  # one block of a Product per group
            prior = None
        defaults = dict(
            family=family,
            lr=lr,
            ess=ess,
            estimator=estimator,
            prior=prior,
            weight_decay=weight_decay,
            hess_init=hess_init,
            init=init,
            gaussian=gaussian,
            sqrt_scaling=sqrt_scaling,
        )
        super().__init__(params, defaults, **options)
        self._hold_draw()  # draw_ahead: the weights hold a training draw from the start

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group with, optionally, its own family and hyperparameters; everything is
        checked (family, estimator, prior, init, support) before the group is added.

        Example:
            >>> import torch, expfam
            >>> from blr.optim import BLROptimizer
            >>> body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
            >>> opt = BLROptimizer(body.parameters(), expfam.DiagGaussian(), lr=0.1, ess=10)
            >>> opt.add_param_group({"params": head.parameters(), "family": expfam.FullGaussian()})
            >>> opt.posterior().family.name
            'product(gaussian_diag:16, gaussian_full:5)'
        """
        raw = param_group["params"]
        param_group = {**param_group, "params": [raw] if isinstance(raw, Tensor) else list(raw)}
        self._check_new_params(param_group["params"])
        group = {**self.defaults, **param_group}
        post = _Group.build(group, len(self._posts))
        for unit in post.units:
            if unit.per_example is None:
                continue
            if self.model is None:
                raise TypeError(
                    f'hessian="{unit.estimator.hessian}" needs model=, the nn.Module whose '
                    "per-example curvature is collected"
                )
            if unit.per_example == "ggn" and self.curvature_loss is None:
                raise ValueError('hessian="ggn" needs curvature_loss= (e.g. "cross_entropy")')
            owned = {id(p) for p in self.model.parameters()}
            if any(id(p) not in owned for p in param_group["params"]):
                raise ValueError("params: per-example curvature needs parameters of model")
            modes = {u.per_example for g in [*self._posts, post] for u in g.units} - {None}
            if len(modes) > 1:
                raise ValueError('hessian="ggn" and "per_example" cannot be mixed')
        if getattr(self, "draw_ahead", False):
            for unit in post.units:
                if (
                    unit.per_example is not None
                    or isinstance(unit.estimator, ScoreFunction)
                    or (isinstance(unit.family, Mixture))
                ):
                    raise ValueError(
                        "draw_ahead=True trains without a sampled_params context: it needs an "
                        "estimator that works from the gradients alone (not per-example "
                        "curvature, the score function or a mixture)"
                    )
            self._release_held()
        param_group.setdefault("step", 0)
        if group["sqrt_scaling"]:
            param_group.setdefault("scale_decay", 1.0)  # Π_i (1 − ρ_i), for c_t
        super().add_param_group(param_group)
        self._posts.append(post)
        self._pending.append([])
        with torch.no_grad():
            post.write(self.param_groups[-1]["params"], post.center())
        if getattr(self, "draw_ahead", False) and hasattr(self, "_seed"):  # (after __init__)
            self._hold_draw()

    def posterior(self, model: torch.nn.Module | None = None) -> ParameterPosterior:
        """The posterior as a :class:`blr.ParameterPosterior` over the optimizer's parameters,
        group after group: the group's family and λ for one group, a :class:`expfam.Product` of
        the groups' families for several. With ``model`` (whose parameters must be the
        optimizer's, in ``model.parameters()`` order) the layout carries its parameter names.
        λ is a copy: later steps do not change it.

        Example:
            >>> import torch, expfam
            >>> from blr.optim import BLROptimizer
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=10,
            ...                    weight_decay=0.1, hess_init=0.9)
            >>> q = opt.posterior(model)
            >>> expfam.DiagGaussian().to_moments(q.nat)[1]   # N(h₀ + δ)
            tensor([10., 10., 10.])
        """
        params = [p for g in self.param_groups for p in g["params"]]
        if model is not None:
            theirs = list(model.parameters())
            if len(theirs) != len(params) or any(a is not b for a, b in zip(params, theirs)):
                raise ValueError(
                    "model's parameters must be this optimizer's parameters, in "
                    "model.parameters() order"
                )
            params = model
        if len(self._posts) == 1:
            family, nat = self._posts[0].family, self._posts[0].nat
        elif any(isinstance(g.family, Mixture) for g in self._posts):
            raise ValueError(
                "posterior(): a mixture is not a block of an expfam.Product (its points are "
                "(θ, z) pairs), so an optimizer with a mixture group and other groups has no "
                "single posterior object; give the mixture group its own optimizer"
            )
        else:
            family = Product([(g.family, g.layout.size) for g in self._posts])
            nat = family.join([g.nat for g in self._posts])
        nat = tmap(lambda t: t.detach().clone(), nat)
        return ParameterPosterior(family, nat, params)

    # ------------------------------------------------------------------ sampling
    @contextlib.contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[DrawHandle]:
        """Within the context the parameters hold a posterior draw θ ~ q (for training with
        ``train=True``: the estimator's draw, e.g. a relaxed Bernoulli draw); on exit they hold
        E_q[θ] again. With ``train=True`` the gradients present on exit are collected, with the
        draw, as one Monte Carlo sample for the next :meth:`step` (zero the gradients before
        each draw). Yields a :class:`DrawHandle` to record the draw's loss. A prediction draw
        may be nested in an open draw (on exit the open draw is back, exactly); a nested
        training draw raises RuntimeError and changes nothing.

        Example:
            >>> import torch, expfam
            >>> from blr.optim import BLROptimizer
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=10,
            ...                    seed=0)
            >>> mean = model.weight.clone()
            >>> with opt.sampled_params():
            ...     torch.equal(model.weight, mean)
            False
            >>> torch.equal(model.weight, mean)
            True
        """
        outer = getattr(self, "_open_draw", None)
        if outer is not None and train:
            raise RuntimeError(
                "sampled_params(train=True) inside another sampled_params context: a training "
                f"draw cannot be nested (a {outer} draw is open); nothing was changed"
            )
        if self._held is not None and train and self._count == 0:
            # draw_ahead: the held draws are this sample (the weights keep them)
            handle = DrawHandle()
            self._open_draw = "training"
            try:
                yield handle
            finally:
                self._open_draw = None
            self._collect_held(handle.loss)
            return
        if self._held is not None and train:  # a further sample: a fresh draw around E_q[θ]
            self._release_held()
        if self._held is not None and outer is None:
            outer = "held"  # a prediction draw while the weights hold one: restore it
        if outer is not None:  # a prediction draw inside an open draw: restore it on exit
            held = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]
        handle = DrawHandle()
        draws = []
        with torch.no_grad():
            self._draws += 1
            for group, post in zip(self.param_groups, self._posts):
                unit_draws = post.draw(self._generator(post.device), train)
                post.write(group["params"], torch.cat([d.theta for d in unit_draws]))
                draws.append(unit_draws)
        modes = {u.per_example for g in self._posts for u in g.units} - {None}
        pe = None
        if train and modes:
            mode = modes.pop()
            kw = (
                dict(loss=self.curvature_loss, sigma2=self.sigma2)
                if mode == "ggn"
                else dict(reduction="mean")
            )
            pe = PerExample(self.model, mode="ggn" if mode == "ggn" else "ef", **kw)
        self._open_draw = outer or ("training" if train else "prediction")
        try:
            watch = contextlib.nullcontext() if train else self._watch_training_mode()
            with watch if pe is None else pe:
                yield handle
            if train:  # collected while the parameters still hold the draw: the gradients'
                # graph (an exact Hessian's backward passes) reads them
                squares = None
                if pe is not None:
                    if pe.num_examples == 0:
                        raise RuntimeError(
                            "the model was not called inside sampled_params(train=True), so "
                            "there is no per-example curvature"
                        )
                    squares = (pe.squared_grads(), float(pe.num_examples))
                for group, post, unit_draws in zip(self.param_groups, self._posts, draws):
                    post.collect(group["params"], unit_draws, handle.loss, squares)
                for pending, unit_draws in zip(self._pending, draws):
                    pending.append(unit_draws)
                self._count += 1
                self._collected_norm = self._grad_norm()
        finally:
            self._open_draw = None if outer == "held" else outer
            with torch.no_grad():
                if outer is not None:
                    for group, values in zip(self.param_groups, held):
                        torch._foreach_copy_([p.data for p in group["params"]], values)
                else:
                    for group, post in zip(self.param_groups, self._posts):
                        post.write(group["params"], post.center())

    @contextlib.contextmanager
    def mean_params(self) -> Iterator[None]:
        """The parameters hold E_q[θ] outside ``sampled_params`` already (a no-op context, for
        the interface every optimizer of :mod:`blr.optim` shares), unless ``draw_ahead`` keeps
        a draw in them: then E_q[θ] inside, and the draw back, exactly, on exit.

        Example:
            >>> import torch, expfam
            >>> from blr.optim import BLROptimizer
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=10)
            >>> with opt.mean_params():
            ...     model.weight.shape
            torch.Size([1, 3])
        """
        if self._held is None:
            yield
            return
        values = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]
        with torch.no_grad():
            for group, post in zip(self.param_groups, self._posts):
                post.write(group["params"], post.center())
        try:
            yield
        finally:
            with torch.no_grad():
                for group, saved in zip(self.param_groups, values):
                    torch._foreach_copy_([p.data for p in group["params"]], saved)

    # ------------------------------------------------------------------ draw-ahead
    @torch.no_grad()
    def _hold_draw(self) -> None:
        """``draw_ahead``: write a training draw of every group into the weights."""
        if not getattr(self, "draw_ahead", False) or self._held is not None or not self._posts:
            return
        self._draws += 1
        held = []
        for group, post in zip(self.param_groups, self._posts):
            unit_draws = post.draw(self._generator(post.device), True)
            post.write(group["params"], torch.cat([d.theta for d in unit_draws]))
            held.append(unit_draws)
        self._held = held

    @torch.no_grad()
    def _release_held(self) -> None:
        """The weights back to E_q[θ]; no draw held."""
        if self._held is None:
            return
        for group, post in zip(self.param_groups, self._posts):
            post.write(group["params"], post.center())
        self._held = None

    def _collect_held(self, loss: Tensor | None) -> None:
        """The gradients at the held draws as one sample (the weights keep the draws)."""
        for group, post, unit_draws in zip(self.param_groups, self._posts, self._held):
            post.collect(group["params"], unit_draws, loss, None)
        for pending, unit_draws in zip(self._pending, self._held):
            pending.append(unit_draws)
        self._count += 1
        self._collected_norm = self._grad_norm()

    def _closure_samples(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        if closure is None:
            return None
        losses = []
        for _ in range(self.mc_samples):
            with torch.enable_grad(), self.sampled_params(train=True) as draw:
                loss = closure()
                draw.set_loss(loss)
            losses.append(loss.detach())
        return sum(losses) / len(losses)

    def _clear(self) -> None:
        self._count = 0
        self._collected_norm = None
        for pending in self._pending:
            pending.clear()

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One BLR step per param group (per block of a Product) from the collected draws.

        With a ``closure`` (zero the gradients, compute the loss, ``backward``, return the loss)
        ``mc_samples`` draws are taken here; otherwise the draws collected by
        ``sampled_params(train=True)`` are used. Returns the loss averaged over the draws (with
        a closure), else None.

        Example:
            >>> import torch, expfam
            >>> from blr.optim import BLROptimizer
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=10,
            ...                    seed=0)
            >>> with opt.sampled_params(train=True):
            ...     model(torch.ones(2, 3)).sum().backward()
            >>> opt.step()
            >>> opt.param_groups[0]["step"]
            1
        """
        loss = self._closure_samples(closure)
        if self._held is not None and self._count == 0:  # draw_ahead: gradients at the draws
            self._collect_held(None)
        try:
            return self._step_samples(loss)
        finally:
            if self.draw_ahead:  # the next training draw (the last one is used, or skipped)
                self._held = None
                self._hold_draw()

    def _step_samples(self, loss: Tensor | None) -> Tensor | None:
        """:meth:`step` from the collected draws."""
        if self._count == 0:
            self._no_sample()
            return loss
        skip, inv = self._amp_begin(self._clear)
        if skip:
            return loss
        if inv is not None:
            self._unscale(inv)
        finite = all(  # NaN/Inf propagate through a sum: one reduction per tensor
            bool(torch.isfinite(d.grad.sum()))
            and (d.hess is None or bool(torch.isfinite(d.hess.sum())))
            and (d.value is None or bool(torch.isfinite(d.value)))
            for pending in self._pending
            for unit_draws in pending
            for d in unit_draws
        )
        if not finite:
            self._clear()
            if inv is not None:  # under GradScaler an overflow is expected: skip
                self.skipped_steps += 1
                return loss
            self._nonfinite_step("the gradients or the loss")
            return loss
        try:  # every block of every group is computed and checked before anything is written
            new, halvings = [], 0
            decays = []  # Π_{i≤t}(1 − ρ_i) of the square-root-scaled groups
            for group, post, pending in zip(self.param_groups, self._posts, self._pending):
                nats, kw = [], {}
                if group["sqrt_scaling"]:
                    decays.append(group["scale_decay"] * (1.0 - group["lr"]))
                    kw["debias"] = 1.0 - decays[-1] if decays[-1] != 1.0 else 1.0  # c_t
                for i, unit in enumerate(post.units):
                    unit_kw = kw if getattr(unit, "sqrt_scaling", False) else {}
                    nat, j = unit.update(group["lr"], [unit_draws[i] for unit_draws in pending],
                                         self.max_halvings, **unit_kw)  # fmt: skip
                    nats.append(nat)
                    halvings += j
                new.append(nats)
        except Exception:
            self._clear()
            raise
        decay = iter(decays)
        for group, post, nats in zip(self.param_groups, self._posts, new):  # commit
            for unit, nat in zip(post.units, nats):
                unit.nat = tmap(lambda t: t.detach(), nat)
            group["step"] += 1
            if group["sqrt_scaling"]:
                group["scale_decay"] = next(decay)
            post.write(group["params"], post.center())
        self.halvings += halvings
        self._clear()
        return loss

    def _unscale(self, inv: Tensor) -> None:
        """GradScaler's 1/S out of the collected draws: the gradients (1/S), exact Hessians
        (1/S) and per-example squared gradients (1/S²); the GGN does not use the gradient."""
        for post, pending in zip(self._posts, self._pending):
            for unit_draws in pending:
                for unit, d in zip(post.units, unit_draws):
                    d.grad = d.grad * inv.to(d.grad.dtype)
                    if d.hess is not None:
                        power = {"ggn": 0, "ef": 2}.get(getattr(unit, "per_example", None), 1)
                        d.hess = d.hess * (inv**power).to(d.hess.dtype)

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """λ and the prior's λ₀ of every group, the param groups (the family and estimator by
        name), the seed and the generators' states: all a bit-exact resume needs; loads with
        ``torch.load(weights_only=True)``.

        Example:
            >>> import torch, expfam
            >>> from blr.optim import BLROptimizer
            >>> opt = BLROptimizer(torch.nn.Linear(2, 1).parameters(), expfam.DiagGaussian(),
            ...                    lr=0.1, ess=10, seed=0)
            >>> sd = opt.state_dict()
            >>> sorted(sd["state"][0]), sd["param_groups"][0]["family"]
            (['nat', 'priors'], 'gaussian_diag')
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            g = {k: _portable(k, v) for k, v in group.items() if k != "params"}
            g["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(g)
        state = {
            i: {
                "nat": tuple(t.clone() for t in post.nat),
                "priors": [  # per block: λ₀ of a conjugate prior, or None
                    None if u.prior is None else tuple(t.clone() for t in u.prior)
                    for u in post.units
                ],
            }
            for i, post in enumerate(self._posts)
        }
        meta = header(self)
        meta["halvings"] = self.halvings
        if self._held is not None:  # draw_ahead: the draws the weights hold, to resume at them
            meta["held"] = [
                [{"theta": d.theta.clone(), "replay": d.replay} for d in unit_draws]
                for unit_draws in self._held
            ]
        return {"state": state, "param_groups": groups, "blr": meta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a BLROptimizer with the same groups, families and
        parameter shapes; any mismatch raises ValueError before anything is changed.

        Example:
            >>> import torch, expfam
            >>> from blr.optim import BLROptimizer
            >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
            >>> opt = BLROptimizer(a.parameters(), expfam.DiagGaussian(), lr=0.1, ess=10, seed=0)
            >>> other = BLROptimizer(b.parameters(), expfam.DiagGaussian(), lr=0.1, ess=10)
            >>> other.load_state_dict(opt.state_dict())
            >>> torch.equal(a.weight, b.weight)
            True
        """
        meta = check_layout(self, state_dict)
        loaded = []
        for i, (g, post) in enumerate(zip(state_dict["param_groups"], self._posts)):
            if g.get("family") != post.family.name:
                raise ValueError(
                    f"param group {i} has family {g.get('family')!r} in the state_dict and "
                    f"{post.family.name!r} here"
                )
            entry = state_dict["state"].get(i)
            if not isinstance(entry, dict) or "nat" not in entry:
                raise ValueError(f"state_dict lacks λ of param group {i}")
            where = f"state_dict['state'][{i}]"
            nats = post.split(entry["nat"], f"{where}['nat']")
            priors = entry.get("priors")
            if not isinstance(priors, list) or len(priors) != len(post.units):
                raise ValueError(f"{where}['priors'] must list one prior per block")
            priors = list(priors)
            for k, (unit, prior) in enumerate(zip(post.units, priors)):
                if (prior is None) != (unit.prior is None):
                    raise ValueError(f"param group {i}: the kind of prior of block {k} differs")
                if prior is not None:
                    priors[k] = unit.as_nat(prior, f"{where}['priors'][{k}]", check=False)
            loaded.append((nats, priors))
        with torch.no_grad():
            for group, g, post, (nats, priors) in zip(
                self.param_groups, state_dict["param_groups"], self._posts, loaded
            ):
                for unit, nat, prior in zip(post.units, nats, priors):
                    unit.nat, unit.prior = nat, prior
                for k, v in g.items():
                    if k != "params" and k not in _OBJECT_KEYS:
                        group[k] = v
                post.write(group["params"], post.center())
        restore_header(self, meta)
        self.halvings = int(meta.get("halvings", 0))
        self._clear()
        self._held = None  # (the weights hold E_q[θ] now)
        held = meta.get("held")
        if self.draw_ahead and held is not None:
            with torch.no_grad():
                self._held = []
                for group, post, saved in zip(self.param_groups, self._posts, held):
                    draws = [_Draw(h["theta"].to(post.device, post.dtype), h["replay"])
                             for h in saved]  # fmt: skip
                    post.write(group["params"], torch.cat([d.theta for d in draws]))
                    self._held.append(draws)
        self._hold_draw()


_OBJECT_KEYS = ("family", "estimator", "prior", "init", "gaussian")


def _portable(key: str, value: Any) -> Any:
    """A param group's entry as ``torch.load(weights_only=True)`` reads it back."""
    if key == "family":
        return value.name
    if key in ("prior", "init"):
        return None if value is None else "given"
    if key in _OBJECT_KEYS:
        return None if value is None else repr(value)
    return value


def _spread_prior(prior: ParameterPosterior, groups: list[dict]) -> list[dict]:
    """A posterior over several groups (a Product with one block per group, as
    ``BLROptimizer.posterior()`` returns) as each group's own prior."""
    fam = prior.family
    if not isinstance(fam, Product) or len(fam.families) != len(groups):
        raise ValueError(
            f"prior must be a Product posterior with one block per param group ({len(groups)}) "
            "when there are several groups, or be given per group"
        )
    out, start = [], 0
    for group, block, nat, dim in zip(groups, fam.families, fam.split(prior.nat), fam.dims):
        params = [group["params"]] if isinstance(group["params"], Tensor) else group["params"]
        params = list(params)
        count = len(params)
        layout = ParameterLayout(
            prior.layout.names[start : start + count], prior.layout.shapes[start : start + count]
        )
        start += count
        if layout.size != dim:
            raise ValueError("prior's blocks do not match the param groups' sizes")
        out.append(
            {
                "prior": ParameterPosterior(block, nat, layout=layout),
                **group,
                "params": params,
            }
        )
    return out


# ---------------------------------------------------------------------------- one group
class _Group:
    """A param group's posterior: the layout of its parameters and its blocks (one, or one per
    block of a Product family)."""

    def __init__(self, family, layout, units, device, dtype) -> None:
        self.family, self.layout, self.units = family, layout, units
        self.device, self.dtype = device, dtype

    @classmethod
    def build(cls, group: dict[str, Any], index: int) -> _Group:
        where = f"param group {index}"
        family = group["family"]
        if not isinstance(family, ExpFamily):
            raise TypeError(
                f"family must be an expfam.ExpFamily instance ({where}), got "
                f"{type(family).__name__}"
            )
        params = group["params"]
        if not params:
            raise ValueError(f"{where} has no parameters")
        for p in params:
            if not isinstance(p, Tensor) or not p.is_floating_point():
                raise TypeError(f"params must be floating-point tensors ({where})")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(f"the parameters of {where} lie on several devices: {devices}")
        if any(p.dtype != params[0].dtype for p in params):
            raise ValueError(f"the parameters of {where} have several dtypes")
        dtype = torch.promote_types(params[0].dtype, torch.float32)
        device = params[0].device
        layout = ParameterLayout.from_params(params)
        if layout.size == 0:
            raise ValueError(f"the parameters of {where} have no elements")
        theta0 = layout.flatten(params).to(dtype)
        if isinstance(family, Product):
            if family.dim != layout.size:
                raise ValueError(
                    f"family {family.name} covers {family.dim} coordinates, {where} has "
                    f"{layout.size}"
                )
            blocks = list(zip(family.families, family.slices))
        else:
            blocks = [(family, slice(0, layout.size))]
        n = len(blocks)
        estimators = _per_block(group["estimator"], n, "estimator")
        priors = _per_block_nat(group["prior"], family, layout, n, "prior", device, dtype)
        inits = _per_block_nat(group["init"], family, layout, n, "init", device, dtype)
        options = group["gaussian"]
        if options is not None and not isinstance(options, GaussianOptions):
            raise TypeError(f"gaussian must be a blr.GaussianOptions, got {type(options).__name__}")
        from blr.mixture import MixtureOptions
        from blr.optim._mixture_unit import MixtureUnit  # a mixture of Gaussians: its own block

        gaussian_like = (*_GAUSSIAN_STEP, Mixture)
        if options is not None and not any(isinstance(f, gaussian_like) for f, _ in blocks):
            raise TypeError(
                f"gaussian options need a DiagGaussian or FullGaussian ({where}), got {family.name}"
            )
        if options is not None and options.sqrt_scaling:
            raise ValueError(
                "gaussian: GaussianOptions(sqrt_scaling=True) preconditions by √S in the engine's "
                "units; the optimizer's square-root scaling (Vprop/Vadam) is "
                f"BLROptimizer(sqrt_scaling=True) ({where})"
            )
        if group["sqrt_scaling"]:
            wrong = [f.name for f, _ in blocks if isinstance(f, (GaussianLike, Mixture))
                     and not isinstance(f, DiagGaussian)]  # fmt: skip
            if wrong or not any(isinstance(f, DiagGaussian) for f, _ in blocks):
                raise ValueError(
                    f"sqrt_scaling needs diagonal Gaussians ({where}), got {family.name}"
                )
        if isinstance(options, MixtureOptions) and not isinstance(family, Mixture):
            raise TypeError(f"gaussian: MixtureOptions need a Mixture family ({where}), got "
                            f"{family.name}")  # fmt: skip
        units = []
        for k, (fam, coords) in enumerate(blocks):
            name = where if n == 1 else f"{where}, block {k} ({fam.name})"
            units.append(
                (MixtureUnit if isinstance(fam, Mixture) else _Unit).build(
                    fam,
                    coords,
                    theta0[coords],
                    group,
                    name,
                    estimators[k],
                    priors[k],
                    inits[k],
                    options,
                    device,
                    dtype,
                )
            )
        return cls(family, layout, units, device, dtype)

    @property
    def nat(self) -> tuple:
        if len(self.units) == 1 and not isinstance(self.family, Product):
            return self.units[0].nat
        return self.family.join([u.nat for u in self.units])

    def split(self, values: Any, name: str, check: bool = True) -> list[tuple]:
        """A checkpoint's λ (or λ₀) of this group, as the blocks' λ (checked)."""
        fam = self.family
        if not isinstance(values, tuple) or len(values) != len(fam.nat_type._fields):
            raise ValueError(f"{name} does not hold λ of {fam.name}")
        nat = fam.nat_type(*values)
        parts = fam.split(nat) if isinstance(fam, Product) else [nat]
        return [u.as_nat(part, name, check) for u, part in zip(self.units, parts)]

    def center(self) -> Tensor:
        """E_q[θ] of the group, ``(D,)``."""
        return torch.cat([u.center() for u in self.units])

    def draw(self, gen: torch.Generator, train: bool) -> list[_Draw]:
        return [u.draw(gen, train) for u in self.units]

    def write(self, params: list[Tensor], flat: Tensor) -> None:
        views = [v.to(p.dtype) for v, p in zip(self.layout.unflatten(flat).values(), params)]
        torch._foreach_copy_([p.data for p in params], views)

    def collect(
        self,
        params: list[Tensor],
        draws: list[_Draw],
        loss: Tensor | None,
        squares: tuple[dict, float] | None = None,
    ) -> None:
        """The gradients (and exact Hessians or per-example curvature, when a block asks for
        them) of a finished draw."""
        grads = [p.grad for p in params]
        flat = torch.cat(
            [
                torch.zeros(p.numel(), device=p.device, dtype=self.dtype)
                if g is None
                else g.detach().reshape(-1).to(self.dtype)
                for p, g in zip(params, grads)
            ]
        )
        for unit, d in zip(self.units, draws):
            d.grad = flat[unit.coords]
            d.value = loss
            if unit.exact_hessian:
                d.hess = unit.exact_hess(params, grads)
            elif unit.per_example is not None:  # the minibatch mean (1/M)Σ_i ĥ_i
                sq, m = squares
                d.hess = (
                    torch.cat(
                        [
                            torch.zeros(p.numel(), device=p.device, dtype=self.dtype)
                            if p not in sq
                            else sq[p].detach().reshape(-1).to(self.dtype)
                            for p in params
                        ]
                    )[unit.coords]
                    / m
                )


def _per_block(value: Any, n: int, name: str) -> list:
    """One entry for every block, or a sequence of one per block (checked by each block)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must give one entry per block ({n}), got {len(value)}")
        return list(value)
    return [value] * n


def _per_block_nat(value, family, layout, n, name, device, dtype) -> list:
    """A group's prior or init (a ParameterPosterior, λ of the family, or None), per block."""
    if value is None:
        return [None] * n
    if isinstance(value, ParameterPosterior):
        if name != "prior":
            raise TypeError("init must be λ of the family, not a ParameterPosterior")
        value = as_prior(value, family.name, layout.shapes, "the group's").nat
    if not isinstance(value, tuple) or type(value) is not family.nat_type:
        if not (isinstance(value, tuple) and len(value) == len(family.nat_type._fields)):
            raise TypeError(
                f"{name} must be a {family.nat_type.__name__} of the group's family "
                f"{family.name}, got {type(value).__name__}"
            )
        value = family.nat_type(*value)
    value = tmap(lambda t: torch.as_tensor(t).detach().to(device, dtype), value)
    return family.split(value) if isinstance(family, Product) else [value]


# ---------------------------------------------------------------------------- one block
class _Unit:
    """One block of a group's posterior: family, λ, prior, estimator, coordinates; how it
    draws, estimates ∇_μE_q[ℓ̄] from the draws and steps."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    @classmethod
    def build(
        cls, family, coords, theta0, group, where, estimator, prior, init, options, device, dtype
    ) -> _Unit:
        ess, wd = float(group["ess"]), float(group["weight_decay"])
        gaussian = options if isinstance(family, _GAUSSIAN_STEP) else None
        if gaussian is None and isinstance(family, _GAUSSIAN_STEP):
            gaussian = GaussianOptions(improved=True)
        unit = cls(
            family=family, coords=coords, device=device, dtype=dtype, ess=ess, weight_decay=wd,
            gaussian=gaussian, where=where,
            sqrt_scaling=bool(group["sqrt_scaling"]) and isinstance(family, DiagGaussian),
        )  # fmt: skip
        try:  # the parameters must lie in the family's support
            stats = family.suff_stats(theta0)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"params of {where} are not in the support of {family.name}: {err}"
            ) from err

        def check_shapes(value: tuple, what: str) -> None:  # λ and T(θ) pair up field by field
            for field, t, lam in zip(family.nat_type._fields, stats, value):
                if t.shape != lam.shape:
                    raise ValueError(
                        f"{what}.{field} has shape {tuple(lam.shape)}: the family "
                        f"{family.name} over the {theta0.numel()} coordinates of {where} needs "
                        f"{tuple(t.shape)}"
                    )

        unit.nat, unit.prior, unit.prior_as_loss = None, None, False
        if prior is not None:
            unit.prior = unit.as_nat(prior, "prior", check=False)
            check_shapes(unit.prior, "prior")
        elif isinstance(family, _GAUSSIAN_STEP):
            prec = torch.full_like(theta0, ess * wd)
            unit.prior = (
                family.nat_type(torch.zeros_like(theta0), -0.5 * prec)
                if isinstance(family, DiagGaussian)
                else family.nat_type(torch.zeros_like(theta0), -0.5 * torch.diag(prec))
            )
        elif isinstance(family, Bernoulli):
            unit.prior = family.nat_type(torch.zeros_like(theta0))
        else:
            unit.prior_as_loss = wd > 0
        if init is None:
            init = unit.default_init(theta0, float(group["hess_init"]))
        unit.nat = unit.as_nat(init, "init")
        check_shapes(unit.nat, "init")
        unit.center_field = None
        if not isinstance(family, GaussianLike):
            unit.center_field = identity_statistic(family, theta0)
            if unit.center_field is None:
                raise TypeError(
                    f"{family.name} has no sufficient statistic T_i(θ) = θ, so E_q[θ] (what the "
                    f"parameters hold between steps) is not one of its mean parameters ({where})"
                )
        unit.estimator = unit.resolve_estimator(estimator)
        hessian = getattr(unit.estimator, "hessian", None)
        unit.exact_hessian = hessian == "exact" and family.hessian_event_ndim is not None
        unit.per_example = {"ggn": "ggn", "per_example": "ef"}.get(hessian)
        if unit.per_example is not None and not isinstance(family, DiagGaussian):
            raise ValueError(
                f'hessian="{hessian}" gives diagonal curvature: it needs a DiagGaussian, got '
                f"{family.name} ({where})"
            )
        return unit

    def default_init(self, theta0: Tensor, hess_init: float) -> tuple:
        """Gaussians: mean θ₀, precision N·h₀ + S₀ (the prior's precision; N(h₀ + δ) for the
        default prior, as IVON); Bernoulli: λ = ±1 at the ±1 weights."""
        family = self.family
        if isinstance(family, _GAUSSIAN_STEP):
            prior_prec = (
                -(self.prior.lam2 + self.prior.lam2.mT)
                if isinstance(family, FullGaussian)
                else -2 * self.prior.lam2
            )
            data = torch.full_like(theta0, self.ess * hess_init)
            if isinstance(family, DiagGaussian):
                return family.from_moments(theta0, data + prior_prec)
            return family.from_moments(theta0, torch.diag(data) + prior_prec)
        if isinstance(family, FixedCovGaussian):
            return family.mean_to_nat(family.mean_type(theta0))
        if isinstance(family, Bernoulli):
            pm = theta0 if family.support == "pm1" else 2 * theta0 - 1
            if not ((pm == 1) | (pm == -1)).all():
                allowed = "{−1, +1}" if family.support == "pm1" else "{0, 1}"
                raise ValueError(
                    f"params of {self.where} are not in the support of {family.name}: they must "
                    f"take values in {allowed}"
                )
            return family.nat_type(pm if family.support == "pm1" else 2 * pm)
        raise ValueError(
            f"init is needed for {family.name} ({self.where}): pass λ at the start as a "
            f"{family.nat_type.__name__}"
        )

    def as_nat(self, value: Any, name: str, check: bool = True) -> tuple:
        family = self.family
        if isinstance(value, tuple) and len(value) == len(family.nat_type._fields):
            nat = family.nat_type(*value)
        else:
            raise TypeError(
                f"{name} must be a {family.nat_type.__name__} of the family {family.name} "
                f"({self.where}), got {type(value).__name__}"
            )
        nat = tmap(lambda t: torch.as_tensor(t).detach().to(self.device, self.dtype), nat)
        if self.nat is not None:
            for field, a, b in zip(family.nat_type._fields, nat, self.nat):
                if a.shape != b.shape:
                    raise ValueError(
                        f"{name}.{field} has shape {tuple(a.shape)}, λ of {self.where} "
                        f"{tuple(b.shape)}"
                    )
        if check:
            family.validate_nat(nat, name)
        return nat

    def resolve_estimator(self, estimator: Estimator | None) -> Estimator:
        family = self.family
        if estimator is None:
            if isinstance(family, GaussianLike):
                return BonnetPrice(hessian="stein")
            if isinstance(family, Bernoulli):
                return GumbelSoftmax(1.0)
            if family.has_rsample:
                return Reparam()
            return ScoreFunction(2)
        if not isinstance(estimator, Estimator):
            raise TypeError(f"estimator must be a blr.Estimator, got {type(estimator).__name__}")
        if isinstance(estimator, BonnetPrice):
            if not isinstance(family, GaussianLike):
                raise TypeError(f"{type(estimator).__name__} needs a Gaussian family, got "
                                f"{family.name} ({self.where})")  # fmt: skip
            if estimator.points == "sigma":
                raise ValueError('estimator points="sigma" needs the loss as a function of θ; '
                                 "use blr.functional.ModuleLoss with blr.BLR")  # fmt: skip
            if estimator.hessian not in ("stein", "grad_sq", "exact", "ggn", "per_example"):
                raise ValueError(f"unknown estimator hessian {estimator.hessian!r}")
        elif isinstance(estimator, Reparam):
            if estimator.points != "mc":
                raise ValueError('Reparam(points="sigma") needs the loss as a function of θ')
            if not family.has_rsample:
                raise TypeError(f"Reparam needs a reparameterized sampler, which {family.name} "
                                "lacks; use ScoreFunction")  # fmt: skip
        elif isinstance(estimator, GumbelSoftmax):
            if not isinstance(family, Bernoulli):
                raise TypeError(f"GumbelSoftmax needs a Bernoulli family, got {family.name}")
        elif not isinstance(estimator, ScoreFunction):
            raise TypeError(
                f"{type(estimator).__name__} cannot be estimated from the draws of a training "
                "loop; use BonnetPrice, Delta, Reparam, ScoreFunction or GumbelSoftmax"
            )
        n = getattr(estimator, "n_samples", 1)
        if isinstance(estimator, BonnetPrice) and estimator.points == "mean":
            n = 1
        if n != 1 and not isinstance(estimator, ScoreFunction):
            raise ValueError(
                f"the estimator's n_samples ({n}) must be 1: the draws per step are the "
                "optimizer's (mc_samples, or the sampled_params(train=True) contexts)"
            )
        return estimator

    # ------------------------------------------------------------------ draws
    def location(self) -> Tensor:
        """m of a Gaussian block, computed once per λ (a full Gaussian's costs a Cholesky)."""
        cached = getattr(self, "_location", None)
        if cached is None or cached[0] is not self.nat:
            cached = (self.nat, self.family.location(self.nat))
            self._location = cached
        return cached[1]

    def precision(self) -> Tensor:
        """s = −2·lam2 of a diagonal Gaussian block (not cached: one pass, no memory held)."""
        return -2 * self.nat.lam2

    def center(self) -> Tensor:
        """E_q[θ] of the block."""
        if self.center_field is None:
            return self.location()
        return self.family.nat_to_mean(self.nat, validate=False)[self.center_field]

    def draw(self, gen: torch.Generator, train: bool) -> _Draw:
        fam, nat, est = self.family, self.nat, self.estimator
        if not train:
            return _Draw(fam.sample(nat, (1,), gen, validate=False)[0])
        if isinstance(est, BonnetPrice):
            if est.points == "mean":
                return _Draw(self.location().clone())
            if isinstance(fam, DiagGaussian):  # fam.sample's m + z/√s, from the cached m and s
                s = self.precision()
                z = torch.randn((1, *s.shape), dtype=s.dtype, device=s.device, generator=gen)[0]
                return _Draw(self.location() + z * torch.rsqrt(s))
            return _Draw(fam.sample(nat, (1,), gen, validate=False)[0])
        if isinstance(est, Reparam):
            state = gen.get_state()
            return _Draw(fam.rsample(nat, (1,), gen, validate=False)[0].detach(), replay=state)
        if isinstance(est, GumbelSoftmax):
            lam_pm = nat.lam1 if fam.support == "pm1" else 0.5 * nat.lam1
            u = torch.rand((1, *lam_pm.shape), dtype=lam_pm.dtype, device=lam_pm.device,
                           generator=gen)  # fmt: skip
            eps = 0.5 * (torch.log(u) - torch.log1p(-u))
            arg = ((lam_pm + eps) / est.temperature)[0]
            theta_pm = torch.tanh(arg)
            x = theta_pm if fam.support == "pm1" else (theta_pm + 1) / 2
            return _Draw(x, replay=arg)
        return _Draw(fam.sample(nat, (1,), gen, validate=False)[0])  # score function

    def exact_hess(self, params: list[Tensor], grads: list[Tensor | None]) -> Tensor:
        """∇²ℓ over the block's coordinates (full or diagonal) at the draw, by one backward pass
        per coordinate through the gradients' graph (``backward(create_graph=True)``)."""
        if any(g is not None and g.grad_fn is None for g in grads):
            raise RuntimeError(
                'hessian="exact" needs the gradients\' graph: call loss.backward('
                "create_graph=True) inside sampled_params(train=True)"
            )
        flat = torch.cat(
            [
                torch.zeros(p.numel(), device=p.device, dtype=p.dtype)
                if g is None
                else g.reshape(-1)
                for p, g in zip(params, grads)
            ]
        )
        full = self.family.hessian_event_ndim == 2
        rows = []
        with torch.enable_grad():
            for j in range(self.coords.start, self.coords.stop):
                parts = torch.autograd.grad(flat[j], params, retain_graph=True, allow_unused=True)
                row = torch.cat(
                    [
                        torch.zeros(p.numel(), device=p.device, dtype=p.dtype)
                        if r is None
                        else r.reshape(-1)
                        for p, r in zip(params, parts)
                    ]
                )[self.coords]
                rows.append(row if full else row[j - self.coords.start])
        return torch.stack(rows).to(self.dtype).detach()

    # ------------------------------------------------------------------ the update
    def update(
        self, rho: float, draws: list[_Draw], max_halvings: int, debias: float = 1.0
    ) -> tuple[tuple, int]:
        """λ_{t+1} of the block (and the number of halvings it took); ``debias`` is c_t of the
        square-root scaling."""
        n = self.ess
        if len(draws) == 1:  # (no copies for one draw)
            theta, grads = draws[0].theta.unsqueeze(0), (draws[0].grad * n).unsqueeze(0)
        else:
            theta = torch.stack([d.theta for d in draws])
            grads = torch.stack([d.grad for d in draws]) * n  # ∇(Nℓ) at each draw
        values = None
        if all(d.value is not None for d in draws):
            values = torch.stack([d.value for d in draws]).to(self.dtype) * n
        hess = None
        if self.exact_hessian or self.per_example is not None:
            hess = torch.stack([d.hess for d in draws]) * n
        if self.prior_as_loss:  # −log p₀ = ½Nδ‖θ‖² (+ const)
            grads = grads + n * self.weight_decay * theta
            if values is not None:
                values = values + 0.5 * n * self.weight_decay * (theta * theta).sum(-1)
        fam = self.family
        if self.sqrt_scaling:
            if isinstance(self.estimator, BonnetPrice):
                g_hat, h_hat = self.bonnet_price(theta, grads, hess)
            else:
                g_hat, h_hat = fam.gh_from_mean_grad(
                    self.nat, self.grad_mean(theta, grads, values, hess, draws)
                )
            new = self.sqrt_scaled_step(rho, g_hat, h_hat, debias)
            if not bool(torch.isfinite(new[0].sum())):
                raise FloatingPointError(
                    f"the BLR step overflowed in {self.where}; the state was not changed"
                )
            return new, 0
        if isinstance(fam, DiagGaussian) and isinstance(self.estimator, BonnetPrice):
            # gaussian_step's (m, s)-form directly: m and s are cached per λ, and the round
            # trip (ĝ, Ĥ) → ∇_μ → (ĝ, Ĥ) is skipped; the conjugate prior N(m₀, 1/s₀) adds
            # s₀(m − m₀) to ĝ and s₀ to Ĥ
            g_hat, h_hat = self.bonnet_price(theta, grads, hess)
            m, s, s0 = self.location(), self.precision(), -2 * self.prior.lam2
            m_new, s_new = diag_moments_step(
                m, s, g_hat + s0 * m - self.prior.lam1, h_hat + s0, rho=rho,
                options=self.gaussian,
            )  # fmt: skip
            new = fam.nat_type(s_new * m_new, -0.5 * s_new)
            if not bool(torch.isfinite(new[0].sum())):  # (an overflow, with finite inputs)
                raise FloatingPointError(
                    f"the BLR step overflowed in {self.where}; the state was not changed"
                )
            return new, 0
        grad_mean = self.grad_mean(theta, grads, values, hess, draws)
        if isinstance(fam, _GAUSSIAN_STEP) and self.prior is not None:
            total = tmap(torch.sub, grad_mean, self.prior)
            # λ is valid by construction and the draws were checked for NaN/Inf: the step
            # checks the new precision's positivity only
            new = gaussian_step(fam, self.nat, total, rho=rho, options=self.gaussian,
                                validate=False)  # fmt: skip
            if not bool(torch.isfinite(new[0].sum())):  # (an overflow, with finite inputs)
                raise FloatingPointError(
                    f"the BLR step overflowed in {self.where}; the state was not changed"
                )
            return new, 0
        direction = natural_gradient(fam, self.nat, grad_mean, self.prior)
        return self.safe_apply(direction, rho, max_halvings)

    def grad_mean(
        self,
        theta: Tensor,
        grads: Tensor,
        values: Tensor | None,
        hess: Tensor | None,
        draws: list[_Draw],
    ) -> tuple:
        """∇_μE_q[ℓ̄] (the data part, and the prior when it is not conjugate) from the draws."""
        fam, nat, est = self.family, self.nat, self.estimator
        k = theta.shape[0]
        if isinstance(est, BonnetPrice):
            return fam.mean_grad_from_gh(nat, *self.bonnet_price(theta, grads, hess))
        if isinstance(est, Reparam):
            with torch.enable_grad():
                mean = tmap(lambda t: t.detach().requires_grad_(), fam.nat_to_mean(nat))
                lam = fam.mean_to_nat(mean, validate=False)
                total = 0.0
                for d, g in zip(draws, grads):
                    gen = torch.Generator(device=self.device)
                    gen.set_state(d.replay)
                    th = fam.rsample(lam, (1,), gen, validate=False)[0]
                    total = total + (g * th).sum()
                out = torch.autograd.grad(total / k, tuple(mean), allow_unused=True)
            return fam.nat_type(
                *(torch.zeros_like(m) if o is None else o for o, m in zip(out, mean))
            )
        if isinstance(est, GumbelSoftmax):
            lam_pm = nat.lam1 if fam.support == "pm1" else 0.5 * nat.lam1
            arg = torch.stack([d.replay for d in draws])  # a = (λ + ε)/τ, θ_τ = tanh a
            g_pm = grads if fam.support == "pm1" else 0.5 * grads
            grad_pm = (est.scale(arg, lam_pm) * g_pm).mean(0)
            return fam.nat_type(grad_pm if fam.support == "pm1" else 2 * grad_pm)
        # score function: F⁻¹ mean((ℓ̄_k − b_k)(T(θ_k) − μ))
        if values is None:
            raise ValueError(
                "the score-function estimator needs the loss of each draw: use step(closure), "
                "or record it with draw.set_loss(loss) inside sampled_params(train=True)"
            )
        if k < 2:
            raise ValueError("the score-function estimator needs at least 2 draws per step")
        # (per batch element of the family: its Fisher is block-diagonal over them)
        t = flatten(fam.suff_stats(theta, validate=False), fam.event_ndims).to(self.dtype)
        mu = flatten(fam.nat_to_mean(nat, validate=False), fam.event_ndims)
        b = (values.sum(0, keepdim=True) - values) / (k - 1) if est.baseline else 0.0
        centred = (values - b).reshape(k, *([1] * (t.ndim - 1)))
        score = (centred * (t - mu)).mean(0)
        sol = solve_psd(expfam_generic.fisher(fam, nat), score)
        return unflatten(sol, nat, fam.event_ndims)

    def bonnet_price(
        self, theta: Tensor, grads: Tensor, hess: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """(ĝ, Ĥ) of the Bonnet/Price estimators from the draws (Ĥ None for FixedCov)."""
        fam, nat, est = self.family, self.nat, self.estimator
        one = grads.shape[0] == 1  # (one draw: its values, no averaging pass)
        g_hat = grads[0] if one else grads.mean(0)
        kind = fam.hessian_event_ndim
        if kind is None:
            return g_hat, None
        if est.hessian in ("exact", "ggn", "per_example"):
            h_hat = hess[0] if one else hess.mean(0)
            if self.prior_as_loss:
                ones = torch.ones_like(g_hat)
                eye = ones if kind == 1 else torch.diag(ones)
                h_hat = h_hat + self.ess * self.weight_decay * eye
            return g_hat, h_hat
        if est.hessian == "grad_sq":
            if kind == 2:
                return g_hat, g_hat.unsqueeze(-1) * g_hat.unsqueeze(-2)
            if self.sqrt_scaling:  # per example: N·ḡ⊙ḡ = ĝ⊙ĝ/N
                return g_hat, g_hat * g_hat / self.ess
            return g_hat, g_hat * g_hat
        r = theta - self.location()
        if kind == 2:  # Stein: sym(S(θ − m)∇ℓᵀ)
            sr = r @ (-2 * nat.lam2).mT  # S is symmetric: rows (S r_k)ᵀ
            outer = sr.unsqueeze(-1) * grads.unsqueeze(-2)
            return g_hat, (0.5 * (outer + outer.mT)).mean(0)
        h = grads * r * self.precision()  # ∇ℓ(θ)⊙(θ − m)⊙s
        return g_hat, h[0] if one else h.mean(0)

    def sqrt_scaled_step(self, rho: float, g_hat: Tensor, h_hat: Tensor, debias: float) -> tuple:
        """The square-root-scaled step of a diagonal Gaussian (``BLROptimizer(sqrt_scaling=
        True)``): S − S₀ by the (improved) BLR with rate ρ, then
        m ← m − α(ĝ + S₀(m − m₀))/(√(N(S − S₀)/c_t) + S₀ + ε)."""
        nat, prior, opts = self.nat, self.prior, self.gaussian
        s, s0 = -2 * nat.lam2, -2 * prior.lam2
        m = nat.lam1 / s
        data = s - s0
        big_g = h_hat - data
        data_new = data + rho * big_g
        if opts.improved:
            data_new = data_new + 0.5 * rho**2 * big_g * big_g / s
        in_mean = data if opts.improved and opts.improved_mean == "old" else data_new
        precond = torch.sqrt(self.ess * in_mean.clamp_min(0) / debias) + s0 + opts.damping
        if not bool((data_new >= 0).all()) or not bool((precond > 0).all()):
            raise ValueError(
                f"the square-root-scaled step of {self.where} needs S − S₀ ≥ 0 and a positive "
                f"preconditioner (min S − S₀ {data_new.min().item():.3g}); use a non-negative "
                "curvature estimate, GaussianOptions(improved=True) or a smaller lr; the state "
                "was not changed"
            )
        alpha = rho if opts.lr is None else float(opts.lr)
        m_new = m - alpha * (g_hat + s0 * m - prior.lam1) / precond
        s_new = data_new + s0
        return self.family.nat_type(s_new * m_new, -0.5 * s_new)

    def safe_apply(self, direction: tuple, rho: float, max_halvings: int) -> tuple[tuple, int]:
        """λ − (ρ/2ʲ)·d for the smallest j that stays in the family's domain."""
        for j in range(max_halvings + 1):
            new = tmap(lambda lam, d, r=rho / 2**j: lam - r * d, self.nat, direction)
            try:
                self.family.validate_nat(new, "nat")
            except ValueError:
                continue
            return new, j
        raise ValueError(
            f"the BLR step left the domain of {self.family.name} ({self.where}) even at "
            f"rho/2^{max_halvings}; the state was not changed (lower lr, or raise max_halvings)"
        )
