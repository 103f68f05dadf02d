"""Row ``vadam``: blr.optim.Vadam on θ ∈ R² equals the hand-coded Vadam of the row under the same
draws (kept out of ``check()``: constructing a torch optimizer imports torch._dynamo, 1–3 s).
:class:`blr.optim.Vadam` requires ``prec_init`` > 0, so the comparison is at s₀ = 1, where the
hand-coded Vadam is no longer the BLR (the row's docstring)."""

from __future__ import annotations

import torch

from derivations import vadam


def _setup():
    x, y = vadam.data()
    batches = vadam.minibatches(vadam.STEPS)
    m0 = torch.zeros(vadam.D, dtype=torch.float64)
    return x, y, batches, m0


def test_blr_optim_vadam_equals_the_hand_coded_vadam_under_the_same_draws():
    x, y, batches, m0 = _setup()
    eps = vadam.draws(vadam.STEPS, vadam.SEED, (vadam.D,))
    ref = vadam.classical(m0, eps, x, y, batches, s0=vadam.OPT_S0)
    opt = vadam.optimizer_instance(m0, x, y, batches, seed=vadam.SEED)
    assert opt.shape == ref.shape == (vadam.STEPS + 1, vadam.D)
    assert (opt - ref).abs().max() < 1e-10
    assert (opt[-1] - opt[0]).abs().max() > 0.05  # it moved


def test_the_agreement_depends_on_the_draws_and_on_s0():
    """Another seed, or the hand-coded Vadam at s₀ = 0, differs by far more than 1e-10."""
    x, y, batches, m0 = _setup()
    eps = vadam.draws(vadam.STEPS, vadam.SEED, (vadam.D,))
    ref = vadam.classical(m0, eps, x, y, batches, s0=vadam.OPT_S0)
    other = vadam.optimizer_instance(m0, x, y, batches, seed=vadam.SEED + 1)
    assert (other - ref).abs().max() > 1e-3
    opt = vadam.optimizer_instance(m0, x, y, batches, seed=vadam.SEED)
    assert (opt - vadam.classical(m0, eps, x, y, batches)).abs().max() > 1e-8
