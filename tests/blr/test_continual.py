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


# ------------------------------------------------------------ multi-head and the Laplace diag
def _two_layer(seed=5, outputs=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, outputs)
    ).double()


def test_diag_laplace_is_the_diagonal_of_nn_laplace():
    """diag_laplace (PerExample, in batches) equals NNLaplace(structure="diag") (per-example
    Jacobians) within 1e-12, for a softmax and a binary likelihood; the mean is θ*."""
    from blr.continual import diag_laplace
    from blr.nn_laplace import NNLaplace

    model = _two_layer()
    x = torch.randn(37, 3, dtype=f64, generator=torch.Generator().manual_seed(6))
    q = diag_laplace(model, x, "cross_entropy", 0.7, batch_size=10)
    ref = NNLaplace(model, likelihood="classification", structure="diag", prior_prec=0.7)
    ref.fit(x, torch.randint(0, 4, (37,)))
    mean, prec = q.family.to_moments(q.nat)
    torch.testing.assert_close(prec, ref.posterior_precision, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        mean, torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    )
    one = _two_layer(outputs=1)
    qb = diag_laplace(one, x, "bce_with_logits", torch.full((26,), 0.3, dtype=f64))
    refb = NNLaplace(one, likelihood="binary", structure="diag", prior_prec=0.3)
    refb.fit(x, torch.randint(0, 2, (37,)).to(f64))
    torch.testing.assert_close(qb.family.to_moments(qb.nat)[1], refb.posterior_precision,
                               rtol=0, atol=1e-12)  # fmt: skip


def test_a_selected_head_is_the_laplace_of_the_single_head_model():
    """select = the columns 2:4 of a 4-output layer: the shared layers' precisions equal the
    two-output model's (its last layer those two rows), the other head's rows keep δ."""
    from blr.continual import diag_laplace
    from blr.nn_laplace import NNLaplace

    model = _two_layer()
    x = torch.randn(29, 3, dtype=f64, generator=torch.Generator().manual_seed(7))
    q = diag_laplace(model, x, "cross_entropy", 0.7, select=lambda out: out[:, 2:4])
    prec = q.family.to_moments(q.nat)[1]
    sub = torch.nn.Sequential(model[0], model[1], torch.nn.Linear(5, 2).double())
    with torch.no_grad():
        sub[2].weight.copy_(model[2].weight[2:4])
        sub[2].bias.copy_(model[2].bias[2:4])
    ref = NNLaplace(sub, likelihood="classification", structure="diag", prior_prec=0.7)
    ref = ref.fit(x, torch.randint(0, 2, (29,))).posterior_precision
    shared = 3 * 5 + 5
    w, b = prec[shared : shared + 20].view(4, 5), prec[shared + 20 :]
    torch.testing.assert_close(prec[:shared], ref[:shared], rtol=0, atol=1e-12)
    torch.testing.assert_close(w[2:].reshape(-1), ref[shared : shared + 10], rtol=0, atol=1e-12)
    torch.testing.assert_close(b[2:], ref[shared + 10 :], rtol=0, atol=1e-12)
    assert bool((w[:2] == 0.7).all() and (b[:2] == 0.7).all())


@pytest.mark.parametrize("kernel", ["per_output", "full"])
def test_fromp_on_a_head_is_the_formula_with_autograd_jacobians(kernel):
    """FunctionalPrior with select (a head of a multi-head model) and a diagonal posterior equals
    ½τ Σ_c r_cᵀ(J_cΣJ_cᵀ + εI)⁻¹r_c (per output) or ½τ rᵀ(JΣJᵀ + εI)⁻¹r (full) with J from
    torch.autograd.functional.jacobian of the head's softmax probabilities, at a moved θ."""
    from blr.continual import FunctionalPrior

    model = _two_layer(outputs=5)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 3, dtype=f64, generator=g)
    sel = lambda out: out[:, 1:4]  # noqa: E731
    fam, n = expfam.DiagGaussian(), sum(p.numel() for p in model.parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    prec = 0.5 + torch.rand(n, dtype=f64, generator=g)
    q = blr.ParameterPosterior(fam, fam.from_moments(theta, prec), model)
    jitter = 1e-3 if kernel == "full" else 1e-9  # the softmax's full kernel is singular
    reg = FunctionalPrior(model, x, q, "cross_entropy", tau=3.0, jitter=jitter, select=sel,
                          kernel=kernel)  # fmt: skip

    def probs(flat):
        out, i = x, 0
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                wn, bn = layer.weight.numel(), layer.bias.numel()
                w = flat[i : i + wn].view_as(layer.weight)
                out = out @ w.T + flat[i + wn : i + wn + bn]
                i += wn + bn
            else:
                out = layer(out)
        return torch.softmax(sel(out), -1)  # (M, C)

    jac = torch.autograd.functional.jacobian(probs, theta)  # (M, C, P)
    f_old = probs(theta)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=f64, generator=g))
    moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    r = probs(moved) - f_old
    if kernel == "per_output":
        expected = 0.0
        for c in range(3):
            k = jac[:, c] / prec @ jac[:, c].T + jitter * torch.eye(4, dtype=f64)
            expected += r[:, c] @ torch.linalg.solve(k, r[:, c])
    else:
        jf, rf = jac.reshape(12, n), r.reshape(12)
        expected = rf @ torch.linalg.solve(jf / prec @ jf.T + jitter * torch.eye(12, dtype=f64), rf)
    torch.testing.assert_close(reg().detach(), 1.5 * expected, rtol=1e-9, atol=0)
    assert reg.kernel == kernel


def test_k_prior_on_a_head_and_its_weight_tau():
    """KPrior(select, tau): τ·Σ_i BCE(ŷ_i, f_i(θ)) on the head's logits + ½δ‖θ − θ_old‖², with
    the soft labels ŷ the head's old probabilities; memorable_points ranks by the head."""
    from blr.continual import memorable_points

    model = _two_layer(outputs=3)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 3, dtype=f64, generator=g)
    sel = lambda out: out[:, 2:3]  # noqa: E731
    with torch.no_grad():
        old_logit = model(x)[:, 2]
    theta_old = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    k = KPrior(model, x, "bce_with_logits", 0.4, tau=2.5, select=sel)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, dtype=f64, generator=g))
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    logit = model(x)[:, 2]
    expected = (
        2.5
        * torch.nn.functional.binary_cross_entropy_with_logits(
            logit, torch.sigmoid(old_logit), reduction="sum"
        )
        + 0.2 * ((theta - theta_old) ** 2).sum()
    )
    torch.testing.assert_close(k().detach(), expected.detach())
    lam = (torch.sigmoid(logit) * (1 - torch.sigmoid(logit))).detach()
    top = torch.argsort(lam, descending=True)[:3]
    assert memorable_points(model, x, "bce_with_logits", 3, select=sel).tolist() == top.tolist()


def test_bad_multi_head_input_names_the_argument():
    from blr.continual import FunctionalPrior, diag_laplace, memorable_points

    model = _two_layer()
    x = torch.randn(5, 3, dtype=f64)
    fam = expfam.DiagGaussian()
    n = sum(p.numel() for p in model.parameters())
    q = blr.ParameterPosterior(fam, fam.from_moments(torch.zeros(n, dtype=f64),
                                                     torch.ones(n, dtype=f64)), model)  # fmt: skip
    with pytest.raises(TypeError, match="select must be callable"):
        KPrior(model, x, "cross_entropy", 0.1, select=2)
    with pytest.raises(TypeError, match="select must be callable"):
        memorable_points(model, x, "cross_entropy", 2, select="head")
    with pytest.raises(ValueError, match="tau must be ≥ 0"):
        KPrior(model, x, "cross_entropy", 0.1, tau=-1.0)
    with pytest.raises(ValueError, match="kernel must be"):
        FunctionalPrior(model, x, q, "cross_entropy", kernel="diag")
    with pytest.raises(ValueError, match="x must be a tensor of at least one example"):
        diag_laplace(model, x[:0], "cross_entropy", 1.0)
    with pytest.raises(ValueError, match="prior_precision must be a scalar or a vector"):
        diag_laplace(model, x, "cross_entropy", torch.ones(3, dtype=f64))
    with pytest.raises(ValueError, match="not positive everywhere"):
        diag_laplace(model, x, "cross_entropy", 0.0, select=lambda out: out[:, :2])
    with pytest.raises(ValueError, match="likelihood must be one of"):
        diag_laplace(model, x, "hinge", 1.0)
