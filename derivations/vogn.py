r"""Variational OGN (VOGN) is OGN without the delta method: the diagonal-Gaussian BLR with the
gradient and the per-example Gauss–Newton Hessian at one Monte Carlo draw θ ~ q.

**Family.** As OGN (row 8): q = N(m, diag(S)⁻¹), λ = (S⊙m, −½S), S = N(s + δ̃), δ̃ = δ/N,
ℓ̄(θ) = Σ_iℓ_i(θ) + (δ/2)‖θ‖² (the prior λ₀ = (0, −½δ)).

**Rule.** ∇_μE_q[ℓ] = (E_q[∇ℓ] − m⊙E_q[diag ∇²ℓ], ½E_q[diag ∇²ℓ]) (Bonnet, Price; derived in
row 8). VOGN estimates both expectations with one draw θ_t = m_t + ε_t/√(N(s_t + δ̃)) ~ q_t (the
current s_t, before the update) and a minibatch: ĝ = (1/M)Σ_{i∈B}∇ℓ_i(θ_t),
ĥ = (1/M)Σ_{i∈B}h_i(θ_t) with h_i the per-example GGN diagonal (or [∇ℓ_i]², ``"ef"``), i.e.
:class:`blr.BonnetPrice` with one sample. The rest is row 8's algebra:

    s ← (1 − β)s + βĥ(θ_t),    m ← m − α(ĝ(θ_t) + δ̃m)/(s + δ̃).

For a quadratic ℓ̄ (linear regression) E_ε[ĝ(θ_t)] = ∇ℓ̄(m) and the GGN is constant, so the
exact-expectation VOGN (:class:`blr.Exact` on the closed-form E_q[ℓ̄]) coincides with OGN and
its fixed point, (m, S) = (m*, diag S*), is the stationary point of the mean-field ELBO.

**Equality conditions.** The same draws ε_t and minibatches, α = β (:func:`blr.step`, the
λ-space BLR) or α ≠ β (the two-rate (m, S)-form, :func:`blr.gaussian_step` with
``GaussianOptions(lr=α)``: the row's one assumption, as in row 8), m₀ = θ₀, S₀ = N(s₀ + δ̃):
identical to hand-coded VOGN and to :class:`blr.optim.VOGN` (``beta1=0``, ``beta2 = 1 − β``,
``weight_decay = δ̃``, the same seed). The sides are independent: the engine's ĝ and GGN / EF
come from :class:`blr.BonnetPrice` (autograd), the optimizer's from its curvature module, the
kernel's from autograd (:func:`derivations.ogn.autograd_gh`); the hand-written formulas only from
row 8's :func:`derivations.ogn.classical` evaluated at the draws. The draws are the only thing
shared: ε_t is replayed from the estimator's seeded generator.

**Test problem.** (i) Row 8's logistic regression (N = 50, D = 2, δ = 0.1, M = 10),
α = 0.2, β = 0.1, m₀ = (0.5, −0.5), s₀ = 1, 30 steps with stored ε and stored minibatches.
Equalities (tolerance 1e-10): BLR ((m, S)-form) and VOGN for the GGN and the EF Hessian;
:func:`blr.step` and VOGN at α = β = 0.1; blr.optim.VOGN and VOGN for both Hessians;
:func:`blr.kernels.diag_gaussian_step_` on 64 copies (different starts, their own draws) and
the batched engine (8 copies) and VOGN (all 64). (ii) Bayesian linear regression (N = 20, D = 2,
σ² = 0.25, δ = 1), exact per-example GGN, K = 1000 draws, α_t = 0.8·min(1, 10/t), β = 0.5,
60 steps — limits: N(s + δ̃) = diag(S*) to 1e-10 (the GGN does not depend on θ, so s converges
geometrically), ‖m − m*‖ < 1e-2 (m fluctuates around m*: Monte Carlo noise); the
exact-expectation version (α = 0.8, 60 steps) converges to the mean-field optimum
(m*, diag S*) to 1e-10.

**References.** Khan & Rue (2023), Table 1 row 9; Khan et al. (2018), "Fast and scalable
Bayesian deep learning by weight-perturbation in Adam"; Osawa et al. (2019), "Practical deep
learning with Bayesian principles".
"""

from __future__ import annotations

import sympy as sp
import torch

import blr
import expfam
from blr.optim import VOGN
from derivations import ogn
from derivations.mutations import Mutation
from derivations.ogn import (
    DELTA,
    LR_DELTA,
    LR_N,
    LR_SIGMA2,
    M0,
    S0,
    data,
    linreg_data,
    minibatches,
    model_loss,
)
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="vogn",
    number=9,
    algorithm="Variational OGN (VOGN)",
    posterior="Gaussian (diagonal)",
    approximation="stochastic approx. (MC sample), GGN Hessian (or EF)",
    symbolic="~",
    assumptions=(
        "α ≠ β (the row's main comparisons): the mean step's own rate α, m' = m − α(ĝ(θ) + "
        "δ̃m)/(s' + δ̃), is typed into the (m, S)-form, not derived; derive() proves the "
        "reduction for α = β (the λ-space BLR at ρ = β, also checked by blr.step) and that "
        "α ≠ β moves the mean α/β times the BLR step and is no λ-space BLR",
    ),
)

f64 = torch.float64
D = 2
ALPHA, BETA = 0.2, 0.1
STEPS = 30
SEED = 5
LR_K, LR_ALPHA, LR_BETA, LR_STEPS, LR_BURN, EXACT_STEPS = 1000, 0.8, 0.5, 60, 10, 60


def derive() -> list[str]:
    """Row 8's Bonnet/Price, BLR-step and GGN derivations with ĝ, ĥ at one draw θ ~ q, the draw's
    variance, and, for a quadratic ℓ̄, the exact-expectation rule's fixed point = the stationary
    point of the mean-field ELBO."""
    statements = ogn.derive_mean_gradient()
    statements += ogn.derive_step("one draw θ = m + ε/√S ~ q (stochastic approx.)")
    statements += ogn.derive_ggn()
    # the draw θ = m + ε/√(N(s + δ̃)) is linear in ε ~ N(0, 1): mean m, variance (∂θ/∂ε)² = 1/S
    n, s, dt = sp.symbols("N s delta_t", positive=True)
    m, z = sp.symbols("m epsilon", real=True)
    theta = m + z / sp.sqrt(n * (s + dt))
    assert theta.subs(z, 0) == m
    assert sp.simplify(sp.diff(theta, z) ** 2 - 1 / (n * (s + dt))) == 0
    # quadratic ℓ̄ = ½θᵀAθ − bᵀθ on N(m, diag v): closed-form E_q, its ∇_μ and stationarity
    a11, a12, a22, b1, b2 = sp.symbols("a11 a12 a22 b1 b2", real=True)
    amat, bvec = sp.Matrix([[a11, a12], [a12, a22]]), sp.Matrix([b1, b2])
    mu1 = sp.Matrix(sp.symbols("mu1_1 mu1_2", real=True))
    mu2 = sp.Matrix(sp.symbols("mu2_1 mu2_2", positive=True))
    var = [mu2[j] - mu1[j] ** 2 for j in range(2)]
    e_loss = (mu1.T * amat * mu1 / 2 - bvec.T * mu1)[0] + (a11 * var[0] + a22 * var[1]) / 2
    g1 = sp.Matrix([sp.diff(e_loss, v) for v in mu1])
    g2 = sp.Matrix([sp.diff(e_loss, v) for v in mu2])
    diag_a = sp.Matrix([a11, a22])
    # Bonnet/Price: (E[∇ℓ̄] − E[diag ∇²ℓ̄]⊙m, ½E[diag ∇²ℓ̄]) with E[∇ℓ̄] = Am − b
    assert sp.expand(g1 - (amat * mu1 - bvec - diag_a.multiply_elementwise(mu1))) == sp.zeros(2, 1)
    assert sp.expand(g2 - diag_a / 2) == sp.zeros(2, 1)
    # a draw θ = m + σ⊙ε: E_ε[∇ℓ̄(θ)] = Am − b (ε has mean 0), and the GGN A is θ-free
    eps = sp.Matrix(sp.symbols("e1 e2", real=True))
    sd = sp.Matrix(sp.symbols("sd1 sd2", positive=True))
    grad_draw = amat * (mu1 + sd.multiply_elementwise(eps)) - bvec
    mean_draw = grad_draw.subs({eps[0]: 0, eps[1]: 0})  # linear in ε ⇒ E_ε = value at ε = 0
    assert sp.expand(mean_draw - (amat * mu1 - bvec)) == sp.zeros(2, 1)
    assert all(
        sp.diff(grad_draw, e) == amat * sd.multiply_elementwise(sp.diff(eps, e)) for e in eps
    )
    # BLR fixed point λ = −∇_μE_q[ℓ̄] with λ = (S⊙m, −½S): S = diag A and Am = b
    prec = sp.Matrix(sp.symbols("S1 S2", positive=True))
    fp1 = prec.multiply_elementwise(mu1) + g1
    fp2 = -prec / 2 + g2
    sol = sp.solve(list(fp2), list(prec), dict=True)[0]
    assert [sol[prec[0]], sol[prec[1]]] == [a11, a22]
    assert sp.expand(fp1.subs(sol) - (amat * mu1 - bvec)) == sp.zeros(2, 1)
    # mean-field ELBO in (m, v): E_q[ℓ̄] − ½Σ log v_j; stationarity gives the same equations
    v = sp.Matrix(sp.symbols("v1 v2", positive=True))
    elbo = e_loss.subs({mu2[j]: v[j] + mu1[j] ** 2 for j in range(2)}) - sum(
        sp.log(v[j]) / 2 for j in range(2)
    )
    dm = sp.Matrix([sp.diff(elbo, x) for x in mu1])
    assert sp.expand(dm - (amat * mu1 - bvec)) == sp.zeros(2, 1)
    assert [sp.solve(sp.diff(elbo, v[j]), v[j]) for j in range(2)] == [[1 / a11], [1 / a22]]
    return [
        *statements,
        "the draw θ = m + ε/√(N(s + δ̃)), ε ~ N(0, 1): mean m, variance 1/S (θ ~ q)",
        "quadratic ℓ̄ on N(m, diag v): ∇_μE_q[ℓ̄] = (Am − b − diag(A)m, ½diag A) (Bonnet/Price)",
        "a draw θ = m + σ⊙ε: E_ε[∇ℓ̄(θ)] = Am − b, the GGN A does not depend on θ",
        "BLR fixed point λ = −∇_μE_q[ℓ̄]: S = diag A, Am = b",
        "mean-field ELBO stationarity: Am = b, 1/v_j = A_jj — the same point",
    ]


# ---------------------------------------------------------------------------- noise
def draws(steps: int, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The stored ε_t, (steps, *shape): the standard-normal draws a generator seeded with
    ``seed`` produces for one sample of shape ``shape`` per step (as :class:`blr.BonnetPrice`
    with K = 1 and :class:`blr.optim.VOGN` draw them)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn((1, *shape), dtype=f64, generator=g)[0] for _ in range(steps)])


# ---------------------------------------------------------------------------- classical
def classical(
    m0: torch.Tensor,
    s0: torch.Tensor,
    eps: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    hessian: str = "ggn",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-coded VOGN for logistic regression (vectorized over leading copies): Row 8's
    hand-coded OGN with ĝ and ĥ at θ = m + ε_t/√(N(s + δ̃)) instead of m; s ← (1 − β)s + βĥ,
    m ← m − α(ĝ + δ̃m)/(s + δ̃). Returns all (m_t, s_t)."""
    return ogn.classical(
        m0, s0, x, y, batches, alpha=alpha, beta=beta, delta=delta, hessian=hessian, eps=eps
    )


# ---------------------------------------------------------------------------- BLR instance
def blr_instance(
    m0: torch.Tensor,
    s0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float | list[float],
    beta: float,
    delta: float,
    seed: int,
    hessian: str = "ggn",
    link: str = "logistic",
    n_samples: int = 1,
    generic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal-Gaussian BLR, S = N(s + δ̃), prior λ₀ = (0, −½δ), with
    ``blr.BonnetPrice(n_samples, hessian)`` (draws from q_t by a generator seeded with ``seed``)
    on a :class:`blr.ModelLoss` with scale N/M, and :func:`blr.gaussian_step` with rate β and
    mean rate α (a number, or one per step), or (``generic``, α = β) :func:`blr.step`.
    Returns all (m_t, s_t) in VOGN's units."""
    n = x.shape[0]
    dt = delta / n
    fam = expfam.DiagGaussian()
    prior = expfam.DiagNat(torch.zeros_like(m0), torch.full_like(m0, -0.5 * delta))
    nat = fam.from_moments(m0, n * (s0 + dt))
    estimator = blr.BonnetPrice(n_samples, hessian)
    gen = torch.Generator().manual_seed(seed)
    rates = alpha if isinstance(alpha, list) else [alpha] * len(batches)
    ms, ss = [m0], [s0]
    if generic and any(rate != beta for rate in rates):
        raise ValueError("blr.step has one rate: alpha must equal beta")
    for rate, idx in zip(rates, batches):
        loss = model_loss(x, y, idx, n, link)
        if generic:
            nat = blr.step(fam, nat, loss, beta, estimator=estimator, prior=prior, generator=gen)
        else:
            est = estimator(fam, nat, loss, generator=gen)
            grad = expfam.DiagNat(est.grad.lam1 - prior.lam1, est.grad.lam2 - prior.lam2)
            options = blr.GaussianOptions(lr=rate)
            nat = blr.gaussian_step(fam, nat, grad, rho=beta, options=options)
        m, prec = fam.to_moments(nat)
        ms.append(m)
        ss.append(prec / n - dt)
    return torch.stack(ms, -2), torch.stack(ss, -2)


def exact_instance(
    x: torch.Tensor, y: torch.Tensor, *, alpha: float, beta: float, delta: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact-expectation VOGN on linear regression: :class:`blr.Exact` on
    E_q[ℓ̄] = Σ_i[(y_i − x_iᵀμ₁)² + Σ_j x_ij²(μ₂ − μ₁²)_j]/(2σ²) + (δ/2)Σ_jμ₂_j and
    :func:`blr.gaussian_step`; returns the final (m, S)."""
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(torch.zeros(D, dtype=f64), torch.ones(D, dtype=f64))

    def expected_loss(mean: expfam.DiagMean) -> torch.Tensor:
        var = mean.mu2 - mean.mu1.square()
        fit = (y - x @ mean.mu1).square().sum() + (x.square() @ var).sum()
        return fit / (2 * LR_SIGMA2) + 0.5 * delta * mean.mu2.sum()

    for _ in range(steps):
        est = blr.Exact()(fam, nat, expected_loss)
        nat = blr.gaussian_step(fam, nat, est.grad, rho=beta, options=blr.GaussianOptions(lr=alpha))
    return fam.to_moments(nat)


# ---------------------------------------------------------------------------- kernel
def kernel_instance(
    m0: torch.Tensor,
    s0: torch.Tensor,
    eps: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B copies ((B, D) on any device) through :func:`blr.kernels.diag_gaussian_step_`
    (ρ = β, lr = α, δ = δ̃), one call per step: Row 8's batched kernel driver evaluated at the
    draws θ = m + ε/√(N(s + δ̃)) instead of the means."""
    return ogn.kernel_instance(m0, s0, x, y, batches, alpha=alpha, beta=beta, delta=delta, eps=eps)


# ---------------------------------------------------------------------------- blr.optim.VOGN
def optimizer_instance(
    m0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    s0: float,
    seed: int,
    hessian: str = "ggn",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`blr.optim.VOGN` on a bias-free linear model (lr = α, β₁ = 0, β₂ = 1 − β,
    weight_decay = δ̃, hess_init = s₀, ``seed``): Row 8's driver with the VOGN optimizer;
    returns (m_t, s_t)."""
    return ogn.optimizer_instance(
        m0,
        x,
        y,
        batches,
        alpha=alpha,
        beta=beta,
        delta=delta,
        s0=s0,
        hessian=hessian,
        optimizer=VOGN,
        seed=seed,
    )


def _dev(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((u.cpu() - v.cpu()).abs().max().item() for u, v in zip(a, b))


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs VOGN under the same draws (GGN, EF), blr.optim.VOGN, the batched kernel, and the
    Bayesian-linear-regression limits (MC and exact expectations)."""
    x, y = data()
    batches = minibatches(STEPS)
    m0, s0 = torch.tensor(M0, dtype=f64), torch.full((D,), S0, dtype=f64)
    kw = dict(alpha=ALPHA, beta=BETA, delta=DELTA)
    eps = draws(STEPS, SEED, (D,))
    out: list[Comparison] = []
    for hessian, est_name in (("ggn", "ggn"), ("ef", "per_example")):
        vogn = classical(m0, s0, eps, x, y, batches, hessian=hessian, **kw)
        bl = blr_instance(m0, s0, x, y, batches, seed=SEED, hessian=est_name, **kw)
        out.append(
            Comparison(
                f"BLR (m, S)-form vs VOGN ({hessian}), same ε, 30 steps", _dev(bl, vogn), 1e-10
            )
        )
        opt = optimizer_instance(m0, x, y, batches, s0=S0, seed=SEED, hessian=hessian, **kw)
        out.append(
            Comparison(f"blr.optim.VOGN vs VOGN ({hessian}), same ε", _dev(opt, vogn), 1e-10)
        )
    same = dict(alpha=BETA, beta=BETA, delta=DELTA)
    vogn = classical(m0, s0, eps, x, y, batches, **same)
    gen = blr_instance(m0, s0, x, y, batches, seed=SEED, generic=True, **same)
    out.append(Comparison("blr.step (α = β) vs VOGN (ggn), same ε", _dev(gen, vogn), 1e-10))
    # batched kernel: 64 copies, the first 8 with the engine's (batched) draws
    g = torch.Generator().manual_seed(2)
    starts = torch.randn(64, D, dtype=f64, generator=g)
    scales = 0.5 + torch.rand(64, D, dtype=f64, generator=g)
    eps64 = torch.cat([draws(STEPS, SEED + 1, (8, D)), draws(STEPS, SEED + 2, (56, D))], 1)
    kern = kernel_instance(starts.to(device), scales.to(device), eps64, x, y, batches, **kw)
    engine = blr_instance(starts[:8], scales[:8], x, y, batches, seed=SEED + 1, **kw)
    batched = classical(starts, scales, eps64, x, y, batches, **kw)
    first = tuple(k[:8] for k in kern)
    out.append(
        Comparison(f"kernel ({device}, 64 copies) vs engine (8 copies)", _dev(first, engine), 1e-10)
    )
    out.append(Comparison(f"kernel ({device}, 64 copies) vs VOGN", _dev(kern, batched), 1e-10))
    # (ii) Bayesian linear regression, exact per-example GGN
    xl, yl = linreg_data()
    prec = xl.T @ xl / LR_SIGMA2 + LR_DELTA * torch.eye(D, dtype=f64)
    m_star = torch.linalg.solve(prec, xl.T @ yl / LR_SIGMA2)
    full = torch.arange(LR_N).expand(LR_STEPS, LR_N)
    rates = [LR_ALPHA * min(1.0, LR_BURN / t) for t in range(1, LR_STEPS + 1)]
    m_mc, s_mc = blr_instance(
        torch.zeros(D, dtype=f64),
        torch.ones(D, dtype=f64),
        xl,
        yl,
        full,
        alpha=rates,
        beta=LR_BETA,
        delta=LR_DELTA,
        seed=SEED,
        link="gaussian",
        n_samples=LR_K,
    )
    rel = (LR_N * (s_mc[-1] + LR_DELTA / LR_N) / torch.diagonal(prec) - 1).abs().max().item()
    out.append(
        Comparison(
            "linreg (K = 1000): N(s + δ̃) vs the OGN value diag(S*) (relative), 60 steps",
            rel,
            1e-10,
            kind="limit",
        )
    )
    out.append(
        Comparison(
            "linreg (K = 1000, decaying α): ‖m − m*‖ after 60 steps",
            torch.linalg.vector_norm(m_mc[-1] - m_star).item(),
            1e-2,
            kind="limit",
        )
    )
    m_ex, s_ex = exact_instance(
        xl, yl, alpha=LR_ALPHA, beta=LR_BETA, delta=LR_DELTA, steps=EXACT_STEPS
    )
    out.append(
        Comparison(
            "linreg exact E_q: m vs m*, S vs diag S* (relative), 60 steps",
            max(
                (m_ex - m_star).abs().max().item(),
                (s_ex / torch.diagonal(prec) - 1).abs().max().item(),
            ),
            1e-10,
            kind="limit",
        )
    )
    return out


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "GaussianOptions(lr=rate)",
        "GaussianOptions(lr=1.01 * rate)",
        "engine mean rate α × 1.01 (blr.gaussian_step)",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "loss, beta, estimator",
        "loss, 1.01 * beta, estimator",
        "blr.step rate ρ × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "kernel_instance",
        "beta=beta, delta=delta, eps=eps",
        "beta=1.01 * beta, delta=delta, eps=eps",
        "kernel precision rate β × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "optimizer_instance",
        "beta=beta,",
        "beta=1.01 * beta,",
        "blr.optim.VOGN β₂ = 1 − 1.01β",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "alpha=alpha, beta=beta",
        "alpha=1.01 * alpha, beta=beta",
        "VOGN mean rate α × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "eps[t] / torch.sqrt(n * (s + dt))",
        "eps[t] / torch.sqrt(n * s)",
        "VOGN's draw without δ̃ in its precision",
        module="derivations.ogn",
    ),
    Mutation(
        "blr",
        "term",
        "kernel_instance",
        "eps[t].to(dev) / torch.sqrt(n * (s + dt))",
        "eps[t].to(dev) / torch.sqrt(s + dt)",
        "kernel's draw without the N in its precision",
        module="derivations.ogn",
    ),
    Mutation(
        "blr",
        "term",
        "blr_instance",
        "est.grad.lam2 - prior.lam2",
        "est.grad.lam2",
        "engine without the prior precision (λ₀ dropped from λ₂)",
    ),
    Mutation(
        "blr",
        "term",
        "exact_instance",
        " + 0.5 * delta * mean.mu2.sum()",
        "",
        "exact E_q[ℓ̄] without the prior term (δ/2)Σμ₂",
    ),
)
