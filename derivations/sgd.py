r"""SGD is the BLR on a Gaussian with fixed covariance under the delta method and a minibatch
estimate of the gradient; heavy-ball SGD is the same rule with natural momentum.

**Family.** q = N(m, Σ₀) with Σ₀ fixed (Row 1): T(θ) = θ, λ = Σ₀⁻¹m, μ = m,
A(λ) = ½λᵀΣ₀λ, ∇_μ(−H) = 0 (the entropy does not depend on m).

**Rule.** ∇_μE_q[ℓ̄] = ∇_mE_q[ℓ̄] = E_q[∇ℓ̄] (Bonnet). The delta method E_q[∇ℓ̄] ≈ ∇ℓ̄(m) and the
stochastic approximation Σ_{i=1}^N ∇ℓ_i ≈ (N/M)Σ_{i∈B_t}∇ℓ_i (prior term exact) give

    ĝ_t(m) = (N/M) Σ_{i∈B_t} ∇ℓ_i(m) + ∇R(m),    m_{t+1} = m_t − ρ_t Σ₀ ĝ_t(m_t):

SGD. The minibatch estimate is unbiased: each example lies in C(N−1, M−1) of the C(N, M)
minibatches, and (N/M)·C(N−1, M−1)/C(N, M) = 1. Natural momentum (heavy ball in λ-space, Khan
et al. 2018), λ_{t+1} = λ_t − ρ∇_μL + γ(λ_t − λ_{t−1}), is linear in λ = Σ₀⁻¹m, so on this
family it is exactly the heavy ball m_{t+1} = m_t − ρΣ₀ĝ_t + γ(m_t − m_{t−1}) (no
slow-moving-scale approximation is needed: the covariance does not move). :func:`derive` proves
each step in 2-D with a symbolic symmetric Σ₀ (Bonnet's identity through
E_q[e^{aᵀθ}] = e^{aᵀm + ½aᵀΣ₀a}, linear in ℓ, as in Row 2).

**Equality conditions.** Σ₀ = I, ρ_t = α_t, m₀ = θ₀ and the same minibatch sequence B_t ⇒
m_t = θ_t of θ ← θ − α[(N/M)Σ_{i∈B_t}∇ℓ_i(θ) + ∇R(θ)] for every t (SGD on the mean loss with
step α' is ρ = α'/N). With natural momentum γ (no momentum at the first step, where λ₋₁ does not
exist) the BLR iterates equal ``torch.optim.SGD(lr=α, momentum=γ, dampening=0)``, whose buffer
b_t = γb_{t−1} + ĝ_t unrolls to the same θ_{t+1} − θ_t = −αĝ_t + γ(θ_t − θ_{t−1}).

**Test problem.** The logistic-regression data of Row 2 (the same arrays): N = 50 points
x_i ~ N(0, I₂), labels y_i ~ Bernoulli(σ(x_iᵀw)) with w = (1.5, −2), prior R = (δ/2)‖θ‖²,
δ = 0.1 (unscaled by N/M, so both terms of ĝ matter); M = 8, α = 0.01 on the summed loss, 100
steps along a stored index sequence from θ₀ = 0. The BLR side (engine, kernel) and
``torch.optim`` differentiate the minibatch loss by autograd; the hand-coded SGD uses the
closed form (N/M)Σ x_i(σ(x_iᵀθ) − y_i) + δθ. Equalities (iterate by iterate, tolerance 1e-12):
the BLR (engine, :func:`blr.step` with :class:`blr.Delta`) against the hand-coded SGD and
``torch.optim.SGD``; with momentum γ = 0.9 (:class:`blr.BLR`, ``momentum=γ``) against
``torch.optim.SGD(momentum=0.9)``; unbiasedness: for the first N = 4 points and M = 2, the mean
of the BLR's gradient estimate over all C(4, 2) = 6 minibatches equals the full-data gradient
(an exact identity, computed two ways). The batched kernel
(:func:`blr.kernels.diag_gaussian_step_` with ρ = 0, s = 1) runs 64 copies, each with its own
minibatch sequence and start, in one call per step, and equals the engine on the first 2
copies and the hand-coded SGD on all of them.

**References.** Khan & Rue (2023), Table 1 row 4; Robbins & Monro (1951); Polyak (1964) for the
heavy ball; Khan et al. (2018), "Fast and scalable Bayesian deep learning by weight-perturbation
in Adam" (ICML), for natural momentum.
"""

from __future__ import annotations

import itertools
import math

import sympy as sp
import torch

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from derivations import newton
from derivations.mutations import Mutation
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="sgd",
    number=4,
    algorithm="SGD",
    posterior="Gaussian (fixed covariance)",
    approximation="delta method, stochastic approx.",
    symbolic="✓",
)

N_DATA = 50
W_TRUE = (1.5, -2.0)
DELTA = 0.1
BATCH = 8
ALPHA = 0.01
GAMMA = 0.9
STEPS = 100
COPIES = 64


def derive() -> list[str]:
    """In 2-D with a symbolic symmetric Σ₀: μ = ∇A(λ) = m, ∇_μ(−H) = 0, Bonnet's identity for
    ℓ = e^{aᵀθ}, and the delta-method minibatch BLR step = SGD preconditioned by Σ₀; the minibatch
    estimate is unbiased (C(4, 2), C(5, 2), C(5, 3) enumerated with symbolic per-example
    gradients, and for general N, M); natural momentum is the heavy ball of
    ``torch.optim.SGD`` (4 steps, 2-D)."""
    p, q, r = sp.symbols("p q r", real=True)
    cov = sp.Matrix([[p, q], [q, r]])  # Σ₀, symmetric (positive definite where it matters)
    l1, l2, rho = sp.symbols("l1 l2 rho", real=True)
    lam = sp.Matrix([l1, l2])
    mvec = cov * lam  # m = Σ₀λ, λ = Σ₀⁻¹m
    # A(λ) = ½λᵀΣ₀λ: μ = ∇A(λ) = Σ₀λ = m
    log_partition = (lam.T * cov * lam)[0] / 2
    mu = sp.Matrix([sp.diff(log_partition, v) for v in (l1, l2)])
    assert (mu - mvec).expand() == sp.zeros(2, 1)
    # entropy ½log|2πeΣ₀| is free of λ, hence of μ = m ⇒ ∇_μ(−H) = 0
    neg_entropy = -sp.log((2 * sp.pi * sp.E * cov).det()) / 2
    assert all(sp.diff(neg_entropy, v) == 0 for v in (l1, l2))
    # Bonnet for ℓ = e^{aᵀθ}: E_q[ℓ] = e^{aᵀm + ½aᵀΣ₀a} (completing the square), so
    # ∇_m E_q[ℓ] = a·E_q[ℓ] = E_q[∇ℓ]; linear in ℓ
    mgf = newton.derive_gaussian_mgf()
    a1, a2, m1, m2 = sp.symbols("a1 a2 m1 m2", real=True)
    avec = sp.Matrix([a1, a2])
    log_mgf = a1 * m1 + a2 * m2 + (avec.T * cov * avec)[0] / 2
    assert [sp.diff(log_mgf, v) for v in (m1, m2)] == [a1, a2]  # ∇_m e^{f} = e^{f}∇_m f
    # delta method + minibatch B = {1, 2} of N = 4 with symbolic per-example gradients g_i(m)
    grads = [sp.Matrix(sp.symbols(f"g{i}_1:3", real=True)) for i in range(1, 5)]
    prior_grad = sp.Matrix(sp.symbols("r1:3", real=True))
    g_batch = sp.Rational(4, 2) * (grads[0] + grads[1]) + prior_grad
    lam_new = lam - rho * (g_batch + sp.zeros(2, 1))  # ∇_μ(−H) = 0
    assert (cov * lam_new - (mvec - rho * cov * g_batch)).expand() == sp.zeros(2, 1)
    # unbiasedness: the mean over all C(N, M) minibatches is the full gradient
    for n, mb in ((4, 2), (5, 2), (5, 3)):
        g = [sp.Symbol(f"g_{i}") for i in range(n)]
        batches = list(itertools.combinations(range(n), mb))
        mean = sum(sp.Rational(n, mb) * sum(g[i] for i in b) for b in batches) / len(batches)
        assert sp.expand(mean - sum(g)) == 0
    big_n, big_m = sp.symbols("N M", positive=True, integer=True)
    ratio = big_n / big_m * sp.binomial(big_n - 1, big_m - 1) / sp.binomial(big_n, big_m)
    assert sp.simplify(sp.combsimp(ratio)) == 1
    # natural momentum on λ = Σ₀⁻¹m vs torch.optim.SGD's buffer b_t = γb_{t−1} + ĝ_t (Σ₀ = I:
    # θ ← θ − αb_t; for general Σ₀ the preconditioned form θ ← θ − αΣ₀b_t), 4 steps in 2-D
    gamma, alpha = sp.symbols("gamma alpha", positive=True)
    gs = [sp.Matrix(sp.symbols(f"ghat{t}_1:3", real=True)) for t in range(1, 5)]
    lam_prev, lam_cur = None, lam
    theta, buf = mvec, sp.zeros(2, 1)
    for t, g in enumerate(gs):
        # BLR: λ ← λ − ρ(ĝ + 0) + γ(λ_t − λ_{t−1}) (no momentum at the first step)
        lam_next = lam_cur - rho * g + (gamma * (lam_cur - lam_prev) if t else sp.zeros(2, 1))
        lam_prev, lam_cur = lam_cur, lam_next
        buf = gamma * buf + g
        theta = theta - alpha * cov * buf
        assert (cov * lam_cur - theta.subs(alpha, rho)).expand() == sp.zeros(2, 1)
    return [
        mgf,
        "2-D N(m, Σ₀), symbolic Σ₀: μ = ∇A(λ) = Σ₀λ = m and ∇_μ(−H) = 0",
        "2-D Bonnet: ∇_m E_q[e^{aᵀθ}] = ∇_m e^{aᵀm + ½aᵀΣ₀a} = a·E_q[e^{aᵀθ}] = E_q[∇e^{aᵀθ}]; "
        "linear in ℓ, so ∇_μE_q[ℓ̄] = E_q[∇ℓ̄] for every superposition of exponentials",
        "delta method + minibatch: m' = Σ₀(λ − ρĝ_B(m)) = m − ρΣ₀[(N/M)Σ_{i∈B}g_i(m) + ∇R(m)]",
        "unbiasedness: mean of (N/M)Σ_{i∈B}g_i over all C(4,2), C(5,2), C(5,3) minibatches is "
        "Σ_i g_i; in general (N/M)·C(N−1, M−1)/C(N, M) = 1",
        "natural momentum λ_{t+1} = λ_t − ρĝ_t + γ(λ_t − λ_{t−1}) equals torch.optim.SGD "
        "(b_t = γb_{t−1} + ĝ_t, θ ← θ − ρΣ₀b_t) for 4 steps with symbolic 2-D ĝ_t",
    ]


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The Row-2 logistic-regression data (:func:`derivations.newton.data`): N = 50 points."""
    return newton.data(dtype)


def index_sequence(
    copies: int, steps: int, seed: int, *, n: int = N_DATA, size: int = BATCH
) -> torch.Tensor:
    """Stored minibatches: ``(copies, steps, size)`` indices, each row ``size`` distinct of
    ``n``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(copies, steps, n, generator=gen).argsort(-1)[..., :size]


def classical(
    theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Hand-coded SGD θ ← θ − α[(N/M)Σ_{i∈B_t} x_i(σ(x_iᵀθ) − y_i) + δθ] (closed-form gradient).

    Args:
        theta0: ``(..., 2)`` starts (leading dimensions are independent copies).
        x, y: the data.
        idx: ``(..., steps, M)`` minibatch indices, one sequence per copy.
        alpha: the step size.

    Returns:
        ``(..., steps + 1, 2)``: all iterates.
    """
    out, theta = [theta0], theta0
    scale = x.shape[0] / idx.shape[-1]
    for t in range(idx.shape[-2]):
        xb, yb = x[idx[..., t, :]], y[idx[..., t, :]]  # (..., M, 2), (..., M)
        resid = torch.sigmoid((xb * theta.unsqueeze(-2)).sum(-1)) - yb
        grad = scale * (xb * resid.unsqueeze(-1)).sum(-2) + DELTA * theta
        theta = theta - alpha * grad
        out.append(theta)
    return torch.stack(out, -2)


def torch_sgd(
    theta0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    alpha: float,
    momentum: float = 0.0,
) -> torch.Tensor:
    """``torch.optim.SGD(lr=α, momentum=γ)`` on the minibatch loss (autograd gradients)."""
    w = theta0.clone().requires_grad_()
    opt = torch.optim.SGD([w], lr=alpha, momentum=momentum)
    out = [w.detach().clone()]
    for t in range(idx.shape[0]):
        opt.zero_grad()
        minibatch_loss(x, y, idx[t])(w).backward()
        opt.step()
        out.append(w.detach().clone())
    return torch.stack(out)


def minibatch_loss(x: torch.Tensor, y: torch.Tensor, batch: torch.Tensor):
    """θ ↦ (N/M)Σ_{i∈B} ℓ_i(θ) + (δ/2)‖θ‖², logistic ℓ_i(θ) = log(1 + e^{x_iᵀθ}) − y_ix_iᵀθ,
    vectorized over leading dimensions of θ; a ``(..., M)`` ``batch`` pairs each leading index
    with its own minibatch."""
    xb, yb = x[batch], y[batch]
    scale = x.shape[0] / batch.shape[-1]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        f = (xb * theta.unsqueeze(-2)).sum(-1)
        nll = torch.logaddexp(f, torch.zeros_like(f)) - yb * f
        return scale * nll.sum(-1) + 0.5 * DELTA * theta.square().sum(-1)

    return loss


def blr_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, rho: float
) -> torch.Tensor:
    """The BLR on N(m, I): :func:`blr.step` with :class:`blr.Delta` on minibatch B_t."""
    fam = expfam.FixedCovGaussian(cov=1.0)
    nat = expfam.FixedCovNat(m0.clone())
    out = [fam.nat_to_mean(nat).mu1]
    for t in range(idx.shape[0]):
        nat = blr.step(fam, nat, minibatch_loss(x, y, idx[t]), rho, estimator=blr.Delta())
        out.append(fam.nat_to_mean(nat).mu1)
    return torch.stack(out)


def blr_momentum(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, rho: float, gamma: float
) -> torch.Tensor:
    """:class:`blr.BLR` with natural momentum γ on N(m, I), one minibatch loss per step."""
    fam = expfam.FixedCovGaussian(cov=1.0)
    opt = blr.BLR(
        fam,
        expfam.FixedCovNat(m0.clone()),
        minibatch_loss(x, y, idx[0]),
        estimator=blr.Delta(),
        rho=rho,
        momentum=gamma,
    )
    out = [opt.mean.mu1]
    for t in range(idx.shape[0]):
        opt.step(minibatch_loss(x, y, idx[t]))
        out.append(opt.mean.mu1)
    return torch.stack(out)


def kernel_instance(
    m0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, rho: float
) -> torch.Tensor:
    """The batched kernel on B copies (``m0`` ``(B, 2)``, ``idx`` ``(B, steps, M)``): s = 1 frozen
    (ρ_s = 0), mean rate ρ, ĝ = autograd of each copy's :func:`minibatch_loss` at its m (delta
    method; the copies are independent, so one backward pass of the sum gives every ĝ)."""
    x, y, idx = x.to(m0.device), y.to(m0.device), idx.to(m0.device)
    m, s = m0.clone(), torch.ones_like(m0)
    out = [m.clone()]
    for t in range(idx.shape[1]):
        theta = m.clone().requires_grad_()
        with torch.enable_grad():
            value = minibatch_loss(x, y, idx[:, t])(theta)
            (g_hat,) = torch.autograd.grad(value.sum(), theta)
        diag_gaussian_step_(m, s, g_hat, None, rho=0.0, lr=rho)
        out.append(m.clone())
    return torch.stack(out, 1)


def _unbiasedness(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |mean over all C(4, 2) minibatches of the BLR's ĝ − full-data ĝ| (N = 4, M = 2)."""
    fam = expfam.FixedCovGaussian()
    nat = expfam.FixedCovNat(torch.tensor([0.7, -0.3], dtype=x.dtype))
    x4, y4 = x[:4], y[:4]
    full = blr.Delta()(fam, nat, minibatch_loss(x4, y4, torch.arange(4))).grad.lam1
    batches = [torch.tensor(b) for b in itertools.combinations(range(4), 2)]
    assert len(batches) == math.comb(4, 2)
    ests = [blr.Delta()(fam, nat, minibatch_loss(x4, y4, b)).grad.lam1 for b in batches]
    spread = (torch.stack(ests) - full).abs().max().item()
    assert spread > 1e-3  # the single minibatch estimates do differ from the full gradient
    return (torch.stack(ests).mean(0) - full).abs().max().item()


def _dev(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs hand-coded SGD and torch.optim.SGD (plain and heavy ball), unbiasedness, and the
    batched kernel against the engine and the hand-coded SGD: all equalities."""
    x, y = data()
    idx_all = index_sequence(COPIES, STEPS, seed=1)
    idx = idx_all[0]
    theta0 = torch.zeros(2, dtype=torch.float64)
    sgd = classical(theta0, x, y, idx, ALPHA)
    ref = torch_sgd(theta0, x, y, idx, ALPHA)
    engine = blr_instance(theta0, x, y, idx, ALPHA)
    heavy = torch_sgd(theta0, x, y, idx, ALPHA, momentum=GAMMA)
    natural = blr_momentum(theta0, x, y, idx, ALPHA, GAMMA)
    starts = torch.randn(COPIES, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    starts[0] = theta0
    kernel = kernel_instance(starts.to(device), x, y, idx_all, ALPHA).cpu()
    engine_copies = torch.stack([engine, blr_instance(starts[1], x, y, idx_all[1], ALPHA)])
    batched_sgd = classical(starts, x, y, idx_all, ALPHA)
    return [
        Comparison("BLR vs hand-coded SGD, 100 steps", _dev(engine, sgd), 1e-12),
        Comparison("BLR vs torch.optim.SGD, 100 steps", _dev(engine, ref), 1e-12),
        Comparison(
            "BLR natural momentum γ = 0.9 vs torch.optim.SGD(momentum=0.9), 100 steps",
            _dev(natural, heavy),
            1e-12,
        ),
        Comparison(
            "unbiasedness: mean of ĝ over all C(4,2) minibatches vs full gradient",
            _unbiasedness(x, y),
            1e-12,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs engine (2 copies), 100 steps",
            _dev(kernel[:2], engine_copies),
            1e-12,
        ),
        Comparison(
            f"kernel ({device}, 64 copies) vs hand-coded SGD, 100 steps",
            _dev(kernel, batched_sgd),
            1e-12,
        ),
    ]


MUTATIONS = (
    Mutation(
        "blr",
        "constant",
        "blr_instance",
        "idx[t]), rho,",
        "idx[t]), 1.01 * rho,",
        "engine: BLR step ρ × 1.01",
    ),
    Mutation(
        "blr",
        "constant",
        "blr_momentum",
        "momentum=gamma,",
        "momentum=1.01 * gamma,",
        "engine: natural momentum γ × 1.01",
    ),
    Mutation(
        "blr", "constant", "kernel_instance", "lr=rho", "lr=1.01 * rho", "kernel: mean rate × 1.01"
    ),
    Mutation(
        "blr",
        "term",
        "minibatch_loss",
        "scale * nll.sum(-1)",
        "nll.sum(-1)",
        "BLR side (engine, kernel; and torch.optim): N/M scale dropped from the minibatch loss",
    ),
    Mutation(
        "blr",
        "term",
        "minibatch_loss",
        " + 0.5 * DELTA * theta.square().sum(-1)",
        "",
        "BLR side (engine, kernel; and torch.optim): prior (δ/2)‖θ‖² dropped",
    ),
    Mutation(
        "classical",
        "constant",
        "classical",
        "theta - alpha * grad",
        "theta - 1.01 * alpha * grad",
        "hand-coded SGD: step α × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "torch_sgd",
        "lr=alpha,",
        "lr=1.01 * alpha,",
        "torch.optim.SGD: lr × 1.01",
    ),
    Mutation(
        "classical",
        "constant",
        "torch_sgd",
        "momentum=momentum)",
        "momentum=1.01 * momentum)",
        "torch.optim.SGD: momentum × 1.01",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        "grad = scale * (xb",
        "grad = (xb",
        "hand-coded SGD: N/M scale dropped",
    ),
    Mutation(
        "classical",
        "term",
        "classical",
        " + DELTA * theta",
        "",
        "hand-coded SGD: prior gradient δθ dropped",
    ),
)
