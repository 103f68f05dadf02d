"""blr.optim.BLROptimizer: the BLR for any family inside a training loop.

Oracles: the engine (blr.BLR over blr.functional.ModuleLoss, the functional route) with the same
draws and minibatches; IVON and VON in their BLR limit (β₁ = 0, α = lr, β₂ = 1 − ρ, no lr
rescaling); BayesBiNN (Bernoulli + Gumbel-softmax, κ = 1, no momentum). All in float64 over
20 steps of a small MLP.
"""

from __future__ import annotations

import io

import pytest
import torch

import blr
import expfam
from blr.functional import ModuleLoss
from blr.optim import IVON, VON, BayesBiNN, BLROptimizer

f64 = torch.float64
N = 40
mse = torch.nn.functional.mse_loss


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=f64)
    y = torch.sin(x @ torch.tensor([[1.0], [-0.5], [0.3]], dtype=f64))
    return x, y


def _mlp(kind: str = "real") -> torch.nn.Module:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            if kind == "pm1":
                p.copy_(torch.where(p >= 0, 1.0, -1.0))
            elif kind == "positive":
                p.abs_().add_(0.1)
    return model


def _batches(steps: int, size: int = 10):
    g = torch.Generator().manual_seed(2)
    return [torch.randperm(N, generator=g)[:size] for _ in range(steps)]


def _loop_step(opt, model, xb, yb, mc_samples=1):
    def closure():
        opt.zero_grad()
        loss = mse(model(xb), yb)
        loss.backward()
        return loss

    if mc_samples > 1:
        return opt.step(closure)
    with opt.sampled_params(train=True) as draw:
        opt.zero_grad()
        loss = mse(model(xb), yb)
        loss.backward()
        if draw is not None:  # (the other optimizers yield nothing)
            draw.set_loss(loss)
    opt.step()
    return loss


def _max_diff(a, b):
    return max(float((x - y).abs().max() / (1 + y.abs().max())) for x, y in zip(a, b))


CASES = {
    # name: (family, model kind, optimizer estimator, engine estimator, lr, weight_decay, init)
    "diag_stein": (expfam.DiagGaussian(), "real", None, blr.BonnetPrice(hessian="stein"), 0.1),
    "diag_grad_sq": (
        expfam.DiagGaussian(),
        "real",
        blr.BonnetPrice(hessian="grad_sq"),
        blr.BonnetPrice(hessian="grad_sq"),
        0.1,
    ),
    "diag_delta": (expfam.DiagGaussian(), "real", blr.Delta("grad_sq"), blr.Delta("grad_sq"), 0.1),
    "full_stein": (expfam.FullGaussian(), "real", None, blr.BonnetPrice(hessian="stein"), 0.1),
    "fixed_cov": (
        expfam.FixedCovGaussian(cov=0.01),
        "real",
        None,
        blr.BonnetPrice(hessian="stein"),
        0.002,
    ),
    "bernoulli_gumbel": (expfam.Bernoulli("pm1"), "pm1", None, blr.GumbelSoftmax(1.0), 0.01),
    "bernoulli01_gumbel": (
        expfam.Bernoulli("01"),
        "01",
        blr.GumbelSoftmax(0.5),
        blr.GumbelSoftmax(0.5),
        0.01,
    ),
    "gamma_reparam": (expfam.Gamma(), "positive", None, blr.Reparam(), 0.01),
}


def _gamma_init(model):
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return expfam.GammaNat(torch.full_like(theta, 19.0), -20.0 / theta)  # a = 20, mean θ


@pytest.mark.parametrize("case", sorted(CASES))
def test_functional_route_equals_the_optimizer_step_for_step(case):
    family, kind, est, engine_est, rho = CASES[case]
    wd = 0.01
    x, y = _data()
    model = _mlp("pm1" if kind == "01" else kind)
    if kind == "01":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((p + 1) / 2)
    init = _gamma_init(model) if kind == "positive" else None
    opt = BLROptimizer(
        model.parameters(), family, lr=rho, ess=N, weight_decay=wd, estimator=est, init=init,
        seed=3,
    )  # fmt: skip
    post = opt._posts[0].units[0]  # the block's prior and options (internal)
    loss = ModuleLoss(model, mse, (x, y), scale=N)
    if post.prior_as_loss:  # the default prior N(0, 1/(Nδ)) as a term of ℓ̄

        def engine_loss(b):
            data = loss.with_batch(b)
            return lambda th: data(th) + 0.5 * N * wd * (th * th).sum(-1)
    else:

        def engine_loss(b):
            return loss.with_batch(b)

    gaussian = blr.GaussianOptions(improved=True) if post.gaussian is not None else None
    engine = blr.BLR(
        family, post.nat, loss, estimator=engine_est, rho=rho, prior=post.prior,
        gaussian=gaussian, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    worst = 0.0
    for idx in _batches(20):
        _loop_step(opt, model, x[idx], y[idx])
        engine.step(engine_loss((x[idx], y[idx])))
        worst = max(worst, _max_diff(opt.posterior().nat, engine.posterior))
    assert worst <= 1e-10, worst
    assert opt.halvings == 0
    # the parameters hold E_q[θ]
    mean = family.nat_to_mean(engine.posterior)
    center = (
        family.location(engine.posterior)
        if post.center_field is None
        else mean[1 if kind == "positive" else 0]
    )
    assert torch.allclose(loss.flat_params(), center, rtol=0, atol=1e-10)


def test_score_function_route_equals_the_optimizer():
    """K = 4 draws of a 3-coordinate Gamma posterior (12 random numbers: the same stream drawn
    at once by the engine and one draw at a time by the optimizer)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(0.2)
    x, y = _data()
    x = x[:, :2]
    init = _gamma_init(model)
    est = blr.ScoreFunction(4)
    opt = BLROptimizer(
        model.parameters(), expfam.Gamma(), lr=0.05, ess=N, weight_decay=0.0, estimator=est,
        init=init, mc_samples=4, seed=7,
    )  # fmt: skip
    loss = ModuleLoss(model, mse, (x, y), scale=N)
    engine = blr.BLR(
        expfam.Gamma(), init, loss, estimator=est, rho=0.05,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    worst = 0.0
    for idx in _batches(20):
        _loop_step(opt, model, x[idx], y[idx], mc_samples=4)
        engine.step(loss.with_batch((x[idx], y[idx])))
        worst = max(worst, _max_diff(opt.posterior().nat, engine.posterior))
    assert worst <= 1e-10, worst


@pytest.mark.parametrize("improved", [True, False])
def test_ivon_and_von_are_the_diagonal_gaussian_blr(improved):
    """IVON with β₁ = 0 and no lr rescaling (VON without the correction) is the diagonal
    Gaussian BLR with Stein/Price curvature, ρ = 1 − β₂, a mean rate α = lr and the prior
    N(0, 1/(Nδ)): h = s/N − δ, m alike, to rounding, over 20 steps."""
    x, y = _data()
    rho, alpha, h0, wd = 0.05, 0.1, 0.5, 0.01
    m_fast, m_gen = _mlp(), _mlp()
    if improved:
        fast = IVON(
            m_fast.parameters(), lr=alpha, ess=N, hess_init=h0, beta1=0.0, beta2=1 - rho,
            weight_decay=wd, rescale_lr=False, seed=5,
        )  # fmt: skip
    else:
        fast = VON(
            m_fast.parameters(), lr=alpha, ess=N, hess_init=h0, beta2=1 - rho, weight_decay=wd,
            seed=5,
        )  # fmt: skip

    def generic(improved_flag):
        return BLROptimizer(
            m_gen.parameters(), expfam.DiagGaussian(), lr=rho, ess=N, weight_decay=wd,
            hess_init=h0, gaussian=blr.GaussianOptions(lr=alpha, improved=improved_flag), seed=5,
        )  # fmt: skip

    gen = generic(improved)
    worst = 0.0
    for idx in _batches(20):
        for model, opt in ((m_fast, fast), (m_gen, gen)):
            _loop_step(opt, model, x[idx], y[idx])
        state = fast.state_dict()["state"]
        mean = torch.cat([state[i]["mean"].reshape(-1) for i in sorted(state)])
        hess = torch.cat([state[i]["hess"].reshape(-1) for i in sorted(state)])
        m, s = expfam.DiagGaussian().to_moments(gen.posterior().nat)
        worst = max(worst, float((mean - m).abs().max()), float((hess - (s / N - wd)).abs().max()))
    assert worst <= 1e-10, worst


def test_ivon_equivalence_fails_without_the_correction():
    """The check above can fail: the generic optimizer without the improved-BLR term is not
    IVON."""
    x, y = _data()
    m_fast, m_gen = _mlp(), _mlp()
    fast = IVON(m_fast.parameters(), lr=0.1, ess=N, hess_init=0.5, beta1=0.0, beta2=0.95,
                weight_decay=0.01, rescale_lr=False, seed=5)  # fmt: skip
    gen = BLROptimizer(m_gen.parameters(), expfam.DiagGaussian(), lr=0.05, ess=N,
                       weight_decay=0.01, hess_init=0.5,
                       gaussian=blr.GaussianOptions(lr=0.1, improved=False), seed=5)  # fmt: skip
    for idx in _batches(5):
        for model, opt in ((m_fast, fast), (m_gen, gen)):
            _loop_step(opt, model, x[idx], y[idx])
    state = fast.state_dict()["state"]
    hess = torch.cat([state[i]["hess"].reshape(-1) for i in sorted(state)])
    s = expfam.DiagGaussian().to_moments(gen.posterior().nat)[1]
    assert float((hess - (s / N - 0.01)).abs().max()) > 1e-6


def test_bayesbinn_is_the_bernoulli_blr_with_gumbel_softmax():
    """BayesBiNN (κ = 1, no momentum, λ₀ = 0, λ = ±1 at the start) is the ±1 Bernoulli BLR with
    the Gumbel-softmax estimator: λ equal to rounding over 20 steps."""
    x, y = _data()
    m_fast, m_gen = _mlp("pm1"), _mlp("pm1")
    fast = BayesBiNN(m_fast.parameters(), lr=0.01, ess=N, temperature=0.7, seed=4)
    gen = BLROptimizer(m_gen.parameters(), expfam.Bernoulli("pm1"), lr=0.01, ess=N,
                       estimator=blr.GumbelSoftmax(0.7), seed=4)  # fmt: skip
    worst = 0.0
    for idx in _batches(20):
        for model, opt in ((m_fast, fast), (m_gen, gen)):
            _loop_step(opt, model, x[idx], y[idx])
        state = fast.state_dict()["state"]
        lam = torch.cat([state[i]["lam"].reshape(-1) for i in sorted(state)])
        worst = max(worst, float((lam - gen.posterior().nat.lam1).abs().max()))
    assert worst <= 1e-10, worst
    for p, q in zip(m_fast.parameters(), m_gen.parameters()):  # both hold tanh λ
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


def test_bayesbinn_equivalence_holds_where_tanh_saturates():
    """With λ far beyond 19 (1 − tanh²λ = 0 in float64) the Gumbel-softmax step of BLROptimizer
    stays finite and still equals BayesBiNN (whose kernel works in log space), 10 steps."""
    x, y = _data()
    m_fast, m_gen = _mlp("pm1"), _mlp("pm1")
    fast = BayesBiNN(m_fast.parameters(), lr=0.01, ess=N, temperature=0.7, seed=4)
    init = expfam.BernoulliNat(
        30.0 * torch.cat([p.detach().reshape(-1) for p in m_gen.parameters()])
    )
    fast.load_state_dict(_bayesbinn_with_lam(fast, init.lam1))
    gen = BLROptimizer(m_gen.parameters(), expfam.Bernoulli("pm1"), lr=0.01, ess=N, init=init,
                       estimator=blr.GumbelSoftmax(0.7), seed=4)  # fmt: skip
    for idx in _batches(10):
        for model, opt in ((m_fast, fast), (m_gen, gen)):
            _loop_step(opt, model, x[idx], y[idx])
    state = fast.state_dict()["state"]
    lam = torch.cat([state[i]["lam"].reshape(-1) for i in sorted(state)])
    assert torch.isfinite(gen.posterior().nat.lam1).all()
    torch.testing.assert_close(gen.posterior().nat.lam1, lam, rtol=0, atol=1e-10)


def _bayesbinn_with_lam(opt, lam):
    """``opt``'s state_dict with λ replaced, group by group, by the flat ``lam``."""
    sd = opt.state_dict()
    start = 0
    for i in sorted(sd["state"]):
        n = sd["state"][i]["lam"].numel()
        sd["state"][i]["lam"] = lam[start : start + n].reshape(sd["state"][i]["lam"].shape).clone()
        start += n
    return sd


def test_param_groups_each_with_their_family_and_schedulers():
    x, y = _data()
    model = _mlp()
    body, head = model[0], model[2]
    opt = BLROptimizer(
        [
            {"params": body.parameters()},
            {"params": head.parameters(), "family": expfam.FullGaussian(), "lr": 0.2},
        ],
        expfam.DiagGaussian(), lr=0.1, ess=N, seed=0,
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for idx in _batches(4):
        _loop_step(opt, model, x[idx], y[idx])
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.025, 0.05]
    q = opt.posterior(model)
    assert q.family.name == "product(gaussian_diag:16, gaussian_full:5)"
    assert q.family.split(q.nat)[1].lam2.shape == (5, 5)


def test_state_dict_resumes_bit_exactly_and_loads_weights_only():
    x, y = _data()
    batches = _batches(6)

    def run(opt, model, idxs):
        for idx in idxs:
            _loop_step(opt, model, x[idx], y[idx])

    ma = _mlp()
    a = BLROptimizer(ma.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, seed=1)
    run(a, ma, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": ma.state_dict(), "opt": a.state_dict()}, buf)
    run(a, ma, batches[3:])
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    mb = _mlp()
    mb.load_state_dict(saved["model"])
    b = BLROptimizer(mb.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N)
    b.load_state_dict(saved["opt"])
    run(b, mb, batches[3:])
    for u, v in zip(a.posterior().nat, b.posterior().nat):
        assert torch.equal(u, v)
    assert b.param_groups[0]["step"] == 6


def test_a_step_that_would_leave_the_domain_is_halved_not_applied():
    """A Gamma posterior with ρ = 1: the plain step leaves a > 0, b > 0; the optimizer halves
    it and never writes NaN."""
    x, y = _data()
    model = _mlp("positive")
    opt = BLROptimizer(model.parameters(), expfam.Gamma(), lr=1.0, ess=N,
                       init=_gamma_init(model), seed=0)  # fmt: skip
    for idx in _batches(10):
        _loop_step(opt, model, x[idx], y[idx])
        expfam.Gamma().validate_nat(opt.posterior().nat)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.halvings > 0


def test_nonfinite_gradients_raise_or_skip_and_leave_the_state():
    model = _mlp()
    opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, seed=0)
    before = [t.clone() for t in opt.posterior().nat]
    with opt.sampled_params(train=True):
        (model(torch.full((2, 3), float("nan"), dtype=f64)).sum()).backward()
    with pytest.raises(FloatingPointError, match="NaN"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, opt.posterior().nat))
    skip = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N,
                        nonfinite="skip")  # fmt: skip
    with skip.sampled_params(train=True):
        (model(torch.full((2, 3), float("inf"), dtype=f64)).sum()).backward()
    skip.step()
    assert skip.skipped_steps == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"family": expfam.Bernoulli("pm1")}, ValueError, "params of param group 0 are not in"),
        ({"family": expfam.Gamma()}, ValueError, "not in the support of gamma"),
        ({"family": "gaussian"}, TypeError, "family must be an expfam.ExpFamily"),
        ({"prior": expfam.BernoulliNat(torch.zeros(21, dtype=f64))}, TypeError, "prior must be"),
        (
            {"prior": expfam.DiagNat(torch.zeros(3, dtype=f64), -torch.ones(3, dtype=f64))},
            ValueError,
            "prior.lam1 has shape",
        ),
        ({"estimator": blr.GumbelSoftmax()}, TypeError, "GumbelSoftmax needs a Bernoulli"),
        ({"estimator": blr.BonnetPrice(points="sigma")}, ValueError, 'points="sigma"'),
        ({"estimator": blr.BonnetPrice(4, "stein")}, ValueError, "n_samples"),
        ({"estimator": blr.Exact()}, TypeError, "cannot be estimated"),
        ({"ess": 0}, ValueError, "ess must be > 0"),
        ({"lr": -1}, ValueError, "lr must be ≥ 0"),
        ({"gaussian": blr.GaussianOptions()}, TypeError, None),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    model = _mlp()
    args = {"family": expfam.DiagGaussian(), "lr": 0.1, "ess": N, **kwargs}
    if "gaussian" in kwargs:
        args["family"] = expfam.Bernoulli("pm1")
        model = _mlp("pm1")
        match = "gaussian options need"
    with pytest.raises(error, match=match):
        BLROptimizer(model.parameters(), **args)


def test_a_gamma_needs_init():
    with pytest.raises(ValueError, match="init is needed for gamma"):
        BLROptimizer(_mlp("positive").parameters(), expfam.Gamma(), lr=0.1, ess=N)


def test_gamma_over_negative_weights_is_refused():
    model = _mlp()  # real weights, some negative
    init = expfam.GammaNat(torch.ones(21, dtype=f64), -torch.ones(21, dtype=f64))
    with pytest.raises(ValueError, match="not in the support of gamma"):
        BLROptimizer(model.parameters(), expfam.Gamma(), lr=0.1, ess=N, init=init)


def test_state_dict_of_another_layout_is_refused_and_nothing_changes():
    a = BLROptimizer(_mlp().parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, seed=0)
    b = BLROptimizer(_mlp().parameters(), expfam.FullGaussian(), lr=0.1, ess=N, seed=0)
    before = [t.clone() for t in b.posterior().nat]
    with pytest.raises(ValueError, match="family 'gaussian_diag' in the state_dict"):
        b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(before, b.posterior().nat))
    with pytest.raises(ValueError, match=r"not from blr\.optim\.BLROptimizer"):
        b.load_state_dict(IVON(_mlp().parameters(), lr=0.1, ess=N).state_dict())


def test_score_function_needs_the_loss_of_each_draw():
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(0.2)
    opt = BLROptimizer(model.parameters(), expfam.Gamma(), lr=0.1, ess=N,
                       init=_gamma_init(model), estimator=blr.ScoreFunction(2))  # fmt: skip
    for _ in range(2):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            model(torch.ones(3, 2, dtype=f64)).sum().backward()
    with pytest.raises(ValueError, match="needs the loss of each draw"):
        opt.step()


@pytest.fixture
def one_thread():
    """Small dense linear algebra (31 × 31 Cholesky) is ~30× faster on one thread here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_breast_cancer_logistic_regression_reaches_the_variational_optimum(kind, one_thread):
    """Bayesian logistic regression on sklearn's 569 rows (standardised, intercept column,
    prior N(0, I): mean NLL, ess = N, weight_decay = 1/N, full batch): BLROptimizer with Stein
    curvature (16 draws a step, ρ_t = 0.3/(1 + t/50), 1000 steps, seed 0) ends within 0.1 nats
    of the ELBO optimum that blr.BLR + GLMQuadrature reach (both ELBOs by the same quadrature)."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    from blr.glm import GLMQuadrature

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    X = torch.as_tensor(np.hstack([x, np.ones((len(x), 1))]), dtype=f64)
    Y = torch.as_tensor(y, dtype=f64)
    n, d = X.shape
    fam = expfam.FullGaussian() if kind == "full" else expfam.DiagGaussian()
    zeros = torch.zeros(d, dtype=f64)
    prior = fam.from_moments(zeros, torch.eye(d, dtype=f64) if kind == "full" else zeros + 1)
    quad = GLMQuadrature(X, Y)
    rho, gamma = (1.0, 0.0) if kind == "full" else (0.1, 0.8)
    best = blr.BLR(fam, prior, None, estimator=quad, prior=prior, rho=rho, momentum=gamma)
    for _ in range(300):
        best.step()

    def elbo(nat):
        return float(blr.objective(fam, nat, quad.expected_loss(fam, nat), prior))

    model = torch.nn.Linear(d, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    opt = BLROptimizer(model.parameters(), fam, lr=0.3, ess=n, weight_decay=1.0 / n,
                       hess_init=0.01, mc_samples=16, seed=0)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t / 50))

    def closure():
        opt.zero_grad()
        f = model(X).squeeze(-1)
        loss = (torch.nn.functional.softplus(f) - Y * f).mean()  # the mean NLL
        loss.backward()
        return loss

    for _ in range(1000):
        opt.step(closure)
        sched.step()
    gap = elbo(opt.posterior().nat) - elbo(best.posterior)
    assert 0 <= gap < 0.1, gap


# ---------------------------------------------------------------------------- structured posteriors
def test_a_product_family_equals_one_group_per_block():
    """One group with Product(full on the first layer, diagonal on the second) takes the same
    steps as two groups with those families (same draws: blocks are drawn in order)."""
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    d1 = sum(p.numel() for p in m1[0].parameters())
    d2 = sum(p.numel() for p in m1[2].parameters())
    prod = expfam.Product([(expfam.FullGaussian(), d1), (expfam.DiagGaussian(), d2)])
    a = BLROptimizer(m1.parameters(), prod, lr=0.1, ess=N, seed=2)
    b = BLROptimizer(
        [
            {"params": m2[0].parameters(), "family": expfam.FullGaussian()},
            {"params": m2[2].parameters()},
        ],
        expfam.DiagGaussian(), lr=0.1, ess=N, seed=2,
    )  # fmt: skip
    for idx in _batches(10):
        _loop_step(a, m1, x[idx], y[idx])
        _loop_step(b, m2, x[idx], y[idx])
    qa, qb = a.posterior(m1), b.posterior(m2)
    assert qa.family.name == qb.family.name == "product(gaussian_full:16, gaussian_diag:5)"
    for u, v in zip(qa.nat, qb.nat):
        assert torch.equal(u, v)


def test_a_product_with_binary_and_real_blocks_trains_each_by_its_rule():
    """Product(±1 Bernoulli on the first layer's weights, diagonal Gaussian on the rest): the
    Bernoulli block is updated by the Gumbel-softmax BLR (as BayesBiNN on that layer alone), the
    Gaussian block by the improved BLR with Stein curvature; λ stays valid and finite."""
    x, y = _data()
    model = _mlp()
    with torch.no_grad():
        model[0].weight.copy_(torch.where(model[0].weight >= 0, 1.0, -1.0))
    params = [model[0].weight, model[0].bias, *model[2].parameters()]
    fam = expfam.Product([(expfam.Bernoulli("pm1"), 12), (expfam.DiagGaussian(), 9)])
    opt = BLROptimizer(params, fam, lr=0.05, ess=N, seed=0,
                       estimator=[blr.GumbelSoftmax(0.5), None])  # fmt: skip
    unit_b, unit_g = opt._posts[0].units
    assert isinstance(unit_b.estimator, blr.GumbelSoftmax)
    assert unit_g.estimator.hessian == "stein"
    for idx in _batches(20):
        _loop_step(opt, model, x[idx], y[idx])
    q = opt.posterior()
    fam.validate_nat(q.nat)
    lam_b = fam.split(q.nat)[0].lam1
    assert torch.equal(model[0].weight.detach().reshape(-1), torch.tanh(lam_b))
    with opt.sampled_params():  # prediction draws are ±1 on the binary block
        assert set(model[0].weight.detach().unique().tolist()) <= {-1.0, 1.0}


def _linreg_tasks():
    g = torch.Generator().manual_seed(3)
    w = torch.tensor([[0.7], [-1.2], [0.4]], dtype=f64)
    tasks = []
    for n in (30, 50):
        x = torch.randn(n, 3, generator=g, dtype=f64)
        tasks.append((x, x @ w + 0.3 * torch.randn(n, 1, generator=g, dtype=f64)))
    return tasks


EXACT = {"estimator": blr.Delta("exact"), "gaussian": blr.GaussianOptions(improved=False)}
"""The exact Hessian at the mean and the plain BLR (the improved BLR's ρ²/2 term is not Newton)."""


def _exact_step(opt, model, x, y):
    """One step with the exact Hessian (backward through the gradient's graph)."""
    with opt.sampled_params(train=True):
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).mean()
        loss.backward(create_graph=True)
    opt.step()


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_exact_hessian_in_the_loop_is_one_newton_step_to_the_posterior():
    """Conjugate Bayesian linear regression: Delta("exact") at ρ = 1 lands on the exact
    posterior (S = XᵀX + Nδ I, m = S⁻¹Xᵀy) in one step."""
    (x, y), _ = _linreg_tasks()
    n = x.shape[0]
    model = torch.nn.Linear(3, 1, bias=False).double()
    opt = BLROptimizer(model.parameters(), expfam.FullGaussian(), lr=1.0, ess=n,
                       weight_decay=0.5 / n, seed=0, **EXACT)  # fmt: skip
    _exact_step(opt, model, x, y)
    prec = x.T @ x + 0.5 * torch.eye(3, dtype=f64)
    m, s = expfam.FullGaussian().to_moments(opt.posterior().nat)
    torch.testing.assert_close(s, prec, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, torch.linalg.solve(prec, x.T @ y).squeeze(-1), rtol=1e-12,
                               atol=1e-12)  # fmt: skip
    with pytest.raises(RuntimeError, match="create_graph=True"):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            (0.5 * ((model(x) - y) ** 2).mean()).backward()


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_the_posterior_of_task_one_is_the_prior_of_task_two():
    """Variational continual learning on conjugate Bayesian linear regression: fit task 1, pass
    its posterior() (saved and loaded with weights_only=True) as prior= for task 2; the result
    equals one fit on both tasks (exact: the exact Hessian, ρ = 1)."""
    (x1, y1), (x2, y2) = _linreg_tasks()
    n1, n2 = x1.shape[0], x2.shape[0]
    delta0 = 0.5  # the first prior's precision
    model = torch.nn.Linear(3, 1, bias=False).double()
    first = BLROptimizer(model.parameters(), expfam.FullGaussian(), lr=1.0, ess=n1,
                         weight_decay=delta0 / n1, seed=0, **EXACT)  # fmt: skip
    _exact_step(first, model, x1, y1)
    buf = io.BytesIO()
    torch.save(first.posterior(model).state_dict(), buf)
    buf.seek(0)
    prior = blr.ParameterPosterior.from_state_dict(torch.load(buf, weights_only=True), model)
    second = BLROptimizer(model.parameters(), expfam.FullGaussian(), lr=1.0, ess=n2,
                          prior=prior, seed=0, **EXACT)  # fmt: skip
    _exact_step(second, model, x2, y2)

    both = torch.nn.Linear(3, 1, bias=False).double()
    joint = BLROptimizer(both.parameters(), expfam.FullGaussian(), lr=1.0, ess=n1 + n2,
                         weight_decay=delta0 / (n1 + n2), seed=0, **EXACT)  # fmt: skip
    x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
    _exact_step(joint, both, x, y)
    for a, b in zip(second.posterior().nat, joint.posterior().nat):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert float(second.posterior(model).kl(joint.posterior(both))) < 1e-10
    # ... and the check can fail: task 2 alone (the default prior) is another posterior
    alone = BLROptimizer(torch.nn.Linear(3, 1, bias=False).double().parameters(),
                         expfam.FullGaussian(), lr=1.0, ess=n2, weight_decay=delta0 / n2,
                         **EXACT)  # fmt: skip
    assert not torch.allclose(alone.posterior().nat.lam2, joint.posterior().nat.lam2)


def test_a_prior_of_another_family_or_model_is_refused():
    model = _mlp()
    diag = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N).posterior()
    with pytest.raises(ValueError, match="posterior of another family"):
        BLROptimizer(model.parameters(), expfam.FullGaussian(), lr=0.1, ess=N, prior=diag)
    other = torch.nn.Linear(3, 2).double()
    with pytest.raises(ValueError, match="posterior over another model"):
        BLROptimizer(other.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, prior=diag)
    with pytest.raises(ValueError, match="model's parameters must be this optimizer's"):
        BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N).posterior(other)


def test_posterior_draws_into_the_module_and_predicts():
    from blr.predict import predict_regression

    x, y = _data()
    model = _mlp()
    opt = BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, seed=0)
    for idx in _batches(5):
        _loop_step(opt, model, x[idx], y[idx])
    q = opt.posterior(model)
    q.generator = torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in model.parameters()]
    pred = predict_regression(model, q, x, n_samples=16, noise_var=0.1)
    assert pred.mean.shape[0] == N and bool((pred.var > 0.1).all())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    torch.testing.assert_close(q.mean(), torch.cat([p.reshape(-1) for p in before]))


def test_a_multi_group_posterior_is_a_prior_for_the_same_groups():
    model = _mlp()
    groups = [
        {"params": model[0].parameters(), "family": expfam.FullGaussian()},
        {"params": model[2].parameters()},
    ]
    first = BLROptimizer(groups, expfam.DiagGaussian(), lr=0.1, ess=N, seed=0)
    q = first.posterior()
    groups = [
        {"params": model[0].parameters(), "family": expfam.FullGaussian()},
        {"params": model[2].parameters()},
    ]
    second = BLROptimizer(groups, expfam.DiagGaussian(), lr=0.1, ess=N, prior=q)
    for unit, part in zip((u for g in second._posts for u in g.units), q.family.split(q.nat)):
        assert all(torch.equal(a, b) for a, b in zip(unit.prior, part))


# ---------------------------------------------------------------------------- priors of IVON
def _diag_posterior(model, m, prec):
    fam = expfam.DiagGaussian()
    return blr.ParameterPosterior(fam, fam.from_moments(m, prec), model)


def test_ivon_with_its_default_prior_given_as_a_posterior_is_ivon():
    """prior = N(0, 1/(Nδ)) given as a ParameterPosterior reproduces weight_decay = δ."""
    x, y = _data()
    wd = 0.01
    m1, m2 = _mlp(), _mlp()
    d = sum(p.numel() for p in m1.parameters())
    prior = _diag_posterior(m2, torch.zeros(d, dtype=f64), torch.full((d,), N * wd, dtype=f64))
    a = IVON(m1.parameters(), lr=0.1, ess=N, hess_init=0.5, beta2=0.95, weight_decay=wd, seed=5)
    b = IVON(m2.parameters(), lr=0.1, ess=N, hess_init=0.5, beta2=0.95, weight_decay=wd, seed=5,
             prior=prior)  # fmt: skip
    for idx in _batches(20):
        for model, opt in ((m1, a), (m2, b)):
            _loop_step(opt, model, x[idx], y[idx])
    for u, v in zip(a.posterior().nat, b.posterior().nat):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [IVON, VON])
def test_ivon_posterior_as_the_prior_of_a_new_ivon_is_the_blr_with_that_prior(cls):
    """Task 1 trains IVON; its posterior() is the prior of task 2's IVON (VON), which equals
    BLROptimizer with the same prior in the BLR limit, over 20 steps; and it differs from a
    task-2 run with the default prior (the check can fail)."""
    x, y = _data()
    m1 = _mlp()
    first = IVON(m1.parameters(), lr=0.1, ess=N, hess_init=0.5, beta2=0.95, seed=1)
    for idx in _batches(10):
        _loop_step(first, m1, x[idx], y[idx])
    prior = first.posterior(m1)
    x2, y2 = x.flip(0), -y.flip(0)  # another task
    m_fast, m_gen, m_plain = _mlp(), _mlp(), _mlp()
    kw = dict(lr=0.1, ess=N, hess_init=0.5, beta2=0.95, seed=6)
    if cls is IVON:
        kw.update(beta1=0.0, rescale_lr=False)
    fast = cls(m_fast.parameters(), prior=prior, **kw)
    plain = cls(m_plain.parameters(), **kw)
    improved = cls is IVON
    gen = BLROptimizer(m_gen.parameters(), expfam.DiagGaussian(), lr=0.05, ess=N, hess_init=0.5,
                       prior=prior, gaussian=blr.GaussianOptions(lr=0.1, improved=improved),
                       seed=6)  # fmt: skip
    for idx in _batches(20):
        for model, opt in ((m_fast, fast), (m_gen, gen), (m_plain, plain)):
            _loop_step(opt, model, x2[idx], y2[idx])
    assert _max_diff(fast.posterior().nat, gen.posterior().nat) <= 1e-10
    assert _max_diff(plain.posterior().nat, gen.posterior().nat) > 1e-3


def test_ivon_refuses_a_prior_that_does_not_fit():
    model = _mlp()
    d = sum(p.numel() for p in model.parameters())
    good = _diag_posterior(model, torch.zeros(d, dtype=f64), torch.ones(d, dtype=f64))
    with pytest.raises(ValueError, match="fused=False"):
        IVON(model.parameters(), lr=0.1, ess=N, prior=good, fused="compile")
    other = torch.nn.Linear(3, 2).double()
    with pytest.raises(ValueError, match="posterior over another model"):
        IVON(other.parameters(), lr=0.1, ess=N, prior=good)
    bern = BayesBiNN(_mlp("pm1").parameters(), lr=0.1, ess=N).posterior()
    with pytest.raises(ValueError, match="prior must be a gaussian_diag posterior"):
        IVON(model.parameters(), lr=0.1, ess=N, prior=bern)


# ---------------------------------------------------------------------------- per-example curvature
@pytest.mark.parametrize(
    ("fast", "estimator", "curvature"),
    [
        ("VOGN", blr.BonnetPrice(hessian="ggn"), "ggn"),
        ("OGN", blr.Delta("ggn"), "ggn"),
        ("VOGN", blr.BonnetPrice(hessian="per_example"), "ef"),
    ],
)
def test_vogn_and_ogn_are_the_blr_with_per_example_curvature(fast, estimator, curvature):
    """VOGN (OGN) with β₁ = 0 on minibatches of 10 is the diagonal Gaussian BLR with the
    per-example GGN (squared per-example gradients) at a draw (at the mean), ρ = 1 − β₂, mean
    rate α, without the improved-BLR term: equal to rounding over 20 steps."""
    from blr.optim import OGN, VOGN

    cls = {"VOGN": VOGN, "OGN": OGN}[fast]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=f64)
    y = torch.randint(0, 3, (N,), generator=g)

    def net():
        torch.manual_seed(1)
        return torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
        ).double()

    m_fast, m_gen = net(), net()
    fast_opt = cls(m_fast.parameters(), lr=0.1, ess=N, hess_init=0.5, beta1=0.0, beta2=0.95,
                   weight_decay=0.01, seed=5, model=m_fast, curvature=curvature,
                   loss="cross_entropy")  # fmt: skip
    gen = BLROptimizer(m_gen.parameters(), expfam.DiagGaussian(), lr=0.05, ess=N,
                       weight_decay=0.01, hess_init=0.5, estimator=estimator, model=m_gen,
                       curvature_loss="cross_entropy",
                       gaussian=blr.GaussianOptions(lr=0.1, improved=False), seed=5)  # fmt: skip
    worst = 0.0
    for idx in _batches(20):
        for model, opt in ((m_fast, fast_opt), (m_gen, gen)):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        worst = max(worst, _max_diff(fast_opt.posterior().nat, gen.posterior().nat))
    assert worst <= 1e-10, worst


def test_per_example_curvature_needs_the_model_and_a_diagonal_family():
    model = _mlp()
    ggn = blr.BonnetPrice(hessian="ggn")
    with pytest.raises(TypeError, match="needs model="):
        BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, estimator=ggn)
    with pytest.raises(ValueError, match="needs curvature_loss="):
        BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, estimator=ggn,
                     model=model)  # fmt: skip
    with pytest.raises(ValueError, match="it needs a DiagGaussian"):
        BLROptimizer(model.parameters(), expfam.FullGaussian(), lr=0.1, ess=N, estimator=ggn,
                     model=model, curvature_loss="gaussian")  # fmt: skip
    with pytest.raises(ValueError, match="curvature_loss"):
        BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=N, estimator=ggn,
                     model=model, curvature_loss="hinge")  # fmt: skip


@pytest.mark.parametrize("name", ["VOGN", "OGN", "Vadam", "BayesBiNN"])
def test_every_optimizer_takes_a_posterior_as_its_prior(name):
    """The scalar prior of each optimizer, given as a ParameterPosterior, takes the same steps;
    the previous run's posterior() as the prior takes other steps, and a posterior of another
    family is refused."""
    from blr.optim import OGN, VOGN, Vadam

    x, y = _data()
    pm = name == "BayesBiNN"
    d = 21
    if pm:
        fam = expfam.Bernoulli("pm1")
        scalar = {"prior_lam": 0.3}
        nat = expfam.BernoulliNat(torch.full((d,), 0.3, dtype=f64))
    else:
        fam = expfam.DiagGaussian()
        prec = {"Vadam": 2.0}.get(name, N * 0.01)
        scalar = {"prior_prec": 2.0} if name == "Vadam" else {"weight_decay": 0.01}
        nat = fam.from_moments(torch.zeros(d, dtype=f64), torch.full((d,), prec, dtype=f64))

    def make(model, **kw):
        if name in ("VOGN", "OGN"):
            cls = VOGN if name == "VOGN" else OGN
            return cls(model.parameters(), lr=0.1, ess=N, model=model, loss="gaussian", seed=1,
                       **kw)  # fmt: skip
        cls = Vadam if name == "Vadam" else BayesBiNN
        return cls(model.parameters(), lr=0.01, ess=N, seed=1, **kw)

    def run(opt, model):
        for idx in _batches(8):
            _loop_step(opt, model, x[idx], y[idx])
        return opt.posterior(model)

    kind = "pm1" if pm else "real"
    m1, m2, m3 = _mlp(kind), _mlp(kind), _mlp(kind)
    a = run(make(m1, **scalar), m1)
    b = run(make(m2, prior=blr.ParameterPosterior(fam, nat, m2)), m2)
    for u, v in zip(a.nat, b.nat):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    c = run(make(m3, prior=a.bind(m3)), m3)
    assert _max_diff(c.nat, a.nat) > 1e-6
    other = expfam.DiagGaussian() if pm else expfam.Bernoulli("pm1")
    wrong_nat = (
        other.from_moments(torch.zeros(d, dtype=f64), torch.ones(d, dtype=f64))
        if pm
        else expfam.BernoulliNat(torch.zeros(d, dtype=f64))
    )
    with pytest.raises(ValueError, match="prior must be a"):
        make(_mlp(kind), prior=blr.ParameterPosterior(other, wrong_nat, _mlp(kind)))


def test_bayes_by_backprop_takes_a_posterior_as_its_prior():
    from blr.optim import BayesByBackprop

    x, y = _data()
    d = 21

    def run(model, **kw):
        opt = BayesByBackprop(model.parameters(), lr=0.01, ess=N, seed=1, **kw)
        for idx in _batches(8):
            _loop_step(opt, model, x[idx], y[idx])
        return opt

    m1, m2, m3 = _mlp(), _mlp(), _mlp()
    fam = expfam.DiagGaussian()
    default = fam.from_moments(torch.zeros(d, dtype=f64), torch.full((d,), 2.0, dtype=f64))
    a = run(m1, prior_prec=2.0)
    b = run(m2, prior=blr.ParameterPosterior(fam, default, m2))
    for u, v in zip(a.posterior().nat, b.posterior().nat):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.kl(), b.kl(), rtol=1e-12, atol=0)
    c = run(m3, prior=a.posterior(m1).bind(m3))
    assert _max_diff(c.posterior().nat, a.posterior().nat) > 1e-6
    # the KL to the given prior, against the family's closed form
    q = c.posterior(m3)
    torch.testing.assert_close(c.kl(), q.kl(a.posterior(m1).bind(m3)).double(), rtol=1e-10, atol=0)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("family", [expfam.DiagGaussian(), expfam.FullGaussian()])
def test_exact_hessian_at_draws_of_a_network_equals_the_functional_route(family):
    """BonnetPrice(hessian="exact") at Monte Carlo draws of a nonlinear network (the Hessian's
    backward passes must read the draw, not the mean) equals the engine's on ModuleLoss."""
    x, y = _data()
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    model = model.double()
    est = blr.BonnetPrice(hessian="exact")
    opt = BLROptimizer(model.parameters(), family, lr=0.1, ess=N, seed=3, estimator=est)
    unit = opt._posts[0].units[0]
    loss = ModuleLoss(model, mse, (x, y), scale=N)
    engine = blr.BLR(family, unit.nat, loss, estimator=est, rho=0.1, prior=unit.prior,
                     gaussian=blr.GaussianOptions(improved=True),
                     generator=torch.Generator().manual_seed(3))  # fmt: skip
    for idx in _batches(5):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            mse(model(x[idx]), y[idx]).backward(create_graph=True)
        opt.step()
        engine.step(loss.with_batch((x[idx], y[idx])))
        assert _max_diff(opt.posterior().nat, engine.posterior) <= 1e-10


def test_a_group_without_elements_is_refused():
    with pytest.raises(ValueError, match="have no elements"):
        BLROptimizer([torch.zeros(0, 3, requires_grad=True)], expfam.FullGaussian(), lr=0.1, ess=N)


def test_the_mean_of_a_posterior_leaves_the_global_random_state_alone():
    """E_q[θ] of a non-Gaussian family (found through its identity statistic at a point of the
    support) draws that point from a generator of its own."""
    model = _mlp("positive")
    q = blr.ParameterPosterior(expfam.Gamma(), _gamma_init(model), model)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    mean = q.mean()
    assert torch.equal(torch.rand(3), expected)
    torch.testing.assert_close(
        mean, torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    )
