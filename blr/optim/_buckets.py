"""Parameter buckets and their flat buffers.

The weight-perturbation optimizers keep their state per bucket: the trainable parameters of one
param group on one (device, dtype) (and sharding), with flat fp32 (fp64 for fp64 parameters)
state buffers. With fp32/fp64 weights the parameters themselves hold the mean, each in its own
storage (so ``safetensors`` and ``accelerate`` save them as the model's own tensors), and the
optimizer keeps no copy of the weights: draws are added to them in place, and the update works on
a transient flat copy (:meth:`Bucket.flat_first`). The gradients live in one flat buffer whose
views are the parameters' ``.grad``. Buckets that draw their noise from a counter (the fused
Triton kernels) carry a :class:`CounterNoise`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

_SCRATCH = 1 << 16  # least elements of the per-bucket work buffer of the chunked kernels


def _is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (e.g. a parameter sharded by FSDP2's ``fully_shard``); no
    import: if torch.distributed.tensor was never imported, no tensor can be one."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def _local(t: Tensor) -> Tensor:
    """The tensor whose storage holds ``t``'s values on this rank (a DTensor's local shard)."""
    if _is_dtensor(t):
        with torch.no_grad():  # to_local() without grad is the local tensor itself, no copy
            return t.to_local()
    return t


@dataclass
class CounterNoise:
    """Counter-based noise of one bucket and its draw-ahead state.

    The fused Triton kernels regenerate draw ``k`` from the Philox key ``seed`` and the counter
    ``k`` (:mod:`blr.kernels.triton_ivon`), so a draw is an index, not a buffer. ``draws`` is the
    index of the next draw, ``drawn`` the one the weights hold inside ``sampled_params``.
    With draw-ahead (``IVON(draw_ahead=True)``) the weights hold a draw between steps too:
    ``pending`` is its index (None: they hold the mean) and ``fresh`` says that no training
    sample has used it yet (the step wrote it).
    """

    seed: int
    index: int  # the bucket's index among the optimizer's buckets (keys its seed)
    draws: int = 0
    drawn: int | None = None
    pending: int | None = None
    fresh: bool = False

    @staticmethod
    def key(seed: int, index: int) -> int:
        """The Philox key of bucket ``index``: a pure function of the optimizer's seed."""
        return (seed * 0x9E3779B97F4A7C15 + 7919 * index) % 2**63

    @classmethod
    def for_bucket(cls, seed: int, index: int) -> CounterNoise:
        return cls(cls.key(seed, index), index)

    def rekey(self, seed: int) -> None:
        """Follow a new optimizer seed (before any draw was taken)."""
        self.seed = self.key(seed, self.index)

    def take(self) -> int:
        """The index of a new draw."""
        draw, self.draws = self.draws, self.draws + 1
        return draw

    def hold(self, draw: int | None, fresh: bool = False) -> None:
        """Record the draw the weights hold between steps (None: the mean)."""
        self.pending, self.fresh = draw, fresh


class Bucket:
    """The trainable parameters of one group on one (device, dtype) and their flat buffers.

    With ``alias_first`` (Gaussian optimizers) and fp32/fp64 parameters (``alias``), the first
    state (the mean m) IS the parameters: each keeps its own storage, draws are added to them in
    place and subtracted on exit, so the optimizer keeps no copy of the weights; the update sees
    m as one flat buffer that exists only inside :meth:`flat_first`. Gradients live in one flat
    buffer whose views are the parameters' ``.grad``. Low-precision parameters keep an fp32
    master copy of m (and of the gradient).

    Parameters sharded by FSDP2 (DTensors, ``sharded``) are handled through their local shards:
    the buffers hold this rank's shard only, draws and means are copied into the shards (FSDP
    all-gathers them in the forward), gradients are copied from the reduce-scattered ``.grad``
    shards; nothing is aliased.
    """

    def __init__(
        self, params: list[torch.nn.Parameter], state_names: tuple[str, ...], alias_first: bool
    ) -> None:
        self.params = params
        self.sharded = _is_dtensor(params[0])
        local = [_local(p) for p in params]
        self.shapes = [t.shape for t in local]
        self.device, self.dtype = local[0].device, local[0].dtype
        self.numels = [t.numel() for t in local]
        self.numel = sum(self.numels)
        # fp32 state for fp32/bf16/fp16 parameters, fp64 for fp64 ones
        self.state_dtype = torch.promote_types(self.dtype, torch.float32)
        self.alias = alias_first and self.dtype == self.state_dtype and not self.sharded
        self.first = state_names[0]  # the buffer that starts as the parameters (the mean)
        self.state_names = state_names
        self.prior: tuple[Tensor, ...] | None = None  # a per-coordinate prior (prior=)
        self.state: dict[str, Tensor] = {}  # (an aliased bucket's mean: the parameters)
        with torch.no_grad():
            for name in state_names:
                if not (self.alias and name == self.first):
                    self.state[name] = self.zeros()
            if not self.alias:
                torch._foreach_copy_(
                    self.views(self.state[self.first]), [t.detach() for t in local]
                )
        self._noise: Tensor | None = None  # allocated on first use (kernels that regenerate
        # their noise from a counter never need it)
        self.grad = torch.zeros(self.numel, device=self.device, dtype=self.dtype)
        self.grad32 = None if self.dtype == self.state_dtype else self.zeros()
        self.work = None if self.alias else self.zeros()
        self._scratch: Tensor | None = None
        self.acc_grad: Tensor | None = None  # Monte Carlo averages, from the second sample on
        self.acc_stat: Tensor | None = None
        self.seen = [False] * len(params)
        self.had_grad = [False] * len(params)
        self.counter: CounterNoise | None = None  # counter-based noise (fused GPU kernels)
        self.frozen_idx: list[int] = []  # parameters the running update must leave alone
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._marker(i)) for i, p in enumerate(params)
        ]

    def zeros(self) -> Tensor:
        """A new flat buffer of zeros in the state dtype."""
        return torch.zeros(self.numel, device=self.device, dtype=self.state_dtype)

    def empty(self) -> Tensor:
        """A new uninitialized flat buffer in the state dtype."""
        return torch.empty(self.numel, device=self.device, dtype=self.state_dtype)

    @property
    def noise(self) -> Tensor:
        """The flat draw buffer σ⊙z (later the sample statistic), allocated on first use."""
        if self._noise is None:
            self._noise = self.zeros()
        return self._noise

    @property
    def scratch(self) -> Tensor:
        """The work buffer of the chunked kernels (an eighth of the bucket, at least 64K
        elements), allocated on first use."""
        if self._scratch is None:
            n = min(self.numel, max(_SCRATCH, self.numel // 8))
            self._scratch = torch.empty(n, device=self.device, dtype=self.state_dtype)
        return self._scratch

    @property
    def state_grad(self) -> Tensor:
        """The gradient in the state dtype (the fp32 copy for low-precision parameters)."""
        return self.grad if self.grad32 is None else self.grad32

    def _marker(self, i: int) -> Callable:
        def mark(_: Tensor) -> None:
            self.seen[i] = True

        return mark

    def views(self, flat: Tensor) -> list[Tensor]:
        return [v.view(shape) for v, shape in zip(flat.split(self.numels), self.shapes)]

    def segment(self, flat: Tensor, i: int) -> Tensor:
        """The flat slice of parameter ``i`` in ``flat``."""
        start = sum(self.numels[:i])
        return flat[start : start + self.numels[i]]

    def targets(self) -> list[Tensor]:
        """The tensors holding the parameters' values on this rank (local shards if sharded)."""
        return [_local(p) for p in self.params] if self.sharded else [p.data for p in self.params]

    def check_params(self) -> None:
        """Raise if a parameter was moved to another dtype or device after the optimizer
        started (its state stayed behind); a new storage of the same kind is fine."""
        for p in self.params:
            t = _local(p)
            if t.dtype != self.dtype or t.device != self.device:
                raise RuntimeError(
                    f"a parameter moved from {self.dtype} on {self.device} to {t.dtype} on "
                    f"{t.device} after the optimizer started (e.g. model.to(...)); create the "
                    "optimizer after moving the model"
                )

    def param_state(self, name: str) -> list[Tensor]:
        """State ``name`` per parameter: views of its flat buffer, or, for the mean of an
        aliased bucket outside :meth:`flat_first`, the parameters' own tensors."""
        flat = self.state.get(name)
        if flat is None and self.alias and name == self.first:
            return self.targets()
        return self.views(flat)

    @contextlib.contextmanager
    def flat_first(self) -> Iterator[Tensor]:
        """The mean as one flat buffer: an aliased bucket's parameters gathered into a
        transient ``state[first]`` (written back into them on exit, and dropped); any other
        bucket's persistent buffer as it is."""
        if not self.alias or self.first in self.state:
            yield self.state[self.first]
            return
        with torch.no_grad():
            flat = torch.cat([t.reshape(-1) for t in self.targets()])
        self.state[self.first] = flat
        try:
            yield flat
        finally:
            del self.state[self.first]
            with torch.no_grad():
                torch._foreach_copy_(self.targets(), self.views(flat))

    def write_params(self, flat: Tensor) -> None:
        if self.alias and flat is self.state.get(self.first):
            return  # the transient mean: flat_first writes it back
        with torch.no_grad():
            torch._foreach_copy_(self.targets(), self.views(flat))

    def sync_grads(self) -> Tensor:
        """Make every ``.grad`` a view of the flat gradient buffer (copying gradients that
        autograd allocated afresh) and return the gradient in the state dtype. Sharded
        parameters keep their DTensor ``.grad``; its local shard is copied."""
        views = self.views(self.grad)
        copy_to, copy_from = [], []
        for i, (p, v) in enumerate(zip(self.params, views)):
            g = p.grad
            self.had_grad[i] = g is not None
            if self.sharded:
                if g is None:
                    v.zero_()
                else:
                    copy_to.append(v)
                    copy_from.append(_local(g))
            elif g is None:
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
        if self.sharded:  # FSDP writes a fresh DTensor gradient (or accumulates into this one)
            for p in self.params:
                p.grad = None
            return
        for p, v in zip(self.params, self.views(self.grad)):
            p.grad = v

    def untouched(self, g_hat: Tensor) -> list[int]:
        """The parameters no backward reached and whose gradient is zero (a gradient written
        by hand, without autograd's hook, still counts); when no hook fired at all, the
        gradients were written by hand: every parameter that had a ``.grad`` counts."""
        if any(self.seen):
            return [
                i
                for i, (s, v) in enumerate(zip(self.seen, g_hat.split(self.numels)))
                if not s and not bool(v.any())
            ]
        return [i for i, h in enumerate(self.had_grad) if not h]

    def add_to_params(self, flat: Tensor, alpha: float = 1.0) -> None:
        """The parameters += alpha·``flat`` (a draw's offset, added or taken back), in place."""
        with torch.no_grad():
            torch._foreach_add_(self.targets(), self.views(flat), alpha=alpha)

    def save_segments(self, idx: list[int]) -> list[dict[str, Tensor]]:
        """Copies of the state of parameters ``idx`` (kept unchanged by an update)."""
        return [{k: self.segment(v, i).clone() for k, v in self.state.items()} for i in idx]

    def restore_segments(self, idx: list[int], saved: list[dict[str, Tensor]]) -> None:
        for i, seg in zip(idx, saved):
            for k, v in seg.items():
                self.segment(self.state[k], i).copy_(v)

    def reset_samples(self) -> None:
        self.seen = [False] * len(self.params)


def make_buckets(
    params: list[torch.nn.Parameter], state_names: tuple[str, ...], alias_first: bool
) -> list[Bucket]:
    """One :class:`Bucket` per (device, dtype, sharded) of the parameters that require a
    gradient (frozen parameters are left alone), in order of first appearance."""
    by_key: dict[tuple, list] = {}
    for p in params:
        if p.requires_grad:
            by_key.setdefault((p.device, p.dtype, _is_dtensor(p)), []).append(p)
    return [Bucket(ps, state_names, alias_first) for ps in by_key.values()]
