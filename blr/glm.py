r"""Generalized linear models: expectations under a Gaussian by 1-D quadrature.

For a loss ℓ(θ) = c·Σ_i ℓ(y_i, a_i) of the linear predictors a = Xθ and q = N(m, Σ), each
a_i = x_iᵀθ is a 1-D Gaussian, a_i ~ N(x_iᵀm, x_iᵀΣx_i), so Bonnet's and Price's theorems
(Opper & Archambeau 2009; docs/concepts.md) reduce the d-dimensional expectations to n
one-dimensional ones:

.. math::
    \mathbb{E}_q[\ell] = c\sum_i \mathbb{E}[\ell(y_i, a_i)],\qquad
    \mathbb{E}_q[\nabla\ell] = c\,X^\top\mathbb{E}[\ell'(y, a)],\qquad
    \mathbb{E}_q[\nabla^2\ell] = c\,X^\top \operatorname{diag}(\mathbb{E}[\ell''(y, a)])\,X,

each E[f(a_i)] = Σ_k w_k f(x_iᵀm + σ_i z_k), σ_i² = x_iᵀΣx_i, with a rule (z_k, w_k) for
N(0, 1) from :func:`normal_quadrature`. The quadrature error depends on σ_i:

- ``"hermite"`` (Gauss–Hermite, K points): exact for polynomials of degree ≤ 2K − 1 (the
  Gaussian link) and excellent for eᵃ (Poisson), but slow for the logistic loss once σ_i ≫ 1,
  because σ(a) has poles at a = ±iπ: with K = 32 the relative error of E[σ'(a)] is ~1e-12 at
  σ_i = 1, ~1e-4 at σ_i = 3 and ~4e-2 at σ_i = 10;
- ``"trapezoid"`` (K equispaced points on [−8, 8], Gaussian weights): error ≈ exp(−2π²/(hσ_i)),
  h = 16/(K − 1), for the logistic loss (≤ 2e-12 up to σ_i = 10 and ~6e-8 at σ_i = 15 with
  K = 256) plus the truncation at |z| = 8 (~1e-15 for bounded integrands such as ℓ' and ℓ'',
  4e-12 for E[z⁴], ~Φ(−(8 − σ_i)) for eᵃ, hence Gauss–Hermite for Poisson).

Posteriors of logistic regression on well-separated data have large σ_i (up to 10 on the
breast-cancer data at the optimum), hence the trapezoid default for the logistic loss.

:class:`GLMQuadrature` is the resulting deterministic, exact-in-expectation (up to that error)
estimator of ∇_μE_q[ℓ]; :func:`laplace` is Laplace's method for the same models (Khan & Rue
2023, Table 1 row 12).

>>> import torch, expfam
>>> from blr.glm import GLMQuadrature, laplace
>>> X = torch.tensor([[1.0, -1.0], [1.0, 0.5], [1.0, 2.0]], dtype=torch.float64)
>>> y = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
>>> fam, post = expfam.FullGaussian(), laplace(X, y, 1.0)   # N(θ*, [∇²ℓ̄(θ*)]⁻¹)
>>> fam.to_moments(post)[0]
tensor([0.1622, 0.8114], dtype=torch.float64)
>>> GLMQuadrature(X, y, "logistic").predict(fam, post)   # E_q[σ(xᵢᵀθ)] per example
tensor([0.3740, 0.6203, 0.7736], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from blr.curvature import Likelihood, resolve
from blr.estimators import Estimate, Estimator
from blr.quadrature import RULES, normal_quadrature
from expfam import DiagGaussian, FullGaussian, FullNat, GaussianLike

__all__ = ["GLMQuadrature", "laplace"]

LinkLoss = Callable[[Tensor, Tensor], Tensor]
_SUPPORTED = ("bernoulli", "poisson", "gaussian", "mse", "callable")  # one output per example


def _likelihood(link: str | Likelihood | LinkLoss) -> Likelihood:
    """The likelihood of ``link``: a name of :data:`blr.curvature.NAMES` with one output per
    example, a :class:`~blr.curvature.Likelihood` or an elementwise callable ℓ(y, a)."""
    return resolve(link, supported=_SUPPORTED, arg="link")


def _as_data(X, y, lik: Likelihood, link) -> tuple[Tensor, Tensor]:
    X = torch.as_tensor(X)
    if not X.is_floating_point():
        X = X.to(torch.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (n, d) matrix, got shape {tuple(X.shape)}")
    y = torch.as_tensor(y).to(X.dtype)
    if y.shape != X.shape[:1]:
        raise ValueError(
            f"y must have shape (n,) = ({X.shape[0]},) to match X, got {tuple(y.shape)}"
        )
    if not torch.isfinite(X).all():
        raise ValueError("X must be finite")
    return X, lik.check_targets(y, context=f" for link={link!r}")


def _check_scale(scale: float) -> float:
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    return value


_DEFAULT_RULE = {
    "bernoulli": "trapezoid",
    "poisson": "hermite",
    "gaussian": "hermite",
    "mse": "hermite",
}
_DEFAULT_POINTS = {"hermite": 32, "trapezoid": 256}


# ---------------------------------------------------------------------------- the estimator
class GLMQuadrature(Estimator):
    r"""Exact-in-expectation Bonnet/Price estimator for a GLM loss ℓ(θ) = c·Σ_i ℓ(y_i, x_iᵀθ):

    .. math::
        a_i \sim \mathcal N(x_i^\top m,\ x_i^\top\Sigma x_i),\quad
        \hat g = c\,X^\top\mathbb{E}[\ell'(y,a)],\quad
        \hat H = c\,X^\top\operatorname{diag}(\mathbb{E}[\ell''(y,a)])X\ \
        \big(\text{diagonal family: } c\,(X\odot X)^\top\mathbb{E}[\ell''(y,a)]\big),\\
        \nabla_\mu\mathbb{E}_q[\ell] = (\hat g - \hat H m,\ \tfrac12\hat H),

    with every 1-D expectation by a K-point quadrature rule for N(0, 1) (module docstring for
    its error). Deterministic: the fixed points of the BLR with this estimator meet the
    variational optimality conditions E_q[∇ℓ̄] = 0, S = E_q[∇²ℓ̄] (the BLR's fixed points) up to the
    quadrature error.

    The estimator carries the data, so the ``loss`` argument that :func:`blr.step` and
    :class:`blr.BLR` pass to it is ignored (pass None). Works for
    :class:`~expfam.FullGaussian`, :class:`~expfam.DiagGaussian` (any batch shape) and other
    Gaussian families (through their reparameterization, e.g. the fixed-covariance one, where
    only ĝ is used).

    Args:
        X: the design matrix ``(n, d)`` (include a column of ones for a bias).
        y: the targets ``(n,)``.
        link: the per-example loss ℓ(y, a), the negative log-likelihood up to terms constant in
            θ, a likelihood of :mod:`blr.curvature` with one output (any name of
            :data:`blr.curvature.NAMES` for it, or a :class:`~blr.curvature.Likelihood`):
            ``"logistic"`` (the Bernoulli: softplus(a) − y·a, y ∈ {0, 1}), ``"poisson"``
            (eᵃ − y·a, log link), ``"gaussian"`` (½(y − a)², unit noise variance; use ``scale``
            = 1/σ²), ``"mse"`` ((y − a)²), or an elementwise callable ``ℓ(y, a)`` (tensors
            broadcast to the shape of ``a``; ℓ' and ℓ'' by autograd).
        rule: ``"hermite"`` or ``"trapezoid"`` (:func:`normal_quadrature`); None picks the
            trapezoid rule for the Bernoulli and callables (robust when σ_i = sd(a_i) ≫ 1),
            Gauss–Hermite for the Poisson and the Gaussian (exact or nearly so).
        n_points: K; None means 256 for the trapezoid rule, 32 for Gauss–Hermite.
        scale: c, e.g. N/M for a minibatch of M out of N examples, or 1/σ² for ``"gaussian"``.

    Example:
        >>> import torch, expfam, blr
        >>> from blr.glm import GLMQuadrature
        >>> X = torch.tensor([[1.0, -1.0], [1.0, 0.5], [1.0, 2.0]], dtype=torch.float64)
        >>> y = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
        >>> fam, est = expfam.FullGaussian(), GLMQuadrature(X, y, "logistic")
        >>> prior = fam.from_moments(torch.zeros(2, dtype=torch.float64),
        ...                          torch.eye(2, dtype=torch.float64))
        >>> opt = blr.BLR(fam, prior, None, estimator=est, rho=0.5, prior=prior)
        >>> values = [float(opt.step()) for _ in range(60)]
        >>> round(values[-1], 6)   # E_q[ℓ] + KL(q ‖ p₀) at the optimum
        1.852055
        >>> g, h = fam.gh_from_mean_grad(opt.posterior, est(fam, opt.posterior, None).grad)
        >>> m, S = fam.to_moments(opt.posterior)
        >>> bool(torch.allclose(g + m, torch.zeros(2, dtype=torch.float64), atol=1e-12))
        True
        >>> bool(torch.allclose(S, h + torch.eye(2, dtype=torch.float64), atol=1e-12))
        True
    """

    def __init__(
        self,
        X,
        y,
        link: str | Likelihood | LinkLoss = "logistic",
        *,
        rule: str | None = None,
        n_points: int | None = None,
        scale: float = 1.0,
    ) -> None:
        self.likelihood = _likelihood(link)
        self.link = link
        self.X, self.y = _as_data(X, y, self.likelihood, link)
        if rule is None:
            rule = _DEFAULT_RULE.get(self.likelihood.name, "trapezoid")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if n_points is None:
            n_points = _DEFAULT_POINTS[rule]
        self.nodes, self.weights = normal_quadrature(n_points, rule)
        self.rule, self.n_points = rule, int(n_points)
        self.scale = _check_scale(scale)

    def __repr__(self) -> str:
        link = self.link if isinstance(self.link, str) else getattr(self.link, "__name__", "fn")
        n, d = self.X.shape
        return (
            f"GLMQuadrature(n={n}, d={d}, link={link!r}, rule={self.rule!r}, "
            f"n_points={self.n_points}, scale={self.scale:g})"
        )

    # a = Xθ under q: means and variances
    def marginals(self, family: GaussianLike, nat: tuple, X: Tensor | None = None):
        """Mean and variance of the linear predictors a = Xθ under q, each ``(*batch, n)``
        (``X`` defaults to the estimator's design matrix).

        Example:
            >>> import torch, expfam
            >>> fam, X = expfam.FullGaussian(), torch.eye(2, dtype=torch.float64)
            >>> est = GLMQuadrature(X, torch.tensor([1.0, 0.0], dtype=torch.float64))
            >>> nat = fam.from_moments(torch.tensor([1.0, 2.0], dtype=torch.float64),
            ...                        torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)))
            >>> mean, var = est.marginals(fam, nat, torch.tensor([[1.0, 1.0]]))  # a = θ₁ + θ₂
            >>> mean.tolist(), var.tolist()   # mean 1 + 2, variance 1/1 + 1/4
            ([3.0], [1.25])
        """
        if not isinstance(family, GaussianLike):
            raise TypeError(f"family must be a Gaussian family, got {family.name}")
        like = nat[0]
        X = (self.X if X is None else torch.as_tensor(X)).to(dtype=like.dtype, device=like.device)
        d = like.shape[-1]
        if X.ndim != 2 or X.shape[-1] != d:
            raise ValueError(
                f"X must have shape (n, {d}) to match the posterior's dimension, got "
                f"{tuple(X.shape)}"
            )
        if isinstance(family, FullGaussian):
            m, chol = family.mean_and_chol(nat)  # Σ = L⁻ᵀL⁻¹ ⇒ xᵀΣx = ‖L⁻¹x‖²
            rhs = X.mT.expand(*chol.shape[:-2], d, X.shape[0])
            var = torch.linalg.solve_triangular(chol, rhs, upper=False).square().sum(-2)
        elif isinstance(family, DiagGaussian):
            m = family.location(nat)
            var = (-0.5 / nat.lam2) @ X.square().mT
        else:  # rows r_j = Σ^{1/2}e_j of any square root: Σ = Σ_j r_j r_jᵀ
            m = family.location(nat)
            batch = m.shape[:-1]
            eye = torch.eye(d, dtype=m.dtype, device=m.device).reshape(d, *([1] * len(batch)), d)
            roots = family.reparam(nat, eye.expand(d, *batch, d)) - m
            var = (roots @ X.mT).square().sum(0)
        return m @ X.mT, var

    def _expect(self, mean: Tensor, var: Tensor, order: int) -> tuple[Tensor, ...]:
        """E[ℓ(y_i, a_i)] (and E[ℓ'], E[ℓ''] for order 2), a_i ~ N(mean_i, var_i)."""
        z = self.nodes.to(mean)
        w = self.weights.to(mean)
        a = mean.unsqueeze(-1) + var.clamp_min(0).sqrt().unsqueeze(-1) * z
        y = self.y.to(mean).unsqueeze(-1)
        return tuple((t * w).sum(-1) for t in self.likelihood.derivatives(a, y, order))

    def expected_loss(self, family: GaussianLike, nat: tuple) -> Tensor:
        """E_q[ℓ] = c·Σ_i E[ℓ(y_i, a_i)], shape ``batch_shape`` (no derivatives).

        Example (squared error: E[½(y − a)²] = ½(y − E a)² + ½Var a):
            >>> import torch, expfam
            >>> X = torch.eye(2, dtype=torch.float64)
            >>> est = GLMQuadrature(X, torch.tensor([1.0, 0.0], dtype=torch.float64), "gaussian")
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.zeros(2, dtype=torch.float64),
            ...                        torch.ones(2, dtype=torch.float64))
            >>> est.expected_loss(fam, nat)
            tensor(1.5000, dtype=torch.float64)
        """
        (e0,) = self._expect(*self.marginals(family, nat), 0)
        return self.scale * e0.sum(-1)

    def predict(self, family: GaussianLike, nat: tuple, X: Tensor | None = None) -> Tensor:
        """The posterior-predictive mean response E_q[h(xᵀθ)] per row of ``X`` (h⁻¹ the link,
        :meth:`blr.curvature.Likelihood.mean`: σ for ``"logistic"``, exp for ``"poisson"``,
        identity for ``"gaussian"``), by the same quadrature; built-in links only.

        Example:
            >>> import torch, expfam
            >>> X = torch.eye(2, dtype=torch.float64)
            >>> est = GLMQuadrature(X, torch.tensor([1.0, 0.0], dtype=torch.float64), "logistic")
            >>> fam = expfam.DiagGaussian()
            >>> nat = fam.from_moments(torch.zeros(2, dtype=torch.float64),
            ...                        torch.ones(2, dtype=torch.float64))
            >>> est.predict(fam, nat)   # E[σ(a)] = ½ for a symmetric about 0
            tensor([0.5000, 0.5000], dtype=torch.float64)
        """
        if not self.likelihood.has_mean:
            raise TypeError("predict needs a built-in link; a callable link has no known mean")
        mean, var = self.marginals(family, nat, X)
        z, w = self.nodes.to(mean), self.weights.to(mean)
        a = mean.unsqueeze(-1) + var.clamp_min(0).sqrt().unsqueeze(-1) * z
        return (self.likelihood.mean(a) * w).sum(-1)

    def __call__(self, family, nat, loss=None, *, generator=None) -> Estimate:
        """∇_μE_q[ℓ] and E_q[ℓ] at q_λ; ``loss`` and ``generator`` are ignored."""
        mean, var = self.marginals(family, nat)
        e0, e1, e2 = self._expect(mean, var, 2)
        X, c = self.X.to(mean), self.scale
        g_hat = c * (e1 @ X)
        kind = family.hessian_event_ndim
        if kind == 2:
            h_hat = c * ((X.mT * e2.unsqueeze(-2)) @ X)
            h_hat = 0.5 * (h_hat + h_hat.mT)
        elif kind == 1:
            h_hat = c * (e2 @ X.square())
        else:
            h_hat = None
        return Estimate(family.mean_grad_from_gh(nat, g_hat, h_hat), c * e0.sum(-1))


# ---------------------------------------------------------------------------- Laplace
def laplace(
    X,
    y,
    prior_prec: float | Tensor = 1.0,
    link: str | Likelihood | LinkLoss = "logistic",
    *,
    scale: float = 1.0,
    tol: float = 1e-20,
    max_iter: int = 100,
) -> FullNat:
    r"""Laplace's method (Khan & Rue 2023, Table 1 row 12) for a GLM with a zero-mean
    Gaussian prior:

    .. math::
        \bar\ell(\theta) = c\sum_i\ell(y_i, x_i^\top\theta) + \tfrac12\theta^\top S_0\theta,\quad
        \theta_* = \arg\min\bar\ell,\quad
        q = \mathcal N\big(\theta_*,\ [\nabla^2\bar\ell(\theta_*)]^{-1}\big),\quad
        \nabla^2\bar\ell = c\,X^\top\operatorname{diag}(\ell''(y, X\theta))X + S_0.

    θ_* by Newton's method with a backtracking line search, from θ = 0, stopped when the Newton
    decrement ½ gᵀ(∇²ℓ̄)⁻¹g falls below ``tol``·max(1, |ℓ̄|) (one more full step is then
    taken, so the gradient is at round-off level). This is
    the fixed point of the BLR with the delta method (:class:`blr.Delta`), reached directly.

    Args:
        X: ``(n, d)`` design matrix.
        y: ``(n,)`` targets.
        prior_prec: S₀, a positive number (S₀ = δI), a ``(d,)`` vector (diagonal) or a symmetric
            positive-definite ``(d, d)`` matrix.
        link: as in :class:`GLMQuadrature`.
        scale: c.
        tol: relative stopping threshold on the Newton decrement.
        max_iter: at most this many Newton steps (RuntimeError if not converged).

    Returns:
        λ of the Laplace approximation, a :class:`~expfam.FullNat` (S = ∇²ℓ̄(θ_*)).

    Example:
        >>> import torch, expfam
        >>> from blr.glm import laplace
        >>> X = torch.tensor([[1.0], [1.0], [1.0]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> m, S = expfam.FullGaussian().to_moments(laplace(X, y, 1.0, "gaussian"))
        >>> m, S   # conjugate: the exact posterior N(Σy/(n + 1), 1/(n + 1))
        (tensor([1.5000], dtype=torch.float64), tensor([[4.]], dtype=torch.float64))
    """
    lik = _likelihood(link)
    X, y = _as_data(X, y, lik, link)
    c = _check_scale(scale)
    d = X.shape[1]
    prec0 = torch.as_tensor(prior_prec, dtype=X.dtype)
    if prec0.ndim == 0:
        prec0 = prec0 * torch.eye(d, dtype=X.dtype)
    elif prec0.ndim == 1 and prec0.shape == (d,):
        prec0 = torch.diag(prec0)
    elif prec0.shape != (d, d):
        raise ValueError(
            f"prior_prec must be a number, a ({d},) vector or a ({d}, {d}) matrix, got shape "
            f"{tuple(prec0.shape)}"
        )
    if torch.linalg.cholesky_ex(0.5 * (prec0 + prec0.mT))[1] != 0:
        raise ValueError("prior_prec must be positive definite")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be ≥ 1, got {max_iter}")

    def total(theta: Tensor) -> Tensor:
        return c * lik.derivatives(X @ theta, y, 0)[0].sum() + 0.5 * theta @ (prec0 @ theta)

    theta = torch.zeros(d, dtype=X.dtype)
    for _ in range(int(max_iter)):
        value, d1, d2 = lik.derivatives(X @ theta, y, 2)
        grad = c * (d1 @ X) + prec0 @ theta
        hess = c * ((X.mT * d2) @ X) + prec0
        chol, info = torch.linalg.cholesky_ex(0.5 * (hess + hess.mT))
        if info != 0:
            raise ValueError(
                "the Hessian of the loss is not positive definite at the current iterate; "
                "Laplace's method needs a loss convex in a (ℓ'' ≥ 0) or a stronger prior_prec"
            )
        step = -torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
        decrement = -0.5 * float(grad @ step)
        f0 = float(c * value.sum() + 0.5 * theta @ (prec0 @ theta))
        if decrement <= tol * max(1.0, abs(f0)):
            theta = theta + step
            break
        t = 1.0  # backtracking (Armijo, slope gᵀp = −2·decrement)
        while t > 1e-10 and float(total(theta + t * step)) > f0 - 0.5 * t * decrement:
            t *= 0.5
        if t <= 1e-10:  # no decrease: at round-off level, or a non-convex loss
            if decrement <= 1e-8 * max(1.0, abs(f0)):
                theta = theta + step
                break
            raise ValueError(
                "laplace: the line search found no decrease of the loss; is the link convex?"
            )
        theta = theta + t * step
    else:
        raise RuntimeError(
            f"laplace: Newton's method did not converge in max_iter = {max_iter} steps"
        )
    d2 = lik.derivatives(X @ theta, y, 2)[2]
    hess = c * ((X.mT * d2) @ X) + prec0
    return FullGaussian().from_moments(theta, 0.5 * (hess + hess.mT))
