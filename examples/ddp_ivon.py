r"""IVON under DistributedDataParallel on CPU processes (gloo): data-parallel variational training.

Every rank draws the same θ = m + σ⊙z (the optimizer broadcasts rank 0's seed at the first draw),
trains on its own shard of each minibatch, and DDP's gradient all-reduce yields ĝ — and with it
IVON's Hessian statistic σz⊙ĝ — of the whole minibatch; every rank then takes the same step and
holds the same posterior. Halfway, rank 0 saves a checkpoint; at the end every rank loads it into
a fresh model and optimizer and replays the second half, which must give the same posterior bit
for bit. See docs/distributed.md.

Run (2 processes on the CPU)::

    torchrun --standalone --nproc_per_node 2 examples/ddp_ivon.py

It prints the training loss, the test accuracy and NLL of the posterior predictive (8 draws),
whether the ranks hold identical posteriors, and whether the resumed run matched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from blr.optim import IVON


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals in 2-D (the same on every rank: seeded)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * torch.pi
    label = torch.randint(0, 2, (n,), generator=g)
    r = t / (3 * torch.pi) * 2 + 0.3
    angle = t + label * torch.pi
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1)
    return x + 0.05 * torch.randn(n, 2, generator=g), label


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
    )


def make_optimizer(params, n: int) -> IVON:
    """IVON for n training examples; no seed: rank 0's is broadcast at the first draw."""
    return IVON(params, lr=2.0, ess=n, hess_init=0.1, beta2=0.9995)


def train(ddp: DDP, opt: IVON, x: torch.Tensor, y: torch.Tensor, steps: range, batch: int):
    """One minibatch of ``batch`` examples per step; this rank takes its part of it."""
    rank, world = dist.get_rank(), dist.get_world_size()
    per_rank = batch // world
    loss = torch.tensor(0.0)
    for step in steps:
        start = (step * batch) % (len(x) - batch + 1) + rank * per_rank
        xb, yb = x[start : start + per_rank], y[start : start + per_rank]
        with opt.sampled_params(train=True):
            opt.zero_grad()
            loss = F.cross_entropy(ddp(xb), yb)
            loss.backward()
        opt.step()
    return loss.detach()


def flat_state(opt: IVON) -> torch.Tensor:
    state = opt.state_dict()["state"]
    return torch.cat([v.flatten() for i in sorted(state) for v in state[i].values()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument("--batch", type=int, default=64, help="global minibatch (default 64)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = make_data(1024, seed=0)
    x_test, y_test = make_data(512, seed=1)

    torch.manual_seed(rank)  # different on each rank on purpose: DDP broadcasts rank 0's
    ddp = DDP(make_model())  # weights, the optimizer broadcasts rank 0's seed
    opt = make_optimizer(ddp.parameters(), len(x))
    half = args.steps // 2
    train(ddp, opt, x, y, range(half), args.batch)

    # checkpoint: rank 0 saves, every rank can load (each rank holds the full state)
    path = [os.path.join(tempfile.mkdtemp(), "ivon.pt") if rank == 0 else None]
    dist.broadcast_object_list(path)  # a shared file system: the same machine here
    if rank == 0:
        torch.save({"model": ddp.module.state_dict(), "optimizer": opt.state_dict()}, path[0])
    dist.barrier()
    loss = train(ddp, opt, x, y, range(half, args.steps), args.batch)

    # the ranks hold the same posterior (means, precisions, momenta)
    mine = flat_state(opt)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    identical = all(torch.equal(mine, other) for other in everyone)

    # resume from the checkpoint into a fresh model and optimizer, replay the second half
    ckpt = torch.load(path[0])
    torch.manual_seed(100 + rank)
    ddp2 = DDP(make_model())
    ddp2.module.load_state_dict(ckpt["model"])
    opt2 = make_optimizer(ddp2.parameters(), len(x))
    opt2.load_state_dict(ckpt["optimizer"])
    train(ddp2, opt2, x, y, range(half, args.steps), args.batch)
    resumed = torch.equal(flat_state(opt2), mine)

    # posterior predictive on the test set: the average of 8 draws' probabilities
    with torch.no_grad():
        probs = torch.zeros(len(x_test), 2)
        for _ in range(8):
            with opt.sampled_params():
                probs += F.softmax(ddp.module(x_test), -1) / 8
    acc = (probs.argmax(-1) == y_test).double().mean().item()
    nll = -probs[torch.arange(len(y_test)), y_test].log().mean().item()
    if rank == 0:
        print(f"{world} processes, {args.steps} steps, last training loss {loss.item():.3f}")
        print(f"test accuracy {acc:.3f}, test NLL {nll:.3f} (posterior predictive, 8 draws)")
        print(f"ranks identical: {identical}")
        print(f"resumed identically: {resumed}")
        os.remove(path[0])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
