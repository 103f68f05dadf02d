"""VOGN and OGN (Khan & Rue 2023, Table 1 rows 8–9): the mean-field VI fixed point on Bayesian
linear regression, equality with a hand-coded VOGN given the same draws, and the curvature modes."""

from __future__ import annotations

import pytest
import torch

from blr.optim import OGN, VOGN

f64 = torch.float64


def _linreg(n=20, d=2, sigma2=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=f64, generator=g)
    y = x @ torch.tensor([1.0, -0.5], dtype=f64) + sigma2**0.5 * torch.randn(
        n, dtype=f64, generator=g
    )
    return x, y


def _model(d=2):
    model = torch.nn.Linear(d, 1, bias=False).to(f64)
    with torch.no_grad():
        model.weight.zero_()
    return model


@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_ogn_converges_to_the_mean_field_optimum_of_bayesian_linear_regression(curvature):
    """Row 8: m → S*⁻¹Xᵀy/σ² and N(h + δ/N) → diag(S*), S* = XᵀX/σ² + δI (exact GGN);
    the empirical Fisher has the same mean fixed point but a different precision."""
    x, y = _linreg()
    n, sigma2, delta = 20, 0.25, 1.0
    model = _model()
    opt = OGN(
        model.parameters(),
        lr=0.5,
        ess=n,
        weight_decay=delta / n,
        beta1=0.0,
        beta2=0.5,
        curvature=curvature,
        loss="gaussian",
        sigma2=sigma2,
        model=model,
    )
    for _ in range(300):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            loss = ((model(x).squeeze(-1) - y) ** 2 / (2 * sigma2)).mean()
            loss.backward()
        opt.step()
    prec = x.T @ x / sigma2 + delta * torch.eye(2, dtype=f64)
    m_star = torch.linalg.solve(prec, x.T @ y / sigma2)
    hess = opt.state_dict()["state"][0]["hess"].reshape(-1)
    torch.testing.assert_close(model.weight.detach().reshape(-1), m_star, rtol=1e-8, atol=1e-10)
    if curvature == "ggn":
        torch.testing.assert_close(n * (hess + delta / n), torch.diagonal(prec), rtol=1e-8, atol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_vogn_equals_a_hand_coded_vogn_given_the_same_draws(fused):
    """Row 9: θ = m + ε/√(N(h + δ)); ĝ, ĥ (mean GGN) at θ; ḡ, h, m recursions; the
    torch.compile'd draw and update (``fused=True``) compute the same formulas."""
    x, y = _linreg()
    n, sigma2, wd, lr, b1, b2, h0 = 20, 0.25, 0.05, 0.1, 0.9, 0.95, 2.0
    model = _model()
    opt = VOGN(
        model.parameters(),
        lr=lr,
        ess=n,
        weight_decay=wd,
        beta1=b1,
        beta2=b2,
        hess_init=h0,
        curvature="ggn",
        loss="gaussian",
        sigma2=sigma2,
        seed=11,
        fused=fused,
        model=model,
    )
    gen = torch.Generator().manual_seed(11)
    m, mom, h = (
        torch.zeros(2, dtype=f64),
        torch.zeros(2, dtype=f64),
        torch.full((2,), h0, dtype=f64),
    )
    ggn = (x**2).mean(0) / sigma2  # per-example GGN of a linear-Gaussian model, averaged
    for t in range(1, 31):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            ((model(x).squeeze(-1) - y) ** 2 / (2 * sigma2)).mean().backward()
        opt.step()
        eps = torch.randn(2, dtype=f64, generator=gen)
        theta = m + eps / torch.sqrt(n * (h + wd))
        g = x.T @ (x @ theta - y) / (sigma2 * n)
        mom = b1 * mom + (1 - b1) * g
        h = b2 * h + (1 - b2) * ggn
        m = m - lr * (mom / (1 - b1**t) + wd * m) / (h + wd)
        torch.testing.assert_close(model.weight.detach().reshape(-1), m, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_ogn_evaluates_at_the_mean_and_arguments_are_checked(fused):
    model = _model()
    opt = OGN(model.parameters(), lr=0.1, ess=10, curvature="ef", fused=fused, model=model)
    w = model.weight.detach().clone()
    for train in (True, False):
        with opt.sampled_params(train=train):
            assert torch.equal(model.weight, w)
            if train:
                model(torch.ones(3, 2, dtype=f64)).sum().backward()
        assert torch.equal(model.weight, w)
    opt.step()
    assert not torch.equal(model.weight, w)
    params = list(model.parameters())
    with pytest.raises(ValueError, match="fused must be"):
        VOGN(params, lr=0.1, ess=10, curvature="ef", fused="triton", model=model)
    with pytest.raises(ValueError, match="needs the loss"):
        VOGN(params, lr=0.1, ess=10, curvature="ggn", model=model)
    with pytest.raises(ValueError, match="curvature must be"):
        VOGN(params, lr=0.1, ess=10, curvature="hessian", model=model)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        VOGN(params, lr=0.1, ess=10, curvature="ef", model=params)
    # params first, like every torch optimizer; the module is the keyword model=
    with pytest.raises(TypeError, match=r"VOGN takes params first.*model=model"):
        VOGN(model, lr=0.1, ess=10, curvature="ef")
    with pytest.raises(TypeError, match=r"OGN takes params first"):
        OGN(model, lr=0.1, ess=10, curvature="ef", model=model)
    with pytest.raises(TypeError, match=r"VOGN needs model="):
        VOGN(params, lr=0.1, ess=10, curvature="ef")
    with pytest.raises(
        ValueError, match=r"params: a parameter of shape \(3\,\) is not a parameter"
    ):
        VOGN([torch.nn.Parameter(torch.zeros(3))], lr=0.1, ess=10, curvature="ef", model=model)
    with pytest.raises(ValueError, match="loss must be one of"):
        VOGN(params, lr=0.1, ess=10, curvature="ggn", loss="hinge", model=model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_vogn_follows_the_vectorized_one_and_resumes_bit_exactly(dtype):
    """``fused=True`` (compiled draw and update; bf16 weights keep fp32 state and use the
    compiled update only) follows the vectorized path within float rounding, and a
    state_dict taken mid-training resumes the fused run bit-exactly."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4).to(dtype), torch.randint(0, 3, (32,))

    def make(fused):
        torch.manual_seed(1)
        model = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        ).to(dtype)
        kw = dict(lr=0.05, ess=100, curvature="ggn", loss="cross_entropy", seed=3, fused=fused)
        return model, VOGN(model.parameters(), model=model, **kw)

    def train(model, opt, steps):
        for _ in range(steps):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x).float(), y).backward()
            opt.step()

    (a, eager), (b, fused) = make(False), make(True)
    train(a, eager, 3)
    train(b, fused, 3)
    saved = fused.state_dict()
    train(a, eager, 3)
    train(b, fused, 3)
    # Measured (CPU, torch 2.13, after 6 steps): fp32 weights differ by ≤ 3.0e-8 (relative
    # ≤ 2.1e-7); bf16 weights are identical (0 ulp); the fp32 state (both dtypes) by ≤ 2.4e-7 in
    # `hess` (values ≈ 0.994, i.e. 2 fp32 ulps) and ≤ 7.5e-9 in `momentum` (relative ≤ 1.2e-6 at
    # its smallest entries, ≈ 4e-4). A fused run at lr 0.075 instead of 0.05 moves the weights by
    # 1.4e-2 (163 bf16 ulps), `momentum` by 1e-3 and `hess` by 5.4e-6: all far outside these.
    state_tol = dict(rtol=1e-6, atol=1e-8)
    for p, q in zip(a.parameters(), b.parameters()):
        if dtype == torch.float32:
            torch.testing.assert_close(p, q, **state_tol)
        else:  # at most one bf16 ulp (the spacing of bf16 numbers at |p|) apart
            ulp = torch.nextafter(p.abs(), torch.full_like(p, float("inf"))) - p.abs()
            assert ((p.float() - q.float()).abs() <= ulp.float()).all()
    sa, sb = eager.state_dict()["state"], fused.state_dict()["state"]
    for k in sa:
        for name in ("momentum", "hess"):
            assert sa[k][name].dtype == torch.float32
            torch.testing.assert_close(sa[k][name], sb[k][name], **state_tol)
    c, resumed = make(True)  # the weights are (the mean) in the state_dict
    resumed.load_state_dict(saved)
    train(c, resumed, 3)
    for p, q in zip(b.parameters(), c.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("fused", [False, "compile"])
def test_hess_start_max_starts_h_at_the_larger_of_h0_and_the_first_estimate(fused):
    """Linear model, Gaussian loss (σ² = 1): the GGN is x² for the weights (≈ 9 here, above
    h₀ = 2) and 1 for the bias (below it) at any θ. After one step with "max" the weights' h is
    ĥ₁ = mean x² exactly and the bias's β₂h₀ + (1 − β₂)·1, as with "init"; later steps average
    as usual (the bias: 1 + β₂ᵗ(h₀ − 1))."""
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(32, 3, generator=g, dtype=torch.float64)
    y = torch.randn(32, 1, generator=g, dtype=torch.float64)
    ref = torch.cat([(x**2).mean(0), torch.ones(1, dtype=torch.float64)])
    assert (ref[:3] > 2.0).all()

    def hess_after(start, steps):
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 1).double()
        opt = VOGN(model.parameters(), lr=0.1, ess=100, beta2=0.9, hess_init=2.0,
                   loss="gaussian", model=model, hess_start=start, fused=fused, seed=0)  # fmt: skip
        for _ in range(steps):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                (0.5 * (model(x) - y) ** 2).mean().backward()
            opt.step()
        st = opt.state_dict()["state"]
        return torch.cat([st[0]["hess"].reshape(-1), st[1]["hess"].reshape(-1)])

    init = 0.9 * 2.0 + 0.1 * ref
    first = torch.cat([ref[:3], init[3:]])
    torch.testing.assert_close(hess_after("max", 1), first, rtol=1e-12, atol=0)
    torch.testing.assert_close(hess_after("init", 1), init, rtol=1e-12, atol=0)
    later = torch.cat([ref[:3], torch.tensor([1.0 + 0.9**3], dtype=torch.float64)])
    torch.testing.assert_close(hess_after("max", 3), later, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="hess_start"):
        VOGN(torch.nn.Linear(2, 1).parameters(), lr=0.1, ess=10, loss="mse",
             model=torch.nn.Linear(2, 1), hess_start="first")  # fmt: skip


def test_hess_start_max_keeps_the_first_steps_at_the_curvatures_scale():
    """The cause of the UCI yacht blow-up in miniature: a loss whose curvature is 10⁴ times h₀
    (a Gaussian with σ² = 10⁻⁴). Starting at h₀ the first steps are up to 10⁴ times the
    Newton step while h catches up and m is thrown far off; starting at max(h₀, ĥ₁) it
    converges to the least-squares fit."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    y = x @ w.T + 0.01 * torch.randn(256, 1, generator=g, dtype=torch.float64)

    def fit(start):
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 1).double()
        opt = VOGN(model.parameters(), lr=0.5, ess=256, beta2=0.99, hess_init=1.0,
                   weight_decay=1e-4, loss="gaussian", sigma2=1e-4, model=model,
                   hess_start=start, seed=0)  # fmt: skip
        largest = 0.0
        for _ in range(200):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                (0.5 * (model(x) - y) ** 2 / 1e-4).mean().backward()
            opt.step()
            largest = max(largest, float(model.weight.detach().abs().max()))
        return model.weight.detach(), largest

    weight, largest = fit("max")
    torch.testing.assert_close(weight, w, atol=0.02, rtol=0)
    assert largest < 3.0
    _, largest_init = fit("init")
    assert largest_init > 100 * largest
