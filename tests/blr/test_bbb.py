"""Bayes by backprop (:class:`blr.optim.BayesByBackprop`): the same iterates as the UCI
benchmark's former Bayes-by-backprop class (the same draws, the same rounding), the gradient of an
explicit functional ELBO with Adam written out, the KL against torch.distributions, checkpoints
that resume bit-exactly, predictions through :mod:`blr.predict`, and clear errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from blr.optim import IVON, BayesByBackprop
from blr.posterior import ParameterPosterior
from blr.predict import predict_regression
from expfam import DiagGaussian


def mlp(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def data(dtype: torch.dtype = torch.float64, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g, dtype=dtype)
    return x, (x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype))


def train(model, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
        opt.step()


class Legacy:
    """The Bayes-by-backprop class the UCI benchmark had before it became an optimizer (kept here
    as the reference): ρ as separate leaves, one draw per :meth:`loss` through
    ``torch.func.functional_call``, the negative ELBO per example by autograd, torch's Adam on
    (m, ρ)."""

    def __init__(self, model, *, ess, prior_prec, init_std, lr, betas=(0.9, 0.999), seed):
        self.model, self.ess, self.prior_prec = model, float(ess), float(prior_prec)
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.means = [p for _, p in named]
        rho0 = init_std + math.log(-math.expm1(-init_std))
        self.rho = [torch.full_like(p, rho0).requires_grad_() for p in self.means]
        self.optimizer = torch.optim.Adam([*self.means, *self.rho], lr=lr, betas=betas)
        self.generator = torch.Generator().manual_seed(seed)

    def std(self):
        return [F.softplus(r) for r in self.rho]

    def kl(self):
        terms = []
        for m, s in zip(self.means, self.std()):
            var = self.prior_prec * s * s
            terms.append(0.5 * (var + self.prior_prec * m * m - 1 - torch.log(var)).sum())
        return torch.stack(terms).sum()

    def loss(self, data_loss, *inputs):
        draws = {}
        for name, m, s in zip(self.names, self.means, self.std()):
            z = torch.randn(m.shape, dtype=m.dtype, generator=self.generator)
            draws[name] = m + s * z
        out = torch.func.functional_call(self.model, draws, inputs)
        return data_loss(out) + self.kl() / self.ess

    def step(self):
        self.optimizer.step()

    def zero_grad(self):
        self.optimizer.zero_grad()


# ------------------------------------------------------------------------ the former class
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_same_draws_give_the_same_iterates_as_the_former_class(dtype):
    """Bit for bit, float64 and float32 (the benchmark's dtype: ``blr bench uci`` prints the
    numbers it printed before the move)."""
    model = mlp(dtype)
    other = copy.deepcopy(model)
    x, y = data(dtype)
    kw = dict(ess=50, prior_prec=2.0, init_std=0.05, lr=0.01)
    old = Legacy(other, **kw, seed=3)
    opt = BayesByBackprop(model.parameters(), **kw, seed=3)
    for _ in range(40):
        old.zero_grad()
        old.loss(lambda out: F.mse_loss(out, y), x).backward()
        old.step()
        train(model, opt, x, y, 1)
    for a, b in zip(model.parameters(), old.means):
        assert torch.equal(a, b)
    for a, b in zip(opt.std(), old.std()):
        assert torch.equal(a, b)
    assert torch.equal(opt.kl().to(dtype), old.kl().detach())
    # the posterior of the benchmark's predictive: the same family, λ and generator state
    q = opt.posterior(model)
    mine = q.family.sample(q.nat, (), generator=q.generator)
    fam = DiagGaussian()
    m = torch.cat([p.detach().reshape(-1) for p in old.means])
    s = torch.cat([s.detach().reshape(-1) for s in old.std()])
    theirs = fam.sample(fam.from_moments(m, 1.0 / (s * s)), (), generator=old.generator)
    assert torch.equal(mine, theirs)


# ------------------------------------------------------------------------ the ELBO, by hand
def _forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP of :func:`mlp` written as a function of its parameters."""
    return torch.tanh(x @ p["0.weight"].T + p["0.bias"]) @ p["2.weight"].T + p["2.bias"]


def _elbo(m, rho, zs, x, y, *, ess, delta):
    """The negative ELBO per example at the draws ``zs`` (averaged over them), written out:
    mean squared error at θ = m + softplus(ρ)⊙z plus KL(N(m, σ²) ‖ N(0, 1/δ))/N in the form
    ½Σ(δσ² + δm² − 1 − log δσ²)."""
    sigma = {k: torch.log1p(torch.exp(r)) for k, r in rho.items()}
    data_term = sum(
        ((_forward({k: m[k] + sigma[k] * z[k] for k in m}, x) - y) ** 2).mean() for z in zs
    ) / len(zs)
    kl = sum(
        0.5
        * (delta * sigma[k] ** 2 + delta * m[k] ** 2 - 1 - torch.log(delta * sigma[k] ** 2)).sum()
        for k in m
    )
    return data_term + kl / ess


def test_iterates_follow_adam_on_the_gradient_of_the_explicit_elbo():
    """Two Monte Carlo samples per step (``step(closure)``), param groups with their own
    learning rates; the reference differentiates :func:`_elbo` by autograd and applies Adam's
    formulas written out."""
    model = mlp()
    x, y = data()
    ess, delta, init_std, betas, eps, seed = 40.0, 3.0, 0.2, (0.8, 0.99), 1e-8, 7
    lrs = {"0.weight": 0.02, "0.bias": 0.02, "2.weight": 0.005, "2.bias": 0.005}
    named = dict(model.named_parameters())
    opt = BayesByBackprop(
        [
            {"params": [named["0.weight"], named["0.bias"]]},
            {"params": [named["2.weight"], named["2.bias"]], "lr": 0.005},
        ],
        lr=0.02, ess=ess, prior_prec=delta, init_std=init_std, betas=betas, mc_samples=2,
        eps=eps, seed=seed,
    )  # fmt: skip
    order = list(named)
    m = {k: v.detach().clone() for k, v in named.items()}
    rho0 = math.log(math.expm1(init_std))
    rho = {k: torch.full_like(v, rho0) for k, v in m.items()}
    moments = {k: [torch.zeros_like(v) for _ in range(4)] for k, v in m.items()}
    gen = torch.Generator().manual_seed(seed)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    b1, b2 = betas
    for t in range(1, 16):
        opt.step(closure)
        zs = [{k: torch.randn(m[k].shape, dtype=m[k].dtype, generator=gen) for k in order}]
        zs.append({k: torch.randn(m[k].shape, dtype=m[k].dtype, generator=gen) for k in order})
        leaves_m = {k: v.clone().requires_grad_() for k, v in m.items()}
        leaves_r = {k: v.clone().requires_grad_() for k, v in rho.items()}
        loss = _elbo(leaves_m, leaves_r, zs, x, y, ess=ess, delta=delta)
        grads = torch.autograd.grad(loss, [*leaves_m.values(), *leaves_r.values()])
        for i, k in enumerate(order):
            for target, g, j in ((m, grads[i], 0), (rho, grads[len(order) + i], 2)):
                mom, sq = moments[k][j], moments[k][j + 1]
                mom.mul_(b1).add_((1 - b1) * g)
                sq.mul_(b2).add_((1 - b2) * g * g)
                step = mom / (1 - b1**t) / ((sq / (1 - b2**t)).sqrt() + eps)
                target[k] = target[k] - lrs[k] * step
    for k, p in named.items():
        torch.testing.assert_close(p.detach(), m[k], rtol=1e-10, atol=1e-12)
    for k, s in zip(order, opt.std()):
        torch.testing.assert_close(s, F.softplus(rho[k]), rtol=1e-10, atol=1e-12)


def test_kl_matches_torch_distributions():
    model = mlp()
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, prior_prec=2.5, init_std=0.3)
    with torch.no_grad():
        for p in model.parameters():
            opt.state[p]["rho"].add_(torch.randn_like(p))
    zero = torch.zeros((), dtype=torch.float64)
    prior = torch.distributions.Normal(zero, zero + 2.5**-0.5)
    want = sum(
        torch.distributions.kl_divergence(torch.distributions.Normal(m.detach(), s), prior).sum()
        for m, s in zip(model.parameters(), opt.std())
    )
    assert float(opt.kl()) == pytest.approx(float(want), rel=1e-12)


# ------------------------------------------------------------------------ draws, posterior
def test_starts_at_init_std_and_its_posterior_draws_have_that_spread():
    model = nn.Linear(50, 40).double()
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, prior_prec=1.0, init_std=0.05)
    assert all(torch.allclose(s, torch.full_like(s, 0.05), rtol=1e-12) for s in opt.std())
    before = model.weight.detach().clone()
    for q in (opt.posterior(model), opt):  # as a ParameterPosterior, and the optimizer itself
        with q.sampled_params():
            spread = (model.weight - before).std().item()
        assert torch.equal(model.weight, before)
        assert spread == pytest.approx(0.05, rel=0.05)  # 2000 draws: s.e. of the s.d. ≈ 1.6%


def test_draws_are_m_plus_sigma_z_and_the_mean_is_restored_exactly_even_on_error():
    model = mlp()
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, init_std=0.1, seed=4)
    means = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(4)
    with opt.sampled_params():
        for p, m, s in zip(model.parameters(), means, opt.std()):
            assert torch.equal(p, m + s * torch.randn(p.shape, dtype=p.dtype, generator=gen))
    assert all(torch.equal(p, m) for p, m in zip(model.parameters(), means))
    with pytest.raises(KeyError), opt.sampled_params(train=True):
        model(torch.ones(2, 3, dtype=torch.float64)).sum().backward()
        raise KeyError("boom")
    assert all(torch.equal(p, m) for p, m in zip(model.parameters(), means))
    with pytest.raises(RuntimeError, match="found no gradient sample"):
        opt.step()  # the failed sample was not collected


def test_predictions_through_blr_predict():
    model = mlp()
    x, y = data()
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=16, init_std=0.3, seed=0)
    train(model, opt, x, y, 3)
    before = [p.detach().clone() for p in model.parameters()]
    pred = predict_regression(model, opt, x, n_samples=8, noise_var=0.1)
    at_mean = predict_regression(model, opt, x, n_samples=0, noise_var=0.1)
    assert pred.mean.shape == (16, 1) and bool((pred.var > 0.1).all())
    with torch.no_grad():
        assert torch.equal(at_mean.mean, model(x))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert isinstance(opt.posterior(model), ParameterPosterior)


def test_gradient_accumulation_inside_one_sample_equals_one_backward():
    x, y = data()
    runs = []
    for halves in (False, True):
        model = mlp()
        opt = BayesByBackprop(model.parameters(), lr=0.01, ess=16, seed=2)
        with opt.sampled_params(train=True):
            opt.zero_grad()
            if halves:
                for xb, yb in zip(x.split(8), y.split(8)):
                    (0.5 * F.mse_loss(model(xb), yb)).backward()
            else:
                F.mse_loss(model(x), y).backward()
        opt.step()
        runs.append([p.detach().clone() for p in model.parameters()] + opt.std())
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_frozen_parameters_are_left_alone_and_schedulers_set_the_rate():
    model = mlp()
    model[0].bias.requires_grad_(False)
    frozen = model[0].bias.detach().clone()
    x, y = data()
    opt = BayesByBackprop(model.parameters(), lr=0.1, ess=16, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.0)
    train(model, opt, x, y, 1)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    after_one = [p.detach().clone() for p in model.parameters()]
    train(model, opt, x, y, 2)  # lr 0: nothing moves
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), after_one))
    assert torch.equal(model[0].bias, frozen) and model[0].bias not in opt.state
    assert len(opt.std()) == 3


# ------------------------------------------------------------------------ checkpoints
def test_checkpoint_resumes_bit_exactly():
    x, y = data()
    model = mlp()
    opt = BayesByBackprop(model.parameters(), lr=0.02, ess=16, init_std=0.1, seed=5)
    train(model, opt, x, y, 4)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    train(model, opt, x, y, 6)

    other = mlp(seed=9)
    resumed = BayesByBackprop(other.parameters(), lr=0.5, ess=3, init_std=0.7, seed=11)
    other.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["opt"])
    train(other, resumed, x, y, 6)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.std(), resumed.std()):
        assert torch.equal(a, b)
    assert resumed.param_groups[0]["lr"] == 0.02
    sd_a, sd_b = opt.state_dict(), resumed.state_dict()
    for k, entry in sd_a["state"].items():
        for name, v in entry.items():
            assert torch.equal(v, sd_b["state"][k][name]), name
    # loading copies: the steps after it did not change the saved dict
    assert int(saved["opt"]["state"][0]["step"]) == 4


def test_a_foreign_or_mismatched_state_dict_is_refused():
    model = mlp()
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10)
    with pytest.raises(ValueError, match=r"not from blr\.optim\.BayesByBackprop \(found: IVON\)"):
        opt.load_state_dict(IVON(mlp().parameters(), lr=0.1, ess=10).state_dict())
    with pytest.raises(ValueError, match=r"not a blr\.optim one"):
        opt.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())
    wide = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 1)).double()
    sd = BayesByBackprop(wide.parameters(), lr=0.01, ess=10).state_dict()
    with pytest.raises(ValueError, match=r"\['rho'\] has shape \(9, 3\), the parameter \(8, 3\)"):
        opt.load_state_dict(sd)
    with pytest.raises(ValueError, match="1 parameters in the state_dict and 4 here"):
        opt.load_state_dict(
            BayesByBackprop([nn.Parameter(torch.ones(2))], lr=1, ess=1).state_dict()
        )


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -1.0}, ValueError, "lr must be ≥ 0"),
        ({"ess": 0.0}, ValueError, "ess must be > 0"),
        ({"prior_prec": -1.0}, ValueError, "prior_prec must be > 0"),
        ({"prior_prec": 0.0}, ValueError, "prior_prec must be > 0"),
        ({"init_std": 0.0}, ValueError, "init_std must be > 0"),
        ({"init_std": math.nan}, ValueError, "init_std must be > 0"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must lie in \[0, 1\)"),
        ({"betas": (0.9,)}, ValueError, r"betas must be a pair"),
        ({"eps": -1e-8}, ValueError, "eps must be ≥ 0"),
        ({"mc_samples": 0}, ValueError, "mc_samples must be an integer ≥ 1"),
        ({"nonfinite": "ignore"}, ValueError, "nonfinite must be 'raise' or 'skip'"),
        ({"missing_sample": "never"}, ValueError, "missing_sample must be 'raise' or 'skip'"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    args = {"lr": 0.01, "ess": 10.0, **kwargs}
    with pytest.raises(error, match=message):
        BayesByBackprop(nn.Linear(2, 1).parameters(), **args)


def test_bad_groups_params_and_models_are_named():
    model = nn.Linear(2, 1)
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10)
    with pytest.raises(ValueError, match="init_std must be > 0"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "init_std": -1.0})
    assert len(opt.param_groups) == 1  # the refused group was not added
    with pytest.raises(ValueError, match="ess must be > 0"):
        BayesByBackprop([{"params": model.parameters(), "ess": -1}], lr=0.01, ess=10)
    with pytest.raises(TypeError, match="floating-point"):
        BayesByBackprop([torch.ones(2, dtype=torch.complex64, requires_grad=True)], lr=0.1, ess=1)
    with pytest.raises(ValueError, match="model's parameters must be this optimizer's"):
        opt.posterior(nn.Linear(2, 1))


def test_misuse_of_the_sampling_context_is_a_clear_error():
    model = nn.Linear(2, 1)
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10)
    with pytest.raises(RuntimeError, match="found no gradient sample"):
        opt.step()
    skipping = BayesByBackprop(model.parameters(), lr=0.01, ess=10, missing_sample="skip")
    assert skipping.step() is None
    with opt.sampled_params(), pytest.raises(RuntimeError, match="cannot be nested"):
        with opt.sampled_params(train=True):  # (a nested prediction draw is fine)
            pass
    with opt.sampled_params(train=True):
        model(torch.ones(1, 2)).sum().backward()
        with pytest.raises(RuntimeError, match="inside sampled_params"):
            opt.step()


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_nonfinite_gradients_leave_the_state_alone(mode):
    model = mlp()
    opt = BayesByBackprop(model.parameters(), lr=0.01, ess=10, nonfinite=mode, seed=0)
    before = copy.deepcopy(opt.state_dict()["state"])
    means = [p.detach().clone() for p in model.parameters()]
    with opt.sampled_params(train=True):
        (model(torch.ones(2, 3, dtype=torch.float64)).sum() * math.nan).backward()
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="NaN/Inf in the ELBO gradient"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert all(torch.equal(p, m) for p, m in zip(model.parameters(), means))
    for k, entry in opt.state_dict()["state"].items():
        assert all(torch.equal(v, before[k][n]) for n, v in entry.items())
