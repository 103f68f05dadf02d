"""blr.optim.BSAM against the hand-coded bSAM of derivations/bsam.py (float64, the same draws and
minibatches), SAM as its point-estimate limit, and its conventions (closure or two blocks,
posterior, state_dict, bad use)."""

from __future__ import annotations

import io

import pytest
import torch

from blr.optim import BSAM
from derivations import bsam as ref
from derivations.ivon import D, Problem, problem

f64 = torch.float64
SEED = 11


def _setup(steps=40):
    """Copy 0 of the bSAM row's logistic regressions, with the draws the optimizer will take
    (one torch.randn(D) per step from a generator seeded as its own)."""
    pb = problem(copies=1, steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    z = torch.stack([torch.randn(D, dtype=f64, generator=gen) for _ in range(steps)])
    return Problem(pb.xb, pb.yb, z.unsqueeze(1), SEED)


def _logistic(model, xb, yb):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(xb).squeeze(-1), yb)


def _run(pb, closure_style=True, **kw):
    model = torch.nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    settings = dict(
        lr=ref.LR, ess=ref.N, rho=ref.RADIUS, beta1=ref.BETA1, beta2=ref.BETA2,
        weight_decay=ref.DELTA, damping=ref.DAMPING, s_init=ref.S0, seed=SEED,
    )  # fmt: skip
    settings.update(kw)
    opt = BSAM(model.parameters(), **settings)
    means, scales = [], []
    for t in range(pb.z.shape[0]):
        xb, yb = pb.xb[t, 0], pb.yb[t, 0]
        if closure_style:

            def closure(xb=xb, yb=yb):
                opt.zero_grad()
                loss = _logistic(model, xb, yb)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            with opt.sampled_params(train=True):
                opt.zero_grad()
                _logistic(model, xb, yb).backward()
            opt.zero_grad()  # (g₁ is kept by the optimizer)
            with opt.adversarial_params():
                _logistic(model, xb, yb).backward()
            opt.step()
        state = opt.state_dict()["state"][0]
        means.append(state["mean"].reshape(-1).clone())
        scales.append(state["scale"].reshape(-1).clone())
    return torch.stack(means), torch.stack(scales), opt, model


@pytest.mark.parametrize("closure_style", [True, False], ids=["closure", "two_blocks"])
def test_bsam_equals_the_hand_coded_bsam(closure_style):
    """BSAM(lr=α, ess=N, rho=r, betas, weight_decay=δ, damping=c, s_init=s₀) takes the steps of
    derivations/bsam.py's hand-coded bSAM (its gradients written out by hand) with the same
    draws and minibatches: m and s over 40 steps within 1e-10 (measured: ≤ 1e-15)."""
    pb = _setup()
    m_ref, s_ref = ref.classical(pb)
    m, s, _, _ = _run(pb, closure_style)
    assert float((m - m_ref[1:, 0]).abs().max()) <= 1e-10
    assert float((s - s_ref[1:, 0]).abs().max()) <= 1e-10


@pytest.mark.parametrize(
    ("kw", "why"),
    [(dict(rho=0.06), "the radius r"), (dict(damping=0.0), "the damping c"),
     (dict(weight_decay=0.2), "δ in ḡ and s"), (dict(beta2=0.8), "the rate of s")],
)  # fmt: skip
def test_the_bsam_equality_fails_when_a_setting_differs(kw, why):
    pb = _setup(10)
    m_ref, s_ref = ref.classical(pb)
    m, s, _, _ = _run(pb, **kw)
    gap = max(float((m - m_ref[1:, 0]).abs().max()), float((s - s_ref[1:, 0]).abs().max()))
    assert gap > 1e-8, (why, gap)


def test_sam_is_the_point_estimate_limit():
    """sample=False (θ = m), beta2=1 and s_init=1: SAM with the unnormalized ascent step
    ε = r∇ℓ_B(m) and heavy-ball momentum, written by hand, over 20 steps (δ = 0, c = 0)."""
    pb = _setup(20)
    _, s, opt, _ = _run(pb, sample=False, beta2=1.0, s_init=1.0, weight_decay=0.0, damping=0.0)
    m = torch.zeros(D, dtype=f64)
    mom = torch.zeros(D, dtype=f64)
    for t in range(20):
        xb, yb = pb.xb[t, 0], pb.yb[t, 0]
        g1 = ref.logistic_grad(xb[None], yb[None], m[None])[0]
        g = ref.logistic_grad(xb[None], yb[None], (m + ref.RADIUS * g1)[None])[0]
        mom = ref.BETA1 * mom + (1 - ref.BETA1) * g
        m = m - ref.LR * mom
    assert torch.equal(s[-1], torch.ones(D, dtype=f64))
    torch.testing.assert_close(opt.state_dict()["state"][0]["mean"].reshape(-1), m,
                               rtol=0, atol=1e-12)  # fmt: skip


def test_bsam_posterior_checkpoint_and_bad_use():
    """posterior() is N(m, 1/(N s)); a state_dict resumes bit for bit (weights_only); a step
    without the adversarial gradient, two adversarial blocks and mc_samples > 1 are refused."""
    pb = _setup(6)
    _, s, opt, model = _run(pb)
    post = opt.posterior()
    torch.testing.assert_close(-2 * post.nat.lam2, ref.N * s[-1])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    other = torch.nn.Linear(D, 1, bias=False).double()
    resumed = BSAM(other.parameters(), lr=ref.LR, ess=ref.N)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.weight, model.weight)
    xb, yb = pb.xb[0, 0], pb.yb[0, 0]
    with opt.sampled_params(train=True):
        _logistic(model, xb, yb).backward()
    with pytest.raises(RuntimeError, match="needs the gradient at the adversarial point"):
        opt.step()
    with pytest.raises(RuntimeError, match="follows exactly one sampled_params"):
        with opt.adversarial_params():
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="mc_samples"):
        BSAM(other.parameters(), lr=0.1, ess=10, mc_samples=2)


@pytest.mark.parametrize("where", ["between", "inside_adversarial", "before_step"])
def test_a_prediction_draw_inside_the_step_changes_nothing(where):
    """A prediction draw (``sampled_params()``: an evaluation) after g₁ is collected and before
    ``step()`` used to overwrite g₁, kept in the draw buffer: the step then went wrong silently
    (up to 0.07 in m). Now g₁ is moved out first: three steps, the last with the draw, equal a
    clean run bit for bit (the draw only in the last step: it consumes a draw of the noise
    stream, so later training draws differ)."""

    def run(draw_at):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        opt = BSAM(model.parameters(), lr=0.1, ess=32, rho=0.05, seed=1)
        g = torch.Generator().manual_seed(2)
        for step in range(3):
            here = draw_at if step == 2 else None
            x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
            loss = lambda x=x, y=y: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
            with opt.sampled_params(train=True):
                opt.zero_grad()
                loss().backward()
            if here == "between":
                with opt.sampled_params():
                    model(x)
            with opt.adversarial_params():
                loss().backward()
                if here == "inside_adversarial":
                    with opt.sampled_params():
                        model(x)
            if here == "before_step":
                with opt.sampled_params():
                    model(x)
            opt.step()
        return [p.detach().clone() for p in model.parameters()], opt.state_dict()["state"]

    clean, with_draw = run(None), run(where)
    for a, b in zip(clean[0], with_draw[0]):
        assert torch.equal(a, b)
    for i, st in clean[1].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, with_draw[1][i][k]), (i, k)
