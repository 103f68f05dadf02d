"""blr.merge: uncertainty-based gradient matching is the joint posterior for quadratic task
losses (Bayesian linear regression per task with a shared Gaussian prior), against the closed
form; the special cases; bad input."""

from __future__ import annotations

import pytest
import torch

import expfam
from blr import ParameterPosterior
from blr.merge import average, fisher_average, gradient_matching, task_arithmetic

f64 = torch.float64
D, SIGMA2 = 4, 0.5


def _problem(seed=0, tasks=3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=f64)
    h0 = a @ a.T / D + torch.eye(D, dtype=f64)  # a full prior precision (every entry matters)
    mu0 = torch.randn(D, generator=g, dtype=f64)
    data = []
    for t in range(tasks):
        x = torch.randn(5 + 3 * t, D, generator=g, dtype=f64)
        y = x @ torch.randn(D, generator=g, dtype=f64) + 0.3 * torch.randn(len(x), generator=g,
                                                                         dtype=f64)  # fmt: skip
        data.append((x, y))
    return h0, mu0, data


def _posterior(h0, mu0, data):
    """The conjugate posterior of Bayesian linear regression: precision H₀ + Σ XᵀX/σ², mean
    its inverse times H₀μ₀ + Σ Xᵀy/σ² (the independent oracle)."""
    prec = h0 + sum(x.T @ x for x, _ in data) / SIGMA2
    mean = torch.linalg.solve(prec, h0 @ mu0 + sum(x.T @ y for x, y in data) / SIGMA2)
    return mean, prec


def _q(family, mean, prec, model):
    return ParameterPosterior(family, family.from_moments(mean, prec), model)


def test_gradient_matching_is_the_joint_posterior_for_quadratic_losses():
    """Fine-tune from the prior on each of 3 tasks (each task's conjugate posterior), merge:
    the merged mean and precision equal the posterior of all the data within 1e-10."""
    h0, mu0, data = _problem()
    model = torch.nn.Linear(D, 1, bias=False).double()
    fam = expfam.FullGaussian()
    base = _q(fam, mu0, h0, model)
    tasks = [_q(fam, *_posterior(h0, mu0, [d]), model) for d in data]
    merged = gradient_matching(base, tasks)
    mean, prec = _posterior(h0, mu0, data)
    m, s = fam.to_moments(merged.nat)
    assert float((m - mean).abs().max()) <= 1e-10
    assert float((s - prec).abs().max()) <= 1e-10
    # the merges without the base's precision are not the joint posterior here
    for other in (average(tasks), fisher_average(tasks), task_arithmetic(base, tasks, 1.0)):
        assert float((other - mean).abs().max()) > 1e-3


def test_gradient_matching_with_diagonal_posteriors_and_weights():
    """Diagonal Gaussians (a diagonal quadratic per task: exact too), with task weights α_t:
    the joint posterior of the α-weighted losses."""
    g = torch.Generator().manual_seed(3)
    model = torch.nn.Linear(D, 1, bias=False).double()
    fam = expfam.DiagGaussian()
    h0, mu0 = torch.rand(D, generator=g, dtype=f64) + 0.5, torch.randn(D, generator=g, dtype=f64)
    a = [torch.rand(D, generator=g, dtype=f64) * 3 for _ in range(3)]  # task curvatures
    c = [torch.randn(D, generator=g, dtype=f64) for _ in range(3)]  # task minima
    alphas = [1.0, 0.5, 2.0]
    tasks = [_q(fam, (h0 * mu0 + at * ct) / (h0 + at), h0 + at, model) for at, ct in zip(a, c)]
    merged = gradient_matching(_q(fam, mu0, h0, model), tasks, alphas)
    prec = h0 + sum(al * at for al, at in zip(alphas, a))
    mean = (h0 * mu0 + sum(al * at * ct for al, at, ct in zip(alphas, a, c))) / prec
    torch.testing.assert_close(merged.mean(), mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(-2 * merged.nat.lam2, prec, rtol=0, atol=1e-12)


def test_the_special_cases():
    """With H₀ → 0 gradient matching is Fisher averaging; with equal identity curvatures and
    α_t = 1/T it is averaging; task arithmetic is θ₀ + αΣ(θ_t − θ₀)."""
    g = torch.Generator().manual_seed(5)
    model = torch.nn.Linear(D, 1, bias=False).double()
    fam = expfam.DiagGaussian()
    means = [torch.randn(D, generator=g, dtype=f64) for _ in range(3)]
    precs = [torch.rand(D, generator=g, dtype=f64) + 0.1 for _ in range(3)]
    tasks = [_q(fam, m, p, model) for m, p in zip(means, precs)]
    tiny = _q(fam, torch.zeros(D, dtype=f64), torch.full((D,), 1e-12, dtype=f64), model)
    torch.testing.assert_close(gradient_matching(tiny, tasks).mean(), fisher_average(tasks),
                               rtol=1e-9, atol=1e-9)  # fmt: skip
    ones = [_q(fam, m, torch.ones(D, dtype=f64), model) for m in means]
    torch.testing.assert_close(gradient_matching(tiny, ones, [1 / 3] * 3).mean(),
                               average(ones), rtol=1e-9, atol=1e-9)  # fmt: skip
    torch.testing.assert_close(task_arithmetic(torch.zeros(D, dtype=f64), means, 1.0),
                               sum(means))  # fmt: skip


def test_bad_input_names_the_argument():
    model, other = torch.nn.Linear(D, 1, bias=False).double(), torch.nn.Linear(3, 1).double()
    fam = expfam.DiagGaussian()
    q = _q(fam, torch.zeros(D, dtype=f64), torch.ones(D, dtype=f64), model)
    nat4 = fam.from_moments(torch.zeros(4, dtype=f64), torch.ones(4, dtype=f64))
    foreign = ParameterPosterior(fam, nat4, other)
    with pytest.raises(ValueError, match="tasks must hold at least one"):
        gradient_matching(q, [])
    with pytest.raises(ValueError, match=r"tasks\[0\] is a posterior over another model"):
        gradient_matching(q, [foreign])
    with pytest.raises(ValueError, match="alphas must give one weight per task"):
        gradient_matching(q, [q, q], [1.0])
    bern = ParameterPosterior(expfam.Bernoulli("pm1"), expfam.BernoulliNat(
        torch.zeros(D, dtype=f64)), model)  # fmt: skip
    with pytest.raises(ValueError, match="tasks\\[0\\] is a posterior of another family"):
        gradient_matching(q, [bern])
    with pytest.raises(TypeError, match=r"base must be a blr\.ParameterPosterior"):
        gradient_matching(torch.zeros(D), [q])


def test_models_of_another_architecture_are_refused_by_every_merge():
    """A model of another architecture, as a posterior or as a flat vector, is refused naming
    its place in the arguments (it used to fail deep in torch's broadcasting, or not at all)."""
    from blr.merge import average, fisher_average, gradient_matching, task_arithmetic
    from blr.optim import IVON

    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(2, 1)
    qa = IVON(a.parameters(), lr=0.1, ess=10).posterior(a)
    qb = IVON(b.parameters(), lr=0.1, ess=10).posterior(b)
    with pytest.raises(ValueError, match=r"tasks\[1\] is a posterior over another model"):
        gradient_matching(qa, [qa, qb])
    with pytest.raises(ValueError, match=r"tasks\[1\] is a posterior over another model"):
        fisher_average([qa, qb])
    with pytest.raises(ValueError, match=r"tasks\[0\] is a posterior over another model"):
        task_arithmetic(qa, [qb], 0.5)
    with pytest.raises(ValueError, match=r"tasks\[1\] is a posterior over another model"):
        average([qa, qb])
    with pytest.raises(ValueError, match=r"tasks\[1\] has 3 parameters, tasks\[0\] 4"):
        average([torch.zeros(4), torch.zeros(3)])
    with pytest.raises(ValueError, match=r"tasks\[0\] has 3 parameters, base 4"):
        task_arithmetic(torch.zeros(4), [torch.zeros(3)], 1.0)
    with pytest.raises(TypeError, match=r"tasks\[0\] must be a blr.ParameterPosterior"):
        average([[0.0, 1.0]])
    with pytest.raises(ValueError, match="must be a flat"):
        average([torch.zeros(2, 2)])
