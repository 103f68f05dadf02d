r"""``blr demo``: IVON against AdamW and SGD on a real image-classification data set.

An MLP (ReLU hidden layers) is trained on sklearn's bundled ``digits`` (1797 8×8 images, 10
classes; or the full Fashion-MNIST from the Debian package ``dataset-fashion-mnist``) with three
optimizers for the same budget — the same epochs, batch size, minibatch order, initialisation and
cosine learning-rate schedule — over several seeds, and the test set is scored:

- **IVON** (:class:`blr.optim.IVON`, one posterior draw per step, ``ess`` = the training-set size)
  predicts by Bayesian model averaging over S posterior draws,
  p(y | x) ≈ (1/S)Σ_s p(y | x, θ_s), θ_s ~ q = N(m, diag(1/(N(h + δ)))), and also at the mean m;
- **AdamW** and **SGD** (with momentum) are point estimates: p(y | x) = p(y | x, θ).

Reported per method, mean ± standard error over seeds (s.e. = sd/√n_seeds): accuracy, NLL, ECE
(15 equal-width bins), Brier score and training seconds per epoch (see :mod:`blr.metrics`), with a
reliability diagram of the test predictions pooled over seeds. The calibration question — is IVON
better calibrated than AdamW, as Shen et al. (ICML 2024) report on ImageNet (ResNet-50 ECE 0.022
vs 0.066)? — is answered by the paired difference ECE(AdamW) − ECE(IVON) per seed (same
initialisation and minibatches), mean ± s.e. and in s.e. units, with a verdict (:func:`verdict`:
holds or reversed at 2 s.e. or more, else not resolved) only from :data:`MIN_VERDICT_SEEDS` seeds
up (``--seeds 20``; the default 5 seeds print the numbers and "too few seeds for a verdict").

Inputs are standardised with the training split's per-pixel mean and standard deviation. The
digits are split (stratified, fixed seed 0) into 60 % training, 20 % validation, 20 % test;
Fashion-MNIST's 60 000 training images into 50 000 training and 10 000 validation (fixed seed 0),
with its own 10 000 test images. The hyperparameters (:data:`SETTINGS`, one set per data set)
were chosen by a grid search on the validation split (:func:`tune`, ``blr demo --tune``), never
on the test split; see ``docs/demo.md``.

Run ``blr demo`` (or ``python -m blr.apps.demo``); ``--help`` lists the options.

Example:
    >>> print(verdict({"mean": 0.0025, "se": 0.0010, "values": [0.0] * 20}))  # 2.5 s.e., 20 seeds
    holds
    >>> rows = {"IVON": {m: {"mean": 0.5, "se": 0.01} for m in METRICS}}
    >>> print(format_table(rows).splitlines()[0])
    method |        accuracy |             NLL |             ECE |           Brier |         s/epoch
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor, nn

from blr.apps.report import format_mean_se, mean_se, text_table

__all__ = [
    "DEFAULT_EPOCHS",
    "DESCRIPTION",
    "FASHION_MNIST_DIR",
    "GRID",
    "METHODS",
    "METRICS",
    "MIN_VERDICT_SEEDS",
    "SETTINGS",
    "Split",
    "build_parser",
    "fashion_mnist_missing",
    "format_table",
    "hessian_spread",
    "load_digits",
    "load_fashion_mnist",
    "main",
    "make_mlp",
    "read_idx",
    "run",
    "run_cli",
    "se_units",
    "train",
    "tune",
    "verdict",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` puts the gzipped IDX files."""

METHODS = ("IVON", "AdamW", "SGD")
"""The optimizers compared by default (table rows: IVON's Bayesian model average, IVON at the
mean, AdamW, SGD)."""

EXTRA_METHODS = ("SAM", "bSAM", "IVON-h")
"""Optimizers added with ``--methods``: :class:`blr.optim.BSAM` (bSAM's Bayesian model average
and its mean, and SAM, its point-estimate limit; each takes two gradients per step), and
``IVON-h``, IVON under the rule of its docstring that makes h learned within the budget (β₂
from the number of steps, a small h₀, ``ess`` = c·N with c chosen on validation)."""

_SAMPLING = ("IVON", "IVON-h")  # one posterior draw per step, one gradient
_POSTERIOR_ROWS = ("IVON", "bSAM", "IVON-h")  # rows: the model average and the mean

ALL_METHODS = METHODS + EXTRA_METHODS

DEFAULT_EPOCHS = {"digits": 100, "fashion-mnist": 10}
"""The budget of each data set when ``--epochs`` is not given."""

# IVON-h on the digits, the best of GRID["digits"]["IVON-h"]; Fashion-MNIST reuses it untuned
_IVON_H = {
    "lr": 0.3,
    "hess_init": 0.01,
    "weight_decay": 3e-3,
    "ess_scale": 1000.0,
    "remaining": 0.01,
}

SETTINGS: dict[str, dict[str, dict[str, float]]] = {
    # the best of GRID["digits"] by validation NLL (`blr demo --tune`, docs/demo.md)
    "digits": {
        "IVON": {"lr": 1.0, "hess_init": 10.0, "beta2": 0.999, "weight_decay": 1e-3},
        "AdamW": {"lr": 0.03, "weight_decay": 1.0},
        "SGD": {"lr": 0.1, "momentum": 0.9, "weight_decay": 3e-3},
        # SAM and bSAM (`--methods`): the best of GRID["digits"] (`blr demo --tune --methods SAM
        # bSAM`), at the grid's largest lr (and s_init): docs/demo.md
        "SAM": {"lr": 1.0, "rho": 0.05, "beta1": 0.9, "weight_decay": 3e-3},
        "bSAM": {
            "lr": 1.0,
            "rho": 0.05,
            "beta1": 0.9,
            "beta2": 0.999,
            "weight_decay": 3e-3,
            "s_init": 10.0,
        },
        # IVON-h (`--methods`): the best of GRID["digits"]["IVON-h"] by validation NLL
        # (`blr demo --tune --methods IVON-h`, docs/demo.md)
        "IVON-h": dict(_IVON_H),
    },
    # the best of GRID["fashion-mnist"] (`blr demo --dataset fashion-mnist --tune --seeds 1`)
    "fashion-mnist": {
        "IVON": {"lr": 0.3, "hess_init": 0.1, "beta2": 0.9999, "weight_decay": 1e-4},
        "AdamW": {"lr": 3e-3, "weight_decay": 0.1},
        "SGD": {"lr": 0.03, "momentum": 0.9, "weight_decay": 5e-4},
        # SAM and bSAM: not tuned on Fashion-MNIST yet (SGD's learning rate and decay)
        "SAM": {"lr": 0.03, "rho": 0.05, "beta1": 0.9, "weight_decay": 5e-4},
        "bSAM": {
            "lr": 0.03,
            "rho": 0.05,
            "beta1": 0.9,
            "beta2": 0.999,
            "weight_decay": 5e-4,
            "s_init": 1.0,
        },
        # IVON-h: not tuned on Fashion-MNIST yet (the digits' settings)
        "IVON-h": dict(_IVON_H),
    },
}
"""Optimizer hyperparameters per data set and method (the learning rate is the peak of the
cosine schedule), chosen on the validation split. IVON also gets ``ess`` = the training-set size
and one Monte Carlo draw per step (``mc_samples=1``, the cost of one gradient, like AdamW and
SGD). IVON-h's ``ess_scale`` is c in ``ess`` = c·N and ``remaining`` is ρ in
β₂ = ρ^{1/T} for the budget's T steps (:func:`blr.optim.beta2_for_steps`)."""

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# ------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Split:
    """A data set split into training, validation and test inputs (float32, standardised with
    the training statistics) and integer labels.

    Attributes:
        name: the data set's name.
        x_train, y_train, x_val, y_val, x_test, y_test: inputs ``(n, d)`` and labels ``(n,)``.
        n_classes: K.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        return {
            "train": len(self.y_train),
            "validation": len(self.y_val),
            "test": len(self.y_test),
        }


def _standardised(name: str, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Split:
    mean = x["train"].mean(0)
    std = x["train"].std(0)
    std[std == 0] = 1.0  # constant pixels (the digits' corners) stay 0 after centring
    t = {k: torch.from_numpy(((v - mean) / std).astype(np.float32)) for k, v in x.items()}
    lab = {k: torch.from_numpy(v.astype(np.int64)) for k, v in y.items()}
    n_classes = int(max(int(v.max()) for v in y.values())) + 1
    return Split(
        name,
        t["train"],
        lab["train"],
        t["val"],
        lab["val"],
        t["test"],
        lab["test"],
        n_classes,
    )


def _limited(x: np.ndarray, y: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` training examples (the split is already shuffled)."""
    if limit is None or limit >= len(y):
        return x, y
    return x[:limit], y[:limit]


def load_digits(*, limit: int | None = None, seed: int = 0) -> Split:
    """sklearn's bundled digits (offline), split 60/20/20 (stratified, ``seed``) and standardised;
    ``limit`` keeps only the first ``limit`` training examples (statistics from those)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "blr demo needs scikit-learn for the digits: "
            "pip install 'bayesian-learning-rule[examples]'"
        ) from exc
    data = sk_digits()
    x, y = data.data.astype(np.float64), data.target
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=seed
    )
    x_train, y_train = _limited(x_train, y_train, limit)
    return _standardised(
        "digits",
        {"train": x_train, "val": x_val, "test": x_test},
        {"train": y_train, "val": y_val, "test": y_test},
    )


def read_idx(path: str | Path | Any) -> np.ndarray:
    """Read an IDX file (gzipped when the name ends in ``.gz``, or an open binary file): the
    format of MNIST and Fashion-MNIST — magic ``0 0 dtype ndim``, ``ndim`` big-endian uint32
    sizes, then the data.

    Example:
        >>> import io, struct
        >>> raw = struct.pack(">BBBBII", 0, 0, 0x08, 2, 2, 3) + bytes(range(6))
        >>> read_idx(io.BytesIO(raw)).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    if hasattr(path, "read"):
        raw = path.read()
    else:
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    data = np.frombuffer(raw[header:], dtype=dtypes[raw[2]])
    if data.size != math.prod(shape):
        raise ValueError(
            f"{path}: the header says shape {shape} but the file holds {data.size} values"
        )
    return data.reshape(shape)


def fashion_mnist_missing(data_dir: str | Path) -> str | None:
    """None when ``data_dir`` holds the four Fashion-MNIST files, else the message saying what is
    missing and how to install it."""
    data_dir = Path(data_dir)
    missing = [f for pair in _FASHION_FILES.values() for f in pair if not (data_dir / f).is_file()]
    if not missing:
        return None
    return (
        f"Fashion-MNIST not found: {data_dir} lacks {', '.join(missing)}. Install the Debian "
        "package with `apt-get install dataset-fashion-mnist` (it puts the files in "
        f"{FASHION_MNIST_DIR}), or point --data-dir at a folder holding them. Nothing is "
        "downloaded."
    )


def load_fashion_mnist(
    data_dir: str | Path = FASHION_MNIST_DIR, *, limit: int | None = None, seed: int = 0
) -> Split:
    """Fashion-MNIST from its gzipped IDX files in ``data_dir`` (no download): the training images
    split into all but 10 000 for training and 10 000 for validation (``seed``), the official
    test images; pixels flattened and standardised. FileNotFoundError when files are missing."""
    message = fashion_mnist_missing(data_dir)
    if message is not None:
        raise FileNotFoundError(message)
    data_dir = Path(data_dir)
    arrays = {
        k: (read_idx(data_dir / a), read_idx(data_dir / b)) for k, (a, b) in _FASHION_FILES.items()
    }
    (x_all, y_all), (x_test, y_test) = arrays["train"], arrays["test"]
    if len(x_all) != len(y_all) or len(x_test) != len(y_test):
        raise ValueError(f"{data_dir}: images and labels differ in number")
    n_val = min(10_000, len(y_all) // 6)
    perm = np.random.default_rng(seed).permutation(len(y_all))
    x_all = x_all.reshape(len(x_all), -1).astype(np.float64)[perm]
    y_all = y_all[perm]
    x_train, y_train = _limited(x_all[n_val:], y_all[n_val:], limit)
    return _standardised(
        "fashion-mnist",
        {
            "train": x_train,
            "val": x_all[:n_val],
            "test": x_test.reshape(len(x_test), -1).astype(np.float64),
        },
        {"train": y_train, "val": y_all[:n_val], "test": y_test},
    )


# ------------------------------------------------------------------------------- training
def _settings(data: Split) -> dict[str, dict[str, float]]:
    return SETTINGS.get(data.name, SETTINGS["digits"])


def make_mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    """Linear → ReLU for each width in ``hidden``, then a linear layer to ``n_out`` logits."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _optimizer(
    method: str,
    model: nn.Module,
    n_train: int,
    settings: dict[str, float],
    seed: int,
    steps: int,
) -> torch.optim.Optimizer:
    if method == "IVON":
        from blr.optim import IVON

        return IVON(model.parameters(), ess=n_train, mc_samples=1, seed=seed, **settings)
    if method == "IVON-h":  # the docstring's rule: β₂ from the steps, ess = c·N
        from blr.optim import IVON, beta2_for_steps

        rest = dict(settings)
        ess = rest.pop("ess_scale") * n_train
        beta2 = beta2_for_steps(steps, rest.pop("remaining"))
        return IVON(model.parameters(), ess=ess, beta2=beta2, mc_samples=1, seed=seed, **rest)
    if method == "AdamW":
        return torch.optim.AdamW(model.parameters(), **settings)
    if method == "SGD":
        return torch.optim.SGD(model.parameters(), **settings)
    if method in EXTRA_METHODS:
        from blr.optim import BSAM

        if method == "SAM":  # the point-estimate limit: θ = m, s frozen at 1
            settings = {**settings, "beta2": 1.0, "s_init": 1.0}
            return BSAM(model.parameters(), ess=n_train, seed=seed, sample=False, **settings)
        return BSAM(model.parameters(), ess=n_train, seed=seed, **settings)
    raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")


def train(
    method: str,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    hidden: Sequence[int],
    seed: int,
    settings: dict[str, float] | None = None,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer, list[float]]:
    """Train the MLP on ``data``'s training split with ``method`` for ``epochs`` epochs.

    The initialisation and the minibatch order depend on ``seed`` alone (identical for every
    method); the learning rate follows a cosine schedule from ``settings["lr"]`` to 0 over all
    steps. IVON's gradient is taken at one posterior draw per step
    (``with opt.sampled_params(train=True): loss.backward()``).

    Args:
        method: ``"IVON"``, ``"AdamW"`` or ``"SGD"``.
        data: the split.
        epochs: passes over the training split.
        batch_size: examples per step (the last batch of an epoch may be smaller).
        hidden: widths of the hidden layers.
        seed: the run's seed.
        settings: the optimizer's hyperparameters (default ``SETTINGS[data.name][method]``,
            the digits' for a data set without an entry).
        on_epoch: called after every epoch (progress).

    Returns:
        The model, the optimizer (IVON's is the posterior) and the seconds of each epoch.
    """
    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")
    settings = dict(_settings(data)[method] if settings is None else settings)
    torch.manual_seed(seed)
    model = make_mlp(data.x_train.shape[1], hidden, data.n_classes)
    n = len(data.y_train)
    steps = epochs * math.ceil(n / batch_size)
    opt = _optimizer(method, model, n, settings, seed, steps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    order = torch.Generator().manual_seed(seed)
    sampling = method in _SAMPLING
    loss_fn = nn.functional.cross_entropy
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in torch.randperm(n, generator=order).split(batch_size):
            xb, yb = data.x_train[idx], data.y_train[idx]
            if method in EXTRA_METHODS:  # two gradients: at a draw and at the adversarial point

                def closure(xb: Tensor = xb, yb: Tensor = yb) -> Tensor:
                    opt.zero_grad()
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    return loss

                opt.step(closure)
                sched.step()
                continue
            ctx = opt.sampled_params(train=True) if sampling else contextlib.nullcontext()
            with ctx:
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch()
    return model, opt, times


# --------------------------------------------------------------------------------- summary
METRICS = ("accuracy", "nll", "ece", "brier", "s_per_epoch")
_HEADERS = ("accuracy", "NLL", "ECE", "Brier", "s/epoch")


def format_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The table: one row per method, one ``mean ± s.e.`` column per metric (``rows`` as in the
    ``methods`` entry of :func:`run`'s result; ``n/a`` for the s.e. of a single seed)."""
    cells = [
        [k, *(format_mean_se(r[m]["mean"], r[m]["se"]) for m in METRICS)] for k, r in rows.items()
    ]
    align = "l" + "r" * len(_HEADERS)
    return text_table(["method", *_HEADERS], cells, align=align, sep=" | ", full_rule=True)


# ---------------------------------------------------------------------------------- progress
class _Progress:
    """A tqdm bar over all epochs of all runs on a terminal; otherwise (tqdm missing, output
    not a TTY) one plain line per finished run, or nothing when ``quiet``."""

    def __init__(self, total: int, stream: TextIO, quiet: bool, prog: str = "blr demo") -> None:
        self.stream, self.quiet, self.bar, self.prog = stream, quiet, None, prog
        if quiet or not getattr(stream, "isatty", lambda: False)():
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, unit="epoch", file=stream, dynamic_ncols=True, leave=False)

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label)

    def epoch(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def done(self, label: str, times: list[float]) -> None:
        if self.bar is None and not self.quiet:
            total = sum(times)
            print(
                f"{self.prog}: {label}: {len(times)} epochs in {total:.1f} s "
                f"({total / len(times):.4f} s/epoch)",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------- run
def _eval_split(data: Split, evaluate_on: str) -> tuple[Tensor, Tensor]:
    if evaluate_on == "test":
        return data.x_test, data.y_test
    if evaluate_on == "validation":
        return data.x_val, data.y_val
    raise ValueError(f"evaluate_on must be 'test' or 'validation', got {evaluate_on!r}")


def _predictions(
    method: str, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, samples: int
) -> dict[str, Any]:
    """Row name → predictive: IVON and bSAM averaged over ``samples`` draws and at the mean;
    the point estimates (AdamW, SGD, SAM) at their parameters."""
    from blr.predict import predict_classification

    model.eval()
    if method not in _POSTERIOR_ROWS:
        return {method: predict_classification(model, None, x, n_samples=0, batch_size=4096)}
    return {
        f"{method} ({samples} draws)": predict_classification(
            model, opt, x, n_samples=samples, batch_size=4096
        ),
        f"{method} (mean)": predict_classification(model, opt, x, n_samples=0, batch_size=4096),
    }


def _scores(pred: Any, y: Tensor) -> dict[str, float]:
    from blr import metrics

    p = pred.probs.double()
    return {
        "accuracy": metrics.accuracy(p, y),
        # from the log-probabilities: exact where a probability underflows
        "nll": float(-pred.log_probs.double().gather(1, y[:, None]).mean()),
        "ece": metrics.ece(p, y),
        "brier": metrics.brier(p, y),
    }


def _summary(values: Sequence[float]) -> dict[str, Any]:
    m, se = mean_se(values)
    return {"mean": m, "se": se, "values": list(values)}


def hessian_spread(opt: torch.optim.Optimizer, within: float = 0.01) -> dict[str, Any]:
    r"""Where IVON's h lies after training against h₀β₂ᵗ, the value it would hold had no
    estimate ĥ moved it (h = h₀β₂ᵗ + (1 − β₂)Σ β₂ᵗ⁻ˢ ĥ_s + the correction).

    Args:
        opt: a trained :class:`blr.optim.IVON` (one value of hess_init, β₂ and step count
            over its groups).
        within: the relative distance from h₀β₂ᵗ under which h counts as set by h₀.

    Returns:
        ``{"p01", "p50", "p99"}``: the 1st, 50th and 99th percentiles of h over all weights;
        ``"hess_init_decayed"``: h₀β₂ᵗ; ``"learned"``: False when the 1st to 99th
        percentiles all lie within ``within`` of h₀β₂ᵗ.

    Example:
        >>> import torch
        >>> from blr.optim import IVON
        >>> net = torch.nn.Linear(4, 1)
        >>> opt = IVON(net.parameters(), lr=0.1, ess=100, hess_init=1.0, beta2=0.5, seed=0)
        >>> for _ in range(20):
        ...     with opt.sampled_params(train=True):
        ...         opt.zero_grad()
        ...         (10 * net(torch.randn(32, 4)) ** 2).mean().backward()
        ...     opt.step()
        >>> spread = hessian_spread(opt)
        >>> spread["learned"], spread["hess_init_decayed"] < 1e-5
        (True, True)
    """
    sd = opt.state_dict()
    keys = {(g["hess_init"], g["beta2"], g["step"]) for g in sd["param_groups"]}
    if len(keys) != 1:
        raise ValueError(f"opt must share hess_init, beta2 and step over its groups, got {keys}")
    ((h0, beta2, step),) = keys
    ref = float(h0) * float(beta2) ** int(step)
    h = torch.cat([st["hess"].double().reshape(-1) for st in sd["state"].values()])
    p01, p50, p99 = torch.quantile(h, torch.tensor([0.01, 0.5, 0.99], dtype=h.dtype)).tolist()
    near = all(abs(v / ref - 1.0) <= within for v in (p01, p99)) if ref > 0 else False
    return {"p01": p01, "p50": p50, "p99": p99, "hess_init_decayed": ref, "learned": not near}


MIN_VERDICT_SEEDS = 10
"""The fewest seeds for a calibration verdict; with fewer the demo prints the numbers and no
verdict. The 2-s.e. rule stands for a two-sided 5 % test only when the s.e. rests on enough seeds:
the t quantile is 2.78 with 5 seeds, 2.26 with 10 and 2.09 with 20."""


def verdict(diff: dict[str, Any], seeds: int | None = None) -> str:
    """The calibration verdict from the paired differences ECE(AdamW) − ECE(IVON) over ``seeds``
    seeds (default: the number of ``diff["values"]``): ``"too few seeds"`` below
    :data:`MIN_VERDICT_SEEDS`; else ``"holds"`` when the mean is above zero by at least two
    standard errors, ``"reversed"`` when below zero by at least two, and ``"not resolved"``
    within two.

    Example:
        >>> verdict({"mean": 0.01, "se": 0.002}, seeds=20), verdict({"mean": 0.01, "se": 0.01}, 20)
        ('holds', 'not resolved')
        >>> verdict({"mean": 0.01, "se": 0.002}, seeds=5)
        'too few seeds'
    """
    n = len(diff["values"]) if seeds is None else seeds
    mean, se = diff["mean"], diff["se"]
    if n < MIN_VERDICT_SEEDS or math.isnan(se):
        return "too few seeds"
    if mean >= 2 * se and mean > 0:
        return "holds"
    if mean <= -2 * se and mean < 0:
        return "reversed"
    return "not resolved"


def se_units(diff: dict[str, Any]) -> float:
    """The paired mean difference in standard errors, mean/s.e. (NaN for one seed; ±inf, or 0
    for a zero mean, when the s.e. is 0).

    Example:
        >>> round(se_units({"mean": 0.0025, "se": 0.0013}), 4)
        1.9231
    """
    mean, se = diff["mean"], diff["se"]
    if math.isnan(se):
        return math.nan
    if se == 0:
        return math.copysign(math.inf, mean) if mean else 0.0
    return mean / se


def _check_budget(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def run(
    data: Split,
    *,
    epochs: int,
    seeds: int = 5,
    hidden: Sequence[int] = (128, 128),
    batch_size: int = 64,
    samples: int = 32,
    evaluate_on: str = "test",
    settings: dict[str, dict[str, float]] | None = None,
    progress: TextIO | None = None,
    quiet: bool = False,
    methods: Sequence[str] = METHODS,
) -> dict[str, Any]:
    """Train every method on seeds 0 … ``seeds`` − 1 and score it on the test (or validation)
    split.

    Args:
        data: the split.
        epochs, batch_size, hidden: the budget and the MLP (as in :func:`train`).
        seeds: number of seeds.
        samples: S, IVON's posterior draws per prediction.
        evaluate_on: ``"test"`` or ``"validation"``.
        settings: per-method hyperparameters overriding ``SETTINGS[data.name]`` (merged per
            method).
        progress: the stream of the progress bar / lines (default stderr).
        quiet: no progress output.
        methods: the optimizers, IVON and AdamW among them (the calibration claim compares
            them), in :data:`ALL_METHODS`.

    Returns:
        A dict: ``methods`` (row name → metric → ``{"mean", "se", "values"}``), ``calibration``
        (the paired ECE(AdamW) − ECE(IVON) per seed and its :func:`verdict`), ``curves`` (row
        name → the predictions pooled over seeds as (probs, labels), for the reliability
        diagram) and the configuration.
    """
    x_eval, y_eval = _eval_split(data, evaluate_on)
    _check_budget(epochs=epochs, seeds=seeds, batch_size=batch_size, samples=samples)
    methods = tuple(methods)
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or "IVON" not in methods or "AdamW" not in methods or len(set(methods)) < len(methods):
        raise ValueError(
            f"methods must be distinct names of {ALL_METHODS} including IVON and AdamW, got "
            f"{list(methods)}"
        )
    merged = {m: {**_settings(data)[m], **((settings or {}).get(m, {}))} for m in methods}
    bma = f"IVON ({samples} draws)"
    rows = []
    for m in methods:
        rows += [f"{m} ({samples} draws)", f"{m} (mean)"] if m in _POSTERIOR_ROWS else [m]
    values: dict[str, dict[str, list[float]]] = {r: {m: [] for m in METRICS} for r in rows}
    probs: dict[str, list[Tensor]] = {r: [] for r in rows}
    spreads: dict[str, list[dict[str, Any]]] = {m: [] for m in methods if m in _SAMPLING}
    bar = _Progress(len(methods) * seeds * epochs, progress or sys.stderr, quiet)
    try:
        for seed in range(seeds):
            for method in methods:
                label = f"{method} seed {seed}"
                bar.start(label)
                try:
                    model, opt, times = train(
                        method,
                        data,
                        epochs=epochs,
                        batch_size=batch_size,
                        hidden=hidden,
                        seed=seed,
                        settings=merged[method],
                        on_epoch=bar.epoch,
                    )
                except ArithmeticError as exc:
                    raise FloatingPointError(
                        f"{label} diverged with {merged[method]} ({exc}); pass smaller learning "
                        "rates in settings (the defaults were tuned for this data set's "
                        "default budget)"
                    ) from exc
                bar.done(label, times)
                if method in spreads:
                    spreads[method].append(hessian_spread(opt))
                for row, pred in _predictions(method, model, opt, x_eval, samples).items():
                    for k, v in _scores(pred, y_eval).items():
                        values[row][k].append(v)
                    values[row]["s_per_epoch"].append(sum(times) / len(times))
                    probs[row].append(pred.probs.double())
    finally:
        bar.close()
    diff = _summary([a - b for a, b in zip(values["AdamW"]["ece"], values[bma]["ece"])])
    return {
        "dataset": data.name,
        "sizes": data.sizes(),
        "evaluated_on": evaluate_on,
        "epochs": epochs,
        "batch_size": batch_size,
        "hidden": list(hidden),
        "seeds": seeds,
        "samples": samples,
        "settings": merged,
        "methods": {r: {m: _summary(v[m]) for m in METRICS} for r, v in values.items()},
        "calibration": {
            "ece_adamw_minus_ivon": diff,
            "se_units": se_units(diff),
            "seeds": seeds,
            "verdict": verdict(diff, seeds),
        },
        "posterior": {
            m: {
                **{k: _summary([d[k] for d in v]) for k in ("p01", "p50", "p99")},
                "hess_init_decayed": v[0]["hess_init_decayed"],
                "learned_seeds": sum(d["learned"] for d in v),
            }
            for m, v in spreads.items()
        },
        "curves": {r: (torch.cat(p), y_eval.repeat(len(p))) for r, p in probs.items()},
    }


GRID: dict[str, dict[str, dict[str, list[float]]]] = {
    "digits": {
        "IVON": {
            "lr": [0.2, 0.5, 1.0],
            "hess_init": [1.0, 3.0, 10.0],
            "beta2": [0.999, 0.9999],
            "weight_decay": [1e-3, 3e-3],
        },
        "AdamW": {"lr": [3e-3, 1e-2, 3e-2, 0.1], "weight_decay": [0.3, 1.0, 3.0]},
        "SGD": {
            "lr": [0.1, 0.3, 1.0],
            "momentum": [0.9],
            "weight_decay": [1e-3, 3e-3, 5e-3, 1e-2],
        },
        "SAM": {"lr": [0.1, 0.3, 1.0], "rho": [0.01, 0.05], "beta1": [0.9], "weight_decay": [3e-3]},
        "bSAM": {
            "lr": [0.1, 0.3, 1.0],
            "rho": [0.01, 0.05],
            "beta1": [0.9],
            "beta2": [0.999],
            "weight_decay": [3e-3],
            "s_init": [1.0, 10.0],
        },
        "IVON-h": {
            "lr": [0.1, 0.3],
            "hess_init": [0.01],
            "weight_decay": [1e-3, 3e-3, 1e-2],
            "ess_scale": [100.0, 1000.0],
            "remaining": [0.01],
        },
    },
    "fashion-mnist": {
        "IVON": {
            "lr": [0.1, 0.3],
            "hess_init": [0.1, 1.0],
            "beta2": [0.9999],
            "weight_decay": [1e-4],
        },
        "AdamW": {"lr": [1e-3, 3e-3], "weight_decay": [1e-2, 0.1]},
        "SGD": {"lr": [0.03, 0.1], "momentum": [0.9], "weight_decay": [5e-4]},
        "SAM": {"lr": [0.03, 0.1], "rho": [0.05], "beta1": [0.9], "weight_decay": [5e-4]},
        "bSAM": {
            "lr": [0.03, 0.1],
            "rho": [0.05],
            "beta1": [0.9],
            "beta2": [0.999],
            "weight_decay": [5e-4],
            "s_init": [1.0],
        },
    },
}
"""The grids of ``blr demo --tune`` per data set (every combination, per method)."""


_DIVERGED = {"accuracy": math.nan, "nll": math.inf, "ece": math.nan, "brier": math.nan}


def tune(
    data: Split,
    *,
    epochs: int,
    seeds: int = 3,
    hidden: Sequence[int] = (128, 128),
    batch_size: int = 64,
    samples: int = 32,
    grid: dict[str, dict[str, list[float]]] | None = None,
    progress: TextIO | None = None,
    quiet: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Grid search on the **validation** split: every combination of ``grid[method]`` (default
    ``GRID[data.name]``) trained on seeds 0 … ``seeds`` − 1 with the budget of :func:`run` and
    scored by the mean validation NLL of the method's own predictive (IVON: averaged over
    ``samples`` draws). The test split is not touched.

    Returns:
        Method → a list of ``{"settings", "accuracy", "nll", "ece"}`` (means over seeds),
        best (lowest NLL) first; a setting that diverges on any seed (non-finite gradients or
        predictions) scores NLL = inf.
    """
    _check_budget(epochs=epochs, seeds=seeds, batch_size=batch_size, samples=samples)
    grid = GRID.get(data.name, GRID["digits"]) if grid is None else grid
    for method in grid:
        if method not in ALL_METHODS:
            raise ValueError(f"grid keys must be among {ALL_METHODS}, got {method!r}")
    combos = {
        m: [dict(zip(g, values)) for values in itertools.product(*g.values())]
        for m, g in grid.items()
    }
    bar = _Progress(sum(map(len, combos.values())) * seeds * epochs, progress or sys.stderr, quiet)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        for method, settings_list in combos.items():
            rows = []
            for settings in settings_list:
                per_seed = []
                for seed in range(seeds):
                    bar.start(f"tune {method} seed {seed}")
                    try:
                        model, opt, times = train(
                            method,
                            data,
                            epochs=epochs,
                            batch_size=batch_size,
                            hidden=hidden,
                            seed=seed,
                            settings=settings,
                            on_epoch=bar.epoch,
                        )
                    except (ArithmeticError, RuntimeError):  # diverged: NaN/Inf gradients
                        per_seed.append(dict(_DIVERGED))
                        continue
                    bar.done(f"tune {method} {settings} seed {seed}", times)
                    preds = _predictions(method, model, opt, data.x_val, samples)
                    scores = _scores(next(iter(preds.values())), data.y_val)
                    per_seed.append(scores if math.isfinite(scores["nll"]) else dict(_DIVERGED))
                mean = {k: sum(s[k] for s in per_seed) / seeds for k in ("accuracy", "nll", "ece")}
                rows.append({"settings": settings, **mean})
            out[method] = sorted(rows, key=lambda r: r["nll"])
    finally:
        bar.close()
    return out


def _spread_lines(result: dict[str, Any]) -> str:
    """Per IVON method: h's percentiles (means over seeds) against hess_init·β₂ᵗ."""
    lines = ["posterior curvature h after training (1st / 50th / 99th percentile over weights, "
             "mean over seeds) vs hess_init·β₂ᵗ:"]  # fmt: skip
    for m, p in result["posterior"].items():
        q = " / ".join(f"{p[k]['mean']:.3g}" for k in ("p01", "p50", "p99"))
        n = len(p["p50"]["values"])
        how = (
            f"learned ({p['learned_seeds']} of {n} seeds)"
            if p["learned_seeds"]
            else "set by hess_init (within 1 % on every seed)"
        )
        lines.append(f"  {m}: {q} vs {p['hess_init_decayed']:.3g}: {how}")
    return "\n".join(lines)


def _verdict_line(result: dict[str, Any]) -> str:
    """The calibration line: the number of seeds, the verdict (or none with too few seeds), the
    paired difference as mean ± s.e. and in s.e. units, and the two ECEs."""
    cal = result["calibration"]
    d = cal["ece_adamw_minus_ivon"]
    n = len(d["values"])
    rows = result["methods"]
    bma = next(k for k in rows if k.endswith("draws)"))
    ivon, adamw = rows[bma]["ece"]["mean"], rows["AdamW"]["ece"]["mean"]
    z = se_units(d)
    what = {
        "holds": "holds: IVON's ECE is lower by at least 2 s.e.",
        "reversed": "reversed: IVON's ECE is higher by at least 2 s.e.",
        "not resolved": "not resolved: the difference is within 2 s.e.",
        "too few seeds": f"too few seeds for a verdict (fewer than {MIN_VERDICT_SEEDS}); "
        "run --seeds 20.",
    }[cal["verdict"]]
    size = "n/a" if math.isnan(z) else f"{z:.2f} s.e."
    return (
        "calibration claim (IVON paper, ImageNet ResNet-50: ECE 0.022 IVON vs 0.066 AdamW), "
        f"{n} seed{'s' * (n != 1)}: {what} Paired AdamW − IVON "
        f"{format_mean_se(d['mean'], d['se'])} ({size}); ECE {bma} {ivon:.4f}, AdamW {adamw:.4f}."
    )


# -------------------------------------------------------------------------------------- CLI
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 0, got {value}")
    return value


DESCRIPTION = (
    "Train an MLP with IVON, AdamW and SGD (same epochs, batch size, minibatches and "
    "initialisation) over several seeds; print test accuracy, NLL, ECE, Brier and seconds per "
    "epoch (mean ± s.e. over seeds) and write a reliability diagram. IVON predicts by averaging "
    "over posterior draws (and at the mean)."
)
"""What ``blr demo --help`` says it does."""


def _at_least_two(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The options of ``blr demo`` (``add_help=False`` to use it as a parent of the ``demo``
    sub-parser of :mod:`blr.apps.cli`)."""
    parser = argparse.ArgumentParser(prog="blr demo", description=DESCRIPTION, add_help=add_help)
    parser.add_argument(
        "--dataset",
        choices=["digits", "fashion-mnist"],
        default="digits",
        help="digits: sklearn's bundled 8×8 digits (default); fashion-mnist: the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="epochs for every method (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items())
        + ")",
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=5,
        help=f"seeds (default 5; the calibration verdict needs at least {MIN_VERDICT_SEEDS})",
    )
    parser.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        default=[128, 128],
        metavar="WIDTH",
        help="hidden-layer widths (default 128 128)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="default 64")
    parser.add_argument(
        "--samples",
        type=_positive_int,
        default=32,
        help="IVON's posterior draws per prediction (default 32)",
    )
    parser.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help="folder of the reliability diagram demo_reliability.png (default: .)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--threads",
        type=_non_negative_int,
        default=1,
        help="torch intra-op threads (default 1: these small layers gain nothing from more, and "
        "threads stall badly on a busy machine; 0: torch's default)",
    )
    parser.add_argument(
        "--limit",
        type=_at_least_two,
        default=None,
        metavar="N",
        help="use only the first N training examples (quick runs)",
    )
    parser.add_argument(
        "--eval",
        choices=["test", "validation"],
        default="test",
        help="score on the test split (default) or the validation split (for tuning)",
    )
    parser.add_argument(
        "--data-dir",
        default=str(FASHION_MNIST_DIR),
        metavar="DIR",
        help=f"folder of the Fashion-MNIST IDX files (default {FASHION_MNIST_DIR})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_METHODS,
        default=list(METHODS),
        help=f"optimizers (default: {' '.join(METHODS)}; also {' '.join(EXTRA_METHODS)}: "
        "SAM and bSAM, blr.optim.BSAM, two gradients per step; IVON-h, IVON with a learned "
        "curvature, see blr.optim.IVON); IVON and AdamW are always needed by the calibration "
        "claim",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="instead: the grid search on the validation split that chose the settings "
        "(prints each method's best settings by validation NLL)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``blr demo``: parse the options, run, print the table (or JSON) and write the reliability
    diagram; returns the exit status (2 for bad options, 1 when the data set is missing)."""
    return run_cli(build_parser().parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    """Run ``blr demo`` with options parsed by :func:`build_parser` (or a parser that has it as
    a parent); returns the exit status. Torch's thread count is restored on return."""
    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_cli(args)
    finally:
        torch.set_num_threads(before)


def _run_cli(args: argparse.Namespace) -> int:
    epochs = args.epochs or DEFAULT_EPOCHS[args.dataset]
    t0 = time.perf_counter()
    try:
        if args.dataset == "digits":
            data = load_digits(limit=args.limit)
        else:
            data = load_fashion_mnist(args.data_dir, limit=args.limit)
    except (FileNotFoundError, ImportError) as exc:
        print(f"blr demo: error: {exc}", file=sys.stderr)
        return 1
    if args.tune:
        return _print_tune(args, data, epochs)
    try:
        result = run(
            data,
            epochs=epochs,
            seeds=args.seeds,
            hidden=args.hidden,
            batch_size=args.batch_size,
            samples=args.samples,
            evaluate_on=args.eval,
            quiet=args.quiet,
            methods=args.methods,
        )
    except FloatingPointError as exc:
        print(f"blr demo: error: {exc}", file=sys.stderr)
        return 1
    curves = result.pop("curves")
    png: Path | None = Path(args.out) / "demo_reliability.png"
    try:
        from blr.metrics import reliability_diagram

        reliability_diagram(
            curves,
            png,
            title=f"{data.name}, {args.eval} split, {args.seeds} seed(s) pooled",
        )
    except ImportError as exc:
        print(f"blr demo: reliability diagram skipped: {exc}", file=sys.stderr)
        png = None
    result["reliability_png"] = None if png is None else str(png)
    result["threads"] = torch.get_num_threads()
    result["wall_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(_finite(result), indent=1))
        return 0
    sizes = result["sizes"]
    print(
        f"blr demo: {data.name} ({sizes['train']} train / {sizes['validation']} validation / "
        f"{sizes['test']} test), MLP {'-'.join(map(str, [data.x_train.shape[1], *args.hidden]))}"
        f"-{data.n_classes}, {epochs} epoch{'s' * (epochs != 1)}, batch {args.batch_size}, "
        f"{args.seeds} seed(s), "
        f"{result['threads']} thread(s); {args.eval} split, mean ± s.e. over seeds"
    )
    print(format_table(result["methods"]))
    print(_spread_lines(result))
    print(_verdict_line(result))
    if png is not None:
        print(f"reliability diagram: {png}")
    print(f"wall time {result['wall_s']:.1f} s")
    return 0


def _finite(obj: Any) -> Any:
    """NaN/Inf (the s.e. of one seed, a diverged setting) as JSON null: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _print_tune(args: argparse.Namespace, data: Split, epochs: int) -> int:
    grids = GRID.get(data.name, GRID["digits"])
    found = tune(
        data,
        epochs=epochs,
        seeds=args.seeds,
        hidden=args.hidden,
        batch_size=args.batch_size,
        samples=args.samples,
        grid={m: grids[m] for m in args.methods},
        quiet=args.quiet,
    )
    if args.json:
        print(json.dumps(_finite(found), indent=1))
        return 0
    print(
        f"blr demo --tune: {data.name} validation split, {epochs} epochs, batch "
        f"{args.batch_size}, hidden {' '.join(map(str, args.hidden))}, {args.seeds} seed(s); "
        "mean validation NLL, best first"
    )
    for method, rows in found.items():
        print(f"{method}: best {rows[0]['settings']}")
        for r in rows[:5]:
            print(
                f"  NLL {r['nll']:.4f}  accuracy {r['accuracy']:.4f}  ECE {r['ece']:.4f}  "
                f"{r['settings']}"
            )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
