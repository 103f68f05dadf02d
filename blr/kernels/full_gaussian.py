r"""Batched full-covariance Gaussian BLR step: B independent Gaussians N(m_b, S_b⁻¹) of dimension
d updated in one call (one batched Cholesky, one batched Cholesky solve, no Python loop over B),
on any device and floating dtype.

.. math::
    S_{t+1} &= (1-\rho)\,S_t + \rho\,\hat H
              \;\Big[+\ \tfrac{\rho^2}{2}\,G\,S_t^{-1}G,\quad G = \hat H - S_t\Big],\\
    L_{t+1} &= \operatorname{chol}(S_{t+1}),\qquad
    m_{t+1} = m_t - \alpha\, S_{t+1}^{-1}\hat g = m_t - \alpha\,L_{t+1}^{-\top}L_{t+1}^{-1}\hat g.

With α = ρ and without the bracketed improved-BLR term this is exactly :func:`blr.step` for a
:class:`~expfam.FullGaussian` without a prior, whose λ-update λ ← (1 − ρ)λ − ρ∇_μE_q[ℓ] with
∇_μE_q[ℓ] = (ĝ − Ĥm, ½Ĥ) reads S ← (1 − ρ)S + ρĤ, Sm ← S_{t+1}m_t − ρĝ (a test checks it). With
the bracket it is :func:`blr.gaussian_step` with ``GaussianOptions(improved=True)`` (the mean
steps with the new precision, IVON's choice).

The working representation is the :class:`FullGaussianState` (m, S, L): callers keep it between
steps, so no Cholesky factor is ever recomputed (the improved term reuses L_t).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from expfam.gaussian_full import FullGaussian, FullNat

__all__ = ["FullGaussianState", "full_gaussian_step"]


class FullGaussianState(NamedTuple):
    """(m, S, L) of a batch of full Gaussians N(m, S⁻¹), with S = L Lᵀ.

    Attributes:
        mean: m, ``(*batch, d)``.
        prec: the precision S, ``(*batch, d, d)``, symmetric positive definite.
        chol: its lower Cholesky factor L, ``(*batch, d, d)``.
    """

    mean: Tensor
    prec: Tensor
    chol: Tensor

    @classmethod
    def from_nat(cls, nat: FullNat) -> FullGaussianState:
        """(m, S, L) from λ = (S m, −½ S); raises ValueError naming ``nat.lam2`` if S is not
        positive definite.

        Example:
            >>> import torch, expfam
            >>> S = torch.tensor([[4.0, 2.0], [2.0, 5.0]], dtype=torch.float64)
            >>> nat = expfam.FullGaussian().from_moments(torch.ones(2, dtype=torch.float64), S)
            >>> state = FullGaussianState.from_nat(nat)
            >>> state.mean.tolist(), torch.allclose(state.prec, S)
            ([1.0, 1.0], True)
            >>> state.chol   # S = L Lᵀ
            tensor([[2., 0.],
                    [1., 2.]], dtype=torch.float64)
        """
        m, chol = FullGaussian().mean_and_chol(nat)
        return cls(m, -(nat.lam2 + nat.lam2.mT), chol)

    def to_nat(self) -> FullNat:
        """λ = (S m, −½ S).

        Example:
            >>> import torch
            >>> S = torch.tensor([[4.0, 2.0], [2.0, 5.0]], dtype=torch.float64)
            >>> state = FullGaussianState(torch.ones(2, dtype=torch.float64), S,
            ...                           torch.linalg.cholesky(S))
            >>> nat = state.to_nat()
            >>> nat.lam1.tolist(), torch.equal(nat.lam2, -0.5 * S)
            ([6.0, 7.0], True)
        """
        return FullNat((self.prec @ self.mean.unsqueeze(-1)).squeeze(-1), -0.5 * self.prec)


def _positive(value: float, name: str) -> float:
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return x


def _check_inputs(tensors: dict[str, Tensor | None]) -> int:
    """Shapes, dtype and device of the inputs; returns d."""
    m = tensors["m"]
    if not isinstance(m, Tensor) or m.ndim < 1:
        raise ValueError("m must be a tensor of shape (*batch, d)")
    batch, d = m.shape[:-1], m.shape[-1]
    vec, mat = m.shape, (*batch, d, d)
    for name, t in tensors.items():
        if t is None:
            continue
        want = vec if name in ("m", "g_hat") else mat
        if not isinstance(t, Tensor) or t.shape != want:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape {tuple(want)} to match m, got {got}")
        if t.dtype != m.dtype or t.device != m.device:
            raise ValueError(
                f"{name} is {t.dtype} on {t.device}, but m is {m.dtype} on {m.device}; all "
                "inputs must share one dtype and device"
            )
    if not m.dtype.is_floating_point:
        raise ValueError(f"the inputs must be floating point, got {m.dtype}")
    return d


def _raise_not_pd(info: Tensor, what: str) -> None:
    """ValueError naming the batch indices whose Cholesky failed (``info`` ≠ 0)."""
    if info.ndim == 0:
        raise ValueError(f"{what} is not positive definite")
    bad = torch.nonzero(info).tolist()
    shown = ", ".join(str(tuple(i)) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
    raise ValueError(
        f"{what} is not positive definite at batch index {shown} ({len(bad)} of {info.numel()} "
        "problems)"
    )


def full_gaussian_step(
    m: Tensor,
    prec: Tensor,
    g_hat: Tensor,
    h_hat: Tensor,
    rho: float,
    *,
    lr: float | None = None,
    improved: bool = False,
    prec_chol: Tensor | None = None,
) -> FullGaussianState:
    r"""One BLR step for a batch of independent full Gaussians (module docstring for the math):

    .. math::
        S' = (1-\rho)S + \rho\hat H\ \big[+\ \tfrac{\rho^2}{2}GS^{-1}G,\ G = \hat H - S\big],
        \qquad L' = \operatorname{chol}(S'),\qquad m' = m - \alpha\,S'^{-1}\hat g.

    One batched ``torch.linalg.cholesky_ex`` and one batched ``torch.cholesky_solve`` (plus one
    batched triangular solve and ``baddbmm`` for the improved term); no loop over the batch,
    no inverse, no symmetrization: ``h_hat`` must be symmetric (only the lower triangle of S'
    enters the Cholesky factor). The inputs are never modified.

    Args:
        m: means, ``(*batch, d)``.
        prec: precisions S, ``(*batch, d, d)``, symmetric positive definite (checked only when
            its factor is needed, i.e. ``improved`` without ``prec_chol``).
        g_hat: ĝ ≈ E_q[∇ℓ], ``(*batch, d)``.
        h_hat: Ĥ ≈ E_q[∇²ℓ], ``(*batch, d, d)``, symmetric.
        rho: ρ > 0, the precision's rate.
        lr: α > 0, the mean's rate; None means α = ρ (the BLR).
        improved: add the improved-BLR term ρ²/2·G S⁻¹G (Lin, Schmidt & Khan 2020), which keeps
            S' positive definite for any symmetric Ĥ and any ρ (S' = ½S + ½(S + ρG)S⁻¹(S + ρG)).
        prec_chol: the lower Cholesky factor of ``prec`` (e.g. the ``chol`` of the previous
            step's state), used by ``improved`` instead of refactorizing ``prec``.

    Returns:
        The new :class:`FullGaussianState` (m', S', L'), fresh tensors on the inputs' device and
        dtype. Raises ValueError naming ``prec`` and the failing batch indices if S' (or, for
        ``improved`` without ``prec_chol``, S) is not positive definite; nothing is returned
        then, so no partially updated state exists.

    Example:
        >>> import torch
        >>> from blr.kernels import full_gaussian_step
        >>> A = torch.tensor([[[3.0, 1.0], [1.0, 2.0]], [[2.0, 0.0], [0.0, 4.0]]],
        ...                  dtype=torch.float64)   # two quadratics ½θᵀAθ − bᵀθ
        >>> b = torch.tensor([[1.0, -1.0], [2.0, 4.0]], dtype=torch.float64)
        >>> m = torch.zeros(2, 2, dtype=torch.float64)
        >>> S = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
        >>> g = (A @ m.unsqueeze(-1)).squeeze(-1) - b       # exact gradient at m
        >>> new = full_gaussian_step(m, S, g, A, 1.0)        # ρ = 1: Newton, m' = A⁻¹b
        >>> new.mean
        tensor([[ 0.6000, -0.8000],
                [ 1.0000,  1.0000]], dtype=torch.float64)
        >>> torch.equal(new.prec, A)
        True
    """
    rho = _positive(rho, "rho")
    alpha = rho if lr is None else _positive(lr, "lr")
    d = _check_inputs(
        {"m": m, "prec": prec, "g_hat": g_hat, "h_hat": h_hat, "prec_chol": prec_chol}
    )

    # S' = S + ρ(Ĥ − S): one fused op into a fresh tensor
    prec_new = torch.lerp(prec, h_hat, rho)
    if improved:
        if not prec_new.is_contiguous():  # strided inputs: the in-place update needs a view
            prec_new = prec_new.contiguous()
        if prec_chol is None:
            prec_chol, info = torch.linalg.cholesky_ex(prec)
            if info.any():
                _raise_not_pd(info, "prec")
        # ½ρ² G S⁻¹ G = ½ρ² WᵀW with W = L⁻¹G (symmetric up to the GEMM's rounding), in place
        w = torch.linalg.solve_triangular(prec_chol, h_hat - prec, upper=False)
        w3 = w.reshape(-1, d, d)
        prec_new.view(-1, d, d).baddbmm_(w3.mT, w3, alpha=0.5 * rho * rho)

    chol, info = torch.linalg.cholesky_ex(prec_new)
    if info.any():  # the one host sync of the step
        term = " + ρ²/2·G prec⁻¹ G" if improved else ""
        _raise_not_pd(
            info,
            f"prec: the updated precision (1 − ρ)·prec + ρ·h_hat{term} with rho = {rho:g}",
        )
    step = torch.cholesky_solve(g_hat.unsqueeze(-1), chol).squeeze(-1)
    m_new = torch.add(m, step, alpha=-alpha)
    return FullGaussianState(m_new, prec_new, chol)
