"""Noise and statistics of the weight-perturbation optimizers across ``torch.distributed`` ranks
(docs/distributed.md).

- Shared noise (``sync=False``, for DDP): every rank draws the same noise, so DDP's gradient
  average is the gradient of the concatenated batch at the same θ. Without an explicit seed,
  rank 0's seed is taken at the first draw; explicit seeds must agree (a ValueError on every
  rank otherwise). Statistics computed from local data (VOGN's per-example curvature) are
  averaged across ranks.
- Per-rank noise (``sync=True``): each rank draws its own noise from a generator reseeded at
  every draw from (seed, rank, draw index), so checkpoints resume exactly; the optimizer
  averages ĝ and the statistic itself.
- Parameters sharded by FSDP2's ``fully_shard`` (DTensors on a 1-D mesh) get per-rank noise
  for their own shards; decisions that must agree across the shards' ranks (a NaN in one
  shard) take the maximum over them.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import Tensor

from blr.optim._buckets import Bucket, _is_dtensor

_MASK64 = (1 << 64) - 1


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


class DistributedNoise:
    """The distributed side of :class:`~blr.optim.SamplingOptimizer` (the module docstring): the
    generator of each bucket's draws, the agreement on the seed, the averages across ranks and
    the refusal of sharded layouts it cannot update.

    It expects of its optimizer: ``_seed``, ``_seed_given``, ``_generator(device)`` (the shared
    generators), ``_all_buckets()`` and ``_sample_buffers(bucket)``; :meth:`_init_distributed`
    sets ``sync`` and ``process_group``. Subclasses may override ``_seed_changed`` (rank 0's
    seed replaced the local one) and ``_check_sharded`` (refuse a placement)."""

    _has_stat = True  # the per-sample statistic carries data (Vadam's is identically zero)
    _local_stat = False  # the statistic comes from local per-example quantities, not from the
    # (all-reduced) gradient: average it across ranks even with shared noise (VOGN)

    def _init_distributed(self, sync: bool, process_group: Any) -> None:
        if not isinstance(sync, bool):
            raise TypeError(f"sync must be True or False, got {sync!r}")
        self.sync, self.process_group = sync, process_group
        self._seed_resolved = False  # agreed across ranks (at the first draw)
        self._rank_generators: dict[torch.device, tuple[int, torch.Generator]] = {}

    # ------------------------------------------------------------------ noise
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

    def _noise_generator(self, bucket: Bucket, draw: int) -> torch.Generator:
        if self.sync or bucket.sharded:
            return self._rank_generator(bucket.device, draw)
        return self._generator(bucket.device)

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

    # ------------------------------------------------------------------ statistics
    def _sync(self) -> None:
        """Average across ranks what is not already averaged (the module docstring): with
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

    def _reduced_buffers(self, b: Bucket) -> list[Tensor]:
        if b.sharded:  # FSDP has reduce-scattered the gradients; statistics are elementwise
            # (or, VOGN's, already averaged in _sample_stat)
            return []
        g_hat, stat = self._sample_buffers(b)
        has_stat = stat is not None and self._has_stat
        if self.sync:
            return [g_hat, stat] if has_stat else [g_hat]
        return [stat] if has_stat and self._local_stat else []

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

    # ------------------------------------------------------------------ sharded parameters
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
