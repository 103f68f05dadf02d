r"""Fused updates of the diagonal-Gaussian BLR on flat buffers: the IVON, VON/Vadam and OGN/VOGN
steps of :mod:`blr.optim`, as pure in-place functions (CPU: vectorized torch ops).

In the IVON parameterization (Shen et al., 2024) the posterior is N(m, diag(σ²)) with
σ² = 1/(N(h + δ)): ``hess`` h is the precision of the per-example average loss, δ the prior
precision (``weight_decay``), N the effective sample size (``ess``). One step, from the averaged
gradient ĝ and a Hessian estimate ĥ (Price/Stein ĥ = N(h + δ)·E[(θ − m)⊙ĝ], or ĝ²):

.. math::
    \bar g &\leftarrow \beta_1\bar g + (1-\beta_1)\hat g,\\
    h &\leftarrow \beta_2 h + (1-\beta_2)\hat h
         \;[+\ \tfrac12(1-\beta_2)^2 (h - \hat h)^2/(h + \delta)],\\
    m &\leftarrow m - \alpha\,\operatorname{clip}\!\Big(\frac{\bar g/(1-\beta_1^t) + \delta m}
         {h + \delta},\ \pm r\Big).

BLR limit: with β₁ = 0, r = ∞, α = ρ = 1 − β₂ this is the diagonal Gaussian BLR in (m, S) form
on ℓ̄ = N·ℓ with S = N(h + δ), Ĥ = N(ĥ + δ), ĝ_total = N(ĝ + δm): :func:`blr.step` without the
bracketed improved-BLR term, :func:`blr.gaussian_step` with ``improved=True`` with it (tests).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor


def _chunks(n: int, scratch: Tensor | None) -> Iterator[tuple[int, int, Tensor | None]]:
    """(start, stop, scratch view) over [0, n) in pieces as long as ``scratch`` (one piece and no
    scratch when None: the caller allocates)."""
    if scratch is None or scratch.numel() >= n:
        yield 0, n, None if scratch is None else scratch[:n]
        return
    size = scratch.numel()
    for start in range(0, n, size):
        stop = min(start + size, n)
        yield start, stop, scratch[: stop - start]


def ivon_noise(
    hess: Tensor,
    *,
    ess: float,
    weight_decay: float,
    generator: torch.Generator | None = None,
    out: Tensor | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """σ ⊙ z with σ = (N(h + δ))^{-1/2} and z ~ N(0, I): the offset θ − m of a posterior draw.
    ``out`` and ``scratch`` (flat buffers shaped like ``hess``) avoid allocations.

    Example:
        >>> h = torch.full((4,), 3.0)
        >>> n = ivon_noise(h, ess=4.0, weight_decay=1.0, generator=torch.Generator().manual_seed(0))
        >>> n.shape
        torch.Size([4])
    """
    out = torch.empty_like(hess) if out is None else out
    torch.randn(hess.shape, generator=generator, out=out, dtype=hess.dtype, device=hess.device)
    return ivon_scale_noise_(out, hess, ess=ess, weight_decay=weight_decay, scratch=scratch)


def ivon_scale_noise_(
    z: Tensor, hess: Tensor, *, ess: float, weight_decay: float, scratch: Tensor | None = None
) -> Tensor:
    """z ← σ⊙z with σ = (N(h + δ))^{-1/2}, in place (standard normals → the draw's offset).

    Example:
        >>> ivon_scale_noise_(torch.ones(2), torch.full((2,), 3.0), ess=4.0, weight_decay=1.0)
        tensor([0.2500, 0.2500])
    """
    per_coord = isinstance(weight_decay, Tensor)
    for a, b, work in _chunks(hess.numel(), scratch):
        delta = weight_decay[a:b] if per_coord else weight_decay
        scale = torch.add(hess[a:b], delta, out=work).mul_(ess).rsqrt_()
        z[a:b].mul_(scale)
    return z


def ivon_hess_estimate_(
    stat: Tensor, hess: Tensor, *, ess: float, weight_decay: float, hess_approx: str
) -> Tensor:
    """ĥ from the averaged sample statistic, in place in ``stat``: Price/Stein
    ``stat`` = E[(θ − m)⊙ĝ] ⇒ ĥ = N(h + δ)⊙stat; ``"gradsq"``: ``stat`` = E[ĝ²] ⇒ ĥ = N·stat."""
    if hess_approx == "price":
        if isinstance(weight_decay, Tensor):  # a per-coordinate δ (a prior of its own)
            return stat.mul_(hess + weight_decay).mul_(ess)
        if weight_decay > 0:  # N(h + δ)⊙stat = Nδ·(stat + stat⊙h/δ), without a temporary
            return stat.addcmul_(stat, hess, value=1.0 / weight_decay).mul_(ess * weight_decay)
        return stat.mul_(hess).mul_(ess)
    if hess_approx == "gradsq":
        return stat.mul_(ess)
    raise ValueError(f"hess_approx must be 'price' or 'gradsq', got {hess_approx!r}")


def ivon_hess_estimate(
    stat: Tensor, hess: Tensor, *, ess: float, weight_decay: float, hess_approx: str
) -> Tensor:
    """Out-of-place :func:`ivon_hess_estimate_`.

    Example:
        >>> import torch
        >>> stat, hess = torch.tensor([1.0, 2.0]), torch.ones(2)
        >>> ivon_hess_estimate(stat, hess, ess=10.0, weight_decay=0.0, hess_approx="gradsq")
        tensor([10., 20.])
    """
    return ivon_hess_estimate_(
        stat.clone(), hess, ess=ess, weight_decay=weight_decay, hess_approx=hess_approx
    )


def ivon_bias(beta1: float, step: int, debias: bool = True) -> float:
    """The momentum's bias correction 1 − β₁^t of step t (1 without ``debias``), shared by
    every implementation of the IVON step (eager, compiled, Triton).

    Example:
        >>> ivon_bias(0.9, 1)
        0.09999999999999998
    """
    return 1.0 - beta1**step if debias else 1.0


@torch.no_grad()
def ivon_step_(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    g_hat: Tensor,
    h_hat: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    step: int,
    clip_radius: float = math.inf,
    debias: bool = True,
    correction: bool = True,
    scratch: Tensor | None = None,
    prior_mean: Tensor | None = None,
) -> None:
    """One IVON update (module docstring), in place on ``mean``, ``momentum`` and ``hess``.

    Args:
        mean, momentum, hess: flat fp32 state (m, ḡ, h), updated in place.
        g_hat: ĝ, the gradient averaged over the MC samples.
        h_hat: ĥ (:func:`ivon_hess_estimate`); overwritten (used as a work buffer).
        lr: α (already rescaled by h₀ + δ if the optimizer asks for it).
        beta1, beta2: the rates of ḡ and h.
        weight_decay: δ, a number, or a tensor shaped like ``mean`` (a prior N(m₀, 1/(Nδ))
            per coordinate, with ``prior_mean``: the decay term δ⊙(m − m₀)).
        step: t ≥ 1 (for the bias correction 1 − β₁^t).
        clip_radius: r.
        debias: divide ḡ by 1 − β₁^t.
        correction: the improved-BLR term that keeps h + δ > 0 for any ĥ.
        scratch: a work buffer shaped like ``mean`` (allocated if None).
        prior_mean: m₀, shaped like ``mean`` (None: 0).

    Example:
        >>> m, g, h = torch.zeros(3), torch.zeros(3), torch.ones(3)
        >>> ivon_step_(m, g, h, torch.ones(3), torch.ones(3), lr=0.1, beta1=0.9, beta2=0.99,
        ...            weight_decay=0.0, step=1)
        >>> m
        tensor([-0.1000, -0.1000, -0.1000])
    """
    bias = ivon_bias(beta1, step, debias)
    per_coord = isinstance(weight_decay, Tensor)
    for a, b, work in _chunks(mean.numel(), scratch):
        _ivon_piece(
            mean[a:b],
            momentum[a:b],
            hess[a:b],
            g_hat[a:b],
            h_hat[a:b],
            torch.empty_like(mean[a:b]) if work is None else work,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay[a:b] if per_coord else weight_decay,
            bias=bias,
            clip_radius=clip_radius,
            correction=correction,
            prior_mean=None if prior_mean is None else prior_mean[a:b],
        )


def _ivon_piece(
    mean,
    momentum,
    hess,
    g_hat,
    h_hat,
    scratch,
    *,
    lr,
    beta1,
    beta2,
    weight_decay,
    bias,
    clip_radius,
    correction,
    prior_mean=None,
) -> None:
    momentum.lerp_(g_hat, 1.0 - beta1)  # β₁ḡ + (1 − β₁)ĝ in one pass
    diff = torch.sub(hess, h_hat, out=h_hat)  # h − ĥ, in the ĥ buffer
    if correction:
        torch.add(hess, weight_decay, out=scratch)  # old h + δ
        hess.sub_(diff, alpha=1.0 - beta2)  # β₂h + (1 − β₂)ĥ
        hess.addcdiv_(diff.square_(), scratch, value=0.5 * (1.0 - beta2) ** 2)
    else:
        hess.sub_(diff, alpha=1.0 - beta2)
    if isinstance(weight_decay, Tensor):  # ḡ + bδ⊙(m − m₀): a prior per coordinate
        m0 = 0.0 if prior_mean is None else prior_mean
        direction = torch.sub(mean, m0, out=scratch).mul_(weight_decay).mul_(bias).add_(momentum)
    else:
        direction = torch.add(momentum, mean, alpha=weight_decay * bias, out=scratch)
    denom = torch.add(hess, weight_decay, out=diff)
    if math.isfinite(clip_radius):
        direction.div_(denom).div_(bias).clamp_(-clip_radius, clip_radius)
        mean.sub_(direction, alpha=lr)
    else:  # m − (α/b)·(ḡ + bδm)/(h + δ) in one pass
        mean.addcdiv_(direction, denom, value=-lr / bias)


@torch.no_grad()
def vadam_step_(
    mean: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    g_hat: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    prior_prec: float,
    ess: float,
    step: int,
    scratch: Tensor | None = None,
    prior_mean: Tensor | None = None,
) -> None:
    r"""One Vadam update (Khan et al., ICML 2018; Khan & Rue 2023, Table 1 rows 5 and 9), in place:

    .. math::
        \bar g &\leftarrow \beta_1\bar g + (1-\beta_1)(\hat g + \tilde\delta m),\qquad
        s \leftarrow \beta_2 s + (1-\beta_2)\hat g^2,\qquad \tilde\delta = \delta/N,\\
        m &\leftarrow m - \alpha\,
             \frac{\bar g/(1-\beta_1^t)}{\sqrt{s/(1-\beta_2^t)} + \tilde\delta},

    with draws θ = m + z/√(N(s + δ̃)) (:func:`vadam_noise`). ĝ is the gradient of the mean loss
    at θ. ``g_hat`` is used as a work buffer.

    Example:
        >>> m, a, s = torch.zeros(2), torch.zeros(2), torch.zeros(2)
        >>> vadam_step_(m, a, s, torch.ones(2), lr=0.1, beta1=0.9, beta2=0.999, prior_prec=0.0,
        ...             ess=10.0, step=1)
        >>> m
        tensor([-0.1000, -0.1000])
    """
    delta = prior_prec / ess  # a number, or a tensor (a prior N(m₀, 1/δ) per coordinate)
    per_coord = isinstance(delta, Tensor)
    exp_avg_sq.mul_(beta2).addcmul_(g_hat, g_hat, value=1.0 - beta2)
    if per_coord:  # ĝ + (δ/N)⊙(m − m₀)
        g_hat.add_((mean if prior_mean is None else mean - prior_mean) * delta)
    else:
        g_hat.add_(mean, alpha=delta)
    exp_avg.mul_(beta1).add_(g_hat, alpha=1.0 - beta1)
    for a, b, work in _chunks(mean.numel(), scratch):
        work = torch.empty_like(mean[a:b]) if work is None else work
        d = delta[a:b] if per_coord else delta
        denom = torch.div(exp_avg_sq[a:b], 1.0 - beta2**step, out=work).sqrt_().add_(d)
        mean[a:b].addcdiv_(exp_avg[a:b], denom, value=-lr / (1.0 - beta1**step))


def vadam_noise(
    exp_avg_sq: Tensor,
    *,
    prior_prec: float,
    ess: float,
    generator: torch.Generator | None = None,
    out: Tensor | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """σ⊙z with σ = (N s + δ)^{-1/2}: the offset of a Vadam draw."""
    out = torch.empty_like(exp_avg_sq) if out is None else out
    torch.randn(exp_avg_sq.shape, generator=generator, out=out, dtype=out.dtype, device=out.device)
    per_coord = isinstance(prior_prec, Tensor)
    for a, b, work in _chunks(exp_avg_sq.numel(), scratch):
        d = prior_prec[a:b] if per_coord else prior_prec
        scale = torch.mul(exp_avg_sq[a:b], ess, out=work).add_(d).rsqrt_()
        out[a:b].mul_(scale)
    return out


# ---------------------------------------------------------------------------- compiled (fused) path
def _fused_step(mean, momentum, hess, grad, h_hat, lr, b1, b2, wd, bias, *, correction):
    """The IVON step (no clip) in expression form, the one source of the compiled updates:
    ḡ ← β₁ḡ + (1 − β₁)ĝ, h ← h − (1 − β₂)(h − ĥ) [+ ½(1 − β₂)²(h − ĥ)²/(h + δ)],
    m ← m − α(ḡ/b + δm)/(h + δ)."""
    mom = b1 * momentum + (1 - b1) * grad
    d = hess - h_hat
    h_new = hess - (1 - b2) * d
    if correction:
        h_new = h_new + 0.5 * (1 - b2) * (1 - b2) * d * d / (hess + wd)
    m_new = mean - lr * (mom / bias + wd * mean) / (h_new + wd)
    momentum.copy_(mom)
    hess.copy_(h_new)
    mean.copy_(m_new)


def _ivon_fused_update(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    grad: Tensor,
    stat: Tensor,
    hp: Tensor,
) -> None:
    """One IVON update (Price estimate ĥ = N(h + δ)·stat, improved-BLR correction, no clip) as
    one expression, for torch.compile. ``hp`` = (lr, β₁, β₂, δ, N, 1 − β₁^t) as a tensor, so
    that schedulers do not recompile."""
    lr, b1, b2, wd, ess, bias = hp[0], hp[1], hp[2], hp[3], hp[4], hp[5]
    h_hat = stat * (hess + wd) * ess
    _fused_step(mean, momentum, hess, grad, h_hat, lr, b1, b2, wd, bias, correction=True)


def _vogn_fused_update(
    mean: Tensor,
    momentum: Tensor,
    hess: Tensor,
    grad: Tensor,
    h_hat: Tensor,
    hp: Tensor,
) -> None:
    """One VOGN/OGN update (:func:`ivon_step_` with ``correction=False``, no clip) as one
    expression, for torch.compile: h ← β₂h + (1 − β₂)ĥ with ĥ given. ``hp`` = (lr, β₁, β₂, δ,
    1 − β₁^t) as a tensor, so that schedulers do not recompile."""
    lr, b1, b2, wd, bias = hp[0], hp[1], hp[2], hp[3], hp[4]
    _fused_step(mean, momentum, hess, grad, h_hat, lr, b1, b2, wd, bias, correction=False)


def _ivon_fused_draw(noise: Tensor, hess: Tensor, weights: Tensor, hp: Tensor) -> None:
    """σ⊙z in place (``noise`` holds z) and θ = m + σ⊙z in place in ``weights`` (= m);
    ``hp`` = (N, δ)."""
    noise.mul_(torch.rsqrt(hp[0] * (hess + hp[1])))
    weights.add_(noise)


_COMPILED: dict[str, object] = {}
_FUSED_SOURCES = {
    "update": _ivon_fused_update,
    "vogn_update": _vogn_fused_update,
    "draw": _ivon_fused_draw,
}


def compiled(name: str):
    """The torch.compile'd (Inductor: one fused loop per call) version of a fused function,
    compiled on first use (seconds) and shared afterwards.

    If compilation fails (no C++ compiler, a broken Inductor cache, ...), a RuntimeWarning says
    so and the same function runs in eager torch ops from then on: the same formulas, slower,
    and training goes on. Compilation happens before anything is written, so a failed attempt
    leaves its arguments untouched."""
    fn = _COMPILED.get(name)
    if fn is None:
        source = _FUSED_SOURCES[name]
        fn = _with_eager_fallback(name, source, torch.compile(source, dynamic=True, fullgraph=True))
        _COMPILED[name] = fn
    return fn


def _with_eager_fallback(name: str, source, compiled_fn):
    state = {"fn": compiled_fn}

    def call(*args):
        try:
            return state["fn"](*args)
        except Exception as exc:  # only torch.compile's own failures fall back
            if state["fn"] is source or not type(exc).__module__.startswith(
                ("torch._dynamo", "torch._inductor")
            ):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"torch.compile of the fused {name!r} step failed ({type(exc).__name__}: "
                f"{first}); running the same formulas in eager torch ops instead (slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            state["fn"] = source
            return source(*args)

    return call


# ------------------------------------------------------------------- general (m, s)-form, batched
@torch.no_grad()
def diag_gaussian_step_(
    m: Tensor,
    s: Tensor,
    g_hat: Tensor,
    h_hat: Tensor | None,
    *,
    rho: float,
    lr: float | None = None,
    g_avg: Tensor | None = None,
    gamma: float = 1.0,
    delta: float = 0.0,
    eps: float = 0.0,
    sqrt: bool = False,
) -> None:
    r"""The diagonal-Gaussian BLR in (m, s) form with the deep-learning rows' options, in place
    on tensors of any shape (leading dimensions are independent copies: one call updates a batch
    of problems), any floating dtype and device:

    .. math::
        s &\leftarrow (1-\rho)\,s + \rho\,\hat h,\\
        \bar g &\leftarrow (1-\gamma)\,\bar g + \gamma\,(\hat g + \delta m),\\
        m &\leftarrow m - \alpha\,\frac{\bar g}{\phi(s) + \delta + \epsilon},
        \qquad \phi(s) = s\ \text{or}\ \sqrt{s}.

    Rows of the paper's table it covers (Khan & Rue 2023, Table 1): gradient descent and SGD (ρ = 0,
    s = 1, γ = 1), RMSprop (√s, ε), Adam (ρ_t = (1−β₂)/(1−β₂^t), γ_t = (1−β₁)/(1−β₁^t): bias
    correction as rate schedules), OGN and VOGN (s the per-example Hessian average, δ = δ̃ = δ/N),
    Vadam (√s + δ̃). With γ = 1, ε = 0, no square root and α = ρ it is :func:`blr.step` for a
    :class:`~expfam.DiagGaussian` on ℓ̄/N with the prior precision δ folded in (a test checks it).

    Args:
        m: means, updated in place.
        s: the scale vector (precision per unit of ℓ̄/N), updated in place (unless ρ = 0).
        g_hat: ĝ, shaped like ``m``; not modified.
        h_hat: ĥ, shaped like ``m`` (may be None when ρ = 0); not modified.
        rho: ρ ≥ 0, the scale's rate (0 keeps s fixed; usually ρ ≤ 1).
        lr: α > 0, the mean's rate; None means α = ρ.
        g_avg: the gradient average ḡ, updated in place; required when γ ≠ 1 (with γ = 1,
            ḡ = ĝ + δm and no buffer is needed).
        gamma: γ > 0, the rate of ḡ (usually ≤ 1; 1 means no averaging).
        delta: δ ≥ 0, the prior precision (per unit of ℓ̄/N), in numerator and denominator.
        eps: ε ≥ 0, damping added to the denominator.
        sqrt: precondition with √s (square-root scaling) instead of s.

    Raises ValueError naming the argument for mismatched shapes, dtypes or devices and for
    rates out of range, before anything is written.

    Example:
        >>> m, s = torch.zeros(2, 3), torch.ones(2, 3)   # two copies of a 3-d problem
        >>> diag_gaussian_step_(m, s, torch.ones(2, 3), None, rho=0.0, lr=0.1)  # GD
        >>> m[0]
        tensor([-0.1000, -0.1000, -0.1000])
    """
    named = {"s": s, "g_hat": g_hat, "h_hat": h_hat, "g_avg": g_avg}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != m.shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must have the shape of m {tuple(m.shape)}, got {got}")
        if t.dtype != m.dtype or t.device != m.device:
            raise ValueError(
                f"{name} must have m's dtype and device ({m.dtype}, {m.device}), "
                f"got ({t.dtype}, {t.device})"
            )
    rho, gamma = float(rho), float(gamma)
    if not (math.isfinite(rho) and rho >= 0.0):
        raise ValueError(f"rho must be a finite number ≥ 0, got {rho}")
    alpha = rho if lr is None else float(lr)
    if not alpha > 0:
        raise ValueError(f"lr must be positive (or rho > 0 when lr is None), got {alpha}")
    if not (math.isfinite(gamma) and gamma > 0.0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    if gamma != 1.0 and g_avg is None:
        raise ValueError("gamma ≠ 1 needs g_avg (the gradient average buffer)")
    if rho > 0 and h_hat is None:
        raise ValueError("rho > 0 needs h_hat")
    if delta < 0 or eps < 0:
        raise ValueError(f"delta and eps must be ≥ 0, got delta={delta}, eps={eps}")
    if rho > 0:
        s.lerp_(h_hat, rho)
    direction = g_hat + delta * m if delta else g_hat
    if g_avg is not None:
        g_avg.lerp_(direction, gamma)
        direction = g_avg
    denom = s.sqrt() if sqrt else s.clone()
    if delta or eps:
        denom.add_(delta + eps)
    m.addcdiv_(direction, denom, value=-alpha)
