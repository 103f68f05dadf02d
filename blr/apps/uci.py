r"""``blr bench uci``: the standard UCI regression benchmark for Bayesian neural networks
(Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016; Khan et al. 2018) with VOGN, Vadam, IVON
and a Bayes-by-backprop baseline.

Protocol (the layout of Hernández-Lobato & Adams' UCI splits; docs/uci.md): a directory with
``data.txt``, ``index_features.txt``, ``index_target.txt``, ``index_train_K.txt`` /
``index_test_K.txt`` (0-based rows), ``n_hidden.txt``, ``n_epochs.txt`` and ``n_splits.txt``. For
every split the inputs and the target are standardized with the training split's mean and
(population) standard deviation; the network is one hidden layer of ``n_hidden`` ReLU units; the
test RMSE and test log-likelihood are reported in the ORIGINAL target units and summarized as mean ±
standard error over the splits.

Model, the same for all four methods: y = f_θ(x) + ε, ε ~ N(0, σ²) in standardized units, prior
θ ~ N(0, δ⁻¹I) on every weight and bias, mean-field Gaussian posterior q(θ) = N(m, diag(s)⁻¹)
started at N(θ₀, (N h₀ + δ)⁻¹I) (θ₀ torch's default initialization, N the training-set size).
Every method minimizes (or follows the natural gradient of) the same per-example objective

.. math::
    \frac1N\Big(\mathbb E_q\Big[\sum_{i=1}^N \ell_i(\theta)\Big] + \mathrm{KL}(q\,\|\,p)\Big),
    \qquad \ell_i(\theta) = \tfrac12\log 2\pi\sigma^2 + \frac{(y_i - f_\theta(x_i))^2}{2\sigma^2},

with one posterior draw per minibatch. The noise variance σ² is learned by variational EM
(type-II maximum likelihood of the ELBO): log σ² is a point estimate updated by Adam on the same
minibatch loss, at the same posterior draw, for every method. The prior precision δ is fixed
(default 1, i.e. a unit-variance prior on the weights of a network with standardized inputs and
outputs); ``--prior-prec`` changes it. The learning rate of each method was chosen once, on
bostonHousing, from {0.003, 0.01, 0.03, 0.1} by the log-likelihood on held-out TRAINING rows of
split 0 (docs/uci.md); ``--lr METHOD=VALUE`` changes it. Prediction is the Gaussian predictive
N(E_s[f_{θ_s}(x)], σ² + Var_s[f_{θ_s}(x)]) over ``--samples`` posterior draws
(:func:`blr.predict.predict_regression`), un-standardized: mean·std_y + mean_y and
variance·std_y², so the test log-likelihood equals the standardized one minus log std_y.

Example:
    >>> import numpy as np, tempfile
    >>> rng = np.random.default_rng(0)
    >>> tmp = tempfile.TemporaryDirectory(); d = tmp.name
    >>> x = rng.normal(size=(40, 2)); y = x @ [1.0, -2.0] + 0.1 * rng.normal(size=40)
    >>> np.savetxt(f"{d}/data.txt", np.column_stack([x, y]))
    >>> for name, value in [("index_features", [0, 1]), ("index_target", [2]), ("n_hidden", [8]),
    ...                     ("n_epochs", [2]), ("n_splits", [1]), ("index_train_0", range(30)),
    ...                     ("index_test_0", range(30, 40))]:
    ...     np.savetxt(f"{d}/{name}.txt", np.asarray(list(value)), fmt="%d")
    >>> data = load_uci(d)
    >>> data.n_rows, data.n_features, data.n_splits
    (40, 2, 1)
    >>> result = run_method("ivon", data.split(0), BenchConfig(epochs=2, samples=4))
    >>> sorted(result)
    ['loglik', 'noise_var', 'rmse', 'time_s']
    >>> tmp.cleanup()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from blr.apps.report import format_mean_se, markdown_table, mean_se, text_table
from blr.metrics import gaussian_log_likelihood, rmse
from blr.optim import IVON, VOGN, BayesByBackprop, Vadam
from blr.predict import predict_regression

__all__ = [
    "METHODS",
    "PUBLISHED_RMSE",
    "BenchConfig",
    "Split",
    "UCIDataset",
    "evaluate",
    "format_table",
    "load_uci",
    "main",
    "mlp",
    "run_benchmark",
    "run_method",
]

METHODS = ("vogn", "vadam", "ivon", "bbb")
_DEFAULT_LR = {"vogn": 0.03, "vadam": 0.1, "ivon": 0.03, "bbb": 0.003}
_LABELS = {"vogn": "VOGN", "vadam": "Vadam", "ivon": "IVON", "bbb": "BBB",
           "mcdropout": "MC dropout", "ensemble": "Ensemble (5)"}  # fmt: skip

#: Published test RMSE (mean, s.e.) of Khan et al. (2018, Table 1), by dataset directory name:
#: their BBVI baseline (Bayes by backprop trained with Adam) and Vadam.
PUBLISHED_RMSE: dict[str, dict[str, tuple[float, float]]] = {
    "bostonHousing": {"bbb": (3.58, 0.21), "vadam": (3.93, 0.26)},
    "concrete": {"bbb": (6.14, 0.13), "vadam": (6.85, 0.09)},
    "energy": {"bbb": (2.79, 0.06), "vadam": (1.55, 0.08)},
    "wine-quality-red": {"bbb": (0.65, 0.01), "vadam": (0.66, 0.01)},
    "yacht": {"bbb": (2.05, 0.06), "vadam": (1.32, 0.10)},
    "kin8nm": {"bbb": (0.09, 0.00), "vadam": (0.10, 0.00)},
    "naval-propulsion-plant": {"bbb": (0.00, 0.00), "vadam": (0.00, 0.00)},
    "power-plant": {"bbb": (4.31, 0.03), "vadam": (4.28, 0.03)},
}

_REQUIRED = (
    "data.txt",
    "index_features.txt",
    "index_target.txt",
    "n_hidden.txt",
    "n_epochs.txt",
    "n_splits.txt",
)


# ------------------------------------------------------------------------------------ data
def _read_ints(path: Path) -> np.ndarray:
    """The whitespace-separated integers of a file (floats such as ``13.0`` allowed)."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as exc:
        raise ValueError(f"{path} must hold whitespace-separated integers: {exc}") from exc
    if values.size == 0:
        raise ValueError(f"{path} is empty")
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise ValueError(f"{path} must hold integers")
    return values.astype(np.int64).ravel()


def _read_count(path: Path, *, minimum: int = 1) -> int:
    values = _read_ints(path)
    if values.size != 1 or values[0] < minimum:
        raise ValueError(f"{path} must hold one integer ≥ {minimum}, got {values.tolist()}")
    return int(values[0])


@dataclass(frozen=True)
class Split:
    """One train/test split, standardized with the training split's statistics.

    Attributes:
        x_train, y_train, x_test, y_test: standardized inputs ``(n, d)`` and targets ``(n,)``.
        y_test_raw: the test targets in original units.
        y_mean, y_std: the training targets' mean and standard deviation (original units).
        index: K of ``index_train_K.txt``.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    y_test_raw: Tensor
    y_mean: float
    y_std: float
    index: int = 0

    @property
    def n_train(self) -> int:
        """N, the number of training rows."""
        return int(self.x_train.shape[0])


@dataclass(frozen=True)
class UCIDataset:
    """A dataset directory in the UCI-benchmark format (module docstring), read and validated.

    Attributes:
        path: the directory.
        x: the feature columns, ``(n_rows, n_features)`` float64.
        y: the target column, ``(n_rows,)`` float64.
        n_hidden, n_epochs, n_splits: the values of ``n_hidden.txt``, ``n_epochs.txt``,
            ``n_splits.txt``.
    """

    path: Path
    x: np.ndarray
    y: np.ndarray
    n_hidden: int
    n_epochs: int
    n_splits: int

    @property
    def name(self) -> str:
        """The directory's name (e.g. ``bostonHousing``)."""
        return self.path.name

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    def indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The 0-based training and test rows of split ``k`` (validated: in range, disjoint)."""
        if int(k) != k or not 0 <= k < self.n_splits:
            raise ValueError(f"split must be an integer in [0, {self.n_splits}), got {k}")
        out = []
        for kind in ("train", "test"):
            path = self.path / f"index_{kind}_{k}.txt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self.path} lacks {path.name} (n_splits.txt says {self.n_splits} splits)"
                )
            idx = _read_ints(path)
            if idx.min() < 0 or idx.max() >= self.n_rows:
                raise ValueError(
                    f"{path} has row indices outside [0, {self.n_rows}) (they are 0-based rows "
                    "of data.txt)"
                )
            out.append(idx)
        if np.intersect1d(out[0], out[1]).size:
            raise ValueError(f"split {k}: index_train_{k}.txt and index_test_{k}.txt share rows")
        if out[0].size < 2:
            raise ValueError(f"split {k}: index_train_{k}.txt needs at least 2 rows")
        return out[0], out[1]

    def split(self, k: int, *, dtype: torch.dtype = torch.float32) -> Split:
        r"""Split ``k``, standardized on its training rows: x ← (x − x̄)/s_x per column (a column
        constant on the training rows keeps s_x = 1), y ← (y − ȳ)/s_y, with population
        standard deviations."""
        train, test = self.indices(k)
        return self._standardized(train, test, int(k), dtype)

    def validation_split(
        self, k: int, *, fraction: float = 0.2, seed: int = 0, dtype: torch.dtype = torch.float32
    ) -> Split:
        """A random ``fraction`` of split ``k``'s TRAINING rows held out as the "test" part (for
        choosing settings without touching the test rows), standardized on the rest."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
        train, _ = self.indices(k)
        perm = np.random.default_rng(seed).permutation(train)
        n_val = max(1, round(fraction * train.size))
        return self._standardized(perm[n_val:], perm[:n_val], int(k), dtype)

    def _standardized(
        self, train: np.ndarray, test: np.ndarray, k: int, dtype: torch.dtype
    ) -> Split:
        x_tr, x_te = self.x[train], self.x[test]
        y_tr, y_te = self.y[train], self.y[test]
        x_mean, x_std = x_tr.mean(0), x_tr.std(0)
        x_std = np.where(x_std > 0, x_std, 1.0)
        y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
        if not y_std > 0:
            raise ValueError(f"split {k}: the target is constant on the training rows")

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

        return Split(
            x_train=t((x_tr - x_mean) / x_std),
            y_train=t((y_tr - y_mean) / y_std),
            x_test=t((x_te - x_mean) / x_std),
            y_test=t((y_te - y_mean) / y_std),
            y_test_raw=torch.as_tensor(y_te, dtype=torch.float64),
            y_mean=y_mean,
            y_std=y_std,
            index=int(k),
        )


def load_uci(path: str | Path) -> UCIDataset:
    """Read and validate a dataset directory in the UCI-benchmark format.

    Args:
        path: the directory (``data.txt``, ``index_features.txt``, ``index_target.txt``,
            ``n_hidden.txt``, ``n_epochs.txt``, ``n_splits.txt`` and the split files).

    Returns:
        A :class:`UCIDataset`. The split files are read (and checked) by
        :meth:`UCIDataset.split`; a missing one is a :class:`FileNotFoundError` naming it.

    Raises:
        FileNotFoundError: the directory or one of the files is missing (named in the message).
        ValueError: a file's content is malformed (named in the message).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     load_uci(empty)
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... lacks data.txt, index_features.txt, ... (the UCI-benchmark format...
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist or is not a directory")
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root} lacks {', '.join(missing)} (the UCI-benchmark format needs "
            f"{', '.join(_REQUIRED)} and index_train_K.txt / index_test_K.txt per split)"
        )
    try:
        table = np.loadtxt(root / "data.txt", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(
            f"{root / 'data.txt'} must hold whitespace-separated numbers: {exc}"
        ) from exc
    if table.shape[0] == 0:
        raise ValueError(f"{root / 'data.txt'} is empty")
    if not np.all(np.isfinite(table)):
        raise ValueError(f"{root / 'data.txt'} holds non-finite values")
    n_cols = table.shape[1]
    features = _read_ints(root / "index_features.txt")
    target = _read_ints(root / "index_target.txt")
    if target.size != 1:
        raise ValueError(f"{root / 'index_target.txt'} must name one column, got {target.tolist()}")
    for name, cols in (("index_features.txt", features), ("index_target.txt", target)):
        if cols.min() < 0 or cols.max() >= n_cols:
            raise ValueError(
                f"{root / name} names columns outside [0, {n_cols}) of data.txt: {cols.tolist()}"
            )
    if target[0] in features:
        raise ValueError(f"{root / 'index_features.txt'} contains the target column {target[0]}")
    return UCIDataset(
        path=root,
        x=table[:, features],
        y=table[:, target[0]],
        n_hidden=_read_count(root / "n_hidden.txt"),
        n_epochs=_read_count(root / "n_epochs.txt"),
        n_splits=_read_count(root / "n_splits.txt"),
    )


# ------------------------------------------------------------------------------------ model
def mlp(n_in: int, n_hidden: int) -> nn.Sequential:
    """The benchmark's network: Linear(n_in, n_hidden) → ReLU → Linear(n_hidden, 1).

    Example:
        >>> mlp(13, 50)(torch.zeros(4, 13)).shape
        torch.Size([4, 1])
    """
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, 1))


def _gaussian_nll(f: Tensor, y: Tensor, log_noise: Tensor) -> Tensor:
    """Per-example −log N(y | f, σ²) with σ² = exp(log_noise)."""
    return 0.5 * (math.log(2 * math.pi) + log_noise + (y - f) ** 2 * torch.exp(-log_noise))


# ------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run (shared by all methods unless marked).

    Attributes:
        epochs: passes over the training split (None: ``n_epochs.txt``).
        n_hidden: hidden units (:func:`run_benchmark` takes ``n_hidden.txt``).
        batch_size: minibatch size M.
        samples: posterior draws S of the test predictive.
        prior_prec: δ, the prior precision of every weight and bias.
        hess_init: h₀: every method starts at q = N(θ₀, (N h₀ + δ)⁻¹I).
        noise_var_init: σ² at the start (standardized units).
        noise_lr: Adam's learning rate of log σ².
        lr: learning rate per method (VOGN, Vadam, BBB: of the mean; IVON: ivon-opt's ``lr``,
            rescaled by h₀ + δ/N), chosen on held-out training rows (docs/uci.md); a method
            missing from the dict gets its default.
        beta2: the curvature EMA rate of VOGN and IVON (Vadam and BBB keep Adam's 0.999).
        seed: base seed; split k of a method uses ``seed + 1000·k`` (independent of which other
            methods run).
    """

    epochs: int | None = None
    n_hidden: int = 50
    batch_size: int = 32
    samples: int = 100
    prior_prec: float = 1.0
    hess_init: float = 1.0
    noise_var_init: float = 0.1
    noise_lr: float = 0.01
    lr: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_LR))
    beta2: float = 0.999
    seed: int = 0


def evaluate(
    model: nn.Module, posterior: Any, split: Split, noise_var: float, *, samples: int
) -> tuple[float, float]:
    r"""Test RMSE and log-likelihood in original units of the Gaussian predictive
    N(E_s f_{θ_s}(x), σ² + Var_s f_{θ_s}(x)), un-standardized: mean·s_y + ȳ, variance·s_y².

    Args:
        model: the network (standardized inputs → standardized target).
        posterior: anything :func:`blr.predict.predict_regression` accepts.
        split: the :class:`Split` (its test part is used).
        noise_var: σ² in standardized units.
        samples: S (0: at the posterior mean).

    Returns:
        (RMSE, mean log-likelihood), both in the target's original units.
    """
    pred = predict_regression(
        model, posterior, split.x_test, n_samples=samples, noise_var=noise_var
    )
    mean = pred.mean.reshape(-1).double() * split.y_std + split.y_mean
    var = pred.var.reshape(-1).double() * split.y_std**2
    return rmse(mean, split.y_test_raw), gaussian_log_likelihood(mean, var, split.y_test_raw)


def run_method(method: str, split: Split, config: BenchConfig) -> dict[str, float]:
    """Train ``method`` on ``split``'s training part and evaluate on its test part.

    Args:
        method: ``"vogn"``, ``"vadam"``, ``"ivon"`` or ``"bbb"``.
        split: a standardized :class:`Split`.
        config: the :class:`BenchConfig` (``config.epochs`` must be set).

    Returns:
        ``{"rmse", "loglik", "noise_var", "time_s"}`` (original units; σ² standardized).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if config.epochs is None or int(config.epochs) != config.epochs or config.epochs < 0:
        raise ValueError(f"epochs must be an integer ≥ 0, got {config.epochs}")
    start = time.perf_counter()
    seed = config.seed + 1000 * split.index
    x, y = split.x_train, split.y_train.reshape(-1, 1)
    n = split.n_train
    with torch.random.fork_rng(devices=[]):  # the network's initialization, seeded per split
        torch.manual_seed(seed)
        model = mlp(x.shape[1], config.n_hidden).to(x.dtype)
    delta, h0 = config.prior_prec, config.hess_init
    lr = config.lr.get(method, _DEFAULT_LR[method])
    log_noise = torch.tensor(math.log(config.noise_var_init), dtype=x.dtype, requires_grad=True)
    noise_opt = torch.optim.Adam([log_noise], lr=config.noise_lr)
    opt: Any
    if method == "vogn":
        opt = VOGN(
            model.parameters(), lr=lr, ess=n, weight_decay=delta / n, beta2=config.beta2,
            hess_init=h0, curvature="ggn", loss="gaussian", sigma2=config.noise_var_init,
            seed=seed, model=model,
        )  # fmt: skip
    elif method == "vadam":
        opt = Vadam(model.parameters(), lr=lr, ess=n, prior_prec=delta, prec_init=h0, seed=seed)
    elif method == "ivon":
        opt = IVON(
            model.parameters(), lr=lr, ess=n, weight_decay=delta / n, beta2=config.beta2,
            hess_init=h0, seed=seed,
        )  # fmt: skip
    else:
        opt = BayesByBackprop(
            model.parameters(), lr=lr, ess=n, prior_prec=delta,
            init_std=(n * h0 + delta) ** -0.5, seed=seed,
        )  # fmt: skip
    shuffle = torch.Generator().manual_seed(seed + 1)
    try:
        for _ in range(int(config.epochs)):
            for idx in torch.randperm(n, generator=shuffle).split(config.batch_size):
                xb, yb = x[idx], y[idx]
                opt.zero_grad()
                noise_opt.zero_grad()
                if method == "vogn":
                    opt.sigma2 = float(log_noise.detach().exp())  # the GGN's Λ = 1/σ²
                with opt.sampled_params(train=True):
                    _gaussian_nll(model(xb), yb, log_noise).mean().backward()
                opt.step()
                noise_opt.step()
        state = [*model.parameters(), log_noise, *(opt.std() if method == "bbb" else [])]
        finite = all(bool(torch.isfinite(p).all()) for p in state)
        if not finite:
            raise FloatingPointError("NaN/Inf in the parameters")
    except FloatingPointError as exc:
        raise FloatingPointError(
            f"{_LABELS[method]} diverged on split {split.index} ({exc}); lower its learning rate "
            f"(now {lr}: --lr {method}=...)"
        ) from exc
    noise_var = float(log_noise.detach().exp())
    posterior = opt.posterior(model) if method == "bbb" else opt
    test_rmse, test_ll = evaluate(model, posterior, split, noise_var, samples=config.samples)
    return {
        "rmse": test_rmse,
        "loglik": test_ll,
        "noise_var": noise_var,
        "time_s": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------------------ summary
def run_benchmark(
    data: UCIDataset,
    methods: Sequence[str] = METHODS,
    *,
    splits: int | None = None,
    config: BenchConfig | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Run every method on the first ``splits`` splits of ``data``.

    Args:
        data: a :class:`UCIDataset`.
        methods: a subset of :data:`METHODS`.
        splits: how many splits (None: all of ``n_splits.txt``).
        config: the :class:`BenchConfig` (``epochs=None`` takes ``n_epochs.txt``; ``n_hidden``
            is always ``n_hidden.txt``).
        progress: a text stream for one line per method and split (None: silent).

    Returns:
        ``{"dataset", "config", "splits", "results"}``, ``results`` one dict per method:
        ``method``, ``rmse`` and ``loglik`` as [mean, s.e.] (s.e. None for one split; the
        whole entry None if every split diverged), ``published_rmse`` ([mean, s.e.] or None),
        ``time_s`` (all splits), ``noise_var`` (mean σ², standardized units),
        ``diverged_splits`` (the splits whose training hit NaN/Inf: reported, not summarized)
        and the per-split values ``rmse_splits``, ``loglik_splits`` (None where diverged).
    """
    methods = _check_methods(methods)
    n_splits = data.n_splits if splits is None else int(splits)
    if int(n_splits) != n_splits or not 1 <= n_splits <= data.n_splits:
        raise ValueError(f"splits must be an integer in [1, {data.n_splits}], got {splits}")
    config = config or BenchConfig()
    epochs = data.n_epochs if config.epochs is None else config.epochs
    config = replace(config, epochs=epochs, n_hidden=data.n_hidden)
    prepared = [data.split(k) for k in range(n_splits)]  # validates every split file first
    published = PUBLISHED_RMSE.get(data.name, {})
    results = []
    for method in methods:
        runs: list[dict[str, float] | None] = []
        elapsed = 0.0
        for sp in prepared:
            start = time.perf_counter()
            try:
                r: dict[str, float] | None = run_method(method, sp, config)
                line = (
                    f"RMSE {r['rmse']:.3f}, log-lik {r['loglik']:.3f}, "
                    f"σ² {r['noise_var']:.3f}, {r['time_s']:.1f} s"
                )
            except FloatingPointError as exc:  # reported, and excluded from the summary
                r, line = None, f"diverged ({exc})"
            elapsed += time.perf_counter() - start
            runs.append(r)
            if progress is not None:
                print(f"{_LABELS[method]} split {sp.index}: {line}", file=progress, flush=True)
        ok = [r for r in runs if r is not None]
        pub = published.get(method)
        results.append(
            {
                "method": method,
                "rmse": _summary([r["rmse"] for r in ok]),
                "loglik": _summary([r["loglik"] for r in ok]),
                "published_rmse": list(pub) if pub else None,
                "time_s": elapsed,
                "noise_var": float(np.mean([r["noise_var"] for r in ok])) if ok else None,
                "diverged_splits": [sp.index for sp, r in zip(prepared, runs) if r is None],
                "rmse_splits": [None if r is None else r["rmse"] for r in runs],
                "loglik_splits": [None if r is None else r["loglik"] for r in runs],
            }
        )
    return {
        "dataset": data.name,
        "path": str(data.path),
        "splits": n_splits,
        "config": asdict(config),
        "results": results,
    }


def _summary(values: list[float]) -> list[float | None] | None:
    """[mean, s.e.] with None for an undefined s.e. (JSON has no NaN); None without values."""
    if not values:
        return None
    mean, se = mean_se(values)
    return [mean, se if math.isfinite(se) else None]


def _check_methods(methods: Sequence[str], allowed: Sequence[str] = METHODS) -> list[str]:
    methods = list(methods)
    bad = [m for m in methods if m not in allowed]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {tuple(allowed)}, got {methods}")
    return list(dict.fromkeys(methods))


def _pm(pair: Sequence[float | None] | None, digits: int, empty: str = "—") -> str:
    """``mean ± se`` of a ``[mean, se]`` pair (``—`` for an undefined s.e.), ``empty`` for None."""
    return empty if pair is None else format_mean_se(pair[0], pair[1], digits, missing="—")


def format_table(report: dict[str, Any], *, markdown: bool = False) -> str:
    """The table of :func:`run_benchmark`'s report: method | test RMSE | test log-lik |
    published RMSE | time (mean ± standard error over the splits; "—" where nothing applies).

    Example:
        >>> report = {"dataset": "toy", "splits": 2, "results": [{"method": "ivon",
        ...     "rmse": [1.0, 0.1], "loglik": [-1.5, 0.2], "published_rmse": None,
        ...     "time_s": 3.0}]}
        >>> print(format_table(report, markdown=True))
        | method | test RMSE | test log-lik | published RMSE | time (s) |
        |---|---|---|---|---|
        | IVON | 1.000 ± 0.100 | -1.500 ± 0.200 | — | 3.0 |
    """
    head = ["method", "test RMSE", "test log-lik", "published RMSE", "time (s)"]
    select = report.get("protocol") == "select"
    if select:
        base = _LABELS.get(report.get("best_baseline") or "", "—")
        head[-1:-1] = [f"Δ log-lik vs {base}"]
        head[-1] = "time (s): wall / CPU"
    rows = []
    for r in report["results"]:
        row = [
            _LABELS.get(r["method"], r["method"]),
            _pm(r["rmse"], 3, "diverged"),
            _pm(r["loglik"], 3, "diverged"),
            _pm(r["published_rmse"], 2),
            f"{r['time_s']:.1f}",
        ]
        if select:
            row[-1:-1] = [_pm(r.get("loglik_diff"), 3)]
            row[-1] = f"{r['time_s']:.1f} / {r['cpu_s']:.1f}"
        rows.append(row)
    advice = "" if select else "; try a smaller --lr {m}=..."
    notes = [
        f"{_LABELS.get(r['method'], r['method'])} diverged (NaN/Inf) on split(s) "
        f"{', '.join(map(str, r['diverged_splits']))}: left out of its mean ± s.e."
        + advice.format(m=r["method"])
        for r in report["results"]
        if r.get("diverged_splits")
    ]
    notes += [
        f"{_LABELS.get(r['method'], r['method'])}: on all the training rows the choice of split "
        f"{f['split']} (δ {f['prior_prec']:g}, c {f['likelihood_weight']:g}, lr {f['lr']:.3g}, "
        f"{f['epochs']} epochs) diverged; its next best candidate was retrained"
        for r in report["results"]
        for f in r.get("retrain_diverged", [])
    ]
    if markdown:
        return "\n".join([markdown_table(head, rows), *(["", *notes] if notes else [])])
    title = f"{report['dataset']}: {report['splits']} split(s), mean ± s.e.; original units"
    return "\n".join([title.rstrip(), text_table(head, rows), *notes])


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``blr bench uci``."""
    defaults = BenchConfig()
    from blr.apps import uci_protocol

    parser = argparse.ArgumentParser(
        prog="blr bench uci",
        description=(
            "The UCI regression benchmark (one hidden layer, inputs and target standardized on "
            "the training split; test RMSE and log-likelihood in original units, mean ± s.e. over "
            "splits) for VOGN, Vadam, IVON and Bayes by backprop, and MC dropout and a deep "
            "ensemble as baselines, beside the published numbers of Khan et al. (2018). By "
            "default every setting (prior precision, learning rate or dropout rate, epochs) is "
            "chosen per split on held-out training rows (--protocol select); --protocol fixed "
            "runs the four BLR methods with the settings given. Any directory in the layout "
            "described in docs/uci.md works."
        ),
    )
    parser.add_argument(
        "--protocol",
        choices=("select", "fixed"),
        default="select",
        help="select (default): settings chosen per split on held-out training rows, all "
        "splits trained at once; fixed: --lr/--prior-prec/--epochs as given, split by split",
    )
    parser.add_argument(
        "--data", required=True, metavar="DIR", help="dataset directory (data.txt, index_*.txt)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=uci_protocol.METHODS,
        default=None,
        metavar="M",
        help=f"methods to run, among {', '.join(uci_protocol.METHODS)} (default: all; "
        f"--protocol fixed: {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--splits", type=int, default=None, help="use the first N splits (default: n_splits.txt)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (select: the budget whose 1/8, 1/4, 1/2 and all are the "
        "candidates, default about 3000 steps and at least n_epochs.txt; fixed: default "
        "n_epochs.txt)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=defaults.samples,
        help=f"posterior draws of the test predictive (default {defaults.samples})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="minibatch size (default 32)"
    )
    parser.add_argument(
        "--prior-prec",
        type=float,
        default=None,
        help=f"--protocol fixed: prior precision δ of every weight (default "
        f"{defaults.prior_prec}); select chooses it",
    )
    parser.add_argument(
        "--lr",
        action="append",
        default=[],
        metavar="M=LR",
        help="--protocol fixed: learning rate of method M (repeatable), e.g. --lr ivon=0.01; "
        "defaults: " + ", ".join(f"{m}={v}" for m, v in defaults.lr.items()),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: the nets are tiny)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed (default 0)")
    parser.add_argument(
        "--quiet", action="store_true", help="no per-split progress lines on stderr"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``blr bench uci``; returns the exit status: 0, 2 for bad input, 1 when a
    method diverged on some split (the table is printed all the same, with a note)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for value, name in ((args.samples, "--samples"), (args.epochs, "--epochs")):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be ≥ 0, got {value}")
        for value, name in ((args.batch_size, "--batch-size"), (args.threads, "--threads")):
            if value < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        if args.protocol == "select":
            for given, name in ((args.lr, "--lr"), (args.prior_prec, "--prior-prec")):
                if given:
                    raise ValueError(
                        f"{name} applies to --protocol fixed; --protocol select chooses it on "
                        "held-out training rows"
                    )
        prior_prec = 1.0 if args.prior_prec is None else args.prior_prec
        if not (math.isfinite(prior_prec) and prior_prec > 0):
            raise ValueError(f"--prior-prec must be > 0, got {args.prior_prec}")
        if args.protocol == "fixed" and args.methods:
            _check_methods(args.methods)
        data = load_uci(args.data)
        if args.splits is not None and not 1 <= args.splits <= data.n_splits:
            raise ValueError(f"--splits must lie in [1, {data.n_splits}], got {args.splits}")
        lr = dict(BenchConfig().lr)
        for item in args.lr:
            name, sep, value = item.partition("=")
            if not sep or name not in METHODS:
                raise ValueError(
                    f"--lr must be METHOD=VALUE with METHOD in {METHODS}, got {item!r}"
                )
            try:
                lr[name] = float(value)
            except ValueError:
                raise ValueError(f"--lr {name} must be a number, got {value!r}") from None
            if not (math.isfinite(lr[name]) and lr[name] > 0):
                raise ValueError(f"--lr {name} must be > 0, got {value}")
        progress = None if args.quiet or args.json else sys.stderr
        with _threads(args.threads):
            start, cpu = time.perf_counter(), time.process_time()
            if args.protocol == "select":
                from blr.apps import uci_protocol

                report = uci_protocol.run_benchmark(
                    data,
                    args.methods or uci_protocol.METHODS,
                    splits=args.splits,
                    config=uci_protocol.ProtocolConfig(
                        epochs=args.epochs,
                        batch_size=args.batch_size,
                        test_samples=args.samples,
                        seed=args.seed,
                    ),
                    progress=progress,
                )
            else:
                config = BenchConfig(
                    epochs=args.epochs,
                    lr=lr,
                    batch_size=args.batch_size,
                    samples=args.samples,
                    prior_prec=prior_prec,
                    seed=args.seed,
                )
                report = run_benchmark(
                    data, args.methods or METHODS, splits=args.splits, config=config,
                    progress=progress,
                )  # fmt: skip
            report["wall_s"] = time.perf_counter() - start
            report["cpu_s"] = time.process_time() - cpu
    except (FileNotFoundError, ValueError) as exc:
        print(f"blr bench uci: error: {exc}", file=sys.stderr)
        return 2
    report["threads"] = args.threads
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report, markdown=args.markdown))
        print(
            f"wall time {report['wall_s']:.1f} s, CPU {report['cpu_s']:.1f} s on "
            f"{args.threads} thread(s)"
        )
    return 1 if any(r["diverged_splits"] for r in report["results"]) else 0


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
