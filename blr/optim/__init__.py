"""torch.optim drop-ins built on the kernels of :mod:`blr.kernels`: :class:`IVON`,
:class:`Vadam` and :class:`BayesBiNN` (VOGN, OGN and VON are to come)."""

from __future__ import annotations

from blr.optim import curvature
from blr.optim._base import SamplingOptimizer
from blr.optim.bayesbinn import BayesBiNN
from blr.optim.curvature import PerExample
from blr.optim.ivon import IVON
from blr.optim.vadam import Vadam

__all__ = ["IVON", "BayesBiNN", "PerExample", "SamplingOptimizer", "Vadam", "curvature"]
