"""Vadam: Adam's update with weight perturbation, the diagonal-Gaussian BLR with squared-gradient
curvature and square-root scaling (Khan et al., 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from blr.kernels.diag_gaussian import vadam_noise, vadam_step_
from blr.optim._args import SamplingOptions, Unpack, hyper_rules
from blr.optim._base import SamplingOptimizer
from blr.optim._buckets import Bucket
from blr.posterior import ParameterPosterior


class Vadam(SamplingOptimizer):
    r"""Variational Adam (Khan, Nielsen, Tangkaratt, Lin, Gal & Srivastava, ICML 2018):

    .. math::
        \theta &= m + \sigma\odot z,\quad \sigma = (N s + \delta)^{-1/2},\qquad
        \hat g = \nabla\ell(\theta)\ \text{(mean loss)},\\
        \bar g &\leftarrow \beta_1\bar g + (1-\beta_1)(\hat g + \tfrac{\delta}{N} m),\qquad
        s \leftarrow \beta_2 s + (1-\beta_2)\hat g^2,\\
        m &\leftarrow m - \alpha\,\frac{\bar g/(1-\beta_1^t)}{\sqrt{s/(1-\beta_2^t)}
            + \delta/N}.

    It is Adam run at weight-perturbed points with a Gaussian prior N(0, δ⁻¹I) (Khan & Rue 2023,
    Table 1 row 5, the square-root scaling heuristic, and row 9's sampling). With β₁ = 0 it is
    :class:`~blr.optim.BLROptimizer` over a diagonal Gaussian with ``sqrt_scaling=True``,
    ``estimator=BonnetPrice(hessian="grad_sq")``, ρ = 1 − β₂, ``weight_decay=δ/N``,
    ``hess_init=s₀`` and ``gaussian=GaussianOptions(lr=α, improved=False)``: the posterior
    N(m, (Ns + δ)⁻¹) is the one its draws come from (tests check it, and the step as
    :func:`blr.gaussian_step` with ``sqrt_scaling``).

    Args:
        params: parameters or param groups.
        lr: α.
        ess: N, the training-set size.
        prior_prec: δ, the prior precision.
        betas: (β₁, β₂).
        prec_init: initial s (> 0 so that the first draws are not too wide).
        mc_samples: draws per ``step(closure)``.
        prior: a diagonal Gaussian :class:`blr.ParameterPosterior` over the trained parameters
            (group after group), e.g. the previous task's ``posterior()``: N(m₀, S₀⁻¹) in place of
            N(0, δ⁻¹): δ = S₀ and the decay (δ/N)⊙(m − m₀) per coordinate.
        nonfinite, seed, missing_sample, process_group: as in :class:`~blr.optim.IVON`.
        sync: per-rank noise under ``torch.distributed`` (as in :class:`~blr.optim.IVON`): the
            optimizer averages ĝ across ranks itself, and ŝ = ĝ² is formed from the average.
            With the default shared noise, DDP's average is already the ĝ of the concatenated
            batch.

    Example:
        >>> import torch
        >>> from blr.optim import Vadam
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = Vadam(model.parameters(), lr=0.01, ess=100)
        >>> with opt.sampled_params(train=True):
        ...     model(torch.randn(8, 3)).pow(2).mean().backward()
        >>> opt.step()
    """

    _state_names = ("mean", "exp_avg", "exp_avg_sq")
    _has_stat = False  # the curvature ĝ² is formed from the (averaged) gradient in the update

    _hyper = hyper_rules(
        nonnegative=("lr", "prior_prec"), positive=("ess", "prec_init"), rate_pair=("betas",)
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        ess: float = 1.0,
        prior_prec: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        prec_init: float = 1.0,
        mc_samples: int = 1,
        prior: ParameterPosterior | None = None,
        **options: Unpack[SamplingOptions],
    ) -> None:
        defaults = dict(
            lr=lr, ess=ess, prior_prec=prior_prec, betas=tuple(betas), prec_init=prec_init
        )
        super().__init__(params, defaults, mc_samples=mc_samples, **options)
        self._set_prior(prior)
        self._hold_draw()  # draw_ahead: the weights hold a training draw from the start

    def _init_bucket(self, group: dict, bucket: Bucket) -> None:
        bucket.state["exp_avg_sq"].fill_(group["prec_init"])

    def _prior_values(self, group: dict, fields: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        prec0 = -2 * fields[1]
        return prec0, fields[0] / prec0  # (δ per coordinate, m₀)

    def _posterior_fields(
        self, group: dict, param: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, ...]:
        """N(m, 1/(N s + δ)) (the draws' σ) as λ = (S m, −½S)."""
        prior = getattr(self, "_prior_of", None)
        delta = prior[id(param)][0] if prior else group["prior_prec"]
        prec = group["ess"] * state["exp_avg_sq"] + delta
        return prec * state["mean"], -0.5 * prec

    def _noise(self, group: dict, bucket: Bucket, generator: torch.Generator) -> None:
        vadam_noise(
            bucket.state["exp_avg_sq"],
            prior_prec=group["prior_prec"] if bucket.prior is None else bucket.prior[0],
            ess=group["ess"],
            generator=generator,
            out=bucket.noise,
            scratch=bucket.scratch,
        )

    def _stat_power(self) -> int:
        return 0  # no statistic: ŝ = ĝ² is formed from the (unscaled) average in the update

    def _sample_stat(self, group: dict, bucket: Bucket, grad: Tensor, out: Tensor) -> Tensor:
        return out.zero_()  # Vadam's curvature is ĝ² of the averaged gradient

    def _update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor) -> None:
        beta1, beta2 = group["betas"]
        vadam_step_(
            bucket.state["mean"],
            bucket.state["exp_avg"],
            bucket.state["exp_avg_sq"],
            g_hat,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            prior_prec=group["prior_prec"] if bucket.prior is None else bucket.prior[0],
            ess=group["ess"],
            step=group["step"],
            scratch=bucket.scratch,
            prior_mean=None if bucket.prior is None else bucket.prior[1],
        )
