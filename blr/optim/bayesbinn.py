"""BayesBiNN: Bayesian training of binary neural networks by the BLR on Bernoulli weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from blr.kernels.bernoulli import bayesbinn_step_, relaxed_sample_, relaxed_scale
from blr.optim._args import SamplingOptions, Unpack, check_choice, hyper_rules
from blr.optim._base import SamplingOptimizer
from blr.optim._buckets import Bucket
from blr.posterior import ParameterPosterior
from expfam import Bernoulli


class BayesBiNN(SamplingOptimizer):
    r"""BayesBiNN (Meng, Bachmann & Khan, ICML 2020): binary weights θ ∈ {−1, +1} with a mean-field
    Bernoulli posterior q(θ_j = 1) = σ(2λ_j), learned by the BLR with the Gumbel-softmax
    relaxation (Khan & Rue 2023, Table 1 row 10):

    .. math::
        \theta_\tau = \tanh\frac{\lambda + \epsilon}{\tau},\ \
        \epsilon = \tfrac12\log\tfrac{u}{1-u},\qquad
        \lambda \leftarrow \lambda - \alpha\Big[N\,\overline{s\odot\nabla\ell(\theta_\tau)}
        + \kappa(\lambda - \lambda_0)\Big],\quad
        s = \frac{1-\theta_\tau^2}{\tau(1-\tanh^2\lambda)}.

    Inside ``sampled_params(train=True)`` (or ``step(closure)``) the parameters hold relaxed draws
    θ_τ; outside they hold ``eval_point``: the posterior mean tanh λ (``"mean"``) or the most
    probable binary weights sign λ (``"sign"``). The λ of each parameter starts at
    ``init_scale``·(its initial values) (e.g. ±1 weights ⇒ λ = ±init_scale).

    Symbols → arguments: α = ``lr``, N = ``ess`` (training-set size), τ = ``temperature``,
    κ = ``kl_weight``, λ₀ = ``prior_lam``; ``beta`` > 0 averages the bracket (with bias correction).

    Args:
        params: parameters or param groups.
        lr: α.
        ess: N.
        temperature: τ > 0.
        kl_weight: κ ≥ 0 (κ = 1 is the BLR).
        prior_lam: λ₀ (a number; 0 is the uniform prior).
        beta: momentum of the bracket, in [0, 1); also held as the group key ``"momentum"``,
            which ``OneCycleLR``/``CyclicLR`` with ``cycle_momentum=True`` move (pass
            ``cycle_momentum=False`` to keep β).
        init_scale: λ = init_scale · (initial parameter values).
        mc_samples: draws per ``step(closure)``.
        eval_point: ``"mean"`` or ``"sign"``.
        prior: a ±1 Bernoulli :class:`blr.ParameterPosterior` over the trained parameters (group
            after group), e.g. the previous task's ``posterior()``: λ₀ per coordinate in place of
            ``prior_lam``.
        nonfinite, seed, missing_sample, process_group: as in :class:`~blr.optim.IVON`.
        sync: per-rank relaxed draws under ``torch.distributed`` (as in
            :class:`~blr.optim.IVON`): the optimizer averages s⊙∇ℓ across ranks itself. With
            the default shared draws, s⊙ĝ of DDP's averaged ĝ is that of the concatenated batch.

    Example:
        >>> import torch
        >>> from blr.optim import BayesBiNN
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(4, 1, bias=False)
        >>> x = torch.randn(32, 4)
        >>> y = (x @ torch.tensor([1.0, -1.0, 1.0, 1.0]) > 0).float()
        >>> opt = BayesBiNN(model.parameters(), lr=0.05, ess=32, temperature=1.0)
        >>> for _ in range(50):
        ...     def closure():
        ...         opt.zero_grad()
        ...         loss = torch.nn.functional.binary_cross_entropy_with_logits(
        ...             model(x).squeeze(-1), y)
        ...         loss.backward()
        ...         return loss
        ...     _ = opt.step(closure)
        >>> model.weight.sign()
        tensor([[ 1., -1.,  1.,  1.]], grad_fn=<SignBackward0>)

    References:
        Meng, Bachmann & Khan, "Training Binary Neural Networks using the Bayesian Learning
        Rule", ICML 2020.
    """

    _state_names = ("lam", "momentum")
    _alias_first = False  # the parameters hold draws or tanh λ, not λ
    _momentum_key = "beta"
    _hyper = hyper_rules(
        nonnegative=("lr", "kl_weight"), positive=("ess", "temperature"), rate=("beta",)
    )

    def __init__(
        self,
        params: Any,
        lr: float,
        ess: float,
        temperature: float = 1.0,
        kl_weight: float = 1.0,
        prior_lam: float = 0.0,
        beta: float = 0.0,
        init_scale: float = 1.0,
        mc_samples: int = 1,
        eval_point: str = "mean",
        prior: ParameterPosterior | None = None,
        **options: Unpack[SamplingOptions],
    ) -> None:
        self.eval_point = check_choice(eval_point, "eval_point", ("mean", "sign"))
        defaults = dict(
            lr=lr,
            ess=ess,
            temperature=temperature,
            kl_weight=kl_weight,
            prior_lam=float(prior_lam),
            beta=beta,
            init_scale=float(init_scale),
        )
        super().__init__(params, defaults, mc_samples=mc_samples, **options)
        self._set_prior(prior)
        self._hold_draw()  # draw_ahead: the weights hold a training draw from the start

    _posterior_family = Bernoulli("pm1")

    def _posterior_fields(
        self, group: dict, param: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, ...]:
        """q(θ = 1) = σ(2λ) on {−1, +1}."""
        return (state["lam"],)

    def _prior_values(self, group: dict, fields: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return fields  # λ₀

    def _init_bucket(self, group: dict, bucket: Bucket) -> None:
        bucket.state["lam"].mul_(group["init_scale"])
        bucket.write_params(self._center(group, bucket))

    def _draw(self, group: dict, bucket: Bucket, generator: torch.Generator) -> Tensor:
        relaxed_sample_(
            bucket.state["lam"],
            temperature=group["temperature"],
            generator=generator,
            out=bucket.noise,
        )
        return torch.tanh(bucket.noise, out=bucket.work)

    def _center(self, group: dict, bucket: Bucket) -> Tensor:
        lam = bucket.state["lam"]
        return torch.tanh(lam) if self.eval_point == "mean" else torch.sign(lam)

    def _sample_stat(self, group: dict, bucket: Bucket, grad: Tensor, out: Tensor) -> Tensor:
        scale = relaxed_scale(bucket.noise, bucket.state["lam"], group["temperature"])
        return torch.mul(scale, grad, out=out)

    def _update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor) -> None:
        bayesbinn_step_(
            bucket.state["lam"],
            bucket.state["momentum"],
            stat,
            lr=group["lr"],
            ess=group["ess"],
            prior_lam=group["prior_lam"] if bucket.prior is None else bucket.prior[0],
            kl_weight=group["kl_weight"],
            beta=group["beta"],
            step=group["step"],
        )
