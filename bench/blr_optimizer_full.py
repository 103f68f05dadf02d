"""The generic BLROptimizer with a full Gaussian over a last layer: step time, memory, and where
the time goes; and where the diagonal Gaussian's optimizer-side time goes on the MLP.

    python bench/blr_optimizer_full.py                  # D = 1,010 ... 10,100 (~2.5 min, 2 cores)
    python bench/blr_optimizer_full.py --outs 10 25     # quick: D = 1,010 and 2,525 (~40 s)
    python bench/blr_optimizer_full.py --only diag      # the MLP part only (~10 s)
    python bench/blr_optimizer_full.py --only full --outs --profile-out 100 --profile-steps 1
    python bench/blr_optimizer_full.py --json           # also one JSON object at the end

(the fourth: only the profile of one step at D = 10,100, ~1.5 min). A single step at D = 10,100
takes over a minute on two cores, so that size gets one timed step and no warm-up.

The model is a body ``Linear(512, 256) → ReLU → Linear(256, 100) → ReLU`` (157,028 parameters,
a DiagGaussian param group) and a head ``Linear(100, out)`` (D = 101·out parameters: out = 100
gives the 10,100-parameter last layer) as its own param group with ``family=FullGaussian()``:

    BLROptimizer([{"params": body.parameters()},
                  {"params": head.parameters(), "family": expfam.FullGaussian()}],
                 expfam.DiagGaussian(), lr=0.1, ess=50_000, seed=0)      # Stein, float32

Optimizer-side time is measured as ``blr bench optim`` measures it (``blr.apps.bench``): fixed
gradients are assigned inside ``sampled_params(train=True)``, so forward and backward are
excluded; the phases are the entry (draw and write), the exit (restore the mean, collect the
gradients) and ``step()``. Each size runs in its own process so that its peak RSS is its own:
``state`` is every tensor reachable from the optimizer plus parameters and gradients (each
storage once, :func:`blr.apps.bench.held_bytes`), ``D×D`` the part of it in D × D matrices,
``peak − before`` the growth of the resident set from just before the optimizer was built to
the end of the timed steps (state and every transient: Cholesky factors, solves, products); the
same model with a DiagGaussian head runs first, for comparison (``diag hd``).

The profiles: torch.profiler's operators (self CPU time per step, call counts: how many Cholesky
factorizations a step makes) and cProfile's Python functions (cumulative time per step; who
calls the Cholesky), for the full head at ``--profile-out`` and for the diagonal Gaussian on the
bench MLP (``blr.apps.bench.mlp``, 1,055,242 parameters) next to IVON, with the primitives'
floors on the same number of floats (``torch.randn``, ``torch._foreach_copy_``, ``torch.cat``,
one elementwise op, ``isfinite().all()``), each on buffers that are not in the cache.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import expfam  # noqa: E402
from blr.apps import bench  # noqa: E402
from blr.optim import IVON, BLROptimizer  # noqa: E402

IN = 100  # the head's input width: D = (IN + 1) * out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _source_hash() -> str:
    """Which BLROptimizer was measured: the first 12 hex digits of blr/optim/generic.py's
    sha256 (the file is under active development)."""
    return hashlib.sha256((ROOT / "blr/optim/generic.py").read_bytes()).hexdigest()[:12]


def model(out: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, IN), nn.ReLU())
    return body, nn.Linear(IN, out)


def make_opt(body: nn.Module, head: nn.Module, head_family: str) -> BLROptimizer:
    fam = expfam.FullGaussian() if head_family == "full" else expfam.DiagGaussian()
    groups = [{"params": body.parameters()}, {"params": head.parameters(), "family": fam}]
    return BLROptimizer(groups, expfam.DiagGaussian(), lr=0.1, ess=50_000, seed=0)


def _enter_exit_step(
    opt: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor]
) -> tuple[float, float, float]:
    """One optimizer-side step, split: (entry, exit, step) seconds."""
    ctx = opt.sampled_params(train=True)
    t0 = time.perf_counter()
    ctx.__enter__()
    t1 = time.perf_counter()
    bench._set_grads(params, grads)
    t2 = time.perf_counter()
    ctx.__exit__(None, None, None)
    t3 = time.perf_counter()
    opt.step()
    t4 = time.perf_counter()
    return t1 - t0, t3 - t2, t4 - t3


def time_phases(
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    grads: list[torch.Tensor],
    repeats: int,
    warmup: int,
    budget_s: float = float("inf"),
) -> dict[str, Any]:
    """Median ms of the entry, exit, step and their sum over ``repeats`` steps after ``warmup``
    (fewer when ``budget_s`` runs out; at least one timed step)."""
    first = None
    for _ in range(warmup):
        t = time.perf_counter()
        _enter_exit_step(opt, params, grads)
        first = first or time.perf_counter() - t
    phases: list[tuple[float, float, float]] = []
    start = time.perf_counter()
    while len(phases) < repeats:
        phases.append(_enter_exit_step(opt, params, grads))
        spent = time.perf_counter() - start
        if spent + spent / len(phases) > budget_s:
            break
    med = {
        k: 1e3 * statistics.median(p[i] for p in phases)
        for i, k in enumerate(("entry_ms", "exit_ms", "step_ms"))
    }
    totals = [1e3 * sum(p) for p in phases]
    return {
        **med,
        "total_ms": statistics.median(totals),
        "min_total_ms": min(totals),
        "first_total_ms": None if first is None else 1e3 * first,
        "repeats": len(phases),
    }


def _reachable(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor reachable from the optimizer (its attributes, state and groups, into
    containers and plain objects), each storage once."""
    seen: dict[int, torch.Tensor] = {}

    def walk(obj: Any, depth: int = 0) -> None:
        if depth > 10:
            return
        if isinstance(obj, torch.Tensor):
            if obj.numel():
                seen.setdefault(obj.untyped_storage().data_ptr(), obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
            walk(vars(obj), depth + 1)

    walk(vars(opt))
    return list(seen.values())


def chol_ms(d: int, repeats: int = 3) -> float:
    """Median ms of one float32 Cholesky factorization of a d × d SPD matrix."""
    a = torch.randn(d, d) / d**0.5
    s = a @ a.mT + torch.eye(d)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.linalg.cholesky(s)
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def one_size(out: int, repeats: int, budget_s: float, threads: int) -> dict[str, Any]:
    """The full head of width ``out`` (and, for comparison, a diagonal head): run in a fresh
    process by :func:`main` so that the peak RSS is this size's."""
    torch.set_num_threads(threads)
    d = (IN + 1) * out
    body, head = model(out)
    params = [*body.parameters(), *head.parameters()]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    # the same model with a diagonal head first (its steps move the parameters: a copy)
    saved = [p.detach().clone() for p in params]
    diag = time_phases(make_opt(body, head, "diag"), params, grads, max(repeats, 5), 2)
    with torch.no_grad():
        torch._foreach_copy_(params, saved)
    del saved
    rss_before = _rss()
    opt = make_opt(body, head, "full")
    rss_built = _rss()
    warmup = 1 if d < 8000 else 0  # the 10k head: no untimed warm-up (a step takes minutes)
    full = time_phases(opt, params, grads, repeats, warmup, budget_s)
    peak = _peak_rss()
    state = bench.held_bytes(opt, params)
    dd = sum(t.untyped_storage().nbytes() for t in _reachable(opt) if t.shape[-2:] == (d, d))
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    return {
        "out": out,
        "D": d,
        "body_params": sum(p.numel() for p in body.parameters()),
        "full": full,
        "diag_head": diag,
        "state_bytes": state,
        "dd_bytes": dd,
        "dd_count": round(dd / (4 * d * d), 2),
        "rss_before": rss_before,
        "rss_built": rss_built,
        "peak_rss": peak,
        "peak_minus_before": peak - rss_before,
        "chol_ms": chol_ms(d, 3 if d < 8000 else 1),
        "finite": finite,
    }


def _run_child(out: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(out), "--repeats", str(args.repeats)]
    cmd += ["--budget", str(args.budget), "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- profiles
def _torch_ops(fn, calls: int, top: int, per: int | None = None) -> tuple[str, dict[str, int]]:
    """torch.profiler's operators over ``calls`` calls of ``fn`` (each ``per`` steps; 1)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    steps = calls * (per or 1)
    avg = list(prof.key_averages())
    rows = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in avg) or 1.0
    lines = [f"{'operator':34} {'self ms/step':>12} {'%':>6} {'calls/step':>10}"]
    for e in rows[:top]:
        lines.append(
            f"{e.key[:34]:34} {e.self_cpu_time_total / 1e3 / steps:12.3f} "
            f"{100 * e.self_cpu_time_total / total:6.1f} {e.count / steps:10.1f}"
        )
    lines.append(f"(all entries: {total / 1e3 / steps:.3f} ms/step)")
    counts = {e.key: e.count // steps for e in avg}
    return "\n".join(lines), counts


def _cprofile(fn, steps: int, top: int, callers_of: tuple[str, ...] = ()) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    total = max(v[3] for v in stats.values())  # the outermost cumulative time
    rows = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)

    def where(func: tuple) -> str:
        file, line, name = func
        return f"{Path(file).name}:{line}({name})" if file != "~" else name

    lines = [f"{'function':58} {'calls/step':>10} {'cum ms/step':>11} {'self ms/step':>12}"]
    for func, (_cc, nc, tt, ct, _callers) in rows[:top]:
        lines.append(
            f"{where(func)[-58:]:58} {nc / steps:10.1f} {1e3 * ct / steps:11.3f} "
            f"{1e3 * tt / steps:12.3f}"
        )
    lines.append(f"(profiled total {1e3 * total / steps:.3f} ms/step, cProfile overhead included)")
    for func, (_cc, nc, _tt, ct, callers) in rows:
        if func[2] in callers_of:
            lines.append(f"{where(func)}: {nc / steps:.0f} calls/step, {1e3 * ct / steps:.1f} ms")
            for caller, (_c, n, _t, c) in sorted(callers.items(), key=lambda kv: -kv[1][3]):
                lines.append(
                    f"    ← {where(caller):52} {n / steps:4.0f}/step {1e3 * c / steps:9.1f} ms"
                )
    return "\n".join(lines)


def profile_full(out: int, threads: int, steps: int = 2, warmup: int = 1) -> dict[str, Any]:
    """torch.profiler and cProfile, together, over ``steps`` optimizer-side steps of the full
    head of width ``out``."""
    torch.set_num_threads(threads)
    body, head = model(out)
    params = [*body.parameters(), *head.parameters()]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    opt = make_opt(body, head, "full")
    for _ in range(warmup):
        bench._one_step(opt, params, grads)

    def fn() -> None:
        bench._one_step(opt, params, grads)

    holder: dict[str, Any] = {}

    def profiled() -> None:
        holder["python"] = _cprofile(
            fn, steps, 24, callers_of=("chol_or_raise", "prec_cholesky", "mean_and_chol")
        )

    ops, counts = _torch_ops(profiled, 1, 14, per=steps)
    return {
        "out": out,
        "D": (IN + 1) * out,
        "ops": ops,
        "python": holder["python"],
        "counts": counts,
        "cholesky_calls_per_step": counts.get("aten::linalg_cholesky_ex", 0),
    }


def floors(n: int, repeats: int = 15, buffers: int = 24) -> dict[str, float]:
    """Median ms of the primitives the diagonal Gaussian's optimizer side is made of, on n float32
    split like the MLP's parameters; each call works on other buffers than the last (``buffers``
    sets, ~100 MB), so that the data comes from memory as in a training step, not the cache."""
    shapes = [p.shape for p in bench.mlp().parameters()]
    assert sum(s.numel() for s in shapes) == n
    parts = [[torch.randn(s) for s in shapes] for _ in range(buffers)]
    flats = [torch.randn(n) for _ in range(buffers)]
    views = [
        [v.view(s) for v, s in zip(f.split([s.numel() for s in shapes]), shapes)] for f in flats
    ]
    gen = torch.Generator().manual_seed(0)
    cases = {
        "randn (the draw's noise)": lambda i: torch.randn(n, generator=gen),
        "_foreach_copy_ (write one θ)": lambda i: torch._foreach_copy_(parts[i], views[i - 1]),
        "cat of the gradients": lambda i: torch.cat([p.reshape(-1) for p in parts[i]]),
        "one elementwise op (a * b)": lambda i: flats[i] * flats[i - 1],
        "isfinite(x).all()": lambda i: bool(torch.isfinite(flats[i]).all()),
        "(x > 0).all()": lambda i: bool((flats[i] > 0).all()),
    }
    out = {}
    for name, f in cases.items():
        f(0)
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            f(i % buffers)
            times.append(1e3 * (time.perf_counter() - t))
        out[name] = statistics.median(times)
    return out


def profile_diag(threads: int, repeats: int, rounds: int = 3) -> dict[str, Any]:
    """IVON vs the diagonal BLROptimizer on the MLP: phases (interleaved rounds, medians),
    then the profiles of the BLROptimizer."""
    torch.set_num_threads(threads)
    makers = {
        "blr IVON": lambda p: IVON(p, lr=0.1, ess=50_000, seed=0),  # as in blr bench optim
        "BLROptimizer diag": bench.blr_diag,
    }
    runs = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        m = bench.mlp()
        params = list(m.parameters())
        grads = [torch.randn_like(p) * 1e-3 for p in params]
        runs[name] = (make(params), params, grads)
    per_round: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
    for _ in range(rounds):  # the two take turns, so that a drifting machine slows both alike
        for name, (opt, params, grads) in runs.items():
            per_round[name].append(time_phases(opt, params, grads, repeats, 3))
    keys = ("entry_ms", "exit_ms", "step_ms", "total_ms", "min_total_ms")
    phases = {
        name: {k: statistics.median(r[k] for r in rs) for k in keys}
        for name, rs in per_round.items()
    }
    ratios = [
        b["total_ms"] / a["total_ms"]
        for a, b in zip(per_round["blr IVON"], per_round["BLROptimizer diag"])
    ]
    opt, params, grads = runs["BLROptimizer diag"]

    def fn() -> None:
        bench._one_step(opt, params, grads)

    ops, _ = _torch_ops(fn, 10, 16)
    py = _cprofile(fn, 20, 30)
    i_opt, i_params, i_grads = runs["blr IVON"]
    ivon_ops, _ = _torch_ops(lambda: bench._one_step(i_opt, i_params, i_grads), 10, 8)
    return {
        "params": sum(p.numel() for p in params),
        "phases": phases,
        "ratio_per_round": [round(r, 2) for r in ratios],
        "ratio_median": statistics.median(ratios),
        "ops": ops,
        "ivon_ops": ivon_ops,
        "python": py,
        "floors": floors(sum(p.numel() for p in params)),
    }


# ---------------------------------------------------------------------------- report
def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def print_sizes(rows: list[dict[str, Any]]) -> None:
    print(
        "\nFullGaussian head (own param group) + DiagGaussian body, optimizer side, median ms "
        "(entry = draw + write, exit = restore + collect)"
    )
    head = (
        f"{'D':>6} {'reps':>4} {'entry':>9} {'exit':>9} {'step':>9} {'total':>9} "
        f"{'diag hd':>8} {'×diag':>7} {'chol':>8} {'÷chol':>6} {'state MiB':>10} "
        f"{'D×D MiB':>8} {'#D×D':>5} {'peak−before MiB':>15}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        f = r["full"]
        print(
            f"{r['D']:6d} {f['repeats']:4d} {f['entry_ms']:9.1f} {f['exit_ms']:9.1f} "
            f"{f['step_ms']:9.1f} {f['total_ms']:9.1f} {r['diag_head']['total_ms']:8.2f} "
            f"{f['total_ms'] / r['diag_head']['total_ms']:7.0f} {r['chol_ms']:8.1f} "
            f"{f['total_ms'] / r['chol_ms']:6.1f} {_mib(r['state_bytes']):>10} "
            f"{_mib(r['dd_bytes']):>8} {r['dd_count']:5.1f} {_mib(r['peak_minus_before']):>15}"
        )
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        import math

        k = math.log(b["full"]["total_ms"] / a["full"]["total_ms"]) / math.log(b["D"] / a["D"])
        print(f"scaling of the total between D = {a['D']} and {b['D']}: ~D^{k:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument(
        "--outs",
        type=int,
        nargs="*",
        default=[10, 25, 100],
        help="head widths: D = 101·out (default 10 25 100: D = 1,010, 2,525, 10,100); none: "
        "only the profile",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per size (at most)")
    parser.add_argument(
        "--budget", type=float, default=20.0, help="seconds of timed steps per size (at least 1)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--profile-out", type=int, default=25, help="head width to profile")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=2,
        help="profiled steps (after one warm-up step where D < 8,000)",
    )
    parser.add_argument("--diag-repeats", type=int, default=20, help="steps per round (MLP)")
    parser.add_argument("--only", choices=["full", "diag"], help="one part only")
    parser.add_argument("--json", action="store_true", help="also print one JSON object")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.repeats, args.budget, args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"blr/optim/generic.py sha256 {_source_hash()}"
    )
    result: dict[str, Any] = {"generic_py_sha256": _source_hash()}
    if args.only != "full":
        diag = profile_diag(args.threads, args.diag_repeats)
        result["diag"] = diag
        print(
            f"\nDiagGaussian BLROptimizer vs IVON on the MLP ({diag['params']:,} parameters), "
            "optimizer side, medians of 3 interleaved rounds (ms):"
        )
        print(f"{'':20} {'entry':>8} {'exit':>8} {'step':>8} {'total':>8}")
        for name, p in diag["phases"].items():
            print(
                f"{name:20} {p['entry_ms']:8.3f} {p['exit_ms']:8.3f} {p['step_ms']:8.3f} "
                f"{p['total_ms']:8.3f}"
            )
        print(
            f"BLROptimizer diag / IVON: {diag['ratio_median']:.2f}× (per round: "
            f"{diag['ratio_per_round']}); target ≤ 3×"
        )
        print("\ntorch.profiler, BLROptimizer diag (10 steps):\n" + diag["ops"])
        print("\ntorch.profiler, IVON (10 steps):\n" + diag["ivon_ops"])
        print("\ncProfile, BLROptimizer diag (20 steps):\n" + diag["python"])
        print(f"\nfloors on {diag['params']:,} float32 (median ms):")
        for k, v in diag["floors"].items():
            print(f"  {k:32} {v:7.3f}")
    if args.only != "diag" and args.outs:
        rows = []
        for out in args.outs:
            r = _run_child(out, args)
            rows.append(r)
            print(
                f"  D = {r['D']}: {r['full']['total_ms']:.1f} ms/step ({r['full']['repeats']} "
                f"steps), elapsed {time.perf_counter() - t_start:.0f} s",
                flush=True,
            )
        result["full"] = rows
        print_sizes(rows)
    if args.only != "diag":
        big = (IN + 1) * args.profile_out >= 8000  # no warm-up step there (minutes each)
        prof = profile_full(args.profile_out, args.threads, args.profile_steps, 0 if big else 1)
        result["full_profile"] = {k: v for k, v in prof.items() if k != "counts"}
        steps = args.profile_steps
        print(
            f"\ntorch.profiler, FullGaussian head D = {prof['D']} ({steps} steps):\n" + prof["ops"]
        )
        print(f"Cholesky factorizations per step: {prof['cholesky_calls_per_step']}")
        print(f"\ncProfile, same steps, FullGaussian head D = {prof['D']}:\n" + prof["python"])
    print(f"\nelapsed {time.perf_counter() - t_start:.0f} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
