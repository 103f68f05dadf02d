r"""The memory-perturbation equation (MPE; Nickl, Xu, Tailor, Möllenhoff & Khan, NeurIPS 2023):
how a trained Gaussian posterior would move if some training examples were removed, without
retraining.

**The equation.** At a fixed point of the BLR with a conjugate prior λ₀, the posterior's natural
parameter is the prior plus one "site" per example (its memory of that example),

.. math::
    \lambda_* = \lambda_0 - \sum_j \nabla_\mu\mathbb{E}_{q_*}[\ell_j].

Retraining without the examples in G gives λ_{\G} = λ₀ − Σ_{j∉G} ∇_μE_{q_{\G}}[ℓ_j]. Keeping the
remaining sites at their values under q* (exact when they do not depend on q, as for conjugate
models) gives the MPE: removing examples adds their sites back,

.. math::
    \lambda_{\setminus G} \approx \lambda_* + \sum_{i\in G}\nabla_\mu\mathbb{E}_{q_*}[\ell_i].

**Gaussian posteriors, delta method.** For ℓ_i(θ) = ℓ(y_i, f_i(θ)) with outputs f_i ∈ ℝᵏ,
J_i = ∂f_i/∂θ, the error e_i = ∂ℓ/∂f and the output Hessian Λ_i = ∂²ℓ/∂f² at the mean m, the
delta-method site is ∇_μE_q[ℓ_i] ≈ (g_i − H_i m, ½H_i) with g_i = J_iᵀe_i and the Gauss–Newton
H_i = J_iᵀΛ_iJ_i. With λ = (Sm, −½S) the MPE reads

.. math::
    S_{\setminus G} = S - \sum_{i\in G} J_i^\top\Lambda_i J_i,\qquad
    m_{\setminus G} - m = S_{\setminus G}^{-1}\sum_{i\in G} J_i^\top e_i,

one Newton step from m on the objective without G. For a single example the push-through
identity S_{\i}⁻¹J_iᵀ = S⁻¹J_iᵀ(I − Λ_iV_i)⁻¹, with the prediction variance
V_i = J_i S⁻¹ J_iᵀ, gives

.. math::
    m_{\setminus i} - m = S^{-1}J_i^\top (I - \Lambda_i V_i)^{-1} e_i,\qquad
    f_i(m_{\setminus i}) - f_i(m) \approx V_i (I - \Lambda_i V_i)^{-1} e_i
    \ \ \Big(= \frac{e_i v_i}{1 - \Lambda_i v_i}\ \text{for one output}\Big),

and at first order (S_{\i} ≈ S) the familiar "sensitivity = prediction error × prediction
variance", e_i v_i. ``precision="removed"`` (the default) uses S_{\G}, i.e. the MPE as written
above, exact for linear-Gaussian regression; ``precision="full"`` keeps S (first order). For a
diagonal Gaussian the sites are diagonal too, (g_i − h_i⊙m, ½h_i) with h_i = diag(J_iᵀΛ_iJ_i), so
S_{\G} = S − Σ_G h_i elementwise and m_{\G} − m = (Σ_G g_i) / S_{\G}.

**Where the posterior comes from.** :func:`blr.glm.laplace` (a :class:`~expfam.FullNat`), any
``(m, prec)`` pair with a ``(D,)`` diagonal or ``(D, D)`` full precision, or an optimizer of
:mod:`blr.optim` with a diagonal posterior in IVON's units (IVON, VON, VOGN, OGN): mean m = state
``mean`` and precision S = N(h + δ) with h = state ``hess``, N = ``ess``, δ = ``weight_decay``
(:func:`optimizer_posterior`). S is then the precision for the objective Σ_i ℓ_i + ½Nδ‖θ‖², so
ℓ_i is the per-example loss whose minibatch MEAN was back-propagated during training. For such
variational posteriors the delta method stands in for the expectations: gradients and
Gauss–Newton matrices are taken at the mean m, which need not be a stationary point.

Entry points: :func:`glm_sensitivity` / :func:`glm_removal` (GLMs: ``"logistic"``,
``"poisson"``, ``"gaussian"``, ``"multinomial"`` or a callable ℓ(y, a)),
:func:`module_sensitivity` / :func:`module_removal` (an ``nn.Module`` linearized at the mean,
Jacobians by ``torch.func``) and the model-free core :func:`mpe_sensitivity` / :func:`mpe_removal`.
The likelihoods (e_i, Λ_i, the mean response and the Jacobians) come from :mod:`blr.curvature`:
``link=`` and ``loss=`` take any name of :data:`blr.curvature.NAMES` (``"logistic"`` and
``"bce_with_logits"`` are both the Bernoulli, ``"multinomial"`` and ``"cross_entropy"`` both the
categorical). The accepted values of ``precision=`` are the tuple ``PRECISIONS``.

Example (which examples would move a Bayesian linear regression most):

>>> import torch
>>> from blr.glm import laplace
>>> from blr.influence import PRECISIONS, glm_removal, glm_sensitivity
>>> PRECISIONS
('removed', 'full')
>>> X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
>>> y = torch.tensor([0.0, 1.0, 2.0, 9.0], dtype=torch.float64)
>>> post = laplace(X, y, 1.0, link="gaussian")
>>> glm_sensitivity(X, y, post, link="gaussian").score.argmax().item()   # the outlier
3
>>> glm_removal(X, y, post, [3], link="gaussian").shift.shape
torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from blr.curvature import Likelihood, ggn, jacobians, resolve
from blr.curvature.likelihoods import ALL, FACTORED
from blr.glm import LinkLoss
from expfam import DiagGaussian, DiagNat, FullGaussian, FullNat

Precision = Literal["removed", "full"]
PRECISIONS = ("removed", "full")


class Sensitivity(NamedTuple):
    """Per-example MPE estimates for n examples with k outputs each and D parameters.

    Attributes:
        param_shift: ``(n, D)``, m_{\\i} − m, the mean's move if example i were removed.
        pred_shift: ``(n, k)``, f_i(m_{\\i}) − f_i(m) (linearized), the change of the example's own
            output (logits for classification, the prediction for regression).
        response_shift: ``(n, k)``, the first-order change of the mean response, (∂h/∂f)·pred_shift
            with h the inverse link (probabilities for classification), or None for a callable
            link.
        error: ``(n, k)``, e_i = ∂ℓ_i/∂f at m (σ(f) − y for the logistic loss).
        variance: ``(n, k, k)``, V_i = J_i S⁻¹ J_iᵀ, the linearized prediction (co)variance under
            the posterior.
        score: ``(n,)``, the MPE sensitivity ‖pred_shift_i‖₂ (|e_i|v_i/(1 − Λ_iv_i), or |e_i|v_i
            with ``precision="full"``, for one output).
    """

    param_shift: Tensor
    pred_shift: Tensor
    response_shift: Tensor | None
    error: Tensor
    variance: Tensor
    score: Tensor


class Removal(NamedTuple):
    """MPE estimate of the posterior after removing a group G of examples.

    Attributes:
        mean: m_{\\G}, the estimated new mean ``(D,)``.
        prec: S_{\\G} = S − Σ_G sites (``precision="removed"``) or S (``"full"``), ``(D,)`` or
            ``(D, D)`` as the posterior's precision.
        shift: m_{\\G} − m.
        test_loss: the mean per-example loss on the test set at m_{\\G} (None without a test set).
        test_loss_before: the same at m.
    """

    mean: Tensor
    prec: Tensor
    shift: Tensor
    test_loss: Tensor | None
    test_loss_before: Tensor | None


# ---------------------------------------------------------------------------- posterior and checks
class _Posterior:
    """(m, S) with S diagonal ``(D,)`` or full ``(D, D)`` (its Cholesky factor kept)."""

    def __init__(self, m: Tensor, prec: Tensor, name: str) -> None:
        if not (isinstance(m, Tensor) and isinstance(prec, Tensor)):
            raise TypeError(f"{name} must hold tensors (m, prec)")
        if not m.is_floating_point():
            raise TypeError(f"{name}: the mean must be a floating-point tensor, got {m.dtype}")
        if m.ndim != 1:
            raise ValueError(f"{name}: the mean must be a (D,) vector, got shape {tuple(m.shape)}")
        d = m.shape[0]
        prec = prec.to(m)
        if prec.shape not in ((d,), (d, d)):
            raise ValueError(
                f"{name}: the precision must have shape ({d},) (diagonal) or ({d}, {d}) (full) "
                f"to match the mean, got {tuple(prec.shape)}"
            )
        if not (torch.isfinite(m).all() and torch.isfinite(prec).all()):
            raise ValueError(f"{name}: the mean and precision must be finite")
        self.m, self.prec, self.diag = m.detach(), prec.detach(), prec.ndim == 1
        if self.diag:
            if not (prec > 0).all():
                raise ValueError(
                    f"{name}: the diagonal precision must be > 0, got min {prec.min().item():.6g}"
                )
            self.chol = None
        else:
            tol = math.sqrt(torch.finfo(prec.dtype).eps) * float(prec.abs().max())
            if float((prec - prec.mT).abs().max()) > tol:
                raise ValueError(f"{name}: the precision matrix must be symmetric")
            self.prec = 0.5 * (self.prec + self.prec.mT)
            chol, info = torch.linalg.cholesky_ex(self.prec)
            if info != 0:
                raise ValueError(f"{name}: the precision matrix must be positive definite")
            self.chol = chol

    @property
    def dim(self) -> int:
        return self.m.shape[0]

    def solve(self, b: Tensor) -> Tensor:
        """S⁻¹b for b of shape ``(..., D)`` (rows)."""
        if self.diag:
            return b / self.prec
        flat = b.reshape(-1, self.dim).mT
        return torch.cholesky_solve(flat, self.chol).mT.reshape(b.shape)


def _as_posterior(posterior: Any, name: str = "posterior") -> _Posterior:
    if isinstance(posterior, FullNat):
        m, prec = FullGaussian().to_moments(posterior)
        return _Posterior(m, prec, name)
    if isinstance(posterior, DiagNat):
        m, prec = DiagGaussian().to_moments(posterior)
        return _Posterior(m, prec, name)
    if isinstance(posterior, (tuple, list)) and len(posterior) == 2:
        m, prec = posterior
        return _Posterior(torch.as_tensor(m), torch.as_tensor(prec), name)
    raise TypeError(
        f"{name} must be a FullNat, a DiagNat or a pair (m, prec), got {type(posterior).__name__}"
    )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer ≥ 1, got {chunk_size}")
    return int(chunk_size)


def _remove_index(remove: Any, n: int) -> Tensor:
    """Indices of the removed examples from indices or a boolean mask over n examples."""
    idx = torch.as_tensor(remove)
    if idx.numel() == 0:
        raise ValueError("remove selects no example")
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise ValueError(f"remove as a mask must have shape ({n},), got {tuple(idx.shape)}")
        idx = torch.nonzero(idx).flatten()
    elif idx.is_floating_point() or idx.is_complex() or idx.ndim != 1:
        raise ValueError("remove must be a 1-D sequence of integer indices or a boolean mask")
    if idx.numel() == 0:
        raise ValueError("remove selects no example (the mask is all False)")
    if (idx < -n).any() or (idx >= n).any():
        raise ValueError(f"remove has indices outside [0, {n}) (got {idx.min()}..{idx.max()})")
    idx = idx % n
    if torch.unique(idx).numel() != idx.numel():
        raise ValueError("remove has duplicate indices")
    return idx


# ---------------------------------------------------------------------------- the core
def _chunk_sensitivity(
    J: Tensor, e: Tensor, lam: Tensor, post: _Posterior, precision: str, offset: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(param_shift, pred_shift, variance) for one chunk of examples."""
    sinv_jt = post.solve(J)  # (n, k, D): rows of S⁻¹J_iᵀ
    V = sinv_jt @ J.mT
    V = 0.5 * (V + V.mT)
    if post.diag and precision == "removed":
        site = ggn(J, lam, diagonal=True, per_example=True)  # diag(J_iᵀΛ_iJ_i)
        left = post.prec - site
        bad = (left <= 0).any(-1)
        if bad.any():
            _raise_not_pd(torch.nonzero(bad).flatten() + offset)
        param = torch.einsum("nkd,nk->nd", J, e) / left
        pred = torch.einsum("nkd,nd->nk", J, param)
        return param, pred, V
    if precision == "removed":
        eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device)
        lam_v = lam @ V
        top = torch.linalg.eigvals(lam_v).real.amax(-1)  # S_{\i} ≻ 0 ⟺ eig(ΛV) < 1 (Λ ⪰ 0)
        bad = ~(top < 1 - 1e-12)
        if bad.any():
            _raise_not_pd(torch.nonzero(bad).flatten() + offset)
        u = torch.linalg.solve(eye - lam_v, e.unsqueeze(-1)).squeeze(-1)
    else:
        u = e
    param = torch.einsum("nkd,nk->nd", sinv_jt, u)
    pred = (V @ u.unsqueeze(-1)).squeeze(-1)
    return param, pred, V


def _raise_not_pd(which: Tensor) -> None:
    raise ValueError(
        "precision='removed': the precision without example(s) "
        f"{which[:5].tolist()} is not positive definite (the posterior's precision is not the "
        "prior plus the examples' Gauss–Newton curvature at the mean, e.g. an IVON estimate); "
        "pass precision='full'"
    )


def _sensitivity(
    chunks: Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]],
    post: _Posterior,
    precision: str,
) -> Sensitivity:
    params, preds, resps, errs, vars_ = [], [], [], [], []
    offset = 0
    for J, e, lam, dh in chunks:
        param, pred, V = _chunk_sensitivity(J, e, lam, post, precision, offset)
        offset += J.shape[0]
        params.append(param)
        preds.append(pred)
        errs.append(e)
        vars_.append(V)
        resps.append(None if dh is None else (dh @ pred.unsqueeze(-1)).squeeze(-1))
    pred = torch.cat(preds)
    resp = None if any(r is None for r in resps) else torch.cat(resps)
    return Sensitivity(
        torch.cat(params), pred, resp, torch.cat(errs), torch.cat(vars_), pred.norm(dim=-1)
    )


def _removal(
    chunks: Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]],
    post: _Posterior,
    precision: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(m_{\\G}, S_{\\G}, m_{\\G} − m) from the removed examples' (J, e, Λ)."""
    grad = torch.zeros_like(post.m)
    site = torch.zeros_like(post.prec)
    for J, e, lam, _ in chunks:
        grad += torch.einsum("nkd,nk->d", J, e)
        if precision == "removed":
            site += ggn(J, lam, diagonal=post.diag)
    if precision == "full":
        shift = post.solve(grad)
        return post.m + shift, post.prec, shift
    if post.diag:
        prec = post.prec - site
        if not (prec > 0).all():
            _raise_not_pd_group()
        shift = grad / prec
    else:
        prec = post.prec - 0.5 * (site + site.mT)
        chol, info = torch.linalg.cholesky_ex(prec)
        if info != 0:
            _raise_not_pd_group()
        shift = torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
    return post.m + shift, prec, shift


def _raise_not_pd_group() -> None:
    raise ValueError(
        "precision='removed': the precision without the removed examples is not positive "
        "definite (the posterior's precision is not the prior plus the examples' Gauss–Newton "
        "curvature at the mean); pass precision='full'"
    )


def _check_core(jac: Tensor, error: Tensor, out_hess: Tensor, dim: int) -> None:
    if jac.ndim != 3 or jac.shape[-1] != dim:
        raise ValueError(
            f"jac must have shape (n, k, {dim}) to match the posterior, got {tuple(jac.shape)}"
        )
    n, k = jac.shape[:2]
    if error.shape != (n, k):
        raise ValueError(f"error must have shape ({n}, {k}) to match jac, got {tuple(error.shape)}")
    if out_hess.shape != (n, k, k):
        raise ValueError(
            f"out_hess must have shape ({n}, {k}, {k}) to match jac, got {tuple(out_hess.shape)}"
        )
    for name, t in (("jac", jac), ("error", error), ("out_hess", out_hess)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite")


def mpe_sensitivity(
    jac: Tensor,
    error: Tensor,
    out_hess: Tensor,
    posterior: Any,
    *,
    precision: Precision = "removed",
) -> Sensitivity:
    r"""Per-example MPE sensitivities from per-example Jacobians, errors and output Hessians:

    .. math::
        m_{\setminus i} - m = S^{-1}J_i^\top (I - \Lambda_i V_i)^{-1} e_i,\qquad
        \Delta f_i = V_i (I - \Lambda_i V_i)^{-1} e_i,\qquad V_i = J_i S^{-1} J_i^\top

    (``precision="full"``: without the (I − Λ_iV_i)⁻¹; diagonal S with ``"removed"``:
    m_{\i} − m = J_iᵀe_i / (S − diag(J_iᵀΛ_iJ_i))). See the module docstring for the derivation.

    Args:
        jac: J_i = ∂f_i/∂θ at the mean, ``(n, k, D)``.
        error: e_i = ∂ℓ_i/∂f_i, ``(n, k)``.
        out_hess: Λ_i = ∂²ℓ_i/∂f_i² (symmetric, positive semi-definite), ``(n, k, k)``.
        posterior: a :class:`~expfam.FullNat`, a :class:`~expfam.DiagNat` or a pair ``(m, prec)``
            with ``prec`` of shape ``(D,)`` (diagonal) or ``(D, D)``.
        precision: ``"removed"`` (S_{\i}, the MPE itself) or ``"full"`` (S, first order).

    Returns:
        :class:`Sensitivity` (``response_shift`` is None: the link is not known here).

    Example:
        >>> import torch
        >>> from blr.influence import mpe_sensitivity
        >>> X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> y = torch.tensor([0.1, 0.9, 2.2], dtype=torch.float64)
        >>> S = X.T @ X + torch.eye(2, dtype=torch.float64)    # linear-Gaussian posterior
        >>> m = torch.linalg.solve(S, X.T @ y)
        >>> out = mpe_sensitivity(X[:, None, :], (X @ m - y)[:, None],
        ...                       torch.ones(3, 1, 1, dtype=torch.float64), (m, S))
        >>> m0 = torch.linalg.solve(S - torch.outer(X[0], X[0]), X[1:].T @ y[1:])   # retrained
        >>> torch.allclose(out.param_shift[0], m0 - m)     # exact for conjugate models
        True
    """
    _check_precision(precision)
    post = _as_posterior(posterior)
    jac, error, out_hess = (torch.as_tensor(t).to(post.m) for t in (jac, error, out_hess))
    _check_core(jac, error, out_hess, post.dim)
    return _sensitivity(iter([(jac, error, out_hess, None)]), post, precision)


def mpe_removal(
    jac: Tensor,
    error: Tensor,
    out_hess: Tensor,
    posterior: Any,
    *,
    precision: Precision = "removed",
) -> Removal:
    r"""The MPE for removing all the n examples given (the group G) at once:

    .. math::
        S_{\setminus G} = S - \sum_{i\in G} J_i^\top\Lambda_i J_i,\qquad
        m_{\setminus G} = m + S_{\setminus G}^{-1}\sum_{i\in G} J_i^\top e_i

    (diagonal S: the diagonal of the sites; ``precision="full"``: S_{\G} = S).

    Args:
        jac, error, out_hess: as in :func:`mpe_sensitivity`, for the removed examples only.
        posterior: as in :func:`mpe_sensitivity`.
        precision: ``"removed"`` or ``"full"``.

    Returns:
        :class:`Removal` without test losses.

    Example:
        >>> import torch
        >>> from blr.influence import mpe_removal
        >>> X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> y = torch.tensor([0.1, 0.9, 2.2], dtype=torch.float64)
        >>> S = X.T @ X + torch.eye(2, dtype=torch.float64)
        >>> m = torch.linalg.solve(S, X.T @ y)
        >>> out = mpe_removal(X[:2, None, :], (X[:2] @ m - y[:2])[:, None],
        ...                   torch.ones(2, 1, 1, dtype=torch.float64), (m, S))
        >>> S2 = torch.outer(X[2], X[2]) + torch.eye(2, dtype=torch.float64)   # retrained on {2}
        >>> m2 = torch.linalg.solve(S2, X[2] * y[2])
        >>> torch.allclose(out.prec, S2), torch.allclose(out.mean, m2)
        (True, True)
    """
    _check_precision(precision)
    post = _as_posterior(posterior)
    jac, error, out_hess = (torch.as_tensor(t).to(post.m) for t in (jac, error, out_hess))
    _check_core(jac, error, out_hess, post.dim)
    mean, prec, shift = _removal(iter([(jac, error, out_hess, None)]), post, precision)
    return Removal(mean, prec, shift, None, None)


# ---------------------------------------------------------------------------- GLMs
class _GLM:
    """Per-example (J, e, Λ, ∂h/∂f) and losses of a GLM, parameters θ ∈ ℝᵈ (one output) or the
    row-major flattening of W ∈ ℝ^{K×d} (the categorical, ``"multinomial"``, f = Wx)."""

    def __init__(self, link: str | LinkLoss, d_param: int, d: int, scale: float) -> None:
        self.link, self.scale = link, float(scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.lik: Likelihood = resolve(link, supported=ALL, arg="link")
        if self.lik.name == "categorical":
            if d_param % d != 0 or d_param // d < 2:
                raise ValueError(
                    f"posterior has dimension {d_param}; link={link!r} (multinomial) needs K·d "
                    f"with K ≥ 2 classes and d = {d} columns of X"
                )
            self.k = d_param // d
        else:
            if d_param != d:
                raise ValueError(
                    f"posterior has dimension {d_param}, X has {d} columns: they must match"
                )
            self.k = 1

    def check_y(self, X: Tensor, y: Any, name: str) -> Tensor:
        y = torch.as_tensor(y)
        if y.shape != X.shape[:1]:
            raise ValueError(
                f"{name} must have shape ({X.shape[0]},) to match the design matrix, got "
                f"{tuple(y.shape)}"
            )
        context = f" for link={self.link!r}"
        if self.lik.name == "categorical":
            return self.lik.check_targets(y, name=name, context=context, classes=self.k)
        return self.lik.check_targets(y.to(X), name=name, context=context)

    def outputs(self, X: Tensor, theta: Tensor) -> Tensor:
        if self.k == 1:
            return (X @ theta).unsqueeze(-1)
        return X @ theta.reshape(self.k, -1).mT

    def jac(self, X: Tensor) -> Tensor:
        if self.k == 1:
            return X.unsqueeze(1)
        eye = torch.eye(self.k, dtype=X.dtype, device=X.device)
        return torch.einsum("ab,nj->nabj", eye, X).reshape(X.shape[0], self.k, -1)

    def _targets(self, y: Tensor) -> Tensor:
        return y if self.k > 1 else y.unsqueeze(-1)

    def terms(self, f: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(e, Λ, ∂h/∂f), each per example, e and Λ including the scale c."""
        c, lik, y = self.scale, self.lik, self._targets(y)
        dh = lik.mean_jacobian(f) if lik.has_mean else None
        return c * lik.grad(f, y), c * lik.hessian(f, y), dh

    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        """c·ℓ(y_i, f_i) per example (constants dropped, as in :class:`blr.glm.GLMQuadrature`)."""
        return self.scale * self.lik.loss(f, self._targets(y))

    def chunks(self, X: Tensor, y: Tensor, theta: Tensor, size: int):
        for start in range(0, X.shape[0], size):
            Xc, yc = X[start : start + size], y[start : start + size]
            e, lam, dh = self.terms(self.outputs(Xc, theta), yc)
            yield self.jac(Xc), e, lam, dh


def _design(X: Any, like: Tensor, name: str) -> Tensor:
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) matrix, got shape {tuple(X.shape)}")
    X = X.to(like)
    if not torch.isfinite(X).all():
        raise ValueError(f"{name} must be finite")
    return X


def _glm_setup(X, y, posterior, link, scale):
    post = _as_posterior(posterior)
    X = _design(X, post.m, "X")
    glm = _GLM(link, post.dim, X.shape[1], scale)
    return post, X, glm.check_y(X, y, "y"), glm


def glm_sensitivity(
    X: Tensor,
    y: Tensor,
    posterior: Any,
    link: str | LinkLoss = "logistic",
    *,
    scale: float = 1.0,
    precision: Precision = "removed",
    chunk_size: int = 512,
) -> Sensitivity:
    r"""MPE sensitivities of a GLM posterior to removing each training example:

    .. math::
        m_{\setminus i} - m = \frac{S^{-1}x_i e_i}{1 - \Lambda_i v_i},\qquad
        x_i^\top(m_{\setminus i} - m) = \frac{e_i v_i}{1 - \Lambda_i v_i},\qquad
        v_i = x_i^\top S^{-1}x_i,

    e_i = c·ℓ'(y_i, x_iᵀm), Λ_i = c·ℓ''(y_i, x_iᵀm) (e_i = σ(x_iᵀm) − y_i for the logistic
    loss); for ``"multinomial"`` the (K, K) blocks of :func:`mpe_sensitivity` with
    e_i = softmax(Wx_i) − onehot(y_i), Λ_i = diag(p_i) − p_ip_iᵀ. Laplace posteriors
    (:func:`blr.glm.laplace`) have S = Σ_i x_iΛ_ix_iᵀ + S₀, so ``"removed"`` is one Newton step of
    the retraining without example i (exact for ``"gaussian"``).

    Args:
        X: ``(n, d)`` design matrix (the training examples to score).
        y: ``(n,)`` targets (class labels 0..K−1 for ``"multinomial"``).
        posterior: a :class:`~expfam.FullNat` (e.g. from :func:`blr.glm.laplace`), a
            :class:`~expfam.DiagNat` or ``(m, prec)`` with prec ``(D,)`` or ``(D, D)``; D = d, or
            K·d for ``"multinomial"`` (θ = W.flatten(), W of shape ``(K, d)``, f = Wx).
        link: ``"logistic"``, ``"poisson"``, ``"gaussian"`` (as in :class:`blr.glm.GLMQuadrature`),
            ``"multinomial"`` (softmax cross-entropy), or an elementwise callable ℓ(y, a) (any
            name of :data:`blr.curvature.NAMES`, e.g. ``"bernoulli"`` for ``"logistic"``).
        scale: c, the loss is c·Σ_i ℓ(y_i, f_i) (e.g. 1/σ² for ``"gaussian"``).
        precision: ``"removed"`` (S_{\i}) or ``"full"`` (S).
        chunk_size: examples processed at a time.

    Returns:
        :class:`Sensitivity`; ``response_shift`` is the change of σ(f), e^f, f or softmax(f).

    Example:
        >>> import torch
        >>> from blr.glm import laplace
        >>> from blr.influence import glm_sensitivity
        >>> X = torch.tensor([[1.0, -2.0], [1.0, -1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0],
        ...                   [1.0, 3.0]], dtype=torch.float64)
        >>> y = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
        >>> sens = glm_sensitivity(X, y, laplace(X, y, 1.0))
        >>> sens.score.argmax().item()   # the most influential example: the surprising label
        4
        >>> round(sens.pred_shift[4].item(), 3)   # its logit would rise (brute force: 1.351)
        1.043
    """
    _check_precision(precision)
    post, X, y, glm = _glm_setup(X, y, posterior, link, scale)
    return _sensitivity(glm.chunks(X, y, post.m, _check_chunk(chunk_size)), post, precision)


def glm_removal(
    X: Tensor,
    y: Tensor,
    posterior: Any,
    remove: Any,
    link: str | LinkLoss = "logistic",
    *,
    scale: float = 1.0,
    precision: Precision = "removed",
    X_test: Tensor | None = None,
    y_test: Tensor | None = None,
    chunk_size: int = 512,
) -> Removal:
    r"""What if the examples ``remove`` (indices or a mask over the rows of X; e.g. a class) were
    removed from training: the MPE's new mean and precision

    .. math::
        S_{\setminus G} = S - \sum_{i\in G} J_i^\top\Lambda_i J_i,\qquad
        m_{\setminus G} = m + S_{\setminus G}^{-1}\sum_{i\in G}J_i^\top e_i,

    and, given a test set, the test loss at m_{\G}: (1/n_test)·Σ_t c·ℓ(y_t, f_t(m_{\G})), the
    same per-example loss as in training (the NLL for ``"logistic"`` and ``"multinomial"``).

    Args:
        X, y, posterior, link, scale, precision, chunk_size: as in :func:`glm_sensitivity`.
        remove: the removed rows: integer indices or an ``(n,)`` boolean mask.
        X_test, y_test: an optional test set (both or neither).

    Returns:
        :class:`Removal`.

    Example:
        >>> import torch, expfam
        >>> from blr.glm import laplace
        >>> from blr.influence import glm_removal
        >>> X = torch.tensor([[1.0, -2.0], [1.0, -1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0],
        ...                   [1.0, 3.0]], dtype=torch.float64)
        >>> y = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
        >>> keep = torch.arange(6) != 4
        >>> out = glm_removal(X, y, laplace(X, y, 1.0), ~keep, X_test=X[keep], y_test=y[keep])
        >>> out.mean                                  # the MPE's mean without example 4
        tensor([0.1755, 0.8534], dtype=torch.float64)
        >>> expfam.FullGaussian().to_moments(laplace(X[keep], y[keep], 1.0))[0]  # retrained
        tensor([0.2360, 0.9772], dtype=torch.float64)
        >>> round(out.test_loss_before.item(), 4), round(out.test_loss.item(), 4)
        (0.4489, 0.3168)
    """
    _check_precision(precision)
    post, X, y, glm = _glm_setup(X, y, posterior, link, scale)
    idx = _remove_index(remove, X.shape[0])
    chunks = glm.chunks(X[idx], y[idx], post.m, _check_chunk(chunk_size))
    mean, prec, shift = _removal(chunks, post, precision)
    if (X_test is None) != (y_test is None):
        raise ValueError("pass both X_test and y_test, or neither")
    if X_test is None:
        return Removal(mean, prec, shift, None, None)
    Xt = _design(X_test, post.m, "X_test")
    if Xt.shape[1] != X.shape[1]:
        raise ValueError(f"X_test must have {X.shape[1]} columns like X, got {Xt.shape[1]}")
    yt = glm.check_y(Xt, y_test, "y_test")
    after = glm.loss(glm.outputs(Xt, mean), yt).mean()
    before = glm.loss(glm.outputs(Xt, post.m), yt).mean()
    return Removal(mean, prec, shift, after, before)


# ---------------------------------------------------------------------------- nn.Module
def optimizer_posterior(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    r"""The diagonal Gaussian posterior of a :mod:`blr.optim` optimizer (``optimizer.posterior()``:
    :class:`~blr.optim.IVON`, :class:`~blr.optim.VON`, :class:`~blr.optim.VOGN`,
    :class:`~blr.optim.OGN`, :class:`~blr.optim.Vadam`, :class:`~blr.optim.BLROptimizer` with a
    :class:`~expfam.DiagGaussian`), as (m, S) flattened over ``params``; for the IVON family

    .. math::
        m = \mathtt{state["mean"]},\qquad S = N\,(h + \delta),
        \quad h = \mathtt{state["hess"]},\ N = \mathtt{ess},\ \delta = \mathtt{weight\_decay}

    (per param group), the precision of the objective Σ_i ℓ_i + ½Nδ‖θ‖² whose minibatch mean was
    trained. The posterior is read through ``state_dict()``, so it is the mean m even when the
    weights hold a draw (``IVON(draw_ahead=True)``).

    Args:
        optimizer: the optimizer.
        params: the parameters, in the order of the flattening (default: the optimizer's own
            order, group by group); each must be trained by the optimizer.

    Returns:
        ``(m, prec)``, two ``(D,)`` tensors in the optimizer's state dtype.

    Example:
        >>> import torch
        >>> from blr.optim import IVON
        >>> from blr.influence import optimizer_posterior
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = IVON(model.parameters(), lr=0.1, ess=50, hess_init=0.5, weight_decay=0.25)
        >>> m, prec = optimizer_posterior(opt)
        >>> prec.tolist()          # N(h₀ + δ) = 50·(0.5 + 0.25) before any step
        [37.5, 37.5, 37.5]
    """
    posterior = getattr(optimizer, "posterior", None)
    if not callable(posterior):
        raise TypeError(
            "optimizer must be a blr.optim optimizer (with posterior()), got "
            f"{type(optimizer).__name__}"
        )
    q = posterior()
    if q.family.name != "gaussian_diag":
        raise TypeError(
            f"optimizer's posterior must be a diagonal Gaussian (IVON, VON, VOGN, OGN, Vadam, "
            f"BLROptimizer with DiagGaussian), got {q.family.name}"
        )
    m, prec = q.family.to_moments(q.nat)
    offsets = dict(zip((id(p) for p in q.params), q.layout.offsets))
    if params is None:
        params = q.params
    means, precs = [], []
    for i, p in enumerate(params):
        if id(p) not in offsets:
            raise ValueError(
                f"params[{i}] (shape {tuple(p.shape)}) is not trained by the optimizer"
            )
        start = offsets[id(p)]
        means.append(m[start : start + p.numel()])
        precs.append(prec[start : start + p.numel()])
    if not means:
        raise ValueError("params is empty: the optimizer trains no parameter")
    return torch.cat(means), torch.cat(precs)


def _module_posterior(model: nn.Module, posterior: Any) -> tuple[_Posterior, list]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameter")
    if isinstance(posterior, torch.optim.Optimizer):
        posterior = optimizer_posterior(posterior, [p for _, p in named])
    post = _as_posterior(posterior)
    size = sum(p.numel() for _, p in named)
    if post.dim != size:
        raise ValueError(
            f"posterior has dimension {post.dim}, the model's trainable parameters {size}"
        )
    return post, named


class _Network:
    """Per-example (J, e, Λ, ∂h/∂f) of a module linearized at a flat parameter vector."""

    def __init__(self, model: nn.Module, named: list, loss: str, sigma2: float) -> None:
        self.lik: Likelihood = resolve(loss, sigma2=sigma2, supported=FACTORED, arg="loss")
        self.model, self.loss = model, loss
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        trained = set(self.names)
        self.rest = {n: p.detach() for n, p in model.named_parameters() if n not in trained}
        self.rest.update(dict(model.named_buffers()))

    def split(self, theta: Tensor) -> dict[str, Tensor]:
        parts = theta.split(self.sizes)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def _call(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(self.model, {**params, **self.rest}, (x,))

    def outputs(self, theta: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            out = self._call(self.split(theta), x)
        if not isinstance(out, Tensor) or out.shape[:1] != x.shape[:1]:
            raise ValueError("model(x) must return a tensor with the batch dimension of x first")
        if self.lik.name == "categorical" and out.ndim != 2:
            raise ValueError(
                f"loss={self.loss!r} needs logits of shape (n, C), got {tuple(out.shape)}"
            )
        return out.reshape(out.shape[0], -1)

    def targets(self, y: Any, f: Tensor, out_shape: torch.Size, name: str) -> Tensor:
        y = torch.as_tensor(y, device=f.device)
        if self.lik.name == "categorical":
            if y.shape != f.shape[:1]:
                raise ValueError(
                    f"{name} must hold ({f.shape[0]},) class labels, got shape {tuple(y.shape)}"
                )
            return self.lik.check_targets(y, name=name, classes=f.shape[1])
        if y.numel() != f.numel() or y.shape[:1] != f.shape[:1]:
            raise ValueError(
                f"{name} must have the shape of the model's output {tuple(out_shape)}, got "
                f"{tuple(y.shape)}"
            )
        return self.lik.check_targets(
            y.reshape(f.shape).to(f), name=name, context=f" for loss={self.loss!r}"
        )

    def jacobian(self, theta: Tensor, x: Tensor) -> Tensor:
        return jacobians(self.model, self.split(theta), x, fixed=self.rest)[1]

    def chunks(self, theta: Tensor, x: Tensor, y: Any, size: int):
        for start in range(0, x.shape[0], size):
            xc = x[start : start + size]
            f = self.outputs(theta, xc)
            yc = self.targets(y[start : start + size], f, f.shape, "y")
            e, lam, dh = self.lik.grad(f, yc), self.lik.hessian(f, yc), self.lik.mean_jacobian(f)
            yield self.jacobian(theta, xc), e, lam, dh

    def mean_loss(self, theta: Tensor, x: Tensor, y: Any, size: int) -> Tensor:
        total = theta.new_zeros(())
        for start in range(0, x.shape[0], size):
            xc = x[start : start + size]
            f = self.outputs(theta, xc)
            yc = self.targets(y[start : start + size], f, f.shape, "y_test")
            total = total + self.lik.nll(f, yc).sum()
        return total / x.shape[0]


def _inputs(x: Any, like: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x, device=like.device)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch dimension, got {tuple(x.shape)}")
    return x.to(like.dtype) if x.is_floating_point() else x


def _check_len(x: Tensor, y: Any, name: str) -> Any:
    if len(y) != x.shape[0]:
        raise ValueError(f"{name} must have {x.shape[0]} examples like the inputs, got {len(y)}")
    return y


def module_sensitivity(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    posterior: Any,
    loss: str = "cross_entropy",
    *,
    sigma2: float = 1.0,
    precision: Precision = "removed",
    chunk_size: int = 64,
) -> Sensitivity:
    r"""MPE sensitivities of a network's Gaussian posterior to removing each example of (x, y),
    with the network linearized at the posterior mean m (:func:`mpe_sensitivity` with J_i the
    Jacobian of the example's output, by ``torch.func``):

    .. math::
        m_{\setminus i} - m = S^{-1}J_i^\top(I - \Lambda_iV_i)^{-1}e_i,\qquad
        \Delta f_i = V_i(I - \Lambda_iV_i)^{-1}e_i,\qquad V_i = J_iS^{-1}J_i^\top

    (diagonal S with ``"removed"``: J_iᵀe_i / (S − diag(J_iᵀΛ_iJ_i))).

    Per-example losses ℓ_i (their gradient e_i and Hessian Λ_i in the output f_i, from
    :mod:`blr.curvature`; any name of :data:`blr.curvature.NAMES`): ``"cross_entropy"``
    (logits ``(n, C)``, integer labels), ``"bce_with_logits"`` (any output shape, targets in
    [0, 1] of the same shape, ℓ_i summed over entries), ``"gaussian"`` (½‖f_i − y_i‖²/σ² plus
    the normalizer), ``"mse"`` (‖f_i − y_i‖², the per-example term of a ``mse_loss``) and
    ``"poisson"`` (log link, counts, plus log y!).

    The model is evaluated as it is (call ``model.eval()`` for dropout or batch norm); its
    trainable parameters (``requires_grad``, in ``named_parameters()`` order) are replaced by
    the posterior mean, the others and the buffers are used as they are. Memory: ``chunk_size``
    ·k·D for the Jacobians, and n·D for the result's ``param_shift``.

    Args:
        model: the network.
        x: inputs ``(n, ...)`` (a single tensor).
        y: targets, as described above.
        posterior: an IVON/VON/VOGN/OGN optimizer training the model's parameters (see
            :func:`optimizer_posterior`), a :class:`~expfam.FullNat`, a :class:`~expfam.DiagNat` or
            ``(m, prec)``, flattened over the trainable parameters (prec ``(D,)`` or ``(D, D)``).
        loss: the per-example loss.
        sigma2: σ² of ``"gaussian"``.
        precision: ``"removed"`` (S_{\i}) or ``"full"`` (S). With an IVON posterior, S is not
            exactly the prior plus the Gauss–Newton sites, and ``"removed"`` may fail for an
            example that dominates a coordinate: use ``"full"`` then.
        chunk_size: examples per Jacobian evaluation.

    Returns:
        :class:`Sensitivity` (``response_shift``: probabilities for the classification losses,
        the output itself for the regression ones).

    Example:
        >>> import torch
        >>> from blr.influence import module_sensitivity
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(),
        ...                             torch.nn.Linear(4, 3)).double()
        >>> x, y = torch.randn(10, 2, dtype=torch.float64), torch.randint(0, 3, (10,))
        >>> m = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        >>> prec = torch.full_like(m, 10.0)            # a diagonal posterior N(m, 0.1 I)
        >>> sens = module_sensitivity(model, x, y, (m, prec), "cross_entropy")
        >>> sens.param_shift.shape, sens.pred_shift.shape, sens.score.shape
        (torch.Size([10, 27]), torch.Size([10, 3]), torch.Size([10]))
        >>> bool(torch.allclose(sens.response_shift.sum(-1), torch.zeros(10, dtype=torch.float64),
        ...                     atol=1e-12))     # probabilities still sum to one
        True
    """
    _check_precision(precision)
    post, named = _module_posterior(model, posterior)
    net = _Network(model, named, loss, sigma2)
    x = _inputs(x, post.m, "x")
    y = _check_len(x, y, "y")
    return _sensitivity(net.chunks(post.m, x, y, _check_chunk(chunk_size)), post, precision)


def module_removal(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    posterior: Any,
    remove: Any,
    loss: str = "cross_entropy",
    *,
    sigma2: float = 1.0,
    precision: Precision = "removed",
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    chunk_size: int = 64,
) -> Removal:
    r"""What if the examples ``remove`` of (x, y) were removed from training a network: the MPE's
    new mean m_{\G} = m + S_{\G}⁻¹Σ_{i∈G}J_iᵀe_i with S_{\G} = S − Σ_{i∈G}J_iᵀΛ_iJ_i (its
    diagonal for a diagonal S), and, given a test set, the mean per-example test loss (the loss
    of :func:`module_sensitivity`, e.g. the cross-entropy) at m_{\G} and at m.

    Args:
        model, x, y, posterior, loss, sigma2, precision, chunk_size: as in
            :func:`module_sensitivity`.
        remove: integer indices or an ``(n,)`` boolean mask of the removed examples.
        x_test, y_test: an optional test set (both or neither).

    Returns:
        :class:`Removal`.

    Example:
        >>> import torch
        >>> from blr.influence import module_removal
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 2).double()
        >>> x, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
        >>> m = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        >>> out = module_removal(model, x, y, (m, torch.full_like(m, 50.0)), y == 1,
        ...                      x_test=x, y_test=y)
        >>> out.mean.shape, bool(torch.isfinite(out.test_loss))
        (torch.Size([8]), True)
    """
    _check_precision(precision)
    post, named = _module_posterior(model, posterior)
    net = _Network(model, named, loss, sigma2)
    x = _inputs(x, post.m, "x")
    y = _check_len(x, y, "y")
    idx = _remove_index(remove, x.shape[0])
    y_removed = torch.as_tensor(y)[idx]
    size = _check_chunk(chunk_size)
    mean, prec, shift = _removal(net.chunks(post.m, x[idx], y_removed, size), post, precision)
    if (x_test is None) != (y_test is None):
        raise ValueError("pass both x_test and y_test, or neither")
    if x_test is None:
        return Removal(mean, prec, shift, None, None)
    xt = _inputs(x_test, post.m, "x_test")
    yt = torch.as_tensor(_check_len(xt, y_test, "y_test"))
    after = net.mean_loss(mean, xt, yt, size)
    before = net.mean_loss(post.m, xt, yt, size)
    return Removal(mean, prec, shift, after, before)


__all__ = [
    "PRECISIONS",
    "Removal",
    "Sensitivity",
    "glm_removal",
    "glm_sensitivity",
    "module_removal",
    "module_sensitivity",
    "mpe_removal",
    "mpe_sensitivity",
    "optimizer_posterior",
]
