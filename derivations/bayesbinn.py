r"""BayesBiNN is the BLR on binary weights θ ∈ {−1, +1}^D with the delta method of STE replaced by
a Gumbel-softmax (concrete) relaxation and a minibatch.

**Family.** q(θ) = Π_j Bernoulli on {−1, +1}: T(θ) = θ, λ_j = ½log(p_j/(1 − p_j)),
A(λ) = Σ_j log(2cosh λ_j), μ = tanh λ, F = diag(1 − tanh²λ), h = 1, ∇_μ(−H) = atanh μ = λ.
A Bernoulli prior λ₀ (0 is uniform; a previous task's posterior in continual learning) enters as
the conjugate split λ ← (1 − ρ)λ + ρ(λ₀ − ∇_μE_q[ℓ̄]).

**Rule.** E_q[ℓ̄] = Σ_{θ∈{±1}^D} Π_j ½(1 + μ_jθ_j) ℓ̄(θ) is multilinear in μ. BayesBiNN
estimates its gradient with relaxed draws: u ~ U(0, 1), ε = ½log(u/(1 − u)),
θ_τ = tanh((λ + ε)/τ) (as τ → 0 it is +1 with probability σ(2λ) = p); ∂θ_τ/∂λ = (1 − θ_τ²)/τ
and ∇_μ = F⁻¹∇_λ give ∇_μE_q[ℓ̄] ≈ s⊙∇ℓ̄(θ_τ), s = (1 − θ_τ²)/(τ(1 − tanh²λ)) —
:class:`blr.GumbelSoftmax`. With ℓ̄ = N·(minibatch mean loss) and K draws:

    λ ← (1 − ρ)λ + ρλ₀ − ρN(1/K)Σ_k s_k⊙ĝ(θ_τ^(k)),

which is λ ← λ − ρ[N·mean_k(s_k⊙ĝ_k) + κ(λ − λ₀)] with KL weight κ = 1 (Meng, Bachmann & Khan
2020, with their gradient averaging off).

**The public code.** ``optimizers/BayesBiNN.py`` of team-approx-bayes/BayesBiNN computes that
bracket with two differences. (i) The scale's Fisher is one step late: the optimizer keeps μ in
its state and, after updating λ, stores tanh of the λ from *before* the update, so step t ≥ 2
draws θ_τ at λ_{t−1} but divides by 1 − tanh²λ_{t−2} (step 1 uses λ₀ for both). (ii) It adds
1e-10 to 1 − θ_τ² and to 1 − μ². It also offers an exponential average of the bracket with
Adam-style bias correction (``betas``, 0 by default) and ``reweight`` = κ (1 by default); both
are written out in :func:`public_code` and checked at those defaults. With (i) and (ii) the
public code is still a BLR step, with another estimator of ∇_μE_q[ℓ̄]: the relaxed estimator with
the stale, guarded Fisher (:class:`PublicCodeRelaxed`); that variant is checked exactly (same u's
and minibatches). Against the BLR, each step's scale is off by the factor
F(λ_{t−1})/F(λ_{t−2}) = 1 − 2tanh(λ_{t−1})·Δλ + O(Δλ²), Δλ = λ_{t−1} − λ_{t−2} = O(ρ), i.e. the
step by O(ρ²) and the iterates by O(ρ) over a horizon ρt held fixed; the guards change s by a
relative ≤ 1e-10/(1 − μ²). That O(ρ) is measured (a limit comparison).

**Equality conditions.** κ = 1, no gradient EMA (β = 0), the same uniforms u and minibatches,
ρ = the learning rate, λ at t = 0 equal: identical iterates (:func:`blr.step` with
``blr.GumbelSoftmax(τ, K)`` and ``prior``; the fused :func:`blr.kernels.bernoulli.bayesbinn_step_`
with :func:`~blr.kernels.bernoulli.relaxed_scale`). The public code is the BLR with
:class:`PublicCodeRelaxed` under the same conditions; with the fresh Fisher it agrees with the BLR
only as ρ → 0. The BLR's fixed points λ = λ₀ − ∇_μE_q[ℓ̄] are the stationary points of
E_q[ℓ̄] − λ₀ᵀμ − H(q); the relaxed estimator is biased for τ > 0, so that statement is checked
with the exact gradient.

**Test problem.** 20 logistic examples in D = 3 (x ~ N(0, ¼I), labels from σ(xᵀw),
w = (1, −1, ½)), ℓ̄(θ) = Σ_i log(1 + e^{x_iᵀθ}) − y_i x_iᵀθ, prior λ₀ = (0.2, −0.1, 0).
(i) τ = 0.5, K = 2, M = 5, ρ = 0.02, 30 steps from λ = (0.3, −0.2, 0.1) with stored u's (replayed
from the estimator's seeded generator): the BLR equals the formula (equality); the fused kernel
on 64 copies (different starts, ĝ by autograd) equals the batched engine and the formula
(equality); the BLR
with :class:`PublicCodeRelaxed` equals the public code's update (equality). (ii) Public code vs
the BLR as ρ → 0 with ρt = 0.15 fixed (ρ = 0.005, 0.0025, 0.00125; full data, the same two draws
u at every step, so both runs are deterministic): the fitted exponent p of max|Δλ| ∝ ρ^p (log
gap = c + p log ρ + eρ) is 1 to 5e-3 (limit). (iii) Exact ∇_μE_q[ℓ̄] by enumeration of the 8
corners (:class:`blr.Exact`), ρ = 0.2, 500 steps from λ = 0: the limit satisfies
λ = λ₀ − ∇_μE_q[ℓ̄] (hand-written gradient) to 1e-12 (limit) and its objective is ≤ that of 1000
random μ ∈ (−1, 1)³ (bound).

**References.** Khan & Rue (2023), Table 1 row 10; Meng, Bachmann & Khan (ICML 2020),
"Training binary neural networks using the Bayesian learning rule", and its code
(github.com/team-approx-bayes/BayesBiNN); Maddison et al. (2017) and Jang et al. (2017) for the
concrete/Gumbel-softmax relaxation.
"""

from __future__ import annotations

import itertools
import math

import sympy as sp
import torch
import torch.nn.functional as F

import blr
import expfam
from blr.kernels.bernoulli import bayesbinn_step_, relaxed_scale
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="bayesbinn",
    number=10,
    algorithm="BayesBiNN",
    posterior="Bernoulli (±1)",
    approximation="Gumbel-softmax relaxation, stochastic approx.",
    symbolic="✓",
)

f64 = torch.float64
N, D, M = 20, 3, 5
W_TRUE = (1.0, -1.0, 0.5)
PRIOR = (0.2, -0.1, 0.0)
LAM_INIT = (0.3, -0.2, 0.1)
TAU, K, RHO, STEPS, SEED = 0.5, 2, 0.02, 30, 3
EXACT_RHO, EXACT_STEPS, N_RANDOM = 0.2, 500, 1000
HORIZON, RHO_LADDER = 0.15, (0.005, 0.0025, 0.00125)
GUARD = 1e-10  # the public code's guard on 1 − θ_τ² and 1 − μ²


def derive() -> list[str]:
    """Bernoulli on {±1}, the relaxed-sample chain rule, multilinearity of E_q[ℓ̄] (D = 2, 3),
    and the fixed-point equation = stationarity of the objective."""
    lam, mu, tau, eps, rho, lam0, g = sp.symbols("lambda mu tau epsilon rho lambda_0 g", real=True)
    log_partition = sp.log(2 * sp.cosh(lam))

    def vanishes(expr: sp.Expr) -> bool:  # hyperbolic → exponential, then a rational identity
        return sp.cancel(sp.expand(expr.rewrite(sp.exp))) == 0

    mean = sp.diff(log_partition, lam)
    assert vanishes(mean - sp.tanh(lam))
    fisher = sp.diff(mean, lam)
    assert vanishes(fisher - (1 - sp.tanh(lam) ** 2))
    # −H(μ) = Σ p log p with p = (1 ± μ)/2; its derivative is atanh μ = λ
    p = (1 + mu) / 2
    neg_entropy = p * sp.log(p) + (1 - p) * sp.log(1 - p)
    d_neg_h = sp.diff(neg_entropy, mu)
    # exp is injective on the reals: e^{2·∂(−H)/∂μ} = (1 + μ)/(1 − μ) = e^{2 atanh μ}
    ratio = sp.expand_power_exp(sp.exp(sp.expand(2 * d_neg_h)))
    assert sp.cancel(ratio - (1 + mu) / (1 - mu)) == 0
    # ε = ½log(u/(1 − u)) ⇔ u = σ(2ε), so P(θ_τ → +1 as τ → 0) = P(ε > −λ) = 1 − σ(−2λ) = σ(2λ),
    # which equals p = (1 + tanh λ)/2
    sigma_2eps = 1 / (1 + sp.exp(-2 * eps))
    assert sp.simplify(sp.log(sigma_2eps / (1 - sigma_2eps)) / 2 - eps) == 0
    assert sp.simplify(1 - 1 / (1 + sp.exp(2 * lam)) - 1 / (1 + sp.exp(-2 * lam))) == 0
    assert vanishes(1 / (1 + sp.exp(-2 * lam)) - (1 + sp.tanh(lam)) / 2)
    # relaxed sample chain rule: ∇_μ ℓ(θ_τ) = F⁻¹ ∂ℓ(θ_τ)/∂λ = ℓ'(θ_τ)·(∂θ_τ/∂λ)/F = s ℓ'(θ_τ)
    theta_tau = sp.tanh((lam + eps) / tau)
    scale = (1 - theta_tau**2) / (tau * (1 - sp.tanh(lam) ** 2))
    assert vanishes(sp.diff(theta_tau, lam) / fisher - scale)
    # BLR step with the prior λ₀ = BayesBiNN's λ − ρ[ĝ_μ + κ(λ − λ₀)] at κ = 1
    assert sp.expand(lam - rho * (g + lam - lam0) - ((1 - rho) * lam + rho * lam0 - rho * g)) == 0
    # the public code's scale uses F at the λ one step back: s_public = s·F(λ)/F(λ − h) with h the
    # last step, and F(λ)/F(λ − h) = 1 − 2 tanh(λ)·h + O(h²) (so the lag costs O(ρ²) per step)
    h = sp.Symbol("h", real=True)
    ratio = (1 / sp.cosh(lam) ** 2) / (1 / sp.cosh(lam - h) ** 2)
    first = sp.series(ratio, h, 0, 2).removeO()
    assert vanishes(first - (1 - 2 * sp.tanh(lam) * h))
    # multilinearity, D = 2 and D = 3, symbolic corner values
    statements = []
    for dim in (2, 3):
        mus = sp.symbols(f"mu1:{dim + 1}", real=True)
        corners = list(itertools.product((-1, 1), repeat=dim))
        values = sp.symbols(f"L0:{len(corners)}", real=True)
        expect = sum(
            sp.Mul(*[(1 + mj * tj) / 2 for mj, tj in zip(mus, c)]) * v
            for c, v in zip(corners, values)
        )
        for j in range(dim):
            assert sp.expand(sp.diff(expect, mus[j], 2)) == 0
            formula = sum(
                sp.Rational(c[j], 2)
                * sp.Mul(*[(1 + mk * tk) / 2 for k, (mk, tk) in enumerate(zip(mus, c)) if k != j])
                * v
                for c, v in zip(corners, values)
            )
            assert sp.expand(sp.diff(expect, mus[j]) - formula) == 0
        if dim == 2:
            # fixed point λ = λ₀ − ∇_μE_q[ℓ̄] ⇔ ∂/∂μ (E_q[ℓ̄] − λ₀ᵀμ − H) = 0 at λ = atanh μ
            lam0s = sp.symbols("lambda0_1 lambda0_2", real=True)
            neg_h = sum(
                (1 + mj) / 2 * sp.log((1 + mj) / 2) + (1 - mj) / 2 * sp.log((1 - mj) / 2)
                for mj in mus
            )
            objective = expect - sum(a * b for a, b in zip(lam0s, mus)) + neg_h
            for j in range(dim):  # stationary − fixed = ∂(−H)/∂μ_j − atanh μ_j = 0
                fixed = lam - (lam0s[j] - sp.diff(expect, mus[j]))
                stationary = sp.diff(objective, mus[j]).subs(sp.diff(neg_h, mus[j]), lam)
                assert sp.expand(stationary - fixed) == 0
                entropy_part = sp.expand_power_exp(sp.exp(sp.expand(2 * sp.diff(neg_h, mus[j]))))
                assert sp.cancel(entropy_part - (1 + mus[j]) / (1 - mus[j])) == 0
        statements.append(
            f"D = {dim}: E_q[ℓ̄] = Σ_θ Π_j ½(1 + μ_jθ_j)ℓ̄(θ) is multilinear, "
            "∂E/∂μ_j = Σ_θ (θ_j/2)Π_{k≠j}½(1 + μ_kθ_k)ℓ̄(θ)"
        )
    return [
        "Bernoulli on {±1}: μ = A'(λ) = tanh λ, F = 1 − tanh²λ, ∇_μ(−H) = atanh μ = λ",
        "ε = ½log(u/(1 − u)) ⇔ u = σ(2ε): P(λ + ε > 0) = σ(2λ) = (1 + tanh λ)/2 = p",
        "θ_τ = tanh((λ + ε)/τ): ∇_μℓ(θ_τ) = F⁻¹∂_λℓ(θ_τ) = s ℓ'(θ_τ), "
        "s = (1 − θ_τ²)/(τ(1 − tanh²λ))",
        "BLR with prior λ₀: λ − ρ(ĝ_μ + λ − λ₀) = (1 − ρ)λ + ρλ₀ − ρĝ_μ (BayesBiNN, κ = 1)",
        "public code's Fisher one step late: F(λ)/F(λ − h) = 1 − 2 tanh(λ)h + O(h²), h = the last "
        "step = O(ρ): its step differs from the BLR's by O(ρ²)",
        *statements,
        "D = 2: λ = λ₀ − ∇_μE_q[ℓ̄] ⇔ ∇_μ(E_q[ℓ̄] − λ₀ᵀμ − H(q)) = 0 (fixed point = stationarity)",
    ]


# ---------------------------------------------------------------------------- data
def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """20 logistic examples in D = 3: x ~ N(0, ¼I), y ~ Bernoulli(σ(xᵀw))."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(N, D, dtype=f64, generator=g)
    p = torch.sigmoid(x @ torch.tensor(W_TRUE, dtype=f64))
    return x, (torch.rand(N, dtype=f64, generator=g) < p).to(f64)


def minibatches(steps: int, seed: int = 1) -> torch.Tensor:
    """A stored sequence of minibatches of M indices."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:M] for _ in range(steps)])


def uniforms(steps: int, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The stored u's, (steps, K, *shape): what a generator seeded with ``seed`` gives
    :class:`blr.GumbelSoftmax` (K draws per step)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand((K, *shape), dtype=f64, generator=g) for _ in range(steps)])


# ---------------------------------------------------------------------------- classical
def classical(
    lam0: torch.Tensor,
    u: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    rho: float,
    tau: float,
    prior: torch.Tensor,
) -> torch.Tensor:
    """The BayesBiNN update (Meng et al., 2020; vectorized over leading copies of ``lam0``):
    ε = ½log(u/(1 − u)), θ_k = tanh((λ + ε_k)/τ), s_k = (1 − θ_k²)/(τ(1 − tanh²λ)),
    ĝ_k = (1/M)Σ_{i∈B}(σ(x_iᵀθ_k) − y_i)x_i, λ ← (1 − ρ)λ + ρλ₀ − ρN·mean_k(s_k⊙ĝ_k).
    Returns all λ_t."""
    n = x.shape[0]
    lam, out = lam0, [lam0]
    for uk, idx in zip(u, batches):
        xb, yb = x[idx], y[idx]
        eps = 0.5 * torch.log(uk / (1 - uk))
        theta = torch.tanh((lam + eps) / tau)
        scale = (1 - theta**2) / (tau * (1 - torch.tanh(lam) ** 2))
        grad = (torch.sigmoid(theta @ xb.T) - yb) @ xb / xb.shape[0]
        lam = (1 - rho) * lam + rho * prior - rho * n * (scale * grad).mean(0)
        out.append(lam)
    return torch.stack(out, -2)


def public_code(
    lam0: torch.Tensor,
    u: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    lr: float,
    tau: float,
    prior: torch.Tensor,
    beta: float = 0.0,
    reweight: float = 1.0,
) -> torch.Tensor:
    """The update of the public BayesBiNN optimizer (team-approx-bayes/BayesBiNN), written out:
    the state holds λ, μ (initially tanh λ₀) and a momentum m = 0; each step draws
    w_k = tanh((½log(u_k/(1 − u_k)) + λ)/τ), takes the minibatch-mean gradient ĝ_k at w_k,
    s_k = (1 − w_k² + 10⁻¹⁰)/τ/(1 − μ² + 10⁻¹⁰) with the *stored* μ, ĝ_λ = N·mean_k(s_k⊙ĝ_k),
    m ← βm + (1 − β)(ĝ_λ + κ(λ − λ₀)), λ ← λ − α·m/(1 − β^t), and then stores μ = tanh of the λ
    from before this update. Returns all λ_t."""
    n = x.shape[0]
    lam, mu, momentum = lam0, torch.tanh(lam0), torch.zeros_like(lam0)
    out = [lam0]
    for t, (uk, idx) in enumerate(zip(u, batches), start=1):
        xb, yb = x[idx], y[idx]
        w = torch.tanh((torch.log(uk / (1 - uk)) / 2 + lam) / tau)
        grad = (torch.sigmoid(w @ xb.T) - yb) @ xb / xb.shape[0]
        scale = (1 - w * w + GUARD) / tau / (1 - mu * mu + GUARD)
        grad_hat = (scale * grad).sum(0) * (n / u.shape[1])
        momentum = beta * momentum + (1 - beta) * (grad_hat + reweight * (lam - prior))
        before = lam
        lam = lam - lr * momentum / (1 - beta**t)
        mu = torch.tanh(before)
        out.append(lam)
    return torch.stack(out, -2)


# ---------------------------------------------------------------------------- BLR instance
def minibatch_loss(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, scale: float | None = None):
    """θ (K, *copies, D) ↦ ℓ̄(θ) ≈ N·(1/M)Σ_{i∈B}[log(1 + e^{x_iᵀθ}) − y_i x_iᵀθ], (K, *copies);
    ``scale`` replaces N (1 gives the minibatch mean loss)."""
    xb, yb = x[idx], y[idx]
    n = x.shape[0] if scale is None else scale

    def loss(theta: torch.Tensor) -> torch.Tensor:
        f = theta @ xb.T
        return n * (F.softplus(f) - yb * f).mean(-1)

    return loss


class PublicCodeRelaxed(blr.Estimator):
    r"""The relaxed estimator as the public BayesBiNN code computes it: draws as
    :class:`blr.GumbelSoftmax` (u from ``generator``, θ_τ = tanh((λ + ε)/τ), ∇ℓ̄(θ_τ) by
    autograd), but the scale s = (1 − θ_τ² + 10⁻¹⁰)/(τ(1 − μ̃² + 10⁻¹⁰)) uses μ̃ = tanh of the λ
    this estimator saw at its previous call (tanh λ at the first call): the Fisher one step late.
    One instance per run (it keeps that μ̃)."""

    def __init__(self, temperature: float, n_samples: int) -> None:
        self.temperature, self.n_samples = float(temperature), int(n_samples)
        self.mu: torch.Tensor | None = None

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        lam, tau = nat.lam1, self.temperature
        mu = torch.tanh(lam) if self.mu is None else self.mu
        self.mu = torch.tanh(lam)  # what the next call divides by
        u = torch.rand(
            (self.n_samples, *lam.shape), dtype=lam.dtype, device=lam.device, generator=generator
        )
        theta = torch.tanh((lam + 0.5 * torch.log(u / (1 - u))) / tau)
        leaf = theta.detach().requires_grad_()
        with torch.enable_grad():
            values = loss(leaf)
            (grad,) = torch.autograd.grad(values.sum(), leaf)
        scale = (1 - theta.square() + GUARD) / (tau * (1 - mu.square() + GUARD))
        return blr.Estimate(family.nat_type((scale * grad).mean(0)), values.detach().mean(0))


def blr_instance(
    lam0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    rho: float,
    tau: float,
    prior: torch.Tensor,
    seed: int,
    estimator: blr.Estimator | None = None,
    fixed_draws: bool = False,
) -> torch.Tensor:
    """:func:`blr.step` on ``expfam.Bernoulli("pm1")`` with ``blr.GumbelSoftmax(τ, K)`` (or
    ``estimator``) drawing from a generator seeded with ``seed`` (re-seeded at every step with
    ``fixed_draws``: the same u's each step) and the prior λ₀; ``lam0`` may carry copies in
    front. Returns all λ_t."""
    fam = expfam.Bernoulli("pm1")
    nat = expfam.BernoulliNat(lam0)
    prior_nat = expfam.BernoulliNat(prior.expand_as(lam0))
    estimator = blr.GumbelSoftmax(tau, K) if estimator is None else estimator
    gen = torch.Generator().manual_seed(seed)
    out = [lam0]
    for idx in batches:
        if fixed_draws:
            gen.manual_seed(seed)
        loss = minibatch_loss(x, y, idx)
        nat = blr.step(fam, nat, loss, rho, estimator=estimator, prior=prior_nat, generator=gen)
        out.append(nat.lam1)
    return torch.stack(out, -2)


def kernel_instance(
    lam0: torch.Tensor,
    u: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    rho: float,
    tau: float,
    prior: torch.Tensor,
) -> torch.Tensor:
    """B copies ((B, D) on any device) through the fused BayesBiNN kernel: the relaxed draws'
    arguments a = (λ + ε)/τ from the stored u's, ĝ = ∇ of the minibatch mean loss at tanh a by
    autograd, s = :func:`relaxed_scale`, and :func:`bayesbinn_step_` (κ = 1, β = 0), one call per
    step. Returns all λ_t."""
    dev = lam0.device
    x, y, u, prior = x.to(dev), y.to(dev), u.to(dev), prior.to(dev)
    lam, mom = lam0.clone(), torch.zeros_like(lam0)
    out = [lam.clone()]
    for t, (uk, idx) in enumerate(zip(u, batches.to(dev)), start=1):
        arg = (lam + 0.5 * (torch.log(uk) - torch.log1p(-uk))) / tau
        leaf = torch.tanh(arg).requires_grad_()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(minibatch_loss(x, y, idx, 1.0)(leaf).sum(), leaf)
        stat = (relaxed_scale(arg, lam, tau) * grad).mean(0)
        bayesbinn_step_(lam, mom, stat, lr=rho, ess=x.shape[0], prior_lam=prior, step=t)
        out.append(lam.clone())
    return torch.stack(out, -2)


# ---------------------------------------------------------------------------- exact enumeration
def corner_losses(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2^D corners θ ∈ {±1}^D and ℓ̄(θ) = Σ_i log(1 + e^{x_iᵀθ}) − y_i x_iᵀθ at each."""
    corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=D)), dtype=f64)
    f = corners @ x.T
    return corners, (F.softplus(f) - y * f).sum(-1)


def expected_loss(mu: torch.Tensor, corners: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """E_q[ℓ̄] = Σ_θ Π_j ½(1 + μ_jθ_j)ℓ̄(θ) for μ (..., D)."""
    weights = (0.5 * (1 + mu.unsqueeze(-2) * corners)).prod(-1)
    return (weights * values).sum(-1)


def exact_grad(mu: torch.Tensor, corners: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """∂E_q[ℓ̄]/∂μ_j = Σ_θ (θ_j/2)Π_{k≠j}½(1 + μ_kθ_k)ℓ̄(θ), written out (no autograd)."""
    w = 0.5 * (1 + mu * corners)  # (2^D, D)
    cols = []
    for j in range(D):
        others = torch.cat([w[:, :j], w[:, j + 1 :]], 1).prod(-1)
        cols.append((0.5 * corners[:, j] * others * values).sum())
    return torch.stack(cols)


def objective(mu: torch.Tensor, corners, values, prior: torch.Tensor) -> torch.Tensor:
    """E_q[ℓ̄] − λ₀ᵀμ − H(q), H = −Σ_j[p_j log p_j + (1 − p_j)log(1 − p_j)], p = (1 + μ)/2."""
    p = (1 + mu) / 2
    neg_h = (torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).sum(-1)
    return expected_loss(mu, corners, values) - mu @ prior + neg_h


def exact_blr(x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """500 steps of :func:`blr.step` with :class:`blr.Exact` on μ ↦ E_q[ℓ̄] from λ = 0."""
    corners, values = corner_losses(x, y)
    fam = expfam.Bernoulli("pm1")
    nat = expfam.BernoulliNat(torch.zeros(D, dtype=f64))
    prior_nat = expfam.BernoulliNat(prior)
    for _ in range(EXACT_STEPS):
        nat = blr.step(
            fam,
            nat,
            lambda mean: expected_loss(mean.mu1, corners, values),
            EXACT_RHO,
            estimator=blr.Exact(),
            prior=prior_nat,
        )
    return nat.lam1


def lag_exponent(x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor) -> float:
    """The exponent p of max|λ_public − λ_BLR| ∝ ρ^p at the horizon ρt = 0.15, full data and the
    same K draws at every step, fitted with a first-order correction: log gap = c + p log ρ + eρ
    through the three rungs ρ = 0.005, 0.0025, 0.00125."""
    lam0 = torch.tensor(LAM_INIT, dtype=f64)
    u1 = uniforms(1, SEED, (D,))[0]
    logs = []
    for rho in RHO_LADDER:
        steps = round(HORIZON / rho)
        full = torch.arange(N).expand(steps, N)
        draws = u1.expand(steps, *u1.shape)
        pub = public_code(lam0, draws, x, y, full, lr=rho, tau=TAU, prior=prior)
        ref = blr_instance(
            lam0, x, y, full, rho=rho, tau=TAU, prior=prior, seed=SEED, fixed_draws=True
        )
        logs.append(math.log((pub - ref).abs().max().item()))
    rhos = torch.tensor(RHO_LADDER, dtype=f64)
    design = torch.stack([torch.ones_like(rhos), rhos.log(), rhos], 1)
    coef = torch.linalg.solve(design, torch.tensor(logs, dtype=f64))
    return coef[1].item()


def check(device: str = "cpu") -> list[Comparison]:
    """BLR (Gumbel-softmax) vs the formula under the same u's, the fused kernel, the public
    code's variant (exactly, and its O(ρ) distance from the BLR), and the exact-enumeration
    fixed point."""
    x, y = data()
    prior = torch.tensor(PRIOR, dtype=f64)
    batches = minibatches(STEPS)
    kw = dict(rho=RHO, tau=TAU, prior=prior)
    lam0 = torch.tensor(LAM_INIT, dtype=f64)
    u = uniforms(STEPS, SEED, (D,))
    ref = classical(lam0, u, x, y, batches, **kw)
    bl = blr_instance(lam0, x, y, batches, seed=SEED, **kw)
    out = [
        Comparison(
            "BLR (GumbelSoftmax) vs BayesBiNN formula, same u, 30 steps",
            (bl - ref).abs().max().item(),
            1e-12,
        )
    ]
    g = torch.Generator().manual_seed(4)
    starts = torch.randn(64, D, dtype=f64, generator=g)
    u64 = uniforms(STEPS, SEED + 1, (64, D))
    kern = kernel_instance(starts.to(device), u64, x, y, batches, **kw).cpu()
    engine = blr_instance(starts, x, y, batches, seed=SEED + 1, **kw)
    batched = classical(starts, u64, x, y, batches, **kw)
    out.append(
        Comparison(
            f"kernel ({device}, 64 copies) vs engine (batched)",
            (kern - engine).abs().max().item(),
            1e-12,
        )
    )
    out.append(
        Comparison(
            f"kernel ({device}, 64 copies) vs BayesBiNN formula",
            (kern - batched).abs().max().item(),
            1e-12,
        )
    )
    # the public code's variant: exactly the BLR with the stale, guarded Fisher; O(ρ) from the BLR
    pub = public_code(lam0, u, x, y, batches, lr=RHO, tau=TAU, prior=prior)
    stale = blr_instance(lam0, x, y, batches, seed=SEED, estimator=PublicCodeRelaxed(TAU, K), **kw)
    out.append(
        Comparison(
            "BLR (PublicCodeRelaxed: Fisher one step late, 1e-10 guards) vs public code, 30 steps",
            (stale - pub).abs().max().item(),
            1e-12,
        )
    )
    out.append(
        Comparison(
            "public code → BLR as ρ → 0 (ρt = 0.15): |p − 1| for max|Δλ| ∝ ρ^p",
            abs(lag_exponent(x, y, prior) - 1),
            5e-3,
            kind="limit",
        )
    )
    # exact enumeration
    corners, values = corner_losses(x, y)
    lam = exact_blr(x, y, prior)
    mu = torch.tanh(lam)
    residual = (lam - (prior - exact_grad(mu, corners, values))).abs().max().item()
    out.append(
        Comparison("exact: λ − (λ₀ − ∇_μE_q[ℓ̄]) after 500 steps", residual, 1e-12, kind="limit")
    )
    g = torch.Generator().manual_seed(5)
    random_mu = 2 * torch.rand(N_RANDOM, D, dtype=f64, generator=g) - 1
    gap = objective(mu, corners, values, prior) - objective(random_mu, corners, values, prior).min()
    out.append(
        Comparison(
            "exact: objective(μ*) − min over 1000 random μ (≤ 0)",
            max(gap.item(), 0.0),
            0.0,
            kind="bound",
        )
    )
    return out


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "loss, rho, estimator",
        "loss, 1.01 * rho, estimator",
        "BLR step ρ × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "blr.GumbelSoftmax(tau, K)",
        "blr.GumbelSoftmax(1.01 * tau, K)",
        "BLR estimator temperature τ × 1.01",
    ),
    Mutation("blr", "constant", "kernel_instance", "lr=rho", "lr=1.01 * rho", "kernel rate × 1.01"),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "prior=prior_nat,",
        "prior=None,",
        "BLR without the prior λ₀ (entropy term only)",
    ),
    Mutation(
        "blr",
        "term",
        "kernel_instance",
        "prior_lam=prior,",
        "",
        "kernel without the prior λ₀",
    ),
    Mutation(
        "blr",
        "term",
        "PublicCodeRelaxed.__call__",
        "mu = torch.tanh(lam) if self.mu is None else self.mu",
        "mu = torch.tanh(lam)",
        "BLR public-code estimator with the current Fisher (lag dropped)",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "lam = (1 - rho) * lam + rho * prior - rho * n",
        "lam = (1 - rho) * lam + rho * prior - 1.01 * rho * n",
        "formula data term ρ × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "public_code",
        "lam = lam - lr * momentum",
        "lam = lam - 1.01 * lr * momentum",
        "public code lr × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        " + rho * prior",
        "",
        "formula without the prior term ρλ₀",
    ),
    Mutation(
        "classical",
        "term",
        "public_code",
        "mu = torch.tanh(before)",
        "mu = torch.tanh(lam)",
        "public code with the current Fisher (lag dropped)",
    ),
    Mutation(
        "classical",
        "constant",
        "exact_grad",
        "0.5 * corners[:, j]",
        "0.505 * corners[:, j]",
        "exact gradient's ½ × 1.01",
    ),
)
