"""The adapter between ``torch.optim`` and the flat-buffer kernels of :mod:`blr.kernels`.

:class:`SamplingOptimizer` owns what every weight-perturbation optimizer (IVON, VON, VOGN, ...)
needs: buckets of parameters per (param group, device, dtype) with flat fp32 state, posterior
draws written into the parameters (``sampled_params``), gradients gathered into flat buffers with
one multi-tensor copy (no ``torch.cat``), Monte Carlo averaging, non-finite checks, an own random
generator per device, and a ``state_dict`` that resumes bit-exactly. Subclasses name their state
buffers, the posterior standard deviation, and the update (a kernel call).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from blr.kernels.diag_gaussian import ivon_noise

_FORMAT = 1
_SCRATCH = 1 << 16  # least elements of the per-bucket work buffer of the chunked kernels


class _Bucket:
    """The trainable parameters of one group on one (device, dtype) and their flat buffers.

    With ``alias_first`` (Gaussian optimizers) and fp32/fp64 parameters, the first state buffer
    (the mean m) IS the parameters' storage: every parameter becomes a view of one flat tensor,
    draws are added to it in place and subtracted on exit, so the optimizer keeps no copy of the
    weights. Gradients likewise live in one flat buffer whose views are the parameters' ``.grad``.
    Low-precision parameters keep an fp32 master copy of m (and of the gradient).
    """

    def __init__(
        self, params: list[torch.nn.Parameter], state_names: tuple[str, ...], alias_first: bool
    ) -> None:
        self.params = params
        self.device, self.dtype = params[0].device, params[0].dtype
        self.numels = [p.numel() for p in params]
        self.numel = sum(self.numels)
        # fp32 state for fp32/bf16/fp16 parameters, fp64 for fp64 ones
        self.state_dtype = torch.promote_types(self.dtype, torch.float32)
        self.alias = alias_first and self.dtype == self.state_dtype
        kw = dict(device=self.device, dtype=self.state_dtype)
        self.state: dict[str, Tensor] = {}
        with torch.no_grad():
            for i, name in enumerate(state_names):
                self.state[name] = torch.zeros(self.numel, **kw)
                if i == 0:  # starts as the parameters' values
                    torch._foreach_copy_(self.views(self.state[name]), [p.detach() for p in params])
            if self.alias:
                for p, v in zip(params, self.views(self.state[state_names[0]])):
                    p.data = v
        self._first = state_names[0]
        self._kw = kw
        self._noise: Tensor | None = None  # allocated on first use (kernels that regenerate
        # their noise from a counter never need it)
        self.grad = torch.zeros(self.numel, device=self.device, dtype=self.dtype)
        self.grad32 = None if self.dtype == self.state_dtype else torch.zeros(self.numel, **kw)
        self.work = None if self.alias else torch.zeros(self.numel, **kw)
        self._scratch: Tensor | None = None
        self.acc_grad: Tensor | None = None  # Monte Carlo averages, from the second sample on
        self.acc_stat: Tensor | None = None
        self.seen = [False] * len(params)
        self.had_grad = [False] * len(params)
        # counter-based noise (fused GPU kernels): key, index of the next draw, current draw
        self.philox_seed = 0
        self.draws = 0
        self.drawn: int | None = None
        self.counter_noise = False
        self.pending: int | None = None  # the draw the weights hold between steps, if any
        self.fresh = False  # ... not yet used by a training sample
        self.frozen_idx: list[int] = []  # parameters the running update must leave alone
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._marker(i)) for i, p in enumerate(params)
        ]

    @property
    def noise(self) -> Tensor:
        """The flat draw buffer σ⊙z (later the sample statistic), allocated on first use."""
        if self._noise is None:
            self._noise = torch.zeros(self.numel, **self._kw)
        return self._noise

    @property
    def scratch(self) -> Tensor:
        """The work buffer of the chunked kernels (an eighth of the bucket, at least 64K
        elements), allocated on first use."""
        if self._scratch is None:
            n = min(self.numel, max(_SCRATCH, self.numel // 8))
            self._scratch = torch.empty(n, **self._kw)
        return self._scratch

    def _marker(self, i: int) -> Callable:
        def mark(_: Tensor) -> None:
            self.seen[i] = True

        return mark

    def views(self, flat: Tensor) -> list[Tensor]:
        return [v.view(p.shape) for v, p in zip(flat.split(self.numels), self.params)]

    def check_alias(self) -> None:
        if not self.alias:
            return
        first = self.state[self._first]
        for p, v in zip(self.params, self.views(first)):
            if p.data_ptr() != v.data_ptr():
                raise RuntimeError(
                    "a parameter's storage was replaced after the optimizer started (e.g. by "
                    "model.to(...) or load_state_dict(assign=True)); create the optimizer after "
                    "moving the model"
                )

    def write_params(self, flat: Tensor) -> None:
        if self.alias and flat is self.state[self._first]:
            return
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.views(flat))

    def sync_grads(self) -> Tensor:
        """Make every ``.grad`` a view of the flat gradient buffer (copying gradients that
        autograd allocated afresh) and return the gradient in the state dtype."""
        views = self.views(self.grad)
        copy_to, copy_from = [], []
        for i, (p, v) in enumerate(zip(self.params, views)):
            g = p.grad
            self.had_grad[i] = g is not None
            if g is None:
                v.zero_()
                p.grad = v
            elif g.data_ptr() != v.data_ptr():
                copy_to.append(v)
                copy_from.append(g)
                p.grad = v
        if copy_to:
            with torch.no_grad():
                torch._foreach_copy_(copy_to, copy_from)
        if self.grad32 is None:
            return self.grad
        return self.grad32.copy_(self.grad)

    def zero_grad(self) -> None:
        self.grad.zero_()
        for p, v in zip(self.params, self.views(self.grad)):
            p.grad = v


class SamplingOptimizer(torch.optim.Optimizer):
    """Base class of the Gaussian weight-perturbation optimizers (see the module docstring).

    Subclasses define ``_state_names`` (flat fp32 buffers; the first starts as a copy of the
    parameters), ``_init_bucket``, ``_noise`` (write σ⊙z into ``bucket.noise``) or ``_draw`` and
    ``_center`` (for non-Gaussian posteriors), ``_sample_stat`` (the per-sample statistic averaged
    into ``bucket.avg_stat``) and ``_update`` (the kernel call).
    """

    _state_names: tuple[str, ...] = ("mean",)
    _alias_first = True  # the first state buffer is the mean of a Gaussian: alias the weights

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        mc_samples: int = 1,
        nonfinite: str = "raise",
        seed: int | None = None,
        missing_sample: str = "raise",
    ) -> None:
        if missing_sample not in ("raise", "skip"):
            raise ValueError(f"missing_sample must be 'raise' or 'skip', got {missing_sample!r}")
        if int(mc_samples) != mc_samples or mc_samples < 1:
            raise ValueError(f"mc_samples must be an integer ≥ 1, got {mc_samples}")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        super().__init__(params, defaults)
        self.mc_samples = int(mc_samples)
        self.nonfinite = nonfinite
        self.missing_sample = missing_sample
        self._seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._buckets: list[list[_Bucket]] | None = None
        self._count = 0
        self._stashed = False
        self.skipped_steps = 0
        for group in self.param_groups:
            group.setdefault("step", 0)

    # ------------------------------------------------------------------ hooks for subclasses
    def _init_bucket(self, group: dict, bucket: _Bucket) -> None:
        """Initialize a new bucket's state buffers (``mean`` is already the parameters)."""

    def _noise(self, group: dict, bucket: _Bucket, generator: torch.Generator) -> None:
        raise NotImplementedError

    def _sample_context(self) -> contextlib.AbstractContextManager:
        """A context entered around forward/backward of a training sample (default: none;
        VOGN collects per-example curvature in it)."""
        return contextlib.nullcontext()

    def _draw(self, group: dict, bucket: _Bucket, generator: torch.Generator) -> Tensor:
        """The values a posterior draw writes into the parameters of a bucket that does not
        alias its mean (default: m + σ⊙z, the offset σ⊙z kept in ``bucket.noise``). Aliased
        buckets add ``bucket.noise`` in place instead."""
        self._noise(group, bucket, generator)
        return torch.add(bucket.state["mean"], bucket.noise, out=bucket.work)

    def _draw_aliased(
        self, group: dict, bucket: _Bucket, generator: torch.Generator, train: bool = True
    ) -> None:
        """Turn the weights (= m) into a draw in place, keeping the offset in ``bucket.noise``."""
        self._noise(group, bucket, generator)
        bucket.state[bucket._first].add_(bucket.noise)

    def _undraw_aliased(self, group: dict, bucket: _Bucket, train: bool = True) -> None:
        """Undo :meth:`_draw_aliased`: m = (m + σz) − σz, exact up to one rounding."""
        bucket.state[bucket._first].sub_(bucket.noise)

    def _single_stat(self, group: dict, bucket: _Bucket) -> Tensor:
        """The statistic of a single collected sample (default: computed by ``_collect`` into
        ``bucket.noise``; kernels that defer it compute it here)."""
        return bucket.noise

    def _center(self, group: dict, bucket: _Bucket) -> Tensor:
        """The values the parameters hold outside ``sampled_params`` (default: the mean m)."""
        return bucket.state["mean"]

    def _sample_stat(self, group: dict, bucket: _Bucket, grad: Tensor, out: Tensor) -> Tensor:
        raise NotImplementedError

    def _update(self, group: dict, bucket: _Bucket, g_hat: Tensor, stat: Tensor) -> None:
        raise NotImplementedError

    def _before_update(self, group: dict, bucket: _Bucket, stat: Tensor | None) -> None:
        """Hook run before the state of parameters without a gradient is saved."""

    def _after_update(self, group: dict, bucket: _Bucket) -> None:
        """Hook run after the update (and after frozen parameters were restored)."""

    def _check_update(self, group: dict, bucket: _Bucket, g_hat: Tensor, stat: Tensor) -> None:
        """Raise before anything is written if the update would leave the family's domain."""

    # ------------------------------------------------------------------ buckets, lazily
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed + 7919 * len(self._generators))
            self._generators[device] = gen
        return gen

    def _all_buckets(self) -> list[list[_Bucket]]:
        if self._buckets is None:
            built: list[list[_Bucket]] = []
            for group in self.param_groups:
                by_key: dict[tuple, list] = {}
                for p in group["params"]:
                    if p.requires_grad:  # frozen parameters are left alone
                        by_key.setdefault((p.device, p.dtype), []).append(p)
                buckets = []
                for params in by_key.values():
                    bucket = _Bucket(params, self._state_names, self._alias_first)
                    self._init_bucket(group, bucket)
                    buckets.append(bucket)
                built.append(buckets)
            self._buckets = built
        return self._buckets

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("step", 0)
        super().add_param_group(param_group)
        if getattr(self, "_buckets", None) is not None:
            group = self.param_groups[-1]
            by_key: dict[tuple, list] = {}
            for p in group["params"]:
                if p.requires_grad:
                    by_key.setdefault((p.device, p.dtype), []).append(p)
            buckets = []
            for params in by_key.values():
                bucket = _Bucket(params, self._state_names, self._alias_first)
                self._init_bucket(group, bucket)
                buckets.append(bucket)
            self._buckets.append(buckets)

    # ------------------------------------------------------------------ sampling
    @contextlib.contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Within the context the parameters hold a posterior draw θ = m + σ⊙z; on exit they
        hold the mean m again (also when the body raises). With ``train=True`` the gradients
        present on exit are collected as one Monte Carlo sample for the next :meth:`step`
        (accumulate micro-batches by calling ``backward`` several times inside).

        fp32/fp64 weights are the mean itself (no copy is kept): a training draw is added in
        place and subtracted on exit, which restores m up to one rounding of the weights
        (|Δm| ≤ ulp(m + σz)); prediction draws (``train=False``) restore m exactly."""
        groups = self._all_buckets()
        self._stash()  # a new draw overwrites the buffers that hold a single collected sample
        saved: dict[int, Tensor] = {}
        for group, buckets in zip(self.param_groups, groups):
            for b in buckets:
                b.check_alias()
                gen = self._generator(b.device)
                if b.alias:
                    if not train:  # prediction draws restore m exactly (not the hot path)
                        saved[id(b)] = b.state[b._first].clone()
                    self._draw_aliased(group, b, gen, train)
                else:
                    b.write_params(self._draw(group, b, gen))
        failed = True
        try:
            with self._sample_context() if train else contextlib.nullcontext():
                yield
            failed = False
        finally:
            for group, buckets in zip(self.param_groups, groups):
                for b in buckets:
                    if id(b) in saved:
                        b.state[b._first].copy_(saved[id(b)])
                    elif b.alias:  # m = (m + σz) − σz, exact up to one rounding of the weights
                        self._undraw_aliased(group, b, train)
                    else:
                        b.write_params(self._center(group, b))
        if train and not failed:
            self._collect()

    @contextlib.contextmanager
    def mean_params(self) -> Iterator[None]:
        """Within the context the parameters hold the posterior mean m (for evaluation at the
        mean); on exit they hold what they held before. Outside ``sampled_params`` they
        already do, so this is a no-op unless an optimizer keeps a draw in the weights between
        steps (``IVON(fused="triton", draw_ahead=True)``)."""
        yield

    @torch.no_grad()
    def _collect(self) -> None:
        self._count += 1
        k = self._count
        for group, buckets in zip(self.param_groups, self._all_buckets()):
            for b in buckets:
                grad = b.sync_grads()
                if b.counter_noise and k == 1:
                    continue  # the fused kernel regenerates the draw itself
                stat = self._sample_stat(group, b, grad, out=b.noise)  # the draw is spent
                if k > 1:  # Welford means (the first sample was stashed)
                    b.acc_grad.add_(grad - b.acc_grad, alpha=1.0 / k)
                    b.acc_stat.add_(stat - b.acc_stat, alpha=1.0 / k)

    @torch.no_grad()
    def _stash(self) -> None:
        """Move a single collected sample out of the gradient and draw buffers into the
        averages, before either is overwritten (a second draw, ``zero_grad``)."""
        if self._count != 1 or self._stashed:
            return
        for group, buckets in zip(self.param_groups, self._all_buckets()):
            for b in buckets:
                if b.acc_grad is None:
                    b.acc_grad = torch.empty(b.numel, **b._kw)
                    b.acc_stat = torch.empty(b.numel, **b._kw)
                b.acc_stat.copy_(self._single_stat(group, b))
                b.acc_grad.copy_(b.grad if b.grad32 is None else b.grad32)
        self._stashed = True

    def _sample_buffers(self, b: _Bucket) -> tuple[Tensor, Tensor | None]:
        """(ĝ, averaged statistic) for the next update; the statistic is None when a fused
        kernel computes it itself from regenerated noise (one sample, counter-based noise)."""
        if self._count > 1 or self._stashed:
            return b.acc_grad, b.acc_stat
        grad = b.grad if b.grad32 is None else b.grad32
        return grad, (None if b.counter_noise else b.noise)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients. The parameters this optimizer trains keep their ``.grad`` as views
        of its flat gradient buffer, zeroed in place (whatever ``set_to_none`` says); other
        parameters follow ``set_to_none``."""
        if self._buckets is None:
            super().zero_grad(set_to_none)
            return
        self._stash()
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
        for buckets in self._buckets or []:
            for b in buckets:
                b.seen = [False] * len(b.params)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update the posterior from the collected samples.

        With a ``closure`` (which must zero the gradients, compute the loss and call
        ``backward``, as for LBFGS), ``mc_samples`` draws are taken here, so the optimizer drops
        into training loops that only call ``optimizer.step(closure)``. Without one, the
        samples collected by ``sampled_params(train=True)`` are used; none is an error.

        Returns the loss averaged over the samples (with a closure), else None.
        """
        loss = None
        if closure is not None:
            losses = []
            for _ in range(self.mc_samples):
                with torch.enable_grad(), self.sampled_params(train=True):
                    losses.append(closure())
            loss = sum(x.detach() for x in losses) / len(losses)
        if self._count == 0:
            if self.missing_sample == "skip":
                return loss
            raise RuntimeError(
                f"{type(self).__name__}.step() found no gradient sample: call step(closure), or "
                "run forward and backward inside `with optimizer.sampled_params(train=True):`"
            )
        groups = self._all_buckets()
        bad = [
            b
            for buckets in groups
            for b in buckets
            # NaN/Inf propagate through a sum: one reduction each, no boolean temporaries
            if not bool(
                torch.isfinite(sum(x.sum() for x in self._sample_buffers(b) if x is not None))
            )
        ]
        if bad:
            self._reset_samples()
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return loss
            raise FloatingPointError(
                f"{type(self).__name__}.step(): NaN/Inf in the gradients; the state was not "
                "changed (pass nonfinite='skip' to skip such steps)"
            )
        self._sync()
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
                # untouched: no backward reached the parameter and its gradient is zero (a
                # gradient written by hand, without autograd's hook, still counts)
                # (when no hook fired at all, the gradients were written by hand: every
                # parameter that had a .grad counts)
                if any(b.seen):
                    frozen = [
                        i
                        for i, (s, v) in enumerate(zip(b.seen, g_hat.split(b.numels)))
                        if not s and not bool(v.any())
                    ]
                else:
                    frozen = [i for i, h in enumerate(b.had_grad) if not h]
                b.frozen_idx = frozen
                self._before_update(group, b, stat)
                saved = self._save_segments(b, frozen)
                self._update(group, b, g_hat, stat)
                self._restore_segments(b, frozen, saved)
                self._after_update(group, b)
                b.write_params(self._center(group, b))
        self._reset_samples()
        return loss

    def _sync(self) -> None:
        """Hook for distributed averaging of the samples (see the subclasses' ``sync``)."""

    def _save_segments(self, b: _Bucket, idx: list[int]) -> list[dict[str, Tensor]]:
        """Parameters that got no gradient in any sample keep their state unchanged."""
        if not idx:
            return []
        out = []
        for i in idx:
            out.append({k: self._segment(b, v, i).clone() for k, v in b.state.items()})
        return out

    def _restore_segments(self, b: _Bucket, idx: list[int], saved: list) -> None:
        for i, seg in zip(idx, saved):
            for k, v in seg.items():
                self._segment(b, b.state[k], i).copy_(v)

    @staticmethod
    def _segment(b: _Bucket, flat: Tensor, i: int) -> Tensor:
        start = sum(b.numels[:i])
        return flat[start : start + b.numels[i]]

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """Per-parameter state (``mean`` and the subclass's buffers, fp32), the param groups
        (hyperparameters and the step counter), and the random generators' states."""
        groups = self._all_buckets()
        index, state, packed = {}, {}, []
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            g["params"] = ids
            packed.append(g)
        for buckets in groups:
            for b in buckets:
                for name, flat in b.state.items():
                    for p, v in zip(b.params, b.views(flat)):
                        state.setdefault(index[id(p)], {})[name] = v.clone()
        return {
            "state": state,
            "param_groups": packed,
            "blr": {
                "optimizer": type(self).__name__,
                "format": _FORMAT,
                "seed": self._seed,
                "generators": {str(d): g.get_state() for d, g in self._generators.items()},
                "skipped_steps": self.skipped_steps,
                # counter-based noise of fused kernels: (key, next draw) per bucket
                "counters": [[[b.philox_seed, b.draws] for b in bs] for bs in groups],
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of the same optimizer class and parameter layout; any
        mismatch raises ValueError before anything is changed."""
        meta = state_dict.get("blr") if isinstance(state_dict, dict) else None
        name = type(self).__name__
        if not isinstance(meta, dict) or meta.get("optimizer") != name:
            found = meta.get("optimizer") if isinstance(meta, dict) else "not a blr.optim one"
            raise ValueError(f"state_dict is not from blr.optim.{name} (found: {found})")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(groups)} param groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        for i, (g, mine) in enumerate(zip(groups, self.param_groups)):
            if len(g["params"]) != len(mine["params"]):
                raise ValueError(
                    f"param group {i} has {len(g['params'])} parameters in the state_dict and "
                    f"{len(mine['params'])} here"
                )
        buckets = self._all_buckets()
        ids = {}
        for g, mine in zip(groups, self.param_groups):
            for k, p in zip(g["params"], mine["params"]):
                ids[id(p)] = k
        state = state_dict["state"]
        for bucket_list in buckets:  # check everything before writing anything
            for b in bucket_list:
                for p in b.params:
                    entry = state.get(ids[id(p)])
                    if entry is None or set(entry) != set(b.state):
                        raise ValueError(
                            f"state_dict lacks the state {sorted(b.state)} of a "
                            f"parameter of shape {tuple(p.shape)}"
                        )
                    for k, v in entry.items():
                        if tuple(v.shape) != tuple(p.shape):
                            raise ValueError(
                                f"state_dict['state'][{ids[id(p)]}]['{k}'] has shape "
                                f"{tuple(v.shape)}, the parameter {tuple(p.shape)}"
                            )
        with torch.no_grad():
            for group, bucket_list in zip(self.param_groups, buckets):
                for b in bucket_list:
                    for name, flat in b.state.items():
                        torch._foreach_copy_(
                            b.views(flat), [state[ids[id(p)]][name] for p in b.params]
                        )
                    b.write_params(self._center(group, b))
        for g, mine in zip(groups, self.param_groups):
            for k, v in g.items():
                if k != "params":
                    mine[k] = v
        self._seed = int(meta["seed"])
        self._generators = {}
        for dev, gstate in meta["generators"].items():
            self._generator(torch.device(dev)).set_state(gstate)
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        for bucket_list, counters in zip(buckets, meta.get("counters", [])):
            for b, (key, draws) in zip(bucket_list, counters):
                b.philox_seed, b.draws = int(key), int(draws)
        self._reset_samples()


class PrecisionSampler(SamplingOptimizer):
    """Diagonal Gaussians in IVON's parameterization: state (m, ḡ, h), draws
    θ = m + z/√(N(h + δ)) with N = ``ess`` and δ = ``weight_decay`` of the group (IVON, VON,
    VOGN, OGN)."""

    _state_names = ("mean", "momentum", "hess")

    def _init_bucket(self, group: dict, bucket: _Bucket) -> None:
        bucket.state["hess"].fill_(group["hess_init"])

    def _noise(self, group: dict, bucket: _Bucket, generator: torch.Generator) -> None:
        ivon_noise(
            bucket.state["hess"],
            ess=group["ess"],
            weight_decay=group["weight_decay"],
            generator=generator,
            out=bucket.noise,
            scratch=bucket.scratch,
        )


def check_beta(value: float, name: str, *, closed: bool = False) -> float:
    """A rate in [0, 1) (or [0, 1] with ``closed``); ValueError names it otherwise."""
    v = float(value)
    if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise ValueError(f"{name} must lie in [0, 1{']' if closed else ')'}, got {value}")
    return v


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """A finite positive (or non-negative) hyperparameter; ValueError names it otherwise."""
    v = float(value)
    ok = v >= 0 if allow_zero else v > 0
    if not (ok and (math.isfinite(v) or name == "clip_radius")):
        raise ValueError(f"{name} must be {'≥ 0' if allow_zero else '> 0'}, got {value}")
    return v
