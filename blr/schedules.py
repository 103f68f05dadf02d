r"""Step-size schedules ρ_t (t = 1, 2, ...), for :class:`blr.BLR`.

Bias correction is a schedule (Khan & Rue 2023, Table 1 row 5): an exponential average started
at zero, v_t = β v_{t−1} + (1 − β) x_t, divided by 1 − β^t, equals the BLR-style average
v̂_t = (1 − ρ_t) v̂_{t−1} + ρ_t x_t with ρ_t = (1 − β)/(1 − β^t) (so ρ_1 = 1).

>>> from blr import schedules
>>> rho = schedules.bias_corrected(0.9)
>>> rho(1), round(rho(2), 4)
(1.0, 0.5263)
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], float]


def constant(rho: float) -> Schedule:
    """ρ_t = ρ.

    Example:
        >>> constant(0.1)(7)
        0.1
    """
    value = float(rho)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"rho must be a positive finite number, got {rho}")
    return lambda t: value


def bias_corrected(beta: float) -> Schedule:
    """ρ_t = (1 − β)/(1 − β^t): an exponential average with bias correction, as a BLR rate.

    Example:
        >>> s = bias_corrected(0.9)
        >>> [round(s(t), 4) for t in (1, 2, 3)]
        [1.0, 0.5263, 0.369]
    """
    b = float(beta)
    if not 0 <= b < 1:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")
    return lambda t: (1 - b) / (1 - b**t) if t >= 1 else 1.0


def as_schedule(rho: float | Schedule) -> Schedule:
    """A schedule from a number (constant) or a callable t ↦ ρ_t."""
    return rho if callable(rho) else constant(rho)
