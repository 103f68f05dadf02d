"""Fast paths of the BLR for special cases, each tested to equal :func:`blr.step` in its BLR limit.

- :func:`full_gaussian_step` — B independent full-covariance Gaussians in one batched call
  (Cholesky, triangular solves), CPU and CUDA, on the working representation
  :class:`FullGaussianState` (m, S, L).
- :func:`diag_gaussian_step_` — the diagonal (m, s)-form with the deep-learning rows' options
  (rates, gradient averaging, prior precision, damping, square-root scaling), any batch shape.
- :func:`ivon_step_`, :func:`ivon_noise`, :func:`ivon_hess_estimate` — the diagonal-Gaussian
  (IVON) update on flat fp32 buffers, in place (vectorized torch ops on CPU).
- :mod:`blr.kernels.bernoulli` — the BayesBiNN update (relaxed draws, the Gumbel scale).
- :mod:`blr.kernels.triton_ivon` — the fused one-pass Triton IVON step (noise regenerated from
  (seed, index) by Philox, the next sample written by the same pass); imported on demand only,
  since importing triton must follow the ``TRITON_INTERPRET`` setting.

Kernels depend on :mod:`expfam` and torch only (never on the optimizers).

>>> import torch
>>> from blr.kernels import ivon_hess_estimate
>>> stat, hess = torch.ones(3), torch.ones(3)
>>> ivon_hess_estimate(stat, hess, ess=4.0, weight_decay=0.0, hess_approx="gradsq")
tensor([4., 4., 4.])
"""

from __future__ import annotations

from blr.kernels.diag_gaussian import (
    diag_gaussian_step_,
    ivon_hess_estimate,
    ivon_noise,
    ivon_step_,
)
from blr.kernels.full_gaussian import FullGaussianState, full_gaussian_step

__all__ = [
    "FullGaussianState",
    "diag_gaussian_step_",
    "full_gaussian_step",
    "ivon_hess_estimate",
    "ivon_noise",
    "ivon_step_",
]
