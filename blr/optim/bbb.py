r"""Bayes by backprop (Blundell, Cornebise, Kavukcuoglu & Wierstra, ICML 2015) as a
``torch.optim`` optimizer: a mean-field Gaussian over the parameters, trained by Adam on the
negative ELBO, the expectation by one reparameterized draw per sample."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.adam import adam

from blr.optim._args import RunOptions, Unpack, hyper_rules
from blr.optim._base import MonteCarloOptimizer
from blr.optim._checkpoint import check_entry, check_layout, header, restore_header
from blr.posterior import ParameterPosterior, as_prior
from expfam import DiagGaussian

__all__ = ["BayesByBackprop"]

_STATE = ("step", "rho", "exp_avg", "exp_avg_sq", "rho_exp_avg", "rho_exp_avg_sq")


def _inv_softplus(x: float) -> float:
    """ρ with softplus(ρ) = x (x > 0)."""
    return x + math.log(-math.expm1(-x))


def _kl_terms(
    means: list[Tensor], stds: list[Tensor], priors: list[tuple[float | Tensor, float | Tensor]]
) -> list[Tensor]:
    """KL(N(m, σ²) ‖ N(m₀, δ⁻¹)) of each tensor, summed over its elements:
    ½Σ(δσ² + δ(m − m₀)² − 1 − log δσ²), with (δ, m₀) per tensor (numbers or tensors)."""
    terms = []
    for m, s, (prec, m0) in zip(means, stds, priors):
        var = prec * s * s
        d = m - m0
        terms.append(0.5 * (var + prec * d * d - 1 - torch.log(var)).sum())
    return terms


class BayesByBackprop(MonteCarloOptimizer):
    r"""Bayes by backprop (Blundell et al., ICML 2015): a mean-field Gaussian
    q(θ) = N(m, diag σ²), σ = softplus(ρ), over the parameters, with prior N(0, δ⁻¹I), trained
    by Adam on (m, ρ) to minimize the negative ELBO per example,

    .. math::
        \mathcal L(m, \rho) = \mathbb E_{z\sim\mathcal N(0, I)}\Big[\frac1M\sum_{i\in B}
        \ell_i(m + \sigma\odot z)\Big] + \frac1N\,\mathrm{KL}\big(\mathcal N(m, \sigma^2)\,\|\,
        \mathcal N(0, \delta^{-1}I)\big),\qquad
        \mathrm{KL} = \tfrac12\sum_j\big(\delta\sigma_j^2 + \delta m_j^2 - 1
        - \log\delta\sigma_j^2\big),

    the expectation by reparameterized draws θ = m + σ⊙z. With ĝ = ∇ℓ(θ) (the minibatch MEAN
    loss, what ``backward`` leaves in ``.grad`` inside :meth:`sampled_params`), the gradients
    Adam receives are

    .. math::
        \nabla_m\mathcal L = \hat g + \nabla_m\mathrm{KL}/N,\qquad
        \nabla_\rho\mathcal L = \operatorname{sigmoid}(\rho)\odot\hat g\odot z
        + \nabla_\rho\mathrm{KL}/N,

    averaged over the Monte Carlo samples of the step; the KL gradients are taken by autograd
    of the closed form above. Unlike the BLR optimizers (:class:`~blr.optim.Vadam`,
    :class:`~blr.optim.IVON`), this is ordinary (Euclidean) gradient descent on the ELBO: the
    baseline of the UCI benchmark (docs/uci.md).

    The interface is that of the library's other optimizers: forward and backward inside
    ``with opt.sampled_params(train=True):`` (the parameters hold θ = m + σ⊙z there and the
    mean m again on exit, exactly), then :meth:`step`; or ``step(closure)``, which draws
    ``mc_samples`` samples itself. Outside the context the parameters ARE the means m, so
    ``model.state_dict()`` saves m and the optimizer's :meth:`state_dict` saves ρ, Adam's
    moments, the step counters and the random generators (resume: load both). The optimizer is
    a posterior for :mod:`blr.predict` (``predict_regression(model, opt, x, n_samples=S)``);
    :meth:`posterior` gives q as a :class:`~blr.ParameterPosterior`. State is kept in
    each parameter's dtype (as ``torch.optim.Adam`` does).

    Args:
        params: parameters or param groups (groups may set their own ``lr``, ``ess``,
            ``prior_prec``, ``init_std``, ``betas``, ``eps``). Parameters that do not require
            a gradient are left alone.
        lr: Adam's learning rate α, for m and ρ alike.
        ess: N, the training-set size (the KL is divided by it).
        prior_prec: δ, the prior precision.
        prior: a diagonal Gaussian :class:`blr.ParameterPosterior` N(m₀, S₀⁻¹) over the trained
            parameters, e.g. the previous task's ``posterior()``, in place of N(0, δ⁻¹I).
        init_std: σ at the start (ρ₀ = softplus⁻¹(init_std)).
        betas: Adam's (β₁, β₂).
        mc_samples: draws per ``step(closure)``.
        eps: Adam's ε.
        nonfinite: ``"raise"`` (a FloatingPointError) or ``"skip"`` (count the step in
            ``skipped_steps`` and leave the state alone) when the ELBO gradient has a NaN/Inf.
        seed: seed of the optimizer's own generators (default: drawn from torch's global RNG).
        missing_sample: ``step()`` without a collected sample: ``"raise"`` or ``"skip"``.

    Example:
        >>> import torch
        >>> from blr.optim import BayesByBackprop
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = BayesByBackprop(model.parameters(), lr=0.01, ess=100, init_std=0.1, seed=0)
        >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
        >>> [round(s, 6) for s in opt.std()[0].flatten().tolist()]   # σ starts at init_std
        [0.1, 0.1]
        >>> with opt.sampled_params(train=True):   # θ = m + σ⊙z in the parameters
        ...     opt.zero_grad()
        ...     torch.nn.functional.mse_loss(model(x), y).backward()
        >>> opt.step()                             # one Adam step on (m, ρ)
        >>> all(abs(s - 0.1) < 0.0011 for s in opt.std()[0].flatten().tolist())
        True

    References:
        Blundell, Cornebise, Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks",
        ICML 2015.
    """

    # torch.amp.GradScaler hands the scale to step(): removed from the collected gradients
    _step_supports_amp_scaling = True
    _hyper = hyper_rules(
        nonnegative=("lr", "eps"), positive=("ess", "prior_prec", "init_std"), rate_pair=("betas",)
    )

    def __init__(
        self,
        params: Any,
        lr: float,
        ess: float,
        prior_prec: float = 1.0,
        init_std: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        mc_samples: int = 1,
        *,
        eps: float = 1e-8,
        prior: ParameterPosterior | None = None,
        draw_ahead: bool = False,
        **options: Unpack[RunOptions],
    ) -> None:
        if isinstance(betas, (tuple, list)):
            betas = tuple(float(b) for b in betas)
        defaults = dict(
            lr=lr, ess=ess, prior_prec=prior_prec, init_std=init_std, betas=betas, eps=eps
        )
        super().__init__(params, defaults, mc_samples=mc_samples, **options)
        self._inside = False
        self._open_means: dict[Tensor, Tensor] = {}  # the means while a draw is open
        self._acc: dict[int, tuple[Tensor, Tensor]] = {}  # id(p) → averaged data gradients
        self._collected_norm: Tensor | None = None  # ‖grads‖ at the last collection
        for group in self.param_groups:
            self._init_group(group)
        self._prior_of = None if prior is None else self._prior_map(prior)
        self.draw_ahead = bool(draw_ahead)
        self._held: list[tuple[Tensor, Tensor, Tensor]] | None = None  # (p, m, z) held
        self._hold_draw()  # draw_ahead: the weights hold a training draw from the start

    def _prior_map(self, prior: ParameterPosterior) -> dict[int, tuple[Tensor, Tensor]]:
        """Parameter → (δ, m₀) of a diagonal Gaussian prior N(m₀, δ⁻¹) per coordinate."""
        mine = self._all_params()
        prior = as_prior(prior, "gaussian_diag", [p.shape for p in mine])
        out = {}
        for p, (lam1, lam2) in zip(mine, prior.fields_per_parameter()):
            prec0 = -2 * lam2
            out[id(p)] = (prec0.to(p.device, p.dtype), (lam1 / prec0).to(p.device, p.dtype))
        return out

    def _priors(self, group: dict, params: list[Tensor]) -> list[tuple[Any, Any]]:
        """(δ, m₀) of each parameter: the group's N(0, δ⁻¹), or the prior= posterior's."""
        if self._prior_of is None:
            return [(group["prior_prec"], 0.0)] * len(params)
        scalar = (group["prior_prec"], 0.0)  # (a group added later keeps its own δ)
        return [self._prior_of.get(id(p), scalar) for p in params]

    # ------------------------------------------------------------------ set-up
    def _init_group(self, group: dict[str, Any]) -> None:
        for p in self._trainable(group):
            if not p.is_floating_point():
                raise TypeError(
                    f"params must be floating-point tensors, got one of dtype {p.dtype}"
                )
            self._init_state(p, group)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)  # as torch.optim.Adam's
            state["rho"] = torch.full_like(p, _inv_softplus(float(group["init_std"])))
            for name in ("exp_avg", "exp_avg_sq", "rho_exp_avg", "rho_exp_avg_sq"):
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _trainable(group: dict[str, Any]) -> list[Tensor]:
        return [p for p in group["params"] if p.requires_grad]

    def _params(self, group: dict[str, Any]) -> list[Tensor]:
        """The group's trainable parameters, each with its state (a parameter unfrozen after
        the optimizer was made gets its state now)."""
        params = self._trainable(group)
        for p in params:
            self._init_state(p, group)
        return params

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in self._params(group)]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (a dict with ``"params"`` and, optionally, its own ``lr``, ``ess``,
        ``prior_prec``, ``init_std``, ``betas``, ``eps``); its ρ starts at its ``init_std``.

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
            >>> opt = BayesByBackprop(body.parameters(), lr=0.01, ess=10, seed=0)
            >>> opt.add_param_group({"params": head.parameters(), "init_std": 0.2})
            >>> [round(float(s.max()), 6) for s in opt.std()]
            [0.05, 0.05, 0.2, 0.2]
        """
        super().add_param_group(param_group)  # (its hyperparameters checked)
        if hasattr(self, "_acc"):  # torch.optim's __init__ adds the first groups: see ours
            self._init_group(self.param_groups[-1])

    # ------------------------------------------------------------------ q
    @torch.no_grad()
    def std(self) -> list[Tensor]:
        """σ = softplus(ρ), one tensor per trainable parameter (param-group order).

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> opt = BayesByBackprop(torch.nn.Linear(2, 1).parameters(), lr=0.01, ess=10,
            ...                       init_std=0.3)
            >>> [tuple(s.shape) for s in opt.std()], round(float(opt.std()[1]), 6)
            ([(1, 2), (1,)], 0.3)
        """
        return [F.softplus(self.state[p]["rho"]) for p in self._all_params()]

    @torch.no_grad()
    def kl(self) -> Tensor:
        """KL(q ‖ N(0, δ⁻¹I)) over all trainable parameters (each group with its δ).

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> p = torch.nn.Parameter(torch.zeros(3))
            >>> opt = BayesByBackprop([p], lr=0.01, ess=10, prior_prec=1.0, init_std=1.0)
            >>> float(opt.kl())   # q = p = N(0, I)
            0.0
        """
        terms = []
        for group in self.param_groups:
            ps = self._params(group)
            stds = [F.softplus(self.state[p]["rho"]) for p in ps]
            terms += [t.double() for t in _kl_terms(ps, stds, self._priors(group, ps))]
        return torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64)

    def posterior(self, model: nn.Module | None = None) -> ParameterPosterior:
        """q as a :class:`~blr.ParameterPosterior` over the optimizer's parameters (or
        ``model``'s, which must be this optimizer's trainable parameters, in
        ``model.parameters()`` order, and then name the layout): a
        :class:`~expfam.DiagGaussian` with mean m and precision 1/σ², whose draws come from this
        optimizer's generator.

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, init_std=0.5)
            >>> q = opt.posterior(model)
            >>> q.family.nat_to_mean(q.nat)[0].shape   # weight and bias, flattened
            torch.Size([3])
        """
        mine = self._all_params()
        theirs = mine if model is None else list(model.parameters())
        if len(mine) != len(theirs) or any(a is not b for a, b in zip(mine, theirs)):
            raise ValueError(
                "model's parameters must be this optimizer's trainable parameters, in "
                "model.parameters() order"
            )
        fam = DiagGaussian()
        with torch.no_grad():
            m = torch.cat([p.detach().reshape(-1) for p in mine])
            s = torch.cat([s.reshape(-1) for s in self.std()])
        return ParameterPosterior(
            fam,
            fam.from_moments(m, 1.0 / (s * s)),
            mine if model is None else model,
            generator=self._generator(m.device),
        )

    # ------------------------------------------------------------------ sampling
    @contextlib.contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Within the context the parameters hold a posterior draw θ = m + σ⊙z, z ~ N(0, I)
        (one ``torch.randn`` per parameter from the optimizer's generator); on exit they hold the
        mean m again, exactly (also when the body raises). With ``train=True`` the gradients
        ``∇ℓ(θ)`` present on exit are collected, with z, as one Monte Carlo sample for the next
        :meth:`step` (accumulate micro-batches by calling ``backward`` several times inside).
        A prediction draw may be nested in an open draw (on exit the open draw is back,
        exactly); a nested training draw raises RuntimeError.

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, seed=0)
            >>> mean = model.weight.clone()
            >>> with opt.sampled_params():       # a posterior draw, e.g. for prediction
            ...     torch.equal(model.weight, mean)
            False
            >>> torch.equal(model.weight, mean)  # the mean again on exit
            True
        """
        if self._held is not None and train and self._count == 0:
            # draw_ahead: the held draw is this sample (the weights keep it)
            self._inside = True
            try:
                yield
            finally:
                self._inside = False
            self._collect(self._held)
            return
        if self._held is not None and train:  # a further sample: a fresh draw around m
            self._release_held()
        was_inside = self._inside
        outer = was_inside or self._held is not None
        if outer and train:
            raise RuntimeError(
                "sampled_params(train=True) inside another sampled_params context: a training "
                "draw cannot be nested; nothing was changed"
            )
        drawn: list[tuple[Tensor, Tensor, Tensor]] = []  # (parameter, its mean, z)
        with torch.no_grad():
            for p in self._all_params():
                gen = self._generator(p.device)
                z = torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=gen)
                held = p.detach().clone()  # the mean, or the open draw (nested prediction)
                mean = self._open_means[p] if outer else held
                p.copy_(mean + F.softplus(self.state[p]["rho"]) * z)
                drawn.append((p, held, z))
        self._draws += 1
        if not outer:
            self._open_means = {p: held for p, held, _ in drawn}
        self._inside = True
        failed = True
        try:
            with contextlib.nullcontext() if train else self._watch_training_mode():
                yield
            failed = False
        finally:
            with torch.no_grad():
                for p, held, _ in drawn:
                    p.copy_(held)
            self._inside = was_inside
            if not outer:
                self._open_means = {}
        if train and not failed:
            self._collect(drawn)

    def mean_params(self) -> contextlib.AbstractContextManager:
        """Within the context the parameters hold the posterior mean m: outside
        :meth:`sampled_params` they always do, so this is a no-op (it exists for
        :mod:`blr.predict`, which predicts at the mean with ``n_samples=0``).

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, seed=0)
            >>> mean = model.weight.clone()
            >>> with opt.mean_params():
            ...     torch.equal(model.weight, mean)
            True
        """
        return self._at_mean()

    @contextlib.contextmanager
    def _at_mean(self) -> Any:
        if self._held is None:
            yield
            return
        values = [p.detach().clone() for p, _, _ in self._held]
        with torch.no_grad():
            for p, mean, _ in self._held:
                p.copy_(mean)
        try:
            yield
        finally:
            with torch.no_grad():
                for (p, _, _), v in zip(self._held, values):
                    p.copy_(v)

    # ------------------------------------------------------------------ draw-ahead
    @torch.no_grad()
    def _hold_draw(self) -> None:
        """``draw_ahead``: θ = m + σ⊙z written into the weights, kept until the next step."""
        if not self.draw_ahead or self._held is not None:
            return
        held = []
        for p in self._all_params():
            z = torch.randn(p.shape, dtype=p.dtype, device=p.device,
                            generator=self._generator(p.device))  # fmt: skip
            mean = p.detach().clone()
            p.copy_(mean + F.softplus(self.state[p]["rho"]) * z)
            held.append((p, mean, z))
        self._draws += 1
        self._held = held
        self._open_means = {p: mean for p, mean, _ in held}

    @torch.no_grad()
    def _release_held(self) -> None:
        """The weights back to the means, exactly; no draw held."""
        if self._held is None:
            return
        for p, mean, _ in self._held:
            p.copy_(mean)
        self._held = None
        self._open_means = {}

    def _collect(self, drawn: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Turn the gradients ĝ at θ = m + σ⊙z into the data part of the ELBO gradient,
        (ĝ, σ'(ρ)⊙ĝ⊙z), and fold it into the running average over samples."""
        if not drawn:
            return
        with torch.no_grad():
            grads = [
                torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                for p, _, _ in drawn
            ]
        with torch.enable_grad():  # the softplus chain rule by autograd, as backprop does
            rho = [self.state[p]["rho"].detach().requires_grad_() for p, _, _ in drawn]
            g_rho = torch.autograd.grad(
                [F.softplus(r) for r in rho],
                rho,
                grad_outputs=[g * z for g, (_, _, z) in zip(grads, drawn)],
            )
        self._count += 1
        k = self._count
        self._collected_norm = self._grad_norm()
        with torch.no_grad():
            for (p, _, _), gm, gr in zip(drawn, grads, g_rho):
                if k == 1 or id(p) not in self._acc:
                    self._acc[id(p)] = (gm, gr)
                else:  # Welford means
                    am, ar = self._acc[id(p)]
                    am.add_(gm - am, alpha=1.0 / k)
                    ar.add_(gr - ar, alpha=1.0 / k)

    def _reset_samples(self) -> None:
        self._count = 0
        self._acc = {}
        self._collected_norm = None

    # ------------------------------------------------------------------ the step
    def _elbo_grads(
        self, group: dict[str, Any], params: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """∇_m 𝓛 and ∇_ρ 𝓛 of ``params`` (their collected samples and KL/N by autograd)."""
        with torch.enable_grad():
            means = [p.detach().requires_grad_() for p in params]
            rho = [self.state[p]["rho"].detach().requires_grad_() for p in params]
            terms = _kl_terms(means, [F.softplus(r) for r in rho], self._priors(group, params))
            kl_grads = torch.autograd.grad(
                terms,
                [*means, *rho],
                grad_outputs=[torch.ones_like(t) / group["ess"] for t in terms],
            )
        n = len(params)
        with torch.no_grad():
            g_m = [kl_grads[i] + self._acc[id(p)][0] for i, p in enumerate(params)]
            g_rho = [kl_grads[n + i] + self._acc[id(p)][1] for i, p in enumerate(params)]
        return g_m, g_rho

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One Adam step on (m, ρ) with the ELBO gradient of the collected samples (averaged).

        With a ``closure`` (which must zero the gradients, compute the loss and call
        ``backward``), ``mc_samples`` draws are taken here. Without one, the samples collected
        by ``sampled_params(train=True)`` are used; none is an error (or a no-op with
        ``missing_sample="skip"``). A NaN/Inf in the gradient raises FloatingPointError (or
        skips the step with ``nonfinite="skip"``) before anything is changed.

        Returns the loss averaged over the samples (with a closure), else None.

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, seed=0)
            >>> def closure():
            ...     opt.zero_grad()
            ...     loss = model(torch.ones(2, 3)).pow(2).mean()
            ...     loss.backward()
            ...     return loss
            >>> loss = opt.step(closure)
            >>> int(opt.state_dict()["state"][0]["step"])
            1
        """
        if self._inside:
            raise RuntimeError(
                "BayesByBackprop.step() was called inside sampled_params(): leave the context "
                "first (the parameters hold a draw there, not the mean)"
            )
        loss = self._closure_samples(closure)
        if self._held is not None and self._count == 0:  # draw_ahead: gradients at the draw
            self._collect(self._held)
        self._release_held()  # (Adam updates the means)
        try:
            return self._step_samples(loss)
        finally:
            self._hold_draw()  # draw_ahead: the next training draw

    def _step_samples(self, loss: Tensor | None) -> Tensor | None:
        """:meth:`step` from the collected samples."""
        if self._count == 0:
            self._no_sample()
            return loss
        skip, inv = self._amp_begin(self._reset_samples)
        if skip:
            return loss
        if inv is not None:  # both parts are linear in the gradient: 1/S
            with torch.no_grad():
                for am, ar in self._acc.values():
                    am.mul_(inv.to(am.dtype))
                    ar.mul_(inv.to(ar.dtype))
        plans = []
        for group in self.param_groups:
            params = [p for p in self._params(group) if id(p) in self._acc]
            if params:
                plans.append((group, params, *self._elbo_grads(group, params)))
        bad = any(
            not bool(torch.isfinite(sum(g.sum() for g in (*g_m, *g_rho))))
            for _, _, g_m, g_rho in plans
        )
        self._reset_samples()
        if bad and inv is not None:  # under GradScaler an overflow is expected: skip
            self.skipped_steps += 1
            return loss
        if bad:
            self._nonfinite_step("the ELBO gradient")
            return loss
        for group, params, g_m, g_rho in plans:
            states = [self.state[p] for p in params]
            steps = [s["step"] for s in states]
            beta1, beta2 = group["betas"]
            adam(
                [*params, *(s["rho"] for s in states)],
                [*g_m, *g_rho],
                [*(s["exp_avg"] for s in states), *(s["rho_exp_avg"] for s in states)],
                [*(s["exp_avg_sq"] for s in states), *(s["rho_exp_avg_sq"] for s in states)],
                [],
                # one counter per parameter: ρ's Adam takes the same t from a copy
                [*steps, *(t.clone() for t in steps)],
                foreach=None,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=0.0,
                eps=group["eps"],
                maximize=False,
            )
        return loss

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state (per parameter: ``rho``, Adam's ``step``, ``exp_avg``,
        ``exp_avg_sq`` for m and ``rho_exp_avg``, ``rho_exp_avg_sq`` for ρ; the param groups)
        and, under ``"blr"``, the seed and the generators' states. The means m are the
        parameters: save them with the model.

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, seed=0)
            >>> sd = opt.state_dict()
            >>> sorted(sd["state"][0]), sd["blr"]["seed"]
            (['exp_avg', 'exp_avg_sq', 'rho', 'rho_exp_avg', 'rho_exp_avg_sq', 'step'], 0)
        """
        self._all_params()  # every trainable parameter has its state
        out = super().state_dict()
        out["blr"] = header(self)
        if self._held is not None:  # draw_ahead: the means and offsets of the held draw
            out["blr"]["held"] = [{"mean": m.clone(), "z": z.clone()} for _, m, z in self._held]
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of this class for the same parameter layout (copied,
        so the argument is not changed by later steps); a foreign or mismatched one raises
        ValueError before anything is changed. Load the model's state (the means) too.

        Example:
            >>> import torch
            >>> from blr.optim import BayesByBackprop
            >>> model, other = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
            >>> opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, seed=0)
            >>> resumed = BayesByBackprop(other.parameters(), lr=0.01, ess=10)  # another seed
            >>> other.load_state_dict(model.state_dict()); resumed.load_state_dict(opt.state_dict())
            <All keys matched successfully>
            >>> with opt.sampled_params(), resumed.sampled_params():  # the same next draw
            ...     torch.equal(model.weight, other.weight)
            True
        """
        meta = check_layout(self, state_dict)
        groups, state = state_dict["param_groups"], state_dict["state"]
        for g, mine in zip(groups, self.param_groups):
            for k, p in zip(g["params"], mine["params"]):
                if p.requires_grad:
                    check_entry(state.get(k), _STATE, k, tuple(p.shape), tuple(p.shape))
        copied = {k: {n: v.clone() for n, v in e.items()} for k, e in state.items()}
        super().load_state_dict({"state": copied, "param_groups": groups})
        restore_header(self, meta)
        self._reset_samples()
        held = meta.get("held")
        self._held, self._open_means = None, {}
        if self.draw_ahead and held is not None:  # (the model's state holds the draw itself)
            self._held = [(p, h["mean"].clone(), h["z"].clone())
                          for p, h in zip(self._all_params(), held)]  # fmt: skip
            self._open_means = {p: m for p, m, _ in self._held}
        elif self.draw_ahead:
            self._hold_draw()
