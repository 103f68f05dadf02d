"""IVON (Shen et al., 2024), a drop-in replacement for ivon-opt's ``ivon.IVON``, and VON."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from blr.kernels.diag_gaussian import ivon_hess_estimate
from blr.optim._args import (
    DistributedOptions,
    Unpack,
    check_choice,
    hyper_rules,
    with_defaults,
)
from blr.optim._base import PrecisionSampler
from blr.optim._buckets import Bucket, CounterNoise
from blr.optim._functional import counter_draw_, counter_noise_
from blr.posterior import ParameterPosterior


def beta2_for_steps(steps: int, remaining: float = 0.01) -> float:
    r"""The β₂ that leaves ``remaining`` of h₀ in h after ``steps`` steps: β₂ = ρ^{1/T},
    so β₂ᵀ = ρ (the rule in :class:`IVON`'s docstring).

    Args:
        steps: T, the number of optimizer steps of the budget (≥ 1).
        remaining: ρ ∈ (0, 1).

    Example:
        >>> from blr.optim import beta2_for_steps
        >>> b2 = beta2_for_steps(1700)
        >>> round(b2, 5), round(b2**1700, 6)
        (0.99729, 0.01)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (0.0 < remaining < 1.0):
        raise ValueError(f"remaining must lie in (0, 1), got {remaining!r}")
    return float(remaining) ** (1.0 / steps)


class IVON(PrecisionSampler):
    r"""Improved Variational Online Newton: the diagonal-Gaussian BLR with a Price/Stein Hessian
    estimate, the improved-BLR correction and gradient momentum (Shen et al., ICML 2024):

    .. math::
        \theta &= m + \sigma\odot z,\quad \sigma = (N(h + \delta))^{-1/2},
        \quad z\sim\mathcal N(0, I),\\
        \hat g &= \nabla\ell(\theta),\qquad \hat h = \hat g\odot(\theta - m)/\sigma^2
        \ \ (\mathtt{price})\ \text{or}\ N\hat g^2\ (\mathtt{gradsq}),\\
        \bar g &\leftarrow \beta_1\bar g + (1-\beta_1)\hat g,\\
        h &\leftarrow \beta_2 h + (1-\beta_2)\hat h
        + \tfrac12(1-\beta_2)^2\frac{(h-\hat h)^2}{h+\delta},\\
        m &\leftarrow m - \alpha\,\operatorname{clip}\Big(\frac{\bar g/(1-\beta_1^t) + \delta m}
        {h+\delta}, \pm r\Big),\qquad \alpha = \text{lr}\cdot(h_0+\delta)\ \text{if rescale\_lr}.

    Symbols → arguments: α = ``lr``, N = ``ess``, h₀ = ``hess_init``, β₁, β₂ = ``beta1``,
    ``beta2``, δ = ``weight_decay``, r = ``clip_radius``; ĝ averages ``mc_samples`` draws. The
    arguments and defaults are those of ivon-opt 0.1.3, so switching is one import. Beyond it:
    an exception inside ``sampled_params`` restores the mean; micro-batch gradient accumulation
    inside one sample; frozen parameters and parameters without a gradient are left untouched;
    ``step()`` without a collected sample is a clear error (or a no-op with
    ``missing_sample="skip"``); ``step(closure)`` samples by itself;
    the step counter and the random generators are in the ``state_dict``; ``add_param_group``
    works; parameters may mix devices and dtypes (bf16/fp16 parameters get fp32 state); the
    device is taken lazily; ``gradsq`` works with ``sync``; NaN/Inf gradients raise (or skip with
    ``nonfinite="skip"``) without touching the state. The Triton path (``fused="triton"``) has
    not yet run on a GPU: it has been checked only under ``TRITON_INTERPRET=1`` on the CPU.

    Args:
        params: parameters or param groups (groups may set their own ``lr``, ``ess``,
            ``weight_decay``, ``beta1``, ``beta2``, ``hess_init``, ``clip_radius``).
        lr: α.
        ess: N, the effective sample size (usually the training-set size).
        hess_init: h₀.
        beta1, beta2: momentum and Hessian rates, β₁ ∈ [0, 1) and β₂ ∈ [0, 1] (β₂ = 1 freezes h).
            Each param group also holds β₁ as ``"momentum"``, the key that ``OneCycleLR`` and
            ``CyclicLR`` (``cycle_momentum=True``) move; a change to either is taken at the
            next step.
        weight_decay: δ, the prior precision per example.
        mc_samples: draws per step with ``step(closure)``.
        hess_approx: ``"price"`` or ``"gradsq"``.
        clip_radius: r.
        sync: per-rank noise under ``torch.distributed``: each rank draws its own θ and the
            optimizer all-reduces (averages) ĝ and the Hessian statistic (σz⊙ĝ or ĝ²) itself,
            so the model must not average gradients (a plain model or DDP's ``no_sync()``).
            Default (``False``): every rank draws the same θ (rank 0's seed is broadcast at the
            first draw when ``seed`` is not given) and DDP's gradient average makes ĝ and ĥ
            those of the concatenated batch. See docs/distributed.md.
        debias: the 1 − β₁^t correction.
        rescale_lr: multiply lr by h₀ + δ.
        nonfinite: ``"raise"`` or ``"skip"`` for NaN/Inf gradients.
        seed: seed of the optimizer's own generators (default: drawn from torch's global RNG).
        missing_sample: ``step()`` without a collected sample: ``"raise"`` or ``"skip"``
            (a no-op).
        process_group: the ``torch.distributed`` group whose ranks agree on the seed and
            average the samples (default: the default group).
        prior: a diagonal Gaussian :class:`blr.ParameterPosterior` N(m₀, S₀⁻¹) over the trained
            parameters (group after group), e.g. the previous task's ``posterior()``: each
            parameter's δ becomes S₀/N and its decay term δ⊙(m − m₀), in place of
            ``weight_decay`` (which still rescales lr); needs ``fused=False``.
        fused: ``False`` (vectorized torch ops), ``True`` (the fastest fused path available:
            the Triton kernel for CUDA parameters when triton is installed, else
            ``"compile"``), ``"compile"`` (draw and update in one ``torch.compile``'d loop
            each: seconds to compile on first use, then ~8× fewer memory passes; used for one
            MC sample with ``hess_approx="price"``, no clipping and fp32 weights; if the
            compilation fails, a RuntimeWarning and the same formulas in eager ops), or
            ``"triton"`` (:mod:`blr.kernels.triton_ivon` for every fp32 bucket: one launch
            draws θ = m + σz with z regenerated from a (seed, draw) counter, one undoes it, one
            updates; no noise buffer is kept, so the optimizer holds 16 B per parameter like
            AdamW; CUDA parameters, or CPU ones under ``TRITON_INTERPRET=1`` for testing).
            **The Triton path has not yet run on a GPU:** its kernels have been checked only
            in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, against the eager
            path; speed and GPU-compiled results are unverified.
        draw_ahead: the weights hold a training draw between steps (from the start, and the
            step writes the next one), not the mean, so a loop that never calls
            ``sampled_params`` (``loss.backward(); opt.step()``, the Hugging Face Trainer,
            Lightning) trains at posterior draws; ``sampled_params(train=True)`` uses the held
            draw as it is, and evaluation at the mean goes inside :meth:`mean_params`. With
            ``fused="triton"`` the step writes the next draw in the same pass (one pass over
            memory per step, like AdamW; there the first draw is taken by ``sampled_params``).
            Trajectories equal those without it.

    **A posterior that is learned, not set by h₀.** After t steps h is
    h₀β₂ᵗ + (1 − β₂)Σ β₂ᵗ⁻ˢ ĥ_s (plus the small correction): a weighted average of the
    estimates ĥ, holding h₀β₂ᵗ of the initial value. With the default β₂ = 0.99999 and a short
    budget (10³–10⁴ steps) h₀ β₂ᵗ ≈ h₀ dominates, and h₀ rather than the data sets σ. The
    rule, for a budget of T steps:

    1. β₂ = ρ^{1/T} with ρ = 0.01 (:func:`beta2_for_steps`), so h holds 1 % of h₀ at the end;
    2. h₀ of the order of the curvature ĥ (the per-example average loss's), so that
       lr·(h₀ + δ) (``rescale_lr``) stays a sane step as h → ĥ;
    3. σ = (N(h + δ))^−½ is then learned, and for a network with many weights that the data
       do not determine it is too wide to predict well at N = the training-set size: choose
       the posterior's temperature 1/c, ``ess`` = c·N, on validation data, as for δ.

    On the 8×8 digits MLP of ``blr demo`` (1 700 steps; its ``IVON-h`` method), h₀ = 10 and
    β₂ = 0.999 leave h = h₀β₂ᵗ to 1 % for every weight, while under the rule (h₀ = 0.01,
    β₂ = 0.99729, δ = 3·10⁻³, lr 0.3) the median h is 5 times h₀β₂ᵗ and the 99th percentile
    140 times (docs/demo.md). There c = 1 000 was chosen on validation; at c = 1 the
    posterior is far too wide (validation accuracy 0.78 and NLL 0.71, against 0.97 and 0.097).

    Example:
        >>> import torch
        >>> from blr.optim import IVON
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> opt = IVON(model.parameters(), lr=0.1, ess=64)
        >>> for _ in range(3):
        ...     with opt.sampled_params(train=True):
        ...         opt.zero_grad()
        ...         torch.nn.functional.mse_loss(model(x), y).backward()
        ...     opt.step()
        >>> with opt.sampled_params():   # a posterior draw for prediction
        ...     pred = model(x)

    References:
        Shen et al., "Variational Learning is Effective for Large Deep Networks", ICML 2024.
    """

    hessian_approx_methods = ("price", "gradsq")
    _correction = True  # the improved-BLR term (VON: without it)
    _hyper = hyper_rules(
        nonnegative=("lr", "weight_decay"),
        positive=("ess", "hess_init"),
        radius=("clip_radius",),
        rate=("beta1",),  # 1 − β₁^t divides ḡ
        rate_closed=("beta2",),
    )

    def __init__(
        self,
        params: Any,
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        hess_approx: str = "price",
        clip_radius: float = float("inf"),
        sync: bool = False,
        debias: bool = True,
        rescale_lr: bool = True,
        *,
        fused: bool | str = False,
        draw_ahead: bool = False,
        prior: ParameterPosterior | None = None,
        **options: Unpack[DistributedOptions],
    ) -> None:
        if prior is not None and fused is not False:
            raise ValueError("prior= needs fused=False (the per-coordinate prior is eager-only)")
        if hess_approx not in self.hessian_approx_methods:
            raise ValueError(
                f"hess_approx must be one of {self.hessian_approx_methods}, got {hess_approx!r}"
            )
        check_choice(fused, "fused", (False, True, "compile", "triton"))
        defaults = dict(
            lr=lr,
            ess=ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            clip_radius=clip_radius,
        )
        super().__init__(
            params, defaults, mc_samples=mc_samples, sync=bool(sync), draw_ahead=draw_ahead,
            **options,
        )  # fmt: skip
        self.hess_approx = hess_approx
        self.fused = fused
        self._n_buckets = 0
        self.debias, self.rescale_lr = bool(debias), bool(rescale_lr)
        if fused == "triton":  # refuse now what the first draw would refuse
            for group in self.param_groups:
                self._check_triton(group["params"])
        self._set_prior(prior)
        self._hold_draw()  # draw_ahead: the weights hold a training draw from the start

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As :meth:`SamplingOptimizer.add_param_group`: the group may set its own ``lr``,
        ``ess``, ``weight_decay``, ``beta1``, ``beta2``, ``hess_init`` and ``clip_radius``; with
        ``fused="triton"`` its parameters are checked first (ValueError).

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
            >>> opt = IVON(body.parameters(), lr=0.1, ess=10, seed=0)
            >>> opt.add_param_group({"params": head.parameters(), "hess_init": 5.0})
            >>> opt.state_dict()["state"][2]["hess"]  # head.weight's h starts at its own h₀
            tensor([[5., 5., 5., 5.]])
        """
        if getattr(self, "fused", None) == "triton":
            params = param_group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            self._check_triton(params)
            param_group = {**param_group, "params": params}
        super().add_param_group(param_group)

    def _check_triton(self, params: list[Tensor]) -> None:
        from blr.kernels import triton_ivon  # on demand: triton reads TRITON_INTERPRET once

        for p in params:
            if not p.requires_grad:
                continue
            ok_device = p.device.type == "cuda" or (
                p.device.type == "cpu" and triton_ivon.triton_interpreted()
            )
            if self.sync or p.dtype != torch.float32 or not ok_device:
                raise ValueError(
                    "fused='triton' needs triton installed and fp32 parameters on a CUDA "
                    "device (or on the CPU with TRITON_INTERPRET=1 set before triton is "
                    f"imported, for testing), without sync; got a {p.dtype} parameter on "
                    f"{p.device}" + (" and sync=True" if self.sync else "")
                )
        if not triton_ivon.triton_available():
            raise ValueError("fused='triton' needs triton (`pip install triton`)")

    # ------------------------------------------------------------------ which implementation
    def _init_bucket(self, group: dict, bucket: Bucket) -> None:
        super()._init_bucket(group, bucket)
        index, self._n_buckets = self._n_buckets, self._n_buckets + 1
        if self._use_triton(bucket):
            # one Philox key per bucket, a pure function of the optimizer's seed and the bucket
            bucket.counter = CounterNoise.for_bucket(self._seed, index)

    def _seed_changed(self) -> None:
        # rank 0's seed arrived after the buckets were built (a state_dict() before the first
        # draw): rekey the counter-based noise, which no draw has used yet
        for buckets in self._buckets or []:
            for b in buckets:
                if b.counter is not None:
                    b.counter.rekey(self._seed)

    def _use_triton(self, bucket: Bucket) -> bool:
        if self.fused not in (True, "triton") or not self._correction:
            return False
        from blr.kernels import triton_ivon  # on demand: triton reads TRITON_INTERPRET once

        cuda = bucket.device.type == "cuda"
        usable = (
            bucket.alias
            and bucket.state_dtype == torch.float32
            and triton_ivon.triton_available()
            and (cuda or (bucket.device.type == "cpu" and triton_ivon.triton_interpreted()))
        )
        if self.fused == "triton" and not usable:
            raise ValueError(
                "fused='triton' needs triton installed and fp32 parameters on a CUDA device "
                "(or on the CPU with TRITON_INTERPRET=1 set before triton is imported, for "
                f"testing); got {bucket.dtype} parameters on {bucket.device}"
                + (" with sync=True (per-rank draws need a separate mean)" if self.sync else "")
                + (" sharded by FSDP" if bucket.sharded else "")
            )
        return usable and (cuda or self.fused == "triton")

    def _fused_ok(self, group: dict, bucket: Bucket) -> bool:
        return (
            self.fused in (True, "compile")
            and bucket.counter is None
            and bucket.alias
            and self._correction
            and self.hess_approx == "price"
            and math.isinf(group["clip_radius"])
        )

    def _impl(self, group: dict, bucket: Bucket, stat: Tensor | None) -> str:
        """The implementation of the update: ``"triton"`` for one sample with counter-based
        noise (the kernel regenerates it), ``"compile"`` where the compiled update applies,
        else ``"eager"``."""
        if stat is None:
            return "triton"
        return "compile" if self._fused_ok(group, bucket) else "eager"

    # ------------------------------------------------------------------ draws
    def _counter_draw(self, group: dict, bucket: Bucket, draw: int, subtract: bool) -> None:
        """Weights (= m) ← m ± σz_draw in place, z regenerated by the Triton sample kernel."""
        with bucket.flat_first() as mean:
            counter_draw_(
                mean,
                bucket.state["hess"],
                bucket.counter,
                draw,
                ess=group["ess"],
                weight_decay=group["weight_decay"],
                subtract=subtract,
            )

    def _draw_aliased(
        self, group: dict, bucket: Bucket, generator: torch.Generator, train: bool = True
    ) -> None:
        c = bucket.counter
        if c is not None:
            if train and c.pending is not None and c.fresh:
                c.drawn, c.fresh = c.pending, False  # drawn by the last step
                return
            if c.pending is not None:  # back to m first (a prediction draw restores θ)
                self._counter_draw(group, bucket, c.pending, subtract=True)
                if train:
                    c.hold(None)
            draw = c.take()
            self._counter_draw(group, bucket, draw, subtract=False)
            c.drawn = draw
            if train and self.draw_ahead:
                c.hold(draw)
            return
        if not self._fused_ok(group, bucket):
            super()._draw_aliased(group, bucket, generator, train)
            return
        self._compiled_draw(group, bucket, generator)

    def _undraw_aliased(self, group: dict, bucket: Bucket, train: bool = True) -> None:
        if bucket.counter is None:
            super()._undraw_aliased(group, bucket, train)
        elif not (train and self.draw_ahead):  # draw-ahead: the weights keep the draw
            self._counter_draw(group, bucket, bucket.counter.drawn, subtract=True)

    def _held(self) -> list[tuple[dict, Bucket]]:
        """The buckets whose weights hold a draw between steps (draw-ahead)."""
        if self._buckets is None:
            return []
        return [
            (group, b)
            for group, buckets in zip(self.param_groups, self._buckets)
            for b in buckets
            if b.counter is not None and b.counter.pending is not None
        ]

    @contextlib.contextmanager
    def mean_params(self) -> Iterator[None]:
        """Within the context the parameters hold the posterior mean m; on exit exactly what
        they held before (with ``draw_ahead`` the weights hold the next training draw between
        steps, so evaluate at the mean inside this context).

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)  # no draw_ahead: a no-op
            >>> with opt.mean_params():
            ...     torch.equal(model.weight, opt.state_dict()["state"][0]["mean"])
            True
        """
        held = self._held()
        saved = [[t.clone() for t in b.targets()] for _, b in held]
        for group, b in held:
            self._counter_draw(group, b, b.counter.pending, subtract=True)
        try:
            with super().mean_params():  # (a draw held by the eager path: draw_ahead)
                yield
        finally:
            for (_, b), s in zip(held, saved):
                torch._foreach_copy_(b.targets(), s)

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`SamplingOptimizer.state_dict`; with ``draw_ahead`` the saved ``mean`` is m
        (the held draw is undone, and redrawn afterwards — the weights may move by one
        rounding, identically in the resumed run) and the held draw's index is saved.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> sd = opt.state_dict()  # the mean m; no draw is held (no draw_ahead)
            >>> torch.equal(sd["state"][0]["mean"], model.weight), sd["blr"]["pending"]
            (True, [[None]])
        """
        held = self._held()
        for group, b in held:
            self._counter_draw(group, b, b.counter.pending, subtract=True)
        try:
            out = super().state_dict()
        finally:
            for group, b in held:
                self._counter_draw(group, b, b.counter.pending, subtract=False)
        out["blr"]["pending"] = [
            [
                None
                if b.counter is None or b.counter.pending is None
                else [b.counter.pending, b.counter.fresh]
                for b in buckets
            ]
            for buckets in self._all_buckets()
        ]
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`SamplingOptimizer.load_state_dict`; a held draw (``draw_ahead``) is put back
        into the weights.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model, other = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> resumed = IVON(other.parameters(), lr=1.0, ess=10)
            >>> resumed.load_state_dict(opt.state_dict())  # the mean goes into the weights
            >>> torch.equal(model.weight, other.weight), resumed.param_groups[0]["lr"]
            (True, 0.1)
        """
        super().load_state_dict(state_dict)
        pending = state_dict["blr"].get("pending") or []
        for group, buckets, marks in zip(self.param_groups, self._all_buckets(), pending):
            for b, mark in zip(buckets, marks):
                if b.counter is None:
                    continue
                b.counter.hold(None)
                if mark is not None and self.draw_ahead:
                    b.counter.hold(int(mark[0]), bool(mark[1]))
                    self._counter_draw(group, b, b.counter.pending, subtract=False)

    # ------------------------------------------------------------------ statistics, update
    def _before_update(self, group: dict, bucket: Bucket, stat: Tensor | None) -> None:
        # the weights hold a draw (draw_ahead): the step goes θ → θ' in one pass when it can;
        # with averaged statistics or parameters to keep frozen, back to m first (the next
        # draw follows the update, in _after_update)
        c = bucket.counter
        if c is not None and c.pending is not None and (stat is not None or bucket.frozen_idx):
            self._counter_draw(group, bucket, c.pending, subtract=True)
            c.hold(None)

    def _after_update(self, group: dict, bucket: Bucket) -> None:
        c = bucket.counter
        if c is not None and self.draw_ahead and c.pending is None:
            draw = c.take()
            self._counter_draw(group, bucket, draw, subtract=False)
            c.hold(draw, fresh=True)

    def _stat_power(self) -> int:
        return 2 if self.hess_approx == "gradsq" else 1  # ĝ² or σz⊙ĝ

    def _single_stat(self, group: dict, bucket: Bucket) -> Tensor:
        if bucket.counter is None:
            return bucket.noise
        return self._sample_stat(group, bucket, bucket.state_grad, out=bucket.noise)

    def _sample_stat(self, group: dict, bucket: Bucket, grad: Tensor, out: Tensor) -> Tensor:
        if self.hess_approx == "gradsq":
            return torch.mul(grad, grad, out=out)
        if bucket.counter is not None:  # σ⊙z of the current draw, regenerated
            counter_noise_(
                bucket.noise,
                bucket.state["hess"],
                bucket.counter,
                ess=group["ess"],
                weight_decay=group["weight_decay"],
                scratch=bucket.scratch,
            )
        return torch.mul(bucket.noise, grad, out=out)

    def _update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor | None) -> None:
        self._ivon_update(
            group,
            bucket,
            g_hat,
            stat,
            self._impl(group, bucket, stat),
            hess_approx=self.hess_approx,
            rescale_lr=self.rescale_lr,
            debias=self.debias,
            correction=self._correction,
        )


class VON(IVON):
    r"""Variational Online Newton (Khan et al., ICML 2018): the plain
    diagonal-Gaussian BLR with the reparameterization (Price/Stein) Hessian estimate
    ĥ = ĝ⊙(θ − m)/σ², i.e. :class:`IVON` without the improved-BLR correction (and, by default,
    without gradient momentum or learning-rate rescaling):

    .. math::
        h \leftarrow \beta_2 h + (1-\beta_2)\hat h,\qquad
        m \leftarrow m - \alpha\,\frac{\bar g + \delta m}{h + \delta}.

    The Stein estimate can be negative; without the correction h + δ can leave (0, ∞), which
    this optimizer refuses with a FloatingPointError before writing anything (IVON's correction
    is the cure). Arguments as :class:`IVON`.

    Example:
        >>> import torch
        >>> from blr.optim import VON
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = VON(model.parameters(), lr=0.01, ess=100, hess_init=10.0)
        >>> with opt.sampled_params(train=True):
        ...     model(torch.randn(8, 3)).pow(2).mean().backward()
        >>> opt.step()
    """

    _correction = False
    __init__ = with_defaults(IVON.__init__, beta1=0.0, beta2=0.999, rescale_lr=False)

    def _check_update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor) -> None:
        wd, b2 = self._delta(group, bucket), group["beta2"]
        h_hat = ivon_hess_estimate(
            stat,
            bucket.state["hess"],
            ess=group["ess"],
            weight_decay=wd,
            hess_approx=self.hess_approx,
        )
        new = bucket.state["hess"] * b2 + h_hat * (1 - b2) + wd
        low = new.min().item() if new.numel() else math.inf
        low = -self._agree_max(-low)  # the least over the shards (FSDP): all ranks agree
        if not low > 0:
            raise FloatingPointError(
                f"VON: the update would make h + weight_decay non-positive (min {low:.3g}); "
                "the state was not changed (use IVON, whose correction keeps it positive, a "
                "smaller 1 - beta2, or hess_approx='gradsq')"
            )
