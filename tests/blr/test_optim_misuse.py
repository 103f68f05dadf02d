"""The optimizers of blr.optim under the misuse that real training loops produce: nested draws,
parameters listed twice or on the meta device, out-of-range rates (issue "The optimizers in the
training loops people use", item 5). Each check failed before the fix: a prediction draw inside a
training draw moved the mean, two nested training draws broke the optimizer for good, and the
bad parameters failed only at the first draw with a misleading message."""

from __future__ import annotations

import pytest
import torch

import blr
import expfam
from blr.optim import (
    IVON,
    OGN,
    VOGN,
    BayesBiNN,
    BayesByBackprop,
    BLROptimizer,
    Vadam,
)

f64 = torch.float64


def _model(binary: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.double()
    if binary:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.where(p >= 0, 1.0, -1.0))
    return model


MAKERS = {
    "IVON": lambda ps, m: IVON(ps, lr=0.1, ess=50, seed=0),
    "VOGN": lambda ps, m: VOGN(ps, lr=0.1, ess=50, seed=0, model=m, curvature="ef"),
    "OGN": lambda ps, m: OGN(ps, lr=0.1, ess=50, seed=0, model=m, curvature="ef"),
    "Vadam": lambda ps, m: Vadam(ps, lr=0.1, ess=50, seed=0),
    "BayesBiNN": lambda ps, m: BayesBiNN(ps, lr=0.1, ess=50, seed=0),
    "BayesByBackprop": lambda ps, m: BayesByBackprop(ps, lr=0.1, ess=50, seed=0),
    "BLROptimizer": lambda ps, m: BLROptimizer(ps, expfam.DiagGaussian(), lr=0.1, ess=50, seed=0),
}
NAMES = list(MAKERS)


def _make(name: str, params=None, model=None):
    """The model and its optimizer, after one prediction draw (BayesBiNN writes E_q[θ] = tanh λ
    into the ±1 weights at its first draw)."""
    model = _model(binary=name == "BayesBiNN") if model is None else model
    params = list(model.parameters()) if params is None else params
    opt = MAKERS[name](params, model)
    with opt.sampled_params():
        pass
    return model, opt


def _values(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _close(a, b) -> bool:
    """Equal up to one rounding: a training draw added in place and subtracted again."""
    return all(torch.allclose(x, y, rtol=1e-15, atol=1e-15) for x, y in zip(a, b))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g, dtype=f64), torch.randn(8, 1, generator=g, dtype=f64)


@pytest.mark.parametrize("name", NAMES)
def test_a_prediction_draw_inside_a_training_draw_restores_it_exactly(name):
    """Inside a training draw, a nested prediction draw (a validation pass) holds another draw,
    and on exit the training draw is back bit for bit; the step then equals the one without the
    nested draw (same gradients at the same θ; the nested draw only consumes random numbers, so
    the comparison takes the step right after)."""
    x, y = _batch()
    results = []
    for nested in (False, True):
        model, opt = _make(name)
        mean = _values(model)
        with opt.sampled_params(train=True):
            theta = _values(model)
            if nested:
                with opt.sampled_params(train=False):
                    inner = _values(model)
                    if name != "OGN":  # (OGN's draws are the mean: the delta method)
                        assert not _same(inner, theta) and not _same(inner, mean)
                assert _same(_values(model), theta)
            torch.nn.functional.mse_loss(model(x), y).backward()
        assert _close(_values(model), mean)
        opt.step()
        results.append(_values(model))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_a_prediction_draw_nested_in_a_prediction_draw_is_a_draw_from_q(name):
    """The nested draw is θ' ~ q around the mean (not around the open draw): its offset from
    the mean is independent of the open draw's offset."""
    model, opt = _make(name)
    mean = _values(model)
    with opt.sampled_params():
        outer = _values(model)
        with opt.sampled_params():
            inner = _values(model)
        assert _same(_values(model), outer)
    assert _same(_values(model), mean)
    if name == "OGN":  # the delta method: every draw is the mean
        assert _same(inner, mean) and _same(outer, mean)
        return
    if name == "BayesBiNN":  # ±1 draws: the inner one is a fresh draw, not the outer one
        assert not _same(inner, outer)
        return
    d_outer = torch.cat([(o - m).reshape(-1) for o, m in zip(outer, mean)])
    d_inner = torch.cat([(i - m).reshape(-1) for i, m in zip(inner, mean)])
    # around m, not around the outer draw: the offsets are not correlated like θ' − m = θ − m + ε
    assert float((d_inner - d_outer).norm()) > 0.5 * float(d_outer.norm())
    assert abs(float(torch.dot(d_inner, d_outer))) < 0.9 * float(d_inner.norm() * d_outer.norm())


@pytest.mark.parametrize("name", NAMES)
def test_a_nested_training_draw_is_refused_and_the_optimizer_still_works(name):
    x, y = _batch()
    model, opt = _make(name)
    mean = _values(model)
    with opt.sampled_params(train=True):
        theta = _values(model)
        with pytest.raises(RuntimeError, match="training draw cannot be nested"):
            with opt.sampled_params(train=True):
                pass  # pragma: no cover
        assert _same(_values(model), theta)
        torch.nn.functional.mse_loss(model(x), y).backward()
    assert _close(_values(model), mean)
    opt.step()  # the optimizer is not broken
    with opt.sampled_params(train=True):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_a_parameter_listed_twice_is_refused_by_name(name):
    model = _model(binary=name == "BayesBiNN")
    params = list(model.parameters())
    with pytest.raises(ValueError, match=r"params: parameter 4 of param group 0 is parameter 0"):
        _make(name, params=[*params, params[0]], model=model)
    _, opt = _make(name, params=params[:2], model=model)
    with pytest.raises(ValueError, match=r"params: parameter 0 of param group 1 is parameter 1"):
        opt.add_param_group({"params": [params[1], params[2]]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", NAMES)
def test_a_meta_device_parameter_is_refused_at_construction(name):
    with torch.device("meta"):
        model = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match=r"params: parameter 0 of param group 0 is on the meta"):
        MAKERS[name](list(model.parameters()), model)


@pytest.mark.parametrize("beta1", [1.0, 1.5])
def test_ivon_refuses_beta1_of_one(beta1):
    """1 − β₁ᵗ divides the momentum: β₁ = 1 was accepted and then divided by zero. β₂ = 1
    (a frozen Hessian estimate) stays valid."""
    with pytest.raises(ValueError, match=r"beta1 must lie in \[0, 1\)"):
        IVON(_model().parameters(), lr=0.1, ess=10, beta1=beta1)
    IVON(_model().parameters(), lr=0.1, ess=10, beta2=1.0)


# ---------------------------------------------------------------------------- cycling schedulers
def _schedule(kind: str, steps: int) -> list[tuple[float, float]]:
    """(lr, momentum) per step from torch's scheduler driving torch.optim.SGD(momentum=...):
    the oracle, computed by an optimizer torch's schedulers were written for."""
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    sched = _scheduler(kind, sgd, steps)
    out = []
    for _ in range(steps):
        out.append((sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"]))
        sgd.step()
        sched.step()
    return out


def _scheduler(kind, opt, steps):
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    return torch.optim.lr_scheduler.CyclicLR(opt, 0.01, 0.2, step_size_up=3)


@pytest.mark.parametrize("kind", ["onecycle", "cyclic"])
@pytest.mark.parametrize("name", ["IVON", "VOGN", "BayesBiNN"])
def test_cycling_schedulers_move_the_momentum_rate(kind, name):
    """OneCycleLR and CyclicLR with the default cycle_momentum=True raised ("optimizer must
    support momentum or beta1"). Now they drive the optimizer's momentum rate (β₁; BayesBiNN's
    β) through the group's ``"momentum"`` alias: 8 steps equal a run whose lr and rate are set
    by hand to the values the scheduler gives torch.optim.SGD, bit for bit."""
    x, y = _batch()
    key = "beta" if name == "BayesBiNN" else "beta1"
    steps = 8
    plan = _schedule(kind, steps)
    runs = []
    for scheduled in (True, False):
        model, opt = _make(name)
        sched = _scheduler(kind, opt, steps) if scheduled else None
        for lr, momentum in plan:
            if scheduled:
                assert opt.param_groups[0]["lr"] == lr
            else:
                opt.param_groups[0]["lr"], opt.param_groups[0][key] = lr, momentum
            with opt.sampled_params(train=True):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            assert opt.param_groups[0][key] == momentum == opt.param_groups[0]["momentum"]
            if sched is not None:
                sched.step()
        runs.append(_values(model))
    assert _same(*runs)


def test_the_momentum_alias_follows_the_rate_and_is_checked():
    """Setting β₁ by hand updates the alias at the next step; a scheduler's out-of-range value is
    refused by the rate's rule; a group giving both keys must give one value; a checkpoint
    resumes both."""
    x, y = _batch()
    model, opt = _make("IVON")

    def step():
        with opt.sampled_params(train=True):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    opt.param_groups[0]["beta1"] = 0.5
    step()
    assert opt.param_groups[0]["momentum"] == 0.5
    opt.param_groups[0]["momentum"] = 1.0
    with pytest.raises(ValueError, match=r"beta1 must lie in \[0, 1\)"):
        step()
    opt.param_groups[0]["momentum"] = 0.7
    step()
    assert opt.param_groups[0]["beta1"] == 0.7
    _, other = _make("IVON")
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["beta1"] == other.param_groups[0]["momentum"] == 0.7
    extra = torch.nn.Linear(2, 1).double()
    with pytest.raises(ValueError, match=r"momentum \(0.5\) is an alias of beta1 \(0.9\)"):
        opt.add_param_group({"params": extra.parameters(), "momentum": 0.5, "beta1": 0.9})
    opt.add_param_group({"params": extra.parameters(), "momentum": 0.5})
    assert opt.param_groups[1]["beta1"] == 0.5


# ---------------------------------------------------------------------------- AMP and clipping
AMP_MAKERS = {
    "IVON": lambda ps, m: IVON(ps, lr=0.1, ess=50, seed=0),
    "IVON_gradsq": lambda ps, m: IVON(ps, lr=0.1, ess=50, seed=0, hess_approx="gradsq"),
    "IVON_b2": lambda ps, m: IVON(ps, lr=0.1, ess=50, seed=0, beta2=0.9),  # h moves fast
    "VOGN_ef": lambda ps, m: VOGN(ps, lr=0.1, ess=50, seed=0, model=m, curvature="ef"),
    "VOGN_ggn": lambda ps, m: VOGN(ps, lr=0.1, ess=50, seed=0, model=m, loss="gaussian"),
    "Vadam": lambda ps, m: Vadam(ps, lr=0.1, ess=50, seed=0),
    "BayesBiNN": lambda ps, m: BayesBiNN(ps, lr=0.1, ess=50, seed=0),
}


def _amp_run(name, scale, steps=6, mc=1, overflow_at=None, clip=None, dtype=f64, autocast=False):
    """``steps`` training steps of ``AMP_MAKERS[name]`` on the MLP; ``scale``: a GradScaler with
    that initial scale (None: none). ``overflow_at``: an Inf in one gradient at that step.
    ``clip``: (where, max_norm) with where "inside" (clip_grad_norm_ before leaving the sampled
    block) or "between" (after it, before step; with a scaler, after scaler.unscale_)."""
    binary = name == "BayesBiNN"
    model = _model(binary=binary).to(dtype)
    opt = AMP_MAKERS[name](list(model.parameters()), model)
    scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
    x, y = (t.to(dtype) for t in _batch())
    for t in range(steps):
        for _ in range(mc):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
                    out = model(x)
                loss = torch.nn.functional.mse_loss(out.to(dtype), y)
                (loss if scaler is None else scaler.scale(loss)).backward()
                if overflow_at == t:
                    next(model.parameters()).grad[0, 0] = float("inf")
                if clip is not None and clip[0] == "inside":
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip[1])
        if clip is not None and clip[0] == "between":
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip[1])
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
    return opt, _values(model)


@pytest.mark.parametrize("mc", [1, 2])
@pytest.mark.parametrize("name", list(AMP_MAKERS))
def test_grad_scaler_removes_the_scale_from_the_gradient_and_the_curvature(name, mc):
    """A power-of-two loss scale multiplies every gradient exactly, so with the scale removed
    from ĝ (1/S) and from the curvature statistic (1/Sᵖ: σz⊙g, g², or a GGN that ignores it)
    the run under torch.amp.GradScaler IS the unscaled run, bit for bit. Before, the statistic
    kept the scale: IVON's mean Hessian grew with S (10.09 against 0.9997 in the issue)."""
    _, plain = _amp_run(name, None, mc=mc)
    _, scaled = _amp_run(name, 2.0**12, mc=mc)
    assert _same(plain, scaled)


@pytest.mark.parametrize("name", ["IVON", "VOGN_ef", "BayesBiNN"])
def test_an_overflow_step_is_skipped_and_its_sample_dropped(name):
    """GradScaler finds the Inf and lets the optimizer skip the step (it used to keep the Inf
    sample, and the next step raised): the state does not move, the step is counted as skipped,
    training goes on with finite values."""
    opt, values = _amp_run(name, 2.0**12, steps=4, overflow_at=1)
    assert opt.skipped_steps == 1
    assert opt.param_groups[0]["step"] == 3
    assert all(torch.isfinite(v).all() for v in values)


def test_fp16_autocast_with_grad_scaler_follows_the_fp32_run():
    """fp16 autocast (CPU) + GradScaler against fp32 without a scaler, IVON (β₂ = 0.9, so that
    the Hessian estimate moves) on the MLP: after 6 steps the means and the posterior
    precisions agree to 1e-2 relative (fp16 rounding of activations and gradients; measured
    3e-4 on the means and the precisions; with the scale left in ĥ (before) the precisions were
    off by orders of magnitude)."""
    opt32, fp32 = _amp_run("IVON_b2", None, dtype=torch.float32)
    opt16, amp = _amp_run("IVON_b2", 2.0**12, dtype=torch.float32, autocast=True)
    for a, b in zip(amp, fp32):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    fam = expfam.DiagGaussian()
    prec32, prec16 = (fam.to_moments(o.posterior().nat)[1] for o in (opt32, opt16))
    torch.testing.assert_close(prec16, prec32, rtol=1e-2, atol=0)


@pytest.mark.parametrize("scale", [None, 2.0**10])
@pytest.mark.parametrize("name", ["IVON", "IVON_gradsq", "BayesBiNN"])
def test_clipping_between_the_sample_and_step_reaches_the_curvature_too(name, scale):
    """clip_grad_norm_ after the sampled block (after scaler.unscale_ with a scaler) is the same
    as clipping inside it: the statistic is formed at step() from the clipped gradients (it was
    formed from the unclipped ones, so ĥ ignored the clipping)."""
    _, inside = _amp_run(name, None, clip=("inside", 0.05))
    _, between = _amp_run(name, scale, clip=("between", 0.05))
    _, unclipped = _amp_run(name, None)
    assert _same(inside, between) if scale is None else _close_all(inside, between)
    assert not _close_all(inside, unclipped)


def _close_all(a, b) -> bool:
    return all(torch.allclose(x, y, rtol=1e-12, atol=1e-14) for x, y in zip(a, b))


@pytest.mark.parametrize(("name", "mc"), [("VOGN_ef", 1), ("IVON", 2)])
def test_changing_gradients_formed_into_a_statistic_at_collection_is_refused(name, mc):
    """Where the statistic is formed when the sample is collected (VOGN's per-example curvature;
    several samples per step), clipping or unscale_ afterwards cannot reach it: a clear error,
    the state unchanged."""
    with pytest.raises(RuntimeError, match="the gradients changed after their sample"):
        _amp_run(name, None, steps=1, mc=mc, clip=("between", 1e-3))


OTHER_AMP = {
    "BayesByBackprop": lambda ps, m: BayesByBackprop(ps, lr=0.01, ess=50, seed=0),
    "BLROptimizer": lambda ps, m: BLROptimizer(ps, expfam.DiagGaussian(), lr=0.1, ess=50, seed=0),
    "BLROptimizer_ef": lambda ps, m: BLROptimizer(
        ps, expfam.DiagGaussian(), lr=0.1, ess=50, seed=0, model=m,
        estimator=blr.BonnetPrice(hessian="per_example"),
    ),
    "BLROptimizer_ggn": lambda ps, m: BLROptimizer(
        ps, expfam.DiagGaussian(), lr=0.1, ess=50, seed=0, model=m, curvature_loss="gaussian",
        estimator=blr.BonnetPrice(hessian="ggn"),
    ),
}  # fmt: skip
AMP_MAKERS.update(OTHER_AMP)


@pytest.mark.parametrize("mc", [1, 2])
@pytest.mark.parametrize("name", list(OTHER_AMP))
def test_grad_scaler_with_bayes_by_backprop_and_the_generic_optimizer(name, mc):
    """The same protocol for the optimizers that take the gradients when a draw is collected:
    the GradScaler run equals the unscaled run bit for bit (gradients 1/S; per-example squared
    gradients 1/S²; the GGN unchanged), an overflow is skipped, and clipping after the sampled
    block is refused with a clear error (it cannot reach the collected gradients)."""
    _, plain = _amp_run(name, None, mc=mc)
    _, scaled = _amp_run(name, 2.0**12, mc=mc)
    assert _same(plain, scaled)
    opt, values = _amp_run(name, 2.0**12, steps=3, overflow_at=1, mc=mc)
    assert opt.skipped_steps == 1 and all(torch.isfinite(v).all() for v in values)
    with pytest.raises(RuntimeError, match="the gradients changed after their sample"):
        _amp_run(name, None, steps=1, mc=mc, clip=("between", 1e-3))


# ---------------------------------------------------------------------------- draw-ahead
AHEAD = {
    "IVON": lambda ps, ahead: IVON(ps, lr=0.1, ess=50, seed=0, draw_ahead=ahead),
    "IVON_b2": lambda ps, ahead: IVON(ps, lr=0.1, ess=50, seed=0, beta2=0.9, draw_ahead=ahead),
    "Vadam": lambda ps, ahead: Vadam(ps, lr=0.1, ess=50, seed=0, draw_ahead=ahead),
    "BayesBiNN": lambda ps, ahead: BayesBiNN(ps, lr=0.1, ess=50, seed=0, draw_ahead=ahead),
}


def _ahead_pair(name):
    binary = name == "BayesBiNN"
    a, b = _model(binary=binary), _model(binary=binary)
    return (a, AHEAD[name](list(a.parameters()), False)), (
        b,
        AHEAD[name](list(b.parameters()), True),
    )


def _mean_state(opt):
    return [v.clone() for e in opt.state_dict()["state"].values() for v in e.values()]


@pytest.mark.parametrize("name", list(AHEAD))
def test_draw_ahead_trains_loops_that_never_call_sampled_params(name):
    """With draw_ahead=True the weights hold a training draw between steps, so the plain loop
    ``loss.backward(); opt.step()`` (Hugging Face Trainer, Lightning's micro-batches, ...)
    trains at posterior draws: its posterior equals the sampled_params loop's over 6 steps (the
    same draws, in the same order; to one rounding of the saved mean). Without it such a loop
    trained at the mean."""
    x, y = _batch()
    (m_ref, ref), (m_ahead, ahead) = _ahead_pair(name)
    for _ in range(6):
        with ref.sampled_params(train=True):
            ref.zero_grad()
            torch.nn.functional.mse_loss(m_ref(x), y).backward()
        ref.step()
        ahead.zero_grad()
        torch.nn.functional.mse_loss(m_ahead(x), y).backward()  # at the held draw
        ahead.step()
        # (the saved mean of a held draw is θ − σz: equal up to one rounding, as a training
        # draw's restore; the next step starts from that same θ − σz in both runs)
        assert _close(_mean_state(ref), _mean_state(ahead))
    with ahead.mean_params():
        assert _close(_values(m_ahead), _values(m_ref))
    assert not _close(_values(m_ahead), _values(m_ref))  # outside: a draw


@pytest.mark.parametrize("mc", [1, 2])
def test_draw_ahead_with_a_closure_and_several_samples(mc):
    """``step(closure)`` (Lightning's automatic optimization) under draw_ahead: the first sample
    is the held draw, further ones are fresh draws around m; equal to the run without it."""
    x, y = _batch()
    m_ref, m_ahead = _model(), _model()
    ref = IVON(m_ref.parameters(), lr=0.1, ess=50, seed=0, mc_samples=mc)
    ahead = IVON(m_ahead.parameters(), lr=0.1, ess=50, seed=0, mc_samples=mc, draw_ahead=True)
    for model, opt in ((m_ref, ref), (m_ahead, ahead)):

        def closure(model=model, opt=opt):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        for _ in range(4):
            opt.step(closure)
    assert _close(_mean_state(ref), _mean_state(ahead))


def test_draw_ahead_evaluation_prediction_draws_and_checkpoints():
    """mean_params() gives the mean and puts the held draw back exactly; a prediction draw does
    too; a checkpoint saves the mean and the held draw, and the resumed run goes on bit for
    bit (also through torch.load(weights_only=True))."""
    import io

    x, y = _batch()
    model = _model()
    opt = IVON(model.parameters(), lr=0.1, ess=50, seed=0, draw_ahead=True)

    def step(model, opt):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    step(model, opt)
    held = _values(model)
    with opt.mean_params():
        mean = _values(model)
        assert not _same(mean, held)
    assert _same(_values(model), held)
    with opt.sampled_params():
        assert not _same(_values(model), held)
    assert _same(_values(model), held)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    sd_mean = [v for e in opt.state_dict()["state"].values() for k, v in e.items() if k == "mean"]
    assert _close(sd_mean, mean)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    other = _model(seed=5) if False else _model()
    other.load_state_dict(ckpt["model"])
    resumed = IVON(other.parameters(), lr=0.1, ess=50, draw_ahead=True)
    resumed.load_state_dict(ckpt["opt"])
    assert _same(_values(other), held)
    for _ in range(2):
        step(model, opt)
        step(other, resumed)
    assert _same(_values(model), _values(other))


def test_draw_ahead_under_grad_scaler():
    """A plain fp32 loop with GradScaler under draw_ahead equals the same loop without the
    scaler, bit for bit."""
    x, y = _batch()
    runs = []
    for scale in (None, 2.0**10):
        model = _model()
        opt = IVON(model.parameters(), lr=0.1, ess=50, seed=0, draw_ahead=True)
        scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
        for _ in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        runs.append(_mean_state(opt))
    assert _same(*runs)


@pytest.mark.parametrize("name", NAMES)
def test_a_prediction_draw_in_training_mode_warns_once(name):
    """sampled_params(train=False) while the model is in training mode kept dropout (and batch
    statistics) on without a word: now a UserWarning, once per optimizer; none in eval mode, for
    training draws, or for a model without such layers."""
    import warnings

    binary = name == "BayesBiNN"
    plain, opt = _make(name)
    x, _ = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opt.sampled_params():
            plain(x)  # training mode, but no dropout: nothing to warn about
    model = torch.nn.Sequential(plain, torch.nn.Dropout(0.5))
    model, opt = _make(name, model=model) if not binary else (model, opt)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opt.sampled_params():
            model(x)
    model.train()
    with pytest.warns(UserWarning, match=r"training mode: .*call model.eval\(\) first"):
        with opt.sampled_params():
            model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opt.sampled_params():  # (once)
            model(x)
        with opt.sampled_params(train=True):
            model(x).sum().backward()


def _plain_or_sampled_step(opt, model, x, y, ahead):
    """One step of the plain loop (``ahead``: the weights hold the draw) or of the
    sampled_params loop, on the mean squared error."""
    if ahead:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
    else:
        with opt.sampled_params(train=True):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _generic(kind, model, ahead):
    params = list(model.parameters())
    if kind == "diag":
        return BLROptimizer(params, expfam.DiagGaussian(), lr=0.1, ess=50, seed=0, draw_ahead=ahead)
    if kind == "bernoulli":
        return BLROptimizer(params, expfam.Bernoulli("pm1"), lr=0.01, ess=50, seed=0,
                            draw_ahead=ahead)  # fmt: skip
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    init = expfam.GammaNat(torch.full_like(theta, 9.0), -10.0 / theta)
    return BLROptimizer(params, expfam.Gamma(), lr=0.01, ess=50, seed=0, init=init,
                        draw_ahead=ahead)  # fmt: skip


def _generic_model(kind):
    model = _model(binary=kind == "bernoulli")
    if kind == "gamma":
        with torch.no_grad():
            for p in model.parameters():
                p.abs_().add_(0.05)
    return model


@pytest.mark.parametrize("kind", ["diag", "bernoulli", "gamma"])
def test_generic_optimizer_draw_ahead(kind):
    """BLROptimizer(draw_ahead=True): the plain loop trains at the held draws (Stein,
    Gumbel-softmax and reparameterization estimators) and equals the sampled_params loop bit
    for bit; mean_params() gives E_q[θ]; a checkpoint resumes at the held draw, bit for bit."""
    import io

    x, y = _batch()
    states = []
    for ahead in (False, True):
        model = _generic_model(kind)
        opt = _generic(kind, model, ahead)
        for _ in range(4):
            _plain_or_sampled_step(opt, model, x, y, ahead)
        states.append(opt.posterior().nat)
    assert all(torch.equal(a, b) for a, b in zip(*states))
    held = _values(model)
    with opt.mean_params():
        center = _values(model)
    assert _same(_values(model), held) and not _same(center, held)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    other = _generic_model(kind)
    resumed = _generic(kind, other, True)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert _same(_values(other), held)
    for m, o in ((model, opt), (other, resumed)):
        o.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()
    assert _same(_values(model), _values(other))


def test_generic_optimizer_draw_ahead_refuses_what_needs_the_sampled_block():
    model = _model()
    with pytest.raises(ValueError, match="draw_ahead=True trains without a sampled_params"):
        BLROptimizer(model.parameters(), expfam.DiagGaussian(), lr=0.1, ess=50, model=model,
                     estimator=blr.BonnetPrice(hessian="per_example"), draw_ahead=True)  # fmt: skip


def test_bayes_by_backprop_draw_ahead():
    """BayesByBackprop(draw_ahead=True): the plain loop equals the sampled_params loop bit for
    bit (the same z, the same Adam steps on m and ρ); mean_params() gives m; the model's state
    (the draw) with the optimizer's (m and z of the held draw) resumes bit for bit."""
    import io

    x, y = _batch()
    runs = []
    for ahead in (False, True):
        model = _model()
        opt = BayesByBackprop(model.parameters(), lr=0.01, ess=50, seed=0, draw_ahead=ahead)
        for _ in range(4):
            _plain_or_sampled_step(opt, model, x, y, ahead)
        with opt.mean_params():
            runs.append(_values(model))
    assert _same(*runs)
    held = _values(model)
    assert not _same(held, runs[1])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    other = _model()
    resumed = BayesByBackprop(other.parameters(), lr=0.01, ess=50, draw_ahead=True)
    other.load_state_dict(ckpt["model"])
    resumed.load_state_dict(ckpt["opt"])
    assert _same(_values(other), held)
    for m, o in ((model, opt), (other, resumed)):
        o.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()
    assert _same(_values(model), _values(other))


@pytest.mark.parametrize("curvature", ["ef", "ggn"])
def test_vogn_draw_ahead_keeps_its_per_example_pass_open_between_steps(curvature):
    """VOGN(draw_ahead=True): the per-example pass stays open around the held draw (paused for
    evaluation at the mean and for prediction draws), so the plain loop, with an evaluation
    forward between steps, equals the sampled_params loop (to one rounding of the saved
    mean)."""
    x, y = _batch()
    states = []
    for ahead in (False, True):
        model = _model()
        kw = dict(curvature=curvature) if curvature == "ef" else dict(loss="gaussian")
        opt = VOGN(model.parameters(), lr=0.1, ess=50, seed=0, model=model, draw_ahead=ahead,
                   **kw)  # fmt: skip
        for _ in range(4):
            if ahead:
                with opt.mean_params():
                    model(x)  # an evaluation (with gradients on) between steps: paused
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
            else:
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        states.append(_mean_state(opt))
    assert _close(*states)
