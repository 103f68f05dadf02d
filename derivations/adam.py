r"""RMSprop and Adam are the diagonal-Gaussian BLR in (m, s) form with the delta method, minibatch
gradients and the squared gradient as Hessian, once square-root scaling, a separate mean rate,
damping and (Adam) a gradient average are typed in: the symbolic column is "~".

**Family.** q = N(m, diag(s)⁻¹): T(θ) = (θ, θ⊙θ), λ = (s⊙m, −½s), μ = (m, m² + 1/s), h constant,
∇_μ(−H) = λ. With ĝ ≈ E_q[∇ℓ̄] and ĥ ≈ E_q[diag ∇²ℓ̄] (Bonnet/Price, as in Row 2) the λ₂ block
of the BLR λ ← λ − ρ(∇_μE_q[ℓ̄] + λ) is the scale recursion s ← (1 − ρ)s + ρĥ, and the λ₁ block
the mean step m ← m − ρĝ/s_new.

**Rule.** The row's approximations, in order: the delta method (ĝ = ∇ℓ̄(m), no sampling);
the stochastic approximation ĝ_t = (N/M)Σ_{i∈B_t}∇ℓ_i(m_t); the Hessian surrogate ĥ = ĝ⊙ĝ.
What :func:`derive` proves: the two blocks of the diagonal BLR step above; that Adam's bias
correction of an exponential average is a rate schedule (v_t = β₂v_{t−1} + (1 − β₂)ĝ_t²
divided by 1 − β₂^t is exactly s_t = (1 − ρ_t)s_{t−1} + ρ_tĝ_t² with ρ_t = (1 − β₂)/(1 − β₂^t),
ρ₁ = 1, so s₀ is irrelevant; likewise ḡ_t with γ_t = (1 − β₁)/(1 − β₁^t)); that natural momentum
(heavy ball in λ-space, Khan et al. 2018), λ_{t+1} = λ_t − ρ∇_μL + γ(λ_t − λ_{t−1}), gives
S_{t+1} = (1 − ρ + γ)S_t − γS_{t−1} + ρĤ and m_{t+1} = m_t − ρĝ/S_{t+1} +
γ(S_{t−1}/S_{t+1})(m_t − m_{t−1}), which the slow-moving-scale approximation S_{t−1} ≈ S_{t+1}
turns into the heavy ball m_{t+1} = m_t − ρĝ_t/S_{t+1} + γ(m_t − m_{t−1}); that for a constant
preconditioner P the heavy ball is the EMA form m_{t+1} = m_t − αḡ_t/P,
ḡ_t = γḡ_{t−1} + (1 − γ)ĝ_t, α = ρ/(1 − γ); and that with s_t = v̂_t and ḡ_t = m̂_t the step below
is Adam's. What is typed in (``INFO.assumptions``): square-root scaling (precondition the mean by
√s + ε instead of s), the mean's own rate α ≠ ρ (the (m, s)-form with two rates, which for
α ≠ ρ is not a λ-space BLR step), the gradient average ḡ_t with Adam's moving preconditioner
√s_t + ε (the heavy ball = EMA identity holds only for a constant one), and the damping ε:

    RMSprop-BLR:  s_t = (1 − ρ)s_{t−1} + ρĝ_t²,     m_{t+1} = m_t − αĝ_t/(√s_t + ε);
    Adam-BLR:     s_t = (1 − ρ_t)s_{t−1} + ρ_tĝ_t²,  ḡ_t = (1 − γ_t)ḡ_{t−1} + γ_tĝ_t,
                  m_{t+1} = m_t − αḡ_t/(√s_t + ε).

What is engine and what is row code: the BLR instance is :class:`blr.BLR` on
:class:`expfam.DiagGaussian` with ``GaussianOptions(lr=α, sqrt_scaling=True, damping=ε)`` and
:class:`blr.Delta` ``(hessian="grad_sq")`` (ĝ at the mean by autograd, ĥ = ĝ²), with ρ constant
(RMSprop) or :func:`blr.schedules.bias_corrected` (Adam). The gradient average is row code: the
estimator :class:`GradientAverage` wraps :class:`blr.Delta` and hands the engine (ḡ_t, ĝ_t²) in
place of (ĝ_t, ĝ_t²), which is where the typed-in average enters.

**Equality conditions.** Same minibatches, m₀ = θ₀, R = 0 (no prior: ε is damping, not a prior
precision). RMSprop (``torch.optim.RMSprop(lr=α, alpha=β₂, eps=ε)``, v₀ = 0): ρ = 1 − β₂,
s₀ = 0. The diagonal family needs s₀ > 0, so the engine starts at s₀ = 1e-200, whose
contribution β₂^t·s₀ to s_t is below float64 resolution next to ĝ²; the batched kernel, which
has no domain check, starts at s₀ = 0 exactly. Adam (``torch.optim.Adam(lr=α, betas=(β₁, β₂),
eps=ε)``, no weight decay): ρ_t and γ_t the bias-correction schedules above; s₀ and ḡ₀ are
irrelevant (ρ₁ = γ₁ = 1). The heavy-ball/EMA equality holds only with the scale frozen; it is
checked separately (natural momentum γ = β₁ with mean rate α(1 − β₁), no bias correction,
s fixed at unequal values, against the hand-coded EMA form with rate α).

**Test problem.** 2-D logistic regression, N = 64 points x_i ~ N(0, I₂) (seed 0),
y_i ~ Bernoulli(σ(x_iᵀw)), w = (1.5, −2), summed loss, M = 8, 100 stored minibatches, θ₀ = 0,
α = 0.05, β₁ = 0.9, β₂ = 0.999 (the bias corrections matter throughout: 1 − β₂^100 ≈ 0.095),
ε = 1e-6 (large enough that a 1% change of ε moves the iterates by ~1e-9, a thousand times the
tolerance). Equalities (iterate by iterate, tolerance 1e-12): BLR-RMSprop and
``torch.optim.RMSprop``, BLR-Adam and ``torch.optim.Adam``, over 100 steps; the batched kernel
(:func:`blr.kernels.diag_gaussian_step_` with ``sqrt=True``, ``eps``, and for Adam ``g_avg``,
γ_t and ρ_t; ĝ by autograd) on 64 copies, each with its own start and minibatch sequence, one
call per step, against the engine on the first 2 copies and ``torch.optim`` (one optimizer over
a (64, 2) parameter: Adam and RMSprop are elementwise) on all of them; with the scale frozen at
s = (25, 100), the engine's natural and heavy-ball momentum against the hand-coded EMA form
(closed-form logistic gradient), 100 steps.

**References.** Khan & Rue (2023), Table 1 row 5; Khan et al. (2018), "Fast and scalable
Bayesian deep learning by weight-perturbation in Adam" (ICML); Kingma & Ba (2015); Tieleman
& Hinton (2012).
"""

from __future__ import annotations

import sympy as sp
import torch

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from derivations import sgd
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="adam",
    number=5,
    algorithm="RMSprop / Adam",
    posterior="Gaussian (diagonal)",
    approximation="delta, stochastic approx., ĝ² Hessian, √-scaling, slow-moving scale",
    symbolic="~",
    assumptions=(
        "square-root scaling: the mean step is preconditioned by √s + ε instead of s, a "
        "substitution typed into the (m, s)-form (GaussianOptions(sqrt_scaling=True)), not a "
        "consequence of the BLR",
        "two rates: the mean moves with its own rate α ≠ ρ (the (m, s)-form with per-block rates, "
        "GaussianOptions(lr=α)); for α ≠ ρ this is not a λ-space BLR step",
        "the gradient average ḡ_t (bias-corrected EMA with rate γ_t = (1 − β₁)/(1 − β₁^t)) in "
        "place of ĝ_t, supplied by the row's own estimator GradientAverage: derive() proves "
        "natural momentum → heavy ball under the slow-moving-scale approximation and heavy ball = "
        "EMA for a constant preconditioner, but Adam's preconditioner √s_t + ε moves (the frozen-"
        "scale comparisons test the constant case)",
        "the damping ε added to the preconditioner √s + ε (not a prior precision)",
    ),
)

N_DATA = 64
W_TRUE = (1.5, -2.0)
BATCH = 8
STEPS = 100
ALPHA = 0.05
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-6  # a regime where ε matters: a 1% change moves the iterates ~1e-9
COPIES = 64
S0_ENGINE = 1e-200  # stands for s₀ = 0, outside the diagonal family's domain
FROZEN_SCALE = (25.0, 100.0)


def derive() -> list[str]:
    """Scale recursion from λ₂ and mean step from λ₁, bias correction as the schedule ρ_t
    (t = 1..4 and the general induction step), natural momentum → heavy ball under the
    slow-moving approximation, heavy ball with constant P → the EMA form, and the Adam step
    (given the typed-in √-scaling, rate α, gradient average and ε)."""
    # the λ₂ block: −½s' = −½s − ρ(½ĥ − ½s) ⇒ s' = (1 − ρ)s + ρĥ
    s, s_prev, rho, h, g, m, m_prev = sp.symbols("s s_prev rho h g m m_prev")
    s_new = -2 * (-s / 2 - rho * (h / 2 - s / 2))
    assert sp.expand(s_new - ((1 - rho) * s + rho * h)) == 0
    # the λ₁ block: s'm' = sm − ρ(ĝ − ĥm + sm) ⇒ m' = m − ρĝ/s' (the α = ρ, s-preconditioned step)
    lam1_new = s * m - rho * (g - h * m + s * m)
    assert sp.cancel(lam1_new / s_new - (m - rho * g / s_new)) == 0
    # bias correction = the schedule ρ_t = (1 − β)/(1 − β^t): t = 1..4, s₀ arbitrary
    beta, s0 = sp.symbols("beta s_0", positive=True)
    xs = sp.symbols("x_1:5")
    v, s_t = 0, s0
    for t, x in enumerate(xs, start=1):
        v = beta * v + (1 - beta) * x
        rho_t = (1 - beta) / (1 - beta**t)
        s_t = (1 - rho_t) * s_t + rho_t * x
        assert sp.cancel(sp.together(s_t - v / (1 - beta**t))) == 0
    # ... and the induction step for general t:
    # (1 − ρ_t)v̂_{t−1} + ρ_t x = (βv_{t−1} + (1 − β)x)/(1 − β^t)
    # with B = β^t (so β^{t−1} = B/β) both sides are rational in β, B
    big_b, v_prev, x = sp.symbols("B v_prev x")
    rho_t = (1 - beta) / (1 - big_b)
    lhs = (1 - rho_t) * v_prev / (1 - big_b / beta) + rho_t * x
    rhs = (beta * v_prev + (1 - beta) * x) / (1 - big_b)
    assert sp.cancel(lhs - rhs) == 0
    # natural momentum in λ-space for N(m, 1/S) (1-D), ∇_μL = (ĝ − ĥm, ½ĥ) + λ
    gamma = sp.Symbol("gamma")
    lam = (s * m, -s / 2)
    lam_prev = (s_prev * m_prev, -s_prev / 2)
    grad = (g - h * m + lam[0], h / 2 + lam[1])
    new = [lam[i] - rho * grad[i] + gamma * (lam[i] - lam_prev[i]) for i in range(2)]
    s_next = -2 * new[1]
    m_next = new[0] / s_next
    assert sp.expand(s_next - ((1 - rho + gamma) * s - gamma * s_prev + rho * h)) == 0
    want = m - rho * g / s_next + gamma * s_prev / s_next * (m - m_prev)
    assert sp.cancel(m_next - want) == 0
    # slow-moving scale S_{t−1} = S_{t+1} = P: the heavy ball; with P constant it is the EMA form
    p, s_nxt = sp.symbols("P S_next", positive=True)
    general = m - rho * g / s_nxt + gamma * s_prev / s_nxt * (m - m_prev)
    assert sp.cancel(general.subs(s_nxt, s_next) - want) == 0
    slow = general.subs(s_prev, s_nxt)
    assert sp.cancel(slow - (m - rho * g / s_nxt + gamma * (m - m_prev))) == 0
    gs = sp.symbols("ghat_1:5")
    hb_prev, hb, ema_m, ema_g = m, m, m, 0
    for gt in gs:
        hb_prev, hb = hb, hb - rho * gt / p + gamma * (hb - hb_prev)
        ema_g = gamma * ema_g + (1 - gamma) * gt
        ema_m = ema_m - rho / (1 - gamma) * ema_g / p
        assert sp.cancel(hb - ema_m) == 0
    # the Adam step: with s_t = v̂_t and ḡ_t = m̂_t (the two schedules) the BLR mean step is
    # Adam's, for 3 steps with symbolic gradients
    alpha, eps, b1, b2 = sp.symbols("alpha epsilon beta_1 beta_2", positive=True)

    def canon(e: sp.Expr) -> sp.Expr:
        return sp.cancel(sp.together(e))

    theta, m_blr, v_adam, a_adam, s_blr, gbar = m, m, 0, 0, s0, 0
    for t, gt in enumerate(gs[:3], start=1):
        a_adam = b1 * a_adam + (1 - b1) * gt
        v_adam = b2 * v_adam + (1 - b2) * gt**2
        m_hat, v_hat = canon(a_adam / (1 - b1**t)), canon(v_adam / (1 - b2**t))
        theta = theta - alpha * m_hat / (sp.sqrt(v_hat) + eps)
        gam_t, rho_t = (1 - b1) / (1 - b1**t), (1 - b2) / (1 - b2**t)
        gbar = canon((1 - gam_t) * gbar + gam_t * gt)
        s_blr = canon((1 - rho_t) * s_blr + rho_t * gt**2)
        assert sp.cancel(s_blr - v_hat) == 0 and sp.cancel(gbar - m_hat) == 0
        m_blr = m_blr - alpha * gbar / (sp.sqrt(s_blr) + eps)
        assert sp.cancel(m_blr - theta) == 0
    return [
        "diagonal-Gaussian BLR λ' = λ − ρ(∇_μE_q[ℓ̄] + λ): the λ₂ block is s' = (1 − ρ)s + ρĥ "
        "(ĥ = ĝ² for RMSprop/Adam), the λ₁ block m' = m − ρĝ/s'",
        "bias correction is a rate schedule: v_t/(1 − β^t) = s_t with s_t = (1 − ρ_t)s_{t−1} + "
        "ρ_t x_t, ρ_t = (1 − β)/(1 − β^t), for t = 1..4 (any s₀) and as an induction step in t",
        "natural momentum: S' = (1 − ρ + γ)S − γS_prev + ρĥ, m' = m − ρĝ/S' + "
        "γ(S_prev/S')(m − m_prev)",
        "slow-moving scale S_prev = S' gives the heavy ball m' = m − ρĝ/S' + γ(m − m_prev); with a "
        "constant preconditioner P it equals the EMA form with β₁ = γ, α = ρ/(1 − γ) (4 steps)",
        "with s_t = v̂_t and ḡ_t = m̂_t the (m, s)-form step m − αḡ_t/(√s_t + ε) is Adam's "
        "θ − αm̂_t/(√v̂_t + ε) for 3 steps with symbolic gradients",
    ]


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """x_i ~ N(0, I₂), y_i ~ Bernoulli(σ(x_iᵀw)), N = 64, seed 0."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_DATA, 2, dtype=dtype, generator=gen)
    p = torch.sigmoid(x @ torch.tensor(W_TRUE, dtype=dtype))
    y = (torch.rand(N_DATA, dtype=dtype, generator=gen) < p).to(dtype)
    return x, y


def index_sequence(copies: int, steps: int, seed: int) -> torch.Tensor:
    """Stored minibatches: ``(copies, steps, M)`` indices, M distinct of N per step (Row 4's
    :func:`derivations.sgd.index_sequence` on this row's N = 64)."""
    return sgd.index_sequence(copies, steps, seed, n=N_DATA, size=BATCH)


def minibatch_loss(x: torch.Tensor, y: torch.Tensor, batch: torch.Tensor):
    """θ ↦ (N/M)Σ_{i∈B} ℓ_i(θ) (logistic, no prior), vectorized over leading dimensions of θ
    (a ``(..., M)`` ``batch`` pairs each leading index with its own minibatch)."""
    xb, yb = x[batch], y[batch]
    scale = x.shape[0] / batch.shape[-1]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        f = (xb * theta.unsqueeze(-2)).sum(-1)
        return scale * (torch.logaddexp(f, torch.zeros_like(f)) - yb * f).sum(-1)

    return loss


def classical(
    theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, kind: str
) -> torch.Tensor:
    """``torch.optim.RMSprop(lr=α, alpha=β₂, eps=ε)`` or ``torch.optim.Adam(lr=α, betas=(β₁, β₂),
    eps=ε)`` on the minibatch losses; ``theta0`` ``(..., 2)`` with ``idx`` ``(..., steps, M)``
    (the optimizers are elementwise, so leading dimensions are independent copies)."""
    w = theta0.clone().requires_grad_()
    if kind == "rmsprop":
        opt = torch.optim.RMSprop([w], lr=ALPHA, alpha=BETA2, eps=EPS)
    else:
        opt = torch.optim.Adam([w], lr=ALPHA, betas=(BETA1, BETA2), eps=EPS)
    out = [w.detach().clone()]
    for t in range(idx.shape[-2]):
        opt.zero_grad()
        minibatch_loss(x, y, idx[..., t, :])(w).sum().backward()
        opt.step()
        out.append(w.detach().clone())
    return torch.stack(out, -2)


class GradientAverage(blr.Estimator):
    r"""The slow-moving-approximation momentum as an estimator: it asks ``base`` for (ĝ_t, ĥ_t)
    and returns ∇_μ built from (ḡ_t, ĥ_t),

    .. math:: \bar g_t = (1-\gamma_t)\bar g_{t-1} + \gamma_t\hat g_t,\qquad
              \gamma_t = (1-\beta_1)/(1-\beta_1^t)

    (bias-corrected EMA; γ₁ = 1). One instance per run: it counts its calls.

    Args:
        beta1: β₁.
        base: the estimator of (ĝ, ĥ); default :class:`blr.Delta` with ĥ = ĝ².
    """

    def __init__(self, beta1: float, base: blr.Estimator | None = None) -> None:
        self.schedule = blr.schedules.bias_corrected(beta1)
        self.base = blr.Delta(hessian="grad_sq") if base is None else base
        self.t, self.g_avg = 0, None

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        est = self.base(family, nat, loss, generator=generator)
        g_hat, h_hat = family.gh_from_mean_grad(nat, est.grad)
        self.t += 1
        gamma = self.schedule(self.t)
        self.g_avg = g_hat.clone() if self.g_avg is None else self.g_avg.lerp(g_hat, gamma)
        return blr.Estimate(family.mean_grad_from_gh(nat, self.g_avg, h_hat), est.value)


class FrozenScale(blr.Estimator):
    """ĝ = ∇ℓ̄(m) with Ĥ = the current s, so that G = Ĥ − s = 0 and the scale never moves: the
    setting in which the heavy ball equals the EMA form."""

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        est = blr.Delta(hessian="grad_sq")(family, nat, loss, generator=generator)
        g_hat, _ = family.gh_from_mean_grad(nat, est.grad)
        return blr.Estimate(family.mean_grad_from_gh(nat, g_hat, -2 * nat.lam2), est.value)


def blr_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, kind: str
) -> torch.Tensor:
    """:class:`blr.BLR` on N(m, diag(s)⁻¹) with ``GaussianOptions(lr=α, sqrt_scaling=True,
    damping=ε)``: RMSprop (ρ = 1 − β₂, :class:`blr.Delta` with ĥ = ĝ²) or Adam
    (ρ_t = bias-corrected β₂, :class:`GradientAverage`); returns all means."""
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(m0.clone(), torch.full_like(m0, S0_ENGINE))
    if kind == "rmsprop":
        estimator, rho = blr.Delta(hessian="grad_sq"), 1 - BETA2
    else:
        estimator, rho = GradientAverage(BETA1), blr.schedules.bias_corrected(BETA2)
    opts = blr.GaussianOptions(lr=ALPHA, sqrt_scaling=True, damping=EPS)
    opt = blr.BLR(
        fam, nat, minibatch_loss(x, y, idx[0]), estimator=estimator, rho=rho, gaussian=opts
    )
    out = [fam.location(opt.posterior)]
    for t in range(idx.shape[0]):
        opt.step(minibatch_loss(x, y, idx[t]))
        out.append(fam.location(opt.posterior))
    return torch.stack(out)


def heavy_ball_frozen(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, kind: str
) -> torch.Tensor:
    """:class:`blr.BLR` with momentum γ = β₁ (``momentum_kind`` = ``kind``), mean rate α(1 − β₁),
    √-scaling, damping ε, and the scale frozen at :data:`FROZEN_SCALE` (:class:`FrozenScale`)."""
    fam = expfam.DiagGaussian()
    s = torch.tensor(FROZEN_SCALE, dtype=m0.dtype)
    opts = blr.GaussianOptions(
        lr=ALPHA * (1 - BETA1), sqrt_scaling=True, damping=EPS, momentum_kind=kind
    )
    opt = blr.BLR(
        fam,
        fam.from_moments(m0.clone(), s),
        minibatch_loss(x, y, idx[0]),
        estimator=FrozenScale(),
        rho=0.5,
        momentum=BETA1,
        gaussian=opts,
    )
    out = [fam.location(opt.posterior)]
    for t in range(idx.shape[0]):
        opt.step(minibatch_loss(x, y, idx[t]))
        out.append(fam.location(opt.posterior))
    assert torch.equal(fam.to_moments(opt.posterior)[1], s)  # the scale did not move
    return torch.stack(out)


def ema_frozen(
    theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """Hand-coded EMA momentum with a fixed preconditioner P = √s + ε (no bias correction):
    ḡ ← β₁ḡ + (1 − β₁)ĝ, θ ← θ − αḡ/P, ĝ the hand-coded minibatch logistic gradient."""
    precond = torch.tensor(FROZEN_SCALE, dtype=theta0.dtype).sqrt() + EPS
    scale = x.shape[0] / idx.shape[-1]
    theta, g_avg, out = theta0, torch.zeros_like(theta0), [theta0]
    for t in range(idx.shape[0]):
        xb, yb = x[idx[t]], y[idx[t]]
        g_hat = scale * (xb * (torch.sigmoid(xb @ theta) - yb).unsqueeze(-1)).sum(0)
        g_avg = BETA1 * g_avg + (1 - BETA1) * g_hat
        theta = theta - ALPHA * g_avg / precond
        out.append(theta)
    return torch.stack(out)


def kernel_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, kind: str
) -> torch.Tensor:
    """The batched kernel on B copies (``m0`` ``(B, 2)``, ``idx`` ``(B, steps, M)``): ĝ by autograd
    of each copy's minibatch loss at its m, ĥ = ĝ², s₀ = 0, √s + ε; RMSprop ρ = 1 − β₂, Adam
    ρ_t, γ_t (bias corrections as rates) with the gradient-average buffer."""
    x, y, idx = x.to(m0.device), y.to(m0.device), idx.to(m0.device)
    m, s, g_avg = m0.clone(), torch.zeros_like(m0), torch.zeros_like(m0)
    rho_sched = blr.schedules.bias_corrected(BETA2)
    gamma_sched = blr.schedules.bias_corrected(BETA1)
    out = [m.clone()]
    for t in range(1, idx.shape[1] + 1):
        theta = m.clone().requires_grad_()
        with torch.enable_grad():
            value = minibatch_loss(x, y, idx[:, t - 1])(theta)
            (g_hat,) = torch.autograd.grad(value.sum(), theta)
        if kind == "rmsprop":
            diag_gaussian_step_(
                m, s, g_hat, g_hat * g_hat, rho=1 - BETA2, lr=ALPHA, eps=EPS, sqrt=True
            )
        else:
            diag_gaussian_step_(
                m,
                s,
                g_hat,
                g_hat * g_hat,
                rho=rho_sched(t),
                lr=ALPHA,
                g_avg=g_avg,
                gamma=gamma_sched(t),
                eps=EPS,
                sqrt=True,
            )
        out.append(m.clone())
    return torch.stack(out, 1)


def check(device: str = "cpu") -> list[Comparison]:
    """BLR-RMSprop vs torch.optim.RMSprop, BLR-Adam vs torch.optim.Adam, heavy ball vs EMA with
    the scale frozen, and the batched kernel against the engine and torch.optim."""
    x, y = data()
    idx_all = index_sequence(COPIES, STEPS, seed=1)
    starts = torch.randn(COPIES, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    starts[0] = 0.0
    out = []
    for kind, name in (("rmsprop", "RMSprop"), ("adam", "Adam")):
        ref = classical(starts, x, y, idx_all, kind)  # all 64 copies in one optimizer
        engine = torch.stack([blr_instance(starts[c], x, y, idx_all[c], kind) for c in range(2)])
        kernel = kernel_instance(starts.to(device), x, y, idx_all, kind).cpu()
        out += [
            Comparison(
                f"BLR-{name} vs torch.optim.{name}, 100 steps",
                (engine[0] - ref[0]).abs().max().item(),
                1e-12,
            ),
            Comparison(
                f"{name}: kernel ({device}, 64 copies) vs engine",
                (kernel[:2] - engine).abs().max().item(),
                1e-12,
            ),
            Comparison(
                f"{name}: kernel ({device}, 64 copies) vs torch.optim.{name}",
                (kernel - ref).abs().max().item(),
                1e-12,
            ),
        ]
    ema = ema_frozen(starts[0], x, y, idx_all[0])
    for kind in ("natural", "heavy_ball"):
        hb = heavy_ball_frozen(starts[0], x, y, idx_all[0], kind)
        out.append(
            Comparison(
                f"frozen scale: BLR {kind} momentum γ = β₁ vs EMA form, 100 steps",
                (hb - ema).abs().max().item(),
                1e-12,
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
        "engine: mean rate α × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "damping=EPS)",
        "damping=1.01 * EPS)",
        "engine: damping ε × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        'blr.Delta(hessian="grad_sq"), 1 - BETA2',
        'blr.Delta(hessian="grad_sq"), 1.01 * (1 - BETA2)',
        "engine (RMSprop): scale rate ρ = 1 − β₂ × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "blr.schedules.bias_corrected(BETA2)",
        "1 - BETA2",
        "engine (Adam): bias correction of s dropped (ρ_t → 1 − β₂)",
    ),
    Mutation(
        "blr",
        "term",
        "GradientAverage.__call__",
        "self.g_avg.lerp(g_hat, gamma)",
        "g_hat",
        "engine (Adam): gradient average dropped from the estimator",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel_instance",
        "eps=EPS,\n                sqrt=True,",
        "eps=1.01 * EPS,\n                sqrt=True,",
        "kernel (Adam): damping ε × 1.01",
    ),
    Mutation(
        "blr",
        "term",
        "kernel_instance",
        "gamma=gamma_sched(t)",
        "gamma=1 - BETA1",
        "kernel (Adam): bias correction of ḡ dropped (γ_t → 1 − β₁)",
    ),
    Mutation(
        "blr",
        "term",
        "heavy_ball_frozen",
        "lr=ALPHA * (1 - BETA1),",
        "lr=ALPHA,",
        "frozen scale, engine: the (1 − β₁) of the heavy-ball rate dropped",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "betas=(BETA1, BETA2), eps=EPS)",
        "betas=(BETA1, BETA2), eps=1.01 * EPS)",
        "torch.optim.Adam: eps × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "alpha=BETA2,",
        "alpha=1 - 1.01 * (1 - BETA2),",
        "torch.optim.RMSprop: 1 − alpha (= 1 − β₂) × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "ema_frozen",
        "theta - ALPHA * g_avg",
        "theta - 1.01 * ALPHA * g_avg",
        "hand-coded EMA form: step α × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "betas=(BETA1, BETA2)",
        "betas=(0.0, BETA2)",
        "torch.optim.Adam: momentum dropped (β₁ = 0)",
    ),
    Mutation(
        "classical",
        "term",
        "ema_frozen",
        "(1 - BETA1) * g_hat",
        "g_hat",
        "hand-coded EMA form: the (1 − β₁) weight of ĝ dropped",
    ),
)
