r"""Per-example Jacobians and gradients of a network by ``torch.func``, and the curvature
matrices built from them: the generalized Gauss–Newton (GGN) Σ_i J_iᵀΛ_iJ_i and the Fisher
Σ_i J_iᵀg_ig_iᵀJ_i of output gradients g_i, full or diagonal.

For examples x_i, outputs f_i = f(x_i; θ) ∈ ℝᵏ and J_i = ∂f_i/∂θ (k × P, the parameters
flattened in the order given, each row-major): :func:`jacobians` is ``vmap`` over the examples
of ``jacrev`` of the model called through ``functional_call`` on one example (k reverse-mode
passes per example, vectorized); :func:`per_example_grads` is ``vmap`` of ``grad`` of the
per-example negative log-likelihood, ∇_θ ℓ_i = J_iᵀe_i. The model must treat examples
independently (no batch statistics) and support ``torch.func`` transforms.

>>> import torch
>>> from blr.curvature import Gaussian, ggn, jacobians
>>> model = torch.nn.Linear(2, 1, bias=False).double()
>>> x = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
>>> f, J = jacobians(model, dict(model.named_parameters()), x)
>>> J[:, 0]                                             # J_i = x_iᵀ
tensor([[1., 0.],
        [1., 2.]], dtype=torch.float64)
>>> ggn(J, Gaussian(sigma2=0.5).hessian(f))             # XᵀX/σ²
tensor([[4., 4.],
        [4., 8.]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from blr.curvature.likelihoods import Likelihood

__all__ = ["fisher", "ggn", "jacobians", "per_example_grads"]


def _flatten(parts: Mapping[str, Tensor], names, n: int, lead: int) -> Tensor:
    """Concatenate per-parameter blocks ``(n, [k,] *shape)`` to ``(n, [k,] P)`` in ``names``
    order."""
    shape = (n, lead) if lead else (n,)
    return torch.cat([parts[name].reshape(*shape, -1) for name in names], dim=-1)


def jacobians(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    *,
    fixed: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Outputs f_i and Jacobians J_i = ∂f_i/∂θ of every example, by ``torch.func``.

    Args:
        model: the network, called as ``model(x_i[None])`` on one example at a time through
            ``functional_call`` (it is not modified).
        params: the parameters θ to differentiate, by name (as in ``named_parameters()``);
            J's columns follow this order, each parameter flattened row-major.
        x: a batch of inputs ``(n, ...)``.
        fixed: the model's other parameters and buffers, by name (default: the model's own).

    Returns:
        f ``(n, k)`` (each example's outputs flattened) and J ``(n, k, P)``.

    Example:
        >>> import torch
        >>> from blr.curvature import jacobians
        >>> model = torch.nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> f, J = jacobians(model, dict(model.named_parameters()), x)
        >>> f.shape, J.shape, bool(torch.allclose(J[:, 0, :3], x))   # ∂f_0/∂W[0] = x
        (torch.Size([4, 2]), torch.Size([4, 2, 8]), True)
    """
    fixed = {} if fixed is None else dict(fixed)
    params = dict(params)

    def single(theta: dict[str, Tensor], xi: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(model, {**fixed, **theta}, (xi.unsqueeze(0),)).reshape(-1)
        return out, out

    jac, out = vmap(jacrev(single, has_aux=True), in_dims=(None, 0))(params, x)
    return out, _flatten(jac, params, x.shape[0], out.shape[-1])


def per_example_grads(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    likelihood: Likelihood,
    *,
    fixed: Mapping[str, Tensor] | None = None,
) -> Tensor:
    r"""∇_θ ℓ_i(θ) = J_iᵀe_i of every example's negative log-likelihood ℓ_i = ℓ(y_i, f(x_i; θ)),
    by ``torch.func`` (``vmap`` of ``grad``).

    Args:
        model, params, x, fixed: as in :func:`jacobians`.
        y: the targets ``(n, ...)`` (class labels ``(n,)`` for the categorical).
        likelihood: a :class:`~blr.curvature.Likelihood` (e.g. from
            :func:`~blr.curvature.resolve`).

    Returns:
        ``(n, P)``, columns in the order of ``params``.

    Example:
        >>> import torch
        >>> from blr.curvature import Categorical, per_example_grads
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
        >>> g = per_example_grads(model, dict(model.named_parameters()), x, y, Categorical())
        >>> e = model(x).softmax(-1) - torch.nn.functional.one_hot(y, 2)   # ∂ℓ/∂f
        >>> bool(torch.allclose(g, torch.einsum("nk,ni->nki", e, x).reshape(4, 6)))
        True
    """
    fixed = {} if fixed is None else dict(fixed)
    params = dict(params)

    def single(theta: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **theta}, (xi.unsqueeze(0),))
        out = out.reshape(1, -1)
        if likelihood.elementwise:
            yi = yi.reshape(1, -1)
        else:
            yi = yi.reshape(1)
        return likelihood.loss(out, yi).sum()

    grads = vmap(grad(single), in_dims=(None, 0, 0))(params, x, y)
    return _flatten(grads, params, x.shape[0], 0)


def ggn(J: Tensor, lam: Tensor, *, diagonal: bool = False, per_example: bool = False) -> Tensor:
    r"""The generalized Gauss–Newton matrix Σ_i J_iᵀΛ_iJ_i (or its diagonal).

    Args:
        J: per-example Jacobians ``(n, k, P)``.
        lam: the output Hessians Λ_i ``(n, k, k)`` (e.g. :meth:`Likelihood.hessian`).
        diagonal: only the diagonal (never forming a P × P matrix).
        per_example: keep the examples apart (J_iᵀΛ_iJ_i for each i) instead of summing.

    Returns:
        ``(P, P)``, ``(P,)`` (diagonal), ``(n, P, P)`` or ``(n, P)`` (per example).

    Example:
        >>> import torch
        >>> from blr.curvature import ggn
        >>> J = torch.tensor([[[1.0, 2.0]], [[0.0, 1.0]]])      # two examples, k = 1, P = 2
        >>> lam = torch.tensor([[[2.0]], [[4.0]]])
        >>> ggn(J, lam), ggn(J, lam, diagonal=True)
        (tensor([[ 2.,  4.],
                [ 4., 12.]]), tensor([ 2., 12.]))
    """
    LJ = lam @ J  # (n, k, P)
    if diagonal:
        sq = J * LJ
        return sq.sum(1) if per_example else sq.sum((0, 1))
    if per_example:
        return J.mT @ LJ
    P = J.shape[-1]
    return J.reshape(-1, P).mT @ LJ.reshape(-1, P)


def fisher(J: Tensor, out_grads: Tensor, *, diagonal: bool = False) -> Tensor:
    r"""Σ_i Σ_s (J_iᵀg_is)(J_iᵀg_is)ᵀ (or its diagonal) for output gradients g_is: with the
    gradients at the labels, e_i = ∂ℓ_i/∂f_i (:meth:`Likelihood.grad`), the empirical Fisher
    Σ_i ∇ℓ_i∇ℓ_iᵀ; with S gradients at labels sampled from the model, each divided by √S
    (:meth:`Likelihood.sample_grads`), the Monte Carlo Fisher, whose mean is the GGN.

    Args:
        J: per-example Jacobians ``(n, k, P)``.
        out_grads: ``(n, k)``, or ``(S, n, k)`` for several per example.

    Returns:
        ``(P, P)``, or ``(P,)`` with ``diagonal``.

    Example:
        >>> import torch
        >>> from blr.curvature import fisher
        >>> J = torch.tensor([[[1.0, 2.0]], [[0.0, 1.0]]])
        >>> e = torch.tensor([[1.0], [-2.0]])                  # ∇ℓ_i = e_i J_iᵀ
        >>> fisher(J, e, diagonal=True)                         # (1, 2)² + (0, −2)²
        tensor([1., 8.])
    """
    g = out_grads if out_grads.dim() == 3 else out_grads.unsqueeze(0)
    G = torch.einsum("snk,nkp->snp", g, J).reshape(-1, J.shape[-1])  # the gradients J_iᵀg
    return G.square().sum(0) if diagonal else G.mT @ G
