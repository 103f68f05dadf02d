r"""``blr bench continual``: task-incremental continual learning on split digits and split
Fashion-MNIST with the posterior as the memory (:mod:`blr.continual`).

The ten classes are split into T = 5 binary tasks, {0, 1}, {2, 3}, …, {8, 9}, learned one after
the other by one multi-head MLP (ReLU hidden layers, one logit per task: the head of task t is
output t, p(y = 2t + 1 | x) = σ(f_t(x))). After task t the model is tested on every task learned
so far, each with its own head (the task identity is given at test time: "multi-head"). With
R_{l,s} the test accuracy on task s after learning task l, the benchmark reports

.. math::
    \text{average accuracy} = \frac1T\sum_{s=1}^T R_{T,s},\qquad
    \text{forgetting} = \frac1{T-1}\sum_{s=1}^{T-1}\Big(\max_{s\le l<T} R_{l,s} - R_{T,s}\Big),

mean ± standard error over seeds (the same initialisation and minibatch order for every method
of a seed). The methods (:data:`METHODS`); the loss of a minibatch B of task t with N_t
examples is the mean binary cross-entropy plus the method's regularizer 𝓡 divided by N_t:

- ``naive``: Adam, 𝓡 = 0 (fine-tuning; the lower bound);
- ``EWC``: online EWC (Schwarz et al. 2018), 𝓡 = ½λ Σ_j F_j (θ_j − θ*_j)² with
  F = Σ_{s<t} diag GGN_s + δ accumulated over the past tasks (:class:`blr.continual.WeightPrior`,
  F from :func:`blr.continual.diag_laplace`), θ* the parameters after the last task;
- ``VCL``: IVON (:class:`blr.optim.IVON`, one draw per step, ``ess`` = N_t) with the last task's
  posterior as the prior (:func:`blr.continual.vcl_prior`); predictions at the posterior mean;
- ``FROMP`` (Pan et al. 2020): Adam, 𝓡 = Σ_{s<t} τ·½(p_s(θ) − p_s^old)ᵀK_s⁻¹(p_s(θ) − p_s^old)
  over M memorable points of each past task s (:func:`blr.continual.memorable_points`, the
  largest p(1 − p) at the end of task s), K_s = J Σ_s Jᵀ from the diagonal Laplace posterior Σ_s
  after task s (:class:`blr.continual.FunctionalPrior`);
- ``K-prior`` (Khan & Swaroop 2021): Adam, 𝓡 = Σ_{s<t} τ (N_s/M) Σ_{i∈M_s} ℓ(ŷ_i, f_i(θ))
  + ½δ‖θ − θ_{t−1}‖², soft labels ŷ_i from the model after task s on the same memorable points
  (:class:`blr.continual.KPrior`);
- ``joint``: Adam on all tasks at once for the same number of epochs (the upper bound).

Hyperparameters: :data:`SETTINGS`, chosen on the validation split (digits: the stratified 20 %
of :func:`blr.apps.demo.load_digits`; Fashion-MNIST: 10 000 of the training images) with
``evaluate_on="validation"``; docs/continual.md gives the grid. Run ``blr bench continual``
(``--help`` lists the options).

Example:
    >>> tasks = task_classes(10, 5)
    >>> tasks[0], tasks[4]
    ((0, 1), (8, 9))
    >>> forgetting([[0.75, 0.0], [0.5, 0.8]])   # task 1 fell from 0.75 to 0.5
    0.25
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from blr.apps.demo import _positive_int
from blr.apps.report import format_mean_se, mean_se, text_table
from blr.continual import _flat

__all__ = [
    "DATASETS",
    "METHODS",
    "PUBLISHED",
    "SETTINGS",
    "MultiHeadMLP",
    "build_parser",
    "forgetting",
    "format_table",
    "main",
    "run",
    "run_method",
    "task_classes",
]

METHODS = ("naive", "EWC", "VCL", "FROMP", "K-prior", "joint")
"""The methods, in the table's order (module docstring)."""

DATASETS = ("digits", "fashion-mnist")

PUBLISHED: dict[str, dict[str, tuple[float, str]]] = {
    "fashion-mnist": {
        "S-FSVI": (99.05, "Rudner et al. 2022, split Fashion-MNIST, multi-head"),
    },
    "mnist": {
        "FROMP": (99.3, "Pan et al. 2020, split MNIST, multi-head"),
    },
}
"""Published average accuracies (%) in a matching setting, shown beside the table (the setting
of split MNIST is the same as ours with MNIST's digits; it is listed for scale)."""

SETTINGS: dict[str, dict[str, Any]] = {
    # the best of a grid on the validation split, 3 seeds (docs/continual.md): EWC λ ∈ {1, 10,
    # 100}, VCL lr ∈ {0.05, 0.1, 0.3}, FROMP τ ∈ {3, 10, 30}, K-prior τ ∈ {1, 3, 10} (ties: the
    # value chosen on Fashion-MNIST); M = 20 of the ~215 examples per task
    "digits": {
        "hidden": (100, 100),
        "epochs": 20,
        "batch_size": 32,
        "lr": 1e-3,
        "delta": 1.0,
        "memory": 20,
        "EWC": {"lam": 1.0},
        "VCL": {"lr": 0.1, "hess_init": 0.1, "beta2": 0.99, "weight_decay": 1e-3},
        "FROMP": {"tau": 30.0},
        "K-prior": {"tau": 3.0},
    },
    # the best of a grid on the validation split, one seed (docs/continual.md): EWC λ ∈ {1, 10,
    # 30, 100, 300, 1000}; FROMP τ ∈ {10, 100, 1000} with M = 40 and {30, 100, 300} with
    # M = 200; K-prior τ ∈ {0.3, 1, 3, 10} with M = 40 and 3 with M = 200; VCL lr ∈ {0.05, 0.1,
    # 0.3}, h₀ 0.01, β₂ 0.999
    "fashion-mnist": {
        "hidden": (256, 256),
        "epochs": 5,
        "batch_size": 128,
        "lr": 1e-3,
        "delta": 1.0,
        "memory": 200,
        "EWC": {"lam": 100.0},
        "VCL": {"lr": 0.05, "hess_init": 0.1, "beta2": 0.99, "weight_decay": 1e-4},
        "FROMP": {"tau": 30.0},
        "K-prior": {"tau": 3.0},
    },
}
"""Per data set: the network (``hidden``), the budget per task (``epochs``, ``batch_size``),
Adam's learning rate ``lr``, the prior precision δ of the Laplace posteriors and of K-prior's
weight term, M = ``memory`` points per task (FROMP, K-prior), and each method's own settings."""


def task_classes(n_classes: int = 10, n_tasks: int = 5) -> list[tuple[int, ...]]:
    """The classes of each task: consecutive groups of ``n_classes // n_tasks``."""
    if n_classes % n_tasks:
        raise ValueError(f"n_tasks must divide the {n_classes} classes, got {n_tasks}")
    k = n_classes // n_tasks
    return [tuple(range(t * k, (t + 1) * k)) for t in range(n_tasks)]


class MultiHeadMLP(nn.Module):
    """An MLP body (Linear → ReLU per hidden width) and one linear output per task: ``forward``
    returns the logits of all heads, ``(n, n_tasks)``."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_tasks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.heads = nn.Linear(width, n_tasks)

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.body(x))


class _Head:
    """``select`` of task t: the model's output column t, ``(n, 1)``."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self, out: Tensor) -> Tensor:
        return out[:, self.t : self.t + 1]


def forgetting(acc: Sequence[Sequence[float]]) -> float:
    """Average forgetting of a T×T accuracy matrix R (R[l][s]: task s after learning task l;
    module docstring): the mean over s < T − 1 of max_{s ≤ l < T−1} R[l][s] − R[T−1][s]."""
    t = len(acc)
    if t < 2:
        return 0.0
    drops = [max(acc[l][s] for l in range(s, t - 1)) - acc[t - 1][s] for s in range(t - 1)]
    return sum(drops) / len(drops)


def _task_data(x: Tensor, y: Tensor, classes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    keep = (y == classes[0]) | (y == classes[1])
    return x[keep], (y[keep] == classes[1]).to(x.dtype)


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, t: int) -> float:
    model.eval()
    out = model(x)[:, t]
    model.train()
    return float(((out > 0).to(y.dtype) == y).to(torch.float64).mean())


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=gen).split(batch_size))


def run_method(
    method: str,
    tasks: Sequence[tuple[Tensor, Tensor]],
    evals: Sequence[tuple[Tensor, Tensor]],
    settings: dict[str, Any],
    seed: int,
    *,
    on_epoch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Learn ``tasks`` (inputs and 0/1 labels per task) in turn with ``method`` and test after
    each on ``evals`` (the same tasks' evaluation data).

    Args:
        method: one of :data:`METHODS`.
        tasks: the training data of each task, in order.
        evals: the evaluation data of each task (validation or test).
        settings: :data:`SETTINGS` of the data set (possibly overridden).
        seed: the initialisation and the minibatch order (the same for every method).
        on_epoch: called after every epoch (progress).

    Returns:
        ``{"acc": R (T×T, NaN above the diagonal), "average": mean of the last row,
        "forgetting": forgetting(R), "seconds": training time}``.
    """
    from blr.continual import FunctionalPrior, KPrior, WeightPrior, diag_laplace, memorable_points

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n_tasks = len(tasks)
    torch.manual_seed(seed)
    model = MultiHeadMLP(tasks[0][0].shape[1], settings["hidden"], n_tasks)
    gen = torch.Generator().manual_seed(seed)
    epochs, bs, delta = int(settings["epochs"]), int(settings["batch_size"]), settings["delta"]
    bce = nn.functional.binary_cross_entropy_with_logits
    acc = [[math.nan] * n_tasks for _ in range(n_tasks)]
    t0 = time.perf_counter()
    if method == "joint":  # every task at once: each example through its own head
        x = torch.cat([x for x, _ in tasks])
        y = torch.cat([y for _, y in tasks])
        head = torch.cat([torch.full((len(y_t),), t) for t, (_, y_t) in enumerate(tasks)])
        opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        for _ in range(epochs):
            for idx in _batches(len(y), bs, gen):
                opt.zero_grad()
                out = model(x[idx]).gather(1, head[idx, None]).squeeze(1)
                bce(out, y[idx]).backward()
                opt.step()
            if on_epoch is not None:
                on_epoch()
        seconds = time.perf_counter() - t0
        final = [_accuracy(model, xe, ye, s) for s, (xe, ye) in enumerate(evals)]
        acc[-1] = final
        return _result(acc, seconds)

    own = settings.get(method, {})
    regs: list[Callable[[], Tensor]] = []  # the regularizers of the past tasks
    fisher: Tensor | None = None
    posterior = None  # VCL: the last posterior
    for t, (x, y) in enumerate(tasks):
        n, head = len(y), _Head(t)
        if method == "VCL":
            from blr.continual import vcl_prior
            from blr.optim import IVON

            prior = None if posterior is None else vcl_prior(posterior, model)
            kw = {k: v for k, v in own.items() if k != "lr"}
            opt = IVON(model.parameters(), lr=own["lr"], ess=n, mc_samples=1, seed=seed + t,
                       prior=prior, fused=False, **kw)  # fmt: skip
        else:
            opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        for _ in range(epochs):
            for idx in _batches(n, bs, gen):
                if method == "VCL":
                    with opt.sampled_params(train=True):
                        opt.zero_grad()
                        bce(model(x[idx])[:, t], y[idx]).backward()
                    opt.step()
                    continue
                opt.zero_grad()
                loss = bce(model(x[idx])[:, t], y[idx])
                if regs:
                    loss = loss + sum(r() for r in regs) / n
                loss.backward()
                opt.step()
            if on_epoch is not None:
                on_epoch()
        # after task t: build what the next tasks regularize with
        if method == "VCL":
            posterior = opt.posterior(model)
        elif method == "EWC":
            q = diag_laplace(model, x, "bce_with_logits", 0.0 + 1e-12, select=head)
            ggn = q.family.to_moments(q.nat)[1]
            fisher = ggn if fisher is None else own.get("gamma", 1.0) * fisher + ggn
            fam = q.family
            q = type(q)(fam, fam.from_moments(_flat(model).detach(), fisher + delta), model)
            regs = [WeightPrior(q, model, weight=own["lam"])]
        elif method in ("FROMP", "K-prior"):
            idx = memorable_points(model, x, "bce_with_logits", settings["memory"], select=head)
            memory = x[idx]
            if method == "FROMP":
                q = diag_laplace(model, x, "bce_with_logits", delta, select=head)
                regs.append(FunctionalPrior(model, memory, q, "bce_with_logits", tau=own["tau"],
                                            select=head))  # fmt: skip
            else:
                regs = [r for r in regs if isinstance(r, KPrior)]
                scale = own["tau"] * n / len(memory)
                regs.append(KPrior(model, memory, "bce_with_logits", 0.0, tau=scale, select=head))
                regs.append(_WeightTerm(model, delta))
        for s in range(t + 1):
            acc[t][s] = _accuracy(model, evals[s][0], evals[s][1], s)
    return _result(acc, time.perf_counter() - t0)


class _WeightTerm:
    """½δ‖θ − θ_old‖² at the parameters the model holds now (K-prior's weight term)."""

    def __init__(self, model: nn.Module, delta: float) -> None:
        self.model, self.delta = model, float(delta)
        self.theta_old = _flat(model).detach().clone()

    def __call__(self) -> Tensor:
        r = _flat(self.model) - self.theta_old
        return 0.5 * self.delta * (r * r).sum()


def _result(acc: list[list[float]], seconds: float) -> dict[str, Any]:
    last = acc[-1]
    return {
        "acc": acc,
        "average": sum(last) / len(last),
        "forgetting": forgetting(acc) if not any(math.isnan(a) for a in acc[0][:1]) else 0.0,
        "seconds": seconds,
    }


def _load(dataset: str, data_dir: str | Path | None, limit: int | None, seed: int = 0):
    from blr.apps import demo

    if dataset == "digits":
        return demo.load_digits(limit=limit, seed=seed)
    if dataset == "fashion-mnist":
        return demo.load_fashion_mnist(data_dir or demo.FASHION_MNIST_DIR, limit=limit, seed=seed)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def run(
    dataset: str = "fashion-mnist",
    *,
    seeds: int = 5,
    methods: Sequence[str] = METHODS,
    evaluate_on: str = "test",
    settings: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    progress: TextIO | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run every method on seeds 0 … ``seeds`` − 1.

    Args:
        dataset: ``"digits"`` or ``"fashion-mnist"``.
        seeds: number of seeds.
        methods: a subset of :data:`METHODS`.
        evaluate_on: ``"test"`` or ``"validation"`` (for choosing settings).
        settings: overrides of :data:`SETTINGS` ``[dataset]`` (a method's dict is merged).
        data_dir: Fashion-MNIST's folder (default the Debian package's).
        limit: keep only the first ``limit`` training examples (quick runs).
        progress: the stream of the progress bar / lines (default stderr).
        quiet: no progress output.

    Returns:
        A dict: ``methods`` (name → ``average`` and ``forgetting`` as ``{"mean", "se",
        "values"}``, ``acc`` the accuracy matrices per seed, ``seconds``), the settings, sizes
        and :data:`PUBLISHED`.
    """
    from blr.apps.demo import _Progress

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds}")
    methods = tuple(methods)
    if not methods or any(m not in METHODS for m in methods) or len(set(methods)) < len(methods):
        raise ValueError(f"methods must be distinct names of {METHODS}, got {list(methods)}")
    if evaluate_on not in ("test", "validation"):
        raise ValueError(f"evaluate_on must be 'test' or 'validation', got {evaluate_on!r}")
    conf = _merged(SETTINGS[dataset], settings or {})
    data = _load(dataset, data_dir, limit)
    classes = task_classes(data.n_classes, 5)
    x_eval, y_eval = (
        (data.x_test, data.y_test) if evaluate_on == "test" else (data.x_val, data.y_val)
    )
    tasks = [_task_data(data.x_train, data.y_train, c) for c in classes]
    evals = [_task_data(x_eval, y_eval, c) for c in classes]
    per_run = {m: conf["epochs"] * (1 if m == "joint" else len(tasks)) for m in methods}
    bar = _Progress(seeds * sum(per_run.values()), progress or sys.stderr, quiet,
                    prog="blr bench continual")  # fmt: skip
    out: dict[str, dict[str, list]] = {m: {"average": [], "forgetting": [], "acc": [],
                                           "seconds": []} for m in methods}  # fmt: skip
    try:
        for seed in range(seeds):
            for m in methods:
                label = f"{m} seed {seed}"
                bar.start(label)
                r = run_method(m, tasks, evals, conf, seed, on_epoch=bar.epoch)
                bar.done(label, [r["seconds"] / per_run[m]] * per_run[m])
                for k in ("average", "forgetting", "acc", "seconds"):
                    out[m][k].append(r[k])
    finally:
        bar.close()
    summary = {}
    for m, v in out.items():
        summary[m] = {k: _summary(v[k]) for k in ("average", "forgetting", "seconds")}
        summary[m]["acc"] = v["acc"]
    return {
        "dataset": dataset,
        "evaluated_on": evaluate_on,
        "tasks": [list(c) for c in classes],
        "sizes": {"train": [len(y) for _, y in tasks], "eval": [len(y) for _, y in evals]},
        "seeds": seeds,
        "settings": _jsonable(conf),
        "methods": summary,
        "published": {
            name: {"accuracy": acc, "source": source}
            for group in PUBLISHED.values()
            for name, (acc, source) in group.items()
        },
    }


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"settings: unknown key {k!r} (known: {sorted(base)})")
        out[k] = {**base[k], **v} if isinstance(base[k], dict) else v
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_jsonable(v) for v in obj]
    return obj


def _summary(values: Sequence[float]) -> dict[str, Any]:
    m, se = mean_se(values)
    return {"mean": m, "se": se, "values": list(values)}


def format_table(result: dict[str, Any]) -> str:
    """The table of :func:`run`'s result: average accuracy and forgetting in %, mean ± s.e.,
    and seconds per run."""
    cells = []
    for m, r in result["methods"].items():
        a, f = r["average"], r["forgetting"]
        cells.append(
            [
                m,
                format_mean_se(100 * a["mean"], 100 * a["se"], 2),
                "—" if m == "joint" else format_mean_se(100 * f["mean"], 100 * f["se"], 2),
                f"{r['seconds']['mean']:.1f}",
            ]
        )
    return text_table(
        ["method", "average accuracy (%)", "forgetting (%)", "s/run"],
        cells,
        align="lrrr",
        sep=" | ",
        full_rule=True,
    )


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Two panels: the average accuracy over the tasks learned so far after each task, and the
    accuracy on each task after the last, mean ± s.e. over seeds per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    n_tasks = len(result["tasks"])
    for m, r in result["methods"].items():
        mats = torch.tensor(r["acc"], dtype=torch.float64)  # (seeds, T, T)
        if m != "joint":
            seen = torch.stack([mats[:, t, : t + 1].mean(-1) for t in range(n_tasks)], -1)
            mean = 100 * seen.mean(0)
            se = 100 * seen.std(0) / math.sqrt(len(mats)) if len(mats) > 1 else 0 * mean
            ax1.errorbar(range(1, n_tasks + 1), mean, yerr=se, marker="o", capsize=3, label=m)
        last = 100 * mats[:, -1, :]
        se = last.std(0) / math.sqrt(len(mats)) if len(mats) > 1 else 0 * last[0]
        ax2.errorbar(range(1, n_tasks + 1), last.mean(0), yerr=se, marker="o", capsize=3,
                     label=m, linestyle="--" if m == "joint" else "-")  # fmt: skip
    ax1.set(xlabel="tasks learned", ylabel="average accuracy on them (%)", xticks=range(1, 6))
    ax2.set(xlabel="task", ylabel="accuracy after the last task (%)", xticks=range(1, 6))
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    name = result["dataset"]
    fig.suptitle(f"split {name}, {result['seeds']} seeds ({result['evaluated_on']} split)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The options of ``blr bench continual``."""
    p = argparse.ArgumentParser(
        prog="blr bench continual",
        description="Continual learning on split digits / split Fashion-MNIST (5 binary tasks, "
        "multi-head MLP): naive fine-tuning, online EWC, VCL with IVON, FROMP, K-prior and "
        "joint training; average accuracy after the last task and forgetting, mean ± s.e. "
        "over seeds.",
    )
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--seeds", type=_positive_int, default=5, help="number of seeds (default 5)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--epochs", type=_positive_int, help="epochs per task (default: SETTINGS)")
    p.add_argument(
        "--hidden", type=_positive_int, nargs="+", help="hidden widths (default: SETTINGS)"
    )
    p.add_argument(
        "--threads", type=_positive_int, default=1,
        help="torch threads (default 1: the networks are small, and two threads on a shared "
        "2-core machine are slower)",
    )  # fmt: skip
    p.add_argument("--limit", type=_positive_int, help="use only this many training examples")
    p.add_argument(
        "--evaluate-on", choices=("test", "validation"), default="test",
        help="score on the test split (default) or the validation split (to choose settings)",
    )  # fmt: skip
    p.add_argument("--data-dir", help="Fashion-MNIST's folder (default: the Debian package's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", help="folder for the plot continual_<dataset>.png (default: none)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``blr bench continual``: run, print the table (or JSON), write the plot."""
    from blr.apps import demo

    args = build_parser().parse_args(argv)
    if args.dataset == "fashion-mnist":
        missing = demo.fashion_mnist_missing(args.data_dir or demo.FASHION_MNIST_DIR)
        if missing is not None:
            print(f"blr bench continual: error: {missing}", file=sys.stderr)
            return 2
    over: dict[str, Any] = {"epochs": args.epochs} if args.epochs else {}
    if args.hidden:
        over["hidden"] = tuple(args.hidden)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = run(args.dataset, seeds=args.seeds, methods=args.methods,
                     evaluate_on=args.evaluate_on, settings=over, data_dir=args.data_dir,
                     limit=args.limit, quiet=args.quiet)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    result["wall_s"], result["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    result["threads"] = args.threads
    if args.out:
        try:
            result["plot"] = str(plot(result, Path(args.out) / f"continual_{args.dataset}.png"))
        except ImportError:
            print("blr bench continual: matplotlib missing, no plot", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"split {args.dataset}: {len(result['tasks'])} tasks {result['tasks']}, "
        f"{args.seeds} seeds, scored on the {args.evaluate_on} split"
    )
    print(format_table(result))
    for name, (acc, source) in PUBLISHED.get(args.dataset, {}).items():
        print(f"published: {name} {acc:.2f}% ({source})")
    print(f"{result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
