"""Batched full-covariance BLR step: the kernel against the bare batched linear algebra it needs,
a per-problem Python loop, and the generic engine.

    python bench/engine_batched.py --B 1024 --d 32 --repeats 30 --device cpu

Rows (median wall time over ``--repeats`` rounds after warmup; within a round the rows run
interleaved, in an order rotated each round, so slow drifts of a noisy machine hit every row
alike; CUDA rows synchronize):

- ``kernel``: :func:`blr.kernels.full_gaussian_step` on the whole batch (the BLR limit);
- ``bare``: the same arithmetic inline, no checks (``lerp``, ``cholesky_ex``, ``cholesky_solve``,
  ``add``), the floor the kernel is measured against (target: kernel/bare ≤ 1.2);
- ``kernel improved``: ``improved=True`` with the previous factor passed in (for reference);
- ``loop``: the kernel called on each of the B problems in a Python loop;
- ``blr.step``: the generic engine on the batch, ĝ and Ĥ passed in by a precomputed-gradient
  estimator (it validates λ, rebuilds m and the Cholesky factors from λ, and returns λ).

With ``--device all`` (the default) it runs on the CPU and, when one is available, on CUDA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import blr
from blr.kernels import full_gaussian_step
from expfam import FullGaussian

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Precomputed(blr.Estimator):
    """∇_μE_q[ℓ] = (ĝ − Ĥm, ½Ĥ) from a precomputed (ĝ, Ĥ)."""

    def __init__(self, g: torch.Tensor, h: torch.Tensor) -> None:
        self.g, self.h = g, h

    def __call__(self, family, nat, loss, *, generator=None):
        return blr.Estimate(family.mean_grad_from_gh(nat, self.g, self.h), self.g[..., 0])


def make_problem(B: int, d: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def spd():
        a = torch.randn(B, d, d, dtype=torch.float64, generator=gen)
        s = a @ a.mT / d + torch.eye(d, dtype=torch.float64)
        return 0.5 * (s + s.mT)

    m = torch.randn(B, d, dtype=torch.float64, generator=gen)
    g = torch.randn(B, d, dtype=torch.float64, generator=gen)
    prec, h = spd(), spd()
    return tuple(t.to(device=device, dtype=dtype) for t in (m, prec, g, h))


def bare(m, prec, g, h, rho):
    """The batched linear algebra of one step, inline and unchecked."""
    prec_new = torch.lerp(prec, h, rho)
    chol, _ = torch.linalg.cholesky_ex(prec_new)
    m_new = torch.add(m, torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1), alpha=-rho)
    return m_new, prec_new, chol


def time_rows(rows: dict[str, Callable], repeats: int, warmup: int, sync: Callable) -> dict:
    for _ in range(warmup):
        for f in rows.values():
            f()
    sync()
    times: dict[str, list[float]] = {name: [] for name in rows}
    order = list(rows.items())
    for r in range(repeats):
        k = r % len(order)  # rotate the order: no position bias
        for name, f in order[k:] + order[:k]:
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def run(device: str, B: int, d: int, dtype: torch.dtype, repeats: int, loop_repeats: int) -> float:
    rho = 0.1
    m, prec, g, h = make_problem(B, d, dtype, device)
    chol = torch.linalg.cholesky(prec)
    fam = FullGaussian()
    nat = fam.from_moments(m, prec)
    est = Precomputed(g, h)

    def loop():
        for i in range(B):
            full_gaussian_step(m[i], prec[i], g[i], h[i], rho)

    fast = {
        "kernel": lambda: full_gaussian_step(m, prec, g, h, rho),
        "bare": lambda: bare(m, prec, g, h, rho),
        "kernel improved": lambda: full_gaussian_step(
            m, prec, g, h, rho, improved=True, prec_chol=chol
        ),
        "blr.step": lambda: blr.step(fam, nat, None, rho, estimator=est),
    }
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    new, ref = full_gaussian_step(m, prec, g, h, rho), bare(m, prec, g, h, rho)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert all(((x - y).abs().max() / y.abs().max()) <= tol for x, y in zip(new, ref))

    times = time_rows(fast, repeats, warmup=3, sync=sync)
    times.update(time_rows({"loop": loop}, loop_repeats, warmup=1, sync=sync))

    med = {name: statistics.median(ts) for name, ts in times.items()}
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    print(f"\n{name}{threads}: B = {B}, d = {d}, {str(dtype).removeprefix('torch.')}")
    print(f"{'':18}{'median ms':>11}{'min ms':>10}{'× bare':>9}{'repeats':>9}")
    for row in ("bare", "kernel", "kernel improved", "loop", "blr.step"):
        ts = times[row]
        print(
            f"{row:18}{1e3 * med[row]:11.3f}{1e3 * min(ts):10.3f}"
            f"{med[row] / med['bare']:9.2f}{len(ts):9d}"
        )
    ratio = med["kernel"] / med["bare"]
    best = min(times["kernel"]) / min(times["bare"])
    print(f"kernel / bare = {ratio:.3f} by medians, {best:.3f} by minima  (target ≤ 1.2)")
    return ratio


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=1024, help="number of independent Gaussians")
    p.add_argument("--d", type=int, default=32, help="dimension of each Gaussian")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported)")
    p.add_argument("--loop-repeats", type=int, default=3, help="timed rounds of the slow loop")
    p.add_argument("--device", default="all", help='"cpu", "cuda", "cuda:1", ... or "all"')
    p.add_argument("--dtype", default="float32,float64", help="comma-separated: float32,float64")
    args = p.parse_args(argv)
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    if not torch.cuda.is_available():
        print("CUDA: not available, CPU figures only")
    for device in devices:
        for dt in args.dtype.split(","):
            run(device, args.B, args.d, DTYPES[dt.strip()], args.repeats, args.loop_repeats)


if __name__ == "__main__":
    main()
