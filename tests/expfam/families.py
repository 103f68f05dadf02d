"""The families under test: every entry of ``expfam.FAMILIES`` plus configured variants that the
registry's default instances do not cover (a matrix Σ₀ for the fixed-covariance Gaussian)."""

from __future__ import annotations

import torch

import expfam
from expfam import ExpFamily

_cov = torch.tensor([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]], dtype=torch.float64)

UNDER_TEST: dict[str, ExpFamily] = {
    **expfam.FAMILIES,
    "gaussian_fixed_cov[matrix]": expfam.FixedCovGaussian(cov=_cov),
}
IDS = list(UNDER_TEST)
ALL = [UNDER_TEST[k] for k in IDS]
