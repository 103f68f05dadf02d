"""torch.optim drop-ins built on the kernels of :mod:`blr.kernels`: :class:`IVON` and
:class:`BayesBiNN` (VOGN, OGN and VON/Vadam are to come)."""

from __future__ import annotations

from blr.optim._base import SamplingOptimizer
from blr.optim.bayesbinn import BayesBiNN
from blr.optim.ivon import IVON

__all__ = ["IVON", "BayesBiNN", "SamplingOptimizer"]
