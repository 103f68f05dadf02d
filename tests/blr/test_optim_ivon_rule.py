"""blr.optim.beta2_for_steps: the β₂ of IVON's learned-curvature rule."""

from __future__ import annotations

import math

import pytest

from blr.optim import beta2_for_steps


@pytest.mark.parametrize("steps,remaining", [(1, 0.5), (1700, 0.01), (10**6, 1e-3)])
def test_beta2_leaves_the_asked_fraction_of_h0(steps, remaining):
    b2 = beta2_for_steps(steps, remaining)
    assert 0 < b2 < 1 and math.isclose(b2**steps, remaining, rel_tol=1e-9)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"steps": 10, "remaining": 0.0}, "remaining"),
        ({"steps": 10, "remaining": 1.0}, "remaining"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        beta2_for_steps(**kwargs)
