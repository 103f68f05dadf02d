"""The memory-perturbation equation (blr.influence) against independent oracles: closed-form
retraining of conjugate linear-Gaussian models (exact), explicit matrix formulas, per-example
Jacobians by autograd loops, the optimizers' own posterior draws, and brute-force retraining by
Newton's method on real data (breast cancer: leave-one-out ranks; digits: removing a class)."""

from __future__ import annotations

import functools
import pathlib
import re

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import expfam
from blr.glm import laplace
from blr.influence import (
    glm_removal,
    glm_sensitivity,
    module_removal,
    module_sensitivity,
    mpe_removal,
    mpe_sensitivity,
    optimizer_posterior,
)
from blr.optim import IVON, VOGN

F64 = torch.float64
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "influence.md"


# ---------------------------------------------------------------------------- data and oracles
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's breast cancer (569 × 30), standardized, with a bias column."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    X = np.hstack([X, np.ones((len(X), 1))])
    return torch.tensor(X, dtype=F64), torch.tensor(y, dtype=F64)


def newton_logistic(X, y, delta, theta):
    """MAP of logistic regression with prior N(0, I/δ) by plain Newton steps from ``theta``."""
    eye = torch.eye(X.shape[1], dtype=F64)
    for _ in range(50):
        p = torch.sigmoid(X @ theta)
        grad = X.T @ (p - y) + delta * theta
        hess = (X.T * (p * (1 - p))) @ X + delta * eye
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if step.abs().max() < 1e-13:
            break
    p = torch.sigmoid(X @ theta)
    assert (X.T @ (p - y) + delta * theta).norm() < 1e-9
    return theta


def digits(pool: bool = False):
    """sklearn's digits (pixels / 16, optionally 2×2-average-pooled to 4×4, and a bias column),
    a stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    if pool:
        X = X.reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.3, random_state=0, stratify=y)

    def design(A):
        return torch.tensor(np.hstack([A, np.ones((len(A), 1))]), dtype=F64)

    return design(Xtr), torch.tensor(ytr), design(Xte), torch.tensor(yte)


def softmax_objective(W, X, y, delta):
    ce = torch.nn.functional.cross_entropy(X @ W.T, y, reduction="sum")
    return float(ce + 0.5 * delta * W.square().sum())


def newton_softmax(X, y, delta, W):
    """MAP of multinomial logistic regression (W of shape (K, d), prior N(0, I/δ)) by damped
    Newton; returns W and the Hessian of the objective at W (the Laplace precision)."""
    K, d = W.shape
    for _ in range(100):
        P = (X @ W.T).softmax(-1)
        E = P - torch.nn.functional.one_hot(y, K).to(P)
        grad = (E.T @ X).reshape(-1) + delta * W.reshape(-1)
        lam = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]
        # H[(a, j), (b, l)] = Σ_i Λ_i[a, b] x_ij x_il + δ
        A = (lam.reshape(-1, K * K, 1) * X[:, None, :]).reshape(len(X), -1)
        hess = (A.T @ X).reshape(K, K, d, d).permute(0, 2, 1, 3).reshape(K * d, K * d)
        hess = hess + delta * torch.eye(K * d, dtype=F64)
        if grad.norm() < 1e-10:
            return W, hess
        step = torch.linalg.solve(hess, grad).reshape(K, d)
        t, f0 = 1.0, softmax_objective(W, X, y, delta)
        while softmax_objective(W - t * step, X, y, delta) > f0 and t > 1e-8:
            t /= 2
        W = W - t * step
    raise AssertionError("Newton did not converge")


def linear_gaussian(seed=0, n=12, d=3, sigma2=0.5, delta=2.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = X @ torch.randn(d, generator=g, dtype=F64) + torch.randn(n, generator=g, dtype=F64)
    S = X.T @ X / sigma2 + delta * torch.eye(d, dtype=F64)
    m = torch.linalg.solve(S, X.T @ y / sigma2)
    return X, y, m, S, sigma2, delta


def logistic_problem(seed=0, n=15, d=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.cat([torch.ones(n, 1, dtype=F64), torch.randn(n, d - 1, generator=g, dtype=F64)], 1)
    y = (torch.rand(n, generator=g, dtype=F64) < torch.sigmoid(X @ torch.ones(d, dtype=F64))).to(
        F64
    )
    return X, y


# ---------------------------------------------------------------------------- done means (1)
@functools.lru_cache(maxsize=1)
def breast_cancer_loo() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Brute force: the MAP (δ = 1) and, for every training example left out in turn, the change
    of its own logit x_iᵀ(m_{\\i} − m) and ‖m_{\\i} − m‖, retrained by Newton (float64)."""
    X, y = breast_cancer()
    m = newton_logistic(X, y, 1.0, torch.zeros(X.shape[1], dtype=F64))
    df, dm = [], []
    for i in range(len(X)):
        keep = torch.arange(len(X)) != i
        mi = newton_logistic(X[keep], y[keep], 1.0, m.clone())
        df.append(float(X[i] @ (mi - m)))
        dm.append(float((mi - m).norm()))
    return m, np.array(df), np.array(dm)


def test_leave_one_out_ranks_match_brute_force_retraining_on_breast_cancer():
    """All 569 examples of breast cancer: the MPE's estimated change of each example's own logit
    ranks like the true one (Spearman), from the Laplace posterior of blr.glm.laplace."""
    X, y = breast_cancer()
    m_map, true_df, true_dm = breast_cancer_loo()
    posterior = laplace(X, y, 1.0)
    m, _ = expfam.FullGaussian().to_moments(posterior)
    torch.testing.assert_close(m, m_map, rtol=0, atol=1e-10)
    sens = glm_sensitivity(X, y, posterior)
    est = sens.pred_shift[:, 0].numpy()
    assert spearmanr(sens.score, np.abs(true_df))[0] >= 0.9  # measured 0.9999996
    assert spearmanr(sens.param_shift.norm(dim=1), true_dm)[0] >= 0.9  # 0.999999
    assert spearmanr(est, true_df)[0] >= 0.9  # 0.9999999
    assert np.median(np.abs(est - true_df) / np.abs(true_df)) < 0.01  # measured 1.2e-4
    first = glm_sensitivity(X, y, posterior, precision="full")  # e·v, first order
    assert spearmanr(first.score, np.abs(true_df))[0] >= 0.9  # 0.999997
    # the first-order form underestimates the largest changes; S_{\\i} repairs most of it
    err_first = np.abs(first.pred_shift[:, 0].numpy() - true_df).max()
    assert np.abs(est - true_df).max() < 0.5 * err_first  # 0.61 vs 3.28


def test_ivon_posterior_ranks_leave_one_out_changes_on_breast_cancer():
    """IVON trained on the same logistic regression (a torch model, full batch, 1000 steps):
    its diagonal posterior, read from the optimizer, still ranks the brute-force LOO changes."""
    X, y = breast_cancer()
    n, d = X.shape
    _, true_df, _ = breast_cancer_loo()
    model = torch.nn.Linear(d, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    opt = IVON(model.parameters(), lr=0.1, ess=n, weight_decay=1.0 / n, beta2=0.999, seed=0)
    for _ in range(1000):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(X)[:, 0], y)
            loss.backward()
        opt.step()
    sens = module_sensitivity(model, X, y[:, None], opt, "bce_with_logits", precision="full")
    assert spearmanr(sens.score, np.abs(true_df))[0] >= 0.9  # measured 0.992


# ---------------------------------------------------------------------------- done means (2)
def class_removal_errors(pool: bool, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on digits (Laplace at the MAP, prior N(0, I/δ)): for each
    class c, the relative error of the MPE's test loss after removing c from training (mean
    cross-entropy at m_{\\G} on the test examples of the other classes) w.r.t. the retrained
    model's, and the same for the unchanged model."""
    Xtr, ytr, Xte, yte = digits(pool)
    K, d = 10, Xtr.shape[1]
    W, S = newton_softmax(Xtr, ytr, delta, torch.zeros(K, d, dtype=F64))
    rel_mpe, rel_before = [], []
    for c in range(K):
        G, rest = ytr == c, yte != c
        out = glm_removal(
            Xtr, ytr, (W.reshape(-1), S), G, "multinomial", X_test=Xte[rest], y_test=yte[rest]
        )
        W_true, _ = newton_softmax(Xtr[~G], ytr[~G], delta, W)
        true = torch.nn.functional.cross_entropy(Xte[rest] @ W_true.T, yte[rest])
        # the reported test loss is the mean cross-entropy at the returned mean
        at_mean = torch.nn.functional.cross_entropy(Xte[rest] @ out.mean.reshape(K, d).T, yte[rest])
        torch.testing.assert_close(out.test_loss, at_mean, rtol=1e-12, atol=0)
        rel_mpe.append(float(abs(out.test_loss - true) / true))
        rel_before.append(float(abs(out.test_loss_before - true) / true))
    return np.array(rel_mpe), np.array(rel_before)


def test_removed_class_test_loss_is_predicted_within_ten_percent_on_pooled_digits():
    """Digits pooled to 4×4 (170 parameters), δ = 1: every class's removal predicted within 10%,
    and better than by the unchanged model."""
    rel_mpe, rel_before = class_removal_errors(pool=True, delta=1.0)
    assert rel_mpe.max() <= 0.10  # measured 0.063 (class 1); the unchanged model: 0.210
    assert (rel_mpe < rel_before).all()
    assert rel_mpe.mean() < 0.6 * rel_before.mean()  # measured 0.036 vs 0.080


@pytest.mark.slow
def test_removed_class_test_loss_is_predicted_within_ten_percent_on_full_digits():
    """The full 8×8 digits (650 parameters), δ = 2 (with δ = 1 class 1 is off by 10.02%)."""
    rel_mpe, rel_before = class_removal_errors(pool=False, delta=2.0)
    assert rel_mpe.max() <= 0.10  # measured 0.082 (class 1); the unchanged model: 0.222
    assert (rel_mpe < rel_before).all()
    assert rel_mpe.mean() < 0.7 * rel_before.mean()  # measured 0.046 vs 0.083


# ---------------------------------------------------------------------------- exactness
def test_linear_gaussian_leave_one_out_is_exact():
    """Conjugate model: the MPE with S_{\\i} equals the closed-form posterior without example i."""
    X, y, m, S, sigma2, delta = linear_gaussian()
    sens = glm_sensitivity(X, y, (m, S), "gaussian", scale=1 / sigma2)
    for i in range(len(X)):
        keep = torch.arange(len(X)) != i
        Si = X[keep].T @ X[keep] / sigma2 + delta * torch.eye(3, dtype=F64)
        mi = torch.linalg.solve(Si, X[keep].T @ y[keep] / sigma2)
        torch.testing.assert_close(sens.param_shift[i], mi - m, rtol=0, atol=1e-12)
        torch.testing.assert_close(sens.pred_shift[i, 0], X[i] @ (mi - m), rtol=0, atol=1e-12)
    torch.testing.assert_close(sens.response_shift, sens.pred_shift)  # identity link


def test_linear_gaussian_group_removal_is_exact():
    X, y, m, S, sigma2, delta = linear_gaussian(seed=1)
    G = torch.tensor([0, 3, 4, 9])
    keep = torch.ones(len(X), dtype=torch.bool)
    keep[G] = False
    S_true = X[keep].T @ X[keep] / sigma2 + delta * torch.eye(3, dtype=F64)
    m_true = torch.linalg.solve(S_true, X[keep].T @ y[keep] / sigma2)
    out = glm_removal(X, y, (m, S), G, "gaussian", scale=1 / sigma2, X_test=X, y_test=y)
    torch.testing.assert_close(out.mean, m_true, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.prec, S_true, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.shift, m_true - m, rtol=0, atol=1e-12)
    loss = (0.5 * (X @ m_true - y) ** 2 / sigma2).mean()
    torch.testing.assert_close(out.test_loss, loss, rtol=1e-12, atol=0)
    # the same through the mask form and through a torch model with loss="gaussian"
    masked = glm_removal(X, y, (m, S), ~keep, "gaussian", scale=1 / sigma2)
    torch.testing.assert_close(masked.mean, out.mean, rtol=0, atol=0)
    model = torch.nn.Linear(3, 1, bias=False).double()
    net = module_removal(model, X, y[:, None], (m, S), G, "gaussian", sigma2=sigma2)
    torch.testing.assert_close(net.mean, m_true, rtol=0, atol=1e-12)
    net_sens = module_sensitivity(model, X, y[:, None], (m, S), "gaussian", sigma2=sigma2)
    glm_sens = glm_sensitivity(X, y, (m, S), "gaussian", scale=1 / sigma2)
    for a, b in zip(net_sens, glm_sens):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- formulas
def test_first_order_and_diagonal_forms_equal_the_explicit_formulas():
    X, y = logistic_problem()
    post = laplace(X, y, 1.0)
    m, S = expfam.FullGaussian().to_moments(post)
    p = torch.sigmoid(X @ m)
    e, lam = p - y, p * (1 - p)
    cov = torch.linalg.inv(S)
    full = glm_sensitivity(X, y, post, precision="full")
    removed = glm_sensitivity(X, y, post)
    for i in range(len(X)):
        v = X[i] @ cov @ X[i]
        torch.testing.assert_close(full.variance[i, 0, 0], v)
        torch.testing.assert_close(full.pred_shift[i, 0], e[i] * v)  # error × variance
        torch.testing.assert_close(full.param_shift[i], cov @ X[i] * e[i])
        Si = S - lam[i] * torch.outer(X[i], X[i])  # S_{\i}: the precision without i
        torch.testing.assert_close(removed.param_shift[i], torch.linalg.solve(Si, X[i] * e[i]))
        torch.testing.assert_close(removed.pred_shift[i, 0], e[i] * v / (1 - lam[i] * v))
        torch.testing.assert_close(removed.response_shift[i, 0], lam[i] * removed.pred_shift[i, 0])
    torch.testing.assert_close(removed.error[:, 0], e)
    torch.testing.assert_close(removed.score, removed.pred_shift[:, 0].abs())
    # a diagonal precision: the sites are diagonal too
    s = torch.diagonal(S).clone()
    diag_removed = glm_sensitivity(X, y, (m, s))
    diag_full = glm_sensitivity(X, y, expfam.DiagGaussian().from_moments(m, s), precision="full")
    for i in range(len(X)):
        torch.testing.assert_close(
            diag_removed.param_shift[i], X[i] * e[i] / (s - lam[i] * X[i] ** 2)
        )
        torch.testing.assert_close(diag_full.param_shift[i], X[i] * e[i] / s)
        torch.testing.assert_close(diag_full.variance[i, 0, 0], (X[i] ** 2 / s).sum())
    torch.testing.assert_close(diag_removed.pred_shift[:, 0], (X * diag_removed.param_shift).sum(1))
    # group removal with the diagonal: S − Σ diag sites, Σ x e / that
    G = torch.tensor([1, 2, 7])
    out = glm_removal(X, y, (m, s), G)
    site = (lam[G, None] * X[G] ** 2).sum(0)
    torch.testing.assert_close(out.prec, s - site)
    torch.testing.assert_close(out.shift, (X[G] * e[G, None]).sum(0) / (s - site))


def test_poisson_and_callable_links():
    g = torch.Generator().manual_seed(3)
    X = torch.cat(
        [torch.ones(10, 1, dtype=F64), 0.5 * torch.randn(10, 2, generator=g, dtype=F64)], 1
    )
    y = torch.poisson(torch.exp(X @ torch.tensor([0.5, 1.0, -1.0], dtype=F64)), generator=g)
    post = laplace(X, y, 1.0, "poisson")
    m, _ = expfam.FullGaussian().to_moments(post)
    sens = glm_sensitivity(X, y, post, "poisson")
    rate = torch.exp(X @ m)
    torch.testing.assert_close(sens.error[:, 0], rate - y)
    torch.testing.assert_close(sens.response_shift[:, 0], rate * sens.pred_shift[:, 0])

    def poisson(yy, a):  # the same loss as an elementwise callable: ℓ', ℓ'' by autograd
        return torch.exp(a) - yy * a

    by_autograd = glm_sensitivity(X, y, post, poisson)
    torch.testing.assert_close(by_autograd.param_shift, sens.param_shift)
    assert by_autograd.response_shift is None


def test_multinomial_glm_equals_the_linear_module_and_the_core():
    """Kronecker-structured GLM Jacobians vs torch.func Jacobians of nn.Linear vs the core."""
    g = torch.Generator().manual_seed(0)
    n, d, K = 12, 4, 3
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randint(0, K, (n,), generator=g)
    m = 0.5 * torch.randn(K * d, generator=g, dtype=F64)
    A = torch.randn(K * d, K * d, generator=g, dtype=F64)
    S = A @ A.T / (K * d) + 20 * torch.eye(K * d, dtype=F64)
    model = torch.nn.Linear(d, K, bias=False).double()  # weight (K, d): θ = W.flatten()
    for prec in (S, torch.diagonal(S).clone()):
        for precision in ("removed", "full"):
            a = glm_sensitivity(X, y, (m, prec), "multinomial", precision=precision, chunk_size=5)
            b = module_sensitivity(model, X, y, (m, prec), precision=precision, chunk_size=7)
            for u, v in zip(a, b):
                torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
            ra = glm_removal(X, y, (m, prec), [0, 5, 6], "multinomial", precision=precision)
            rb = module_removal(model, X, y, (m, prec), [0, 5, 6], precision=precision)
            torch.testing.assert_close(ra.mean, rb.mean, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(ra.prec, rb.prec, rtol=1e-10, atol=1e-12)
    # the core, fed explicit Jacobians J_i = I_K ⊗ x_iᵀ
    J = torch.einsum("ab,nj->nabj", torch.eye(K, dtype=F64), X).reshape(n, K, K * d)
    p = (X @ m.reshape(K, d).T).softmax(-1)
    e = p - torch.nn.functional.one_hot(y, K).to(p)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    core = mpe_sensitivity(J, e, lam, (m, S))
    glm = glm_sensitivity(X, y, (m, S), "multinomial")
    torch.testing.assert_close(core.param_shift, glm.param_shift, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(glm.response_shift.sum(-1), torch.zeros(n, dtype=F64))
    group = mpe_removal(J[:4], e[:4], lam[:4], (m, S))
    S_G = S - sum(J[i].T @ lam[i] @ J[i] for i in range(4))
    torch.testing.assert_close(group.prec, S_G)
    torch.testing.assert_close(
        group.shift, torch.linalg.solve(S_G, sum(J[i].T @ e[i] for i in range(4)))
    )


def test_binary_glm_equals_the_bce_module():
    X, y = logistic_problem(seed=4)
    post = laplace(X, y, 1.0)
    model = torch.nn.Linear(3, 1, bias=False).double()
    a = glm_sensitivity(X, y, post)
    b = module_sensitivity(model, X, y[:, None], post, "bce_with_logits")
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def test_network_sensitivities_equal_per_example_autograd_loops():
    """A tanh MLP with a full precision S = GGN + δI: torch.func Jacobians against
    torch.autograd.functional.jacobian one example at a time, and the MPE against the explicit
    (S − J_iᵀΛ_iJ_i)⁻¹J_iᵀe_i."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3)
    ).double()
    x, y = torch.randn(9, 2, dtype=F64), torch.randint(0, 3, (9,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    m = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def output(theta, xi):
        parts, i = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = theta[i : i + shape.numel()].view(shape)
            i += shape.numel()
        return torch.func.functional_call(model, parts, (xi[None],))[0]

    Js = [torch.autograd.functional.jacobian(functools.partial(output, xi=xi), m) for xi in x]
    ps = [output(m, xi).softmax(-1) for xi in x]
    es = [p - torch.nn.functional.one_hot(yi, 3).to(p) for p, yi in zip(ps, y)]
    lams = [torch.diag(p) - torch.outer(p, p) for p in ps]
    S = sum(J.T @ L @ J for J, L in zip(Js, lams)) + 0.5 * torch.eye(len(m), dtype=F64)
    sens = module_sensitivity(model, x, y, (m, S), chunk_size=4)
    for i, (J, L, e) in enumerate(zip(Js, lams, es)):
        shift = torch.linalg.solve(S - J.T @ L @ J, J.T @ e)
        torch.testing.assert_close(sens.param_shift[i], shift)
        torch.testing.assert_close(sens.pred_shift[i], J @ shift)
        torch.testing.assert_close(sens.variance[i], J @ torch.linalg.solve(S, J.T))
        torch.testing.assert_close(sens.response_shift[i], L @ J @ shift)
    G = [1, 4, 8]
    out = module_removal(model, x, y, (m, S), G, x_test=x, y_test=y)
    S_G = S - sum(Js[i].T @ lams[i] @ Js[i] for i in G)
    torch.testing.assert_close(
        out.mean, m + torch.linalg.solve(S_G, sum(Js[i].T @ es[i] for i in G))
    )
    theta = out.mean
    loss = torch.stack(
        [
            torch.nn.functional.cross_entropy(output(theta, xi)[None], yi[None])
            for xi, yi in zip(x, y)
        ]
    ).mean()
    torch.testing.assert_close(out.test_loss, loss)


def test_frozen_parameters_and_buffers_are_used_as_they_are():
    """Only trainable parameters form θ: a frozen first layer acts as fixed features."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2)
    ).double()
    model[0].requires_grad_(False)
    model[3].requires_grad_(False)
    model[3].running_mean.fill_(0.3)
    model.eval()
    x, y = torch.randn(7, 3, dtype=F64), torch.randint(0, 2, (7,))
    m = torch.cat([p.detach().reshape(-1) for p in model[2].parameters()])
    post = (m, torch.linspace(5.0, 9.0, len(m), dtype=F64))
    a = module_sensitivity(model, x, y, post)
    features = model[1](model[0](x)).detach()
    head = torch.nn.Sequential(model[2], model[3])
    b = module_sensitivity(head, features, y, post)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    assert a.param_shift.shape == (7, 10)


def test_regression_losses_of_modules():
    """'mse' is ℓ_i = ‖f_i − y_i‖² (e = 2r, Λ = 2I); 'gaussian' with σ² has e = r/σ², Λ = I/σ²;
    multi-output regression uses the (k, k) blocks."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    y = torch.randn(8, 2, generator=g, dtype=F64)
    model = torch.nn.Linear(3, 2).double()
    m = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    s = torch.full_like(m, 30.0)
    mse = module_sensitivity(model, x, y, (m, s), "mse")
    gauss = module_sensitivity(model, x, y, (m, s), "gaussian", sigma2=0.5)
    for a, b in zip(mse, gauss):  # σ² = ½ is the same loss up to a constant
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(mse.error, 2 * (model(x).detach() - y))
    out = module_removal(model, x, y, (m, s), [0], "gaussian", sigma2=2.0, x_test=x, y_test=y)
    r = model(x).detach() - y
    nll = (0.5 * r.square().sum(-1) / 2.0 + np.log(2 * np.pi * 2.0)).mean()  # k = 2 outputs
    torch.testing.assert_close(out.test_loss_before, nll)


def test_chunking_and_dtypes_do_not_change_results():
    X, y = logistic_problem(seed=2, n=23)
    post = laplace(X, y, 1.0)
    a = glm_sensitivity(X, y, post, chunk_size=4)
    b = glm_sensitivity(X, y, post, chunk_size=1000)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-13, atol=1e-15)
    c = glm_sensitivity(X.float(), y.float(), post)  # data follow the posterior's dtype
    assert c.param_shift.dtype == F64
    torch.testing.assert_close(c.param_shift, a.param_shift, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("kind", ["ivon", "vogn"])
def test_optimizer_posterior_is_the_distribution_the_optimizer_samples(kind):
    """(m, S) read from the state equal the weights outside sampled_params and the mean and
    inverse variance of the optimizer's own posterior draws (4000 draws, 5 standard errors)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    if kind == "ivon":
        opt = IVON(
            [
                {"params": model[0].parameters()},
                {"params": model[2].parameters(), "ess": 500.0, "weight_decay": 0.01},
            ],
            lr=0.05,
            ess=200.0,
            weight_decay=0.1,
            hess_init=0.3,
            seed=1,
        )
    else:
        opt = VOGN(
            model.parameters(),
            lr=0.05,
            ess=200.0,
            weight_decay=0.1,
            loss="cross_entropy",
            seed=1,
            model=model,
        )
    for _ in range(5):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    params = list(model.parameters())
    m, prec = optimizer_posterior(opt, params)
    torch.testing.assert_close(m, torch.cat([p.detach().reshape(-1) for p in params]))
    draws = []
    for _ in range(4000):
        with opt.sampled_params():
            draws.append(torch.cat([p.detach().reshape(-1) for p in params]))
    draws = torch.stack(draws).double()
    sd = prec.double().rsqrt()
    se_mean = sd / np.sqrt(len(draws))
    assert ((draws.mean(0) - m.double()).abs() <= 5 * se_mean).all()
    # the sample variance has standard error ≈ var·√(2/(n − 1))
    var = draws.var(0)
    assert ((var / sd**2 - 1).abs() <= 5 * np.sqrt(2 / (len(draws) - 1))).all()
    # the model's order is the default for modules; the optimizer is a valid posterior
    a = module_sensitivity(model, x, y, opt, precision="full")
    b = module_sensitivity(model, x, y, (m, prec), precision="full")
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_optimizer_posterior_units_per_group():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.ones(3))
    opt = IVON(
        [{"params": [a]}, {"params": [b], "ess": 10.0, "weight_decay": 0.5}],
        lr=0.1,
        ess=4.0,
        weight_decay=0.25,
        hess_init=0.75,
    )
    m, prec = optimizer_posterior(opt)
    torch.testing.assert_close(m, torch.tensor([0.0, 0, 1, 1, 1]))
    torch.testing.assert_close(prec, torch.tensor([4.0, 4, 12.5, 12.5, 12.5]))  # N(h + δ)
    m2, _ = optimizer_posterior(opt, [b, a])
    torch.testing.assert_close(m2, torch.tensor([1.0, 1, 1, 0, 0]))


# ---------------------------------------------------------------------------- errors
def test_bad_input_raises_naming_the_argument():
    X, y = logistic_problem()
    post = laplace(X, y, 1.0)
    m, S = expfam.FullGaussian().to_moments(post)
    with pytest.raises(ValueError, match="precision must be one of"):
        glm_sensitivity(X, y, post, precision="exact")
    with pytest.raises(ValueError, match="positive definite"):
        glm_sensitivity(X, y, (m, -S))
    with pytest.raises(ValueError, match="symmetric"):
        glm_sensitivity(X, y, (m, S + torch.triu(torch.ones_like(S), 1)))
    with pytest.raises(ValueError, match="diagonal precision must be > 0"):
        glm_sensitivity(X, y, (m, torch.zeros(3, dtype=F64)))
    with pytest.raises(ValueError, match="shape"):
        glm_sensitivity(X, y, (m, torch.ones(4, dtype=F64)))
    with pytest.raises(TypeError, match="posterior must be"):
        glm_sensitivity(X, y, m)
    with pytest.raises(ValueError, match="must match"):
        glm_sensitivity(X[:, :2], y, post)
    with pytest.raises(ValueError, match="link must be one of"):
        glm_sensitivity(X, y, post, "probit")
    with pytest.raises(ValueError, match="y must lie in"):
        glm_sensitivity(X, 2 * y, post)
    with pytest.raises(ValueError, match="y must have shape"):
        glm_sensitivity(X, y[:-1], post)
    with pytest.raises(ValueError, match="class labels in"):
        glm_sensitivity(X, torch.full((len(X),), 3), (torch.zeros(6), torch.ones(6)), "multinomial")
    with pytest.raises(ValueError, match="multinomial"):
        glm_sensitivity(X, y.long(), (torch.zeros(7), torch.ones(7)), "multinomial")
    with pytest.raises(ValueError, match="chunk_size"):
        glm_sensitivity(X, y, post, chunk_size=0)
    with pytest.raises(ValueError, match="scale"):
        glm_sensitivity(X, y, post, scale=-1.0)
    with pytest.raises(ValueError, match="remove selects no example"):
        glm_removal(X, y, post, [])
    with pytest.raises(ValueError, match="duplicate"):
        glm_removal(X, y, post, [1, 1])
    with pytest.raises(ValueError, match="outside"):
        glm_removal(X, y, post, [len(X)])
    with pytest.raises(ValueError, match="remove must be"):
        glm_removal(X, y, post, [0.5])
    with pytest.raises(ValueError, match="mask must have shape"):
        glm_removal(X, y, post, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="X_test and y_test"):
        glm_removal(X, y, post, [0], X_test=X)
    with pytest.raises(ValueError, match="X_test must have 3 columns"):
        glm_removal(X, y, post, [0], X_test=X[:, :2], y_test=y)
    # a precision that is not prior + sites: removing the examples leaves it indefinite
    weak = (m, 0.05 * torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="precision='full'"):
        glm_sensitivity(X, y, weak)
    with pytest.raises(ValueError, match="precision='full'"):
        glm_removal(X, y, weak, torch.arange(len(X)))
    with pytest.raises(ValueError, match="precision='full'"):
        glm_removal(X, y, (m, torch.full((3,), 0.05, dtype=F64)), torch.arange(len(X)))
    assert torch.isfinite(glm_sensitivity(X, y, weak, precision="full").score).all()
    with pytest.raises(ValueError, match="jac must have shape"):
        mpe_sensitivity(X[:, None, :2], y[:, None], torch.ones(len(X), 1, 1), post)
    with pytest.raises(ValueError, match="out_hess must have shape"):
        mpe_sensitivity(X[:, None], y[:, None], torch.ones(len(X), 2, 2), post)
    with pytest.raises(ValueError, match="error must have shape"):
        mpe_removal(X[:, None], y, torch.ones(len(X), 1, 1), post)


def test_bad_module_input_raises_naming_the_argument():
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(5, 3, dtype=F64), torch.tensor([0, 1, 1, 0, 1])
    m = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    post = (m, torch.ones_like(m))
    with pytest.raises(ValueError, match="loss must be one of"):
        module_sensitivity(model, x, y, post, "hinge")
    with pytest.raises(ValueError, match="dimension"):
        module_sensitivity(model, x, y, (m[:-1], torch.ones(7, dtype=F64)))
    with pytest.raises(ValueError, match="y must have 5 examples"):
        module_sensitivity(model, x, y[:4], post)
    with pytest.raises(ValueError, match="class labels in"):
        module_sensitivity(model, x, y + 1, post)
    with pytest.raises(ValueError, match="shape of the model's output"):
        module_sensitivity(model, x, torch.zeros(5, 3, dtype=F64), post, "mse")
    with pytest.raises(ValueError, match="sigma2"):
        module_sensitivity(model, x, y, post, "gaussian", sigma2=0.0)
    with pytest.raises(TypeError, match="model must be"):
        module_sensitivity(lambda t: t, x, y, post)
    with pytest.raises(TypeError, match="optimizer must be"):
        module_sensitivity(model, x, y, torch.optim.SGD(model.parameters(), lr=0.1))
    other = torch.nn.Linear(3, 2).double()
    opt = IVON(other.parameters(), lr=0.1, ess=10)
    with pytest.raises(ValueError, match="not trained by the optimizer"):
        module_sensitivity(model, x, y, opt)
    with pytest.raises(ValueError, match="x_test and y_test"):
        module_removal(model, x, y, post, [0], y_test=y)
    conv = torch.nn.Conv1d(1, 2, 3).double()
    mc = torch.cat([p.detach().reshape(-1) for p in conv.parameters()])
    with pytest.raises(ValueError, match="logits of shape"):
        module_sensitivity(conv, torch.randn(4, 1, 5, dtype=F64), y[:4], (mc, torch.ones_like(mc)))


# ---------------------------------------------------------------------------- the guide
def test_guide_examples_run_as_written():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/influence.md has python examples"
    namespace: dict = {"__name__": "influence_guide"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
