"""The engine: GD from the fixed-covariance family, the (m, S)-form against the λ-space rule,
natural momentum, the improved BLR, schedules, the stateful wrapper and its errors."""

from __future__ import annotations

import pytest
import torch

import blr
import expfam
from expfam.tree import tmap

f64 = torch.float64
A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=f64)
B = torch.tensor([1.0, -1.0], dtype=f64)


def quadratic(theta):
    return 0.5 * ((theta @ A) * theta).sum(-1) - theta @ B


def quartic(theta):
    return (theta**4 / 4 + (theta @ A) * theta / 2).sum(-1) - theta @ B


@pytest.mark.parametrize(
    "estimator", [blr.Delta(), blr.BonnetPrice(points="sigma")], ids=["delta", "exact-expectation"]
)
def test_fixed_covariance_rule_is_gradient_descent(estimator):
    """Row 1: ∇_μ(−H) = 0, so 50 BLR steps are 50 GD steps θ ← θ − α∇ℓ(θ), not a shrinking GD."""
    fam = expfam.FixedCovGaussian()
    nat, theta = expfam.FixedCovNat(torch.zeros(2, dtype=f64)), torch.zeros(2, dtype=f64)
    for _ in range(50):
        nat = blr.step(fam, nat, quadratic, 0.1, estimator=estimator)
        theta = theta - 0.1 * (A @ theta - B)
        torch.testing.assert_close(fam.location(nat), theta, rtol=1e-12, atol=1e-14)
    for _ in range(400):
        nat = blr.step(fam, nat, quadratic, 0.1, estimator=estimator)
    torch.testing.assert_close(fam.location(nat), torch.tensor([0.6, -0.8], dtype=f64))


def test_newton_is_the_full_gaussian_rule_at_rho_one():
    fam = expfam.FullGaussian()
    nat = fam.from_moments(torch.tensor([2.0, 2.0], dtype=f64), torch.eye(2, dtype=f64))
    theta = torch.tensor([2.0, 2.0], dtype=f64)
    for _ in range(6):
        nat = blr.step(fam, nat, quartic, 1.0, estimator=blr.Delta())
        x = theta.clone().requires_grad_()
        g = torch.autograd.grad(quartic(x.unsqueeze(0)).sum(), x, create_graph=True)[0]
        h = torch.stack([torch.autograd.grad(g[i], x, retain_graph=True)[0] for i in range(2)])
        theta = theta - torch.linalg.solve(h, g.detach())
        torch.testing.assert_close(fam.location(nat), theta, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(-2 * nat.lam2, h.detach(), rtol=1e-10, atol=1e-12)


FAMS = [expfam.FullGaussian(), expfam.DiagGaussian()]


def _start(fam):
    m = torch.tensor([0.5, -0.3], dtype=f64)
    if isinstance(fam, expfam.FullGaussian):
        return fam.from_moments(m, torch.tensor([[1.5, 0.2], [0.2, 0.8]], dtype=f64))
    return fam.from_moments(m, torch.tensor([1.5, 0.8], dtype=f64))


@pytest.mark.parametrize("fam", FAMS, ids=["full", "diag"])
def test_gaussian_form_with_one_rate_is_the_blr(fam):
    nat_a = nat_b = _start(fam)
    est = blr.BonnetPrice(points="sigma")
    for _ in range(10):
        nat_a = blr.step(fam, nat_a, quartic, 0.3, estimator=est)
        grad = est(fam, nat_b, quartic).grad
        nat_b = blr.gaussian_step(fam, nat_b, grad, rho=0.3)
        for x, y in zip(nat_a, nat_b):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("fam", FAMS, ids=["full", "diag"])
def test_natural_momentum_in_m_s_form_is_heavy_ball_in_lambda(fam):
    """§1.8: λ_{t+1} = λ_t − ρ∇ + γ(λ_t − λ_{t−1}) ⇔ the (m, S) recursion with S_{t+1}⁻¹S_{t−1}."""
    est = blr.BonnetPrice(points="sigma")
    a = blr.BLR(fam, _start(fam), quartic, estimator=est, rho=0.2, momentum=0.5)
    b = blr.BLR(
        fam,
        _start(fam),
        quartic,
        estimator=est,
        rho=0.2,
        momentum=0.5,
        gaussian=blr.GaussianOptions(),
    )
    for _ in range(15):
        a.step()
        b.step()
        for x, y in zip(a.posterior, b.posterior):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    hb = blr.BLR(
        fam,
        _start(fam),
        quartic,
        estimator=est,
        rho=0.2,
        momentum=0.5,
        gaussian=blr.GaussianOptions(momentum_kind="heavy_ball"),
    )
    for _ in range(15):
        hb.step()
    assert not torch.allclose(hb.posterior[0], a.posterior[0])  # an approximation, not the same


def test_heavy_ball_on_the_fixed_covariance_family_is_momentum_sgd():
    fam = expfam.FixedCovGaussian()
    opt = blr.BLR(
        fam,
        expfam.FixedCovNat(torch.zeros(2, dtype=f64)),
        quadratic,
        estimator=blr.Delta(),
        rho=0.05,
        momentum=0.9,
    )
    theta, prev = torch.zeros(2, dtype=f64), torch.zeros(2, dtype=f64)
    for _ in range(30):
        opt.step()
        theta, prev = theta - 0.05 * (A @ theta - B) + 0.9 * (theta - prev), theta
        torch.testing.assert_close(fam.location(opt.posterior), theta, rtol=1e-12, atol=1e-13)


def test_improved_correction_is_the_pd_form():
    """S + ρG + ρ²/2 G S⁻¹G = ½S + ½(S + ρG)S⁻¹(S + ρG) (§1.7): what gaussian_step does."""
    fam = expfam.FullGaussian()
    nat = _start(fam)
    s = -2 * nat.lam2
    h = torch.tensor([[-2.0, 0.7], [0.7, 0.3]], dtype=f64)  # indefinite Hessian estimate
    grad = fam.mean_grad_from_gh(nat, torch.zeros(2, dtype=f64), h)
    rho = 0.8
    new = blr.gaussian_step(fam, nat, grad, rho=rho, options=blr.GaussianOptions(improved=True))
    g = h - s
    t = s + rho * g
    want = 0.5 * s + 0.5 * t @ torch.linalg.solve(s, t)
    torch.testing.assert_close(-2 * new.lam2, want, rtol=1e-12, atol=1e-12)
    assert torch.linalg.eigvalsh(-2 * new.lam2).min() > 0
    with pytest.raises(ValueError, match=r"nat\.lam2 must be negative definite"):
        blr.gaussian_step(fam, nat, grad, rho=rho)


@pytest.mark.parametrize("fam", FAMS, ids=["full", "diag"])
def test_improved_blr_stays_positive_definite_where_the_plain_blr_fails(fam):
    """Stein Hessian estimates (one draw) are often negative: the plain BLR with a large ρ turns
    the precision indefinite, the improved BLR keeps it positive definite at every step."""

    def loss(theta):
        return 2.0 * (theta**2).sum(-1) + torch.cos(3 * theta).sum(-1)

    est = blr.BonnetPrice(1, hessian="stein")
    plain = blr.BLR(
        fam,
        _start(fam),
        loss,
        estimator=est,
        rho=0.9,
        gaussian=blr.GaussianOptions(),
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(ValueError, match=r"nat\.lam2 must be"):
        for _ in range(200):
            plain.step()
    improved = blr.BLR(
        fam,
        _start(fam),
        loss,
        estimator=est,
        rho=0.9,
        gaussian=blr.GaussianOptions(improved=True),
        generator=torch.Generator().manual_seed(0),
    )
    for _ in range(200):
        improved.step()
        prec = -2 * improved.posterior.lam2
        low = torch.linalg.eigvalsh(prec).min() if prec.ndim == 2 else prec.min()
        assert low > 0


def test_bias_corrected_schedule_is_the_bias_corrected_average():
    beta, xs = 0.9, torch.randn(20, dtype=f64, generator=torch.Generator().manual_seed(0))
    sched = blr.schedules.bias_corrected(beta)
    ema, v_hat = 0.0, torch.tensor(123.0, dtype=f64)  # v̂_0 is irrelevant: ρ_1 = 1
    for t, x in enumerate(xs, start=1):
        ema = beta * ema + (1 - beta) * x
        v_hat = (1 - sched(t)) * v_hat + sched(t) * x
        torch.testing.assert_close(v_hat, ema / (1 - beta**t), rtol=1e-12, atol=1e-14)


def test_square_root_scaling_and_damping_give_the_rmsprop_mean_step():
    fam = expfam.DiagGaussian()
    nat = _start(fam)
    g, h = torch.tensor([0.3, -0.2], dtype=f64), torch.tensor([0.5, 2.0], dtype=f64)
    grad = fam.mean_grad_from_gh(nat, g, h)
    opts = blr.GaussianOptions(lr=0.01, sqrt_scaling=True, damping=1e-8)
    new = blr.gaussian_step(fam, nat, grad, rho=0.1, options=opts)
    m, s = fam.to_moments(nat)
    s_new = 0.9 * s + 0.1 * h
    m_new, s_got = fam.to_moments(new)
    torch.testing.assert_close(s_got, s_new, rtol=1e-12, atol=0)
    torch.testing.assert_close(m_new, m - 0.01 * g / (s_new.sqrt() + 1e-8), rtol=1e-12, atol=0)


def test_blr_wrapper_reports_the_objective_and_resumes_exactly():
    fam = expfam.FullGaussian()
    prior = fam.from_moments(torch.zeros(2, dtype=f64), torch.eye(2, dtype=f64))
    opt = blr.BLR(
        fam,
        prior,
        quartic,
        estimator=blr.BonnetPrice(3),
        rho=0.2,
        prior=prior,
        generator=torch.Generator().manual_seed(5),
        momentum=0.1,
    )
    for _ in range(5):
        value = opt.step()
    # with a prior the objective is E_q[ℓ] + KL(q‖p₀), evaluated at the pre-step posterior
    assert value.shape == () and opt.objective is not None and opt.t == 5
    state = opt.state_dict()
    clone = blr.BLR(
        fam,
        prior,
        quartic,
        estimator=blr.BonnetPrice(3),
        rho=0.2,
        prior=prior,
        generator=torch.Generator().manual_seed(99),
        momentum=0.1,
    )
    clone.load_state_dict(state)
    opt.generator.manual_seed(11)
    clone.generator.manual_seed(11)
    opt.step()
    clone.step()
    for x, y in zip(opt.posterior, clone.posterior):
        assert torch.equal(x, y)


def test_a_nan_loss_raises_and_leaves_the_state_unchanged():
    fam = expfam.DiagGaussian()
    opt = blr.BLR(fam, _start(fam), quartic, estimator=blr.Delta(), rho=0.5)
    opt.step()
    before = tmap(torch.clone, opt.posterior)
    with pytest.raises(ValueError, match="NaN/Inf"):
        opt.step(lambda th: quartic(th) * float("nan"))
    with pytest.raises(ValueError, match="NaN/Inf"):
        blr.step(fam, before, lambda th: quartic(th) + float("inf"), 0.5, estimator=blr.Delta())
    assert opt.t == 1
    for x, y in zip(opt.posterior, before):
        assert torch.equal(x, y)


def test_bad_arguments_name_what_is_wrong():
    fam = expfam.FullGaussian()
    nat = _start(fam)
    with pytest.raises(TypeError, match="nat must be a FullNat"):
        blr.step(fam, _start(expfam.DiagGaussian()), quartic, 0.1, estimator=blr.Delta())
    with pytest.raises(ValueError, match="rho must be a positive finite number"):
        blr.step(fam, nat, quartic, 0.0, estimator=blr.Delta())
    with pytest.raises(TypeError, match=r"estimator must be a blr\.Estimator"):
        blr.step(fam, nat, quartic, 0.1, estimator=lambda *a, **k: None)
    with pytest.raises(ValueError, match=r"left the domain of gaussian_full: nat\.lam2"):
        blr.step(fam, nat, lambda th: -5 * (th**2).sum(-1), 1.0, estimator=blr.Delta())
    with pytest.raises(TypeError, match="gaussian options need a FullGaussian or DiagGaussian"):
        blr.BLR(
            expfam.Bernoulli(),
            expfam.BernoulliNat(torch.zeros(2, dtype=f64)),
            quartic,
            estimator=blr.Delta(),
            gaussian=blr.GaussianOptions(),
        )
    with pytest.raises(ValueError, match="momentum > 0 needs prev_nat"):
        blr.gaussian_step(fam, nat, nat, rho=0.1, momentum=0.5)
    with pytest.raises(ValueError, match="state is missing"):
        blr.BLR(fam, nat, quartic, estimator=blr.Delta()).load_state_dict({"nat": nat})


@pytest.mark.parametrize("family", [expfam.DiagGaussian(), expfam.FullGaussian()])
def test_gaussian_step_without_validation_is_the_same_step(family):
    """validate=False skips the λ checks only: the same λ_{t+1}; a non-positive new precision is
    still refused, and a λ_t with NaN passes unchecked (the caller's promise)."""
    d = 3
    prec = torch.eye(d, dtype=torch.float64) * 2.0
    if family.hessian_event_ndim == 1:
        prec = prec.diagonal()
    nat = family.from_moments(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), prec)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    h = torch.full_like(prec, 0.3) + prec
    grad = family.mean_grad_from_gh(nat, g, h)
    a = blr.gaussian_step(family, nat, grad, rho=0.5)
    b = blr.gaussian_step(family, nat, grad, rho=0.5, validate=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    bad = family.mean_grad_from_gh(nat, g, -10 * h)  # a step to an indefinite precision
    with pytest.raises(ValueError, match="lam2"):
        blr.gaussian_step(family, nat, bad, rho=0.9, validate=False)
    nan = family.nat_type(nat.lam1.clone().fill_(float("nan")), nat.lam2)
    with pytest.raises(ValueError, match="lam1"):
        blr.gaussian_step(family, nan, grad, rho=0.5)
    blr.gaussian_step(family, nan, grad, rho=0.5, validate=False)


F64 = torch.float64


@pytest.mark.parametrize(
    ("family", "nat", "prior"),
    [
        (expfam.Bernoulli("pm1"), expfam.BernoulliNat(torch.tensor([0.3, -1.2, 2.0], dtype=F64)),
         None),
        (expfam.Gamma(), expfam.GammaNat(torch.tensor([1.0, 2.0, 0.5], dtype=F64),
                                         -torch.tensor([1.0, 4.0, 2.0], dtype=F64)),
         expfam.GammaNat(torch.zeros(3, dtype=F64), -torch.ones(3, dtype=F64))),
    ],
    ids=["bernoulli", "gamma_with_prior"],
)  # fmt: skip
def test_blr_step_returns_the_scalar_objective_for_scalar_event_families(family, nat, prior):
    """For D scalar-event coordinates and one loss value per draw, BLR.step() returns one number,
    E_q[ℓ] − Σ_d H(q_d) (or + Σ_d KL(q_d ‖ p₀_d) with a prior). It returned a (D,) vector: the
    loss minus each coordinate's entropy."""
    weights = torch.tensor([1.0, -0.5, 0.25], dtype=F64)
    opt = blr.BLR(family, nat, lambda th: (th * weights).sum(-1), estimator=blr.ScoreFunction(4),
                  rho=1e-3, prior=prior, generator=torch.Generator().manual_seed(0))  # fmt: skip
    value = opt.step()
    assert value.shape == ()
    term = -family.entropy(nat) if prior is None else family.kl(nat, prior)
    torch.testing.assert_close(
        value, opt.last_estimate.value.sum() + term.sum(), rtol=0, atol=1e-12
    )
