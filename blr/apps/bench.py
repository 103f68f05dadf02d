"""Benchmarks behind ``blr bench`` (and the scripts in ``bench/``): optimizer-side time and memory
of the :mod:`blr.optim` drop-ins and the generic :class:`~blr.optim.BLROptimizer` against
torch's AdamW on the two reference models.

Optimizer-side time is everything an optimizer adds to a training step besides forward and
backward: for a sampling optimizer, drawing and writing the sample, restoring the mean, collecting
the gradient and the update; for AdamW, ``step()``. Gradients are prepared once and assigned
inside the timed region, so the model's own compute is excluded. Memory held by the optimizer
counts parameters, gradients, state and persistent buffers in bytes (each storage once).

The generic optimizer runs as ``BLROptimizer(params, expfam.DiagGaussian(), ...)`` with its default
Stein estimator (row ``BLROptimizer diag``), measured exactly as IVON (draw and write on entering
``sampled_params``, restore and gradient collection on leaving it, ``step()``); each row also
reports its ratio to IVON's time in the same run (``x_ivon``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def cnn() -> nn.Module:
    """The 0.5M-parameter CNN: 4 conv + 2 linear layers (input 3×32×32)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 96, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(96, 128, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def mlp() -> nn.Module:
    """The 1M-parameter MLP 512 → 1024 → 512 → 10."""
    return nn.Sequential(
        nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10)
    )


MODELS: dict[str, Callable[[], nn.Module]] = {"cnn": cnn, "mlp": mlp}


def _is_sampling(opt: torch.optim.Optimizer) -> bool:
    return callable(getattr(opt, "sampled_params", None))


def _set_grads(params: list[nn.Parameter], grads: list) -> None:
    """What backward does: accumulate into the existing ``.grad`` (here: overwrite in place)."""
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def _one_step(opt: torch.optim.Optimizer, params: list[nn.Parameter], grads: list) -> None:
    if _is_sampling(opt):
        with opt.sampled_params(train=True):
            _set_grads(params, grads)
        opt.step()
    else:
        _set_grads(params, grads)
        opt.step()


def held_bytes(opt: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> int:
    """Bytes of parameters, gradients and every tensor reachable from the optimizer (its state,
    param groups and attributes, one level into containers), each storage counted once."""
    seen: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            s = t.untyped_storage()
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())

    def walk(obj: Any, depth: int = 0) -> None:
        if depth > 8:
            return
        if isinstance(obj, torch.Tensor):
            add(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
            walk(vars(obj), depth + 1)

    for p in params:
        add(p)
        add(p.grad)
    walk(dict(opt.state))
    walk(opt.param_groups)
    walk({k: v for k, v in vars(opt).items() if k not in ("state", "param_groups")})
    return sum(seen.values())


def time_optimizer(
    make_model: Callable[[], nn.Module],
    make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    *,
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Median optimizer-side milliseconds per step, and the bytes held after the last step."""
    torch.manual_seed(0)
    model = make_model()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    opt = make_opt(params)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        _one_step(opt, params, grads)
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t0))
    _set_grads(params, grads)
    return {
        "ms": statistics.median(times),
        "min_ms": min(times),
        "bytes": held_bytes(opt, params),
        "params": sum(p.numel() for p in params),
    }


IVON_ROW = "blr IVON"
BLR_DIAG_ROW = "BLROptimizer diag"


def blr_diag(params: Any) -> torch.optim.Optimizer:
    """The generic optimizer as the benchmark runs it: a diagonal Gaussian over all parameters,
    the default Stein estimator, IVON's lr and ess (one draw per step)."""
    import expfam
    from blr.optim import BLROptimizer

    return BLROptimizer(params, expfam.DiagGaussian(), lr=0.1, ess=50_000, seed=0)


def default_optimizers() -> dict[str, Callable]:
    from blr.optim import IVON

    return {
        "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
        IVON_ROW: lambda p: IVON(p, lr=0.1, ess=50_000, seed=0),
        "blr IVON fused": lambda p: IVON(p, lr=0.1, ess=50_000, seed=0, fused=True),
        BLR_DIAG_ROW: blr_diag,
    }


def optim_table(
    optimizers: dict[str, Callable] | None = None,
    models: Sequence[str] = ("cnn", "mlp"),
    repeats: int = 20,
) -> list[dict[str, Any]]:
    """One row per (model, optimizer): median ms, bytes, both relative to AdamW(foreach), and
    the time relative to IVON's (``x_ivon``); a ratio is None when its reference row is not
    among ``optimizers``."""
    optimizers = optimizers or default_optimizers()
    rows = []
    for name in models:
        results = {
            k: time_optimizer(MODELS[name], f, repeats=repeats) for k, f in optimizers.items()
        }
        base = results.get("adamw-foreach")
        ivon = results.get(IVON_ROW)
        for k, r in results.items():
            rows.append(
                {
                    "model": name,
                    "optimizer": k,
                    "params": r["params"],
                    "ms": round(r["ms"], 3),
                    "min_ms": round(r["min_ms"], 3),
                    "x_adamw_foreach": None if base is None else round(r["ms"] / base["ms"], 2),
                    "x_ivon": None if ivon is None else round(r["ms"] / ivon["ms"], 2),
                    "bytes": r["bytes"],
                    "bytes_x_adamw": None if base is None else round(r["bytes"] / base["bytes"], 3),
                }
            )
    return rows


def time_train_steps(
    makers: dict[str, Callable[[nn.Module], torch.optim.Optimizer]],
    *,
    batch: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Median milliseconds of a whole training step of the MLP on a minibatch, per optimizer:
    forward, cross-entropy, backward (inside ``sampled_params(train=True)`` for sampling
    optimizers, which is where VOGN collects its per-example curvature) and the update. The
    optimizers take turns, one step each per round, so that a machine whose speed drifts
    slows them alike."""
    device = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch, 512, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    runs = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        model = mlp().to(device)
        opt = make(model)
        runs[name] = (model, opt, _is_sampling(opt))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, (model, opt, sampling) in runs.items():
            sync()
            t0 = time.perf_counter()
            ctx = opt.sampled_params(train=True) if sampling else contextlib.nullcontext()
            with ctx:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sync()
            if i >= warmup:
                times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def train_step_table(repeats: int = 20, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """AdamW vs the sampling optimizers (IVON, VOGN, OGN and the generic BLROptimizer with a
    diagonal Gaussian), whole training steps on the MLP (batch 128), on ``device`` (interleaved:
    :func:`time_train_steps`)."""
    from blr.optim import IVON, VOGN

    def vogn(curvature: str, **kw: Any) -> Callable[[nn.Module], torch.optim.Optimizer]:
        loss = None if curvature == "ef" else "cross_entropy"
        return lambda m: VOGN(
            m.parameters(), lr=1e-3, ess=50_000, curvature=curvature, loss=loss, seed=0, model=m,
            **kw,
        )  # fmt: skip

    makers = {
        "adamw-foreach": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True),
        "adamw-fused": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True),
        "blr IVON": lambda m: IVON(m.parameters(), lr=0.1, ess=50_000, seed=0),
        "blr IVON fused": lambda m: IVON(m.parameters(), lr=0.1, ess=50_000, seed=0, fused=True),
        "blr VOGN ef": vogn("ef"),
        "blr VOGN ef fused": vogn("ef", fused=True),
        "blr OGN ef fused": vogn("ef", fused=True, sample=False),
        "blr VOGN mc_fisher": vogn("mc_fisher"),
        "blr VOGN ggn": vogn("ggn"),
        BLR_DIAG_ROW: lambda m: blr_diag(m.parameters()),
    }
    times = time_train_steps(makers, repeats=repeats, device=device)
    base = times["adamw-foreach"]
    return [
        {
            "model": "mlp",
            "optimizer": k,
            "step_ms": round(v, 3),
            "x_adamw_foreach": round(v / base, 2),
            "x_ivon": round(v / times[IVON_ROW], 2),
        }
        for k, v in times.items()
    ]


def _ratio(x: float | None, width: int = 6, digits: int = 2) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.{digits}f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'model':6} {'optimizer':18} {'params':>9} {'ms':>8} {'min ms':>8} {'×AdamW':>7} "
    head += f"{'×IVON':>6} {'MiB held':>9} {'×AdamW':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:6} {r['optimizer']:18} {r['params']:9d} {r['ms']:8.3f} "
            f"{r['min_ms']:8.3f} {_ratio(r['x_adamw_foreach'], 7)} {_ratio(r['x_ivon'])} "
            f"{r['bytes'] / 2**20:9.2f} {_ratio(r['bytes_x_adamw'], 7, 3)}"
        )


def main(argv: Sequence[str] | None = None, extra: dict[str, Callable] | None = None) -> int:
    """``blr bench optim``: the optimizer table (``--json`` for machines)."""
    parser = argparse.ArgumentParser(
        prog="blr bench optim",
        description=(
            "Optimizer-side time per step (sampled_params entry and exit + step(): the draw, "
            "the restore, the gradient collection and the update; forward and backward "
            "excluded) and memory held, on the CNN and the MLP, with ratios to AdamW(foreach) "
            "and to IVON; then whole training steps on the MLP, which add VOGN and OGN."
        ),
        epilog=(
            f"rows of the optimizer-side table: {', '.join(default_optimizers())} (and any a "
            "script adds). BLROptimizer diag is blr.optim.BLROptimizer(params, "
            "expfam.DiagGaussian(), lr=0.1, ess=50_000) with its default Stein estimator."
        ),
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=sorted(MODELS))
    parser.add_argument(
        "--optimizers",
        nargs="+",
        metavar="NAME",
        help="only these rows of the optimizer-side table (default: all; quote names with "
        "spaces, e.g. 'blr IVON' 'BLROptimizer diag')",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead")
    parser.add_argument(
        "--no-train-step", action="store_true", help="skip the whole-training-step table"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    optimizers = {**default_optimizers(), **(extra or {})}
    if args.optimizers:
        unknown = [k for k in args.optimizers if k not in optimizers]
        if unknown:
            parser.error(f"unknown optimizer(s) {unknown}; choose from {list(optimizers)}")
        optimizers = {k: optimizers[k] for k in args.optimizers}
    rows = optim_table(optimizers, args.models, args.repeats)
    steps = [] if args.no_train_step else train_step_table(args.repeats)
    if args.json:
        print(json.dumps({"optimizer_side": rows, "train_step": steps}, indent=1))
        return 0
    print(
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; optimizer-side "
        "time per step (median of repeats)"
    )
    print_table(rows)
    for r in rows:
        if r["optimizer"] == BLR_DIAG_ROW and r["x_ivon"] is not None:
            print(f"{BLR_DIAG_ROW} / {IVON_ROW}, optimizer side, {r['model']}: {r['x_ivon']:.2f}×")
    if steps:
        print("\nwhole training step on the MLP, batch 128 (forward, backward, curvature, update)")
        print(f"{'optimizer':20} {'ms':>8} {'×AdamW':>7} {'×IVON':>6}")
        for r in steps:
            print(
                f"{r['optimizer']:20} {r['step_ms']:8.3f} {r['x_adamw_foreach']:7.2f} "
                f"{r['x_ivon']:6.2f}"
            )
    return 0
