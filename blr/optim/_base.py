"""The adapter between ``torch.optim`` and the flat-buffer kernels of :mod:`blr.kernels`.

:class:`SamplingOptimizer` owns what every weight-perturbation optimizer (IVON, VON, VOGN, ...)
needs: buckets of parameters per (param group, device, dtype) with flat fp32 state, posterior
draws written into the parameters (``sampled_params``), gradients gathered into flat buffers with
one multi-tensor copy (no ``torch.cat``), Monte Carlo averaging, non-finite checks, an own random
generator per device, and a ``state_dict`` that resumes bit-exactly. Subclasses name their state
buffers, the posterior standard deviation, and the update (a kernel call).

Under ``torch.distributed`` (docs/distributed.md) it also owns the noise and the statistics:
shared noise by default (rank 0's seed is broadcast at the first draw, so DDP's gradient average
is the gradient of the concatenated batch), per-rank noise with ``sync=True`` (the optimizer
all-reduces the gradients and the statistics itself), statistics computed from local data
(VOGN's per-example curvature) averaged in either mode, and parameters sharded by FSDP2's
``fully_shard`` (DTensors) updated shard by shard with per-rank noise (VOGN averages the
curvature of the full parameters and keeps its shard).
"""

from __future__ import annotations

import contextlib
import math
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from blr.kernels.diag_gaussian import compiled, ivon_noise

_FORMAT = 1
_SCRATCH = 1 << 16  # least elements of the per-bucket work buffer of the chunked kernels
_MASK64 = (1 << 64) - 1


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


def _mix_seed(seed: int, rank: int, draw: int, device: torch.device) -> int:
    """A 63-bit seed that is a pure function of (seed, rank, draw, device): splitmix64 of each in
    turn, so neighbouring ranks and draws get unrelated streams."""
    x = 0
    for v in (seed, rank, draw, zlib.crc32(str(device).encode())):
        x = (x ^ (int(v) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
        x ^= x >> 31
    return x >> 1


def _world_size(group: Any = None) -> int:
    """The number of ranks in ``group`` (1 when torch.distributed is not initialized)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _global_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _comm_device(group: Any = None) -> torch.device:
    """Where small control tensors (seeds) must live for ``group``'s backend: CUDA for NCCL-only
    groups, the CPU otherwise (gloo, or a 'cpu:gloo,cuda:nccl' pair)."""
    import torch.distributed as dist

    backend = str(dist.get_backend(group))
    if "cpu" not in backend and "gloo" not in backend and "mpi" not in backend:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Bucket:
    """The trainable parameters of one group on one (device, dtype) and their flat buffers.

    With ``alias_first`` (Gaussian optimizers) and fp32/fp64 parameters, the first state buffer
    (the mean m) IS the parameters' storage: every parameter becomes a view of one flat tensor,
    draws are added to it in place and subtracted on exit, so the optimizer keeps no copy of the
    weights. Gradients likewise live in one flat buffer whose views are the parameters' ``.grad``.
    Low-precision parameters keep an fp32 master copy of m (and of the gradient).

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
        kw = dict(device=self.device, dtype=self.state_dtype)
        self.state: dict[str, Tensor] = {}
        with torch.no_grad():
            for i, name in enumerate(state_names):
                self.state[name] = torch.zeros(self.numel, **kw)
                if i == 0:  # starts as the parameters' values
                    torch._foreach_copy_(self.views(self.state[name]), [t.detach() for t in local])
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
        self.philox_index = 0  # the bucket's index among the optimizer's (keys its Philox seed)
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
        return [v.view(shape) for v, shape in zip(flat.split(self.numels), self.shapes)]

    def targets(self) -> list[Tensor]:
        """The tensors holding the parameters' values on this rank (local shards if sharded)."""
        return [_local(p) for p in self.params] if self.sharded else [p.data for p in self.params]

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


class SamplingOptimizer(torch.optim.Optimizer):
    """Base class of the Gaussian weight-perturbation optimizers (see the module docstring).

    Subclasses define ``_state_names`` (flat fp32 buffers; the first starts as a copy of the
    parameters), ``_init_bucket``, ``_noise`` (write σ⊙z into ``bucket.noise``) or ``_draw`` and
    ``_center`` (for non-Gaussian posteriors), ``_sample_stat`` (the per-sample statistic averaged
    into ``bucket.avg_stat``) and ``_update`` (the kernel call).

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
    _has_stat = True  # the per-sample statistic carries data (Vadam's is identically zero)
    _local_stat = False  # the statistic comes from local per-example quantities, not from the
    # (all-reduced) gradient: average it across ranks even with shared noise (VOGN)

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        mc_samples: int = 1,
        nonfinite: str = "raise",
        seed: int | None = None,
        missing_sample: str = "raise",
        sync: bool = False,
        process_group: Any = None,
    ) -> None:
        if not isinstance(sync, bool):
            raise TypeError(f"sync must be True or False, got {sync!r}")
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
        self._seed_given = seed is not None
        self._seed_resolved = False  # agreed across ranks (at the first draw)
        self.sync, self.process_group = sync, process_group
        # with per-rank draws, subtracting a draw rounds differently on each rank and the means
        # would drift apart by ulps: keep a separate mean, restored exactly, when syncing
        self._alias_first = type(self)._alias_first and not sync
        self._generators: dict[torch.device, torch.Generator] = {}
        self._rank_generators: dict[torch.device, tuple[int, torch.Generator]] = {}
        self._draws = 0  # posterior draws taken (seeds the per-rank generators)
        self._buckets: list[list[_Bucket]] | None = None
        self._count = 0
        self._stashed = False
        self.skipped_steps = 0
        for group in self.param_groups:
            group.setdefault("step", 0)
            self._check_params(group)

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

    # ------------------------------------------------------------------ noise, across ranks
    def _generator(self, device: torch.device) -> torch.Generator:
        """The shared-noise generator of ``device``: seeded once, identical on every rank."""
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed + 7919 * len(self._generators))
            self._generators[device] = gen
        return gen

    def _per_rank_seed(self, device: torch.device, draw: int) -> int:
        """Seed of this rank's generator for draw number ``draw`` (per-rank noise)."""
        return _mix_seed(self._seed, _global_rank(), draw, device)

    def _rank_generator(self, device: torch.device, draw: int) -> torch.Generator:
        """The per-rank generator of ``device`` (``sync=True``, sharded parameters), reseeded at
        each draw, so that its state is a function of the state_dict (seed, draws)."""
        seeded, gen = self._rank_generators.get(device, (-1, None))
        if gen is None:
            gen = torch.Generator(device=device)
        if seeded != draw:
            gen.manual_seed(self._per_rank_seed(device, draw))
            self._rank_generators[device] = (draw, gen)
        return gen

    def _resolve_seed(self) -> None:
        """Make the seed agree across the ranks of ``process_group`` (once, at the first draw):
        without an explicit seed, rank 0's; with shared noise, explicit seeds must be equal."""
        if self._seed_resolved:
            return
        world = _world_size(self.process_group)
        if world > 1:
            import torch.distributed as dist

            mine = torch.tensor(
                [self._seed % 2**63, int(self._seed_given)],
                dtype=torch.int64,
                device=_comm_device(self.process_group),
            )
            everyone = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(everyone, mine, group=self.process_group)
            seeds = [int(t[0]) for t in everyone]
            given = [bool(t[1]) for t in everyone]
            if not self.sync and any(given) and not (all(given) and len(set(seeds)) == 1):
                shown = ", ".join(
                    f"rank {r}: {s if g else 'none'}" for r, (s, g) in enumerate(zip(seeds, given))
                )
                raise ValueError(
                    f"{type(self).__name__}: seed differs across ranks ({shown}); with shared "
                    "noise (sync=False) every rank must draw the same noise: pass the same seed "
                    "on every rank, or none (rank 0's is then broadcast), or sync=True for "
                    "per-rank noise"
                )
            if not self._seed_given and seeds[0] != self._seed:
                self._seed = seeds[0]
                self._seed_changed()
        self._seed_resolved = True

    def _seed_changed(self) -> None:
        """Hook run when the seed was replaced by rank 0's after buckets were built."""

    def _noise_generator(self, bucket: _Bucket, draw: int) -> torch.Generator:
        if self.sync or bucket.sharded:
            return self._rank_generator(bucket.device, draw)
        return self._generator(bucket.device)

    # ------------------------------------------------------------------ buckets, lazily
    def _make_buckets(self, group: dict) -> list[_Bucket]:
        by_key: dict[tuple, list] = {}
        for p in group["params"]:
            if p.requires_grad:  # frozen parameters are left alone
                by_key.setdefault((p.device, p.dtype, _is_dtensor(p)), []).append(p)
        buckets = []
        for params in by_key.values():
            bucket = _Bucket(params, self._state_names, self._alias_first)
            self._init_bucket(group, bucket)
            buckets.append(bucket)
        return buckets

    def _check_params(self, group: dict) -> None:
        """Refuse DTensor parameters this optimizer cannot update shard by shard."""
        for p in group["params"]:
            if p.requires_grad and _is_dtensor(p):
                self._check_sharded(p)

    def _check_sharded(self, p: Tensor) -> None:
        from torch.distributed.tensor import Shard

        name = type(self).__name__
        if self.sync:
            raise ValueError(
                f"{name}(sync=True) averages gradients of replicated parameters itself; got a "
                "parameter sharded by FSDP (a DTensor), whose gradient FSDP already "
                "reduce-scatters: use sync=False (sharded parameters get per-rank noise anyway)"
            )
        if p.device_mesh.ndim != 1 or not isinstance(p.placements[0], Shard):
            raise ValueError(
                f"{name} supports DTensor parameters sharded on a 1-D mesh (FSDP2's "
                f"fully_shard); got placements {p.placements} on a {p.device_mesh.ndim}-D mesh"
            )

    def _all_buckets(self) -> list[list[_Bucket]]:
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
        if hasattr(self, "sync"):  # (torch.optim's __init__ adds the first groups: see ours)
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
        (|Δm| ≤ ulp(m + σz)); prediction draws (``train=False``) restore m exactly.

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
        self._resolve_seed()
        groups = self._all_buckets()
        self._stash()  # a new draw overwrites the buffers that hold a single collected sample
        saved: dict[int, Tensor] = {}
        draw, self._draws = self._draws, self._draws + 1
        for group, buckets in zip(self.param_groups, groups):
            for b in buckets:
                b.check_alias()
                gen = self._noise_generator(b, draw)
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
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return loss
            raise FloatingPointError(
                f"{type(self).__name__}.step(): NaN/Inf in the gradients; the state was not "
                "changed (pass nonfinite='skip' to skip such steps)"
            )
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
        """Average across ranks what is not already averaged (the class docstring): with
        ``sync=True`` ĝ and the statistic, with shared noise the local statistics only."""
        world = _world_size(self.process_group)
        if world == 1:
            return
        import torch.distributed as dist

        for buckets in self._all_buckets():
            for b in buckets:
                for buf in self._reduced_buffers(b):
                    dist.all_reduce(buf, group=self.process_group)
                    buf.div_(world)

    def _shard_group(self) -> Any:
        """The process group of the sharded parameters (None when there are none)."""
        for buckets in self._all_buckets():
            for b in buckets:
                if b.sharded:
                    return b.params[0].device_mesh.get_group()
        return None

    def _agree_max(self, value: float) -> float:
        """The maximum of ``value`` over the ranks sharing sharded parameters (FSDP), where the
        ranks hold different shards and must still take the same decisions; ``value`` itself
        when nothing is sharded (replicated state: every rank computed the same value)."""
        group = self._shard_group()
        if group is None or _world_size(group) == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=_comm_device(group))
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        return float(t.item())

    def _reduced_buffers(self, b: _Bucket) -> list[Tensor]:
        if b.sharded:  # FSDP has reduce-scattered the gradients; statistics are elementwise
            # (or, VOGN's, already averaged in _sample_stat)
            return []
        g_hat, stat = self._sample_buffers(b)
        has_stat = stat is not None and self._has_stat
        if self.sync:
            return [g_hat, stat] if has_stat else [g_hat]
        return [stat] if has_stat and self._local_stat else []

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
        (hyperparameters and the step counter), and the random generators' states.

        Example:
            >>> import torch
            >>> from blr.optim import IVON
            >>> model = torch.nn.Linear(3, 1)
            >>> opt = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
            >>> sd = opt.state_dict()
            >>> sorted(sd["state"][0]), sd["state"][0]["mean"].shape, sd["blr"]["seed"]
            (['hess', 'mean', 'momentum'], torch.Size([1, 3]), 0)
        """
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
                "draws": self._draws,
                "generators": {str(d): g.get_state() for d, g in self._generators.items()},
                "skipped_steps": self.skipped_steps,
                # counter-based noise of fused kernels: (key, next draw) per bucket
                "counters": [[[b.philox_seed, b.draws] for b in bs] for bs in groups],
            },
        }

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
                for p, local_shape in zip(b.params, b.shapes):
                    entry = state.get(ids[id(p)])
                    if entry is None or set(entry) != set(b.state):
                        raise ValueError(
                            f"state_dict lacks the state {sorted(b.state)} of a "
                            f"parameter of shape {tuple(p.shape)}"
                        )
                    shape = tuple(local_shape)  # the local shard if sharded
                    for k, v in entry.items():
                        if tuple(v.shape) != shape:
                            raise ValueError(
                                f"state_dict['state'][{ids[id(p)]}]['{k}'] has shape "
                                f"{tuple(v.shape)}, the parameter {shape}"
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
        self._seed_resolved = True  # every rank loads the same seed
        self._draws = int(meta.get("draws", 0))
        self._rank_generators = {}
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

    def _compiled_draw(self, group: dict, bucket: _Bucket, generator: torch.Generator) -> None:
        """:meth:`_draw_aliased` in one ``torch.compile``'d loop after the normal draw: σ⊙z
        into ``bucket.noise`` and θ = m + σ⊙z into the weights (= m), in place."""
        noise = bucket.noise
        torch.randn(
            noise.shape, generator=generator, out=noise, dtype=noise.dtype, device=noise.device
        )
        hp = torch.tensor(
            [group["ess"], group["weight_decay"]], dtype=noise.dtype, device=noise.device
        )
        compiled("draw")(noise, bucket.state["hess"], bucket.state["mean"], hp)

    @staticmethod
    def _compiled_update(
        name: str, bucket: _Bucket, g_hat: Tensor, stat: Tensor, hp: list[float]
    ) -> None:
        """(m, ḡ, h) updated in place by the ``torch.compile``'d update ``name`` of
        :func:`blr.kernels.diag_gaussian.compiled`; the hyperparameters ``hp`` travel as one
        tensor, so that schedulers changing them do not recompile."""
        compiled(name)(
            bucket.state["mean"],
            bucket.state["momentum"],
            bucket.state["hess"],
            g_hat,
            stat,
            torch.tensor(hp, dtype=stat.dtype, device=stat.device),
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
