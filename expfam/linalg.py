r"""Batched linear algebra the families and the BLR's Gaussian updates share.

- :func:`sym`: the symmetric part ½(X + Xᵀ) of a (batch of) square matrices.
- :func:`chol_or_raise`: the Cholesky factor of a precision, or a ValueError that names the
  argument and the batch elements that are not positive definite.
- :func:`solve_psd`: the least-norm solution of F x = b for a positive semi-definite F (a
  Fisher matrix ∇²A(λ), singular along the antisymmetric directions of a matrix block).

>>> import torch
>>> from expfam import linalg
>>> a = torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
>>> s = linalg.sym(a)
>>> s
tensor([[2.0000, 0.5000],
        [0.5000, 2.0000]], dtype=torch.float64)
>>> chol = linalg.chol_or_raise(s, "prec must be positive definite")
>>> torch.allclose(chol @ chol.mT, s)
True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["chol_or_raise", "solve_psd", "sym"]

_PINV_RTOL = 1e-12  # of the unit-diagonal Fisher: below it, an eigenvalue is a null direction


def sym(x: Tensor) -> Tensor:
    """The symmetric part ½(X + Xᵀ) of the trailing two dimensions of ``x``.

    Example:
        >>> import torch
        >>> from expfam.linalg import sym
        >>> sym(torch.tensor([[1.0, 4.0], [0.0, 1.0]]))
        tensor([[1., 2.],
                [2., 1.]])
    """
    return 0.5 * (x + x.mT)


def chol_or_raise(prec: Tensor, constraint: str) -> Tensor:
    """Lower Cholesky factor L of the symmetric matrix ``prec`` = L Lᵀ (batched); raises
    ValueError with ``constraint`` (which names the argument) and the flattened batch indices at
    which the factorization failed, if some matrix is not positive definite.

    Example:
        >>> import torch
        >>> from expfam.linalg import chol_or_raise
        >>> chol_or_raise(torch.tensor([[4.0, 0.0], [0.0, 9.0]]), "prec must be positive definite")
        tensor([[2., 0.],
                [0., 3.]])
        >>> chol_or_raise(-torch.eye(2), "prec must be positive definite")
        Traceback (most recent call last):
            ...
        ValueError: prec must be positive definite (Cholesky failed at flattened batch index [0])
    """
    chol, info = torch.linalg.cholesky_ex(prec)
    if (info != 0).any():
        bad = torch.nonzero(info.reshape(-1)).flatten()[:5].tolist()
        raise ValueError(f"{constraint} (Cholesky failed at flattened batch index {bad})")
    return chol


def solve_psd(f: Tensor, b: Tensor) -> Tensor:
    r"""Solve F x = b for a symmetric positive semi-definite F ``(*batch, P, P)`` and b
    ``(*batch, P)``: the least-norm solution, x ⊥ null(F) (F is singular along the
    antisymmetric directions of a matrix block).

    F is scaled to unit diagonal, F̃ = D⁻¹FD⁻¹ with D = diag(F)^½, before its null space is
    told apart from its small eigenvalues, so that coordinates of very different scales (a
    Gamma shape of 10⁴ with a rate of 10⁻³: an eigenvalue 10⁻¹⁷ of the largest) are not
    mistaken for singular ones; the null directions v = D⁻¹u (F̃u = 0) are then projected out
    of x = D⁻¹F̃⁺D⁻¹b.

    Example:
        >>> import torch
        >>> from expfam.linalg import solve_psd
        >>> f = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # singular
        >>> solve_psd(f, torch.tensor([4.0, 0.0], dtype=torch.float64))  # least-norm: x₂ = 0
        tensor([2., 0.], dtype=torch.float64)
    """
    diag = torch.diagonal(f, dim1=-2, dim2=-1)
    d = torch.where(diag > 0, diag.clamp_min(torch.finfo(f.dtype).tiny).sqrt(), 1.0)
    scaled = f / (d.unsqueeze(-1) * d.unsqueeze(-2))
    w, u = torch.linalg.eigh(0.5 * (scaled + scaled.mT))
    keep = w > _PINV_RTOL * w.amax(-1, keepdim=True).clamp_min(0)
    inv = torch.where(keep, 1.0 / torch.where(keep, w, 1.0), 0.0)
    x = (u @ (inv * (u.mT @ (b / d).unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1) / d
    null = u * (~keep).unsqueeze(-2) / d.unsqueeze(-1)  # columns v = D⁻¹u of the null space
    coef = torch.linalg.pinv(null.mT @ null, hermitian=True) @ (null.mT @ x.unsqueeze(-1))
    return x - (null @ coef).squeeze(-1)
