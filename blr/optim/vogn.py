"""VOGN and OGN: the diagonal-Gaussian BLR with per-example Gauss–Newton curvature."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from blr.curvature import PerExample, resolve
from blr.curvature.likelihoods import FACTORED
from blr.optim._args import SamplingOptions, Unpack, check_choice, hyper_rules
from blr.optim._base import PrecisionSampler
from blr.optim._buckets import Bucket
from blr.optim._distributed import _world_size
from blr.posterior import ParameterPosterior


class VOGN(PrecisionSampler):
    r"""Variational Online Gauss–Newton (Khan et al., ICML 2018; Osawa et al., NeurIPS 2019;
    Khan & Rue 2023, Table 1 rows 8–9): the diagonal-Gaussian BLR where the Hessian is the minibatch
    mean of per-example Gauss–Newton (or squared-gradient) curvature, evaluated at a posterior draw:

    .. math::
        \theta &= m + \sigma\odot z,\quad \sigma = (N(h+\delta))^{-1/2},\qquad
        \hat g = \tfrac1M\textstyle\sum_{i\in B}\nabla\ell_i(\theta),\quad
        \hat h = \tfrac1M\textstyle\sum_{i\in B} h_i(\theta),\\
        \bar g &\leftarrow \beta_1\bar g + (1-\beta_1)\hat g,\qquad
        h \leftarrow \beta_2 h + (1-\beta_2)\hat h,\qquad
        m \leftarrow m - \alpha\,\frac{\bar g/(1-\beta_1^t) + \delta m}{h + \delta},

    with h_i = diag(J_iᵀΛ_iJ_i) (``curvature="ggn"``), its one-sample Monte Carlo estimate
    (``"mc_fisher"``) or [∇ℓ_i]² (``"ef"``), all ≥ 0, so h + δ stays positive without the
    improved-BLR term. ``sample=False`` evaluates at the mean instead: OGN (Row 8, the delta
    method). The update is the IVON kernel without its correction term, i.e. :func:`blr.step`
    in its BLR limit (β₁ = 0, α = 1 − β₂).

    The curvature comes from :class:`~blr.curvature.PerExample` on ``model``, entered
    automatically inside ``sampled_params(train=True)``: run the model's forward (and, for
    ``"ef"``, the backward of the minibatch-MEAN loss) inside it.

    Args:
        params: the parameters to optimize, or param groups, as for every torch optimizer
            (e.g. ``model.parameters()``); each must be a parameter of ``model``.
        lr: α.
        ess: N, the training-set size.
        weight_decay: δ, the prior precision per example.
        beta1, beta2: rates of ḡ and h (β₁ is also the group key ``"momentum"``, which
            ``OneCycleLR``/``CyclicLR`` with ``cycle_momentum=True`` move). h keeps h₀β₂ᵗ of
            its start after t steps: for h to be learned within a budget of T steps take
            β₂ = ρ^{1/T}, ρ ≪ 1 (:func:`blr.optim.beta2_for_steps`; the rule in
            :class:`~blr.optim.IVON`'s docstring).
        hess_init: h₀.
        hess_start: ``"init"`` (h starts at h₀) or ``"max"``: h starts at max(h₀, ĥ₁)
            elementwise at the first step, before the average, so h₁ = ĥ₁ where the first
            estimate exceeds h₀ and h₁ = β₂h₀ + (1 − β₂)ĥ₁ elsewhere. Where h₀ lies far below
            the curvature (a loss scaled by 1/σ² or weighted, δ small), the first ~1/(1 − β₂)
            steps from ``"init"`` are up to ĥ/h₀ times the Newton step while h catches up,
            which can throw m far away at the start (UCI yacht, docs/uci.md). Starting at ĥ₁
            everywhere would fail the other way: a coordinate with no curvature in the first
            minibatch (a ReLU unit inactive on it) would start at h = 0 and take steps of
            α·ḡ/δ once it has some; h₀ stays its floor.
        curvature: ``"ggn"``, ``"mc_fisher"`` or ``"ef"``.
        loss: the likelihood on the model's output for ``"ggn"``/``"mc_fisher"``: a name of
            :data:`blr.curvature.NAMES` (``"cross_entropy"``, ``"bce_with_logits"``,
            ``"gaussian"`` with ``sigma2``, ``"mse"``, ...) or a
            :class:`~blr.curvature.Likelihood`.
        sigma2: σ² of the ``"gaussian"`` loss (settable between steps: ``opt.sigma2 = ...``).
        sample: draw θ (VOGN) or evaluate at the mean (OGN).
        model: the network whose per-example curvature is collected (keyword only; the
            DDP- or FSDP-wrapped model, or the module inside it).
        mc_samples, nonfinite, seed, missing_sample, process_group: as in
            :class:`~blr.optim.IVON`.
        draw_ahead: as in :class:`~blr.optim.IVON` (the weights hold a training draw between
            steps); the per-example pass stays open around the held draw, paused inside
            :meth:`mean_params` and prediction draws (forwards without gradients are never
            recorded).
        prior: a diagonal Gaussian :class:`blr.ParameterPosterior` over the trained parameters
            (group after group), e.g. the previous task's ``posterior()``: N(m₀, S₀⁻¹) with δ = S₀/N
            per coordinate and the decay δ⊙(m − m₀), in place of ``weight_decay``; needs
            ``fused=False``.
        fused: ``False`` (vectorized torch ops) or ``True``/``"compile"``: the draw
            θ = m + σ⊙z and the update each in one ``torch.compile``'d loop (seconds to compile
            on first use; for fp32/fp64 weights, which are the mean itself). Same formulas,
            equal results up to float rounding; if the compilation fails, a RuntimeWarning and
            the same formulas in eager ops.
        sync: per-rank noise under ``torch.distributed`` (as in :class:`~blr.optim.IVON`): the
            optimizer averages ĝ and ĥ across ranks itself. With the default shared noise, ĝ
            comes averaged by DDP and the optimizer averages ĥ, which each rank computes from
            its own examples.

    Under ``torch.distributed`` each rank's ĥ is the mean over its own examples; the optimizer
    averages it across ranks (equal per-rank batches: the mean over the concatenated batch).
    Models sharded by FSDP2's ``fully_shard`` (Shard(0) on a 1-D mesh, the default) work too:
    the hooks see the gathered weights and compute ĥ of every full parameter; the optimizer
    all-reduces it (once per sample, the size of the unsharded parameters) and keeps its own
    shard. Other placements are refused with a ValueError. See docs/distributed.md.

    Example:
        >>> import torch
        >>> from blr.optim import VOGN
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> opt = VOGN(model.parameters(), lr=0.01, ess=1000, curvature="ggn",
        ...            loss="cross_entropy", model=model)
        >>> with opt.sampled_params(train=True):
        ...     opt.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        >>> opt.step()
    """

    _local_stat = True  # ĥ comes from this rank's examples: averaged across ranks
    _hyper = hyper_rules(
        nonnegative=("lr", "weight_decay"), positive=("ess", "hess_init"), rate=("beta1", "beta2")
    )

    def __init__(
        self,
        params: Any,
        lr: float,
        ess: float,
        weight_decay: float = 1e-4,
        beta1: float = 0.9,
        beta2: float = 0.999,
        hess_init: float = 1.0,
        curvature: str = "ggn",
        loss: str | None = None,
        sigma2: float = 1.0,
        sample: bool = True,
        mc_samples: int = 1,
        *,
        model: nn.Module | None = None,
        fused: bool | str = False,
        prior: ParameterPosterior | None = None,
        hess_start: str = "init",
        **options: Unpack[SamplingOptions],
    ) -> None:
        name = type(self).__name__
        if isinstance(params, nn.Module):
            raise TypeError(
                f"{name} takes params first, like every torch optimizer, and the module as the "
                f"keyword model=: {name}(model.parameters(), lr=..., ess=..., model=model); got "
                f"a {type(params).__name__} as params"
            )
        if model is None:
            raise TypeError(
                f"{name} needs model=, the nn.Module whose per-example curvature it collects "
                f"(e.g. {name}(model.parameters(), lr=..., ess=..., model=model))"
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_choice(curvature, "curvature", ("ggn", "mc_fisher", "ef"))
        self.hess_start = check_choice(hess_start, "hess_start", ("init", "max"))
        if curvature != "ef":
            if loss is None:
                raise ValueError(f"curvature={curvature!r} needs the loss (e.g. 'cross_entropy')")
            resolve(loss, sigma2=sigma2, supported=FACTORED, arg="loss")
        self.fused = check_choice(fused, "fused", (False, True, "compile"))
        if prior is not None and fused is not False:
            raise ValueError("prior= needs fused=False (the per-coordinate prior is eager-only)")
        defaults = dict(
            lr=lr, ess=ess, weight_decay=weight_decay, beta1=beta1, beta2=beta2, hess_init=hess_init
        )
        super().__init__(params, defaults, mc_samples=mc_samples, **options)
        owned = {id(p) for p in model.parameters()}
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in owned:
                    raise ValueError(
                        f"params: a parameter of shape {tuple(p.shape)} is not a parameter of "
                        f"model; {name}'s curvature comes from the model's layers"
                    )
        self.model, self.curvature, self.loss, self.sigma2 = model, curvature, loss, sigma2
        self.sample = bool(sample)
        self._set_prior(prior)
        self._pe: PerExample | None = None
        self._squares: dict | None = None
        # draw_ahead: the held draw, with the per-example pass open until the step (paused in
        # mean_params and prediction draws; forwards without gradients are not recorded)
        self._hold_draw()

    def _noise(self, group: dict, bucket: Bucket, generator: torch.Generator) -> None:
        if not self.sample:  # OGN: the delta method, no draw
            bucket.noise.zero_()
            return
        super()._noise(group, bucket, generator)

    def _draw_aliased(
        self, group: dict, bucket: Bucket, generator: torch.Generator, train: bool = True
    ) -> None:
        if not self.sample:  # OGN: the weights are the mean already
            return
        if self.fused:
            self._compiled_draw(group, bucket, generator)
        else:
            super()._draw_aliased(group, bucket, generator, train)

    def _undraw_aliased(self, group: dict, bucket: Bucket, train: bool = True) -> None:
        if self.sample:
            super()._undraw_aliased(group, bucket, train)

    def _sample_context(self) -> contextlib.AbstractContextManager:
        kw = (
            dict(reduction="mean")
            if self.curvature == "ef"
            else dict(loss=self.loss, sigma2=self.sigma2)
        )
        self._reshard()
        self._pe = PerExample(self.model, mode=self.curvature, **kw)
        self._squares = None
        return self._pe

    def _reshard(self) -> None:
        """Reshard the model's FSDP modules (a local operation): after a forward without
        backward (an evaluation), FSDP keeps the root's gathered parameters, which would hide
        the draw just written into the shards from the next forward and the sharded parameters
        from the curvature hooks."""
        if not any(b.sharded for buckets in self._all_buckets() for b in buckets):
            return
        from torch.distributed.fsdp import FSDPModule

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    _defer_stat = False  # formed from the per-example pass, inside the sample's context

    def _stat_power(self) -> int:
        return 2 if self.curvature == "ef" else 0  # (the GGN and MC Fisher do not use ĝ)

    def _sample_stat(self, group: dict, bucket: Bucket, grad: Tensor, out: Tensor) -> Tensor:
        pe = self._pe
        if pe is None:
            raise RuntimeError("VOGN collects curvature inside sampled_params(train=True) only")
        if self._squares is None:
            if pe.num_examples == 0:
                raise RuntimeError(
                    "VOGN: the model was not called inside "
                    "sampled_params(train=True), so there is no curvature"
                )
            self._squares = pe.squared_grads()
        m = float(pe.num_examples)
        if bucket.sharded:
            return self._sharded_stat(bucket, out, m)
        views, values = [], []
        for p, v in zip(bucket.params, bucket.views(out)):
            sq = self._squares.get(p)
            if sq is not None:
                views.append(v)
                values.append(sq)
        if len(views) < len(bucket.params):  # parameters the model did not use: ĥ = 0
            out.zero_()
        if views:
            torch._foreach_copy_(views, values)
        return out.div_(m)  # the minibatch mean ĥ

    def _check_sharded(self, p: Tensor) -> None:
        super()._check_sharded(p)  # (1-D mesh, Shard placement, sync=False)
        dim = p.placements[0].dim
        if dim != 0 and dim != -p.dim():
            raise ValueError(
                f"{type(self).__name__} supports parameters sharded on dimension 0 (FSDP2's "
                f"default placement); got {p.placements} for a parameter of shape "
                f"{tuple(p.shape)}: leave shard_placement_fn at its default"
            )

    def _sharded_stat(self, bucket: Bucket, out: Tensor, m: float) -> Tensor:
        """ĥ of parameters sharded by FSDP: the hooks computed this rank's curvature of every
        FULL parameter (on the gathered weights); average it across the ranks of the mesh (they
        drew the same θ, each element by its owner) and keep this rank's shard (Shard(0):
        a contiguous block of rows, possibly shorter or empty on the last ranks)."""
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        full = torch.zeros(
            sum(p.numel() for p in bucket.params), device=out.device, dtype=out.dtype
        )
        views, values = [], []
        for p, v in zip(bucket.params, full.split([p.numel() for p in bucket.params])):
            sq = self._squares.get(p)
            if sq is not None:  # (None: not a parameter of the model: ĥ = 0, as unsharded)
                views.append(v.view(p.shape))
                values.append(sq)
        if views:
            torch._foreach_copy_(views, values)
        group = bucket.params[0].device_mesh.get_group()
        world = _world_size(group)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(full, group=group)
        full.div_(m * world)  # the mean over the ranks of the per-rank minibatch means
        for p, v, local, h in zip(
            bucket.params,
            bucket.views(out),
            bucket.shapes,
            full.split([p.numel() for p in bucket.params]),
        ):
            shape, offset = compute_local_shape_and_global_offset(
                p.shape, p.device_mesh, p.placements
            )
            if tuple(shape) != tuple(local):  # pragma: no cover - a layout we do not know
                raise RuntimeError(
                    f"{type(self).__name__}: the local shard of a parameter of shape "
                    f"{tuple(p.shape)} has shape {tuple(local)}, its placement "
                    f"{p.placements} says {tuple(shape)}"
                )
            v.copy_(h.view(p.shape).narrow(0, offset[0], shape[0]))
        return out

    def _update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor) -> None:
        if self.hess_start == "max" and group["step"] == 1:
            torch.maximum(bucket.state["hess"], stat, out=bucket.state["hess"])
        self._ivon_update(  # ĥ given: the IVON update without its correction
            group,
            bucket,
            g_hat,
            stat,
            "compile" if self.fused else "eager",
            hess_approx=None,
            rescale_lr=False,
            correction=False,
        )


class OGN(VOGN):
    r"""Online Gauss–Newton (Khan & Rue 2023, Table 1 row 8): :class:`VOGN` with the delta
    method, i.e. the gradient and the per-example Gauss–Newton curvature at the mean m instead of a
    draw.

    Example:
        >>> import torch
        >>> from blr.optim import OGN
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = OGN(model.parameters(), lr=0.1, ess=100, curvature="ef", model=model)
        >>> with opt.sampled_params(train=True):
        ...     model(torch.randn(8, 3)).pow(2).mean().backward()
        >>> opt.step()
    """

    def __init__(self, params: Any, lr: float, ess: float, **kwargs: Any) -> None:
        if "sample" in kwargs:
            raise TypeError("OGN evaluates at the mean; use VOGN for sampling")
        super().__init__(params, lr, ess, sample=False, **kwargs)
