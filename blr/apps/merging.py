r"""``blr bench merge``: merging fine-tuned copies of one pretrained MLP, with uncertainty-based
gradient matching (Daheim, Möllenhoff, Ponti, Gurevych & Khan, "Model merging by
uncertainty-based gradient matching", ICLR 2024) against averaging, task arithmetic and Fisher
averaging, and joint training as the reference.

**The protocol.** An MLP is pretrained with :class:`blr.optim.IVON` on a quarter of the training
split (upright images, all classes). Its base posterior N(θ₀, H₀⁻¹) has IVON's mean θ₀ and, by
default (``--prior laplace``), the diagonal Laplace precision H₀ = δ₀N₀ + Σ_i diag(J_iᵀΛ_iJ_i)
over the N₀ pretraining examples (:func:`blr.continual.diag_laplace`; δ₀ chosen by the joint
model's validation NLL, :func:`tune_prior_precision`); ``--prior ivon`` takes IVON's own
``opt.posterior(model)``. T = 5 copies are fine-tuned with IVON on disjoint shards of the rest,
each with ``prior=`` the base posterior, so that each fine-tuning minimises its task loss plus
½(θ − θ₀)ᵀH₀(θ − θ₀) — the setting of the paper's derivation. The tasks are

- ``--split domains`` (default): shifted domains, the shard of task t rotated by a_t ∈ {15°, 30°,
  45°, 60°, 75°} (:func:`rotate`; the angles of the rotated-MNIST domain benchmarks), all
  classes in every task; a task's validation and test examples are the whole validation and
  test splits rotated by a_t;
- ``--split classes``: disjoint class groups {0, 1}, {2, 3}, …, {8, 9}, upright; a task's
  validation and test examples are those of its classes.

Each task's posterior is N(θ_t, H̃_t⁻¹) with H̃_t = H₀ + H_t, where the data part H_t is the
diagonal generalized Gauss–Newton matrix Σ_i diag(J_iᵀΛ_iJ_i) of the task's training inputs at
θ_t (:func:`blr.continual.diag_laplace`; for the softmax likelihood it is the diagonal Fisher).
The merges (:mod:`blr.merge`), every one a point θ̄ scored at its parameters:

.. math::
    \text{averaging: } \bar\theta = \tfrac1T\sum_t\theta_t,\qquad
    \text{task arithmetic: } \bar\theta = \theta_0 + \alpha\sum_t(\theta_t - \theta_0),\\
    \text{Fisher averaging: } \bar\theta = \Big(\sum_t H_t\Big)^{-1}\sum_t H_t\theta_t,\qquad
    \text{gradient matching: } \bar\theta = \theta_0
        + \bar H^{-1}\sum_t\alpha_t\tilde H_t(\theta_t - \theta_0),\
    \bar H = H_0 + \sum_t\alpha_t H_t .

Task arithmetic's α and gradient matching's common α_t = α are each chosen from :data:`ALPHAS`
by the validation NLL of all tasks together (never the test split); gradient matching with
α_t = 1, the paper's joint-posterior setting, is a row of its own. Fisher averaging uses the same
H_t (plus :data:`FISHER_FLOOR`, so that a parameter no task moves gets the mean of the θ_t).
**Joint** fine-tunes one copy on the union of the tasks' data, with the same prior and epochs.

**Why GGN passes and not IVON's own precision.** IVON's posterior precision is N(h + δ) with h
an exponential average of Hessian estimates started at ``hess_init``; in these runs h stays
``hess_init``·β₂ᵗ to within 2 % on every coordinate (the run prints the measured spread), so
gradient matching with it is task arithmetic with a rescaled α, and as a prior it is uniform and
far stronger than the data's curvature (the fine-tunings barely move: ``--prior ivon``). Smaller
``hess_init`` or β₂ let h learn, but IVON then diverges or becomes overconfident on these small
data sets (docs/merging.md). Whatever H₀ is, it is the prior the fine-tunings used, which is what
the formula needs.

Reported per method, mean ± s.e. over seeds: accuracy and NLL on all test examples and on each
task's, with the paired difference of gradient matching against the best other merge in s.e.
units (:func:`blr.apps.demo.verdict`). Run ``blr bench merge`` (``--help`` lists the options).

Example:
    >>> rows = {"gradient matching": {m: {"mean": 0.5, "se": 0.01} for m in METRICS}}
    >>> print(format_table(rows).splitlines()[0])
    method            |        accuracy |             NLL
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from blr.apps.demo import (
    FASHION_MNIST_DIR,
    MIN_VERDICT_SEEDS,
    Split,
    _check_budget,
    _finite,
    _non_negative_int,
    _positive_int,
    _Progress,
    _summary,
    load_digits,
    load_fashion_mnist,
    make_mlp,
    se_units,
    verdict,
)
from blr.apps.report import format_mean_se, text_table

__all__ = [
    "ALPHAS",
    "ANGLES",
    "DEFAULTS",
    "FISHER_FLOOR",
    "MERGES",
    "METHODS",
    "METRICS",
    "PRIOR_GRID",
    "Task",
    "build_parser",
    "fit_ivon",
    "format_table",
    "format_task_table",
    "main",
    "make_tasks",
    "merge_all",
    "plot",
    "rotate",
    "run",
    "run_seed",
    "tune_prior_precision",
]

ANGLES = (15.0, 30.0, 45.0, 60.0, 75.0)
"""The rotation of each task's domain (``--split domains``), in degrees; pretraining is upright."""

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)
"""The grid of task arithmetic's α and of gradient matching's common α_t (chosen on validation)."""

FISHER_FLOOR = 1e-6
"""Added to every H_t in Fisher averaging (Matena & Raffel's floor), so that Σ_t H_t > 0."""

MERGES = (
    "averaging",
    "task arithmetic",
    "Fisher averaging",
    "gradient matching (α=1)",
    "gradient matching",
)
"""The merges, in table order; ``gradient matching`` is the one with α chosen on validation."""

METHODS = ("pretrained", *MERGES, "joint")
"""The table's rows: the base model θ₀, the merges and the joint reference."""

METRICS = ("accuracy", "nll")

DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {
        "pretrain_epochs": 100,
        "epochs": 20,
        "batch_size": 32,
        "hidden": (128, 128),
        "prior_precision": 0.1,
        "ivon": {"lr": 0.5, "hess_init": 1.0, "beta2": 0.999, "weight_decay": 1e-3},
    },
    "fashion-mnist": {
        "pretrain_epochs": 10,
        "epochs": 5,
        "batch_size": 64,
        "hidden": (128, 128),
        "prior_precision": 0.0003,
        "ivon": {"lr": 0.3, "hess_init": 0.1, "beta2": 0.999, "weight_decay": 1e-4},
    },
}
"""Per data set: the epochs of pretraining and of every fine-tuning, the batch size, the hidden
widths, δ₀ of the Laplace base prior (the best of :data:`PRIOR_GRID` by the joint model's
validation NLL, :func:`tune_prior_precision`; on Fashion-MNIST the grid's smallest value, see
docs/merging.md) and IVON's settings (the same for pretraining and fine-tuning; with ``prior=``
the weight decay only rescales the learning rate). The Fashion-MNIST settings are those of
``blr demo`` with β₂ = 0.999; on the digits, ``blr demo``'s (lr 1, ``hess_init`` 10) diverge when
fine-tuning under the base prior, so the learning rate is halved and ``hess_init`` is 1."""


# ------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class Task:
    """One fine-tuning task: its name and its training, validation and test examples."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Square images, flattened to ``(n, side²)``, rotated by ``degrees`` counter-clockwise about
    their centre (bilinear; 0 outside the image, which for standardised inputs is the mean
    pixel).

    Example:
        >>> x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])    # a 2×2 image, the top-left pixel on
        >>> rotate(x, 90.0).view(2, 2)                   # now bottom-left
        tensor([[0., 0.],
                [1., 0.]])
    """
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise ValueError(f"x must hold square images, got {x.shape[1]} pixels")
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    c, s = (round(c), round(s)) if abs(c * s) < 1e-12 else (c, s)  # exact at multiples of 90°
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(len(x), 2, 3)
    img = x.reshape(len(x), 1, side, side)
    grid = nn.functional.affine_grid(theta, list(img.shape), align_corners=False)
    out = nn.functional.grid_sample(img, grid, align_corners=False)
    return out.reshape(len(x), -1).contiguous()


def make_tasks(
    data: Split, split: str, seed: int, pretrain_fraction: float = 0.25, n_tasks: int = 5
) -> tuple[Tensor, Tensor, list[Task]]:
    """The pretraining examples and the tasks of one seed.

    A random ``pretrain_fraction`` of the training split (``seed``) pretrains; the rest is
    shared among the tasks: by class group (``"classes"``: {0, 1}, {2, 3}, …) or in ``n_tasks``
    random shards of equal size, shard t rotated by ``ANGLES[t]`` (``"domains"``).

    Returns:
        ``(x_pretrain, y_pretrain, tasks)``.

    Example:
        >>> from blr.apps.demo import load_digits
        >>> x0, y0, tasks = make_tasks(load_digits(), "domains", seed=0)
        >>> len(y0), [t.name for t in tasks], [len(t.y_train) for t in tasks]
        (269, ['15°', '30°', '45°', '60°', '75°'], [162, 162, 162, 162, 160])
    """
    if split not in ("domains", "classes"):
        raise ValueError(f"split must be 'domains' or 'classes', got {split!r}")
    if not 0.0 < pretrain_fraction < 1.0:
        raise ValueError(f"pretrain_fraction must be in (0, 1), got {pretrain_fraction}")
    n = len(data.y_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n0 = max(1, round(pretrain_fraction * n))
    pre, pool = perm[:n0], perm[n0:]
    tasks = []
    if split == "classes":
        if data.n_classes < 2 * n_tasks:
            raise ValueError(f"{n_tasks} class groups of 2 need {2 * n_tasks} classes")
        for t in range(n_tasks):
            group = torch.tensor([2 * t, 2 * t + 1])
            idx = pool[torch.isin(data.y_train[pool], group)]
            val, test = torch.isin(data.y_val, group), torch.isin(data.y_test, group)
            tasks.append(
                Task(
                    f"{2 * t}/{2 * t + 1}",
                    data.x_train[idx],
                    data.y_train[idx],
                    data.x_val[val],
                    data.y_val[val],
                    data.x_test[test],
                    data.y_test[test],
                )
            )
    else:
        if n_tasks > len(ANGLES):
            raise ValueError(f"at most {len(ANGLES)} rotated domains, got {n_tasks}")
        for t, idx in enumerate(pool.chunk(n_tasks)):
            a = ANGLES[t]
            tasks.append(
                Task(
                    f"{a:g}°",
                    rotate(data.x_train[idx], a),
                    data.y_train[idx],
                    rotate(data.x_val, a),
                    data.y_val,
                    rotate(data.x_test, a),
                    data.y_test,
                )
            )
    if any(len(t.y_train) == 0 for t in tasks):
        raise ValueError("a task has no training examples: use more data (--limit)")
    return data.x_train[pre], data.y_train[pre], tasks


# ---------------------------------------------------------------------------------- training
def fit_ivon(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    settings: dict[str, float],
    seed: int,
    prior: Any = None,
    on_epoch: Callable[[], None] | None = None,
) -> Any:
    """Train ``model`` in place on (x, y) with :class:`blr.optim.IVON` (``ess`` = len(y), one
    draw per step, a cosine learning-rate schedule to 0, minibatch order from ``seed``) and
    return the optimizer, whose ``posterior(model)`` is N(m, (N(h + δ))⁻¹); with ``prior`` (a
    diagonal-Gaussian :class:`blr.ParameterPosterior`) δ is the prior's precision over N.
    The model's weights are the mean m afterwards.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(2, 2)
        >>> x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
        >>> opt = fit_ivon(model, x, y, epochs=2, batch_size=16, settings={"lr": 0.1}, seed=0)
        >>> opt.posterior(model).mean().shape
        torch.Size([6])
    """
    from blr.optim import IVON

    n = len(y)
    opt = IVON(model.parameters(), ess=n, mc_samples=1, seed=seed, prior=prior, **settings)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, epochs * math.ceil(n / batch_size))
    )
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=order).split(batch_size):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch()
    return opt


def _flat(model: nn.Module) -> Tensor:
    return nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def _log_probs(model: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
    nn.utils.vector_to_parameters(theta, model.parameters())
    with torch.no_grad():
        return nn.functional.log_softmax(model(x), -1)


def _scores(log_probs: Tensor, y: Tensor) -> dict[str, float]:
    return {
        "accuracy": float((log_probs.argmax(-1) == y).double().mean()),
        "nll": float(-log_probs.double().gather(1, y[:, None]).mean()),
    }


def merge_all(
    base: Any,
    tasks: Sequence[Any],
    fishers: Sequence[Any],
    score: Callable[[Tensor], float],
    alphas: Sequence[float] = ALPHAS,
) -> tuple[dict[str, Tensor], dict[str, float], dict[str, list[float]]]:
    """Every merge of :data:`MERGES` (:mod:`blr.merge`).

    Args:
        base: the base posterior N(θ₀, H₀⁻¹).
        tasks: the fine-tuned posteriors N(θ_t, (H₀ + H_t)⁻¹).
        fishers: N(θ_t, (H_t + floor)⁻¹), for Fisher averaging.
        score: θ ↦ the validation loss that picks α (lower is better; never the test split).
        alphas: the grid of α.

    Returns:
        ``(merged, chosen, curves)``: merge name → θ̄; ``"task arithmetic"`` and
        ``"gradient matching"`` → the chosen α; the same two → the validation loss per α.

    Example: one weight, H₀ = 1, two tasks at 1 and −1 with H_t = 2 and 1; α is chosen to bring
    θ̄ nearest to 0.3:

        >>> import torch, expfam
        >>> from blr import ParameterPosterior
        >>> fam, model = expfam.DiagGaussian(), torch.nn.Linear(1, 1, bias=False)
        >>> q = lambda m, s: ParameterPosterior(fam, fam.from_moments(torch.tensor([m]),
        ...                                                           torch.tensor([s])), model)
        >>> base, tasks = q(0.0, 1.0), [q(1.0, 3.0), q(-1.0, 2.0)]
        >>> merged, chosen, _ = merge_all(base, tasks, tasks, lambda th: float((th - 0.3).abs()),
        ...                               alphas=(0.5, 1.0))
        >>> {k: round(float(v), 3) for k, v in merged.items()}
        {'averaging': 0.0, 'task arithmetic': 0.0, 'Fisher averaging': 0.2, 'gradient matching (α=1)': 0.25, 'gradient matching': 0.25}
        >>> chosen
        {'task arithmetic': 0.5, 'gradient matching': 1.0}
    """  # noqa: E501
    from blr.merge import average, fisher_average, gradient_matching, task_arithmetic

    merged = {
        "averaging": average(tasks),
        "Fisher averaging": fisher_average(fishers),
        "gradient matching (α=1)": gradient_matching(base, tasks).mean(),
    }
    candidates = {
        "task arithmetic": lambda a: task_arithmetic(base, tasks, a),
        "gradient matching": lambda a: gradient_matching(base, tasks, [a] * len(tasks)).mean(),
    }
    chosen, curves = {}, {}
    for name, make in candidates.items():
        thetas = [make(a) for a in alphas]
        losses = [score(th) for th in thetas]
        best = min(range(len(alphas)), key=lambda i: (losses[i], i))  # ties: the smaller α
        merged[name], chosen[name], curves[name] = thetas[best], float(alphas[best]), losses
    return {m: merged[m] for m in MERGES}, chosen, curves


def _ivon_spread(opt: Any, model: nn.Module, floor: Tensor, n: int, steps: int) -> list[float]:
    """h / (hess_init·β₂ᵗ) at its 1st and 99th percentiles, h = (precision − floor)/N."""
    from expfam import DiagGaussian

    q = opt.posterior(model)
    prec = DiagGaussian().to_moments(q.nat)[1]
    g = opt.param_groups[0]
    h = (prec - floor) / n
    ref = g["hess_init"] * g["beta2"] ** steps
    qs = torch.quantile(h.double() / ref, torch.tensor([0.01, 0.99], dtype=torch.float64))
    return [float(v) for v in qs]


def run_seed(
    data: Split,
    seed: int,
    *,
    split: str = "domains",
    epochs: int,
    pretrain_epochs: int,
    batch_size: int,
    hidden: Sequence[int],
    settings: dict[str, float],
    pretrain_fraction: float = 0.25,
    prior: str = "laplace",
    prior_precision: float = 0.1,
    alphas: Sequence[float] = ALPHAS,
    bar: Any = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Pretrain, fine-tune every task and the joint model, merge, and score one seed.

    Returns:
        A dict: ``scores`` (method → ``{"accuracy", "nll", "tasks": {task: {...}}}`` on the
        test split), ``chosen_alpha``, ``alpha_curves`` (validation NLL per α), ``precisions``
        (IVON's h relative to ``hess_init``·β₂ᵗ, 1st/99th percentile, base and tasks; the
        share of coordinates where H_t > H₀/10), and with ``keep`` the posteriors and the
        merged parameters (``base``, ``tasks``, ``fishers``, ``merged``, ``model``,
        ``task_data``).
    """
    from blr import ParameterPosterior
    from blr.continual import diag_laplace
    from expfam import DiagGaussian

    fam = DiagGaussian()
    x0, y0, tasks = make_tasks(data, split, seed, pretrain_fraction)
    torch.manual_seed(seed)
    model = make_mlp(data.x_train.shape[1], hidden, data.n_classes)
    progress = bar or _Progress(0, sys.stderr, True)
    progress.start(f"seed {seed} pretraining")
    opt0 = fit_ivon(
        model,
        x0,
        y0,
        epochs=pretrain_epochs,
        batch_size=batch_size,
        settings=settings,
        seed=seed,
        on_epoch=progress.epoch,
    )
    if prior == "ivon":
        base = opt0.posterior(model)
    elif prior == "laplace":
        base = diag_laplace(model, x0, "cross_entropy", prior_precision * len(y0))
    else:
        raise ValueError(f"prior must be 'laplace' or 'ivon', got {prior!r}")
    theta0, h0 = fam.to_moments(base.nat)
    delta = settings.get("weight_decay", 0.0)
    steps0 = pretrain_epochs * math.ceil(len(y0) / batch_size)
    spread = {"base": _ivon_spread(opt0, model, torch.tensor(delta * len(y0)), len(y0), steps0)}
    posts, fishers, informed = [], [], []
    for t, task in enumerate(tasks):
        progress.start(f"seed {seed} task {task.name}")
        copy_t = copy.deepcopy(model)
        opt = fit_ivon(
            copy_t,
            task.x_train,
            task.y_train,
            epochs=epochs,
            batch_size=batch_size,
            settings=settings,
            seed=1000 * seed + t + 1,
            prior=base,
            on_epoch=progress.epoch,
        )
        n_t = len(task.y_train)
        steps = epochs * math.ceil(n_t / batch_size)
        spread[task.name] = _ivon_spread(opt, copy_t, h0, n_t, steps)
        fisher = diag_laplace(copy_t, task.x_train, "cross_entropy", FISHER_FLOOR)
        fisher = ParameterPosterior(fam, fisher.nat, model)  # bound to the evaluation model
        theta_t, prec_f = fam.to_moments(fisher.nat)
        h_t = (prec_f - FISHER_FLOOR).clamp_min(0.0)
        posts.append(ParameterPosterior(fam, fam.from_moments(theta_t, h0 + h_t), model))
        fishers.append(fisher)
        informed.append(float((h_t > 0.1 * h0).double().mean()))
    progress.start(f"seed {seed} joint")
    joint = copy.deepcopy(model)
    fit_ivon(
        joint,
        torch.cat([t.x_train for t in tasks]),
        torch.cat([t.y_train for t in tasks]),
        epochs=epochs,
        batch_size=batch_size,
        settings=settings,
        seed=1000 * seed,
        prior=base,
        on_epoch=progress.epoch,
    )
    evaluator = copy.deepcopy(model)
    x_val = torch.cat([t.x_val for t in tasks])
    y_val = torch.cat([t.y_val for t in tasks])

    def val_nll(theta: Tensor) -> float:
        return _scores(_log_probs(evaluator, theta, x_val), y_val)["nll"]

    merged, chosen, curves = merge_all(base, posts, fishers, val_nll, alphas)
    thetas = {"pretrained": theta0, **merged, "joint": _flat(joint)}
    scores = {}
    val = {name: _scores(_log_probs(evaluator, th, x_val), y_val) for name, th in thetas.items()}
    for name, theta in thetas.items():
        per = {t.name: _scores(_log_probs(evaluator, theta, t.x_test), t.y_test) for t in tasks}
        everything = _scores(
            _log_probs(evaluator, theta, torch.cat([t.x_test for t in tasks])),
            torch.cat([t.y_test for t in tasks]),
        )
        scores[name] = {**everything, "tasks": per}
    out: dict[str, Any] = {
        "scores": scores,
        "validation": val,
        "chosen_alpha": chosen,
        "alpha_curves": curves,
        "precisions": {
            "ivon_h_over_init_decay_p01_p99": spread,
            "share_h_t_above_h0_over_10": informed,
        },
        "tasks": [t.name for t in tasks],
        "sizes": {"pretrain": len(y0), **{t.name: len(t.y_train) for t in tasks}},
    }
    if keep:
        out.update(
            base=base, tasks_posteriors=posts, fishers=fishers, merged=thetas, model=evaluator
        )
        out["task_data"] = tasks
    return out


# ------------------------------------------------------------------------------------- run
class _MergeProgress(_Progress):
    """The demo's progress bar; without a terminal one line per seed, named after this bench."""

    def done(self, label: str, times: list[float]) -> None:
        if self.bar is None and not self.quiet:
            print(f"blr bench merge: {label} in {sum(times):.1f} s", file=self.stream, flush=True)


def run(
    data: Split,
    *,
    split: str = "domains",
    seeds: int = 10,
    epochs: int | None = None,
    pretrain_epochs: int | None = None,
    batch_size: int | None = None,
    hidden: Sequence[int] | None = None,
    settings: dict[str, float] | None = None,
    pretrain_fraction: float = 0.25,
    prior: str = "laplace",
    prior_precision: float | None = None,
    alphas: Sequence[float] = ALPHAS,
    progress: TextIO | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run :func:`run_seed` for seeds 0 … ``seeds`` − 1 and summarise.

    Args:
        data: the split (:func:`blr.apps.demo.load_digits` or ``load_fashion_mnist``).
        split: ``"domains"`` (rotated shards) or ``"classes"`` (class groups).
        seeds: number of seeds.
        epochs, pretrain_epochs, batch_size, hidden, settings: the budget, the MLP and IVON's
            settings (default :data:`DEFAULTS` of the data set, the digits' for another name).
        pretrain_fraction: the share of the training split that pretrains.
        alphas: the grid of α.
        progress: the stream of the progress bar / lines (default stderr).
        quiet: no progress output.

    Returns:
        A dict: ``methods`` (method → ``accuracy``/``nll`` → ``{"mean", "se", "values"}``, and
        ``tasks`` → task → the same), ``comparison`` (gradient matching minus the best other
        merge per metric, in s.e. units, with :func:`blr.apps.demo.verdict`; ``target_met``
        when it is better by more than 2 s.e. on both), ``chosen_alpha`` and ``alpha_curves``
        per seed, ``precisions`` and the configuration.
    """
    d = DEFAULTS.get(data.name, DEFAULTS["digits"])
    epochs = d["epochs"] if epochs is None else epochs
    pretrain_epochs = d["pretrain_epochs"] if pretrain_epochs is None else pretrain_epochs
    batch_size = d["batch_size"] if batch_size is None else batch_size
    hidden = tuple(d["hidden"] if hidden is None else hidden)
    settings = {**d["ivon"], **(settings or {})}
    prior_precision = d["prior_precision"] if prior_precision is None else prior_precision
    if prior not in ("laplace", "ivon"):
        raise ValueError(f"prior must be 'laplace' or 'ivon', got {prior!r}")
    if not prior_precision > 0:
        raise ValueError(f"prior_precision must be > 0, got {prior_precision}")
    _check_budget(seeds=seeds, epochs=epochs, pretrain_epochs=pretrain_epochs,
                    batch_size=batch_size)  # fmt: skip
    if not alphas or any(not a >= 0 for a in alphas):
        raise ValueError(f"alphas must be a non-empty list of numbers ≥ 0, got {list(alphas)}")
    per_seed_epochs = pretrain_epochs + 6 * epochs
    bar = _MergeProgress(seeds * per_seed_epochs, progress or sys.stderr, quiet)
    runs = []
    try:
        for seed in range(seeds):
            t0 = time.perf_counter()
            runs.append(
                run_seed(
                    data,
                    seed,
                    split=split,
                    epochs=epochs,
                    pretrain_epochs=pretrain_epochs,
                    batch_size=batch_size,
                    hidden=hidden,
                    settings=settings,
                    pretrain_fraction=pretrain_fraction,
                    prior=prior,
                    prior_precision=prior_precision,
                    alphas=alphas,
                    bar=bar,
                )
            )
            bar.done(f"seed {seed}", [time.perf_counter() - t0])
    finally:
        bar.close()
    names = runs[0]["tasks"]
    methods = {}
    for m in METHODS:
        row: dict[str, Any] = {k: _summary([r["scores"][m][k] for r in runs]) for k in METRICS}
        row["tasks"] = {
            t: {k: _summary([r["scores"][m]["tasks"][t][k] for r in runs]) for k in METRICS}
            for t in names
        }
        methods[m] = row
    comparison = _compare(runs, seeds)
    spread = [r["precisions"]["ivon_h_over_init_decay_p01_p99"] for r in runs]
    informed = [v for r in runs for v in r["precisions"]["share_h_t_above_h0_over_10"]]
    return {
        "dataset": data.name,
        "split": split,
        "tasks": names,
        "sizes": {"validation": len(data.y_val), "test": len(data.y_test), **runs[0]["sizes"]},
        "seeds": seeds,
        "epochs": epochs,
        "pretrain_epochs": pretrain_epochs,
        "batch_size": batch_size,
        "hidden": list(hidden),
        "settings": settings,
        "pretrain_fraction": pretrain_fraction,
        "prior": prior,
        "prior_precision": prior_precision if prior == "laplace" else None,
        "alphas": [float(a) for a in alphas],
        "methods": methods,
        "comparison": comparison,
        "chosen_alpha": {k: [r["chosen_alpha"][k] for r in runs] for k in runs[0]["chosen_alpha"]},
        "alpha_curves": {
            k: [list(c) for c in zip(*[r["alpha_curves"][k] for r in runs])]
            for k in runs[0]["alpha_curves"]
        },
        "precisions": {
            "ivon_h_over_init_decay_p01_p99": {
                "min": min(v[0] for s in spread for v in s.values()),
                "max": max(v[1] for s in spread for v in s.values()),
            },
            "share_h_t_above_h0_over_10": sum(informed) / len(informed),
        },
    }


PRIOR_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""The grid of δ₀ searched by :func:`tune_prior_precision` (``blr bench merge --tune``)."""


def tune_prior_precision(
    data: Split,
    *,
    split: str = "domains",
    seeds: int = 3,
    grid: Sequence[float] = PRIOR_GRID,
    epochs: int | None = None,
    pretrain_epochs: int | None = None,
    batch_size: int | None = None,
    hidden: Sequence[int] | None = None,
    pretrain_fraction: float = 0.25,
    progress: TextIO | None = None,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Choose δ₀, the Laplace base prior's precision per pretraining example, by the
    **validation** NLL of the joint model (the reference; no merge takes part, and the test
    split is not looked at), over seeds 0 … ``seeds`` − 1, with the budget of :func:`run`
    (default :data:`DEFAULTS`). The IVON prior (``--prior ivon``) is scored too, as δ₀ = None.

    Returns:
        ``{"prior_precision", "joint_val_nll", "joint_val_accuracy"}`` per grid point (means
        over seeds), best first.
    """
    d = DEFAULTS.get(data.name, DEFAULTS["digits"])
    _check_budget(seeds=seeds)
    bar = _MergeProgress(0, progress or sys.stderr, quiet)
    rows = []
    for delta0 in [*grid, None]:
        vals = []
        for seed in range(seeds):
            t0 = time.perf_counter()
            r = run_seed(
                data,
                seed,
                split=split,
                epochs=epochs or d["epochs"],
                pretrain_epochs=pretrain_epochs or d["pretrain_epochs"],
                batch_size=batch_size or d["batch_size"],
                hidden=tuple(hidden or d["hidden"]),
                settings=d["ivon"],
                pretrain_fraction=pretrain_fraction,
                prior="ivon" if delta0 is None else "laplace",
                prior_precision=1.0 if delta0 is None else delta0,
            )
            vals.append(r["validation"]["joint"])
            bar.done(f"tune δ₀ = {delta0} seed {seed}", [time.perf_counter() - t0])
        rows.append(
            {
                "prior_precision": delta0,
                "joint_val_nll": sum(v["nll"] for v in vals) / seeds,
                "joint_val_accuracy": sum(v["accuracy"] for v in vals) / seeds,
            }
        )
    return sorted(rows, key=lambda r: r["joint_val_nll"])


def _compare(runs: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    """Gradient matching (α on validation) against the best other merge, per metric: the
    paired difference oriented so that positive favours gradient matching."""
    out: dict[str, Any] = {}
    others = [m for m in MERGES if not m.startswith("gradient matching")]
    sign = {"accuracy": 1.0, "nll": -1.0}
    for k in METRICS:
        means = {m: sum(r["scores"][m][k] for r in runs) / len(runs) for m in others}
        best = max(others, key=lambda m: sign[k] * means[m])
        diff = _summary(
            [sign[k] * (r["scores"]["gradient matching"][k] - r["scores"][best][k]) for r in runs]
        )
        out[k] = {
            "best_other": best,
            "gm_better_by": diff,
            "se_units": se_units(diff),
            "verdict": verdict(diff, seeds),
        }
    out["target_met"] = all(
        not math.isnan(out[k]["se_units"]) and out[k]["se_units"] > 2 for k in METRICS
    )
    return out


# ---------------------------------------------------------------------------------- printing
_HEADERS = {"accuracy": "accuracy", "nll": "NLL"}


def format_table(rows: dict[str, dict[str, Any]], digits: int = 4) -> str:
    """The summary table: one row per method, accuracy and NLL on all test examples as
    ``mean ± s.e.`` (``rows`` as the ``methods`` entry of :func:`run`'s result)."""
    cells = [
        [name, *(format_mean_se(r[k]["mean"], r[k]["se"], digits) for k in METRICS)]
        for name, r in rows.items()
    ]
    head = ["method", *(_HEADERS[k] for k in METRICS)]
    return text_table(head, cells, align="lrr", sep=" | ", full_rule=True)


def format_task_table(rows: dict[str, dict[str, Any]], metric: str, digits: int = 3) -> str:
    """One row per method, one ``mean ± s.e.`` column per task, for ``metric`` (``"accuracy"``
    or ``"nll"``).

    Example:
        >>> cell = lambda m: {"accuracy": {"mean": m, "se": 0.01}}
        >>> print(format_task_table({"task arithmetic": {"tasks": {"15°": cell(0.7),
        ...                                                        "30°": cell(0.6)}}}, "accuracy"))
        accuracy per task |           15° |           30°
        -------------------------------------------------
        task arithmetic   | 0.700 ± 0.010 | 0.600 ± 0.010
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    names = list(next(iter(rows.values()))["tasks"])
    cells = [
        [m, *(format_mean_se(r["tasks"][t][metric]["mean"], r["tasks"][t][metric]["se"], digits)
              for t in names)]
        for m, r in rows.items()
    ]  # fmt: skip
    head = [f"{_HEADERS[metric]} per task", *names]
    return text_table(head, cells, align="l" + "r" * len(names), sep=" | ", full_rule=True)


def _target_line(result: dict[str, Any]) -> str:
    c = result["comparison"]
    parts = []
    for k in METRICS:
        d = c[k]
        z = d["se_units"]
        size = "n/a" if math.isnan(z) else f"{z:+.1f} s.e."
        parts.append(
            f"{_HEADERS[k]}: better than {d['best_other']} by "
            f"{format_mean_se(d['gm_better_by']['mean'], d['gm_better_by']['se'])} ({size})"
        )
    met = "met" if c["target_met"] else "not met"
    n = result["seeds"]
    note = "" if n >= MIN_VERDICT_SEEDS else f" (fewer than {MIN_VERDICT_SEEDS} seeds: rough s.e.)"
    return (
        f"target (gradient matching best of the merges by more than 2 s.e.): {met}{note}. "
        f"Paired over {n} seed{'s' * (n != 1)}, positive favours gradient matching; "
        + "; ".join(parts)
        + "."
    )


def _alpha_line(result: dict[str, Any]) -> str:
    parts = []
    for k, v in result["chosen_alpha"].items():
        parts.append(f"{k} {', '.join(f'{a:g}' for a in v)}")
    return "α chosen on validation, per seed: " + "; ".join(parts)


def _precision_line(result: dict[str, Any]) -> str:
    p = result["precisions"]
    spread = p["ivon_h_over_init_decay_p01_p99"]
    learned = not 0.9 <= spread["min"] <= spread["max"] <= 1.1
    return (
        f"precisions: IVON's h / (hess_init·β₂ᵗ) lies in [{spread['min']:.3f}, "
        f"{spread['max']:.3f}] (1st–99th percentile, base and tasks): "
        f"{'partly learned' if learned else 'not learned (within 10 %)'}; H_t is the GGN of each "
        f"task's data at θ_t, above H₀/10 on {100 * p['share_h_t_above_h0_over_10']:.1f} % of "
        "the coordinates (elsewhere gradient matching is task arithmetic)"
    )


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """The figure: test accuracy and NLL per task for every method (mean ± s.e. over seeds), and
    the validation NLL of task arithmetic and gradient matching against α (mean over seeds).
    Needs matplotlib (ImportError otherwise)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, names = result["methods"], result["tasks"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [2, 2, 1.3]})
    width = 0.8 / len(rows)
    x = np.arange(len(names))
    for ax, k in zip(axes[:2], METRICS):
        for i, (m, r) in enumerate(rows.items()):
            means = [r["tasks"][t][k]["mean"] for t in names]
            errs = [np.nan_to_num(r["tasks"][t][k]["se"]) for t in names]
            ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=errs, label=m,
                   capsize=2)  # fmt: skip
        ax.set_xticks(x, names)
        ax.set_xlabel("task")
        ax.set_ylabel(f"test {_HEADERS[k]}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[1].yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    ax = axes[2]
    for k, curves in result["alpha_curves"].items():
        ax.plot(result["alphas"], [float(np.mean(c)) for c in curves], marker="o", label=k)
    ax.set_xlabel("α (task arithmetic; every α_t of gradient matching)")
    ax.set_ylabel("validation NLL (mean over seeds)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"blr bench merge: {result['dataset']}, {result['split']}, prior {result['prior']}, "
        f"{result['seeds']} seed(s); test accuracy and NLL per task (mean ± s.e.), and the "
        "validation sweep of α"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- CLI


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {value}")
    return value


def _at_least_ten(text: str) -> int:
    value = _positive_int(text)
    if value < 10:
        raise argparse.ArgumentTypeError(f"must be at least 10 (5 tasks and their classes), "
                                         f"got {value}")  # fmt: skip
    return value


DESCRIPTION = (
    "Pretrain an MLP with IVON, fine-tune 5 copies with the base posterior as prior on rotated "
    "domains or class groups of digits / Fashion-MNIST, merge them by averaging, task "
    "arithmetic (α on validation), Fisher averaging and uncertainty-based gradient matching "
    "(Daheim et al., ICLR 2024), and score accuracy and NLL on every task, with joint "
    "fine-tuning as the reference; mean ± s.e. over seeds."
)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``blr bench merge``."""
    parser = argparse.ArgumentParser(prog="blr bench merge", description=DESCRIPTION)
    parser.add_argument(
        "--dataset",
        choices=["digits", "fashion-mnist"],
        default="digits",
        help="digits: sklearn's bundled 8×8 digits (default, about 30 s); fashion-mnist: the "
        "Debian package dataset-fashion-mnist (about 6 min with 10 seeds)",
    )
    parser.add_argument(
        "--split",
        choices=["domains", "classes"],
        default="domains",
        help="domains: each task's shard rotated by 15°, 30°, 45°, 60° or 75° (default); "
        "classes: the class groups {0,1}, …, {8,9}",
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=10,
        help=f"seeds (default 10; verdicts need at least {MIN_VERDICT_SEEDS})",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs of every fine-tuning (default: "
        + ", ".join(f"{k} {v['epochs']}" for k, v in DEFAULTS.items())
        + ")",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=_positive_int,
        default=None,
        help="epochs of pretraining (default: "
        + ", ".join(f"{k} {v['pretrain_epochs']}" for k, v in DEFAULTS.items())
        + ")",
    )
    parser.add_argument(
        "--pretrain-fraction",
        type=_fraction,
        default=0.25,
        help="share of the training split that pretrains (default 0.25)",
    )
    parser.add_argument(
        "--prior",
        choices=["laplace", "ivon"],
        default="laplace",
        help="the base posterior N(θ₀, H₀⁻¹) that every fine-tuning uses as its prior: laplace "
        "(default): H₀ = δ₀N₀ + the GGN of the pretraining data at IVON's mean; ivon: IVON's own "
        "precision N₀(h + δ)",
    )
    parser.add_argument(
        "--prior-precision",
        type=_positive_float,
        default=None,
        metavar="DELTA0",
        help="δ₀, the laplace prior's precision per pretraining example (default: digits 0.1, "
        "fashion-mnist 0.0003; chosen with --tune)",
    )
    parser.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        default=None,
        metavar="WIDTH",
        help="hidden-layer widths (default 128 128)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="default: digits 32, fashion-mnist 64")  # fmt: skip
    parser.add_argument(
        "--limit",
        type=_at_least_ten,
        default=None,
        metavar="N",
        help="use only the first N training examples (quick runs)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the figure DIR/merging.png (needs matplotlib; default: no figure)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    parser.add_argument(
        "--threads",
        type=_non_negative_int,
        default=1,
        help="torch intra-op threads (default 1; 0: torch's default)",
    )
    parser.add_argument(
        "--data-dir",
        default=str(FASHION_MNIST_DIR),
        metavar="DIR",
        help=f"folder of the Fashion-MNIST IDX files (default {FASHION_MNIST_DIR})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="instead: the search that chose δ₀ (the joint model's validation NLL for each δ₀ "
        "of " + ", ".join(map(str, PRIOR_GRID)) + " and for the IVON prior; --seeds of them)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``blr bench merge``: parse the options, run, print the tables (or JSON) and write the
    figure; returns the exit status (2 for bad options, 1 when the data set is missing or a
    run diverges). Torch's thread count is restored on return."""
    args = build_parser().parse_args(argv)
    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(before)


def _main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        if args.dataset == "digits":
            data = load_digits(limit=args.limit)
        else:
            data = load_fashion_mnist(args.data_dir, limit=args.limit)
    except (FileNotFoundError, ImportError) as exc:
        print(f"blr bench merge: error: {exc}", file=sys.stderr)
        return 1
    if args.tune:
        return _print_tune(args, data)
    try:
        result = run(
            data,
            split=args.split,
            seeds=args.seeds,
            epochs=args.epochs,
            pretrain_epochs=args.pretrain_epochs,
            batch_size=args.batch_size,
            hidden=args.hidden,
            pretrain_fraction=args.pretrain_fraction,
            prior=args.prior,
            prior_precision=args.prior_precision,
            quiet=args.quiet,
        )
    except (ArithmeticError, ValueError) as exc:  # a diverged run, a task without examples
        print(f"blr bench merge: error: {exc}", file=sys.stderr)
        return 1
    png = None
    if args.out is not None:
        try:
            png = str(plot(result, Path(args.out) / "merging.png"))
        except ImportError as exc:
            print(f"blr bench merge: figure skipped: {exc}", file=sys.stderr)
    result["png"] = png
    result["threads"] = torch.get_num_threads()
    result["wall_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(_finite(result), indent=1))
        return 0
    sizes = result["sizes"]
    shards = ", ".join(f"{t} {sizes[t]}" for t in result["tasks"])
    print(
        f"blr bench merge: {data.name}, split {args.split} (pretraining {sizes['pretrain']}; "
        f"tasks {shards}), MLP {'-'.join(map(str, [data.x_train.shape[1], *result['hidden']]))}"
        f"-{data.n_classes}, IVON {result['pretrain_epochs']} + {result['epochs']} epochs, "
        f"batch {result['batch_size']}, {args.seeds} seed(s), {result['threads']} thread(s); "
        "test split, mean ± s.e. over seeds"
    )
    print(format_table(result["methods"]))
    print()
    print(format_task_table(result["methods"], "accuracy"))
    print()
    print(format_task_table(result["methods"], "nll"))
    print()
    print(_target_line(result))
    print(_alpha_line(result))
    print(_precision_line(result))
    if png is not None:
        print(f"figure: {png}")
    print(f"wall time {result['wall_s']:.1f} s")
    return 0


def _print_tune(args: argparse.Namespace, data: Split) -> int:
    rows = tune_prior_precision(
        data,
        split=args.split,
        seeds=args.seeds,
        epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs,
        batch_size=args.batch_size,
        hidden=args.hidden,
        pretrain_fraction=args.pretrain_fraction,
        quiet=args.quiet,
    )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"blr bench merge --tune: {data.name}, split {args.split}, {args.seeds} seed(s); the "
        "joint model's validation NLL and accuracy per prior, best first"
    )
    cells = [
        [
            "IVON" if r["prior_precision"] is None else f"laplace δ₀ = {r['prior_precision']:g}",
            f"{r['joint_val_nll']:.4f}",
            f"{r['joint_val_accuracy']:.4f}",
        ]
        for r in rows
    ]
    print(text_table(["prior", "val NLL", "val accuracy"], cells, align="lrr"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
