r"""The straight-through estimator (STE) for binary weights is the limit N → ∞ of the BLR on a
Bernoulli distribution over {−1, +1} with the delta method at the mode and minibatch gradients.

**Family.** q(θ) = Π_j Bernoulli on θ_j ∈ {−1, +1} (:class:`expfam.Bernoulli` ``("pm1")``):
T(θ) = θ, λ_j = ½log(p_j/(1 − p_j)), A(λ) = Σ_j log(2cosh λ_j), μ = tanh λ, h = 1, so
∇_μ(−H) = atanh μ = λ and the complete rule is λ ← λ − ρ(∇_μE_q[ℓ̄] + λ) = (1 − ρ)λ − ρ∇_μE_q[ℓ̄]
(uniform prior; a Bernoulli prior λ₀ adds ρλ₀).

**Rule.** ℓ̄ = Nℓ with ℓ the mean loss over the training set (N examples) and ℓ evaluated at
real arguments θ ∈ [−1, 1]^D (as STE evaluates a network). Three steps, each proved in
:func:`derive`:

1. *Exact gradient.* E_q[ℓ̄] = Σ_{θ∈{±1}^D} Π_j ½(1 + μ_jθ_j)ℓ̄(θ) is multilinear in μ, so
   ∂E_q[ℓ̄]/∂μ_j = E_{q_{−j}}[½(ℓ̄(θ_j = 1) − ℓ̄(θ_j = −1))] = E_{p_j}[∂_jℓ̄(θ)] with
   p_j = q_{−j} ⊗ U(−1, 1) (θ_j uniform on [−1, 1], the others from q; fundamental theorem of
   calculus): the gradient *is* an expectation of ∇ℓ̄, as for a Gaussian (Bonnet).
2. *Delta method at the mode* (the row's approximation): every E_{p_j}[∂_jℓ̄] is replaced by
   ∂_jℓ̄ at the one point θ̂ = sign λ, the most probable binary weight vector
   (P(θ_j = +1) − P(θ_j = −1) = tanh λ_j; for coordinate j that point is an end of the
   uniform's support, not the centre (μ_{−j}, 0) of p_j: the approximation is the choice of one
   point for all j). So ∇_μE_q[ℓ̄] ≈ ∇ℓ̄(sign λ): no Jacobian of sign is
   involved (the direction is ∇ℓ̄ itself, not the derivative of ℓ̄(sign λ(μ)), which is 0).
   At θ̂ = μ = tanh λ instead (delta at the mean) this is BCVI-D (below).
3. *Stochastic approximation*: ∇ℓ̄ = N∇ℓ ≈ Nĝ with ĝ the mean gradient over a minibatch B
   (unbiased over uniformly drawn B).

With ρ = α/N the complete rule (entropy included) is exactly

    λ ← (1 − α/N)λ − αĝ(sign λ),

and as N → ∞ with α fixed it tends to λ ← λ − αĝ(sign λ): STE with the latent real weights
w_r ≡ λ (w_b = sign w_r, w_r ← w_r − α∇_{w_b}ℓ(w_b)). The rate is derived: while both runs keep
the same signs, λ_t − w_t = −(α/N)Σ_{s<t}λ_s exactly, so N(λ_t − w_t) → −αΣ_{s<t}w_s and the gap
is O(1/N). The BLR instance is :func:`blr.step` itself (entropy included) with the estimator
:class:`DeltaAtMode` (∇ℓ̄ at sign λ by autograd); nothing is dropped by hand.

BCVI-D (Meng, Bachmann & Khan 2020; the public BayesBiNN code with ``num_samples ≤ 0``): the
delta method at θ̂ = μ = tanh λ is E_q[ℓ̄] ≈ ℓ̄(μ) (exact when ℓ̄ is affine in each θ_j), a
closed-form expected loss for :class:`blr.Exact`, and the complete rule is
λ ← (1 − ρ)λ − ρN∇ℓ(tanh λ) exactly, for any ρ and N.

**Where this differs from the paper.** Khan & Rue (2023) list "delta method, stochastic
approx." for this row; Meng et al. (2020, Table 1) relate BayesBiNN to STE step by step, the
relaxed draw tanh((λ + ε)/τ) becoming STE's sign as τ → 0. The derivation here is this module's
own. It does not take the τ → 0 limit of the relaxed estimator: with the noise set to 0 its
scale s = (1 − tanh²(λ/τ))/(τ(1 − tanh²λ)) tends to 0 (proved in :func:`derive`), so that limit
gives no step at all, and setting s = 1 instead (a straight-through Jacobian) would be an
assumption. It uses the exact identity of step 1, under which the delta method at the mode gives
STE's direction directly, and it keeps the entropy's shrinkage, which vanishes only as N → ∞
(measured).

**Equality conditions.** The complete rule with ρ = α/N equals its closed form
(1 − α/N)λ − αĝ(sign λ) for every N (same minibatches, λ₀ = w₀). It equals STE only in the limit
N → ∞ with α fixed, at rate 1/N, provided no weight of either run is exactly 0 (sign 0 is not a
binary value) and the runs keep the same signs (true while the gap (α/N)·max_t|Σ_{s<t}λ_s| is
below min_t|w_t|; BinaryConnect's clipping of w_r to [−1, 1] is not modelled and is inactive
here, |w| < 1). BCVI-D equals its closed form for any ρ, N.

**Test problem.** ℓ(θ) = (1/6)Σ_i ½(a_iᵀθ − b_i)² on θ ∈ {±1}⁴ (A 6×4 and b from seed 0: a loss
that is not affine in θ_j, so the exact gradient has a self-term −(AᵀA)_jjμ_j/6 that neither
delta point keeps), α = 0.06, 30 steps from w = (0.3, −0.2, 0.1, −0.4), on which STE flips signs
41 times (min |w| = 1.7e-3; a bound comparison requires at least one flip); full data and
minibatches of M = 3 rows (a stored index sequence). Compared:
the complete rule at N = 10 with its closed form (equality, full data and minibatches); at
N = 10⁶ with STE (limit: |Δ| ≤ 1e-6, and N·Δ with the derived first-order term −αΣ_{s<t}w_s to
1e-5); the exponent p of |Δ| ∝ N^{−p}, least squares over N = 10⁴, 10⁵, 10⁶ (limit:
|p − 1| ≤ 1e-3); the
exact ∇_μE_q[ℓ] by enumeration of the 16 corners (:class:`blr.Exact`, autograd) with
(1/6)[AᵀAμ − Aᵀb − diag(AᵀA)μ] at three λ (equality); BCVI-D with ρ = 0.01, N = 10, 30 steps,
with its closed form (equality).

**References.** Khan & Rue (2023), Table 1 row 7; Bengio, Léonard & Courville (2013);
Courbariaux, Bengio & David, "BinaryConnect" (2015); Meng, Bachmann & Khan, "Training binary
neural networks using the Bayesian learning rule" (ICML 2020) for BayesBiNN and BCVI-D.
"""

from __future__ import annotations

import itertools

import sympy as sp
import torch

import blr
import expfam
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="ste",
    number=7,
    algorithm="STE",
    posterior="Bernoulli (±1)",
    approximation="delta method (at the mode), stochastic approx.",
    symbolic="✓",
)

f64 = torch.float64
ROWS_A = 6
DIM = 4
ALPHA = 0.06
STEPS = 30
W0 = (0.3, -0.2, 0.1, -0.4)
BATCH = 3
N_EQ = 10.0
N_LIMIT = 1e6
LADDER = (1e4, 1e5, 1e6)
N_BCVI = 10.0
RHO_BCVI = 0.01


def derive() -> list[str]:
    """Bernoulli(±1) facts; ∇_μE_q[ℓ̄] as an expectation of ∇ℓ̄; the mode; the minibatch mean;
    the complete rule with ρ = α/N and its N → ∞ limit with the exact first-order gap; BCVI-D;
    and the noise-free relaxed scale tending to 0."""
    lam, mu = sp.symbols("lambda mu", real=True)
    x = sp.Symbol("x", positive=True)

    def is_zero(expr: sp.Expr) -> bool:
        """A hyperbolic expression in λ is 0: with x = e^λ it is a rational function of x."""
        return sp.cancel(sp.together(expr.rewrite(sp.exp).subs(lam, sp.log(x)))) == 0

    # the family
    log_partition = sp.log(2 * sp.cosh(lam))
    mean = sp.diff(log_partition, lam)
    assert is_zero(mean - sp.tanh(lam))
    assert is_zero(sp.diff(mean, lam) - (1 - sp.tanh(lam) ** 2))
    # −H(μ) = Σ_θ P(θ) log P(θ), P(±1) = (1 ± μ)/2; d/dμ = atanh μ, and atanh(tanh λ) = λ
    p_plus, p_minus = (1 + mu) / 2, (1 - mu) / 2
    neg_entropy = p_plus * (sp.log(1 + mu) - sp.log(2)) + p_minus * (sp.log(1 - mu) - sp.log(2))
    atanh = (sp.log(1 + mu) - sp.log(1 - mu)) / 2
    assert sp.cancel(sp.expand(sp.diff(neg_entropy, mu) - atanh)) == 0
    assert is_zero(((1 + mu) / (1 - mu)).subs(mu, sp.tanh(lam)) - sp.exp(2 * lam))  # = e^{2λ}
    # the mode: P(+1) − P(−1) = μ = tanh λ, whose sign is sign λ
    assert sp.simplify(p_plus - p_minus - mu) == 0

    # 1. ∂E_q[ℓ̄]/∂μ_j = E_{q_{−j}}[½(ℓ̄(θ_j=1) − ℓ̄(θ_j=−1))] = E_{q_{−j}} E_{θ_j~U(−1,1)}[∂_jℓ̄]
    ell = sp.Function("ell")
    t = sp.Symbol("t", real=True)
    for dim in (2, 3):
        mus = sp.symbols(f"mu1:{dim + 1}", real=True)
        corners = list(itertools.product((-1, 1), repeat=dim))

        def weight(c, skip=None, mus=mus):
            return sp.Mul(*[(1 + m * s) / 2 for k, (m, s) in enumerate(zip(mus, c)) if k != skip])

        expect = sum(weight(c) * ell(*c) for c in corners)
        for j in range(dim):
            rest = [c for c in corners if c[j] == 1]
            uniform = sum(
                weight(c, skip=j)
                * sp.integrate(sp.diff(ell(*c[:j], t, *c[j + 1 :]), t), (t, -1, 1))
                / 2
                for c in rest
            )
            assert sp.expand(sp.diff(expect, mus[j]) - uniform) == 0
    # the quadratic of the test problem (D = 2, symbolic G = AᵀA, c = Aᵀb): the exact gradient
    # is Gμ − c − diag(G)μ; the delta method at θ̂ gives Gθ̂ − c
    g11, g12, g22, c1, c2, m1, m2 = sp.symbols("G11 G12 G22 c1 c2 mu_1 mu_2", real=True)
    gmat, cvec = sp.Matrix([[g11, g12], [g12, g22]]), sp.Matrix([c1, c2])

    def quad(th):
        v = sp.Matrix(th)
        return (v.T * gmat * v / 2 - cvec.T * v)[0]

    exq = sum(
        (1 + m1 * s1) / 2 * (1 + m2 * s2) / 2 * quad((s1, s2))
        for s1, s2 in itertools.product((-1, 1), repeat=2)
    )
    exact = sp.Matrix([sp.diff(exq, m1), sp.diff(exq, m2)])
    want = gmat * sp.Matrix([m1, m2]) - cvec - sp.Matrix([g11 * m1, g22 * m2])
    assert sp.expand(exact - want) == sp.zeros(2, 1)
    # affine in each θ_j (ℓ̄ = k0 + k1θ1 + k2θ2 + k12θ1θ2): E_q[ℓ̄] = ℓ̄(μ) exactly
    k0, k1, k2, k12 = sp.symbols("k0 k1 k2 k12", real=True)

    def affine(a1, a2):
        return k0 + k1 * a1 + k2 * a2 + k12 * a1 * a2

    exa = sum(
        (1 + m1 * s1) / 2 * (1 + m2 * s2) / 2 * affine(s1, s2)
        for s1, s2 in itertools.product((-1, 1), repeat=2)
    )
    assert sp.expand(exa - affine(m1, m2)) == 0

    # 3. minibatch mean (M = 3 of 6) is unbiased: the average over all 20 subsets is the mean
    gs = sp.symbols("g1:7", real=True)
    subsets = list(itertools.combinations(range(6), 3))
    avg = sum(sum(gs[i] for i in s) / 3 for s in subsets) / len(subsets)
    assert sp.expand(avg - sum(gs) / 6) == 0

    # the complete rule with ∇_μE_q[ℓ̄] ≈ Nĝ and ρ = α/N, and its N → ∞ limit (STE)
    alpha, n, g = sp.symbols("alpha N ghat", positive=True)
    rule = lam - (alpha / n) * (n * g + lam)
    assert sp.expand(rule - ((1 - alpha / n) * lam - alpha * g)) == 0
    assert sp.limit(rule, n, sp.oo) == lam - alpha * g
    # the gap, same signs along both runs (same ĝ_t): λ_t − w_t = −(α/N)Σ_{s<t}λ_s exactly, and
    # N(λ_t − w_t) → −αΣ_{s<t}w_s (three steps, symbolic ĝ_t)
    w0 = sp.Symbol("w0", real=True)
    ghat = sp.symbols("ghat0:3", real=True)
    lams, ws = [w0], [w0]
    for k in range(3):
        lams.append((1 - alpha / n) * lams[-1] - alpha * ghat[k])
        ws.append(ws[-1] - alpha * ghat[k])
    for k in range(1, 4):
        assert sp.expand(lams[k] - ws[k] + alpha / n * sum(lams[:k])) == 0
        assert sp.expand(sp.limit(n * (lams[k] - ws[k]), n, sp.oo) + alpha * sum(ws[:k])) == 0

    # BCVI-D: θ̂ = μ ⇒ ∇_μ ℓ̄(μ) = Nℓ'(μ) and λ' = (1 − ρ)λ − ρNℓ'(tanh λ)
    rho = sp.Symbol("rho", positive=True)
    ell1 = sp.Function("ell")
    grad_mean = sp.diff(n * ell1(mu), mu).subs(mu, sp.tanh(lam))
    bcvi = lam - rho * (grad_mean + lam)
    want = (1 - rho) * lam - rho * n * sp.Subs(sp.Derivative(ell1(mu), mu), mu, sp.tanh(lam))
    assert sp.expand(bcvi.doit() - want.doit()) == 0

    # not the τ → 0 limit of the relaxed estimator: with ε = 0 its scale
    # s = (1 − tanh²(λ/τ))/(τ(1 − tanh²λ)) → 0 as τ → 0⁺ (λ = 1/2 here)
    tau = sp.Symbol("tau", positive=True)
    half = sp.Rational(1, 2)
    scale = (1 - sp.tanh(half / tau) ** 2) / (tau * (1 - sp.tanh(half) ** 2))
    assert sp.limit(scale.rewrite(sp.exp), tau, 0, "+") == 0
    return [
        "Bernoulli(±1): A = log(2cosh λ), μ = A' = tanh λ, F = A'' = 1 − tanh²λ",
        "−H(μ) = Σ P log P with P(±1) = (1 ± μ)/2: ∇_μ(−H) = atanh μ = λ; P(+1) − P(−1) = tanh λ, "
        "so the mode is sign λ",
        "D = 2, 3, any ℓ̄: ∂E_q[ℓ̄]/∂μ_j = E_{q_{−j}}[½∫_{−1}^{1}∂_jℓ̄ dθ_j] = "
        "E_{q_{−j} ⊗ U(−1,1)}[∂_jℓ̄] (the exact gradient is an expectation of ∇ℓ̄)",
        "applied, the delta method at the mode θ̂ = sign λ (the row's approximation): "
        "∇_μE_q[ℓ̄] ≈ ∇ℓ̄(sign λ), no Jacobian of sign involved",
        "ℓ̄ = ½θᵀGθ − cᵀθ, D = 2: ∇_μE_q[ℓ̄] = Gμ − c − diag(G)μ exactly",
        "ℓ̄ affine in each θ_j, D = 2: E_q[ℓ̄] = ℓ̄(μ) exactly (delta at the mean exact)",
        "minibatch of 3 of 6: the mean over all 20 subsets of the minibatch mean is the mean",
        "complete rule, ρ = α/N, ∇_μE_q[ℓ̄] ≈ Nĝ(sign λ): λ' = (1 − α/N)λ − αĝ → λ − αĝ (STE) "
        "as N → ∞",
        "same signs along both runs (3 steps): λ_t − w_t = −(α/N)Σ_{s<t}λ_s exactly and "
        "N(λ_t − w_t) → −αΣ_{s<t}w_s: the gap is O(1/N)",
        "BCVI-D (delta at the mean): λ' = (1 − ρ)λ − ρNℓ'(tanh λ)",
        "relaxed draw without noise: s = (1 − tanh²(λ/τ))/(τ(1 − tanh²λ)) → 0 as τ → 0⁺ "
        "(so STE is not that limit of the relaxed estimator)",
    ]


# ---------------------------------------------------------------------------- problem
def problem(dtype: torch.dtype = f64) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(6, 4)`` and b ``(6,)`` from seed 0."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(ROWS_A, DIM, dtype=dtype, generator=gen)
    b = torch.randn(ROWS_A, dtype=dtype, generator=gen)
    return a, b


def index_sequence(steps: int, seed: int) -> torch.Tensor:
    """Stored minibatches of M = 3 of the 6 rows, ``(steps, M)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(steps, ROWS_A, generator=gen).argsort(-1)[:, :BATCH]


# ---------------------------------------------------------------------------- classical
def classical(
    w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor | None
) -> torch.Tensor:
    """Hand-coded STE: w_b = sign(w_r), w_r ← w_r − α(1/M)Σ_{i∈B} a_i(a_iᵀw_b − b_i) (all rows
    when ``idx`` is None); returns all latent weights."""
    w, out = w0, [w0]
    for t in range(STEPS):
        rows = torch.arange(ROWS_A) if idx is None else idx[t]
        ab, bb = a[rows], b[rows]
        w_b = torch.sign(w)
        w = w - ALPHA * ab.T @ (ab @ w_b - bb) / rows.shape[0]
        out.append(w)
    return torch.stack(out)


def shrink_closed_form(
    lam0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor | None, n: float
) -> torch.Tensor:
    """The complete rule with ρ = α/N written out: λ ← (1 − α/N)λ − α(1/M)Σ_{i∈B}
    a_i(a_iᵀsign λ − b_i); returns all λ."""
    lam, out = lam0, [lam0]
    for t in range(STEPS):
        rows = torch.arange(ROWS_A) if idx is None else idx[t]
        ab, bb = a[rows], b[rows]
        lam = (1 - ALPHA / n) * lam - ALPHA * ab.T @ (ab @ torch.sign(lam) - bb) / rows.shape[0]
        out.append(lam)
    return torch.stack(out)


def first_order_gap(w: torch.Tensor) -> torch.Tensor:
    """The derived limit of N(λ_t − w_t): −αΣ_{s<t}w_s along STE's run ``w`` (T+1, D)."""
    return -ALPHA * torch.cat([torch.zeros_like(w[:1]), w[:-1].cumsum(0)])


def exact_grad_closed_form(mu: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """∇_μE_q[ℓ] = E_{q_{−j}⊗U(−1,1)}[∂_jℓ] for ℓ = (1/6)Σ_i ½(a_iᵀθ − b_i)²:
    (1/6)[Gμ − Aᵀb − diag(G)μ], G = AᵀA."""
    gram = a.T @ a
    return (gram @ mu - a.T @ b - torch.diagonal(gram) * mu) / ROWS_A


def bcvi_closed_form(lam0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hand-coded BCVI-D: λ ← (1 − ρ)λ − ρN(1/6)Aᵀ(A tanh λ − b); returns all λ."""
    lam, out = lam0, [lam0]
    for _ in range(STEPS):
        mu = torch.tanh(lam)
        lam = (1 - RHO_BCVI) * lam - RHO_BCVI * N_BCVI * a.T @ (a @ mu - b) / ROWS_A
        out.append(lam)
    return torch.stack(out)


# ---------------------------------------------------------------------------- BLR instance
def loss_fn(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor | None, n: float):
    """θ ↦ ℓ̄(θ) ≈ N·(1/M)Σ_{i∈B} ½(a_iᵀθ − b_i)² (all rows when ``rows`` is None),
    vectorized over leading dimensions."""
    if rows is not None:
        a, b = a[rows], b[rows]
    return lambda theta: n * 0.5 * (theta @ a.T - b).square().mean(-1)


class DeltaAtMode(blr.Estimator):
    r"""∇_μE_q[ℓ̄] ≈ ∇_θℓ̄(θ)|_{θ = sign λ}: the delta method at the mode of a ±1 Bernoulli,
    applied to ∇_μE_q[ℓ̄] = E_{q_{−j}⊗U(−1,1)}[∂_jℓ̄]. ∇ℓ̄ by autograd; the loss takes θ
    ``(K, D)`` (D binary weights held as a batch of D Bernoullis) and returns ``(K,)``."""

    def __call__(self, family, nat, loss, *, generator=None) -> blr.Estimate:
        if not (isinstance(family, expfam.Bernoulli) and family.support == "pm1"):
            raise TypeError(f"DeltaAtMode needs a Bernoulli on {{−1, +1}}, got {family!r}")
        theta = torch.sign(nat.lam1).detach().unsqueeze(0).requires_grad_()
        with torch.enable_grad():
            value = loss(theta)
            (grad,) = torch.autograd.grad(value.sum(), theta)
        return blr.Estimate(family.nat_type(grad[0]), value.detach()[0])


def blr_ste(
    w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor | None, n: float
) -> torch.Tensor:
    """The complete rule :func:`blr.step` (entropy included) on Bernoulli(±1) with
    :class:`DeltaAtMode` on ℓ̄ = Nℓ (minibatch B_t when ``idx``), ρ = α/N; returns all λ."""
    fam = expfam.Bernoulli("pm1")
    nat = expfam.BernoulliNat(w0.clone())
    out = [nat.lam1]
    for t in range(STEPS):
        loss = loss_fn(a, b, None if idx is None else idx[t], n)
        nat = blr.step(fam, nat, loss, ALPHA / n, estimator=DeltaAtMode())
        out.append(nat.lam1)
    return torch.stack(out)


def expected_loss(a: torch.Tensor, b: torch.Tensor):
    """μ ↦ E_q[ℓ] = Σ_{θ∈{±1}^D} Π_j ½(1 + μ_jθ_j)ℓ(θ) by enumeration of the 2^D corners."""
    corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=DIM)), dtype=a.dtype)
    values = loss_fn(a, b, None, 1.0)(corners)

    def expectation(mean: expfam.BernoulliMean) -> torch.Tensor:
        weights = (0.5 * (1 + mean.mu1 * corners)).prod(-1)
        return (weights * values).sum()

    return expectation


def exact_grad_engine(lam: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """∇_μE_q[ℓ] through :class:`blr.Exact` (autograd of the enumerated expectation)."""
    fam = expfam.Bernoulli("pm1")
    return blr.Exact()(fam, expfam.BernoulliNat(lam), expected_loss(a, b)).grad.lam1


def blr_bcvi(lam0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """BCVI-D through the engine: :func:`blr.step` with :class:`blr.Exact` on the delta-at-the-mean
    expected loss μ ↦ Nℓ(μ), ρ = 0.01, uniform prior."""
    fam = expfam.Bernoulli("pm1")
    nat = expfam.BernoulliNat(lam0.clone())
    loss = loss_fn(a, b, None, N_BCVI)

    def delta_at_mean(mean: expfam.BernoulliMean) -> torch.Tensor:
        return loss(mean.mu1)  # E_q[ℓ̄] ≈ ℓ̄(μ)

    out = [nat.lam1]
    for _ in range(STEPS):
        nat = blr.step(fam, nat, delta_at_mean, RHO_BCVI, estimator=blr.Exact())
        out.append(nat.lam1)
    return torch.stack(out)


# ---------------------------------------------------------------------------- check
def check(device: str = "cpu") -> list[Comparison]:
    """The complete rule against its closed form and, as N → ∞, against STE (with the rate);
    the exact gradient identity; BCVI-D against its closed form. (Not a Gaussian row: no batched
    kernel; the device is unused.)"""
    a, b = problem()
    idx = index_sequence(STEPS, seed=1)
    w0 = torch.tensor(W0, dtype=f64)
    ste_full, ste_mb = classical(w0, a, b, None), classical(w0, a, b, idx)
    flips = int((torch.sign(ste_full[1:]) != torch.sign(ste_full[:-1])).sum())
    out = [
        Comparison(
            "complete rule (blr.step, ρ = α/N, N = 10) vs (1 − α/N)λ − αĝ(sign λ), full data",
            (blr_ste(w0, a, b, None, N_EQ) - shrink_closed_form(w0, a, b, None, N_EQ))
            .abs()
            .max()
            .item(),
            1e-12,
        ),
        Comparison(
            "complete rule (N = 10) vs (1 − α/N)λ − αĝ(sign λ), minibatches M = 3",
            (blr_ste(w0, a, b, idx, N_EQ) - shrink_closed_form(w0, a, b, idx, N_EQ))
            .abs()
            .max()
            .item(),
            1e-12,
        ),
    ]
    gaps = []
    for n in LADDER:
        run = blr_ste(w0, a, b, None, n)
        gaps.append((run - ste_full).abs().max().item())
        if n == N_LIMIT:
            first = (n * (run - ste_full) - first_order_gap(ste_full)).abs().max().item()
    log_n = torch.tensor(LADDER, dtype=f64).log()
    log_gap = torch.tensor(gaps, dtype=f64).log()
    centred = log_n - log_n.mean()
    slope = -((centred * log_gap).sum() / centred.square().sum()).item()
    out += [
        Comparison(
            "complete rule at N = 10⁶ vs STE, minibatches M = 3 (N → ∞)",
            (blr_ste(w0, a, b, idx, N_LIMIT) - ste_mb).abs().max().item(),
            1e-6,
            kind="limit",
        ),
        Comparison(
            "N·(λ_t − w_t) at N = 10⁶ vs the derived first-order term −αΣ_{s<t}w_s",
            first,
            1e-5,
            kind="limit",
        ),
        Comparison(
            "rate: |p − 1| for max|λ − w| ∝ N^−p, least squares over N = 10⁴, 10⁵, 10⁶",
            abs(slope - 1),
            1e-3,
            kind="limit",
        ),
        Comparison(
            "STE's run flips signs (needs ≥ 1: 1 − flips, clipped at 0)",
            float(max(0, 1 - flips)),
            0.0,
            kind="bound",
        ),
    ]
    gen = torch.Generator().manual_seed(2)
    lams = torch.randn(3, DIM, dtype=f64, generator=gen)
    out.append(
        Comparison(
            "exact ∇_μE_q[ℓ] (16 corners, blr.Exact) vs E_{q−j⊗U(−1,1)}[∂_jℓ], 3 λ",
            max(
                (exact_grad_engine(lam, a, b) - exact_grad_closed_form(torch.tanh(lam), a, b))
                .abs()
                .max()
                .item()
                for lam in lams
            ),
            1e-12,
        )
    )
    out.append(
        Comparison(
            "BCVI-D (blr.Exact on ℓ̄(μ)) vs closed form, 30 steps",
            (blr_bcvi(w0, a, b) - bcvi_closed_form(w0, a, b)).abs().max().item(),
            1e-12,
        )
    )
    return out


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_ste",
        "ALPHA / n,",
        "1.01 * ALPHA / n,",
        "ρ × 1.01 in blr.step (the complete rule)",
    ),
    Mutation(
        "blr",
        "term",
        "blr_ste",
        "nat = blr.step(fam, nat, loss, ALPHA / n, estimator=DeltaAtMode())",
        "nat = blr.engine.apply_step(fam, nat, DeltaAtMode()(fam, nat, loss).grad, ALPHA / n)",
        "entropy term dropped: blr.step replaced by the step λ − ρ∇_μE_q[ℓ̄]",
    ),
    Mutation(
        "blr",
        "term",
        "DeltaAtMode.__call__",
        "torch.sign(nat.lam1)",
        "torch.tanh(nat.lam1)",
        "delta method at the mean instead of the mode",
    ),
    Mutation(
        "blr",
        "term",
        "loss_fn",
        "return lambda theta: n * 0.5",
        "return lambda theta: 0.5",
        "ℓ̄ = ℓ: the factor N dropped from the BLR's loss",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "w = w - ALPHA *",
        "w = w - 1.01 * ALPHA *",
        "STE step α × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "shrink_closed_form",
        "lam = (1 - ALPHA / n) * lam",
        "lam = lam",
        "closed form without the shrinkage (1 − α/N)",
    ),
    Mutation(
        "classical",
        "term",
        "exact_grad_closed_form",
        " - torch.diagonal(gram) * mu",
        "",
        "exact gradient without the diag(G)μ term",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_bcvi",
        "RHO_BCVI, estimator",
        "1.01 * RHO_BCVI, estimator",
        "BCVI-D ρ × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "bcvi_closed_form",
        "lam = (1 - RHO_BCVI) * lam",
        "lam = lam",
        "BCVI-D closed form without (1 − ρ)",
    ),
)
