"""blr.curvature, each shared piece tested once against independent oracles:

- every likelihood's NLL against ``torch.distributions`` (constants included), its output gradient
  and Hessian Λ against ``torch.func.grad``/``torch.func.hessian`` of that NLL, its factor
  (VVᵀ = Λ), its mean response's Jacobian against ``torch.func.jacrev``, and its sampled output
  gradients (E[ggᵀ] = Λ at 5 standard errors); the one vocabulary of names;
- per-example Jacobians against ``torch.func.jacrev`` of the whole batch's outputs (no vmap),
  per-example gradients against one ``torch.autograd.grad`` per example, GGN and Fisher matrices
  and diagonals against dense loops;
- :class:`PerExample` (hooks) against brute force: one backward per example for the squared
  gradients, ``torch.func.jacrev`` per example for the GGN diagonal (in the tests only).

The Monte Carlo tests repeat the estimator R times and compare the mean with the exact value at
5 standard errors per coordinate (a failure rate below 6e-7 per coordinate under the null)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from blr.curvature import (
    NAMES,
    Bernoulli,
    Categorical,
    ElementwiseLoss,
    Gaussian,
    PerExample,
    Poisson,
    SquaredError,
    fisher,
    ggn,
    jacobians,
    loss_hessian_factors,
    per_example_grads,
    resolve,
    sampled_output_grads,
)

f64 = torch.float64


@pytest.fixture(autouse=True)
def _f64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(f64)
    yield
    torch.set_default_dtype(before)


# ------------------------------------------------------------------ models
class Scale(nn.Module):
    """A module with a parameter and no closed-form rule."""

    def __init__(self, d):
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.s + self.s.square()


class Functional(nn.Module):
    """Uses its child's weight through F.linear without calling the child (like MHA)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return F.linear(x, self.lin.weight, self.lin.bias)


class EmbedModel(nn.Module):
    def __init__(self, vocab=5, d=4, out=3, padding_idx=0):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=padding_idx)
        self.lin = nn.Linear(d, out)

    def forward(self, idx):
        return self.lin(torch.tanh(self.emb(idx))).sum(1)  # Linear on (M, T, d)


class SeqModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x))).mean(1)


class Shared(nn.Module):
    """The same Linear called twice, and an Embedding tied to the output layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx).mean(1)
        return self.out(torch.tanh(self.mid(torch.tanh(self.mid(h)))))


def mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding="same", padding_mode="reflect", groups=2, dilation=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def cnn1d():
    return nn.Sequential(
        nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2),
        nn.Tanh(),
        nn.Conv1d(4, 2, 2, padding_mode="circular", padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(2 * 7, 3),
    )


def normed():
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.GroupNorm(2, 4),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Flatten(),
        nn.LayerNorm(4 * 3 * 3),
        nn.Linear(4 * 3 * 3, 3),
    )
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        m[2].running_mean.normal_()
        m[2].running_var.uniform_(0.5, 2.0)
    return m.eval()


def data(name, M=6):
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (M,), generator=g)
    if name == "mlp":
        return torch.randn(M, 5, generator=g), y
    if name in ("cnn", "normed"):
        hw = 8 if name == "cnn" else 5
        return torch.randn(M, 2, hw, hw, generator=g), y
    if name == "cnn1d":
        return torch.randn(M, 3, 11, generator=g), y
    if name == "embed":
        return torch.randint(0, 5, (M, 7), generator=g), y
    if name == "seq":
        return torch.randn(M, 4, 4, generator=g), y
    if name == "shared":
        return torch.randint(0, 6, (M, 3), generator=g), torch.randint(0, 6, (M,), generator=g)
    raise KeyError(name)


MODELS = {"mlp": mlp, "cnn": cnn, "cnn1d": cnn1d, "embed": EmbedModel, "seq": SeqModel}


def make(name, seed=0):
    torch.manual_seed(seed)
    return {**MODELS, "normed": normed, "shared": Shared}[name]()


# ------------------------------------------------------------------ brute force
def brute_ef(model, x, y, loss=F.cross_entropy):
    params = [p for p in model.parameters() if p.requires_grad]
    acc = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        gs = torch.autograd.grad(
            loss(model(x[i : i + 1]), y[i : i + 1], reduction="sum"), params, allow_unused=True
        )
        for a, g in zip(acc, gs):
            if g is not None:
                a += g.square()
    return dict(zip(params, acc))


def brute_ggn(model, x, loss_i):
    """Σ_i J_iᵀ Λ_i J_i (diagonal) with Λ_i = hessian of loss_i at f_i, J_i by jacrev."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(x.shape[0]):

        def f(ps, i=i):
            return functional_call(model, ps, (x[i : i + 1],)).reshape(-1)

        out = f(params)
        J = jacrev(f)(params)
        Lam = hessian(loss_i)(out.detach())
        for n in names:
            Jn = J[n].reshape(out.numel(), -1)
            acc[n] += torch.einsum("dj,de,ej->j", Jn, Lam, Jn).reshape(acc[n].shape)
    return {p: acc[n] for n, p in model.named_parameters() if p.requires_grad}


def assert_close(got: dict, want: dict, rtol=1e-9, atol=1e-12):
    assert set(map(id, got)) == set(map(id, want))
    for p, w in want.items():
        torch.testing.assert_close(got[p], w, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ empirical Fisher
@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn1d", "embed", "seq", "normed", "shared"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ef_matches_brute_force(name, reduction):
    model = make(name)
    x, y = data(name)
    with PerExample(model, mode="ef", reduction=reduction) as pe:
        F.cross_entropy(model(x), y, reduction=reduction).backward()
    assert pe.num_examples == x.shape[0]
    assert_close(pe.squared_grads(), brute_ef(model, x, y))


def test_ef_float_reduction_small_chunks_and_two_minibatches():
    model = make("seq")
    x, y = data("seq", M=8)
    with PerExample(model, reduction=0.25, max_chunk_elements=7) as pe:
        for sl in (slice(0, 3), slice(3, 8)):
            (0.25 * F.cross_entropy(model(x[sl]), y[sl], reduction="sum")).backward()
    assert pe.num_examples == 8
    assert_close(pe.squared_grads(), brute_ef(model, x, y))
    pe.reset()
    assert all(h.abs().max() == 0 for h in pe.squared_grads().values())


def test_ef_regression_loss_and_attr():
    model = mlp()
    x, _ = data("mlp")
    t = torch.randn(x.shape[0], 3)
    with PerExample(model) as pe:
        F.mse_loss(model(x), t, reduction="sum").backward()
    h = pe.squared_grads(attr="sq_grad")
    assert_close(h, brute_ef(model, x, t, F.mse_loss))
    assert all(p.sq_grad is h[p] for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "cnn", "embed", "seq", "shared"])
def test_func_fallback_matches_hooks(name):
    model = make(name)
    x, y = data(name)
    res = {}
    for method in ("hooks", "func"):
        with PerExample(model, method=method) as pe:
            F.cross_entropy(model(x), y, reduction="sum").backward()
        res[method] = pe.squared_grads()
    assert_close(res["func"], res["hooks"])


def test_auto_uses_func_for_modules_without_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    with pytest.raises(TypeError, match=r"1 \(Scale\).*method='auto'"):
        PerExample(model)
    with PerExample(model, method="auto") as pe:
        F.cross_entropy(model(x), y).backward()  # default reduction="sum": wrong on purpose
    h_mean_as_sum = pe.squared_grads()
    with PerExample(model, method="auto", reduction="mean") as pe:
        F.cross_entropy(model(x), y).backward()
    want = brute_ef(model, x, y)
    assert_close(pe.squared_grads(), want)
    assert_close({p: 25 * h for p, h in h_mean_as_sum.items()}, want)


# ------------------------------------------------------------------ GGN
def ce_i(f, C=3):
    y = torch.zeros(1, f.numel() // C, dtype=torch.long)  # Λ does not depend on the label
    return F.cross_entropy(f.reshape(1, C, -1), y, reduction="sum")


GGN_CASES = {
    "cross_entropy": (dict(loss="cross_entropy"), ce_i),
    "bce_with_logits": (
        dict(loss="bce_with_logits"),
        lambda f: F.binary_cross_entropy_with_logits(f, torch.ones_like(f), reduction="sum"),
    ),
    "mse": (dict(loss="mse"), lambda f: (f - 1.0).square().sum()),
    "gaussian": (dict(loss="gaussian", sigma2=0.3), lambda f: (f - 1.0).square().sum() / 0.6),
}


@pytest.mark.parametrize(
    "name, loss",
    [(n, loss) for n in ("mlp", "cnn", "embed") for loss in GGN_CASES]
    + [("normed", "cross_entropy"), ("seq", "gaussian"), ("shared", "cross_entropy")],
)
def test_ggn_matches_jacobian_brute_force(name, loss):
    model = make(name)
    x, _ = data(name, M=4)
    kw, loss_i = GGN_CASES[loss]
    if name == "shared":  # 6 classes
        loss_i = lambda f: ce_i(f, C=6)  # noqa: E731
    with PerExample(model, mode="ggn", **kw) as pe:
        model(x)
    assert_close(pe.squared_grads(), brute_ggn(model, x, loss_i))


def test_ggn_sequence_cross_entropy_unvectorized_and_chunked():
    """Logits (M, C, L): Λ_i is block diagonal over positions (C·L seeds)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 3, 1))
    x = torch.randn(3, 2, 4)
    want = brute_ggn(model, x, ce_i)
    for kw in (dict(), dict(vectorize=False), dict(pass_chunk=5)):
        with PerExample(model, mode="ggn", loss="cross_entropy", **kw) as pe:
            model(x)
        assert_close(pe.squared_grads(), want)


@pytest.mark.parametrize("loss", ["cross_entropy", "bce_with_logits", "gaussian"])
def test_loss_hessian_factors(loss):
    f = torch.randn(3, 3, 2)
    kw, loss_i = GGN_CASES[loss]
    V = loss_hessian_factors(f, loss, sigma2=kw.get("sigma2", 1.0)).reshape(-1, 3, 6)
    for i in range(3):
        torch.testing.assert_close(V[:, i].T @ V[:, i], hessian(loss_i)(f[i].reshape(-1)))


def test_mc_fisher_is_unbiased_for_ggn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(4, 3)
    gen = torch.Generator().manual_seed(0)
    for loss, (kw, loss_i) in GGN_CASES.items():
        if loss == "mse":
            continue
        want = brute_ggn(model, x, loss_i)
        runs = []
        for _ in range(40):
            with PerExample(model, mode="mc_fisher", mc_samples=50, generator=gen, **kw) as pe:
                model(x)
            runs.append(torch.cat([h.reshape(-1) for h in pe.squared_grads().values()]))
        runs = torch.stack(runs)
        w = torch.cat([want[p].reshape(-1) for p in pe.squared_grads()])
        se = runs.std(0) / runs.shape[0] ** 0.5
        assert ((runs.mean(0) - w).abs() <= 5 * se + 1e-12).all(), loss


def test_sampled_output_grads_shapes():
    f = torch.randn(2, 3, 4)
    g = sampled_output_grads(f, "cross_entropy", samples=5)
    assert g.shape == (5, 2, 3, 4)
    torch.testing.assert_close(g.sum(2), torch.zeros(5, 2, 4))  # p − e_ŷ sums to 0 over classes
    assert sampled_output_grads(f, "bce_with_logits", samples=2).shape == (2, 2, 3, 4)


# ------------------------------------------------------------------ hygiene
@pytest.mark.parametrize("mode", ["ef", "ggn", "mc_fisher"])
def test_grads_unchanged_and_hooks_removed(mode):
    model = make("cnn")
    x, y = data("cnn")
    ref = make("cnn")
    F.cross_entropy(ref(x), y).backward()
    with PerExample(model, mode=mode, loss="cross_entropy") as pe:
        F.cross_entropy(model(x), y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for p in model.parameters():
        assert not p._backward_hooks
    h = {p: t.clone() for p, t in pe.squared_grads().items()}
    F.cross_entropy(model(x), y).backward()  # outside: no effect
    assert_close(pe.squared_grads(), h, rtol=0, atol=0)


def test_backward_after_exit_is_ignored():
    model = mlp()
    x, y = data("mlp")
    with PerExample(model) as pe:
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(h.abs().max() == 0 for h in pe.squared_grads().values())


def test_no_grad_forward_is_ignored():
    model = mlp()
    x, _ = data("mlp")
    with PerExample(model, mode="ggn", loss="cross_entropy") as pe, torch.no_grad():
        model(x)
    assert pe.num_examples == 0
    assert all(h.abs().max() == 0 for h in pe.squared_grads().values())


def test_frozen_parameters_are_skipped():
    model = mlp()
    model[0].weight.requires_grad_(False)
    x, y = data("mlp")
    with PerExample(model) as pe:
        F.cross_entropy(model(x), y, reduction="sum").backward()
    h = pe.squared_grads()
    assert model[0].weight not in h
    assert_close(h, brute_ef(model, x, y))


# ------------------------------------------------------------------ errors
def test_batchnorm_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    with pytest.raises(RuntimeError, match=r"BatchNorm1d.*batch statistics"), PerExample(model):
        model(x)
    # allowed: per-example contributions b_i x̂_i to the minibatch gradient of the BN scale
    with PerExample(model, allow_batch_coupling=True) as pe:
        z = model[0](x)
        zn = model[1](z)
        zn.retain_grad()
        F.cross_entropy(model[2](zn), y, reduction="sum").backward()
    xh = (z - z.mean(0)) / (z.var(0, unbiased=False) + model[1].eps).sqrt()
    b = zn.grad
    torch.testing.assert_close(
        pe.squared_grads()[model[1].weight], (b * xh.detach()).square().sum(0)
    )
    with pytest.raises(RuntimeError, match="batch statistics"), PerExample(model, method="func"):
        model(x)


class InPlaceInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        h = x.clone()
        out = self.lin(h)
        h.mul_(2.0)  # the input the Linear saw is changed before the backward
        return out


@pytest.mark.parametrize("mode", ["ef", "ggn"])
def test_input_modified_in_place_is_detected(mode):
    model = InPlaceInput()
    with pytest.raises(RuntimeError, match="modified in place"):
        with PerExample(model, mode=mode, loss="mse"):
            model(torch.randn(4, 3)).sum().backward()


def test_error_messages():
    model = mlp()
    with pytest.raises(ValueError, match="needs loss="):
        PerExample(model, mode="ggn")
    with pytest.raises(ValueError, match="mode must be"):
        PerExample(model, mode="hessian")
    with pytest.raises(TypeError, match=r"Conv3d"):
        PerExample(nn.Sequential(nn.Conv3d(1, 1, 1)))
    emb = nn.Embedding(4, 2, scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="scale_grad_by_freq"), PerExample(emb):
        emb(torch.tensor([[0, 1]]))
    tup = nn.Sequential(nn.Linear(2, 2))
    with (
        pytest.raises(TypeError, match="output_fn"),
        PerExample(tup, mode="ggn", loss="mse", output_fn=lambda out: (out,)),
    ):
        tup(torch.randn(3, 2))
    fn = Functional()
    with PerExample(fn, method="auto") as pe:
        fn(torch.randn(3, 4)).sum().backward()
    with pytest.raises(RuntimeError, match=r"lin\.weight.*never called"):
        pe.squared_grads()


# ------------------------------------------------------------------ likelihoods
def _case(name):
    """(likelihood, outputs f (n, k), targets y, −log p(y_i | f_i) by torch.distributions)."""
    g = torch.Generator().manual_seed(3)
    n, k = 5, 3
    f = torch.randn(n, k, generator=g)
    D = torch.distributions
    if name == "gaussian":
        y = torch.randn(n, k, generator=g)
        return Gaussian(0.3), f, y, lambda f, y: -D.Normal(f, 0.3**0.5).log_prob(y).sum(-1)
    if name == "mse":  # ‖f − y‖²: the Gaussian with σ² = ½ without its normalizer
        y = torch.randn(n, k, generator=g)
        return SquaredError(), f, y, lambda f, y: F.mse_loss(f, y, reduction="none").sum(-1)
    if name == "bernoulli":
        y = torch.randint(0, 2, (n, k), generator=g).to(f64)
        return Bernoulli(), f, y, lambda f, y: -D.Bernoulli(logits=f).log_prob(y).sum(-1)
    if name == "poisson":
        y = torch.poisson(torch.full((n, k), 2.0), generator=g)
        return Poisson(), f, y, lambda f, y: -D.Poisson(f.exp()).log_prob(y).sum(-1)
    if name == "categorical":
        y = torch.randint(0, k, (n,), generator=g)
        return Categorical(), f, y, lambda f, y: -D.Categorical(logits=f).log_prob(y)
    if name == "callable":  # a robust loss, log cosh(f − y)
        y = torch.randn(n, k, generator=g)
        lik = ElementwiseLoss(lambda y, f: torch.log(torch.cosh(f - y)))
        return lik, f, y, lambda f, y: torch.log(torch.cosh(f - y)).sum(-1)
    raise KeyError(name)


LIKELIHOODS = ("gaussian", "mse", "bernoulli", "poisson", "categorical", "callable")


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_likelihood_gradient_and_hessian_against_torch_func(name):
    """nll = −log p (torch.distributions); loss = nll − (a constant in f); e = ∂ℓ/∂f and
    Λ = ∂²ℓ/∂f² of every example by torch.func on the oracle NLL."""
    lik, f, y, oracle = _case(name)
    torch.testing.assert_close(lik.nll(f, y), oracle(f, y))
    const = lik.nll(f, y) - lik.loss(f, y)
    torch.testing.assert_close(lik.nll(f + 0.7, y) - lik.loss(f + 0.7, y), const)
    for i in range(f.shape[0]):
        yi = y[i : i + 1]

        def nll_i(fi, yi=yi):
            return oracle(fi[None], yi).sum()

        torch.testing.assert_close(lik.grad(f, y)[i], torch.func.grad(nll_i)(f[i]))
        torch.testing.assert_close(lik.hessian(f, y)[i], hessian(nll_i)(f[i]))


@pytest.mark.parametrize("name", ["gaussian", "mse", "bernoulli", "poisson", "callable"])
def test_elementwise_derivatives_and_broadcasting(name):
    """(ℓ, ℓ', ℓ'') entry by entry, with f and y broadcast as the GLM quadrature uses them: f at
    (n, K) points against y (n, 1)."""
    lik, _, y, _ = _case(name)
    y = y[:, :1]
    a = torch.randn(y.shape[0], 4, generator=torch.Generator().manual_seed(4))
    value, d1, d2 = lik.derivatives(a, y)
    assert value.shape == d1.shape == d2.shape == a.shape
    (v0,) = lik.derivatives(a, y, 0)
    torch.testing.assert_close(v0, value)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):

            def ell(t, i=i, j=j):
                return lik.value(t, y[i, 0])

            torch.testing.assert_close(d1[i, j], torch.func.grad(ell)(a[i, j]))
            torch.testing.assert_close(d2[i, j], hessian(ell)(a[i, j]))


@pytest.mark.parametrize("name", ["gaussian", "mse", "bernoulli", "poisson", "categorical"])
def test_hessian_factors_reconstruct_lambda_and_the_mean_jacobian(name):
    """Σ_c V_c V_cᵀ = Λ (on (n, k) outputs and, position by position, on (n, k, L) ones) and
    ∂h/∂f by torch.func.jacrev of the mean response."""
    lik, f, y, _ = _case(name)
    V = lik.hessian_factors(f)
    lam = torch.einsum("cna,cnb->nab", V, V)
    torch.testing.assert_close(lam, lik.hessian(f, y))
    seq = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(5))
    Vs = lik.hessian_factors(seq).reshape(-1, 2, 12)
    for i in range(2):  # Λ_i block diagonal over the 4 positions
        per = [lik.hessian(seq[i, :, t][None])[0] for t in range(4)]
        want = torch.zeros(12, 12)
        for t, blk in enumerate(per):
            idx = torch.arange(3) * 4 + t  # entries (c, t) of the flattened (3, 4)
            want[idx[:, None], idx[None, :]] = blk
        if lik.elementwise:  # entries (c, t) each independent
            want = torch.diag(lik.second(seq[i]).reshape(-1))
        torch.testing.assert_close(Vs[:, i].T @ Vs[:, i], want)
    for i in range(f.shape[0]):
        torch.testing.assert_close(
            lik.mean_jacobian(f)[i], torch.func.jacrev(lambda fi: lik.mean(fi[None])[0])(f[i])
        )


@pytest.mark.parametrize("name", ["gaussian", "mse", "bernoulli", "poisson", "categorical"])
def test_sampled_output_grads_have_second_moment_lambda(name):
    """E[g gᵀ] = Λ (the Fisher in the natural parameter) at 5 standard errors per entry."""
    lik, f, _, _ = _case(name)
    f = f[:2]
    K = 40000
    g = lik.sample_grads(f, K, generator=torch.Generator().manual_seed(6))
    assert g.shape == (K, *f.shape)
    outer = torch.einsum("kna,knb->knab", g, g)
    se = outer.std(0) / K**0.5
    assert ((outer.mean(0) - lik.hessian(f)).abs() <= 5 * se + 1e-12).all()


def test_names_are_one_vocabulary():
    """Every name users pass resolves to one of five likelihoods; each consumer's names stay."""
    canon = {"gaussian", "mse", "bernoulli", "categorical", "poisson"}
    assert set(NAMES.values()) == canon
    for name, c in NAMES.items():
        assert resolve(name).name == c
    for old in ("classification", "binary", "regression"):  # NNLaplace
        assert old in NAMES
    for old in ("cross_entropy", "bce_with_logits", "gaussian", "mse"):  # PerExample, VOGN, MPE
        assert old in NAMES
    for old in ("logistic", "poisson", "gaussian", "multinomial"):  # GLMs
        assert old in NAMES
    assert resolve("regression", sigma2=0.25).sigma2 == 0.25
    lik = Bernoulli()
    assert resolve(lik) is lik
    assert isinstance(resolve(lambda y, a: a * a), ElementwiseLoss)
    with pytest.raises(ValueError, match=r"loss must be one of 'bernoulli' \(alias .*got 'hinge'"):
        resolve("hinge", supported=("bernoulli",), arg="loss")
    with pytest.raises(ValueError, match=r"likelihood must be one of .*got 'poisson'"):
        resolve("poisson", supported=("categorical", "bernoulli", "gaussian"))
    with pytest.raises(TypeError, match="or a callable"):
        resolve(3, arg="link")
    with pytest.raises(TypeError, match="link must be one of"):
        resolve(lambda y, a: a, supported=("bernoulli",), arg="link")
    with pytest.raises(ValueError, match="sigma2 must be a positive"):
        resolve("gaussian", sigma2=0.0)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 1\] for link='logistic'"):
        Bernoulli().check_targets(torch.tensor([2.0]), context=" for link='logistic'")
    with pytest.raises(ValueError, match="counts must be ≥ 0"):
        Poisson().check_targets(torch.tensor([-1.0]), name="counts")
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\)"):
        Categorical().check_targets(torch.tensor([3]), classes=3)
    with pytest.raises(ValueError, match="integer class labels"):
        Categorical().check_targets(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="y must be finite"):
        Gaussian().check_targets(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="no label-free factor"):
        ElementwiseLoss(lambda y, a: a).hessian_factors(torch.zeros(2, 1))


# ------------------------------------------------------------------ Jacobians, GGN, Fisher
def _net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model.register_buffer("shift", torch.tensor([0.1, -0.2]))
    forward = model.forward
    model.forward = lambda x: forward(x) + model.shift  # a buffer used in the forward
    x = torch.randn(6, 3)
    return model, x


def _oracle_jacobians(model, params, x, fixed):
    """J of ALL outputs of the batch by one torch.func.jacrev (no vmap), split per example."""
    names = list(params)
    shapes = [params[n].shape for n in names]
    theta = torch.cat([params[n].reshape(-1) for n in names])

    def outputs(th):
        parts, start = {}, 0
        for n, shape in zip(names, shapes):
            parts[n] = th[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return functional_call(model, {**fixed, **parts}, (x,)).reshape(x.shape[0], -1)

    return outputs(theta), jacrev(outputs)(theta)  # (n, k), (n, k, P)


def test_jacobians_and_per_example_grads_against_torch_func():
    model, x = _net()
    named = dict(model.named_parameters())
    params = {"2.weight": named["2.weight"].detach(), "0.bias": named["0.bias"].detach()}
    fixed = {n: p.detach() for n, p in named.items() if n not in params}
    fixed["shift"] = model.shift
    f, J = jacobians(model, params, x, fixed=fixed)
    f0, J0 = _oracle_jacobians(model, params, x, fixed)
    torch.testing.assert_close(f, f0)
    torch.testing.assert_close(J, J0)
    for name in ("gaussian", "bernoulli", "categorical"):
        lik = {"gaussian": Gaussian(0.5), "bernoulli": Bernoulli(), "categorical": Categorical()}[
            name
        ]
        y = {
            "gaussian": torch.randn(6, 2),
            "bernoulli": torch.randint(0, 2, (6, 2)).to(f64),
            "categorical": torch.randint(0, 2, (6,)),
        }[name]
        g = per_example_grads(model, params, x, y, lik, fixed=fixed)
        for i in range(x.shape[0]):  # one backward per example
            leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
            out = functional_call(model, {**fixed, **leaves}, (x[i : i + 1],))
            yi = y[i : i + 1]
            gi = torch.autograd.grad(lik.nll(out, yi).sum(), list(leaves.values()))
            torch.testing.assert_close(g[i], torch.cat([t.reshape(-1) for t in gi]))
        # ∇ℓ_i = J_iᵀ e_i
        torch.testing.assert_close(g, torch.einsum("nkp,nk->np", J0, lik.grad(f0, y)))
    # the model's own parameters and buffers by default
    torch.testing.assert_close(jacobians(model, named, x)[0], model(x))


def test_ggn_and_fisher_against_dense_loops():
    g = torch.Generator().manual_seed(7)
    n, k, P = 4, 3, 5
    J = torch.randn(n, k, P, generator=g)
    lam = Categorical().hessian(torch.randn(n, k, generator=g))
    dense = [J[i].T @ lam[i] @ J[i] for i in range(n)]
    torch.testing.assert_close(ggn(J, lam), sum(dense))
    torch.testing.assert_close(ggn(J, lam, diagonal=True), sum(dense).diagonal())
    torch.testing.assert_close(ggn(J, lam, per_example=True), torch.stack(dense))
    torch.testing.assert_close(
        ggn(J, lam, diagonal=True, per_example=True), torch.stack([d.diagonal() for d in dense])
    )
    e = torch.randn(n, k, generator=g)
    emp = sum(torch.outer(J[i].T @ e[i], J[i].T @ e[i]) for i in range(n))
    torch.testing.assert_close(fisher(J, e), emp)
    torch.testing.assert_close(fisher(J, e, diagonal=True), emp.diagonal())
    S = 3
    gs = torch.randn(S, n, k, generator=g)
    mc = sum(torch.outer(J[i].T @ gs[s, i], J[i].T @ gs[s, i]) for s in range(S) for i in range(n))
    torch.testing.assert_close(fisher(J, gs), mc)
    # the Fisher of sampled gradients (each / √S) is the GGN in expectation
    V = Categorical().hessian_factors(torch.randn(n, k, generator=g))
    torch.testing.assert_close(fisher(J, V), ggn(J, torch.einsum("cna,cnb->nab", V, V)))
