"""Vadam, OGN and VOGN as specializations of the Gaussian BLR (Khan & Rue 2023, Table 1 rows 5, 8,
9): "square-root scaling ↔ Vadam; the delta method ↔ OGN".

All in float64 on the small MLP of test_blr_optimizer.py, the same draws (the same seed: every
optimizer here seeds one generator the same way) and minibatches, 20 steps, per-step maximum of
|a − b|/(1 + |b|) over m and the precision ≤ 1e-10.

Vadam (β₁ = 0; ĝ the gradient of the mean loss at θ; δ̃ = δ_V/N; b_t = √(1 − β₂^t)):

    s ← β₂s + (1 − β₂)ĝ²,   m ← m − α_V(ĝ + δ̃m)/(√(s/(1 − β₂^t)) + δ̃),   θ ~ N(m, 1/(Ns + δ_V)).

With S = Ns + δ_V (the draws' precision) and S₀ = δ_V this is BLROptimizer(sqrt_scaling=True):
ρ = 1 − β₂, the data part S − S₀ = Ns moved by the BLR with the per-example squared-gradient
curvature Ĥ = N ĝ⊙ĝ (what ``BonnetPrice(hessian="grad_sq")`` means under square-root scaling; the
engine's grad_sq, (Nĝ)⊙(Nĝ), is N times larger), and the mean step
m ← m − α_V(Nĝ + S₀(m − m₀))/(√(N(S − S₀)/c_t) + S₀) with c_t = 1 − β₂ᵗ. The same step is also
checked one level down, as :func:`blr.gaussian_step` on the data part with a mean rate
α_t = α_V·b_t/√N and damping ε_t = b_t·δ_V/√N (b_t = √c_t).

OGN/VOGN (β₁ = 0; ĥ = (1/M)Σ_{i∈B} h_i, the per-example GGN or squared gradients at m (OGN) or
θ ~ q (VOGN)):

    h ← β₂h + (1 − β₂)ĥ,   m ← m − α(ĝ + δm)/(h + δ),   θ ~ N(m, 1/(N(h + δ)))

is the BLR with S = N(h + δ), ρ = 1 − β₂, mean rate α, no improved-BLR term, no square root, and
Ĥ = N·ĥ (+ the prior's Nδ): ``Delta("ggn")`` for OGN, ``BonnetPrice(hessian="ggn")`` for VOGN
(checked with per-example curvature in test_blr_optimizer.py). Here, with minibatches of ONE
example the per-example squared gradient is the squared minibatch gradient, and OGN/VOGN with
``curvature="ef"`` are BLROptimizer with ``Delta("grad_sq")`` / ``BonnetPrice(hessian="grad_sq")``
at ess = 1 (OGN's m and h do not depend on its N; VOGN's draws do, so it needs ess = 1 too).
"""

from __future__ import annotations

import math

import pytest
import torch

import blr
import expfam
from blr.optim import OGN, VOGN, BLROptimizer, Vadam

f64 = torch.float64
N = 40
mse = torch.nn.functional.mse_loss
FAM = expfam.DiagGaussian()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=f64)
    y = torch.sin(x @ torch.tensor([[1.0], [-0.5], [0.3]], dtype=f64))
    return x, y


def _mlp() -> torch.nn.Module:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return model.double()


def _batches(steps: int = 20, size: int = 10):
    g = torch.Generator().manual_seed(2)
    return [torch.randperm(N, generator=g)[:size] for _ in range(steps)]


def _loop_step(opt, model, xb, yb, mc_samples=1):
    """One step of an ordinary training loop: a draw, the mean minibatch loss, backward, step
    (``mc_samples`` > 1: ``step(closure)``)."""

    def closure():
        opt.zero_grad()
        loss = mse(model(xb), yb)
        loss.backward()
        return loss

    if mc_samples > 1:
        opt.step(closure)
        return
    with opt.sampled_params(train=True):
        closure()
    opt.step()


def _flat_state(opt, name):
    state = opt.state_dict()["state"]
    return torch.cat([state[i][name].reshape(-1) for i in sorted(state)])


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _write(model, flat):
    with torch.no_grad():
        for p, v in zip(model.parameters(), flat.split([p.numel() for p in model.parameters()])):
            p.copy_(v.view_as(p))


def _moments(opt):
    """(m, S) of BLROptimizer's (one-group) diagonal Gaussian."""
    post = opt.posterior()
    return FAM.to_moments(post.nat)


def _diff(a, b):
    return float(((a - b).abs() / (1 + b.abs())).max())


# ---------------------------------------------------------------------------- Vadam
V_ESS, V_S0, V_LR, V_BETA2 = 1e4, 0.01, 0.01, 0.9  # N, s₀ (prec_init), α, β₂


def _vadam_prior(model):
    """A per-coordinate prior N(m₀, 1/S₀) over ``model``'s parameters, every entry different."""
    g = torch.Generator().manual_seed(9)
    d = sum(p.numel() for p in model.parameters())
    m0 = 0.3 * torch.randn(d, generator=g, dtype=f64)
    s0 = 50.0 + 100.0 * torch.rand(d, generator=g, dtype=f64)
    return blr.ParameterPosterior(FAM, FAM.from_moments(m0, s0), model)


def _vadam_pair(beta2=V_BETA2, prior_prec=0.0, mc_samples=1, prior=False, **flip):
    """Vadam(β₁ = 0, β₂, δ_V, s₀, N) and BLROptimizer(sqrt_scaling=True) in the limit of the
    module docstring: ρ = 1 − β₂, ess = N, weight_decay = δ_V/N, hess_init = s₀,
    BonnetPrice(hessian="grad_sq"), GaussianOptions(lr=α, improved=False); ``flip`` overrides one
    of BLROptimizer's settings (``improved`` and ``damping`` go to its GaussianOptions)."""
    m_v, m_b = _mlp(), _mlp()
    vadam = Vadam(
        m_v.parameters(), lr=V_LR, ess=V_ESS, prior_prec=prior_prec, betas=(0.0, beta2),
        prec_init=V_S0, mc_samples=mc_samples, seed=5,
        prior=_vadam_prior(m_v) if prior else None,
    )  # fmt: skip
    options = dict(lr=V_LR, improved=False)
    options.update({k: flip.pop(k) for k in ("improved", "damping") if k in flip})
    kw = dict(
        lr=1.0 - beta2, ess=V_ESS, weight_decay=prior_prec / V_ESS,
        hess_init=V_S0, estimator=blr.BonnetPrice(hessian="grad_sq"),
        gaussian=blr.GaussianOptions(**options), sqrt_scaling=True, mc_samples=mc_samples,
        seed=5, prior=_vadam_prior(m_b) if prior else None,
    )  # fmt: skip
    kw.update(flip)
    gen = BLROptimizer(m_b.parameters(), FAM, **kw)
    return (m_v, vadam), (m_b, gen)


def _vadam_gap(steps=20, mc_samples=1, **kw):
    x, y = _data()
    (m_v, vadam), (m_b, gen) = _vadam_pair(mc_samples=mc_samples, **kw)
    worst = 0.0
    for idx in _batches(steps):
        _loop_step(vadam, m_v, x[idx], y[idx], mc_samples)
        _loop_step(gen, m_b, x[idx], y[idx], mc_samples)
        ours, theirs = gen.posterior(m_b), vadam.posterior(m_v)
        (m, s), (m_ref, s_ref) = FAM.to_moments(ours.nat), FAM.to_moments(theirs.nat)
        worst = max(worst, _diff(m_ref, m), _diff(s_ref, s), _diff(_flat(m_v), _flat(m_b)))
    return worst


@pytest.mark.parametrize(
    ("mc_samples", "prior_prec", "prior"),
    [(1, 0.0, False), (2, 0.0, False), (1, 100.0, False), (2, 100.0, False), (1, 0.0, True)],
    ids=["K1", "K2", "K1_delta", "K2_delta", "K1_posterior_prior"],
)
def test_vadam_is_the_square_root_scaled_blr_with_per_example_grad_sq_curvature(
    mc_samples, prior_prec, prior
):
    """Vadam(β₁ = 0, β₂ = 0.9, δ_V, s₀) is BLROptimizer(DiagGaussian, ρ = 1 − β₂, ess = N,
    weight_decay = δ_V/N, hess_init = s₀, BonnetPrice(hessian="grad_sq"), GaussianOptions(lr=α,
    improved=False), sqrt_scaling=True): the same draws θ ~ N(m, 1/(Ns + δ_V)), the posterior
    (m, Ns + δ_V) and the parameters between steps agree over 20 steps, with the bias correction
    c_t = 1 − β₂ᵗ in the mean step, K = 1 or 2 draws (both square the gradient averaged over the
    draws), δ_V = 0 or 100, and a per-coordinate prior N(m₀, 1/S₀) given as a posterior to both.
    Measured (CPU, torch 2.13): ≤ 1.1e-15."""
    worst = _vadam_gap(mc_samples=mc_samples, prior_prec=prior_prec, prior=prior)
    assert worst <= 1e-10, worst


@pytest.mark.parametrize(
    ("flip", "why"),
    [
        (dict(sqrt_scaling=False), "the mean step is preconditioned by √(N(S − S₀)/c_t) + S₀"),
        (dict(improved=True), "Vadam has no improved-BLR term"),
        (dict(lr=0.2), "ρ = 1 − β₂ and c_t = 1 − β₂ᵗ"),
        (dict(damping=1.0), "no ε beyond the prior's S₀"),
        (dict(ess=2 * V_ESS), "Ĥ = N·ĝ⊙ĝ and the √N in the preconditioner"),
        (
            dict(prior_prec=100.0, weight_decay=0.0),
            "the prior: S₀ in the draws, the damping, and S₀(m − m₀) in the gradient",
        ),
    ],
    ids=["no_sqrt", "improved", "rho", "damping", "ess", "prior"],
)
def test_the_vadam_limit_fails_when_one_option_is_flipped(flip, why):
    """The check above can fail: each flip moves m or S by far more than 1e-10 within 5
    steps."""
    prior_prec = flip.pop("prior_prec", 0.0)
    worst = _vadam_gap(steps=5, prior_prec=prior_prec, **flip)
    assert worst > 1e-6, (why, worst)


def test_sqrt_scaling_debiases_with_the_product_of_the_rates_under_a_scheduler():
    """With a scheduled ρ_t, c_t = 1 − Π_{i≤t}(1 − ρ_i): three steps of a hand-written
    square-root-scaled step (Ĥ = N·ĝ⊙ĝ) equal the optimizer's, and the product is part of the
    state_dict (a resumed optimizer continues it bit-exactly)."""
    x, y = _data()
    model = _mlp()
    opt = BLROptimizer(model.parameters(), FAM, lr=0.3, ess=V_ESS, weight_decay=1e-3,
                       hess_init=V_S0, estimator=blr.BonnetPrice(hessian="grad_sq"),
                       gaussian=blr.GaussianOptions(lr=V_LR, improved=False),
                       sqrt_scaling=True, seed=0)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    s0 = V_ESS * 1e-3
    m, s = FAM.to_moments(opt.posterior().nat)
    decay = 1.0
    for t, idx in enumerate(_batches(3)):
        rho = opt.param_groups[0]["lr"]
        with opt.sampled_params(train=True):
            opt.zero_grad()
            mse(model(x[idx]), y[idx]).backward()
        g = V_ESS * torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        opt.step()
        sched.step()
        decay *= 1 - rho
        data = (1 - rho) * (s - s0) + rho * g * g / V_ESS
        m = m - V_LR * (g + s0 * m) / ((V_ESS * data / (1 - decay)).sqrt() + s0)
        s = data + s0
        m_opt, s_opt = FAM.to_moments(opt.posterior().nat)
        assert _diff(m_opt, m) <= 1e-12 and _diff(s_opt, s) <= 1e-12, t
    assert opt.param_groups[0]["scale_decay"] == pytest.approx(decay, rel=1e-15)
    other = BLROptimizer(_mlp().parameters(), FAM, lr=0.3, ess=V_ESS, sqrt_scaling=True)
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["scale_decay"] == opt.param_groups[0]["scale_decay"]


@pytest.mark.parametrize(
    ("family", "kwargs", "match"),
    [
        (expfam.FullGaussian(), {}, "sqrt_scaling needs diagonal Gaussians"),
        (expfam.Bernoulli(support="pm1"), {}, "sqrt_scaling needs diagonal Gaussians"),
        (FAM, {"gaussian": blr.GaussianOptions(sqrt_scaling=True)}, "BLROptimizer\\(sqrt_scaling"),
    ],
)
def test_sqrt_scaling_outside_diagonal_gaussians_is_refused(family, kwargs, match):
    model = torch.nn.Linear(2, 1).double()
    if isinstance(family, expfam.Bernoulli):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.ones_like(p))
    with pytest.raises(ValueError, match=match):
        sqrt_scaling = "gaussian" not in kwargs
        BLROptimizer(model.parameters(), family, lr=0.1, ess=10, sqrt_scaling=sqrt_scaling,
                     **kwargs)  # fmt: skip


def test_a_square_root_scaled_step_that_leaves_the_domain_is_refused_and_nothing_changes():
    """Stein curvature without the improved-BLR term at ρ = 1 can make S − S₀ negative: the
    step raises ValueError and λ, the parameters and c_t stay."""
    x, y = _data()
    model = _mlp()
    opt = BLROptimizer(model.parameters(), FAM, lr=1.0, ess=V_ESS, sqrt_scaling=True,
                       gaussian=blr.GaussianOptions(improved=False), seed=0)  # fmt: skip
    before = opt.state_dict()
    with opt.sampled_params(train=True):
        mse(model(x), y).backward()
    with pytest.raises(ValueError, match="S − S₀ ≥ 0"):
        opt.step()
    after = opt.state_dict()
    assert all(
        torch.equal(a, b) for a, b in zip(before["state"][0]["nat"], after["state"][0]["nat"])
    )
    assert after["param_groups"][0]["scale_decay"] == 1.0 and after["param_groups"][0]["step"] == 0


@pytest.mark.parametrize("prior_prec", [0.0, 100.0])
def test_vadam_is_gaussian_step_with_n_g2_curvature_and_a_bias_corrected_mean_rate(prior_prec):
    """What BLROptimizer would need for Vadam at any β₂ and δ_V (β₁ = 0), checked against Vadam
    with its own draws: :func:`blr.gaussian_step` on the data part S − S₀ = Ns of the precision
    with ρ = 1 − β₂, ĝ_total = Nĝ + δ_V m, Ĥ = N ĝ⊙ĝ, sqrt_scaling, α_t = α_V·b_t/√N and
    damping ε_t = b_t·δ_V/√N (b_t = √(1 − β₂^t)); draws θ = m + z/√(S − S₀ + δ_V) from the same
    generator stream. δ_V = 0: the posterior's own precision, i.e. the BLR with a mean-rate
    schedule; δ_V > 0: the prior's precision enters the draws and the damping but not the
    square root. Measured (CPU, torch 2.13): ≤ 1e-15."""
    x, y = _data()
    n, beta2, s0, lr, seed = 1e4, 0.9, 0.01, 0.01, 3
    m_v, m_o = _mlp(), _mlp()
    vadam = Vadam(m_v.parameters(), lr=lr, ess=n, prior_prec=prior_prec, betas=(0.0, beta2),
                  prec_init=s0, seed=seed)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    m = _flat(m_o)
    s_data = torch.full_like(m, n * s0)  # S − S₀ = N s
    worst = 0.0
    for t, idx in enumerate(_batches(), start=1):
        _loop_step(vadam, m_v, x[idx], y[idx])
        z = torch.randn(m.shape, generator=gen, dtype=f64)
        _write(m_o, m + z / (s_data + prior_prec).sqrt())
        m_o.zero_grad()
        mse(m_o(x[idx]), y[idx]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in m_o.parameters()])  # mean-loss gradient at θ
        b = math.sqrt(1.0 - beta2**t)
        nat = FAM.from_moments(m, s_data)
        grad = FAM.mean_grad_from_gh(nat, n * g + prior_prec * m, n * g * g)
        opts = blr.GaussianOptions(
            lr=lr * b / math.sqrt(n), sqrt_scaling=True, damping=b * prior_prec / math.sqrt(n)
        )
        m, s_data = FAM.to_moments(blr.gaussian_step(FAM, nat, grad, rho=1 - beta2, options=opts))
        _write(m_o, m)
        mean, s = _flat_state(vadam, "mean"), _flat_state(vadam, "exp_avg_sq")
        worst = max(worst, _diff(mean, m), _diff(n * s, s_data))
    assert worst <= 1e-10, worst


# ---------------------------------------------------------------------------- OGN / VOGN
O_RHO, O_LR, O_WD, O_H0 = 0.1, 0.05, 0.5, 2.0  # ρ = 1 − β₂, α, δ, h₀


def _ogn_gap(kind, steps=20, batch=1, improved=False, ess=1.0):
    """OGN/VOGN(curvature="ef", β₁ = 0, β₂ = 1 − ρ, lr=α, δ, h₀) against BLROptimizer with
    Delta("grad_sq") / BonnetPrice(hessian="grad_sq") (ess, lr=ρ, GaussianOptions(lr=α,
    improved)), minibatches of ``batch`` examples: the worst difference of m and of
    h = S/ess − δ."""
    x, y = _data()
    m_o, m_b = _mlp(), _mlp()
    cls, est, n_o = (
        (OGN, blr.Delta("grad_sq"), float(N))  # OGN's N only scales its variance
        if kind == "OGN"
        else (VOGN, blr.BonnetPrice(hessian="grad_sq"), 1.0)
    )
    fast = cls(
        m_o.parameters(), lr=O_LR, ess=n_o, weight_decay=O_WD, beta1=0.0, beta2=1 - O_RHO,
        hess_init=O_H0, curvature="ef", seed=6, model=m_o,
    )  # fmt: skip
    gen = BLROptimizer(
        m_b.parameters(), FAM, lr=O_RHO, ess=ess, weight_decay=O_WD, hess_init=O_H0,
        estimator=est, gaussian=blr.GaussianOptions(lr=O_LR, improved=improved), seed=6,
    )  # fmt: skip
    worst = 0.0
    for idx in _batches(steps, size=batch):
        _loop_step(fast, m_o, x[idx], y[idx])
        _loop_step(gen, m_b, x[idx], y[idx])
        m, s = _moments(gen)
        worst = max(
            worst,
            _diff(_flat(m_o), m),
            _diff(_flat_state(fast, "hess"), s / ess - O_WD),
        )
    return worst


@pytest.mark.parametrize("kind", ["OGN", "VOGN"])
def test_ogn_and_vogn_on_one_example_minibatches_are_the_blr_with_grad_sq_curvature(kind):
    """With one example per minibatch the per-example squared gradient ("ef") is the squared
    minibatch gradient: OGN (β₁ = 0, β₂ = 1 − ρ, any N) is BLROptimizer(Delta("grad_sq"),
    ess = 1, lr=ρ, GaussianOptions(lr=α, improved=False)) and VOGN (N = 1) the same with
    BonnetPrice(hessian="grad_sq") and its draws: m and h = S − δ equal over 20 steps. Measured
    (CPU, torch 2.13): ≤ 1e-15."""
    worst = _ogn_gap(kind)
    assert worst <= 1e-10, worst


@pytest.mark.parametrize(
    ("flip", "why"),
    [
        (dict(improved=True), "OGN has no improved-BLR term"),
        (dict(ess=float(N)), "grad_sq at ess = N is (Nĝ)², N times OGN's N·ĝ²"),
        (dict(batch=10), "OGN averages the squares; grad_sq squares the average"),
    ],
    ids=["improved", "ess_N", "batch_10"],
)
def test_the_ogn_limit_fails_when_one_option_is_flipped(flip, why):
    worst = _ogn_gap("OGN", steps=5, **flip)
    assert worst > 1e-6, (why, worst)


def _per_example(model, xb, yb, curvature):
    """(ĝ, ĥ): the mean-loss gradient and the mean over the minibatch of the per-example GGN
    diag(J_iᵀΛJ_i) (Λ = 2 for ℓ_i = (f_i − y_i)²) or squared gradient, by one autograd call per
    example (independent of blr.curvature)."""
    params = list(model.parameters())
    out = model(xb)
    rows = []
    for i in range(len(xb)):
        jac = torch.autograd.grad(out[i, 0], params, retain_graph=True)
        j = torch.cat([a.reshape(-1) for a in jac])
        r = out[i, 0].detach() - yb[i, 0]
        rows.append(2 * j * j if curvature == "ggn" else (2 * r * j) ** 2)
    g = torch.autograd.grad(mse(out, yb), params)
    return torch.cat([a.reshape(-1) for a in g]), torch.stack(rows).mean(0)


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
@pytest.mark.parametrize("kind", ["OGN", "VOGN"])
def test_ogn_and_vogn_are_gaussian_step_with_per_example_curvature(kind, curvature):
    """What BLROptimizer would need for OGN/VOGN on minibatches of M > 1 (M = 10 here): the
    Gaussian BLR :func:`blr.gaussian_step` (ρ = 1 − β₂, GaussianOptions(lr=α, improved=False),
    prior N(0, 1/(Nδ)) as λ₀) with Ĥ = N·(1/M)Σ_i h_i at θ = m (OGN, the delta method) or at a
    draw θ ~ q (VOGN, from the same generator stream): S = N(h + δ) and m equal over 20 steps.
    Measured (CPU, torch 2.13): ≤ 1e-15."""
    x, y = _data()
    n, seed = float(N), 8
    m_o, m_r = _mlp(), _mlp()
    cls = OGN if kind == "OGN" else VOGN
    fast = cls(
        m_o.parameters(), lr=O_LR, ess=n, weight_decay=O_WD, beta1=0.0, beta2=1 - O_RHO,
        hess_init=O_H0, curvature=curvature, loss="mse", seed=seed, model=m_o,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    m = _flat(m_r)
    nat = FAM.from_moments(m, torch.full_like(m, n * (O_H0 + O_WD)))
    prior = FAM.nat_type(torch.zeros_like(m), torch.full_like(m, -0.5 * n * O_WD))
    opts = blr.GaussianOptions(lr=O_LR, improved=False)
    worst = 0.0
    for idx in _batches():
        _loop_step(fast, m_o, x[idx], y[idx])
        m, s = FAM.to_moments(nat)
        if kind == "VOGN":
            _write(m_r, m + torch.randn(m.shape, generator=gen, dtype=f64) / s.sqrt())
        g, h = _per_example(m_r, x[idx], y[idx], curvature)
        total = tuple(
            a - b for a, b in zip(FAM.mean_grad_from_gh(nat, n * g, n * h), prior, strict=True)
        )
        nat = blr.gaussian_step(FAM, nat, FAM.nat_type(*total), rho=O_RHO, options=opts)
        m, s = FAM.to_moments(nat)
        _write(m_r, m)
        hess = _flat_state(fast, "hess")
        worst = max(worst, _diff(_flat(m_o), m), _diff(n * (hess + O_WD), s))
    assert worst <= 1e-10, worst
