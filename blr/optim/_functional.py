r"""The IVON update as one function over flat buffers, dispatching to its implementations (as
``torch.optim.adam.adam`` dispatches to its single-tensor, multi-tensor and fused forms).

:func:`ivon_update_` is the step of :class:`~blr.optim.IVON`, :class:`~blr.optim.VON`,
:class:`~blr.optim.VOGN` and :class:`~blr.optim.OGN`:

.. math::
    \bar g &\leftarrow \beta_1\bar g + (1-\beta_1)\hat g,\qquad
    h \leftarrow \beta_2 h + (1-\beta_2)\hat h
        \;[+\ \tfrac12(1-\beta_2)^2 (h - \hat h)^2/(h + \delta)],\\
    m &\leftarrow m - \alpha\,\operatorname{clip}\Big(\frac{\bar g/(1-\beta_1^t) + \delta m}
        {h + \delta}, \pm r\Big),\qquad \alpha = \text{lr}\cdot(h_0 + \delta)\
        \text{if rescale\_lr},

with ĥ formed from the averaged sample statistic (:func:`~blr.kernels.diag_gaussian.
ivon_hess_estimate_`: Price ĥ = N(h + δ)·E[σz⊙ĝ], or N·E[ĝ²]) or given (VOGN's curvature). The
learning-rate rescaling is written here, once; the implementations share the bias correction
(:func:`~blr.kernels.diag_gaussian.ivon_bias`):

- ``"eager"``: :func:`~blr.kernels.diag_gaussian.ivon_step_`, chunked in-place torch ops (any
  device, any options);
- ``"compile"``: the ``torch.compile``'d one-loop update of
  :func:`blr.kernels.diag_gaussian.compiled` (the Price estimate with the correction, or a
  given ĥ without it; no clipping), hyperparameters as one tensor so that schedulers do not
  recompile;
- ``"triton"``: :func:`~blr.kernels.triton_ivon.ivon_fused_step_`, one pass that regenerates the
  sample's noise from its counter (one Monte Carlo sample, no statistic buffer) and, with
  draw-ahead, writes the next draw into the weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from blr.kernels.diag_gaussian import (
    compiled,
    ivon_bias,
    ivon_hess_estimate_,
    ivon_scale_noise_,
    ivon_step_,
)
from blr.optim._buckets import CounterNoise


def ivon_lr(lr: float, hess_init: float, weight_decay: float, rescale_lr: bool) -> float:
    """α: ``lr``, times h₀ + δ with ``rescale_lr`` (ivon-opt's convention)."""
    return lr * (hess_init + weight_decay) if rescale_lr else lr


def ivon_update_(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    g_hat: Tensor,
    stat: Tensor | None,
    *,
    lr: float,
    ess: float,
    hess_init: float,
    weight_decay: float,
    beta1: float,
    beta2: float,
    step: int,
    clip_radius: float = math.inf,
    hess_approx: str | None = "price",
    rescale_lr: bool = True,
    debias: bool = True,
    correction: bool = True,
    impl: str = "eager",
    scratch: Tensor | None = None,
    counter: CounterNoise | None = None,
    prior: tuple[Tensor, Tensor] | None = None,
) -> None:
    """One IVON update (module docstring) of the flat state (m, ḡ, h), in place.

    Args:
        mean, momentum, hess: the state; with ``impl="triton"`` and a draw held between steps
            (``counter.pending``), ``mean`` holds that draw θ and ends holding the next one.
        g_hat: ĝ, the gradient averaged over the samples (in the state dtype; for
            ``"triton"`` any float dtype).
        stat: the averaged sample statistic, overwritten: σz⊙ĝ (``hess_approx="price"``),
            ĝ² (``"gradsq"``), or ĥ itself (``None``); None with ``impl="triton"`` (the kernel
            forms the statistic of its one sample).
        lr, ess, hess_init, weight_decay, beta1, beta2, step, clip_radius: the group's
            hyperparameters (``step`` t ≥ 1).
        hess_approx: how ``stat`` gives ĥ (above).
        rescale_lr, debias, correction: α = lr·(h₀ + δ); divide ḡ by 1 − β₁^t; the improved-BLR
            term of the h update.
        impl: ``"eager"``, ``"compile"`` or ``"triton"`` (module docstring).
        scratch: the eager path's work buffer.
        counter: the counter-based noise of the bucket (``"triton"``): the sample's draw and
            the draw-ahead state, advanced when the step writes the next draw.
        prior: (δ, m₀), flat tensors: a prior N(m₀, 1/(Nδ)) per coordinate in place of the
            scalar ``weight_decay`` (``impl="eager"`` only; the lr rescaling keeps the scalar).
    """
    fn = _IMPLS.get(impl)
    if fn is None:
        raise ValueError(f"impl must be one of {tuple(_IMPLS)}, got {impl!r}")
    if prior is not None:
        if impl != "eager":
            raise ValueError(f"a per-coordinate prior needs impl='eager', got {impl!r}")
        _eager_ivon(
            mean, momentum, hess, g_hat, stat, ivon_lr(lr, hess_init, weight_decay, rescale_lr),
            ess, prior[0], beta1, beta2, step, clip_radius, hess_approx, debias, correction,
            scratch, counter, prior_mean=prior[1],
        )  # fmt: skip
        return
    # (positional: the step runs this for every bucket, Python's keyword binding is not free)
    fn(
        mean, momentum, hess, g_hat, stat, ivon_lr(lr, hess_init, weight_decay, rescale_lr), ess,
        weight_decay, beta1, beta2, step, clip_radius, hess_approx, debias, correction, scratch,
        counter,
    )  # fmt: skip


def _eager_ivon(
    mean, momentum, hess, g_hat, stat, lr, ess, weight_decay, beta1, beta2, step, clip_radius,
    hess_approx, debias, correction, scratch, counter, prior_mean=None,
):  # fmt: skip
    """:func:`~blr.kernels.diag_gaussian.ivon_step_` after ĥ from the statistic, in place."""
    h_hat = stat
    if hess_approx is not None:  # in place: the statistic is not needed afterwards
        h_hat = ivon_hess_estimate_(
            stat, hess, ess=ess, weight_decay=weight_decay, hess_approx=hess_approx
        )
    ivon_step_(
        mean, momentum, hess, g_hat, h_hat, lr=lr, beta1=beta1, beta2=beta2,
        weight_decay=weight_decay, step=step, clip_radius=clip_radius, debias=debias,
        correction=correction, scratch=scratch, prior_mean=prior_mean,
    )  # fmt: skip


def _compiled_ivon(
    mean, momentum, hess, g_hat, stat, lr, ess, weight_decay, beta1, beta2, step, clip_radius,
    hess_approx, debias, correction, scratch, counter,
):  # fmt: skip
    """(m, ḡ, h) by the ``torch.compile``'d update of :func:`blr.kernels.diag_gaussian.
    compiled`; the hyperparameters travel as one tensor."""
    if math.isfinite(clip_radius) or (hess_approx, correction) not in (
        ("price", True),
        (None, False),
    ):
        raise ValueError(
            "the compiled IVON update covers the Price estimate with the correction and a "
            f"given ĥ without it, unclipped; got hess_approx={hess_approx!r}, "
            f"correction={correction}, clip_radius={clip_radius}"
        )
    bias = ivon_bias(beta1, step, debias)
    if hess_approx == "price":
        name, hp = "update", [lr, beta1, beta2, weight_decay, ess, bias]
    else:
        name, hp = "vogn_update", [lr, beta1, beta2, weight_decay, bias]
    compiled(name)(
        mean, momentum, hess, g_hat, stat, torch.tensor(hp, dtype=stat.dtype, device=stat.device)
    )


def _triton_ivon(
    mean, momentum, hess, g_hat, stat, lr, ess, weight_decay, beta1, beta2, step, clip_radius,
    hess_approx, debias, correction, scratch, counter,
):  # fmt: skip
    """The fused Triton step of the current draw ``counter.drawn`` (the kernel forms the
    statistic of its one sample: ``stat`` is None); with a draw held between steps it goes
    θ → θ' in one pass and holds the next draw."""
    from blr.kernels.triton_ivon import ivon_fused_step_

    ahead = counter.pending is not None
    next_draw = counter.draws
    ivon_fused_step_(
        mean, momentum, hess, g_hat, mean, seed=counter.seed, draw=counter.drawn, lr=lr,
        beta1=beta1, beta2=beta2, weight_decay=weight_decay, ess=ess, step=step,
        clip_radius=clip_radius, debias=debias, hess_approx=hess_approx, correction=correction,
        sample_next=ahead, next_draw=next_draw, mean_from_sample=ahead,
    )  # fmt: skip
    if ahead:
        counter.hold(counter.take(), fresh=True)


_IMPLS = {"eager": _eager_ivon, "compile": _compiled_ivon, "triton": _triton_ivon}


# --------------------------------------------------------------------------- draws
def compiled_draw_(
    mean: Tensor,
    hess: Tensor,
    noise: Tensor,
    *,
    ess: float,
    weight_decay: float,
    generator: torch.Generator,
) -> None:
    """σ⊙z into ``noise`` and θ = m + σ⊙z into ``mean`` (the weights), in place, in one
    ``torch.compile``'d loop after the normal draw."""
    torch.randn(noise.shape, generator=generator, out=noise, dtype=noise.dtype, device=noise.device)
    hp = torch.tensor([ess, weight_decay], dtype=noise.dtype, device=noise.device)
    compiled("draw")(noise, hess, mean, hp)


def counter_draw_(
    mean: Tensor,
    hess: Tensor,
    counter: CounterNoise,
    draw: int,
    *,
    ess: float,
    weight_decay: float,
    subtract: bool = False,
) -> None:
    """Weights (= m) ← m ± σz_draw in place, z regenerated by the Triton sample kernel."""
    from blr.kernels.triton_ivon import ivon_fused_sample_

    ivon_fused_sample_(
        mean,
        hess,
        mean,
        seed=counter.seed,
        draw=draw,
        ess=ess,
        weight_decay=weight_decay,
        subtract=subtract,
    )


def counter_noise_(
    noise: Tensor,
    hess: Tensor,
    counter: CounterNoise,
    *,
    ess: float,
    weight_decay: float,
    scratch: Tensor | None = None,
) -> Tensor:
    """σ⊙z of the current draw ``counter.drawn``, regenerated into ``noise`` (needed only when
    more than one sample is averaged)."""
    from blr.kernels.triton_ivon import ivon_randn_

    ivon_randn_(noise, seed=counter.seed, draw=counter.drawn)
    return ivon_scale_noise_(noise, hess, ess=ess, weight_decay=weight_decay, scratch=scratch)
