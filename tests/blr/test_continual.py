"""blr.continual: VCL with the generic optimizer is exact for conjugate Bayesian linear
regression; a K-prior over all past inputs reproduces batch retraining of logistic regression;
the EWC penalty; bad input."""

from __future__ import annotations

import pytest
import torch

import blr
import expfam
from blr.continual import KPrior, WeightPrior, vcl_prior
from blr.optim import BLROptimizer

f64 = torch.float64
D, SIGMA2 = 3, 0.5


def _tasks(seed=0, sizes=(8, 11, 6)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g, dtype=f64)
    out = []
    for n in sizes:
        x = torch.randn(n, D, generator=g, dtype=f64)
        out.append((x, x @ w + 0.4 * torch.randn(n, generator=g, dtype=f64)))
    return out


def test_vcl_sequential_conjugate_regression_equals_the_batch_posterior():
    """Three tasks in turn, each with the last posterior as its prior (vcl_prior), one exact
    Newton step (ρ = 1, the gradient and exact Hessian at the mean) per task: the last
    posterior is the posterior of all the data (closed form) within 1e-10."""
    tasks = _tasks()
    model = torch.nn.Linear(D, 1, bias=False).double()
    fam, delta = expfam.FullGaussian(), 2.0
    prior = blr.ParameterPosterior(
        fam, fam.from_moments(torch.zeros(D, dtype=f64), delta * torch.eye(D, dtype=f64)), model
    )
    for x, y in tasks:
        opt = BLROptimizer(model.parameters(), fam, lr=1.0, ess=1.0, prior=vcl_prior(prior, model),
                           estimator=blr.Delta("exact"),
                           gaussian=blr.GaussianOptions(improved=False), seed=0)  # fmt: skip
        with opt.sampled_params(train=True):
            opt.zero_grad()
            (0.5 * ((model(x).squeeze(-1) - y) ** 2).sum() / SIGMA2).backward(create_graph=True)
        opt.step()
        prior = opt.posterior(model)
    xs, ys = torch.cat([x for x, _ in tasks]), torch.cat([y for _, y in tasks])
    prec = delta * torch.eye(D, dtype=f64) + xs.T @ xs / SIGMA2
    mean = torch.linalg.solve(prec, xs.T @ ys / SIGMA2)
    m, s = fam.to_moments(prior.nat)
    assert float((m - mean).abs().max()) <= 1e-10 and float((s - prec).abs().max()) <= 1e-10


def _logistic_data(seed=1, n=60):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n, D - 1, generator=g, dtype=f64), torch.ones(n, 1, dtype=f64)], 1)
    p = torch.sigmoid(x @ torch.tensor([1.5, -2.0, 0.3], dtype=f64))
    return x, (torch.rand(n, generator=g, dtype=f64) < p).to(f64)


def _bce(model, x, y):
    return torch.nn.functional.binary_cross_entropy_with_logits(
        model(x).squeeze(-1), y, reduction="sum"
    )


def _minimize(model, objective):
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-13,
                            tolerance_change=1e-16, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("memory", ["all", "half"])
def test_a_k_prior_over_all_past_inputs_reproduces_batch_retraining(memory):
    """Logistic regression trained on A (prior ½δ‖θ‖²), then on new data B with the K-prior of
    the A-model over a memory of A's inputs: with all of them the optimum is the batch optimum
    on A ∪ B within 1e-6 (the K-prior's gradient is the old loss's exactly); with half of them
    it is not (> 1e-3: the check can fail)."""
    delta = 0.5
    xa, ya = _logistic_data(1)
    xb, yb = _logistic_data(2, n=40)
    model = torch.nn.Linear(D, 1, bias=False).double()
    sq = lambda: 0.5 * delta * sum((p * p).sum() for p in model.parameters())  # noqa: E731
    _minimize(model, lambda: _bce(model, xa, ya) + sq())
    kprior = KPrior(model, xa if memory == "all" else xa[:30], "bce_with_logits", delta)
    theta_k = _minimize(model, lambda: kprior() + _bce(model, xb, yb))
    batch = torch.nn.Linear(D, 1, bias=False).double()
    sqb = lambda: 0.5 * delta * sum((p * p).sum() for p in batch.parameters())  # noqa: E731
    theta_batch = _minimize(batch, lambda: _bce(batch, xa, ya) + _bce(batch, xb, yb) + sqb())
    gap = float((theta_k - theta_batch).abs().max())
    if memory == "all":
        assert gap <= 1e-6, gap
    else:
        assert gap > 1e-3, gap


def test_the_ewc_penalty_and_its_decay():
    model = torch.nn.Linear(D, 1, bias=False).double()
    fam = expfam.FullGaussian()
    a = torch.randn(D, D, dtype=f64, generator=torch.Generator().manual_seed(3))
    prec, mean = a @ a.T + torch.eye(D, dtype=f64), torch.randn(D, dtype=f64)
    penalty = WeightPrior(blr.ParameterPosterior(fam, fam.from_moments(mean, prec), model), model,
                          weight=3.0)  # fmt: skip
    r = model.weight.detach().reshape(-1) - mean
    torch.testing.assert_close(penalty(), 1.5 * r @ prec @ r)
    torch.testing.assert_close(penalty.decayed(0.5)(), 0.75 * r @ prec @ r)
    penalty().backward()
    torch.testing.assert_close(model.weight.grad.reshape(-1), 3.0 * prec @ r)


def test_bad_input_names_the_argument():
    model, other = torch.nn.Linear(D, 1, bias=False).double(), torch.nn.Linear(2, 1).double()
    fam = expfam.DiagGaussian()
    q = blr.ParameterPosterior(fam, fam.from_moments(torch.zeros(3, dtype=f64),
                                                     torch.ones(3, dtype=f64)), other)  # fmt: skip
    with pytest.raises(ValueError, match="posterior is a posterior over another model"):
        vcl_prior(q, model)
    with pytest.raises(TypeError, match=r"posterior must be a blr\.ParameterPosterior"):
        vcl_prior(torch.zeros(3), model)
    with pytest.raises(ValueError, match="memory must be a tensor of at least one example"):
        KPrior(model, torch.zeros(0, D, dtype=f64), "bce_with_logits", 0.1)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        KPrior(model, torch.zeros(2, D, dtype=f64), "hinge", 0.1)
    nat = fam.from_moments(torch.zeros(3, dtype=f64), torch.ones(3, dtype=f64))
    mine = blr.ParameterPosterior(fam, nat, model)
    with pytest.raises(ValueError, match="weight must be ≥ 0"):
        WeightPrior(mine, model, weight=-1.0)
    with pytest.raises(ValueError, match="gamma must lie in"):
        WeightPrior(mine, model).decayed(2.0)


def test_fromp_with_as_many_independent_points_as_weights_is_the_weight_space_penalty():
    """For a linear model f = Φθ (a Gaussian likelihood), FROMP's ½(f − f_old)ᵀ(ΦΣΦᵀ)⁻¹(f − f_old)
    over P independent memorable points equals the weight-space penalty ½(θ − θ_old)ᵀΣ⁻¹(θ −
    θ_old) (the EWC/Laplace term of the same posterior) within 1e-10, at any θ; with fewer
    points it is smaller (the function space constrains fewer directions); with none it is 0."""
    from blr.continual import FunctionalPrior

    g = torch.Generator().manual_seed(4)
    model = torch.nn.Linear(D, 1, bias=False).double()
    fam = expfam.FullGaussian()
    a = torch.randn(D, D, generator=g, dtype=f64)
    prec = a @ a.T + torch.eye(D, dtype=f64)
    theta_old = model.weight.detach().reshape(-1).clone()
    q = blr.ParameterPosterior(fam, fam.from_moments(theta_old, prec), model)
    memory = torch.randn(D, D, generator=g, dtype=f64)
    fromp = FunctionalPrior(model, memory, q, "gaussian", jitter=0.0)
    fewer = FunctionalPrior(model, memory[:2], q, "gaussian", jitter=0.0)
    none = FunctionalPrior(model, memory[:0], q, "gaussian")
    ewc = WeightPrior(q, model)
    with torch.no_grad():
        model.weight.add_(torch.randn(1, D, generator=g, dtype=f64))
    with torch.no_grad():
        values = [float(r()) for r in (fromp, ewc, fewer, none)]
    assert abs(values[0] - values[1]) <= 1e-10 * values[1]
    assert values[2] < values[1] and values[3] == 0.0


def test_memorable_points_are_the_most_curved():
    from blr.continual import memorable_points

    model = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    x = torch.tensor([[4.0], [0.0], [-0.5], [2.0]], dtype=f64)
    assert memorable_points(model, x, "bce_with_logits", 3).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="k must be an integer"):
        memorable_points(model, x, "bce_with_logits", 5)


@pytest.mark.parametrize("task", ["remove_data", "change_regularizer"])
def test_k_prior_tasks_remove_data_and_change_the_regularizer(task):
    """Khan & Swaroop's other adaptation tasks with the same K-prior (memory = all of A):
    removing examples R (objective 𝒦 − Σ_R ℓ) gives batch training on A \\ R, changing the
    regularizer δ → δ' (objective 𝒦 − ½δ‖θ‖² + ½δ'‖θ‖²) gives batch training with δ'; both
    within 1e-6."""
    delta, new_delta = 0.5, 2.0
    xa, ya = _logistic_data(1)
    model = torch.nn.Linear(D, 1, bias=False).double()
    sq = lambda: 0.5 * sum((p * p).sum() for p in model.parameters())  # noqa: E731
    _minimize(model, lambda: _bce(model, xa, ya) + delta * sq())
    kprior = KPrior(model, xa, "bce_with_logits", delta)
    batch = torch.nn.Linear(D, 1, bias=False).double()
    sqb = lambda: 0.5 * sum((p * p).sum() for p in batch.parameters())  # noqa: E731
    if task == "remove_data":
        theta = _minimize(model, lambda: kprior() - _bce(model, xa[:10], ya[:10]))
        ref = _minimize(batch, lambda: _bce(batch, xa[10:], ya[10:]) + delta * sqb())
    else:
        theta = _minimize(model, lambda: kprior() + (new_delta - delta) * sq())
        ref = _minimize(batch, lambda: _bce(batch, xa, ya) + new_delta * sqb())
    assert float((theta - ref).abs().max()) <= 1e-6
