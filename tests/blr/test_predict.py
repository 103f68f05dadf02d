"""Predictive averaging: equals the hand-written average, leaves the parameters exactly as found,
and splits regression variance into aleatoric and epistemic parts."""

from __future__ import annotations

import pytest
import torch

import expfam
from blr.optim import IVON, VOGN
from blr.posterior import ParameterPosterior
from blr.predict import predict_classification, predict_regression


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("make", ["ivon", "vogn", "parameter"])
def test_average_equals_the_manual_one_and_restores_the_parameters(make):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(30, 4)
    if make == "ivon":
        post = IVON(model.parameters(), lr=0.1, ess=20, hess_init=0.3, seed=1)
        post_twin = IVON(model.parameters(), lr=0.1, ess=20, hess_init=0.3, seed=1)
    elif make == "vogn":
        post = VOGN(model.parameters(), lr=0.1, ess=20, seed=1, curvature="ef", model=model)
        post_twin = VOGN(model.parameters(), lr=0.1, ess=20, seed=1, curvature="ef", model=model)
    else:
        fam = expfam.DiagGaussian()
        nat = fam.from_moments(_flat(model), torch.full((_flat(model).numel(),), 4.0))
        post = ParameterPosterior(fam, nat, model, generator=torch.Generator().manual_seed(1))
        post_twin = ParameterPosterior(fam, nat, model, generator=torch.Generator().manual_seed(1))
    before = _flat(model)
    pred = predict_classification(model, post, x, n_samples=5, batch_size=7, keep_samples=True)
    assert torch.equal(_flat(model), before)  # exactly the mean again
    manual = []
    with torch.no_grad():
        for _ in range(5):
            with post_twin.sampled_params():
                manual.append(torch.softmax(model(x), -1))
    torch.testing.assert_close(pred.probs, torch.stack(manual).mean(0), rtol=0, atol=1e-6)
    assert pred.samples.shape == (5, 30, 3)
    assert not torch.allclose(pred.samples[0], pred.samples[1])  # the draws differ
    at_mean = predict_classification(model, post, x, n_samples=0)
    with torch.no_grad():
        torch.testing.assert_close(at_mean.log_probs, torch.log_softmax(model(x), -1))


def test_bernoulli_and_a_raising_model_restore_exactly():
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1).double()
    post = IVON(model.parameters(), lr=0.1, ess=10, seed=0)
    x = torch.randn(6, 3, dtype=torch.float64)
    pred = predict_classification(model, post, x, n_samples=3, likelihood="bernoulli")
    assert pred.probs.shape == (6, 2)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(6, dtype=torch.float64))
    before = _flat(model)

    def broken(inp):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        predict_classification(broken, post, x, n_samples=2)
    assert torch.equal(_flat(model), before)


def test_regression_split_and_heteroscedastic_outputs():
    torch.manual_seed(2)
    model = torch.nn.Linear(2, 1).double()
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(_flat(model), torch.full((3,), 9.0, dtype=torch.float64))
    gen = torch.Generator().manual_seed(3)
    post = ParameterPosterior(fam, nat, model, generator=gen)
    x = torch.randn(10, 2, dtype=torch.float64)
    pred = predict_regression(model, post, x, n_samples=4, noise_var=0.3, keep_samples=True)
    draws = pred.samples
    torch.testing.assert_close(pred.mean, draws.mean(0))
    torch.testing.assert_close(pred.epistemic, draws.var(0, unbiased=False))
    torch.testing.assert_close(pred.var, pred.epistemic + 0.3)
    hetero = torch.nn.Linear(2, 2).double()
    out = predict_regression(hetero, None, x, n_samples=0)
    with torch.no_grad():
        torch.testing.assert_close(out.aleatoric, hetero(x)[:, 1].exp())
    assert torch.equal(out.epistemic, torch.zeros(10, dtype=torch.float64))


def test_errors_name_the_argument():
    model = torch.nn.Linear(2, 3)
    x = torch.randn(4, 2)
    with pytest.raises(TypeError, match="posterior"):
        predict_classification(model, object(), x, n_samples=2)
    with pytest.raises(ValueError, match="n_samples"):
        predict_classification(model, None, x, n_samples=-1)
    with pytest.raises(ValueError, match="likelihood"):
        predict_classification(model, None, x, n_samples=0, likelihood="poisson")
    with pytest.raises(ValueError, match="batch_size"):
        predict_classification(model, None, x, n_samples=0, batch_size=0)
    with pytest.raises(ValueError, match="bernoulli"):
        predict_classification(model, None, x, n_samples=0, likelihood="bernoulli")
    with pytest.raises(ValueError, match="noise_var"):
        predict_regression(model, None, x, n_samples=0)
    fam = expfam.DiagGaussian()
    with pytest.raises(ValueError, match="nat"):
        ParameterPosterior(fam, fam.from_moments(torch.zeros(4), torch.ones(4)), model)
