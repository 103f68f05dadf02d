"""torch.optim optimizers: the generic :class:`BLROptimizer` (the Bayesian learning rule for any
family of :mod:`expfam`, over the parameters of each param group), and the drop-ins built on the
kernels of :mod:`blr.kernels`: :class:`IVON`, :class:`VON`,
:class:`VOGN`, :class:`OGN`, :class:`Vadam`, :class:`BayesBiNN` and :class:`BSAM`, VOGN and OGN
with per-example curvature from :class:`blr.curvature.PerExample`; and the Bayes-by-backprop
baseline :class:`BayesByBackprop` (Adam on the ELBO)."""

from __future__ import annotations

from blr.optim._base import SamplingOptimizer
from blr.optim.bayesbinn import BayesBiNN
from blr.optim.bbb import BayesByBackprop
from blr.optim.bsam import BSAM
from blr.optim.generic import BLROptimizer
from blr.optim.ivon import IVON, VON, beta2_for_steps
from blr.optim.vadam import Vadam
from blr.optim.vogn import OGN, VOGN

__all__ = [
    "BSAM",
    "IVON",
    "OGN",
    "VOGN",
    "VON",
    "BLROptimizer",
    "BayesBiNN",
    "BayesByBackprop",
    "SamplingOptimizer",
    "Vadam",
    "beta2_for_steps",
]
