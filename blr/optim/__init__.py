"""torch.optim drop-ins built on the kernels of :mod:`blr.kernels`: :class:`IVON` (more to come:
VOGN, OGN, VON/Vadam, BayesBiNN)."""

from __future__ import annotations

from blr.optim._base import SamplingOptimizer
from blr.optim.ivon import IVON

__all__ = ["IVON", "SamplingOptimizer"]
