"""``blr bench merge``: tiny runs through the ``blr`` CLI (the tables, the JSON keys, the figure),
the α sweep that sees the validation split only, bad options, and the numbers recomputed without
the bench's code path: the GGN precision from per-example Jacobians, gradient matching's merge
from its closed form, the merged model's test accuracy and NLL from a forward pass in numpy,
and the rotation against ``torch.rot90``."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from blr.apps import merging
from blr.apps.cli import main as cli

pytest.importorskip("sklearn")  # the digits

try:
    import matplotlib  # noqa: F401  (the figure is written only with it)

    HAS_MATPLOTLIB = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_MATPLOTLIB = False

TINY = ["--seeds", "2", "--epochs", "2", "--pretrain-epochs", "3", "--limit", "200"]
TINY += ["--hidden", "8", "--quiet"]
BUDGET = {"epochs": 2, "pretrain_epochs": 3, "batch_size": 32, "hidden": (8,)}


@pytest.fixture(scope="module")
def digits():
    from blr.apps.demo import load_digits

    return load_digits(limit=200)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("|")]


def test_tiny_run_prints_the_tables_and_writes_the_figure(tmp_path, capsys):
    assert cli(["bench", "merge", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("blr bench merge: digits, split domains")
    header = lines.index(next(line for line in lines if line.startswith("method")))
    assert _cells(lines[header]) == ["method", "accuracy", "NLL"]
    rows = {_cells(line)[0]: _cells(line)[1:] for line in lines[header + 2 : header + 9]}
    assert list(rows) == list(merging.METHODS)
    for cells in rows.values():
        for c in cells:
            mean, se = (float(v) for v in c.split(" ± "))
            assert math.isfinite(mean) and se >= 0
    for title in ("accuracy per task", "NLL per task"):
        head = next(line for line in lines if line.startswith(title))
        assert _cells(head)[1:] == ["15°", "30°", "45°", "60°", "75°"]
    assert "target (gradient matching best of the merges by more than 2 s.e.): " in out
    assert "(fewer than 10 seeds: rough s.e.)" in out
    assert "α chosen on validation, per seed: task arithmetic " in out
    assert "precisions: IVON's h / (hess_init·β₂ᵗ) lies in [" in out
    if HAS_MATPLOTLIB:
        png = tmp_path / "merging.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figure: {png}" in out


def test_json_has_every_key_and_the_class_split_names_its_groups(capsys):
    assert cli(["bench", "merge", *TINY, "--json", "--split", "classes", "--prior", "ivon"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("dataset", "split", "tasks", "sizes", "seeds", "methods", "comparison",
                "chosen_alpha", "alpha_curves", "precisions", "settings", "prior", "png",
                "wall_s"):  # fmt: skip
        assert key in result, key
    assert result["split"] == "classes" and result["prior"] == "ivon" and result["png"] is None
    assert result["tasks"] == ["0/1", "2/3", "4/5", "6/7", "8/9"]
    assert set(result["methods"]) == set(merging.METHODS)
    for row in result["methods"].values():
        for k in ("accuracy", "nll"):
            assert len(row[k]["values"]) == 2
            assert row[k]["mean"] == pytest.approx(np.mean(row[k]["values"]))
        assert set(row["tasks"]) == set(result["tasks"])
    for k in ("accuracy", "nll"):
        c = result["comparison"][k]
        assert c["best_other"] in ("averaging", "task arithmetic", "Fisher averaging")
        assert c["verdict"] == "too few seeds"
    assert isinstance(result["comparison"]["target_met"], bool)
    assert set(result["chosen_alpha"]) == {"task arithmetic", "gradient matching"}
    curves = result["alpha_curves"]["task arithmetic"]
    assert len(curves) == len(merging.ALPHAS) and all(len(c) == 2 for c in curves)


def test_the_alpha_sweep_sees_the_validation_split_only(digits):
    """The test inputs replaced by NaN: the same α and the same validation curves (and NaN test
    scores, so the test split was used for scoring); other validation inputs: other curves."""
    settings = merging.DEFAULTS["digits"]["ivon"]
    kw = {"settings": settings, **BUDGET}
    ref = merging.run_seed(digits, 0, **kw)
    blind = dataclasses.replace(digits, x_test=torch.full_like(digits.x_test, math.nan))
    got = merging.run_seed(blind, 0, **kw)
    assert got["chosen_alpha"] == ref["chosen_alpha"]
    assert got["alpha_curves"] == ref["alpha_curves"]
    assert all(math.isfinite(v) for c in ref["alpha_curves"].values() for v in c)
    assert math.isnan(got["scores"]["gradient matching"]["nll"])
    noise = torch.randn(digits.x_val.shape, generator=torch.Generator().manual_seed(1))
    other = merging.run_seed(dataclasses.replace(digits, x_val=noise), 0, **kw)
    assert other["alpha_curves"] != ref["alpha_curves"]
    assert other["scores"]["joint"] == ref["scores"]["joint"]  # (training never saw it)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--seeds", "0"], "--seeds"),
        (["--epochs", "x"], "--epochs"),
        (["--pretrain-fraction", "1.5"], "--pretrain-fraction"),
        (["--prior-precision", "-1"], "--prior-precision"),
        (["--split", "rotations"], "--split"),
        (["--prior", "flat"], "--prior"),
        (["--limit", "5"], "--limit"),
        (["--dataset", "cifar"], "--dataset"),
    ],
)
def test_bad_options_exit_2_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["bench", "merge", *argv])
    assert exc.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_a_missing_data_set_exits_1_with_the_reason(tmp_path, capsys):
    assert cli(["bench", "merge", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path)]) == 1
    assert "Fashion-MNIST not found" in capsys.readouterr().err


def _ggn_by_jacobians(model, x):
    """Σ_i diag(J_iᵀ Λ_i J_i), J_i the Jacobian of the logits in the flat parameters and
    Λ_i = diag(p_i) − p_i p_iᵀ, by ``torch.func`` (not blr.curvature's hooks)."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    def logits(theta, xi):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i : i + s.numel()].view(s)
            i += s.numel()
        return torch.func.functional_call(model, params, (xi[None],))[0]

    out = torch.zeros_like(flat)
    for xi in x.double():
        jac = torch.func.jacrev(logits)(flat, xi)  # (K, D)
        p = torch.softmax(logits(flat, xi), -1)
        lam = torch.diag(p) - torch.outer(p, p)
        out += ((lam @ jac) * jac).sum(0)
    return out


def test_the_numbers_recomputed_independently(digits):
    """One seed kept: H_t is the GGN by per-example Jacobians; gradient matching's θ̄ is
    θ₀ + (H₀ + αΣH_t)⁻¹ Σ α(H₀ + H_t)(θ_t − θ₀) and task arithmetic's θ₀ + αΣ(θ_t − θ₀) at the
    chosen α, whose validation NLL is the least of the sweep; the reported test accuracy and NLL
    of gradient matching are those of a numpy forward pass of θ̄ over the rotated test images."""
    import expfam

    res = merging.run_seed(digits, 1, settings=merging.DEFAULTS["digits"]["ivon"], keep=True,
                           **BUDGET)  # fmt: skip
    fam = expfam.DiagGaussian()
    theta0, h0 = (v.double() for v in fam.to_moments(res["base"].nat))
    thetas, hs = [], []
    for t, (q, task) in enumerate(zip(res["tasks_posteriors"], res["task_data"])):
        theta_t, prec = (v.double() for v in fam.to_moments(q.nat))
        if t == 0:  # the GGN of one task, from its fine-tuned weights θ_t
            model = res["model"]
            torch.nn.utils.vector_to_parameters(theta_t.float(), model.parameters())
            ggn = _ggn_by_jacobians(model, task.x_train)
            torch.testing.assert_close(prec - h0, ggn, rtol=1e-3, atol=1e-4 * float(h0.min()))
        thetas.append(theta_t)
        hs.append(prec - h0)
    a = res["chosen_alpha"]["gradient matching"]
    gm = theta0 + sum(a * (h0 + h) * (th - theta0) for h, th in zip(hs, thetas)) / (
        h0 + a * sum(hs)
    )
    torch.testing.assert_close(res["merged"]["gradient matching"].double(), gm, rtol=0,
                               atol=1e-4)  # fmt: skip
    a_ta = res["chosen_alpha"]["task arithmetic"]
    ta = theta0 + a_ta * sum(th - theta0 for th in thetas)
    torch.testing.assert_close(res["merged"]["task arithmetic"].double(), ta, rtol=0, atol=1e-5)
    for k, curve in res["alpha_curves"].items():
        assert curve[merging.ALPHAS.index(res["chosen_alpha"][k])] == min(curve)
    # the reported test scores of θ̄, by numpy: two layers and a log-softmax
    w = gm.numpy()
    hidden = BUDGET["hidden"][0]
    d_in = digits.x_train.shape[1]
    w1 = w[: hidden * d_in].reshape(hidden, d_in)
    b1 = w[hidden * d_in : hidden * d_in + hidden]
    rest = w[hidden * d_in + hidden :]
    w2, b2 = rest[: 10 * hidden].reshape(10, hidden), rest[10 * hidden :]
    x = torch.cat([t.x_test for t in res["task_data"]]).double().numpy()
    y = torch.cat([t.y_test for t in res["task_data"]]).numpy()
    z = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    got = res["scores"]["gradient matching"]
    assert got["accuracy"] == pytest.approx(float((logp.argmax(1) == y).mean()), abs=1e-12)
    assert got["nll"] == pytest.approx(float(-logp[np.arange(len(y)), y].mean()), rel=1e-4)


def test_rotate_agrees_with_rot90_and_keeps_the_centre():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 49, generator=g)
    for k in (1, 2, 3):
        want = torch.rot90(x.view(3, 7, 7), k, dims=(1, 2)).reshape(3, 49)
        torch.testing.assert_close(merging.rotate(x, 90.0 * k), want, rtol=0, atol=1e-6)
    assert torch.allclose(merging.rotate(x, 30.0)[:, 24], x[:, 24], atol=1e-6)  # the centre
    with pytest.raises(ValueError, match="x must hold square images"):
        merging.rotate(torch.zeros(1, 10), 15.0)


def test_make_tasks_splits_disjointly_and_checks_its_arguments(digits):
    _, y0, tasks = merging.make_tasks(digits, "classes", 0)
    assert len(y0) + sum(len(t.y_train) for t in tasks) == len(digits.y_train)
    for t, task in enumerate(tasks):
        assert set(task.y_train.tolist()) <= {2 * t, 2 * t + 1}
        assert set(task.y_test.tolist()) == {2 * t, 2 * t + 1}
    with pytest.raises(ValueError, match="split must be 'domains' or 'classes'"):
        merging.make_tasks(digits, "rotations", 0)
    with pytest.raises(ValueError, match="pretrain_fraction must be in"):
        merging.make_tasks(digits, "domains", 0, pretrain_fraction=1.0)
    with pytest.raises(ValueError, match="prior must be 'laplace' or 'ivon'"):
        merging.run(digits, prior="flat", seeds=1)


def test_tune_scores_every_prior_on_the_joint_models_validation_nll(capsys):
    argv = ["bench", "merge", *TINY, "--tune", "--json", "--seeds", "1"]
    assert cli(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["prior_precision"] for r in rows if r["prior_precision"] is None] == [None]
    assert sorted(r["prior_precision"] for r in rows if r["prior_precision"]) == sorted(
        merging.PRIOR_GRID
    )
    nll = [r["joint_val_nll"] for r in rows]
    assert nll == sorted(nll) and all(math.isfinite(v) for v in nll)
