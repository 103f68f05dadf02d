"""Metrics against hand-computed cases and scikit-learn / scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import brier_score_loss, log_loss

from blr import metrics

F64 = torch.float64


def test_hand_computed_case():
    p = torch.tensor(
        [[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.05, 0.9, 0.05]], dtype=F64
    )
    y = torch.tensor([0, 2, 2, 1])
    assert metrics.accuracy(p, y) == 0.75  # row 2 predicts class 1
    want_nll = -(math.log(0.7) + math.log(0.4) + math.log(0.4) + math.log(0.9)) / 4
    assert metrics.nll(p, y) == pytest.approx(want_nll, abs=1e-15)
    want_brier = (
        (0.3**2 + 0.2**2 + 0.1**2)
        + (0.1**2 + 0.5**2 + 0.6**2)
        + (0.3**2 + 0.3**2 + 0.6**2)
        + (0.05**2 + 0.1**2 + 0.05**2)
    ) / 4
    assert metrics.brier(p, y) == pytest.approx(want_brier, abs=1e-15)
    # ECE with 10 bins: confidences 0.7 (correct), 0.5 (wrong), 0.4 (correct), 0.9 (correct)
    want_ece = (abs(1 - 0.7) + abs(0 - 0.5) + abs(1 - 0.4) + abs(1 - 0.9)) / 4
    assert metrics.ece(p, y, n_bins=10) == pytest.approx(want_ece, abs=1e-15)
    # one bin: |accuracy − mean confidence|
    assert metrics.ece(p, y, n_bins=1) == pytest.approx(abs(0.75 - (0.7 + 0.5 + 0.4 + 0.9) / 4))


def test_against_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 5)) * 2
    p = torch.softmax(torch.tensor(logits), -1)
    y = torch.tensor(rng.integers(0, 5, 200))
    assert metrics.nll(p, y) == pytest.approx(log_loss(y.numpy(), p.numpy(), labels=range(5)))
    q = torch.tensor(rng.uniform(size=300))
    yb = torch.tensor(rng.integers(0, 2, 300))
    # binary probabilities of class 1: our multiclass Brier is twice sklearn's binary one
    assert metrics.brier(q, yb) == pytest.approx(2 * brier_score_loss(yb.numpy(), q.numpy()))
    assert metrics.accuracy(q, yb) == pytest.approx(float(((q > 0.5).long() == yb).double().mean()))


def test_reliability_bins_and_perfect_calibration():
    rel = metrics.reliability(
        torch.tensor([[0.95, 0.05]] * 20, dtype=F64), torch.tensor([0] * 19 + [1])
    )
    assert rel.counts.tolist() == [0.0] * 14 + [20.0]
    assert rel.accuracy[-1] == pytest.approx(0.95) and rel.ece == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(rel.accuracy[0])
    # a confidence of exactly 1 lands in the last bin
    assert metrics.reliability(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).counts[-1] == 1


def test_reliability_diagram_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    p = torch.softmax(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)), -1)
    y = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(1))
    out = metrics.reliability_diagram(
        {"a": (p, y), "b": (p**2 / (p**2).sum(-1, True), y)}, tmp_path / "rel.png"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_metrics_against_scipy():
    rng = np.random.default_rng(1)
    mean, y = torch.tensor(rng.normal(size=100)), torch.tensor(rng.normal(size=100))
    var = torch.tensor(rng.uniform(0.5, 2.0, size=100))
    assert metrics.rmse(mean, y) == pytest.approx(float(((mean - y) ** 2).mean().sqrt()))
    want = stats.norm.logpdf(y.numpy(), mean.numpy(), np.sqrt(var.numpy())).mean()
    assert metrics.gaussian_log_likelihood(mean, var, y) == pytest.approx(want, abs=1e-12)
    z = (y - mean).abs() / var.sqrt()
    for level in (0.5, 0.9, 0.95):
        want = float((z <= stats.norm.ppf((1 + level) / 2)).double().mean())
        assert metrics.interval_coverage(mean, var, y, level=level) == pytest.approx(want)


def test_errors_name_the_argument():
    p, y = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    with pytest.raises(ValueError, match="labels"):
        metrics.nll(p, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        metrics.nll(p, torch.tensor([2]))
    with pytest.raises(ValueError, match="probs"):
        metrics.brier(torch.tensor([[1.5, -0.5]]), y)
    with pytest.raises(ValueError, match="n_bins"):
        metrics.ece(p, y, n_bins=0)
    with pytest.raises(ValueError, match="var"):
        metrics.gaussian_log_likelihood(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.zeros(2))
    with pytest.raises(ValueError, match="level"):
        metrics.interval_coverage(torch.zeros(2), torch.ones(2), torch.zeros(2), level=1.0)
    with pytest.raises(ValueError, match="y must"):
        metrics.rmse(torch.zeros(2), torch.zeros(3))
