r"""Online Gauss–Newton (OGN) is the diagonal-Gaussian BLR under the delta method, a minibatch
and a per-example Gauss–Newton Hessian, written in (m, S) coordinates with two rates.

**Family.** q = N(m, diag(S)⁻¹), T(θ) = (θ, θ⊙θ), λ = (S⊙m, −½S), μ = (m, m² + 1/S),
∇_μ(−H) = λ. OGN keeps the precision in per-example units, S = N(s + δ̃) with δ̃ = δ/N, for the
loss ℓ̄(θ) = Σ_i ℓ_i(θ) + (δ/2)‖θ‖² (a prior N(0, δ⁻¹I), i.e. λ₀ = (0, −½δ)).

**Rule.** By Bonnet and Price, ∇_μE_q[ℓ̄] = (E_q[∇ℓ̄] − E_q[∇²ℓ̄]m, ½E_q[∇²ℓ̄]) and the BLR step
is S' = (1 − ρ)S + ρE_q[∇²ℓ̄], m' = m − ρS'⁻¹E_q[∇ℓ̄] (exact algebra, new precision in the
mean step). The approximations: the delta method (both expectations at m), a minibatch B of M
examples (Σ_i ↦ (N/M)Σ_{i∈B}) and the per-example Gauss–Newton diagonal h_i = Λ_i x_i² with
Λ_i = ∂²ℓ_i/∂f² (``"ggn"``), or the squared per-example gradient [∇ℓ_i]² (``"ef"``, the
"empirical Fisher" of Khan et al. 2018). With ĝ = (1/M)Σ_{i∈B}∇ℓ_i(m), ĥ = (1/M)Σ_{i∈B}h_i(m),
the BLR's Ĥ = N(ĥ + δ̃) and ĝ_total = N(ĝ + δ̃m), and the rescaling S = N(s + δ̃) turns the step
into OGN:

    s ← (1 − β)s + βĥ,    m ← m − α(ĝ + δ̃m)/(s + δ̃).

For a GLM (logistic regression, f = xᵀθ) the per-example GGN is the exact per-example Hessian
σ(f)(1 − σ(f))xxᵀ.

**Equality conditions.** α = β = ρ: OGN *is* the BLR λ ← (1 − ρ)λ + ρ(λ₀ − ∇_μE_q[Σℓ_i]) with
the delta method, the minibatch and the GN Hessian (:func:`blr.step` with
``blr.Delta("ggn")``/``"per_example"`` on a :class:`blr.ModelLoss` with scale N/M and the prior
λ₀). α ≠ β: the same BLR in (m, S) coordinates with a rate per block (:func:`blr.gaussian_step`
with ``GaussianOptions(lr=α)``); this is not a blockwise-λ BLR (BLR_SPEC §1.5). The same
minibatches, m₀ = θ₀ and S₀ = N(s₀ + δ̃) give identical iterates. Full batch, exact GGN on a
linear-Gaussian model: the fixed point is m* = S*⁻¹Xᵀy/σ² and N(s + δ̃) = diag(S*),
S* = XᵀX/σ² + δI — the mean-field Gaussian VI optimum of a Gaussian target.

**Test problem** (BLR_SPEC Row 8). (i) Logistic regression, N = 50, D = 2, labels drawn from
σ(xᵀw), w = (1.5, −2), δ = 0.1, M = 10, 50 stored minibatches, α = 0.2, β = 0.1, s₀ = 1: the BLR
((m, S)-form) equals hand-coded OGN for both Hessians, and :func:`blr.step` equals OGN at
α = β = 0.1. :class:`blr.optim.OGN` (``beta1=0``, ``beta2 = 1 − β``, ``weight_decay = δ̃``)
equals the same hand-coded OGN. The batched kernel :func:`blr.kernels.diag_gaussian_step_` runs
64 copies from different starts, one call per step, and equals the (batched) engine and OGN on
each. (ii) Bayesian linear regression N = 20, D = 2, σ² = 0.25, δ = 1, full batch, GGN,
α = 0.8, β = 0.5, 60 steps: m = m* and N(s + δ̃) = diag(S*) to 1e-10.

**References.** Khan & Rue (2023), Table 1 row 8 and §4.2; Khan et al. (2018), "Fast and
scalable Bayesian deep learning by weight-perturbation in Adam" (OGN/VOGN); Osawa et al. (2019).
"""

from __future__ import annotations

import sympy as sp
import torch
import torch.nn.functional as F

import blr
import expfam
from blr.kernels import diag_gaussian_step_
from blr.optim import OGN
from derivations.table import Comparison, RowInfo

INFO = RowInfo(
    key="ogn",
    number=8,
    algorithm="Online Gauss–Newton (OGN)",
    posterior="Gaussian (diagonal)",
    approximation="delta, stochastic approx., GGN Hessian",
    symbolic="✓",
)

f64 = torch.float64
N, D, M = 50, 2, 10
W_TRUE = (1.5, -2.0)
DELTA = 0.1  # prior precision δ (total-loss units); δ̃ = δ/N
ALPHA, BETA = 0.2, 0.1
S0 = 1.0
STEPS = 50
# Bayesian linear regression of (f)(ii)
LR_N, LR_SIGMA2, LR_DELTA = 20, 0.25, 1.0
LR_ALPHA, LR_BETA, LR_STEPS = 0.8, 0.5, 60


def derive() -> list[str]:
    """The BLR step with (ĝ, Ĥ) in (m, S) form, the rescaling S = N(s + δ̃) to OGN, and the
    logistic per-example Hessian = GGN."""
    s_, m, rho, alpha, g, h = sp.symbols("S m rho alpha g_tot H", real=True)
    lam1, lam2 = s_ * m, -s_ / 2
    # ∇_μE_q[ℓ̄] = (ĝ − Ĥm, ½Ĥ) (Bonnet/Price, delta method at m); ∇_μ(−H) = λ
    lam1_new = lam1 - rho * (g - h * m + lam1)
    lam2_new = lam2 - rho * (h / 2 + lam2)
    s_new = -2 * lam2_new
    m_new = lam1_new / s_new
    assert sp.expand(s_new - ((1 - rho) * s_ + rho * h)) == 0
    assert sp.cancel(m_new - (m - rho * g / s_new)) == 0
    # rescaling: S = N(s + δ̃), Ĥ = N(ĥ + δ̃), ĝ_tot = N(ĝ + δ̃m)
    n, s, dt, gh, hh, beta = sp.symbols("N s delta_t g h beta", positive=True)
    big_s, big_h, g_tot = n * (s + dt), n * (hh + dt), n * (gh + dt * m)
    big_s_new = (1 - beta) * big_s + beta * big_h
    s_ogn = (1 - beta) * s + beta * hh
    assert sp.expand(big_s_new / n - dt - s_ogn) == 0
    m_blr = m - alpha * g_tot / big_s_new
    m_ogn = m - alpha * (gh + dt * m) / (s_ogn + dt)
    assert sp.cancel(m_blr - m_ogn) == 0
    # blockwise-λ rates (α on λ1, β on λ2) would give a different mean: not the (m, S)-form
    lam1_block = (1 - alpha) * big_s * m - alpha * (g_tot - big_h * m)
    assert sp.cancel(lam1_block / big_s_new - m_blr) != 0
    # logistic regression: per-example Hessian of log(1 + e^f) − y f, f = x₁θ₁ + x₂θ₂
    x1, x2, t1, t2, y = sp.symbols("x1 x2 theta1 theta2 y", real=True)
    fv = sp.Symbol("f", real=True)
    link = sp.log(1 + sp.exp(fv)) - y * fv
    f_theta = x1 * t1 + x2 * t2
    ell = link.subs(fv, f_theta)
    hess = sp.hessian(ell, (t1, t2))
    jac = sp.Matrix([[x1, x2]])
    ggn = jac.T * sp.diff(link, fv, 2).subs(fv, f_theta) * jac
    assert (hess - ggn).applyfunc(sp.cancel) == sp.zeros(2, 2)
    sig = 1 / (1 + sp.exp(-f_theta))
    assert (hess - sig * (1 - sig) * jac.T * jac).applyfunc(sp.expand).applyfunc(
        sp.cancel
    ) == sp.zeros(2, 2)
    # fixed point on linear regression (3 examples, 2 weights): s* = ĥ, ĝ + δ̃m = 0
    xs = sp.Matrix(3, 2, sp.symbols("a0:6", real=True))
    ys = sp.Matrix(sp.symbols("y0:3", real=True))
    sig2, delta = sp.symbols("sigma2 delta", positive=True)
    s_star = [sum(xs[i, j] ** 2 for i in range(3)) / (3 * sig2) for j in range(2)]
    prec = xs.T * xs / sig2 + delta * sp.eye(2)
    for j in range(2):
        assert sp.expand(3 * (s_star[j] + delta / 3) - prec[j, j]) == 0
    mv = sp.Matrix(sp.symbols("m1 m2", real=True))
    grad_mean = xs.T * (xs * mv - ys) / (3 * sig2) + delta / 3 * mv
    assert sp.expand(3 * grad_mean - (prec * mv - xs.T * ys / sig2)) == sp.zeros(2, 1)
    return [
        "diagonal Gaussian, ∇_μE_q[ℓ̄] = (ĝ − Ĥm, ½Ĥ): S' = (1 − ρ)S + ρĤ, m' = m − ρĝ/S'",
        "S = N(s + δ̃), Ĥ = N(ĥ + δ̃), ĝ = N(ĝ_mean + δ̃m): s' = (1 − β)s + βĥ and "
        "m' = m − α(ĝ_mean + δ̃m)/(s' + δ̃) (OGN)",
        "rates α on λ₁ and β on λ₂ give a different mean: OGN with α ≠ β is the (m, S)-form",
        "logistic ℓ_i: ∇²ℓ_i = JᵀΛJ = σ(f)(1 − σ(f))xxᵀ (GGN = exact Hessian)",
        "linear regression: N(s* + δ̃) = diag(XᵀX/σ² + δI), ĝ + δ̃m = 0 ⇔ S*m = Xᵀy/σ²",
    ]


# ---------------------------------------------------------------------------- data
def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The logistic-regression data: x ~ N(0, I), y ~ Bernoulli(σ(xᵀw)), N = 50, D = 2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, dtype=f64, generator=g)
    p = torch.sigmoid(x @ torch.tensor(W_TRUE, dtype=f64))
    y = (torch.rand(N, dtype=f64, generator=g) < p).to(f64)
    return x, y


def linreg_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayesian linear regression data, N = 20, D = 2, y = xᵀ(1, −0.5) + N(0, σ²)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(LR_N, D, dtype=f64, generator=g)
    noise = LR_SIGMA2**0.5 * torch.randn(LR_N, dtype=f64, generator=g)
    return x, x @ torch.tensor([1.0, -0.5], dtype=f64) + noise


def minibatches(steps: int, n: int = N, size: int = M, seed: int = 1) -> torch.Tensor:
    """A stored sequence of minibatches (``steps`` × ``size`` indices, without replacement)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:size] for _ in range(steps)])


# ---------------------------------------------------------------------------- classical
def classical(
    m0: torch.Tensor,
    s0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    hessian: str = "ggn",
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-coded OGN for logistic regression (vectorized over leading copies of ``m0``):
    ĝ = (1/M)Σ_{i∈B}(σ(x_iᵀθ) − y_i)x_i, ĥ = (1/M)Σ_{i∈B} h_i with h_i = σ(1 − σ)x_i² (GGN) or
    (σ − y_i)²x_i² (EF); s ← (1 − β)s + βĥ; m ← m − α(ĝ + δ̃m)/(s + δ̃), δ̃ = δ/N; θ = m, or
    with ``eps`` (one ε_t per step) θ = m + ε_t/√(N(s + δ̃)): VOGN, the same algorithm without the
    delta method. Returns all iterates (m_t, s_t)."""
    n = x.shape[0]
    dt = delta / n
    m, s = m0, s0
    ms, ss = [m], [s]
    for t, idx in enumerate(batches):
        theta = m if eps is None else m + eps[t] / torch.sqrt(n * (s + dt))
        xb, yb = x[idx], y[idx]
        p = torch.sigmoid(theta @ xb.T)
        r = (p - yb).unsqueeze(-1)
        g = (r * xb).mean(-2)
        if hessian == "ggn":
            h = ((p * (1 - p)).unsqueeze(-1) * xb * xb).mean(-2)
        else:
            h = (r * xb).square().mean(-2)
        s = (1 - beta) * s + beta * h
        m = m - alpha * (g + dt * m) / (s + dt)
        ms.append(m)
        ss.append(s)
    return torch.stack(ms, -2), torch.stack(ss, -2)


# ---------------------------------------------------------------------------- BLR instance
def model_loss(
    x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, n: int, link: str = "logistic"
) -> blr.ModelLoss:
    """Σ_i ℓ_i over the whole data estimated by (N/M)Σ_{i∈B}ℓ_i(x_iᵀθ): BCE with logits
    (``"logistic"``) or (y − f)²/(2σ²) (``"gaussian"``)."""
    xb, yb = x[idx], y[idx]

    def per_example(f: torch.Tensor) -> torch.Tensor:
        f = f.squeeze(-1)
        if link == "logistic":  # log(1 + e^f) − y f (BCE with logits)
            return F.softplus(f) - yb * f
        return (f - yb).square() / (2 * LR_SIGMA2)

    return blr.ModelLoss(
        model=lambda th: (th @ xb.T).unsqueeze(-1), link=per_example, scale=n / len(idx)
    )


def blr_instance(
    m0: torch.Tensor,
    s0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    hessian: str = "ggn",
    link: str = "logistic",
    generic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal-Gaussian BLR with S = N(s + δ̃), prior λ₀ = (0, −½δ), the delta method and
    the per-example GGN (``"ggn"``) or EF (``"per_example"``) Hessian of :class:`blr.Delta`:
    :func:`blr.gaussian_step` with ``GaussianOptions(lr=α)`` and rate β, or (``generic``,
    needs α = β) :func:`blr.step`. ``m0`` may carry leading batch dimensions (copies).
    Returns all (m_t, s_t) in OGN's units."""
    n = x.shape[0]
    dt = delta / n
    fam = expfam.DiagGaussian()
    prior = expfam.DiagNat(torch.zeros_like(m0), torch.full_like(m0, -0.5 * delta))
    nat = fam.from_moments(m0, n * (s0 + dt))
    estimator = blr.Delta(hessian)
    options = blr.GaussianOptions(lr=alpha)

    def moments(nat: expfam.DiagNat) -> tuple[torch.Tensor, torch.Tensor]:
        m, prec = fam.to_moments(nat)
        return m, prec / n - dt

    ms, ss = zip(moments(nat))
    ms, ss = list(ms), list(ss)
    for idx in batches:
        loss = model_loss(x, y, idx, n, link)
        if generic:
            if alpha != beta:
                raise ValueError("blr.step has one rate: alpha must equal beta")
            nat = blr.step(fam, nat, loss, beta, estimator=estimator, prior=prior)
        else:
            est = estimator(fam, nat, loss)
            grad = expfam.DiagNat(est.grad.lam1 - prior.lam1, est.grad.lam2 - prior.lam2)
            nat = blr.gaussian_step(fam, nat, grad, rho=beta, options=options)
        m, s = moments(nat)
        ms.append(m)
        ss.append(s)
    return torch.stack(ms, -2), torch.stack(ss, -2)


# ---------------------------------------------------------------------------- kernel
def kernel_instance(
    m0: torch.Tensor,
    s0: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    delta: float,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B copies (``m0``, ``s0`` of shape (B, D) on any device) through
    :func:`blr.kernels.diag_gaussian_step_` with ρ = β, lr = α, δ = δ̃: one call per step, ĝ and
    the GGN ĥ of all copies computed batched — at the means (OGN), or with ``eps`` (steps, B, D)
    at the draws θ = m + ε/√(N(s + δ̃)) (VOGN: the same recursion without the delta method)."""
    n = x.shape[0]
    dt = delta / n
    dev = m0.device
    x, y = x.to(dev), y.to(dev)
    m, s = m0.clone(), s0.clone()
    ms, ss = [m.clone()], [s.clone()]
    for t, idx in enumerate(batches.to(dev)):
        theta = m if eps is None else m + eps[t].to(dev) / torch.sqrt(n * (s + dt))
        xb, yb = x[idx], y[idx]
        p = torch.sigmoid(theta @ xb.T)
        g_hat = ((p - yb).unsqueeze(-1) * xb).mean(-2)
        h_hat = ((p * (1 - p)).unsqueeze(-1) * xb * xb).mean(-2)
        diag_gaussian_step_(m, s, g_hat, h_hat, rho=beta, lr=alpha, delta=dt)
        ms.append(m.clone())
        ss.append(s.clone())
    return torch.stack(ms, -2), torch.stack(ss, -2)


# ---------------------------------------------------------------------------- blr.optim.OGN
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
    hessian: str = "ggn",
    optimizer: type = OGN,
    **extra: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`blr.optim.OGN` (or ``optimizer``, e.g. VOGN with its ``seed`` in ``extra``) on a
    bias-free linear model (lr = α, β₁ = 0, β₂ = 1 − β, weight_decay = δ̃, hess_init = s₀);
    returns (m_t, s_t)."""
    model = torch.nn.Linear(x.shape[1], 1, bias=False).to(f64)
    with torch.no_grad():
        model.weight.copy_(m0.reshape(1, -1))
    kwargs = dict(curvature="ggn", loss="bce_with_logits") if hessian == "ggn" else {}
    kwargs.setdefault("curvature", "ef")
    opt = optimizer(
        model,
        lr=alpha,
        ess=x.shape[0],
        weight_decay=delta / x.shape[0],
        beta1=0.0,
        beta2=1.0 - beta,
        hess_init=s0,
        **kwargs,
        **extra,
    )
    ms, ss = [m0], [torch.full_like(m0, s0)]
    for idx in batches:
        with opt.sampled_params(train=True):
            opt.zero_grad()
            logits = model(x[idx]).squeeze(-1)
            (F.softplus(logits) - y[idx] * logits).mean().backward()  # BCE with logits
        opt.step()
        ms.append(model.weight.detach().reshape(-1).clone())
        ss.append(opt.state_dict()["state"][0]["hess"].reshape(-1).clone())
    return torch.stack(ms), torch.stack(ss)


def _dev(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((u.cpu() - v.cpu()).abs().max().item() for u, v in zip(a, b))


def check(device: str = "cpu") -> list[Comparison]:
    """BLR vs OGN (GGN and EF, α ≠ β and α = β), blr.optim.OGN vs OGN, the batched kernel, and
    the Bayesian-linear-regression fixed point."""
    x, y = data()
    batches = minibatches(STEPS)
    m0, s0 = torch.zeros(D, dtype=f64), torch.full((D,), S0, dtype=f64)
    kw = dict(alpha=ALPHA, beta=BETA, delta=DELTA)
    out: list[Comparison] = []
    for hessian, est_name in (("ggn", "ggn"), ("ef", "per_example")):
        ogn = classical(m0, s0, x, y, batches, hessian=hessian, **kw)
        bl = blr_instance(m0, s0, x, y, batches, hessian=est_name, **kw)
        out.append(
            Comparison(f"BLR (m, S)-form vs OGN ({hessian}), 50 steps", _dev(bl, ogn), 1e-10)
        )
        opt = optimizer_instance(m0, x, y, batches, s0=S0, hessian=hessian, **kw)
        out.append(Comparison(f"blr.optim.OGN vs OGN ({hessian}), 50 steps", _dev(opt, ogn), 1e-10))
    same = dict(alpha=BETA, beta=BETA, delta=DELTA)
    ogn = classical(m0, s0, x, y, batches, **same)
    gen = blr_instance(m0, s0, x, y, batches, generic=True, **same)
    out.append(Comparison("blr.step (α = β) vs OGN (ggn), 50 steps", _dev(gen, ogn), 1e-10))
    # batched kernel: 64 copies from different starts and precisions
    g = torch.Generator().manual_seed(2)
    starts = torch.randn(64, D, dtype=f64, generator=g)
    scales = 0.5 + torch.rand(64, D, dtype=f64, generator=g)
    kern = kernel_instance(starts.to(device), scales.to(device), x, y, batches, **kw)
    engine = blr_instance(starts[:8], scales[:8], x, y, batches, **kw)
    batched = classical(starts, scales, x, y, batches, **kw)
    out.append(
        Comparison(
            f"kernel ({device}, 64 copies) vs engine (8 copies)",
            _dev(tuple(k[:8] for k in kern), engine),
            1e-10,
        )
    )
    out.append(Comparison(f"kernel ({device}, 64 copies) vs OGN", _dev(kern, batched), 1e-10))
    # (ii) Bayesian linear regression: the fixed point is the mean-field VI optimum
    xl, yl = linreg_data()
    full = torch.arange(LR_N).expand(LR_STEPS, LR_N)
    m_lr, s_lr = blr_instance(
        torch.zeros(D, dtype=f64),
        torch.ones(D, dtype=f64),
        xl,
        yl,
        full,
        alpha=LR_ALPHA,
        beta=LR_BETA,
        delta=LR_DELTA,
        link="gaussian",
    )
    prec = xl.T @ xl / LR_SIGMA2 + LR_DELTA * torch.eye(D, dtype=f64)
    m_star = torch.linalg.solve(prec, xl.T @ yl / LR_SIGMA2)
    out.append(
        Comparison(
            "linreg: OGN mean after 60 steps vs m* = S*⁻¹Xᵀy/σ²",
            (m_lr[-1] - m_star).abs().max().item(),
            1e-10,
        )
    )
    rel = (LR_N * (s_lr[-1] + LR_DELTA / LR_N) / torch.diagonal(prec) - 1).abs().max().item()
    out.append(Comparison("linreg: N(s + δ̃) vs diag(S*) (relative)", rel, 1e-10))
    return out
