"""torch.optim drop-ins built on the kernels of :mod:`blr.kernels`: :class:`IVON`, :class:`VON`,
:class:`VOGN`, :class:`OGN`, :class:`Vadam` and :class:`BayesBiNN`, with per-example curvature
from :class:`PerExample`."""

from __future__ import annotations

from blr.optim import curvature
from blr.optim._base import SamplingOptimizer
from blr.optim.bayesbinn import BayesBiNN
from blr.optim.curvature import PerExample
from blr.optim.ivon import IVON, VON
from blr.optim.vadam import Vadam
from blr.optim.vogn import OGN, VOGN

__all__ = [
    "IVON",
    "OGN",
    "VOGN",
    "VON",
    "BayesBiNN",
    "PerExample",
    "SamplingOptimizer",
    "Vadam",
    "curvature",
]
