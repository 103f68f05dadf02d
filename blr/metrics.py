r"""Metrics of predictive distributions: what "calibrated" means, in numbers.

Classification (``probs`` of shape ``(n, K)``, rows summing to one, or ``(n,)`` probabilities of
class 1 for a binary problem; ``labels`` integer class indices):

.. math::
    \text{NLL} = -\frac1n\sum_i \log p_{i,y_i},\qquad
    \text{Brier} = \frac1n\sum_i\sum_k (p_{ik} - [y_i = k])^2,\qquad
    \text{ECE} = \sum_b \frac{|B_b|}{n}\,|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|,

with B_b the examples whose confidence max_k p_ik falls in the b-th of ``n_bins`` equal-width bins
of [0, 1] (a confidence on an edge goes to the upper bin; 1.0 to the last).

Regression (predictive mean and variance per example): RMSE, the Gaussian test log-likelihood
(1/n)Σ log N(y_i | mean_i, var_i), and the coverage of central intervals.

Example:
    >>> import torch
    >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> y = torch.tensor([0, 1, 1])
    >>> round(accuracy(p, y), 4), round(brier(p, y), 4)
    (0.6667, 0.2733)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "Reliability",
    "accuracy",
    "brier",
    "ece",
    "gaussian_log_likelihood",
    "interval_coverage",
    "nll",
    "reliability",
    "reliability_diagram",
    "rmse",
]


def _as_probs(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(n, K) probabilities and (n,) int64 labels, validated; binary (n,) → (n, 2)."""
    if not isinstance(probs, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("probs and labels must be tensors")
    if probs.ndim == 1:
        probs = torch.stack([1 - probs, probs], dim=-1)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (n, K) or (n,), got {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(
            f"labels must have shape ({probs.shape[0]},) to match probs, got {tuple(labels.shape)}"
        )
    if not probs.is_floating_point():
        raise TypeError(f"probs must be floating point, got {probs.dtype}")
    if probs.numel() and (probs.min() < -1e-6 or probs.max() > 1 + 1e-6):
        raise ValueError("probs must lie in [0, 1]")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1]})")
    if probs.shape[0] == 0:
        raise ValueError("probs is empty")
    return probs, labels


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of examples whose most probable class is the label (ties: the lowest index).

    Example:
        >>> import torch
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        0.5
    """
    probs, labels = _as_probs(probs, labels)
    return float((probs.argmax(-1) == labels).double().mean())


def nll(probs: Tensor, labels: Tensor, *, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood −(1/n)Σ log p_{i,y_i}, probabilities clamped below at
    ``eps`` (pass log-probabilities to :func:`torch.nn.functional.nll_loss` for exact values).

    Example:
        >>> import torch
        >>> round(nll(torch.tensor([[0.5, 0.5]]), torch.tensor([1])), 6)
        0.693147
    """
    probs, labels = _as_probs(probs, labels)
    picked = probs.gather(1, labels[:, None]).squeeze(1).double().clamp_min(eps)
    return float(-picked.log().mean())


def brier(probs: Tensor, labels: Tensor) -> float:
    """Mean over examples of Σ_k (p_ik − [y_i = k])² (the multiclass Brier score, in [0, 2]).

    Example:
        >>> import torch
        >>> brier(torch.tensor([0.5, 1.0]), torch.tensor([1, 1]))   # binary: p(class 1)
        0.25
    """
    probs, labels = _as_probs(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(torch.float64)
    return float(((probs.double() - onehot) ** 2).sum(-1).mean())


@dataclass(frozen=True)
class Reliability:
    """Per-bin statistics of a reliability diagram (``n_bins`` equal-width confidence bins).

    Attributes:
        edges: the bin edges, ``(n_bins + 1,)``.
        counts: examples per bin.
        accuracy: accuracy per bin (NaN for an empty bin).
        confidence: mean confidence per bin (NaN for an empty bin).

    Example:
        >>> import torch
        >>> rel = reliability(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([1, 0, 0]), n_bins=2)
        >>> rel.counts.tolist(), round(rel.ece, 4)
        ([0.0, 3.0], 0.1333)
    """

    edges: Tensor
    counts: Tensor
    accuracy: Tensor
    confidence: Tensor

    @property
    def ece(self) -> float:
        """Σ_b |B_b|/n · |acc_b − conf_b| (empty bins contribute nothing).

        Example:
            >>> import torch
            >>> rel = reliability(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([1, 0, 0]), n_bins=2)
            >>> round(rel.ece, 4)   # one bin: confidences 0.7, 0.8, 0.9, accuracy 2/3
            0.1333
        """
        n = self.counts.sum()
        gap = (self.accuracy - self.confidence).abs().nan_to_num(0.0)
        return float((self.counts * gap).sum() / n)


def reliability(probs: Tensor, labels: Tensor, *, n_bins: int = 15) -> Reliability:
    """Bin the confidences max_k p_ik into ``n_bins`` equal-width bins of [0, 1] (an edge value
    goes to the upper bin, 1.0 to the last) and return accuracy and confidence per bin.

    Example:
        >>> import torch
        >>> probs, labels = torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0])
        >>> rel = reliability(probs, labels, n_bins=2)
        >>> rel.edges.tolist(), rel.counts.tolist(), rel.accuracy.tolist()
        ([0.0, 0.5, 1.0], [0.0, 2.0], [nan, 0.5])
    """
    probs, labels = _as_probs(probs, labels)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    idx = (conf * n_bins).floor().long().clamp(0, n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins).double()
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    empty = counts == 0
    acc = torch.where(empty, math.nan, acc_sum / counts.clamp_min(1))
    mean_conf = torch.where(empty, math.nan, conf_sum / counts.clamp_min(1))
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return Reliability(edges, counts, acc, mean_conf)


def ece(probs: Tensor, labels: Tensor, *, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (module docstring).

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
        >>> y = torch.tensor([0, 1, 1, 0])
        >>> round(ece(p, y, n_bins=10), 4)   # 0.9-bin: ½·|0.5 − 0.9|; 0.6/0.7: ½·|1 − 0.65|
        0.375
    """
    return reliability(probs, labels, n_bins=n_bins).ece


def reliability_diagram(
    curves: dict[str, tuple[Tensor, Tensor]],
    path: str | Path,
    *,
    n_bins: int = 15,
    title: str = "Reliability diagram",
) -> Path:
    """Write a reliability diagram (accuracy against confidence per bin, one line per entry of
    ``curves``: name → (probs, labels); the diagonal is perfect calibration; ECE in the legend)
    as a PNG at ``path``. Needs matplotlib (the ``examples`` extra). Returns the path.

    Example:
        >>> import tempfile, torch
        >>> p, y = torch.tensor([0.9, 0.8, 0.3, 0.6]), torch.tensor([1, 0, 0, 1])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     png = reliability_diagram({"model": (p, y)}, f"{tmp}/rel.png", n_bins=5)
        ...     png.stat().st_size > 0
        True
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reliability_diagram needs matplotlib: pip install 'bayesian-learning-rule[examples]'"
        ) from exc
    if not curves:
        raise ValueError("curves is empty: give at least one name → (probs, labels)")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
    for name, (probs, labels) in curves.items():
        rel = reliability(probs, labels, n_bins=n_bins)
        keep = rel.counts > 0
        ax.plot(
            rel.confidence[keep].numpy(),
            rel.accuracy[keep].numpy(),
            marker="o",
            markersize=3,
            label=f"{name} (ECE {rel.ece:.3f})",
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- regression
def _regression_inputs(mean: Tensor, y: Tensor, var: Tensor | None = None) -> None:
    if mean.shape != y.shape:
        raise ValueError(f"y must have the shape of mean {tuple(mean.shape)}, got {tuple(y.shape)}")
    if mean.numel() == 0:
        raise ValueError("mean is empty")
    if var is not None:
        if var.shape != mean.shape:
            raise ValueError(
                f"var must have the shape of mean {tuple(mean.shape)}, got {tuple(var.shape)}"
            )
        if not bool((var > 0).all()):
            raise ValueError("var must be positive")


def rmse(mean: Tensor, y: Tensor) -> float:
    """Root mean squared error √((1/n)Σ(mean_i − y_i)²).

    Example:
        >>> import torch
        >>> round(rmse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])), 12)   # √2
        1.414213562373
    """
    _regression_inputs(mean, y)
    return float(((mean.double() - y.double()) ** 2).mean().sqrt())


def gaussian_log_likelihood(mean: Tensor, var: Tensor, y: Tensor) -> float:
    """Mean test log-likelihood (1/n)Σ log N(y_i | mean_i, var_i) of a Gaussian predictive.

    Example:
        >>> import torch
        >>> round(gaussian_log_likelihood(torch.zeros(1), torch.ones(1), torch.zeros(1)), 6)
        -0.918939
    """
    _regression_inputs(mean, y, var)
    m, v, t = mean.double(), var.double(), y.double()
    return float((-0.5 * (math.log(2 * math.pi) + v.log() + (t - m) ** 2 / v)).mean())


def interval_coverage(mean: Tensor, var: Tensor, y: Tensor, *, level: float = 0.95) -> float:
    """Fraction of targets inside the central ``level`` interval mean ± z·√var of a Gaussian
    predictive (z the standard normal quantile of (1 + level)/2).

    Example:
        >>> import torch
        >>> mean, var = torch.zeros(4), torch.ones(4)
        >>> interval_coverage(mean, var, torch.tensor([0.5, -1.0, 1.5, 3.0]))   # |y| ≤ 1.96
        0.75
    """
    _regression_inputs(mean, y, var)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    z = (
        math.sqrt(2.0)
        * torch.special.erfinv(torch.tensor(float(level), dtype=torch.float64)).item()
    )
    inside = (y.double() - mean.double()).abs() <= z * var.double().sqrt()
    return float(inside.double().mean())
