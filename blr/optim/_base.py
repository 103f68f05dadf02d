"""The step loop and the sampling context of the :mod:`blr.optim` optimizers.

:class:`MonteCarloOptimizer` is what every optimizer here shares: its hyperparameters checked by
rules it declares (:mod:`blr.optim._args`), ``mc_samples`` draws taken by ``step(closure)``, the
``nonfinite`` and ``missing_sample`` policies, a seed and one random generator per device.

:class:`SamplingOptimizer` adapts ``torch.optim`` to the flat-buffer kernels of
:mod:`blr.kernels` for the weight-perturbation optimizers (IVON, VON, VOGN, Vadam, BayesBiNN):
posterior draws written into the parameters (``sampled_params``), gradients gathered into flat
buffers with one multi-tensor copy (no ``torch.cat``), Monte Carlo averaging, non-finite checks
and the update, over the buckets of :mod:`blr.optim._buckets`; the noise and statistics across
ranks are :mod:`blr.optim._distributed`'s, the checkpoint format :mod:`blr.optim._checkpoint`'s.
Subclasses name their state buffers, the posterior draw, the sample statistic and the update
(a kernel call). :class:`PrecisionSampler` is the diagonal Gaussian in IVON's parameterization.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from blr.kernels.diag_gaussian import ivon_noise
from blr.optim._args import MonteCarloOptions, Unpack, check_hyper, check_run_options
from blr.optim._buckets import Bucket, make_buckets
from blr.optim._checkpoint import load_buckets, save_buckets
from blr.optim._distributed import DistributedNoise
from blr.optim._functional import compiled_draw_, ivon_update_
from blr.posterior import ParameterPosterior, as_prior
from expfam import DiagGaussian, ExpFamily


class MonteCarloOptimizer(torch.optim.Optimizer):
    """The contract of every :mod:`blr.optim` optimizer: subclasses declare the rule of each
    hyperparameter in ``_hyper`` (checked on the defaults and on every param group, also one
    added later), take the options of :class:`~blr.optim._args.RunOptions` and provide
    ``sampled_params(train=True)``, which collects one Monte Carlo sample per call
    (``_count``); ``step(closure)`` takes ``mc_samples`` of them itself
    (:meth:`_closure_samples`).

    Example:
        >>> import torch
        >>> from blr.optim import IVON, BayesByBackprop
        >>> from blr.optim._base import MonteCarloOptimizer
        >>> params = torch.nn.Linear(2, 1).parameters()
        >>> isinstance(IVON(params, lr=0.1, ess=10), MonteCarloOptimizer)
        True
        >>> BayesByBackprop(torch.nn.Linear(2, 1).parameters(), lr=0.1, ess=-1)
        Traceback (most recent call last):
        ...
        ValueError: ess must be > 0, got -1
    """

    _hyper: ClassVar[Mapping[str, str]] = {}
    _momentum_key: ClassVar[str | None] = None
    """The group key of the optimizer's momentum rate (``"beta1"``, ``"beta"``), if it has one
    and no ``betas`` pair: each group also carries it as ``"momentum"``, the key torch's cycling
    schedulers move (``OneCycleLR``/``CyclicLR`` with ``cycle_momentum=True``); a change to
    either key is taken at the next step (:meth:`_sync_momentum`)."""

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        mc_samples: int = 1,
        nonfinite: str = "raise",
        seed: int | None = None,
        missing_sample: str = "raise",
        **unexpected: Any,
    ) -> None:
        if unexpected:  # (the subclasses pass their options through: name the class)
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword arguments {sorted(unexpected)}"
            )
        check_hyper(defaults, self._hyper)
        check_run_options(mc_samples, nonfinite, missing_sample)
        if self._momentum_key is not None:
            defaults = {**defaults, "momentum": defaults[self._momentum_key]}
        self._momentum_seen: dict[int, float] = {}
        super().__init__(params, defaults)
        self.mc_samples = int(mc_samples)
        self.nonfinite = nonfinite
        self.missing_sample = missing_sample
        self._seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._seed_given = seed is not None
        self._generators: dict[torch.device, torch.Generator] = {}
        self._draws = 0  # posterior draws taken (seeds the per-rank generators)
        self._count = 0  # Monte Carlo samples collected for the next step
        self.skipped_steps = 0

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (a dict with ``"params"`` and, optionally, its own
        hyperparameters; the others are the defaults), its hyperparameters checked like the
        constructor's: a ValueError names the one out of range, and the group is not added.

        Example:
            >>> import torch
            >>> from blr.optim import Vadam
            >>> body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
            >>> opt = Vadam(body.parameters(), lr=0.1, ess=10, seed=0)
            >>> opt.add_param_group({"params": head.parameters(), "betas": (0.9, 1.0)})
            Traceback (most recent call last):
            ...
            ValueError: betas[1] must lie in [0, 1), got 1.0
            >>> len(opt.param_groups)
            1
        """
        key = self._momentum_key
        if key is not None and ("momentum" in param_group) != (key in param_group):
            given = param_group["momentum" if "momentum" in param_group else key]
            param_group = {**param_group, key: given, "momentum": given}  # one value, two keys
        elif key is not None and "momentum" in param_group:
            if param_group["momentum"] != param_group[key]:
                raise ValueError(
                    f"momentum ({param_group['momentum']}) is an alias of {key} "
                    f"({param_group[key]}) for torch's schedulers: give one of them"
                )
        check_hyper({**self.defaults, **param_group}, self._hyper)
        raw = param_group["params"]
        param_group = {**param_group, "params": [raw] if isinstance(raw, Tensor) else list(raw)}
        self._check_new_params(param_group["params"])
        super().add_param_group(param_group)
        if key is not None:
            self._momentum_seen[len(self.param_groups) - 1] = self.param_groups[-1][key]

    def _amp_state(self) -> tuple[Tensor | None, bool]:
        """(grad_scale, overflow) that torch.amp.GradScaler.step hands this optimizer when it
        supports the protocol (``_step_supports_amp_scaling``); (None, False) otherwise."""
        found_inf = getattr(self, "found_inf", None)
        overflow = found_inf is not None and bool(found_inf.sum() > 0)
        return getattr(self, "grad_scale", None), overflow

    def _amp_begin(self, drop: Callable[[], None]) -> tuple[bool, Tensor | None]:
        """GradScaler's protocol at the top of ``step()`` for optimizers that take the gradients
        when a draw is collected: (skip, 1/S). An overflow drops the samples (``drop``) and
        skips the step; gradients changed after the collection raise RuntimeError (the samples
        dropped)."""
        grad_scale, overflow = self._amp_state()
        if overflow:  # GradScaler found an Inf: skip the step, drop the samples
            drop()
            self.skipped_steps += 1
            return True, None
        try:
            self._check_grads_unchanged(getattr(self, "_collected_norm", None))
        except RuntimeError:
            drop()
            raise
        return False, None if grad_scale is None else 1.0 / grad_scale.double()

    def _grad_norm(self) -> Tensor:
        """‖(∇θ of every trained parameter)‖ (0 for none): remembered when a sample is
        collected, to refuse gradients changed afterwards that cannot reach it."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norms = torch._foreach_norm([g.detach() for g in grads])
        return torch.linalg.vector_norm(torch.stack([n.to(torch.float64) for n in norms]))

    def _check_grads_unchanged(self, seen: Tensor | None) -> None:
        """Raise if the gradients were changed (clipped, unscaled) after the last sample was
        collected from them (zeroed gradients excepted)."""
        if seen is None:
            return
        now = self._grad_norm()
        if bool(now > 0) and not torch.isclose(now, seen.to(now.dtype), rtol=1e-6, equal_nan=True):
            raise RuntimeError(
                f"the gradients changed after their sample was collected (e.g. scaler.unscale_ "
                f"or clip_grad_norm_ between sampled_params(train=True) and step()); "
                f"{type(self).__name__} takes the gradients when the sample is collected: clip "
                "inside the sampled_params block, and let GradScaler.step unscale (no "
                "unscale_); the state was not changed"
            )

    @contextlib.contextmanager
    def _watch_training_mode(self) -> Iterator[None]:
        """Inside a prediction draw: warn once per optimizer if a module that behaves
        differently in training mode (dropout, batch normalization) runs in it (``model.eval()``
        was forgotten), through a forward pre-hook on every module that lasts the draw only."""
        if getattr(self, "_warned_training", False):
            yield
            return
        modal = (
            torch.nn.modules.dropout._DropoutNd,
            torch.nn.modules.batchnorm._BatchNorm,
            torch.nn.modules.instancenorm._InstanceNorm,
        )

        def hook(module: torch.nn.Module, _: Any) -> None:
            if module.training and not self._warned_training and isinstance(module, modal):
                self._warned_training = True
                warnings.warn(
                    f"{type(self).__name__}.sampled_params(train=False) (a prediction draw) "
                    f"runs {type(module).__name__} in training mode: dropout and batch "
                    "statistics behave as in training; call model.eval() first (warned once)",
                    UserWarning,
                    stacklevel=4,
                )

        self._warned_training = False
        handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _sync_momentum(self) -> None:
        """Reconcile each group's momentum rate and its ``"momentum"`` alias before a step:
        the one that changed since the last step (a cycling scheduler moves ``"momentum"``, a
        user may set either) is copied to the other, checked like the constructor's."""
        key = self._momentum_key
        if key is None:
            return
        for i, group in enumerate(self.param_groups):
            rate = group[key]
            alias = group.setdefault("momentum", rate)
            seen = self._momentum_seen.get(i, rate)  # (set when the group was added)
            if alias != seen:
                check_hyper({key: alias}, self._hyper)
                group[key] = alias
            elif rate != seen:
                group["momentum"] = rate
            self._momentum_seen[i] = group[key]

    def _check_new_params(self, params: list) -> None:
        """Refuse, naming ``params``, what would fail only at the first draw: a parameter listed
        twice (in this group or an earlier one) or one on the meta device (no values yet)."""
        seen = {id(p): (g, i) for g, group in enumerate(self.param_groups)
                for i, p in enumerate(group["params"])}  # fmt: skip
        here = len(self.param_groups)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                continue  # torch.optim names it
            if p.device.type == "meta":
                raise ValueError(
                    f"params: parameter {i} of param group {here} is on the meta device (it has "
                    "no values yet); materialize the model (e.g. model.to_empty(device=...) and "
                    "its initialization) before creating the optimizer"
                )
            if id(p) in seen:
                g, j = seen[id(p)]
                raise ValueError(
                    f"params: parameter {i} of param group {here} is parameter {j} of param "
                    f"group {g} too; list each parameter once (e.g. tied weights appear once in "
                    "model.parameters())"
                )
            seen[id(p)] = (here, i)

    def _generator(self, device: torch.device) -> torch.Generator:
        """The shared-noise generator of ``device``: seeded once, identical on every rank."""
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed + 7919 * len(self._generators))
            self._generators[device] = gen
        return gen

    def _closure_samples(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        """With a ``closure``, take ``mc_samples`` training samples with it and return the loss
        averaged over them; None without one."""
        if closure is None:
            return None
        losses = []
        for _ in range(self.mc_samples):
            with torch.enable_grad(), self.sampled_params(train=True):
                losses.append(closure())
        return sum(x.detach() for x in losses) / len(losses)

    def _no_sample(self) -> None:
        """``step()`` found no collected sample: an error unless ``missing_sample="skip"``."""
        if self.missing_sample != "skip":
            raise RuntimeError(
                f"{type(self).__name__}.step() found no gradient sample: call step(closure), or "
                "run forward and backward inside `with optimizer.sampled_params(train=True):`"
            )

    def _nonfinite_step(self, what: str) -> None:
        """``what`` holds a NaN/Inf: count a skipped step (``nonfinite="skip"``) or raise."""
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            return
        raise FloatingPointError(
            f"{type(self).__name__}.step(): NaN/Inf in {what}; the state was not "
            "changed (pass nonfinite='skip' to skip such steps)"
        )


class SamplingOptimizer(DistributedNoise, MonteCarloOptimizer):
    """Base class of the Gaussian weight-perturbation optimizers (see the module docstring).

    Subclasses define ``_hyper`` (the rules of their hyperparameters), ``_state_names`` (flat
    fp32 buffers of each :class:`~blr.optim._buckets.Bucket`; the first starts as a copy of the
    parameters), ``_init_bucket``, ``_noise`` (write σ⊙z into ``bucket.noise``) or ``_draw`` and
    ``_center`` (for non-Gaussian posteriors), ``_sample_stat`` (the per-sample statistic averaged
    over the samples) and ``_update`` (the kernel call).

    Distributed training (``torch.distributed``; see docs/distributed.md). Arguments:

    - ``sync=False`` (shared noise, for DDP): every rank draws the same noise, so DDP's gradient
      average is the gradient of the concatenated batch at the same θ and statistics formed from
      it (IVON's σz⊙ĝ and ĝ², BayesBiNN's, Vadam's) are exact. Without an explicit ``seed``, rank
      0's seed is broadcast at the first draw; explicit seeds must agree across ranks (checked
      then: a ValueError on every rank otherwise). Statistics computed from local data
      (``_local_stat``: VOGN's per-example curvature) are all-reduced (averaged).
    - ``sync=True`` (per-rank noise): each rank draws its own noise (from a generator reseeded
      at every draw from (seed, rank, draw index), so checkpoints resume exactly); the model must
      not average gradients (a plain model, or DDP's ``no_sync()``); the optimizer all-reduces
      (averages) ĝ and the statistic itself. The mean is kept apart from the weights so that it
      stays bit-identical across ranks.
    - Parameters sharded by FSDP2's ``fully_shard`` (DTensors on a 1-D mesh): the state holds
      the local shards, each rank draws its own noise for its own shard (every element of θ is
      drawn once, by its owner), FSDP's reduce-scatter averages the gradients; a statistic
      computed from local data for the full parameter (VOGN's) is averaged and cut to the
      local shard by the subclass (``VOGN._sharded_stat``).
    - ``process_group``: the ranks to agree with (default: the default group); a group of one
      rank per process gives independent runs.

    Every all-reduce happens before the NaN/Inf check, so a non-finite gradient on one rank
    makes every rank raise the same FloatingPointError (or skip, with ``nonfinite="skip"``).

    The interface, shown with :class:`~blr.optim.IVON`: ``sampled_params(train=True)`` collects a
    Monte Carlo sample, ``step()`` updates, ``mean_params()`` evaluates at the mean, and
    ``step(closure)`` draws the samples itself:

    >>> import torch
    >>> from blr.optim import IVON, SamplingOptimizer
    >>> model = torch.nn.Linear(2, 1)
    >>> x, y = torch.ones(4, 2), torch.zeros(4, 1)
    >>> opt = IVON(model.parameters(), lr=0.1, ess=4, seed=0)
    >>> isinstance(opt, SamplingOptimizer)
    True
    >>> with opt.sampled_params(train=True):
    ...     opt.zero_grad()
    ...     torch.nn.functional.mse_loss(model(x), y).backward()
    >>> opt.step()
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.mse_loss(model(x), y)
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)
    >>> with opt.mean_params():
    ...     model(x).shape
    torch.Size([4, 1])
    """

    _state_names: tuple[str, ...] = ("mean",)
    _alias_first = True  # the first state buffer is the mean of a Gaussian: alias the weights
    # torch.amp.GradScaler hands the scale to step() (``grad_scale``, ``found_inf``) instead of
    # unscaling the .grad tensors: ĝ and the statistic are unscaled together there
    _step_supports_amp_scaling = True
    # the statistic of a single sample is formed at step() (or before the draw buffer is
    # reused), from the gradients as they are then: unscale_ and clipping between the sample
    # and step() reach ĝ and ĥ alike. VOGN's comes from the per-example pass: at collection
    _defer_stat = True

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        sync: bool = False,
        process_group: Any = None,
        draw_ahead: bool = False,
        **options: Unpack[MonteCarloOptions],
    ) -> None:
        self._init_distributed(sync, process_group)
        super().__init__(params, defaults, **options)
        self.draw_ahead = bool(draw_ahead)
        self._holding = False  # the weights hold a training draw between steps (draw_ahead)
        self._held_ctx: Any = None  # the sample context kept open around a held draw (VOGN)
        # with per-rank draws, subtracting a draw rounds differently on each rank and the means
        # would drift apart by ulps: keep a separate mean, restored exactly, when syncing
        self._alias_first = type(self)._alias_first and not sync
        self._buckets: list[list[Bucket]] | None = None
        self._stashed = False
        self._deferred = False  # a single sample's statistic is still to be formed
        self._collected_norm: Tensor | None = None  # ‖ĝ‖ when a statistic was formed from it

    # ------------------------------------------------------------------ hooks for subclasses
    def _init_bucket(self, group: dict, bucket: Bucket) -> None:
        """Initialize a new bucket's state buffers (the mean is already the parameters)."""

    def _noise(self, group: dict, bucket: Bucket, generator: torch.Generator) -> None:
        raise NotImplementedError

    def _sample_context(self) -> contextlib.AbstractContextManager:
        """A context entered around forward/backward of a training sample (default: none;
        VOGN collects per-example curvature in it)."""
        return contextlib.nullcontext()

    def _draw(self, group: dict, bucket: Bucket, generator: torch.Generator) -> Tensor:
        """The values a posterior draw writes into the parameters of a bucket that does not
        alias its mean (default: m + σ⊙z, the offset σ⊙z kept in ``bucket.noise``). Aliased
        buckets add ``bucket.noise`` in place instead."""
        self._noise(group, bucket, generator)
        return torch.add(bucket.state["mean"], bucket.noise, out=bucket.work)

    def _draw_aliased(
        self, group: dict, bucket: Bucket, generator: torch.Generator, train: bool = True
    ) -> None:
        """Turn the weights (= m) into a draw in place, keeping the offset in ``bucket.noise``."""
        self._noise(group, bucket, generator)
        bucket.add_to_params(bucket.noise)

    def _undraw_aliased(self, group: dict, bucket: Bucket, train: bool = True) -> None:
        """Undo :meth:`_draw_aliased`: m = (m + σz) − σz, exact up to one rounding."""
        bucket.add_to_params(bucket.noise, alpha=-1.0)

    def _single_stat(self, group: dict, bucket: Bucket) -> Tensor:
        """The statistic of a single collected sample (default: in ``bucket.noise``, formed
        by :meth:`_form_stats`; kernels that regenerate the draw compute it here)."""
        return bucket.noise

    def _stat_power(self) -> int:
        """p with statistic(c·g) = cᵖ·statistic(g): how the per-sample statistic scales with
        the gradient (σz⊙g: 1, g⊙g: 2, a GGN that does not use g: 0). GradScaler's scale S is
        removed from ĝ as 1/S and from the statistic as 1/Sᵖ."""
        return 1

    def _center(self, group: dict, bucket: Bucket) -> Tensor:
        """The values the parameters hold outside ``sampled_params`` (default: the mean m)."""
        return bucket.state["mean"]

    def _sample_stat(self, group: dict, bucket: Bucket, grad: Tensor, out: Tensor) -> Tensor:
        raise NotImplementedError

    def _update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor) -> None:
        raise NotImplementedError

    def _before_update(self, group: dict, bucket: Bucket, stat: Tensor | None) -> None:
        """Hook run before the state of parameters without a gradient is saved."""

    def _after_update(self, group: dict, bucket: Bucket) -> None:
        """Hook run after the update (and after frozen parameters were restored)."""

    def _check_update(self, group: dict, bucket: Bucket, g_hat: Tensor, stat: Tensor) -> None:
        """Raise before anything is written if the update would leave the family's domain."""

    # ------------------------------------------------------------------ buckets, lazily
    def _make_buckets(self, group: dict) -> list[Bucket]:
        buckets = make_buckets(group["params"], self._state_names, self._alias_first)
        for bucket in buckets:
            self._init_bucket(group, bucket)
            self._attach_prior(bucket)
        return buckets

    # ------------------------------------------------------------------ a prior of its own
    def _prior_values(self, group: dict, fields: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The kernel's per-coordinate prior from λ₀'s fields over one parameter (subclasses
        that accept ``prior=``)."""
        raise NotImplementedError

    def _set_prior(self, prior: Any) -> None:
        """Check ``prior`` (a :class:`blr.ParameterPosterior` of this optimizer's posterior
        family over its trained parameters, group after group) and keep, per parameter, what
        the kernel needs (:meth:`_prior_values`); None: the optimizer's scalar prior."""
        self._prior_of = None
        if prior is None:
            return
        trained = [(g, p) for g in self.param_groups for p in g["params"] if p.requires_grad]
        prior = as_prior(prior, self._posterior_family.name, [p.shape for _, p in trained])
        out = {}
        for (group, p), fields in zip(trained, prior.fields_per_parameter()):
            dtype = torch.promote_types(p.dtype, torch.float32)
            values = self._prior_values(group, fields)
            out[id(p)] = tuple(v.to(p.device, dtype) for v in values)
        self._prior_of = out

    def _attach_prior(self, bucket: Bucket) -> None:
        prior = getattr(self, "_prior_of", None)
        if not prior or not any(id(p) in prior for p in bucket.params):
            return
        if not all(id(p) in prior for p in bucket.params):
            raise ValueError("prior covers only some of a param group's parameters")
        flats = []
        for k in range(len(prior[id(bucket.params[0])])):
            flat = bucket.zeros()
            torch._foreach_copy_(bucket.views(flat), [prior[id(p)][k] for p in bucket.params])
            flats.append(flat)
        bucket.prior = tuple(flats)

    def _all_buckets(self) -> list[list[Bucket]]:
        if self._buckets is None:
            self._buckets = [self._make_buckets(group) for group in self.param_groups]
        return self._buckets

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (a dict with ``"params"`` and, optionally, its own
        hyperparameters; the others are the defaults), e.g. layers unfrozen during fine-tuning.
        Its step counter starts at 0; it may be added after training has started.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
            >>> opt = IVON(body.parameters(), lr=0.1, ess=10, seed=0)
            >>> opt.add_param_group({"params": head.parameters(), "lr": 0.01})
            >>> [(g["lr"], g["ess"], g["step"]) for g in opt.param_groups]
            [(0.1, 10, 0), (0.01, 10, 0)]
        """
        param_group.setdefault("step", 0)
        super().add_param_group(param_group)
        self._check_params(self.param_groups[-1])
        if getattr(self, "_buckets", None) is not None:
            self._buckets.append(self._make_buckets(self.param_groups[-1]))

    # ------------------------------------------------------------------ sampling
    @contextlib.contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Within the context the parameters hold a posterior draw θ = m + σ⊙z; on exit they
        hold the mean m again (also when the body raises). With ``train=True`` the gradients
        present on exit are collected as one Monte Carlo sample for the next :meth:`step`
        (accumulate micro-batches by calling ``backward`` several times inside).

        fp32/fp64 weights are the mean itself (no copy is kept): a training draw is added in
        place and subtracted on exit, which restores m up to one rounding of the weights
        (|Δm| ≤ ulp(m + σz)); prediction draws (``train=False``) restore m exactly. A
        prediction draw may be nested in an open draw (e.g. a validation pass inside the
        training draw): on exit the open draw is back, exactly; a nested training draw raises
        RuntimeError and changes nothing.

        Under ``torch.distributed`` the first draw makes the seed agree across ranks (see the
        class docstring), so every rank must take it.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> mean = model.weight.clone()
            >>> with opt.sampled_params():       # a posterior draw, e.g. for prediction
            ...     torch.equal(model.weight, mean)
            False
            >>> torch.equal(model.weight, mean)  # the mean again on exit
            True
        """
        outer = getattr(self, "_open_draw", None)
        if outer is not None and train:
            raise RuntimeError(
                "sampled_params(train=True) inside another sampled_params context: a training "
                f"draw cannot be nested (a {outer} draw is open); nothing was changed"
            )
        if outer is not None or (self._holding and not train):
            # a prediction draw inside an open (or held) draw: restore it exactly
            with self._nested_prediction_draw(), self._watch_training_mode(), self._paused():
                yield
            return
        if self._holding and self._count == 0:  # draw_ahead: the held draw is this sample
            self._open_draw = "training"
            failed = True
            try:
                with self._sample_context() if self._held_ctx is None else contextlib.nullcontext():
                    yield
                failed = False
            finally:
                self._open_draw = None
            self._close_held_ctx()
            if not failed:
                self._collect_held()  # (the weights keep the draw: step() goes on from it)
            return
        self._release_held()  # a further sample of the same step: a fresh draw around m
        self._resolve_seed()
        groups = self._all_buckets()
        self._stash()  # a new draw overwrites the buffers that hold a single collected sample
        saved: dict[int, Tensor] = {}
        draw, self._draws = self._draws, self._draws + 1
        for group, buckets in zip(self.param_groups, groups):
            for b in buckets:
                b.check_params()
                gen = self._noise_generator(b, draw)
                if b.alias:
                    if not train:  # prediction draws restore m exactly (not the hot path)
                        saved[id(b)] = [t.clone() for t in b.targets()]
                    self._draw_aliased(group, b, gen, train)
                else:
                    b.write_params(self._draw(group, b, gen))
        failed = True
        self._open_draw = "training" if train else "prediction"
        try:
            with self._sample_context() if train else self._watch_training_mode():
                yield
            failed = False
        finally:
            self._open_draw = None
            for group, buckets in zip(self.param_groups, groups):
                for b in buckets:
                    if id(b) in saved:
                        torch._foreach_copy_(b.targets(), saved[id(b)])
                    elif b.alias:  # m = (m + σz) − σz, exact up to one rounding of the weights
                        self._undraw_aliased(group, b, train)
                    else:
                        b.write_params(self._center(group, b))
        if train and not failed:
            self._collect()

    @contextlib.contextmanager
    def _nested_prediction_draw(self) -> Iterator[None]:
        """A prediction draw θ = m + σz taken while another draw is open (e.g. a validation
        pass inside the training draw): the weights and the draw buffer are saved, and restored
        exactly on exit, so the open draw goes on as if the nested one had not happened."""
        groups = self._all_buckets()
        if any(b.counter is not None for buckets in groups for b in buckets):
            raise RuntimeError(
                "a prediction draw inside an open draw needs the noise in a buffer; the Triton "
                "path regenerates it (fused='triton'): close the open draw first"
            )
        saved = []
        for buckets in groups:
            for b in buckets:
                weights = torch.cat([t.detach().reshape(-1) for t in b.targets()])
                saved.append((b, weights, b.noise.clone()))
        draw, self._draws = self._draws, self._draws + 1
        try:
            with torch.no_grad():
                for group, buckets in zip(self.param_groups, groups):
                    for b in buckets:
                        gen = self._noise_generator(b, draw)
                        if b.alias:  # weights = m + σz_open: back to m, then m + σz
                            self._undraw_aliased(group, b, False)
                            self._draw_aliased(group, b, gen, False)
                        else:
                            b.write_params(self._draw(group, b, gen))
            yield
        finally:
            with torch.no_grad():
                for b, weights, noise in saved:
                    torch._foreach_copy_(b.targets(), b.views(weights))
                    b.noise.copy_(noise)

    @contextlib.contextmanager
    def mean_params(self) -> Iterator[None]:
        """Within the context the parameters hold the posterior mean m (for evaluation at the
        mean); on exit they hold what they held before. Outside ``sampled_params`` they
        already do, so this is a no-op unless an optimizer keeps a draw in the weights between
        steps (``IVON(fused="triton", draw_ahead=True)``).

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> mean = model.weight.clone()
            >>> with opt.mean_params():  # evaluation at the mean; no draw is held: a no-op
            ...     torch.equal(model.weight, mean)
            True
        """
        if not self._holding:
            yield
            return
        held = [(b, [t.clone() for t in b.targets()]) for bs in self._all_buckets() for b in bs]
        ctx, self._held_ctx = self._held_ctx, None  # (kept open: paused, not closed)
        self._release_held()
        try:
            with contextlib.nullcontext() if ctx is None else ctx.paused():
                yield
        finally:
            with torch.no_grad():
                for b, values in held:
                    torch._foreach_copy_(b.targets(), values)
            self._holding, self._held_ctx = True, ctx

    # ------------------------------------------------------------------ draw-ahead
    @torch.no_grad()
    def _hold_draw(self) -> None:
        """``draw_ahead``: write a new training draw into the weights, to be trained at by
        whatever the loop runs next (forward/backward with or without ``sampled_params``)."""
        if not self.draw_ahead or self._holding:
            return
        self._resolve_seed()
        groups = self._all_buckets()
        if any(b.counter is not None for bs in groups for b in bs):
            return  # the Triton path holds its counter-based draws itself
        draw, self._draws = self._draws, self._draws + 1
        for group, buckets in zip(self.param_groups, groups):
            for b in buckets:
                gen = self._noise_generator(b, draw)
                if b.alias:
                    self._draw_aliased(group, b, gen, True)
                else:
                    b.write_params(self._draw(group, b, gen))
        self._holding = True
        ctx = self._sample_context()  # (VOGN: its per-example pass, open until the step)
        if not isinstance(ctx, contextlib.nullcontext):
            ctx.__enter__()
            self._held_ctx = ctx

    def _collect_held(self) -> None:
        """The gradients at the held draw as one sample. Where the statistic is formed at
        collection (VOGN) it overwrites the draw buffer: the weights go back to m first."""
        self._close_held_ctx()
        if not self._defer_stat:
            self._release_held()
        self._collect()

    def _close_held_ctx(self) -> None:
        if self._held_ctx is not None:
            ctx, self._held_ctx = self._held_ctx, None
            ctx.__exit__(None, None, None)

    def _paused(self) -> contextlib.AbstractContextManager:
        """The held sample context paused (a prediction draw is not part of the sample)."""
        return contextlib.nullcontext() if self._held_ctx is None else self._held_ctx.paused()

    @torch.no_grad()
    def _release_held(self) -> None:
        """The weights back to the mean (θ − σz, up to one rounding; a non-aliased bucket's
        mean exactly)."""
        if not self._holding:
            return
        self._close_held_ctx()
        for group, buckets in zip(self.param_groups, self._all_buckets()):
            for b in buckets:
                if b.alias:
                    self._undraw_aliased(group, b, True)
                else:
                    b.write_params(self._center(group, b))
        self._holding = False

    @torch.no_grad()
    def _collect(self) -> None:
        self._count += 1
        k = self._count
        self._deferred = k == 1 and self._defer_stat
        for group, buckets in zip(self.param_groups, self._all_buckets()):
            for b in buckets:
                grad = b.sync_grads()
                if b.counter is not None and k == 1:
                    continue  # the fused kernel regenerates the draw itself
                if self._deferred:
                    continue  # formed at step() from the gradients as they are then
                stat = self._sample_stat(group, b, grad, out=b.noise)  # the draw is spent
                if k > 1:  # Welford means (the first sample was stashed)
                    b.acc_grad.add_(grad - b.acc_grad, alpha=1.0 / k)
                    b.acc_stat.add_(stat - b.acc_stat, alpha=1.0 / k)
        if not self._deferred:
            # gradients changed after this (unscale_, clipping) would not reach what was formed
            # from them: remembered, and checked at step() (MonteCarloOptimizer._amp_begin)
            self._collected_norm = self._grad_norm()

    def _grad_norm(self) -> Tensor:
        """‖ĝ‖ over the buckets' gradient buffers (this rank's shards, the fp32 copies)."""
        norms = [torch.linalg.vector_norm(b.state_grad) for bs in self._all_buckets() for b in bs]
        if not norms:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([n.to(torch.float64) for n in norms]))

    @torch.no_grad()
    def _form_stats(self) -> None:
        """Form the deferred statistic of a single collected sample (into ``bucket.noise``)."""
        if not self._deferred:
            return
        for group, buckets in zip(self.param_groups, self._all_buckets()):
            for b in buckets:
                if b.counter is None:
                    self._sample_stat(group, b, b.state_grad, out=b.noise)
        self._deferred = False

    @torch.no_grad()
    def _unscale(self, inv: Tensor) -> None:
        """Remove GradScaler's scale S from the collected samples: ĝ/S, statistic/Sᵖ
        (``inv`` = 1/S)."""
        inv_stat = inv ** self._stat_power()
        for buckets in self._all_buckets():
            for b in buckets:
                g_hat, stat = self._sample_buffers(b)
                g_hat.mul_(inv.to(g_hat.dtype))
                if stat is not None and not (self._deferred and stat is b.noise):
                    stat.mul_(inv_stat.to(stat.dtype))

    @torch.no_grad()
    def _stash(self, draw: bool = True) -> None:
        """Move a single collected sample out of the gradient and draw buffers into the
        averages, before either is overwritten (a second draw, or ``zero_grad`` when ``draw``
        is False)."""
        if self._count != 1 or self._stashed:
            return
        self._form_stats()
        for group, buckets in zip(self.param_groups, self._all_buckets()):
            for b in buckets:
                if b.acc_grad is None:
                    b.acc_grad = b.empty()
                    b.acc_stat = b.empty()
                b.acc_stat.copy_(self._single_stat(group, b))
                b.acc_grad.copy_(b.state_grad)
        self._stashed = True

    def _sample_buffers(self, b: Bucket) -> tuple[Tensor, Tensor | None]:
        """(ĝ, averaged statistic) for the next update; the statistic is None when a fused
        kernel computes it itself from regenerated noise (one sample, counter-based noise)."""
        if self._count > 1 or self._stashed:
            return b.acc_grad, b.acc_stat
        return b.state_grad, (None if b.counter is not None else b.noise)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients. The parameters this optimizer trains keep their ``.grad`` as views
        of its flat gradient buffer, zeroed in place (whatever ``set_to_none`` says); other
        parameters follow ``set_to_none``.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> with opt.sampled_params(train=True):
            ...     model(torch.ones(2, 3)).sum().backward()
            >>> opt.zero_grad()          # the sample collected above is kept for step()
            >>> model.weight.grad        # zeroed in place, not None
            tensor([[0., 0., 0.]])
        """
        if self._buckets is None:
            super().zero_grad(set_to_none)
            return
        self._stash(draw=False)
        self._collected_norm = None  # the collected samples are kept; their gradients go
        owned = set()
        for buckets in self._buckets:
            for b in buckets:
                b.zero_grad()
                owned.update(id(p) for p in b.params)
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in owned and p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().zero_()

    def _reset_samples(self) -> None:
        self._count = 0
        self._stashed = False
        self._deferred = False
        self._collected_norm = None
        for buckets in self._buckets or []:
            for b in buckets:
                b.reset_samples()

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update the posterior from the collected samples.

        With a ``closure`` (which must zero the gradients, compute the loss and call
        ``backward``, as for LBFGS), ``mc_samples`` draws are taken here, so the optimizer drops
        into training loops that only call ``optimizer.step(closure)``. Without one, the
        samples collected by ``sampled_params(train=True)`` are used; none is an error.

        Returns the loss averaged over the samples (with a closure), else None.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> with opt.sampled_params(train=True):  # collect a Monte Carlo sample ...
            ...     model(torch.ones(2, 3)).sum().backward()
            >>> opt.step()                            # ... and update the posterior with it
            >>> opt.param_groups[0]["step"]
            1
        """
        loss = self._closure_samples(closure)
        if self._holding and self._count == 0:  # draw_ahead: the gradients at the held draw
            self._collect_held()
        try:
            return self._step_samples(loss)
        finally:
            self._hold_draw()  # draw_ahead: the next training draw (also after a skip)

    def _step_samples(self, loss: Tensor | None) -> Tensor | None:
        """:meth:`step` from the collected samples (the weights back at the mean first)."""
        if self._count == 0:
            self._no_sample()
            return loss
        self._sync_momentum()
        skip, inv = self._amp_begin(self._reset_samples)
        if skip:
            return loss
        if inv is not None:
            self._unscale(inv)
        self._release_held()  # draw_ahead: back to m while the draw buffer still holds σz
        self._form_stats()
        groups = self._all_buckets()
        # all-reduce first: a NaN on one rank reaches every rank, and all raise (or skip) alike
        # instead of one raising while the others wait in the all-reduce
        self._sync()
        bad = any(
            # NaN/Inf propagate through a sum: one reduction each, no boolean temporaries
            not bool(torch.isfinite(sum(x.sum() for x in self._sample_buffers(b) if x is not None)))
            for buckets in groups
            for b in buckets
        )
        # sharded parameters: a NaN may reach one rank's shards only; every rank must agree
        if self._agree_max(float(bad)) > 0:
            self._reset_samples()
            if inv is not None:  # under GradScaler an overflow is expected: skip
                self.skipped_steps += 1
                return loss
            self._nonfinite_step("the gradients")
            return loss
        try:  # every bucket is checked before any is written
            for group, buckets in zip(self.param_groups, groups):
                for b in buckets:
                    self._check_update(group, b, *self._sample_buffers(b))
        except Exception:
            self._reset_samples()
            raise
        for group, buckets in zip(self.param_groups, groups):
            group["step"] += 1
            for b in buckets:
                g_hat, stat = self._sample_buffers(b)
                b.frozen_idx = frozen = b.untouched(g_hat)  # parameters without a gradient
                with b.flat_first():  # (an aliased mean: gathered here, written back on exit)
                    self._before_update(group, b, stat)
                    saved = b.save_segments(frozen)  # ... keep their state unchanged
                    self._update(group, b, g_hat, stat)
                    b.restore_segments(frozen, saved)
                    self._after_update(group, b)
                    b.write_params(self._center(group, b))
        self._reset_samples()
        return loss

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """Per-parameter state (``mean`` and the subclass's buffers, fp32), the param groups
        (hyperparameters and the step counter), and the random generators' states.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> sd = opt.state_dict()
            >>> sorted(sd["state"][0]), sd["state"][0]["mean"].shape, sd["blr"]["seed"]
            (['hess', 'mean', 'momentum'], torch.Size([1, 3]), 0)

        With ``draw_ahead`` the saved ``mean`` is the mean, and the held draw (the weights and
        its offset) is saved too, so that a resumed run trains at the same draw.
        """
        if not self._holding:
            return save_buckets(self)
        held = [
            [
                {"weights": torch.cat([t.reshape(-1) for t in b.targets()]).clone(),
                 "noise": b.noise.clone()}
                for b in buckets
            ]
            for buckets in self._all_buckets()
        ]  # fmt: skip
        with self.mean_params():
            out = save_buckets(self)
        out["blr"]["held"] = held
        return out

    # ------------------------------------------------------------------ the posterior
    _posterior_family: ClassVar[ExpFamily] = DiagGaussian()

    def _posterior_fields(
        self, group: dict, param: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, ...]:
        """λ of one parameter's posterior from its ``state_dict`` entry (subclasses)."""
        raise NotImplementedError

    def posterior(self, model: torch.nn.Module | None = None) -> ParameterPosterior:
        """The posterior as a :class:`blr.ParameterPosterior` over the trained parameters
        (group after group), read through :meth:`state_dict` (so it is the mean even when the
        weights hold a draw); with ``model`` over its parameters in ``model.parameters()``
        order (each must be trained by this optimizer), its layout carrying their names. λ is a
        copy.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=50, hess_init=0.5, weight_decay=0.25)
            >>> q = opt.posterior(model)
            >>> q.family.name, q.layout.names, q.family.to_moments(q.nat)[1].tolist()  # N(h + δ)
            ('gaussian_diag', ('weight', 'bias'), [37.5, 37.5, 37.5])
        """
        sd = self.state_dict()
        found: dict[int, tuple[Tensor, ...]] = {}
        trained: list[Tensor] = []
        for group, packed in zip(self.param_groups, sd["param_groups"]):
            for p, k in zip(group["params"], packed["params"]):
                entry = sd["state"].get(k)
                if entry is not None:  # (a frozen parameter is not part of the posterior)
                    found[id(p)] = self._posterior_fields(group, p, entry)
                    trained.append(p)
        target: Any = trained
        if model is not None:
            named = list(model.named_parameters())
            for name, p in named:
                if id(p) not in found:
                    raise ValueError(f"model's parameter {name!r} is not trained by this optimizer")
            trained, target = [p for _, p in named], model
        if not trained:
            raise ValueError("the optimizer trains no parameter")
        fam = self._posterior_family
        count = len(found[id(trained[0])])
        fields = [torch.cat([found[id(p)][i].reshape(-1) for p in trained]) for i in range(count)]
        return ParameterPosterior(fam, fam.nat_type(*fields), target)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of the same optimizer class and parameter layout; any
        mismatch raises ValueError before anything is changed.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model, other = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> resumed = IVON(other.parameters(), lr=0.1, ess=10)  # other weights and seed
            >>> resumed.load_state_dict(opt.state_dict())
            >>> with opt.sampled_params(), resumed.sampled_params():  # the same next draw
            ...     torch.equal(model.weight, other.weight)
            True
        """
        load_buckets(self, state_dict)
        self._holding = False  # the weights are the checkpoint's mean
        held = state_dict["blr"].get("held")
        if self.draw_ahead and held is not None:  # the draw the saved run was holding
            with torch.no_grad():
                for buckets, saved in zip(self._all_buckets(), held):
                    for b, h in zip(buckets, saved):
                        b.noise.copy_(h["noise"])
                        torch._foreach_copy_(b.targets(), b.views(h["weights"]))
            self._holding = True
        self._hold_draw()  # (draw_ahead without a saved draw: a new one)
        if self._momentum_key is not None:  # the groups' values are the checkpoint's
            self._momentum_seen = {
                i: g[self._momentum_key] for i, g in enumerate(self.param_groups)
            }


class PrecisionSampler(SamplingOptimizer):
    """Diagonal Gaussians in IVON's parameterization: state (m, ḡ, h), draws
    θ = m + z/√(N(h + δ)) with N = ``ess`` and δ = ``weight_decay`` of the group (IVON, VON,
    VOGN, OGN), updated by :func:`blr.optim._functional.ivon_update_`."""

    _state_names = ("mean", "momentum", "hess")
    _momentum_key = "beta1"

    def _init_bucket(self, group: dict, bucket: Bucket) -> None:
        bucket.state["hess"].fill_(group["hess_init"])

    def _posterior_fields(
        self, group: dict, param: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, ...]:
        """N(m, 1/(N(h + δ))) as λ = (S m, −½S) (δ of a prior of its own, if any)."""
        prior = getattr(self, "_prior_of", None)
        delta = prior[id(param)][0] if prior else group["weight_decay"]
        prec = group["ess"] * (state["hess"] + delta)
        return prec * state["mean"], -0.5 * prec

    def _prior_values(self, group: dict, fields: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """N(m₀, S₀⁻¹) in IVON's units: (δ = S₀/N, m₀)."""
        prec0 = -2 * fields[1]
        return prec0 / group["ess"], fields[0] / prec0

    def _delta(self, group: dict, bucket: Bucket) -> float | Tensor:
        """δ of the bucket: the group's ``weight_decay``, or the per-coordinate δ of a prior."""
        prior = getattr(bucket, "prior", None)
        return group["weight_decay"] if prior is None else prior[0]

    def _noise(self, group: dict, bucket: Bucket, generator: torch.Generator) -> None:
        ivon_noise(
            bucket.state["hess"],
            ess=group["ess"],
            weight_decay=self._delta(group, bucket),
            generator=generator,
            out=bucket.noise,
            scratch=bucket.scratch,
        )

    def _compiled_draw(self, group: dict, bucket: Bucket, generator: torch.Generator) -> None:
        """:meth:`_draw_aliased` in one ``torch.compile``'d loop after the normal draw: σ⊙z
        into ``bucket.noise`` and θ = m + σ⊙z into the weights (= m), in place."""
        with bucket.flat_first() as mean:
            compiled_draw_(
                mean,
                bucket.state["hess"],
                bucket.noise,
                ess=group["ess"],
                weight_decay=group["weight_decay"],
                generator=generator,
            )

    def _ivon_update(
        self,
        group: dict,
        bucket: Bucket,
        g_hat: Tensor,
        stat: Tensor | None,
        impl: str,
        **how: Any,
    ) -> None:
        """:func:`~blr.optim._functional.ivon_update_` of the bucket's (m, ḡ, h) with the
        group's hyperparameters; ``how``: ``hess_approx``, ``rescale_lr``, ``debias``,
        ``correction``. Only the eager path allocates the bucket's scratch buffer."""
        state = bucket.state
        ivon_update_(
            state["mean"], state["momentum"], state["hess"], g_hat, stat, lr=group["lr"],
            ess=group["ess"], hess_init=group["hess_init"], weight_decay=group["weight_decay"],
            beta1=group["beta1"], beta2=group["beta2"], step=group["step"],
            clip_radius=group.get("clip_radius", math.inf), impl=impl,
            scratch=bucket.scratch if impl == "eager" else None, counter=bucket.counter,
            prior=getattr(bucket, "prior", None), **how,
        )  # fmt: skip
