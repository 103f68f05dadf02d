"""``blr bench uci`` with its default protocol (blr.apps.uci_protocol): settings chosen per split
on held-out training rows, all splits trained at once. End to end on a small slice: the choices
are printed per split, lie in the grids, and do not change when only the test rows change (no
test row reaches a choice); the batched networks are those of blr.apps.uci.mlp per split; a
diverging candidate is reported and left out; the paired differences recompute."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from blr.apps import uci_protocol
from blr.apps.uci import load_uci, main, mlp
from blr.apps.uci_protocol import ProtocolConfig, run_protocol
from tests.blr.test_uci import write_dataset

QUICK = ["--epochs", "4", "--samples", "4", "--quiet", "--json"]


@pytest.fixture()
def toy(tmp_path):
    return write_dataset(tmp_path / "toy")


def test_the_default_protocol_prints_the_choices_per_split(toy, capsys):
    argv = ["--data", str(toy), "--methods", "ivon", "mcdropout", "ensemble", *QUICK]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "select" and report["splits"] == 2
    assert report["best_baseline"] in ("mcdropout", "ensemble")
    for r in report["results"]:
        assert len(r["choices"]) == 2 and r["diverged_splits"] == []
        for c in r["choices"]:
            assert c["prior_prec"] in uci_protocol.PRIOR_PRECS
            weights = uci_protocol.LIKELIHOOD_WEIGHTS if r["method"] == "ivon" else (1.0,)
            assert c["likelihood_weight"] in weights
            assert c["epochs"] in (1, 2, 4)
            if r["method"] == "mcdropout":
                assert c["dropout"] in uci_protocol.DROPOUT_RATES
            else:
                assert c["lr"] in [uci_protocol.BASE_LR[r["method"]] * s
                                   for s in uci_protocol.LR_SCALES]  # fmt: skip
        assert len(r["rmse_splits"]) == 2 and all(v > 0 for v in r["rmse_splits"])
        if r["method"] != report["best_baseline"]:
            best = next(b for b in report["results"] if b["method"] == report["best_baseline"])
            diffs = [a - b for a, b in zip(r["loglik_splits"], best["loglik_splits"])]
            assert r["loglik_diff"][0] == pytest.approx(float(np.mean(diffs)))


def test_no_test_row_reaches_a_choice(toy, tmp_path):
    """Split 0's test targets replaced by noise of another scale: every choice (δ, lr, epochs,
    validation log-likelihood) is the same; the test scores are not."""
    data = load_uci(toy)
    config = ProtocolConfig(epochs=4, n_hidden=data.n_hidden, test_samples=4, val_samples=4)
    before = run_protocol("ivon", data, [0], config)
    raw = np.loadtxt(toy / "data.txt")
    _, test = data.indices(0)
    raw[test, 1] = 1e3 * np.random.default_rng(5).normal(size=test.size)
    np.savetxt(toy / "data.txt", raw)
    after = run_protocol("ivon", load_uci(toy), [0], config)
    assert after["splits"][0]["choice"] == before["splits"][0]["choice"]
    assert after["splits"][0]["rmse"] > 10 * before["splits"][0]["rmse"]


def test_the_batched_networks_start_as_the_per_split_networks():
    """Network j of the batch is blr.apps.uci.mlp initialized under its split's seed."""
    net = uci_protocol._network([7, 1007], 3, 5, None)
    for j, seed in enumerate((7, 1007)):
        torch.manual_seed(seed)
        ref = mlp(3, 5)
        x = torch.randn(4, 3)
        torch.testing.assert_close(net(torch.stack([x, x], 1))[:, j], ref(x))


def test_a_diverging_candidate_is_left_out_and_an_all_diverged_split_is_reported(
    toy, capsys, monkeypatch
):
    monkeypatch.setitem(uci_protocol.BASE_LR, "ivon", 1e30)
    assert main(["--data", str(toy), "--methods", "ivon", *QUICK]) == 1
    report = json.loads(capsys.readouterr().out)
    (ivon,) = report["results"]
    assert ivon["diverged_splits"] == [0, 1] and ivon["rmse"] is None
    assert all(c is None for c in ivon["choices"])
    assert ivon["diverged_candidates"] == [16, 16]  # 4 δ × 2 c × 2 learning rates per split


def test_a_choice_that_diverges_on_all_training_rows_gives_way_to_the_next_best(toy, monkeypatch):
    """The networks of the first final run stopped (as a divergence would): each of its splits
    is retrained with its next best candidate on the hold-out and the failed choice reported;
    with no retrain left those splits have no result."""
    data = load_uci(toy)
    config = ProtocolConfig(epochs=4, n_hidden=data.n_hidden, test_samples=4, val_samples=4)
    original, calls, stopped = uci_protocol._train_and_score, [], set()

    def stopping_first_final_run(method, batch, lr, checkpoints, config, score):
        calls.append(batch.splits[0].n_train)
        if len(calls) != 1 + len(config.lr_scales):  # not the first run after the selection
            return original(method, batch, lr, checkpoints, config, score)
        stopped.update(batch.members)

        def stop(epoch, net, predictive, noise_var, alive):
            score(epoch, net, predictive, noise_var, torch.zeros_like(alive))

        return original(method, batch, lr, checkpoints, config, stop)

    monkeypatch.setattr(uci_protocol, "_train_and_score", stopping_first_final_run)
    ref = run_protocol("ivon", data, [0, 1], config)
    assert stopped and calls[-1] > calls[0]  # the final runs train on all the training rows
    for i, s in enumerate(ref["splits"]):
        assert s["rmse"] is not None
        if i not in stopped:
            assert s["retrain_diverged"] == []
            continue
        (failed,) = s["retrain_diverged"]
        assert s["choice"] != failed and s["choice"]["val_loglik"] <= failed["val_loglik"]
    calls.clear()
    stopped.clear()
    monkeypatch.setattr(uci_protocol, "RETRAINS", 0)
    out = run_protocol("ivon", data, [0, 1], config)
    for i, (s, r) in enumerate(zip(out["splits"], ref["splits"])):
        assert (s["rmse"] is None) == (i in stopped)
        assert s["retrain_diverged"] == r["retrain_diverged"]


def test_fixed_only_options_are_refused_with_the_default_protocol(toy, capsys):
    assert main(["--data", str(toy), "--lr", "ivon=0.1"]) == 2
    assert "--lr applies to --protocol fixed" in capsys.readouterr().err
    assert main(["--data", str(toy), "--protocol", "fixed", "--methods", "ensemble"]) == 2
    assert "methods must be a non-empty subset" in capsys.readouterr().err


def test_vogn_one_factor_pass_is_the_identity_factors_exactly():
    """K networks with disjoint parameters: the all-ones factor (one backward per step) gives
    VOGN the same diagonal GGN as the identity's K factors, so the same steps, bit for bit."""
    from torch import nn

    from blr.curvature import BatchedLinear, Gaussian
    from blr.optim import VOGN

    def run(loss):
        torch.manual_seed(0)
        net = nn.Sequential(BatchedLinear(6, 3, 8), nn.ReLU(), BatchedLinear(6, 8, 1))
        opt = VOGN(net.parameters(), lr=0.05, ess=100, loss=loss, model=net, seed=0)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x, y = torch.randn(16, 6, 3, generator=g), torch.randn(16, 6, 1, generator=g)
            with opt.sampled_params(train=True):
                opt.zero_grad()
                ((net(x) - y) ** 2).mean(0).sum().backward()
            opt.step()
        state = opt.state_dict()["state"]
        return [p.detach().clone() for p in net.parameters()] + [s["hess"] for s in state.values()]

    ones = torch.ones(6)
    for a, b in zip(run(Gaussian(1.0)), run(uci_protocol._SeparableGaussian(ones))):
        assert torch.equal(a, b)
    assert uci_protocol._SeparableGaussian(ones).hessian_factors(torch.zeros(5, 6, 1)).shape == (
        1, 5, 6, 1,
    )  # fmt: skip


def test_vogn_one_factor_pass_weights_each_network_by_its_c():
    """Network k's likelihood weighted by c_k: the one factor √c gives the diagonal GGN of the
    K factors √c_k e_k (Λ = diag c), so the same VOGN steps (float64, to 1e-12)."""
    from torch import nn

    from blr.curvature import BatchedLinear, Gaussian
    from blr.optim import VOGN

    c = torch.tensor([1.0, 10.0, 3.0, 0.5], dtype=torch.float64)

    class Weighted(Gaussian):  # K columns: Λ = diag(c)
        def hessian_factors(self, f):
            eye = torch.diag(c.sqrt()).to(f.dtype)  # (K, K): factor j = √c_j e_j
            return eye[:, None, :, None].expand(4, f.shape[0], 4, 1)

    def run(loss):
        torch.manual_seed(0)
        net = nn.Sequential(BatchedLinear(4, 3, 8), nn.ReLU(), BatchedLinear(4, 8, 1)).double()
        opt = VOGN(net.parameters(), lr=0.05, ess=100, loss=loss, model=net, seed=0)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(16, 4, 3, generator=g, dtype=torch.float64)
            y = torch.randn(16, 4, 1, generator=g, dtype=torch.float64)
            with opt.sampled_params(train=True):
                opt.zero_grad()
                ((0.5 * (net(x) - y) ** 2).mean(0).squeeze(-1) * c).sum().backward()
            opt.step()
        state = opt.state_dict()["state"]
        return [p.detach().clone() for p in net.parameters()] + [s["hess"] for s in state.values()]

    ref = run(Weighted(1.0))
    for a, b in zip(ref, run(uci_protocol._SeparableGaussian(c))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    unweighted = run(uci_protocol._SeparableGaussian(torch.ones(4, dtype=torch.float64)))
    assert not torch.allclose(ref[-1], unweighted[-1])  # c reaches the curvature


def test_a_weighted_likelihood_is_the_tempered_posterior():
    """IVON on c·loss with prior S₀ (total units) is IVON on the loss with N → cN, h₀ → h₀/c:
    the posterior ∝ p(D|θ)ᶜ p(θ) (float64; rescale_lr off, which would scale lr by h₀ + δ)."""
    from blr.optim import IVON
    from blr.posterior import ParameterPosterior
    from expfam import DiagGaussian

    c, n, h0 = 10.0, 50, 0.5

    def run(weight, ess, hess_init):
        torch.manual_seed(0)
        net = mlp(3, 6).double()
        fam = DiagGaussian()
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        s0 = torch.linspace(0.5, 4.0, flat.numel(), dtype=torch.float64)
        prior = ParameterPosterior(fam, fam.from_moments(torch.zeros_like(flat), s0), net)
        opt = IVON(net.parameters(), lr=0.1, ess=ess, hess_init=hess_init, beta2=0.9,
                   prior=prior, fused=False, rescale_lr=False, seed=0)  # fmt: skip
        g = torch.Generator().manual_seed(2)
        for _ in range(6):
            x = torch.randn(8, 3, generator=g, dtype=torch.float64)
            y = torch.randn(8, 1, generator=g, dtype=torch.float64)
            with opt.sampled_params(train=True):
                opt.zero_grad()
                (weight * ((net(x) - y) ** 2).mean()).backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    tempered = run(c, n, h0)
    for a, b in zip(tempered, run(1.0, c * n, h0 / c)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(tempered[0], run(1.0, n, h0)[0])


def test_mc_dropout_does_not_depend_on_what_ran_before(toy):
    """The dropout masks come from the network's own generator: torch's global generator in
    another state (other methods ran first in the process) leaves every number unchanged."""
    data = load_uci(toy)
    config = ProtocolConfig(epochs=2, n_hidden=data.n_hidden, test_samples=4, val_samples=4)
    torch.manual_seed(0)
    first = run_protocol("mcdropout", data, [0, 1], config)
    torch.manual_seed(123)
    torch.rand(1000)
    second = run_protocol("mcdropout", data, [0, 1], config)
    assert first["splits"] == second["splits"]
