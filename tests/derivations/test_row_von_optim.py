"""Row ``von``: blr.optim.VON on an nn.Linear equals the hand-coded VON of the row, with one
rate and with two (kept out of ``check()``: a torch optimizer imports torch._dynamo, ~1.5 s)."""

from __future__ import annotations

import pytest

from blr.optim import VON
from derivations import ivon, von


@pytest.mark.parametrize("lr", [von.RHO, von.LR2])
def test_blr_optim_von_equals_the_hand_coded_von_under_the_same_draws(lr):
    one = ivon.single_copy(ivon.problem(), 0, ivon.NOISE_SEED + 2)
    ref_m, ref_s = von.classical(one, lr=lr)
    m, s = ivon.optimizer_instance(
        one.xb[:, 0],
        one.yb[:, 0],
        one.noise_seed,
        optimizer=VON,
        lr=lr,
        hess_init=von.S0,
        beta2=1 - von.RHO,
        weight_decay=von.DELTA,
    )
    assert (m - ref_m[:, 0]).abs().max() < 1e-10
    assert (s - ref_s[:, 0]).abs().max() < 1e-10
    assert (m[-1] - m[0]).abs().max() > 0.1
