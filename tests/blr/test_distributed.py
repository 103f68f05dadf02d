"""The optimizers under torch.distributed: 2 processes on CPU with gloo over loopback.

- Shared noise (the default) under DDP: 20 steps equal a single process on the concatenated batch
  (float64, within 1e-6) and the ranks hold identical state after every step; the ranks start
  from different default seeds, so rank 0's must be broadcast.
- Per-rank noise (``sync=True``, plain model): the ranks draw different θ, the optimizer averages
  ĝ and the statistics, the ranks stay identical, and the run equals a single process averaging
  the same two draws as Monte Carlo samples (IVON with both Hessians, VON, VOGN, Vadam,
  BayesBiNN).
- Checkpoints saved on rank 0 and loaded on every rank resume bit-identically.
- NaN gradients on one rank make every rank raise the same error (or skip), without a hang.
- FSDP2 (``fully_shard``): the sharded run equals a single process (with index-defined noise),
  each rank draws its own shard's noise, per-rank checkpoints resume bit-identically, a NaN in
  one rank's shard makes every rank raise, and what is not supported is refused clearly.
  VOGN (GGN and EF curvature) and OGN under ``fully_shard`` (per-layer and root-only) on a net
  with uneven (and empty) shards equal a single process too, also after an evaluation forward.
- The torchrun example of docs/distributed.md runs.

Every test starts and stops its own processes and fails (killing stragglers) after a time limit.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from blr.optim import IVON, OGN, VOGN, VON, BayesBiNN, Vadam
from blr.optim._buckets import _local
from blr.optim._distributed import _mix_seed

WORLD, M, STEPS, TIMEOUT = 2, 16, 20, 120.0
ROOT = pathlib.Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- process plumbing
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, *args, timeout: float = TIMEOUT) -> list:
    """Run ``worker(rank, port, out_dir, *args)`` on WORLD processes; return what each saved to
    ``out_dir/rank{r}.pt``. Fails after ``timeout`` seconds (a hang), killing what is left."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.spawn(worker, args=(_free_port(), tmp, *args), nprocs=WORLD, join=False)
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    pytest.fail(f"the {WORLD} workers did not finish within {timeout:.0f} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join()
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]


def _init(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )


def _finish(rank: int, out_dir: str, result) -> None:
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # skip interpreter teardown: a library thread occasionally aborts the process there
    # ("terminate called without an active exception") after all work is done
    os._exit(0)


# --------------------------------------------------------------------------- problem
def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(WORLD * M, 4, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (WORLD * M,), generator=g)


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * M : (rank + 1) * M]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _make(name: str, model: nn.Module, cls=None, **kw):
    """The optimizers under test, on ``model`` (VOGN also takes the module, as ``model=``)."""
    if name.startswith("ivon"):
        hess = name.split("_")[1]
        return (cls or IVON)(
            model.parameters(), lr=0.05, ess=64, beta2=0.99, hess_approx=hess, **kw
        )
    if name == "von":
        return (cls or VON)(model.parameters(), lr=0.05, ess=64, hess_init=2.0, beta2=0.99, **kw)
    if name == "vogn":
        return (cls or VOGN)(
            model.parameters(),
            lr=0.05,
            ess=64,
            curvature="ggn",
            loss="cross_entropy",
            model=model,
            **kw,
        )
    if name == "vadam":
        return (cls or Vadam)(model.parameters(), lr=0.02, ess=64, **kw)
    if name == "bayesbinn":
        return (cls or BayesBiNN)(model.parameters(), lr=0.02, ess=64, temperature=1.0, **kw)
    raise AssertionError(name)


CLASSES = {"ivon_price": IVON, "ivon_gradsq": IVON, "von": VON, "vogn": VOGN, "vadam": Vadam}
CLASSES["bayesbinn"] = BayesBiNN
NAMES = tuple(CLASSES)


def _snapshot(opt) -> dict[str, torch.Tensor]:
    """Every state buffer (means, precisions, momenta, ...), flattened over the parameters."""
    state = opt.state_dict()["state"]
    names = next(iter(state.values())).keys()
    return {k: torch.cat([state[i][k].flatten() for i in sorted(state)]) for k in names}


def _train(opt, model, x, y, steps: int) -> list[dict[str, torch.Tensor]]:
    traj = []
    for _ in range(steps):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
        opt.step()
        traj.append(_snapshot(opt))
    return traj


def _max_dev(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _assert_ranks_identical(results: list, key: str) -> None:
    for t, (s0, s1) in enumerate(zip(results[0][key], results[1][key])):
        for k in s0:
            assert torch.equal(s0[k], s1[k]), f"{key}: ranks differ in {k!r} after step {t + 1}"


# --------------------------------------------------------------------------- DDP, shared noise
def _shared_worker(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port)
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = _data()
    x, y = _shard(x, rank), _shard(y, rank)
    result = {}
    for name in NAMES:
        ddp = DDP(_net())
        torch.manual_seed(1000 + rank)  # different default seeds: rank 0's must be broadcast
        opt = _make(name, ddp)
        result[name + "/seed_drawn"] = opt._seed
        result[name] = _train(opt, ddp, x, y, STEPS)
        result[name + "/seed"] = opt._seed
    # explicit seeds that differ across ranks cannot give shared noise: every rank refuses
    opt = IVON(_net().parameters(), lr=0.1, ess=10, seed=rank)
    try:
        with opt.sampled_params():
            result["seed_error"] = None
    except ValueError as e:
        result["seed_error"] = str(e)
    _finish(rank, out_dir, result)


def test_ddp_shared_noise_equals_one_process_on_the_concatenated_batch():
    results = _spawn(_shared_worker)
    x, y = _data()
    for name in NAMES:
        assert results[0][name + "/seed_drawn"] != results[1][name + "/seed_drawn"]
        seed = results[0][name + "/seed"]
        assert results[1][name + "/seed"] == seed == results[0][name + "/seed_drawn"]
        _assert_ranks_identical(results, name)
        model = _net()
        ref = _train(_make(name, model, seed=seed), model, x, y, STEPS)
        devs = [_max_dev(a, b) for a, b in zip(results[0][name], ref)]
        moved = _max_dev(ref[-1], ref[0])
        assert max(devs) <= 1e-6, f"{name}: max deviation {max(devs):.2e} from one process"
        assert moved > 1e-3, f"{name}: the state hardly moved ({moved:.1e}): a vacuous test"
    error = results[0]["seed_error"]
    assert error is not None and error == results[1]["seed_error"]
    assert "seed differs across ranks (rank 0: 0, rank 1: 1)" in error


# --------------------------------------------------------------------------- per-rank noise
class _AsTwoSamples:
    """Mixin for the single-process reference: draw 2t + k takes the noise rank k takes at step t
    of the distributed run (the per-rank generator's seed is a function of (seed, rank, draw))."""

    def _per_rank_seed(self, device, draw):
        return _mix_seed(self._seed, draw % WORLD, draw // WORLD, device)


def _per_rank_worker(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port)
    x, y = _data()
    x, y = _shard(x, rank), _shard(y, rank)
    result = {}
    for name in NAMES:
        model = _net()  # a plain model: the optimizer averages the gradients itself
        torch.manual_seed(1000 + rank)
        opt = _make(name, model, sync=True)
        with opt.sampled_params():
            result[name + "/draw"] = torch.cat([p.detach().flatten() for p in model.parameters()])
        result[name] = _train(opt, model, x, y, STEPS)
        result[name + "/seed"] = opt._seed
    _finish(rank, out_dir, result)


def test_per_rank_noise_averages_gradients_and_statistics():
    results = _spawn(_per_rank_worker)
    x, y = _data()
    for name in NAMES:
        assert not torch.equal(results[0][name + "/draw"], results[1][name + "/draw"])
        _assert_ranks_identical(results, name)
        # one process averaging the same two draws (rank k's on shard k) as MC samples
        model = _net()
        cls = type(name, (_AsTwoSamples, CLASSES[name]), {})
        opt = _make(name, model, cls=cls, sync=True, seed=results[0][name + "/seed"])
        opt._draws = WORLD  # draw 0 of each rank was the prediction draw
        ref = []
        for _ in range(STEPS):
            for k in range(WORLD):
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    F.cross_entropy(model(_shard(x, k)), _shard(y, k)).backward()
            opt.step()
            ref.append(_snapshot(opt))
        dev = max(_max_dev(a, b) for a, b in zip(results[0][name], ref))
        assert dev <= 1e-6, f"{name}: max deviation {dev:.2e} from the two-sample reference"
        assert _max_dev(ref[-1], ref[0]) > 1e-3, f"{name}: the state hardly moved"


# --------------------------------------------------------------------------- checkpoints
CKPT_CASES = (
    ("ivon_price", "ddp"),
    ("vogn", "ddp"),
    ("ivon_gradsq", "sync"),
    ("bayesbinn", "sync"),
)


def _checkpoint_worker(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port)
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = _data()
    x, y = _shard(x, rank), _shard(y, rank)
    result = {}
    for name, mode in CKPT_CASES:
        path = os.path.join(out_dir, f"{name}.ckpt")
        wrap = DDP if mode == "ddp" else (lambda m: m)
        model = wrap(_net())
        torch.manual_seed(1000 + rank)
        opt = _make(name, model, sync=mode == "sync")
        _train(opt, model, x, y, 3)
        if rank == 0:
            torch.save(opt.state_dict(), path)
        dist.barrier()
        straight = _train(opt, model, x, y, 4)
        weights = [p.detach().clone() for p in model.parameters()]
        # resume on every rank: fresh model (other initial weights) and optimizer (other seed)
        torch.manual_seed(2000 + rank)
        model2 = wrap(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double())
        opt2 = _make(name, model2, sync=mode == "sync")
        opt2.load_state_dict(torch.load(path))
        resumed = _train(opt2, model2, x, y, 4)
        result[name] = (straight, resumed, weights, [p.detach() for p in model2.parameters()])
    _finish(rank, out_dir, result)


def test_checkpoint_saved_on_rank0_resumes_bit_identically_on_every_rank():
    results = _spawn(_checkpoint_worker)
    for name, mode in CKPT_CASES:
        for rank, res in enumerate(results):
            straight, resumed, w_straight, w_resumed = res[name]
            for t, (a, b) in enumerate(zip(straight, resumed)):
                for k in a:
                    assert torch.equal(a[k], b[k]), f"{name} ({mode}), rank {rank}: {k} step {t}"
            for a, b in zip(w_straight, w_resumed):
                assert torch.equal(a, b), f"{name} ({mode}), rank {rank}: weights"
        resumed0, resumed1 = (r[name][1] for r in results)
        _assert_ranks_identical([{name: resumed0}, {name: resumed1}], name)


# --------------------------------------------------------------------------- NaN on one rank
NAN_CASES = (
    ("ivon_price", "ddp", "raise"),
    ("ivon_price", "ddp", "skip"),
    ("ivon_gradsq", "sync", "raise"),
    ("vadam", "sync", "skip"),
    ("vogn", "ddp", "raise"),
    ("bayesbinn", "sync", "raise"),
)


def _nan_worker(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port)
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = _data()
    x, y = _shard(x, rank), _shard(y, rank)
    bad = x.clone()
    if rank == 1:
        bad[3, 1] = float("nan")
    result = {}
    for name, mode, nonfinite in NAN_CASES:
        model = DDP(_net()) if mode == "ddp" else _net()
        opt = _make(name, model, sync=mode == "sync", nonfinite=nonfinite)
        _train(opt, model, x, y, 2)
        with opt.sampled_params(train=True):
            opt.zero_grad()
            F.cross_entropy(model(bad), y).backward()
        before = _snapshot(opt)  # (after the draw: undoing it may round the mean by an ulp)
        try:
            opt.step()
            error = None
        except FloatingPointError as e:
            error = str(e)
        unchanged = all(torch.equal(v, _snapshot(opt)[k]) for k, v in before.items())
        after = _train(opt, model, x, y, 2)  # training goes on, in step on every rank
        result[name + mode + nonfinite] = (error, unchanged, opt.skipped_steps, after)
    _finish(rank, out_dir, result)


def test_nan_on_one_rank_makes_every_rank_raise_the_same_error():
    results = _spawn(_nan_worker)
    for name, mode, nonfinite in NAN_CASES:
        key = name + mode + nonfinite
        (e0, same0, skipped0, after0), (e1, same1, skipped1, after1) = (r[key] for r in results)
        if nonfinite == "raise":
            assert e0 is not None and e0 == e1, (key, e0, e1)
            assert "NaN/Inf" in e0
        else:
            assert e0 is None and e1 is None and skipped0 == skipped1 == 1, key
        assert same0 and same1, f"{key}: the state changed"
        _assert_ranks_identical([{key: after0}, {key: after1}], key)


# --------------------------------------------------------------------------- FSDP2
def _index_z(group: dict, bucket) -> torch.Tensor:
    """z as a fixed function of each weight's index in its (unsharded) parameter and of the step:
    the same draw for a model sharded by fully_shard and for the plain model."""
    zs = []
    for k, p in enumerate(bucket.params):
        local = _local(p)
        start = 0
        if local is not p:  # Shard(0) as FSDP2 cuts it: ceil(n / world) rows per rank
            rows = math.ceil(p.shape[0] / WORLD)
            start = min(dist.get_rank() * rows, p.shape[0]) * (p.numel() // max(p.shape[0], 1))
        idx = torch.arange(start, start + local.numel(), dtype=torch.float64)
        zs.append(torch.cos(1.7 * idx + 0.9 * k + 2.3 * group["step"]))
    return torch.cat(zs).to(bucket.noise.dtype)


class _IndexNoiseIVON(IVON):
    def _noise(self, group, bucket, generator):
        h = bucket.state["hess"]
        sigma = (group["ess"] * (h + group["weight_decay"])).rsqrt()
        bucket.noise.copy_(_index_z(group, bucket) * sigma)


class _IndexNoiseVON(VON):
    _noise = _IndexNoiseIVON._noise


class _IndexNoiseVadam(Vadam):
    def _noise(self, group, bucket, generator):
        sigma = (group["ess"] * bucket.state["exp_avg_sq"] + group["prior_prec"]).rsqrt()
        bucket.noise.copy_(_index_z(group, bucket) * sigma)


class _IndexNoiseBayesBiNN(BayesBiNN):
    def _draw(self, group, bucket, generator):  # the relaxed draw with u = ½ + 0.45 z
        u = 0.5 + 0.45 * _index_z(group, bucket)
        eps = 0.5 * torch.log(u / (1 - u))
        bucket.noise.copy_((bucket.state["lam"] + eps) / group["temperature"])
        return torch.tanh(bucket.noise, out=bucket.work)


FSDP_CASES = (
    ("ivon_price", _IndexNoiseIVON),
    ("ivon_gradsq", _IndexNoiseIVON),
    ("von", _IndexNoiseVON),
    ("vadam", _IndexNoiseVadam),
    ("bayesbinn", _IndexNoiseBayesBiNN),
)


def _fsdp_worker(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port)
    from torch.distributed.fsdp import fully_shard

    x, y = _data()
    x, y = _shard(x, rank), _shard(y, rank)
    result = {}
    for name, cls in FSDP_CASES:
        model = fully_shard(_net())
        opt = _make(name, model, cls=cls)
        result[name] = _train(opt, model, x, y, STEPS)
        result[name + "/weights"] = [p.full_tensor().detach() for p in model.parameters()]
    # real per-rank noise: the shards' draws differ; per-rank checkpoints resume exactly
    model = fully_shard(_net())
    opt = _make("ivon_price", model)
    _train(opt, model, x, y, 2)
    with opt.sampled_params():
        b = opt._all_buckets()[0][0]
        result["z"] = b.noise * (64 * (b.state["hess"] + 1e-4)).sqrt()
    sd = opt.state_dict()
    straight = _train(opt, model, x, y, 3)
    model2 = fully_shard(_net())
    opt2 = _make("ivon_price", model2)
    opt2.load_state_dict(sd)
    result["resume"] = (straight, _train(opt2, model2, x, y, 3))
    # a NaN in rank 0's shard only: every rank must raise (else rank 1 waits in the all-gather)
    with opt2.sampled_params(train=True):
        opt2.zero_grad()
        F.cross_entropy(model2(x), y).backward()
        if rank == 0:
            _local(next(model2.parameters()).grad)[0, 0] = float("nan")
    try:
        opt2.step()
        result["nan"] = None
    except FloatingPointError as e:
        result["nan"] = str(e)
    result["after_nan"] = _train(opt2, model2, x, y, 1)
    try:
        _make("ivon_price", fully_shard(_net()), sync=True)
        result["sync_error"] = None
    except ValueError as e:
        result["sync_error"] = str(e)
    _finish(rank, out_dir, result)


def test_fsdp_sharded_parameters():
    results = _spawn(_fsdp_worker)
    x, y = _data()
    for name, cls in FSDP_CASES:
        for a, b in zip(*(r[name + "/weights"] for r in results)):  # gathered: the same
            assert torch.equal(a, b)
        model = _net()
        ref = _train(_make(name, model, cls=cls), model, x, y, STEPS)
        for t, want in enumerate(ref):
            got = {}
            for k in want:  # concatenate the ranks' shards, parameter by parameter
                shards = [r[name][t][k] for r in results]
                sizes = [[s.numel() for s in _split_like(model, r)] for r in range(WORLD)]
                parts = [torch.split(sh, sz) for sh, sz in zip(shards, sizes)]
                got[k] = torch.cat([torch.cat(ps) for ps in zip(*parts)])
            dev = _max_dev(got, want)
            assert dev <= 1e-6, f"{name}: step {t + 1} deviates by {dev:.2e} from one process"
        for a, b in zip(results[0][name + "/weights"], model.parameters()):
            assert (a - b.detach()).abs().max() <= 1e-6
        assert _max_dev(ref[-1], ref[0]) > 1e-3, f"{name}: the state hardly moved"
    z0, z1 = results[0]["z"], results[1]["z"]
    n = min(z0.numel(), z1.numel())
    assert not torch.equal(z0[:n], z1[:n]), "the ranks drew the same noise for different shards"
    assert 0.5 < torch.cat([z0, z1]).std() < 1.5
    for r in results:
        straight, resumed = r["resume"]
        for a, b in zip(straight, resumed):
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert results[0]["nan"] is not None and results[0]["nan"] == results[1]["nan"]
    sync_err = results[0]["sync_error"]
    assert sync_err is not None and "sync=True" in sync_err and "FSDP" in sync_err


def _split_like(model: nn.Module, rank: int) -> list[torch.Tensor]:
    """The local shard of each parameter of ``model`` as FSDP2 cuts it (Shard(0))."""
    out = []
    for p in model.parameters():
        rows = math.ceil(p.shape[0] / WORLD)
        out.append(p.detach()[min(rank * rows, p.shape[0]) : min((rank + 1) * rows, p.shape[0])])
    return out


# --------------------------------------------------------------------------- FSDP2: VOGN, OGN
class _IndexNoiseVOGN(VOGN):
    def _noise(self, group, bucket, generator):
        if not self.sample:  # OGN
            bucket.noise.zero_()
            return
        _IndexNoiseIVON._noise(self, group, bucket, generator)


FSDP_GN_CASES = ("vogn_ggn", "vogn_ef", "ogn")


def _gn_net() -> nn.Module:
    """Uneven under 2-way Shard(0): 5 rows (3 + 2), 3 rows (2 + 1), 1 row (1 + an EMPTY shard)."""
    torch.manual_seed(0)
    layers = (nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1))
    return nn.Sequential(*layers, nn.Tanh(), nn.Linear(1, 3)).double()


def _make_gn(name: str, model: nn.Module):
    kw = dict(lr=0.05, ess=64, beta2=0.99, model=model)
    params = model.parameters()
    if name == "vogn_ggn":
        return _IndexNoiseVOGN(params, curvature="ggn", loss="cross_entropy", **kw)
    if name == "vogn_ef":
        return _IndexNoiseVOGN(params, curvature="ef", **kw)
    return OGN(params, curvature="ggn", loss="cross_entropy", **kw)


def _fsdp_gn_worker(rank: int, port: int, out_dir: str) -> None:
    _init(rank, port)
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    x, y = _data()
    x, y = _shard(x, rank), _shard(y, rank)
    result = {}
    for name in FSDP_GN_CASES:
        model = _gn_net()
        if name != "vogn_ef":  # the blocks, then the root (ggn's extra backward passes
            for layer in model[::2]:  # go through FSDP's backward hooks); ef: the root only
                fully_shard(layer)
        fully_shard(model)
        opt = _make_gn(name, model)
        result[name] = _train(opt, model, x, y, STEPS)
        result[name + "/weights"] = [p.full_tensor().detach() for p in model.parameters()]
        result[name + "/local"] = [tuple(_local(p).shape) for p in model.parameters()]
    # an evaluation forward (no backward) leaves the root's parameters gathered; the next draw
    # must still reach the forward and the curvature hooks
    model = _gn_net()
    fully_shard(model)
    opt = _make_gn("vogn_ef", model)
    evaluated = []
    for _ in range(3):
        with torch.no_grad():
            model(x)
        evaluated += _train(opt, model, x, y, 1)
    result["evaluated"] = evaluated
    try:  # the curvature of a full parameter is cut along dimension 0 only
        _make_gn("vogn_ef", fully_shard(_net(), shard_placement_fn=lambda p: Shard(p.dim() - 1)))
        result["placement_error"] = None
    except ValueError as e:
        result["placement_error"] = str(e)
    _finish(rank, out_dir, result)


def test_fsdp_vogn_and_ogn_equal_one_process():
    results = _spawn(_fsdp_gn_worker)
    x, y = _data()
    # the uneven cuts, as intended: the last rank's shard of the (1, 3) weight and (1,) bias is
    # empty
    assert results[1]["ogn/local"][4:6] == [(0, 3), (0,)]
    for name in FSDP_GN_CASES:
        for a, b in zip(*(r[name + "/weights"] for r in results)):  # gathered: the same
            assert torch.equal(a, b), name
        model = _gn_net()
        ref = _train(_make_gn(name, model), model, x, y, STEPS)
        sizes = [[s.numel() for s in _split_like(model, r)] for r in range(WORLD)]
        devs = []
        for t, want in enumerate(ref):
            got = {}
            for k in want:  # concatenate the ranks' shards, parameter by parameter
                parts = [torch.split(r[name][t][k], sz) for r, sz in zip(results, sizes)]
                got[k] = torch.cat([torch.cat(ps) for ps in zip(*parts)])
            devs.append(_max_dev(got, want))
        assert max(devs) <= 1e-6, f"{name}: max deviation {max(devs):.2e} from one process"
        for a, b in zip(results[0][name + "/weights"], model.parameters()):
            assert (a - b.detach()).abs().max() <= 1e-6
        assert _max_dev(ref[-1], ref[0]) > 1e-3, f"{name}: the state hardly moved"
    for r in results:
        assert max(_max_dev(a, b) for a, b in zip(r["evaluated"], r["vogn_ef"])) <= 1e-12
    err = results[0]["placement_error"]
    assert err is not None and "dimension 0" in err and "Shard(dim=1)" in err, err


# --------------------------------------------------------------------------- torchrun example
def test_torchrun_example_runs_on_two_cpu_processes():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, str(ROOT / "examples" / "ddp_ivon.py")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "ranks identical: True" in out, out
    assert "resumed identically: True" in out, out
    acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert acc > 0.9, out


# --------------------------------------------------------------------------- bSAM under DDP
def _bsam_train(opt, model, x, y, steps: int) -> list[dict[str, torch.Tensor]]:
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    traj = []
    for _ in range(steps):
        opt.step(closure)
        traj.append(_snapshot(opt))
    return traj


def _bsam_worker(rank: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from blr.optim import BSAM

    _init(rank, port)
    x, y = _data()
    x, y = _shard(x, rank), _shard(y, rank)
    ddp = DDP(_net())
    torch.manual_seed(1000 + rank)  # different default seeds: rank 0's is broadcast
    opt = BSAM(ddp.parameters(), lr=0.05, ess=64, rho=0.05, beta2=0.99)
    result = {"bsam": _bsam_train(opt, ddp, x, y, STEPS), "seed": opt._seed}
    _finish(rank, out_dir, result)


def test_bsam_under_ddp_equals_one_process_on_the_concatenated_batch():
    """BSAM through the shared base under DDP (shared noise): the draw, the adversarial point
    and both averaged gradients are those of one process on the concatenated batch, so every
    rank's state equals the single-process run (≤ 1e-6) and the ranks agree bit for bit."""
    from blr.optim import BSAM

    results = _spawn(_bsam_worker)
    _assert_ranks_identical(results, "bsam")
    x, y = _data()
    model = _net()
    opt = BSAM(model.parameters(), lr=0.05, ess=64, rho=0.05, beta2=0.99, seed=results[0]["seed"])
    ref = _bsam_train(opt, model, x, y, STEPS)
    devs = [_max_dev(a, b) for a, b in zip(results[0]["bsam"], ref)]
    assert max(devs) <= 1e-6, max(devs)
    assert _max_dev(ref[-1], ref[0]) > 1e-3  # (the state moved: not a vacuous comparison)
