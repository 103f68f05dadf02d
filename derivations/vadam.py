r"""Vadam (variational Adam) is Adam run at weight-perturbed points: the diagonal-Gaussian BLR with
one Monte Carlo draw and the squared gradient as Hessian, made into Vadam by pieces typed in, not
derived: square-root scaling with a mean rate of its own, Adam's bias-corrected gradient average
as momentum, and draws whose precision uses Adam's un-corrected second moment.

**Family.** q = N(m, diag(S)⁻¹), λ = (S⊙m, −½S), μ = (m, m² + 1/S), ∇_μ(−H) = λ. Vadam keeps
the scale ŝ of the per-example-average loss ℓ̄/N; the prior N(0, δ⁻¹I) adds δ̃m = (δ/N)m to the
gradient and δ̃ to the preconditioner, and the posterior draws use the precision Ns + δ.

**Rule.** With (ĝ, ĥ) for E_q[∇ℓ̄]/N and E_q[diag ∇²ℓ̄]/N the BLR in (m, s) form is
ŝ' = (1 − ρ)ŝ + ρĥ, m' = m − ρĝ/ŝ' (proved below from the λ-space step). The approximations of
the natural gradient (the row's column): one draw θ_t = m_t + ε_t/√(Ns_{t−1} + δ) and a
minibatch give ĝ_t = ∇ℓ_B(θ_t) (mean loss), and the Hessian surrogate ĥ = ĝ_t². Typed in
(``INFO.assumptions``): square-root scaling with the prior as damping and a mean rate α ≠ ρ,
m' = m − αḡ/(√ŝ' + δ̃) (as in Adam, Khan & Rue 2023, Table 1 row 5); the gradient ĝ_t + δ̃m_t
averaged (Adam's momentum); and the draw precision. Both bias corrections are rate schedules
(proved): with v₀ = 0, v_t = β₂v_{t−1} + (1 − β₂)ĝ_t² divided by 1 − β₂^t is exactly
ŝ_t = (1 − ρ_t)ŝ_{t−1} + ρ_tĝ_t², ρ_t = (1 − β₂)/(1 − β₂^t), and the same holds for the gradient
average with γ_t = (1 − β₁)/(1 − β₁^t). So Vadam (Khan et al. 2018)

    m̄ ← β₁m̄ + (1 − β₁)(ĝ + δ̃m),   s ← β₂s + (1 − β₂)ĝ²,
    m ← m − α(m̄/(1 − β₁^t))/(√(s/(1 − β₂^t)) + δ̃)

is :func:`blr.gaussian_step` on ŝ = s/(1 − β₂^t) with ``rho=ρ_t`` and
``GaussianOptions(lr=α, sqrt_scaling=True, damping=δ̃)``, fed (ḡ_t, ĝ_t²) with
ḡ_t = (1 − γ_t)ḡ_{t−1} + γ_t(ĝ_t + δ̃m_t). The draws use the un-corrected
s_{t−1} = (1 − β₂^{t−1})ŝ_{t−1}: precision N(1 − β₂^{t−1})ŝ_{t−1} + δ (just δ, the prior, at
t = 1), not q_t's; the BLR instance draws from that Gaussian with :class:`blr.BonnetPrice` ``(1,
"grad_sq")``.

**Equality conditions.** The same ε_t and minibatches, m₀ = θ₀, m̄₀ = 0 and s₀ = 0 (Adam's
convention: then ρ₁ = γ₁ = 1 make the BLR's initial ŝ and ḡ irrelevant; with s₀ > 0 the term
β₂^t s₀/(1 − β₂^t) is not a rate schedule), δ > 0 (the first draw has the prior's precision).
:class:`blr.optim.Vadam` requires ``prec_init`` > 0, so it is compared with the hand-coded
Vadam at s₀ = 1 (not with the BLR).

**Test problem.** 2-D logistic regression, N = 64, x ~ N(0, I), y ~ Bernoulli(σ(xᵀw)),
w = (1.5, −2), M = 8, 40 stored minibatches, α = 0.05, β₁ = 0.9, β₂ = 0.999, δ = 1. Kind
"equality", tolerance 1e-10, over the 40 steps: the BLR instance (ĝ by autograd in
:class:`blr.BonnetPrice`) equals hand-coded Vadam (its gradient written out by hand) with the
same ε (replayed from the estimator's seeded generator); the fused
:func:`blr.kernels.vadam_step_` (ĝ by autograd of the loss; with
:func:`~blr.kernels.diag_gaussian.vadam_noise` on CPU, the stored ε elsewhere) on flat buffers
holding 64 copies equals the batched engine and hand-coded Vadam. :class:`blr.optim.Vadam`
equals hand-coded Vadam (s₀ = 1, its seed) within 1e-10 in
``tests/derivations/test_row_vadam_optim.py`` (constructing a torch optimizer imports
torch._dynamo, 1–3 s, too slow for ``check()``).

**References.** Khan, Nielsen, Tangkaratt, Lin, Gal & Srivastava (2018), "Fast and scalable
Bayesian deep learning by weight-perturbation in Adam" (ICML); Khan & Rue (2023), Table 1 row 5;
Kingma & Ba (2015).
"""

from __future__ import annotations

import sympy as sp
import torch
import torch.nn.functional as F

import blr
import expfam
from blr.kernels.diag_gaussian import vadam_noise, vadam_step_
from blr.optim import Vadam
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="vadam",
    number=None,
    algorithm="Vadam",
    posterior="Gaussian (diagonal)",
    approximation="MC sample, ĝ² Hessian, √-scaling, gradient EMA",
    symbolic="~",
    assumptions=(
        "square-root scaling with its own mean rate: m' = m − αḡ/(√ŝ' + δ̃) "
        "(GaussianOptions(lr=α, sqrt_scaling=True, damping=δ̃)) is typed in, as in Adam; the "
        "BLR's mean step is m' = m − ρĝ/ŝ'",
        "momentum: ĝ + δ̃m is replaced by its bias-corrected exponential average; derive() "
        "proves this is an average with rates γ_t = (1 − β₁)/(1 − β₁ᵗ), not that it is the "
        "BLR's natural momentum",
        "the draws: θ ~ N(m, 1/(N(1 − β₂^{t−1})ŝ + δ)), Vadam's precision from the "
        "un-corrected second moment, not q_t's; derive() proves only the identity between the "
        "two ways of writing it",
    ),
)

f64 = torch.float64
N, D, M = 64, 2, 8
W_TRUE = (1.5, -2.0)
ALPHA, BETA1, BETA2, DELTA = 0.05, 0.9, 0.999, 1.0
STEPS, SEED, OPT_S0 = 40, 7, 1.0


def derive() -> list[str]:
    """The (m, s)-form of the diagonal BLR, bias correction as rate schedules (induction),
    Vadam's mean step as the √-scaled form, and its draw precision in BLR terms."""
    s, m, rho, alpha, g, h, dt = sp.symbols("s m rho alpha g h delta_t", positive=True)
    # λ-space BLR step with ∇_μE = (ĝ − ĥm, ½ĥ): s' = (1 − ρ)s + ρĥ, m' = m − ρĝ/s'
    lam1_new = s * m - rho * (g - h * m + s * m)
    s_new = -2 * (-s / 2 - rho * (h / 2 - s / 2))
    assert sp.expand(s_new - ((1 - rho) * s + rho * h)) == 0
    assert sp.cancel(lam1_new / s_new - (m - rho * g / s_new)) == 0
    # bias correction as a rate: induction step with P = β^{t−1} (so β^t = βP), v₀ = 0 base case
    beta, pw, v_prev, x = sp.symbols("beta P v_prev x", positive=True)
    rate = (1 - beta) / (1 - beta * pw)
    hat_prev = v_prev / (1 - pw)
    v_new = beta * v_prev + (1 - beta) * x
    assert sp.cancel((1 - rate) * hat_prev + rate * x - v_new / (1 - beta * pw)) == 0
    assert rate.subs(pw, 1) == 1  # t = 1: ρ₁ = 1, so v̂₁ = x₁ = v₁/(1 − β) from v₀ = 0
    assert sp.cancel(((1 - beta) * x) / (1 - beta) - x) == 0
    # unrolled to t = 4 from v₀ = 0 with symbolic inputs, for both β₂ (ĝ²) and β₁ (ĝ + δ̃m)
    xs = sp.symbols("x1:5", real=True)
    v, hat = sp.Integer(0), sp.Integer(0)
    for t, xt in enumerate(xs, start=1):
        v = beta * v + (1 - beta) * xt
        r_t = (1 - beta) / (1 - beta**t)
        hat = (1 - r_t) * hat + r_t * xt
        assert sp.cancel(hat - v / (1 - beta**t)) == 0
    # three Vadam steps (v₀ = m̄₀ = 0) = three √-scaled BLR steps with ρ_t, γ_t from any ŝ₀,
    # ḡ₀, for symbolic gradients ĝ_t and the prior term δ̃m_t (β₁ = 0.9, β₂ = 0.999)
    b1, b2 = sp.Rational(9, 10), sp.Rational(999, 1000)
    gs = sp.symbols("g1:4", real=True)
    m_vadam, mbar, v = m, sp.Integer(0), sp.Integer(0)
    m_blr, g_bar, s_hat = m, sp.Symbol("gbar_0"), sp.Symbol("s_0", positive=True)
    for t, gt in enumerate(gs, start=1):
        mbar = b1 * mbar + (1 - b1) * (gt + dt * m_vadam)
        v = b2 * v + (1 - b2) * gt**2
        denom = sp.sqrt(sp.cancel(v / (1 - b2**t))) + dt
        m_vadam = m_vadam - alpha * (mbar / (1 - b1**t)) / denom
        rho_t, gamma_t = (1 - b2) / (1 - b2**t), (1 - b1) / (1 - b1**t)
        g_bar = (1 - gamma_t) * g_bar + gamma_t * (gt + dt * m_blr)
        s_hat = sp.cancel((1 - rho_t) * s_hat + rho_t * gt**2)
        m_blr = m_blr - alpha * g_bar / (sp.sqrt(s_hat) + dt)
        assert sp.cancel(m_vadam - m_blr) == 0
    # the draw: N s_{t−1} + δ = N(1 − β₂^{t−1})ŝ_{t−1} + δ
    n_, delta = sp.symbols("N delta", positive=True)
    s_hat_prev = v_prev / (1 - pw)
    assert sp.cancel(n_ * (1 - pw) * s_hat_prev + delta - (n_ * v_prev + delta)) == 0
    # Bonnet/Price round trip used by the BLR instance: (ĝ, ĥ) → ∇_μ → (ĝ, ĥ)
    d1, d2 = g - h * m, h / 2
    assert sp.expand(d1 + 2 * d2 * m - g) == 0 and sp.expand(2 * d2 - h) == 0
    return [
        "diagonal BLR with ∇_μE = (ĝ − ĥm, ½ĥ): s' = (1 − ρ)s + ρĥ, m' = m − ρĝ/s'",
        "v_t = βv_{t−1} + (1 − β)x_t, v₀ = 0 ⇒ v_t/(1 − β^t) = (1 − ρ_t)v̂_{t−1} + ρ_tx_t, "
        "ρ_t = (1 − β)/(1 − β^t) (induction, and unrolled to t = 4)",
        "three Vadam steps (v₀ = m̄₀ = 0, symbolic ĝ_t) = three √-scaled BLR steps "
        "m ← m − αḡ_t/(√ŝ_t + δ̃) with rates ρ_t, γ_t, from any ŝ₀, ḡ₀",
        "draw precision N s_{t−1} + δ = N(1 − β₂^{t−1})ŝ_{t−1} + δ",
        "(ĝ, ĥ) ↦ ∇_μ = (ĝ − ĥm, ½ĥ) ↦ (∇_{μ1} + 2∇_{μ2}m, 2∇_{μ2}) = (ĝ, ĥ)",
    ]


# ---------------------------------------------------------------------------- data
def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I₂), y ~ Bernoulli(σ(xᵀw)), N = 64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, dtype=f64, generator=g)
    p = torch.sigmoid(x @ torch.tensor(W_TRUE, dtype=f64))
    return x, (torch.rand(N, dtype=f64, generator=g) < p).to(f64)


def minibatches(steps: int, seed: int = 1) -> torch.Tensor:
    """A stored sequence of minibatches of M indices."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:M] for _ in range(steps)])


def draws(steps: int, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The stored ε_t (steps, *shape): one standard-normal sample of ``shape`` per step from a
    generator seeded with ``seed`` (as :class:`blr.BonnetPrice` with K = 1 draws them)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn((1, *shape), dtype=f64, generator=g)[0] for _ in range(steps)])


# ---------------------------------------------------------------------------- classical
def classical(
    m0: torch.Tensor,
    eps: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    s0: float = 0.0,
) -> torch.Tensor:
    """Vadam (Khan et al. 2018, Fig. 1; vectorized over leading copies): θ = m + ε_t/√(Ns + δ);
    ĝ = (1/M)Σ_{i∈B}(σ(x_iᵀθ) − y_i)x_i; m̄ ← β₁m̄ + (1 − β₁)(ĝ + δm/N);
    s ← β₂s + (1 − β₂)ĝ²; m ← m − α(m̄/(1 − β₁^t))/(√(s/(1 − β₂^t)) + δ/N). Returns all m_t."""
    n = x.shape[0]
    m, mbar, s = m0, torch.zeros_like(m0), torch.full_like(m0, s0)
    out = [m]
    for t, (e, idx) in enumerate(zip(eps, batches), start=1):
        theta = m + e / torch.sqrt(n * s + DELTA)
        xb, yb = x[idx], y[idx]
        g = (torch.sigmoid(theta @ xb.T) - yb) @ xb / xb.shape[0]
        mbar = BETA1 * mbar + (1 - BETA1) * (g + DELTA * m / n)
        s = BETA2 * s + (1 - BETA2) * g * g
        m_hat, s_hat = mbar / (1 - BETA1**t), s / (1 - BETA2**t)
        m = m - ALPHA * m_hat / (torch.sqrt(s_hat) + DELTA / n)
        out.append(m)
    return torch.stack(out, -2)


# ---------------------------------------------------------------------------- BLR instance
def minibatch_loss(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
    """θ (K, *copies, D) ↦ the minibatch mean of log(1 + e^{x_iᵀθ}) − y_i x_iᵀθ (ℓ̄/N)."""
    xb, yb = x[idx], y[idx]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        f = theta @ xb.T
        return (F.softplus(f) - yb * f).mean(-1)

    return loss


def blr_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, *, seed: int
) -> torch.Tensor:
    """The √-scaled diagonal BLR on ŝ (``m0`` may carry copies in front): per step, a draw
    from N(m, 1/(N(1 − β₂^{t−1})ŝ + δ)) with ``blr.BonnetPrice(1, "grad_sq")`` (generator seeded
    with ``seed``) gives (ĝ, ĝ²); ḡ ← (1 − γ_t)ḡ + γ_t(ĝ + δ̃m); then
    :func:`blr.gaussian_step` with ρ_t and ``GaussianOptions(lr=α, sqrt_scaling=True,
    damping=δ̃)``. Returns all m_t."""
    n = x.shape[0]
    dt = DELTA / n
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(m0, torch.ones_like(m0))  # ŝ₀ is irrelevant: ρ₁ = 1
    rho, gamma = blr.schedules.bias_corrected(BETA2), blr.schedules.bias_corrected(BETA1)
    options = blr.GaussianOptions(lr=ALPHA, sqrt_scaling=True, damping=dt)
    estimator = blr.BonnetPrice(1, "grad_sq")
    gen = torch.Generator().manual_seed(seed)
    g_bar = torch.zeros_like(m0)
    out = [m0]
    for t, idx in enumerate(batches, start=1):
        m, s_hat = fam.to_moments(nat)
        draw = fam.from_moments(m, n * (1 - BETA2 ** (t - 1)) * s_hat + DELTA)
        est = estimator(fam, draw, minibatch_loss(x, y, idx), generator=gen)
        g_hat, h_hat = fam.gh_from_mean_grad(draw, est.grad)
        g_bar = (1 - gamma(t)) * g_bar + gamma(t) * (g_hat + dt * m)
        grad = fam.mean_grad_from_gh(nat, g_bar, h_hat)
        nat = blr.gaussian_step(fam, nat, grad, rho=rho(t), options=options)
        out.append(fam.location(nat))
    return torch.stack(out, -2)


# ---------------------------------------------------------------------------- kernel
def kernel_instance(
    m0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    noise: torch.Tensor | torch.Generator,
) -> torch.Tensor:
    """B copies ``m0`` (B, D) as flat buffers (m, m̄, s) of B·D entries through
    :func:`vadam_step_`, one call per step. ``noise``: a generator for :func:`vadam_noise`
    (σ⊙z, σ = (Ns + δ)^{-1/2}, z drawn on ``m0``'s device) or stored ε (steps, B, D). ĝ by
    autograd of :func:`minibatch_loss`. Returns all m_t (steps + 1 of (B, D))."""
    dev = m0.device
    x, y = x.to(dev), y.to(dev)
    b, d = m0.shape
    n = x.shape[0]
    mean = m0.reshape(-1).clone()
    exp_avg, exp_avg_sq = torch.zeros_like(mean), torch.zeros_like(mean)
    out = [m0.clone()]
    for t, idx in enumerate(batches.to(dev), start=1):
        if isinstance(noise, torch.Generator):
            offset = vadam_noise(exp_avg_sq, prior_prec=DELTA, ess=n, generator=noise)
        else:
            offset = noise[t - 1].to(dev).reshape(-1) * torch.rsqrt(n * exp_avg_sq + DELTA)
        theta = (mean + offset).reshape(b, d)
        leaf = theta.detach().requires_grad_()
        with torch.enable_grad():
            (g_hat,) = torch.autograd.grad(minibatch_loss(x, y, idx)(leaf).sum(), leaf)
        vadam_step_(
            mean,
            exp_avg,
            exp_avg_sq,
            g_hat.reshape(-1).contiguous(),
            lr=ALPHA,
            beta1=BETA1,
            beta2=BETA2,
            prior_prec=DELTA,
            ess=n,
            step=t,
        )
        out.append(mean.reshape(b, d).clone())
    return torch.stack(out, -2)


# ---------------------------------------------------------------------------- blr.optim.Vadam
def optimizer_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, *, seed: int
) -> torch.Tensor:
    """:class:`blr.optim.Vadam` (prec_init = s₀ = 1, ``seed``) on θ ∈ R²; returns all m_t."""
    w = torch.nn.Parameter(m0.clone())
    opt = Vadam(
        [w],
        lr=ALPHA,
        ess=x.shape[0],
        prior_prec=DELTA,
        betas=(BETA1, BETA2),
        prec_init=OPT_S0,
        seed=seed,
    )
    out = [m0]
    for idx in batches:
        with opt.sampled_params(train=True):
            opt.zero_grad()
            minibatch_loss(x, y, idx)(w).backward()
        opt.step()
        out.append(w.detach().clone())
    return torch.stack(out)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs Vadam under the same draws, and the fused kernel on 64 copies vs the batched engine
    and Vadam (kind "equality"). :class:`blr.optim.Vadam` vs Vadam is
    ``tests/derivations/test_row_vadam_optim.py`` (module docstring)."""
    x, y = data()
    batches = minibatches(STEPS)
    m0 = torch.zeros(D, dtype=f64)
    eps = draws(STEPS, SEED, (D,))
    ref = classical(m0, eps, x, y, batches)
    bl = blr_instance(m0, x, y, batches, seed=SEED)
    out = [Comparison("BLR vs Vadam, same ε, 40 steps", (bl - ref).abs().max().item(), 1e-10)]
    g = torch.Generator().manual_seed(2)
    starts = torch.randn(64, D, dtype=f64, generator=g)
    eps64 = draws(STEPS, SEED + 1, (64, D))
    if torch.device(device).type == "cpu":
        noise: torch.Tensor | torch.Generator = torch.Generator().manual_seed(SEED + 1)
        how = "vadam_noise"
    else:
        noise, how = eps64, "stored ε"
    kern = kernel_instance(starts.to(device), x, y, batches, noise).cpu()
    engine = blr_instance(starts, x, y, batches, seed=SEED + 1)
    batched = classical(starts, eps64, x, y, batches)
    out.append(
        Comparison(
            f"kernel ({device}, 64 copies, {how}) vs engine (batched)",
            (kern - engine).abs().max().item(),
            1e-10,
        )
    )
    out.append(
        Comparison(
            f"kernel ({device}, 64 copies) vs Vadam", (kern - batched).abs().max().item(), 1e-10
        )
    )
    return out


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "GaussianOptions(lr=ALPHA,",
        "GaussianOptions(lr=1.01 * ALPHA,",
        "BLR mean rate α × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "* s_hat + DELTA)",
        "* s_hat + 1.01 * DELTA)",
        "BLR draw precision's prior δ × 1.01",
    ),
    Mutation(
        "blr", "constant", "kernel_instance", "lr=ALPHA,", "lr=1.01 * ALPHA,", "kernel α × 1.01"
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "(g_hat + dt * m)",
        "g_hat",
        "BLR gradient average without the prior term δ̃m",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "m = m - ALPHA * m_hat",
        "m = m - 1.01 * ALPHA * m_hat",
        "Vadam mean rate α × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "s / (1 - BETA2**t)",
        "s",
        "Vadam without the bias correction of s",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "(g + DELTA * m / n)",
        "g",
        "Vadam momentum without the prior term δ̃m",
    ),
)
