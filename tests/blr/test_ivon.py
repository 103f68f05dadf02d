"""IVON: the kernel against the engine, the optimizer against ivon-opt 0.1.3 (a test-only
reference), Bayesian linear regression against the exact posterior, and the torch.optim
conventions (state_dict, closures, schedulers, groups, dtypes, errors)."""

from __future__ import annotations

import copy
import math

import ivon as ivon_ref
import pytest
import torch

import blr
import expfam
from blr.kernels.diag_gaussian import ivon_hess_estimate, ivon_step_
from blr.optim import IVON

f64 = torch.float64


# ---------------------------------------------------------------------------- the kernel
class _Given(blr.Estimator):
    """An estimator that returns prescribed (ĝ, ĥ) for the total loss ℓ̄."""

    def __init__(self, g, h):
        self.g, self.h = g, h

    def __call__(self, family, nat, loss, *, generator=None):
        return blr.Estimate(family.mean_grad_from_gh(nat, self.g, self.h), torch.tensor(0.0))


def _kernel_case():
    g = torch.Generator().manual_seed(0)
    n = 50
    m = torch.randn(n, dtype=f64, generator=g)
    h = torch.rand(n, dtype=f64, generator=g) + 0.5
    g_hat = torch.randn(n, dtype=f64, generator=g)
    h_hat = torch.randn(n, dtype=f64, generator=g) + 1.0  # some negative entries
    return m, h, g_hat, h_hat


@pytest.mark.parametrize("correction", [False, True])
def test_ivon_kernel_is_the_diagonal_blr_in_its_limit(correction):
    """β₁ = 0, r = ∞, α = ρ = 1 − β₂: the BLR on ℓ̄ = N·ℓ with S = N(h + δ), Ĥ = N(ĥ + δ),
    ĝ_total = N(ĝ + δm): blr.step without the correction, gaussian_step(improved) with it."""
    m, h, g_hat, h_hat = _kernel_case()
    if not correction:
        h_hat = h_hat.abs() + 0.1  # the plain BLR needs a PSD estimate
    ess, wd, rho = 40.0, 0.3, 0.2
    fam = expfam.DiagGaussian()
    nat = fam.from_moments(m, ess * (h + wd))
    est = _Given(ess * (g_hat + wd * m), ess * (h_hat + wd))
    if correction:
        grad = est(fam, nat, None).grad
        want = blr.gaussian_step(
            fam, nat, grad, rho=rho, options=blr.GaussianOptions(improved=True)
        )
    else:
        want = blr.step(fam, nat, None, rho, estimator=est)
    mean, mom, hess = m.clone(), torch.zeros_like(m), h.clone()
    ivon_step_(
        mean,
        mom,
        hess,
        g_hat,
        h_hat,
        lr=rho,
        beta1=0.0,
        beta2=1 - rho,
        weight_decay=wd,
        step=1,
        correction=correction,
    )
    m_want, s_want = fam.to_moments(want)
    torch.testing.assert_close(mean, m_want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ess * (hess + wd), s_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("approx", ["price", "gradsq"])
@pytest.mark.parametrize("clip", [math.inf, 0.3])
def test_update_formulas_equal_ivon_opt_given_the_same_tensors(approx, clip):
    m, h, g_hat, stat = _kernel_case()
    stat = stat * 0.01 if approx == "price" else stat.square()
    ess, wd, b1, b2, lr, step = 100.0, 1e-3, 0.9, 0.999, 0.1, 3
    mom = 0.1 * g_hat.flip(0)
    mom_ref = ivon_ref.IVON._new_momentum(g_hat, mom, b1)
    args = (approx, h, stat, stat, slice(0, len(h)), ess, b2, wd)
    h_ref = ivon_ref.IVON._new_hess(*args)
    m_ref = ivon_ref.IVON._new_param_averages(m, h_ref, mom_ref, lr, wd, clip, 1 - b1**step, 1.0)
    h_hat = ivon_hess_estimate(stat, h, ess=ess, weight_decay=wd, hess_approx=approx)
    mean, momentum, hess = m.clone(), mom.clone(), h.clone()
    ivon_step_(
        mean,
        momentum,
        hess,
        g_hat,
        h_hat,
        lr=lr,
        beta1=b1,
        beta2=b2,
        weight_decay=wd,
        step=step,
        clip_radius=clip,
    )
    for got, ref in ((momentum, mom_ref), (hess, h_ref), (mean, m_ref)):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- vs ivon-opt
def _regression(n=64, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _model(d=5):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


@pytest.mark.parametrize("approx", ["price", "gradsq"])
def test_trajectories_equal_ivon_opt_given_the_same_noise(approx):
    """Same initial weights, same draws (our generator and torch's global one seeded alike):
    50 steps of both agree within 1e-6."""
    x, y = _regression()
    ours_m, ref_m = _model(), _model()
    kw = dict(lr=0.05, ess=64, weight_decay=1e-3, hess_approx=approx, beta2=0.999)
    ours = IVON(ours_m.parameters(), seed=123, **kw)
    ref = ivon_ref.IVON(ref_m.parameters(), **kw)
    torch.manual_seed(123)  # ivon-opt draws from the global generator
    for _ in range(50):
        for model, opt in ((ours_m, ours), (ref_m, ref)):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
            opt.step()
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("approx", ["price", "gradsq"])
def test_mc_samples_3_on_the_eager_path_equals_ivon_opt_averaging_3_draws(approx):
    """``step(closure)`` with ``mc_samples=3`` (eager path) against ivon-opt collecting three
    ``sampled_params(train=True)`` draws per ``step()`` (it averages ĝ and the Hessian statistic
    over them), the same noise, float64, 30 steps: weights, momentum and h agree to rounding.
    Measured: weights ≤ 6.7e-16, h ≤ 8.9e-15 (h up to 40 with gradsq, i.e. ≤ 2.2e-16
    relative); a reference that keeps only the first of its three draws ends ≥ 5e-2 away."""
    x, y = (t.to(f64) for t in _regression())
    ours_m, ref_m = _model().to(f64), _model().to(f64)
    kw = dict(lr=0.05, ess=64, weight_decay=1e-3, hess_approx=approx, beta2=0.99, mc_samples=3)
    ours = IVON(ours_m.parameters(), seed=123, fused=False, **kw)
    ref = ivon_ref.IVON(ref_m.parameters(), **kw)
    torch.manual_seed(123)  # ivon-opt draws from the global generator
    for _ in range(30):
        for model, opt in ((ours_m, ours), (ref_m, ref)):

            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
                loss.backward()
                return loss

            if opt is ours:
                ours.step(closure)
            else:
                for _ in range(3):
                    with ref.sampled_params(train=True):
                        closure()
                ref.step()
    assert ours.param_groups[0]["step"] == 30
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    state = ours.state_dict()["state"]
    for name in ("momentum", "hess"):
        got = torch.cat([entry[name].reshape(-1) for entry in state.values()])
        torch.testing.assert_close(got, ref.param_groups[0][name], rtol=1e-13, atol=1e-14)


def test_bayesian_linear_regression_on_diabetes_matches_the_exact_posterior():
    """Both IVONs land within 0.1 posterior sd of the exact mean and within 15% of the exact
    mean-field variances 1/S_jj (S = XᵀX + NδI) on standardised sklearn diabetes."""
    from sklearn.datasets import load_diabetes

    xs, ys = load_diabetes(return_X_y=True)
    x = torch.tensor((xs - xs.mean(0)) / xs.std(0), dtype=torch.float32)
    y = torch.tensor((ys - ys.mean()) / ys.std(), dtype=torch.float32)
    n, d = x.shape
    wd = 10.0 / n
    x64, y64 = x.double(), y.double()
    prec = x64.T @ x64 + n * wd * torch.eye(d, dtype=f64)
    m_exact = torch.linalg.solve(prec, x64.T @ y64)
    var_mf = 1 / torch.diagonal(prec)
    steps = 8000
    kw = dict(lr=0.05, ess=n, weight_decay=wd, beta2=0.999)
    for make in (lambda p: IVON(p, seed=0, **kw), lambda p: ivon_ref.IVON(p, **kw)):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.zeros(d))
        opt = make([w])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                (0.5 * ((x @ w - y) ** 2).mean()).backward()
            opt.step()
            sched.step()
        hess = (
            opt.param_groups[0]["hess"]
            if isinstance(opt, ivon_ref.IVON)
            else (opt.state_dict()["state"][0]["hess"])
        )
        var = 1 / (n * (hess.double() + wd))
        assert ((w.detach().double() - m_exact) / var_mf.sqrt()).abs().max() < 0.1
        assert ((var / var_mf) - 1).abs().max() < 0.15


# ---------------------------------------------------------------------------- conventions
def _train(model, opt, x, y, steps, *, closure=False):
    for _ in range(steps):
        if closure:

            def loss_fn():
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
                loss.backward()
                return loss

            opt.step(loss_fn)
        else:
            with opt.sampled_params(train=True):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
            opt.step()


def test_state_dict_round_trip_resumes_bit_exactly():
    x, y = _regression()
    model = _model()
    opt = IVON(model.parameters(), lr=0.05, ess=64, seed=3)
    _train(model, opt, x, y, 5)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_opt["param_groups"][0]["step"] == 5
    _train(model, opt, x, y, 5)
    other = _model()
    other.load_state_dict(saved_model)
    resumed = IVON(other.parameters(), lr=0.05, ess=64, seed=999)
    resumed.load_state_dict(saved_opt)
    _train(other, resumed, x, y, 5)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_foreign_or_mismatched_state_dicts_are_refused():
    model = _model()
    opt = IVON(model.parameters(), lr=0.05, ess=64)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"not from blr\.optim\.IVON"):
        opt.load_state_dict(adam.state_dict())
    small = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    other = IVON(small.parameters(), lr=0.05, ess=64)
    with pytest.raises(ValueError, match="has shape"):
        opt.load_state_dict(other.state_dict())


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_nonfinite_gradients_never_touch_the_state(mode):
    x, y = _regression()
    model = _model()
    opt = IVON(model.parameters(), lr=0.05, ess=64, nonfinite=mode, seed=0)
    _train(model, opt, x, y, 2)
    before = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    with opt.sampled_params(train=True):
        opt.zero_grad()
        (torch.nn.functional.mse_loss(model(x).squeeze(-1), y) * float("nan")).backward()
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="NaN/Inf"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    after = opt.state_dict()
    for k, entry in before["state"].items():
        for name, v in entry.items():
            if name == "mean":  # the draw was added to the weights and subtracted: one rounding
                torch.testing.assert_close(after["state"][k][name], v, rtol=0, atol=1e-6)
            else:
                assert torch.equal(after["state"][k][name], v)
    assert after["param_groups"][0]["step"] == before["param_groups"][0]["step"]
    for p, w in zip(model.parameters(), weights):
        torch.testing.assert_close(p, w, rtol=0, atol=1e-6)
        assert torch.isfinite(p).all()


def test_an_exception_inside_sampled_params_restores_the_mean():
    model = _model()
    opt = IVON(model.parameters(), lr=0.05, ess=64)
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), opt.sampled_params(train=True):
        assert not torch.equal(next(model.parameters()), weights[0])  # a draw, not the mean
        raise RuntimeError("boom")
    for p, w in zip(model.parameters(), weights):  # up to one rounding of the weights
        torch.testing.assert_close(p, w, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="boom"), opt.sampled_params():
        raise RuntimeError("boom")
    restored = [p.detach().clone() for p in model.parameters()]
    with opt.sampled_params():  # prediction draws restore the mean exactly
        pass
    for p, w in zip(model.parameters(), restored):
        assert torch.equal(p, w)
    with pytest.raises(RuntimeError, match="found no gradient sample"):
        opt.step()


def test_frozen_and_unused_parameters_are_left_untouched():
    x, y = _regression()
    model = _model()
    model[0].bias.requires_grad_(False)
    unused = torch.nn.Parameter(torch.ones(3))
    opt = IVON([*model.parameters(), unused], lr=0.05, ess=64)
    frozen = model[0].bias.detach().clone()
    with opt.sampled_params(train=True):
        assert torch.equal(model[0].bias, frozen)  # not perturbed
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
    opt.step()
    assert torch.equal(model[0].bias, frozen)
    assert torch.equal(unused, torch.ones(3))


def test_closure_mc_samples_schedulers_and_param_groups():
    x, y = _regression()
    model = _model()
    opt = IVON(
        [{"params": model[0].parameters(), "lr": 0.02}, {"params": model[2].parameters()}],
        lr=0.05,
        ess=64,
        mc_samples=3,
        seed=0,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    first = torch.nn.functional.mse_loss(model(x).squeeze(-1), y).item()
    for _ in range(30):
        _train(model, opt, x, y, 1, closure=True)
        sched.step()
    assert torch.nn.functional.mse_loss(model(x).squeeze(-1), y).item() < first
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5**15)
    extra = torch.nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    with opt.sampled_params(train=True):
        opt.zero_grad()
        (
            torch.nn.functional.mse_loss(model(x).squeeze(-1), y) + (extra - 1).square().sum()
        ).backward()
    opt.step()
    assert (extra > 0).all() and opt.param_groups[2]["step"] == 1


def test_bf16_parameters_get_fp32_state():
    x, y = _regression()
    model = _model().to(torch.bfloat16)
    opt = IVON(model.parameters(), lr=0.05, ess=64, seed=0)
    _train(model, opt, x.bfloat16(), y.bfloat16(), 3)
    state = opt.state_dict()["state"]
    assert all(v.dtype == torch.float32 for entry in state.values() for v in entry.values())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    mean = state[0]["mean"]
    assert torch.equal(next(model.parameters()), mean.to(torch.bfloat16))


def test_micro_batch_accumulation_is_one_sample():
    """Two backward passes on halves (loss/2 each) give the gradient of the whole batch."""
    x, y = _regression()
    a, b = _model(), _model()
    oa, ob = (
        IVON(a.parameters(), lr=0.05, ess=64, seed=5),
        IVON(b.parameters(), lr=0.05, ess=64, seed=5),
    )
    with oa.sampled_params(train=True):
        oa.zero_grad()
        torch.nn.functional.mse_loss(a(x).squeeze(-1), y).backward()
    oa.step()
    with ob.sampled_params(train=True):
        ob.zero_grad()
        for half in (slice(0, 32), slice(32, 64)):
            (0.5 * torch.nn.functional.mse_loss(b(x[half]).squeeze(-1), y[half])).backward()
    ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_bad_hyperparameters_name_the_argument():
    params = _model().parameters()
    with pytest.raises(ValueError, match="hess_approx must be one of"):
        IVON(params, lr=0.1, ess=10, hess_approx="bogus")
    with pytest.raises(ValueError, match="ess must be > 0"):
        IVON(_model().parameters(), lr=0.1, ess=0)
    with pytest.raises(ValueError, match="beta2 must lie in"):
        IVON(_model().parameters(), lr=0.1, ess=10, beta2=1.5)
    with pytest.raises(ValueError, match="mc_samples must be an integer"):
        IVON(_model().parameters(), lr=0.1, ess=10, mc_samples=0)


def test_mixed_dtypes_in_one_optimizer_and_a_compiled_model():
    x, y = _regression()
    model = _model()
    model[2].to(torch.bfloat16)

    class Cast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inp):
            h = self.inner[1](self.inner[0](inp))
            return self.inner[2](h.bfloat16()).float()

    net = Cast(model)
    compiled = torch.compile(net, backend="eager")
    opt = IVON(net.parameters(), lr=0.05, ess=64, seed=0)
    before = torch.nn.functional.mse_loss(net(x).squeeze(-1), y).item()
    for _ in range(20):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            torch.nn.functional.mse_loss(compiled(x).squeeze(-1), y).backward()
        opt.step()
    assert torch.nn.functional.mse_loss(net(x).squeeze(-1), y).item() < before
    buckets = opt._all_buckets()[0]
    assert {b.dtype for b in buckets} == {torch.float32, torch.bfloat16}
    assert all(s.dtype == torch.float32 for b in buckets for s in b.state.values())


def test_zero_grad_between_collection_and_step_keeps_the_sample():
    x, y = _regression()
    results = []
    for zero_after in (False, True):
        model = _model()
        opt = IVON(model.parameters(), lr=0.05, ess=64, seed=4)
        for _ in range(3):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x).squeeze(-1), y).backward()
            if zero_after:
                opt.zero_grad()  # the collected sample is stashed before the buffer is zeroed
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_weights_keep_their_own_storage_and_moving_them_is_an_error():
    """The weights are the mean, each in its own storage (no copy of them in the optimizer, no
    storage shared between parameters: what safetensors and accelerate need); moving them to
    another dtype or device after the optimizer started is an error."""
    x, y = _regression()
    model = _model()
    ptrs = [p.untyped_storage().data_ptr() for p in model.parameters()]
    opt = IVON(model.parameters(), lr=0.05, ess=64)
    _train(model, opt, x, y, 1)
    assert [p.untyped_storage().data_ptr() for p in model.parameters()] == ptrs
    assert all(
        p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in model.parameters()
    )
    assert "mean" not in opt._all_buckets()[0][0].state  # no copy of the weights
    model.double()
    with pytest.raises(RuntimeError, match="after the optimizer started"):
        _train(model, opt, x.double(), y.double(), 1)


def test_step_without_a_sample_can_be_a_no_op():
    model = _model()
    opt = IVON(model.parameters(), lr=0.05, ess=64, missing_sample="skip")
    before = [p.detach().clone() for p in model.parameters()]
    assert opt.step() is None
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), before))
    assert opt.param_groups[0]["step"] == 0


def test_von_is_ivon_without_the_correction_and_refuses_a_non_positive_precision():
    from blr.optim import VON

    x, y = _regression()
    a, b = _model(), _model()
    von = VON(a.parameters(), lr=0.05, ess=64, beta2=0.9, hess_init=5.0, seed=2)
    ivn = IVON(
        b.parameters(),
        lr=0.05,
        ess=64,
        beta1=0.0,
        beta2=0.9,
        hess_init=5.0,
        rescale_lr=False,
        seed=2,
    )
    ivn._correction = False  # the same kernel with the correction switched off
    for model, opt in ((a, von), (b, ivn)):
        _train(model, opt, x, y, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    # a concave loss: every Stein estimate is negative, and with beta2 = 0 h would follow it
    c = _model()
    bad = VON(c.parameters(), lr=0.05, ess=64, beta2=0.0, hess_init=1.0, seed=0)
    before = copy.deepcopy(bad.state_dict())
    with bad.sampled_params(train=True):
        bad.zero_grad()
        (-(c(x) ** 2).mean()).backward()
    with pytest.raises(FloatingPointError, match="non-positive"):
        bad.step()
    after = bad.state_dict()
    for k, entry in before["state"].items():
        for name, v in entry.items():
            torch.testing.assert_close(after["state"][k][name], v, rtol=0, atol=1e-6)
    assert after["param_groups"][0]["step"] == 0


def test_fused_compiled_path_equals_the_vectorized_one():
    x, y = _regression()
    a, b = _model(), _model()
    eager = IVON(a.parameters(), lr=0.05, ess=64, seed=8)
    fused = IVON(b.parameters(), lr=0.05, ess=64, seed=8, fused=True)
    for model, opt in ((a, eager), (b, fused)):
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # no recompiles
        for _ in range(5):
            _train(model, opt, x, y, 1)
            sched.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    sa, sb = eager.state_dict()["state"], fused.state_dict()["state"]
    for k in sa:
        for name in ("momentum", "hess"):
            torch.testing.assert_close(sa[k][name], sb[k][name], rtol=1e-5, atol=1e-6)


def test_gradients_written_by_hand_count_and_missing_ones_do_not():
    w, v = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = IVON([w, v], lr=0.1, ess=10, seed=0)
    with opt.sampled_params(train=True):
        w.grad = torch.full((3,), 0.5)  # no autograd: no hook fires; v has no gradient at all
    opt.step()
    assert not torch.allclose(w.detach(), torch.ones(3))
    # untouched by the update; the draw was added and subtracted: one rounding at most
    torch.testing.assert_close(v.detach(), torch.ones(2), rtol=0, atol=1e-7)
