"""Laplace approximations for neural networks (blr/nn_laplace.py) against an independent dense
oracle, in float64.

The oracle never uses per-example vmap, output-Hessian formulas or eigenvalues: the Jacobian of
ALL outputs with respect to the flat parameter vector by one ``torch.func.jacrev``, each Λ_i by
``torch.autograd.functional.hessian`` of the per-example negative log-likelihood written with
``torch.distributions`` (constants included), P = Σ_i J_iᵀΛ_iJ_i + δI assembled in a Python loop,
P⁻¹ by ``torch.linalg.inv``, log det P by ``slogdet`` and log p(θ* | δ) by
``torch.distributions.Normal``. Tolerance for the math: max |ours − oracle| ≤ 1e-8·max(1,
max |oracle|) (measured ≤ 1e-12). Statistical checks use 5-standard-error bounds with fixed seeds
(tests/conftest.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Normal
from torch.func import functional_call, jacrev

import expfam
from blr.glm import laplace
from blr.nn_laplace import NNLaplace

F64 = torch.float64
TOL = 1e-8
LIKELIHOODS = ("classification", "binary", "regression")
STRUCTURES = ("full", "diag", "last_layer")
K_OUT = {"classification": 3, "binary": 1, "regression": 2}


def close(ours, oracle, tol=TOL) -> float:
    ours, oracle = torch.as_tensor(ours).detach(), torch.as_tensor(oracle).detach()
    assert ours.shape == oracle.shape, (ours.shape, oracle.shape)
    err = float((ours - oracle).abs().max())
    assert err <= tol * max(1.0, float(oracle.abs().max())), err
    return err


def problem(likelihood, n=25, d=3, hidden=5, seed=0):
    """A small tanh MLP (not trained: every identity tested holds at any θ*) and data."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    K = K_OUT[likelihood]
    model = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, K)).to(F64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    X = torch.randn(n, d, generator=g, dtype=F64)
    if likelihood == "classification":
        y = torch.randint(0, K, (n,), generator=g)
    elif likelihood == "binary":
        y = torch.randint(0, 2, (n,), generator=g).to(F64)
    else:
        y = torch.randn(n, K, generator=g, dtype=F64)
    Xtest = torch.randn(7, d, generator=g, dtype=F64)
    return model, X, y, Xtest


def nll_i(likelihood, f, y, sigma2):
    """−log p(y | f) of one example by torch.distributions."""
    if likelihood == "classification":
        return -Categorical(logits=f).log_prob(y)
    if likelihood == "binary":
        return -Bernoulli(logits=f[0]).log_prob(y)
    return -Normal(f, torch.tensor(sigma2, dtype=F64).sqrt()).log_prob(y).sum()


def selected_names(model, structure):
    if structure == "last_layer":
        return ["2.weight", "2.bias"]
    return [n for n, p in model.named_parameters() if p.requires_grad]


class Oracle:
    """Dense Laplace quantities for the parameters ``names`` of ``model`` at its current θ."""

    def __init__(self, model, X, y, likelihood, names, delta, sigma2=1.0, diag=False):
        self.model, self.likelihood, self.names = model, likelihood, names
        named = dict(model.named_parameters())
        self.others = {n: p.detach() for n, p in named.items() if n not in names}
        self.shapes = [named[n].shape for n in names]
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in names])
        self.P = self.theta.numel()
        J = self.jac(X)  # (n, K, P)
        f = self.f(self.theta, X)
        G = torch.zeros(self.P, self.P, dtype=F64)
        loglik = torch.zeros((), dtype=F64)
        for i in range(X.shape[0]):
            lam = torch.autograd.functional.hessian(
                lambda fi, i=i: nll_i(likelihood, fi, y[i], sigma2), f[i]
            )
            G += J[i].T @ lam @ J[i]
            loglik -= nll_i(likelihood, f[i], y[i], sigma2)
        self.ggn = G
        prec = G + delta * torch.eye(self.P, dtype=F64)
        self.prec = torch.diag(torch.diagonal(prec)) if diag else prec
        self.cov = torch.linalg.inv(self.prec)
        zero, delta_t = torch.zeros((), dtype=F64), torch.tensor(delta, dtype=F64)
        log_prior = Normal(zero, delta_t.rsqrt()).log_prob(self.theta).sum()  # float64 params
        self.lml = (
            loglik
            + log_prior
            + 0.5 * self.P * math.log(2 * math.pi)
            - 0.5 * torch.linalg.slogdet(self.prec)[1]
        )
        self.loglik, self.delta, self.sigma2 = loglik, delta, sigma2

    def f(self, theta, X):
        params, start = dict(self.others), 0
        for n, shape in zip(self.names, self.shapes):
            params[n] = theta[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return functional_call(self.model, params, (X,)).reshape(X.shape[0], -1)

    def jac(self, X):
        return jacrev(self.f)(self.theta, X)

    def predictive(self, X):
        J = self.jac(X)
        return self.f(self.theta, X).detach(), torch.einsum("mkp,pq,mlq->mkl", J, self.cov, J)


def fit(likelihood, structure, delta=0.7, sigma2=None, **kw):
    model, X, y, Xtest = problem(likelihood, **kw)
    s2 = sigma2 if likelihood == "regression" else None
    la = NNLaplace(model, likelihood, structure, prior_prec=delta, sigma2=s2).fit(X, y)
    oracle = Oracle(
        model,
        X,
        y,
        likelihood,
        selected_names(model, structure),
        delta,
        sigma2=sigma2 or 1.0,
        diag=structure == "diag",
    )
    return la, oracle, Xtest


CASES = [(lik, st) for lik in LIKELIHOODS for st in STRUCTURES]


# ---------------------------------------------------------------------------- posterior precision
@pytest.mark.parametrize(("likelihood", "structure"), CASES)
def test_posterior_precision_matches_dense_oracle(likelihood, structure):
    la, oracle, _ = fit(likelihood, structure, sigma2=0.3)
    assert la.n_params == oracle.P
    close(la.map_params, oracle.theta, tol=0)
    if structure == "diag":
        close(la.posterior_precision, torch.diagonal(oracle.prec))
        close(la.posterior_covariance, torch.diagonal(oracle.cov))
        close(la.ggn, torch.diagonal(oracle.ggn))
    else:
        close(la.posterior_precision, oracle.prec)
        close(la.posterior_covariance, oracle.cov)
        close(la.ggn, oracle.ggn)


@pytest.mark.parametrize(("likelihood", "structure"), CASES)
def test_glm_predictive_matches_dense_oracle(likelihood, structure):
    la, oracle, Xtest = fit(likelihood, structure, sigma2=0.3)
    f_or, V_or = oracle.predictive(Xtest)
    f, V = la.glm_predictive_distribution(Xtest)
    close(f, f_or)
    close(V, V_or)
    pred = la.predictive(Xtest)
    var = torch.diagonal(V_or, dim1=-2, dim2=-1)
    if likelihood == "regression":
        close(pred[0], f_or)
        close(pred[1], V_or + 0.3 * torch.eye(f_or.shape[1], dtype=F64))
    elif likelihood == "binary":  # σ(f/√(1 + πv/8)), written out
        close(pred, 1 / (1 + torch.exp(-f_or[:, 0] / torch.sqrt(1 + math.pi * var[:, 0] / 8))))
    else:
        kappa = (1 + math.pi * var / 8) ** -0.5
        expo = torch.exp(kappa * f_or)
        close(pred, expo / expo.sum(-1, keepdim=True))


def bridge_oracle(f, V):
    """Laplace bridge (Hobbhahn et al. 2022) of N(f, V) conditioned on 1ᵀf = 0, by Gaussian
    conditioning with A = 1ᵀ and per-class loops."""
    out = []
    for fi, Vi in zip(f, V):
        K = fi.numel()
        A = torch.ones(1, K, dtype=F64)
        gain = Vi @ A.T @ torch.linalg.inv(A @ Vi @ A.T)
        mu = fi - (gain @ (A @ fi)).reshape(-1)
        S = Vi - gain @ A @ Vi
        alpha = torch.stack(
            [
                (1 - 2 / K + math.exp(mu[k]) / K**2 * sum(math.exp(-mu[j]) for j in range(K)))
                / S[k, k]
                for k in range(K)
            ]
        )
        out.append(alpha / alpha.sum())
    return torch.stack(out)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_laplace_bridge_matches_oracle(structure):
    la, oracle, Xtest = fit("classification", structure)
    close(la.predictive(Xtest, link="bridge"), bridge_oracle(*oracle.predictive(Xtest)))


# ---------------------------------------------------------------------------- marginal likelihood
@pytest.mark.parametrize(("likelihood", "structure"), CASES)
def test_log_marginal_likelihood_matches_dense_oracle(likelihood, structure):
    sigma2 = 0.4 if likelihood == "regression" else None
    la, oracle, _ = fit(likelihood, structure, delta=0.7, sigma2=sigma2)
    close(la.log_marginal_likelihood(), oracle.lml)
    close(la.log_likelihood(), oracle.loglik)
    # at other hyperparameters, passed as arguments (the stored ones unchanged)
    sigma2b = 1.7 if likelihood == "regression" else None
    other = fit(likelihood, structure, delta=3.0, sigma2=sigma2b)[1]
    close(la.log_marginal_likelihood(3.0, sigma2b), other.lml)
    assert la.prior_prec == 0.7


@pytest.mark.parametrize(("likelihood", "structure"), CASES)
def test_log_marginal_likelihood_gradients_are_analytic(likelihood, structure):
    """d/d log δ = P/2 − δ‖θ*‖²/2 − δ tr(P⁻¹)/2; regression, d/dσ² = SSE/(2σ⁴) − nK/(2σ²)
    + tr(P⁻¹G)/(2σ²) (G the GGN at σ²), with the oracle's dense P⁻¹."""
    sigma2 = 0.4 if likelihood == "regression" else None
    la, oracle, _ = fit(likelihood, structure, delta=0.7, sigma2=sigma2)
    log_delta = torch.tensor(math.log(0.7), dtype=F64, requires_grad=True)
    s2 = torch.tensor(0.4, dtype=F64, requires_grad=True) if sigma2 else None
    lml = la.log_marginal_likelihood(log_delta.exp(), s2)
    lml.backward()
    cov = oracle.cov
    expected = 0.5 * oracle.P - 0.35 * oracle.theta.square().sum() - 0.35 * torch.trace(cov)
    close(log_delta.grad, expected)
    if sigma2:
        model, X, y, _ = problem(likelihood)
        sse = (y - model(X).detach()).square().sum()
        ggn = oracle.ggn if structure != "diag" else torch.diag(torch.diagonal(oracle.ggn))
        expected = sse / (2 * 0.16) - y.numel() / 0.8 + torch.trace(cov @ ggn) / 0.8
        close(s2.grad, expected)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_optimize_prior_precision_reaches_a_stationary_maximum(structure):
    la, _, _ = fit("classification", structure, delta=1.0)
    delta = la.optimize_prior_precision()
    assert la.prior_prec == delta
    oracle = fit("classification", structure, delta=delta)[1]
    grad = 0.5 * oracle.P - 0.5 * delta * (oracle.theta.square().sum() + torch.trace(oracle.cov))
    assert abs(float(grad)) <= 1e-6 * oracle.P
    best = float(oracle.lml)
    for factor in (0.5, 0.9, 0.99, 1.01, 1.1, 2.0):
        assert float(la.log_marginal_likelihood(delta * factor)) < best


def test_optimize_prior_precision_and_noise_for_regression():
    la, _, _ = fit("regression", "full", delta=1.0, sigma2=1.0)
    delta = la.optimize_prior_precision(fit_sigma2=True)
    sigma2 = la.sigma2
    log_d = torch.tensor(math.log(delta), dtype=F64, requires_grad=True)
    log_s = torch.tensor(math.log(sigma2), dtype=F64, requires_grad=True)
    lml = la.log_marginal_likelihood(log_d.exp(), log_s.exp())
    lml.backward()
    assert abs(float(log_d.grad)) < 1e-5 and abs(float(log_s.grad)) < 1e-5
    close(lml, fit("regression", "full", delta=delta, sigma2=sigma2)[1].lml)
    for dd, ds in ((1.05, 1.0), (0.95, 1.0), (1.0, 1.05), (1.0, 0.95)):
        assert float(la.log_marginal_likelihood(delta * dd, sigma2 * ds)) < float(lml.detach())


# ---------------------------------------------------------------------------- GLM limit
@pytest.mark.parametrize("structure", ("full", "diag"))
def test_logistic_regression_equals_blr_laplace(structure):
    """For a linear model the GGN is the exact Hessian of the loss, so at the MAP the network
    Laplace is blr.glm.laplace (Newton on the GLM)."""
    g = torch.Generator().manual_seed(3)
    n, d, delta = 40, 4, 0.5
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.rand(n, generator=g, dtype=F64) < torch.sigmoid(X @ torch.ones(d, dtype=F64))
    y = y.to(F64)
    m, S = expfam.FullGaussian().to_moments(laplace(X, y, delta, "logistic"))
    model = nn.Linear(d, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(m.reshape(1, d))
    la = NNLaplace(model, "binary", structure, prior_prec=delta).fit(X, y)

    def loss(w):
        a = X @ w
        return (nn.functional.softplus(a) - y * a).sum() + 0.5 * delta * w.square().sum()

    hessian = torch.autograd.functional.hessian(loss, m)
    if structure == "full":
        close(la.posterior_precision, S, tol=1e-10)
        close(la.posterior_precision, hessian, tol=1e-10)
    else:
        close(la.posterior_precision, torch.diagonal(S), tol=1e-10)
    # GLM predictive variance is xᵀSx⁻¹x for the full posterior
    xt = torch.randn(5, d, generator=g, dtype=F64)
    if structure == "full":
        var = torch.einsum("md,de,me->m", xt, torch.linalg.inv(S), xt)
        close(la.glm_predictive_distribution(xt)[1][:, 0, 0], var)


def test_last_layer_of_a_linear_model_equals_full():
    model, X, y, _ = problem("classification")
    lin = model[2]
    H = torch.tanh(model[0](X)).detach()
    full = NNLaplace(lin, "classification", "full", prior_prec=0.3).fit(H, y)
    ll = NNLaplace(model, "classification", "last_layer", prior_prec=0.3).fit(X, y)
    close(ll.posterior_precision, full.posterior_precision)
    close(ll.log_marginal_likelihood(), full.log_marginal_likelihood())


# ---------------------------------------------------------------------------- Monte Carlo
def test_glm_samples_have_the_glm_moments_and_mc_link_averages_them():
    la, oracle, Xtest = fit("classification", "full")
    f, V = oracle.predictive(Xtest)
    S = 20000
    fs = la.glm_samples(Xtest, S, generator=torch.Generator().manual_seed(0))
    assert fs.shape == (S, *f.shape)
    se_mean = (torch.diagonal(V, dim1=-2, dim2=-1) / S).sqrt()
    assert ((fs.mean(0) - f).abs() <= 5 * se_mean).all()
    d = fs - f
    emp = torch.einsum("smk,sml->mkl", d, d) / S
    var = torch.diagonal(V, dim1=-2, dim2=-1)
    se_cov = ((var.unsqueeze(-1) * var.unsqueeze(-2) + V.square()) / S).sqrt()
    assert ((emp - V).abs() <= 5 * se_cov).all()
    probs = la.predictive(
        Xtest, link="mc", n_samples=50, generator=torch.Generator().manual_seed(1)
    )
    again = la.glm_samples(Xtest, 50, generator=torch.Generator().manual_seed(1))
    close(probs, again.softmax(-1).mean(0), tol=1e-14)


def test_binary_mc_link_matches_quadrature():
    la, oracle, Xtest = fit("binary", "diag")
    f, V = oracle.predictive(Xtest)
    S = 40000
    probs = la.predictive(Xtest, link="mc", n_samples=S, generator=torch.Generator().manual_seed(2))
    z, w = (torch.from_numpy(a) for a in np.polynomial.hermite_e.hermegauss(80))
    w = w / w.sum()  # E[g(Z)], Z ~ N(0, 1), by 80-point Gauss–Hermite
    sd = V[:, 0, 0].sqrt()
    exact = (torch.sigmoid(f[:, :1] + sd[:, None] * z) * w).sum(-1)
    second = (torch.sigmoid(f[:, :1] + sd[:, None] * z).square() * w).sum(-1)
    se = ((second - exact.square()) / S).sqrt()
    assert ((probs - exact).abs() <= 5 * se).all()


def test_posterior_samples_have_the_posterior_covariance():
    la, oracle, _ = fit("regression", "full", sigma2=0.5)
    S = 20000
    draws = la.sample(S, generator=torch.Generator().manual_seed(4))
    d = draws - oracle.theta
    emp = d.T @ d / S
    var = torch.diagonal(oracle.cov)
    se = ((var[:, None] * var[None, :] + oracle.cov.square()) / S).sqrt()
    assert ((emp - oracle.cov).abs() <= 5 * se).all()
    assert ((d.mean(0)).abs() <= 5 * (var / S).sqrt()).all()


# ---------------------------------------------------------------------------- plumbing
def test_minibatches_chunks_and_frozen_parameters():
    model, X, y, Xtest = problem("classification", n=30)
    model[0].bias.requires_grad_(False)
    ref = NNLaplace(model, "classification", "full", prior_prec=0.7).fit(X, y)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert ref.param_names == names and ref.n_params == oracle_p(model)
    oracle = Oracle(model, X, y, "classification", names, 0.7)
    close(ref.posterior_precision, oracle.prec)
    loader = [(X[i : i + 7], y[i : i + 7]) for i in range(0, 30, 7)]
    chunked = NNLaplace(model, "classification", "full", prior_prec=0.7, chunk_elements=50)
    chunked.fit(loader)
    assert chunked.n_data == 30
    close(chunked.posterior_precision, ref.posterior_precision, tol=1e-13)
    close(chunked.log_marginal_likelihood(), ref.log_marginal_likelihood(), tol=1e-13)
    close(chunked.glm_predictive_distribution(Xtest)[1], oracle.predictive(Xtest)[1])


def oracle_p(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()], [m.training for m in model.modules()]


def same(model, snap):
    params, modes = snap
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), params)) and modes == [
        m.training for m in model.modules()
    ]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_model_parameters_and_modes_are_restored_exactly(structure):
    model, X, y, Xtest = problem("classification")
    model[1] = nn.Dropout(0.5)  # eval mode inside: deterministic; training flag restored
    model.train()
    model[0].eval()
    snap = snapshot(model)
    la = NNLaplace(model, "classification", structure).fit(X, y)
    la.predictive(Xtest)
    la.predictive(Xtest, link="mc", n_samples=3)
    la.optimize_prior_precision()
    assert same(model, snap)
    with la.sampled_params(generator=torch.Generator().manual_seed(0)) as theta:
        assert not same(model, snap)
        named = dict(model.named_parameters())
        live = torch.cat([named[n].detach().reshape(-1) for n in la.param_names])
        close(live, theta, tol=0)
    assert same(model, snap)
    with pytest.raises(KeyError), la.sampled_params():
        raise KeyError("inside")
    assert same(model, snap)
    # predictions do not depend on later changes of the model: θ* was snapshotted by fit
    before = la.glm_predictive_distribution(Xtest)
    with la.sampled_params():
        after = la.glm_predictive_distribution(Xtest)
    close(after[0], before[0], tol=0)
    close(after[1], before[1], tol=0)


# ---------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    model, X, y, Xtest = problem("classification")
    with pytest.raises(ValueError, match=r"P = 38 trainable parameters.*max_params = 10"):
        NNLaplace(model, "classification", "full", max_params=10)
    with pytest.raises(ValueError, match=r"last layer has P = 18 .*max_params = 10"):
        NNLaplace(model, "classification", "last_layer", max_params=10)
    NNLaplace(model, "classification", "diag", max_params=10)  # the diagonal has no limit
    with pytest.raises(ValueError, match="likelihood must be one of"):
        NNLaplace(model, "softmax")
    with pytest.raises(ValueError, match="structure must be one of"):
        NNLaplace(model, "classification", "kron")
    with pytest.raises(ValueError, match="prior_prec must be a positive"):
        NNLaplace(model, "classification", prior_prec=0.0)
    with pytest.raises(ValueError, match="sigma2 is the noise variance"):
        NNLaplace(model, "classification", sigma2=2.0)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        NNLaplace(lambda x: x, "classification")
    la = NNLaplace(model, "classification")
    with pytest.raises(RuntimeError, match=r"call fit\(X, y\) first"):
        la.predictive(Xtest)
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 3\)"):
        la.fit(X, y + 1)
    with pytest.raises(ValueError, match="y must hold integer class labels"):
        la.fit(X, y.to(F64))
    with pytest.raises(ValueError, match="y must have 25 rows"):
        la.fit(X, y[:-1])
    with pytest.raises(ValueError, match="y is required"):
        la.fit(X)
    la.fit(X, y)
    with pytest.raises(ValueError, match="link must be one of"):
        la.predictive(Xtest, link="logit")
    with pytest.raises(ValueError, match="fit_sigma2 applies to likelihood='regression'"):
        la.optimize_prior_precision(fit_sigma2=True)
    with pytest.raises(ValueError, match="sigma2 does not apply"):
        la.log_marginal_likelihood(1.0, 2.0)
    with pytest.raises(ValueError, match="prior_prec must be a positive"):
        la.log_marginal_likelihood(-1.0)
    with pytest.raises(ValueError, match="n_samples must be ≥ 1"):
        la.sample(0)
    with pytest.raises(ValueError, match="sigma2 applies to likelihood='regression' only"):
        la.sigma2 = 2.0
    # a last layer that is not the final operation
    tail = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh()).to(F64)
    with pytest.raises(ValueError, match="is not the model's output"):
        NNLaplace(tail, "classification", "last_layer").fit(X, y)
    with pytest.raises(ValueError, match=r"must be an nn\.Linear layer"):
        NNLaplace(model, "classification", "last_layer", last_layer="1")
    with pytest.raises(ValueError, match="no submodule named 'head'"):
        NNLaplace(model, "classification", "last_layer", last_layer="head")
    # binary: one logit, labels in {0, 1}, no bridge
    with pytest.raises(ValueError, match="one logit per example"):
        NNLaplace(model, "binary").fit(X, (y > 0).to(F64))
    bmodel, bX, by, bXt = problem("binary")
    with pytest.raises(ValueError, match=r"y must hold labels in \{0, 1\}"):
        NNLaplace(bmodel, "binary").fit(bX, by * 2)
    with pytest.raises(ValueError, match="link='bridge' is for likelihood='classification'"):
        NNLaplace(bmodel, "binary").fit(bX, by).predictive(bXt, link="bridge")
    rmodel, rX, ry, _ = problem("regression")
    with pytest.raises(ValueError, match=r"y must have shape \(25,\) or \(25, 2\)"):
        NNLaplace(rmodel, "regression").fit(rX, ry[:, :1])
    with pytest.raises(ValueError, match="sigma2 must be a positive"):
        NNLaplace(rmodel, "regression", sigma2=-1.0)
