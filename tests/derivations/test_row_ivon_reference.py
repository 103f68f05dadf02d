"""Row ``ivon`` against the authors' public code: ivon-opt 0.1.3 (``ivon.IVON``; GPL-3, a
test-only dependency that the package never imports) run on the row's 64 logistic regressions
with the row's draws equals the hand-coded IVON and the improved BLR (engine) of
:mod:`derivations.ivon` to rounding, float64, over the 40 steps, in the mean and in h.

Same noise: ivon-opt draws ``torch.randn(numel)`` from torch's global generator in
``_sample_params``, once per ``sampled_params()``; with one parameter of shape (64, 3) that is one
``randn(192)`` per step, the same numbers as the row's ``randn((1, 64, 3))`` from a generator
seeded alike (both are torch's CPU Mersenne twister), so seeding the global generator with the
row's noise seed (inside ``fork_rng``) feeds ivon-opt the row's z. One parameter holding the 64
copies is 64 independent IVONs: ivon-opt is elementwise and the loss is the sum of the copies'
minibatch means, so each copy's gradient is its own ∇ℓ_B.
"""

from __future__ import annotations

import functools

import ivon as ivon_opt
import pytest
import torch

from derivations import ivon as row

TOL = 1e-10

#: ivon-opt's arguments for the row's settings (no lr rescaling, no clipping: the defaults of
#: ``clip_radius`` and ``debias``, one MC sample, the Price/Stein Hessian).
SETTINGS = dict(
    lr=row.LR,
    ess=row.N,
    hess_init=row.H0,
    beta1=row.BETA1,
    beta2=row.BETA2,
    weight_decay=row.DELTA,
    hess_approx="price",
    rescale_lr=False,
)


def run_ivon_opt(pb: row.Problem, seed: int, **changes: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ivon-opt on the copies of ``pb`` (one (B, D) parameter, zero init), its draws from the
    global generator seeded with ``seed``; returns the means and h ``(T + 1, B, D)``."""
    steps, copies = pb.z.shape[0], pb.z.shape[1]
    w = torch.nn.Parameter(torch.zeros(copies, row.D, dtype=torch.float64))
    opt = ivon_opt.IVON([w], **{**SETTINGS, **changes})

    def hess() -> torch.Tensor:
        return opt.param_groups[0]["hess"].view(copies, row.D).clone()

    means, hs = [w.detach().clone()], [hess()]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for t in range(steps):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                (row.likelihood(pb.xb[t], pb.yb[t])(w.unsqueeze(0)).sum() / row.N).backward()
            opt.step()
            means.append(w.detach().clone())
            hs.append(hess())
    return torch.stack(means), torch.stack(hs)


@functools.cache
def problem() -> row.Problem:
    return row.problem()


@functools.cache
def reference() -> tuple[torch.Tensor, torch.Tensor]:
    return run_ivon_opt(problem(), problem().noise_seed)


@functools.cache
def classical() -> tuple[torch.Tensor, torch.Tensor]:
    m, h, _ = row.classical(problem())
    return m, h


def dev(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """max |Δ| over the means and the h's."""
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_the_draws_fed_to_ivon_opt_are_the_rows():
    """The global generator seeded with the row's seed gives the row's z, step by step."""
    pb = problem()
    with torch.random.fork_rng():
        torch.manual_seed(pb.noise_seed)
        z = torch.stack([torch.randn(pb.z[0].numel(), dtype=torch.float64) for _ in pb.z])
    assert torch.equal(z.view_as(pb.z), pb.z)


def test_ivon_opt_equals_the_hand_coded_ivon():
    ref = reference()
    assert ref[0].shape == ref[1].shape == (row.STEPS + 1, row.COPIES, row.D)
    assert dev(ref, classical()) < TOL
    assert (ref[0][-1] - ref[0][0]).abs().max() > 0.5  # the means moved
    assert (ref[1][-1] - row.H0).abs().max() > 1.0  # and so did h


def test_ivon_opt_equals_the_improved_blr():
    assert dev(reference(), row.blr_instance(problem())) < TOL


@pytest.mark.parametrize(
    ("side", "change"),
    [
        ("ivon-opt", {"lr": 1.01 * row.LR}),
        ("ivon-opt", {"beta2": 1.01 * row.BETA2}),
        ("ivon-opt", {"weight_decay": 1.01 * row.DELTA}),
        ("classical", {"lr": 1.01 * row.LR}),
        ("classical", {"beta1": 1.01 * row.BETA1}),
        ("engine", {"beta2": 1.01 * row.BETA2}),
        ("engine", {"delta": 1.01 * row.DELTA}),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}×1.01" for k in v),
)
def test_a_one_percent_change_on_one_side_breaks_the_agreement(side, change):
    """The comparisons above can fail: 1% on one side moves the iterates ≥ 100× the tolerance."""
    pb = problem()
    if side == "ivon-opt":
        assert dev(run_ivon_opt(pb, pb.noise_seed, **change), classical()) > 100 * TOL
    elif side == "classical":
        m, h, _ = row.classical(pb, **change)
        assert dev(reference(), (m, h)) > 100 * TOL
    else:
        assert dev(reference(), row.blr_instance(pb, **change)) > 100 * TOL


def test_other_draws_give_other_iterates():
    """The agreement depends on feeding ivon-opt the row's draws: another seed differs."""
    pb = problem()
    assert dev(run_ivon_opt(pb, pb.noise_seed + 1), classical()) > 1e-3
