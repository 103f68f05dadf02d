"""``blr bench uci``: the dataset format and its validation, the standardization and the
un-standardized metrics (against numpy/scipy computed independently), the mean ± s.e. of the
splits, and the benchmark run end to end on tiny datasets. (Bayes by backprop, the optimizer of
its BBB rows, is tested in test_bbb.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from blr.apps.report import mean_se
from blr.apps.uci import (
    METHODS,
    BenchConfig,
    evaluate,
    load_uci,
    run_method,
)
from blr.apps.uci import main as _main
from blr.posterior import ParameterPosterior


def main(argv: list[str]) -> int:
    """``blr bench uci --protocol fixed``: the settings as given, split by split (the protocol
    that chooses them is tested in tests/blr/test_uci_protocol.py)."""
    return _main(["--protocol", "fixed", *argv])


REQUIRED = (
    "data.txt",
    "index_features.txt",
    "index_target.txt",
    "n_hidden.txt",
    "n_epochs.txt",
    "n_splits.txt",
)


def write_dataset(
    root: Path, *, n: int = 60, splits: int = 2, noise: float = 0.3, seed: int = 0
) -> Path:
    """A dataset directory in the exact UCI-benchmark format: random linear data, target in
    column 1 (not the last), features in columns 0, 2, 3, original units far from standard
    (y ≈ 50 + 10·(...)), ``splits`` random 80/20 splits (0-based rows)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.2] + [0.0, 3.0, -1.0]
    y = 50.0 + 10.0 * (x @ [1.0, -0.4, 3.0] + noise * rng.normal(size=n))
    root.mkdir(parents=True, exist_ok=True)
    np.savetxt(root / "data.txt", np.column_stack([x[:, 0], y, x[:, 1], x[:, 2]]))
    (root / "index_features.txt").write_text("0\n2\n3\n")
    (root / "index_target.txt").write_text("1\n")
    (root / "n_hidden.txt").write_text("10\n")
    (root / "n_epochs.txt").write_text("3\n")
    (root / "n_splits.txt").write_text(f"{splits}\n")
    for k in range(splits):
        perm = rng.permutation(n)
        n_test = n // 5
        np.savetxt(root / f"index_train_{k}.txt", np.sort(perm[n_test:]), fmt="%d")
        np.savetxt(root / f"index_test_{k}.txt", np.sort(perm[:n_test]), fmt="%d")
    return root


@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "toy")


def run_json(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------ format and validation
def test_load_reads_the_columns_named_by_the_index_files(toy):
    data = load_uci(toy)
    raw = np.loadtxt(toy / "data.txt")
    assert (data.n_rows, data.n_features, data.n_splits) == (60, 3, 2)
    assert (data.n_hidden, data.n_epochs, data.name) == (10, 3, "toy")
    np.testing.assert_array_equal(data.x, raw[:, [0, 2, 3]])
    np.testing.assert_array_equal(data.y, raw[:, 1])
    train, test = data.indices(1)
    np.testing.assert_array_equal(train, np.loadtxt(toy / "index_train_1.txt", dtype=int))
    np.testing.assert_array_equal(test, np.loadtxt(toy / "index_test_1.txt", dtype=int))


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_file_is_named(toy, name, capsys):
    (toy / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        load_uci(toy)
    assert main(["--data", str(toy), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "blr bench uci: error:" in err and name in err


def test_a_missing_split_file_is_named_before_anything_runs(toy, capsys):
    (toy / "index_test_1.txt").unlink()
    assert main(["--data", str(toy), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "index_test_1.txt" in err
    assert "VOGN" not in err  # no method ran
    # the first split alone is complete
    report = run_json(capsys, "--data", str(toy), "--splits", "1", "--epochs", "1")
    assert report["splits"] == 1


def test_a_missing_directory_is_named(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("index_train_0.txt", "0\n1\n60\n", r"index_train_0\.txt has row indices outside"),
        ("index_train_0.txt", "0\n1\n2.5\n", r"index_train_0\.txt must hold integers"),
        ("index_test_0.txt", None, r"share rows"),
        ("index_target.txt", "1\n2\n", r"index_target\.txt must name one column"),
        ("index_features.txt", "0\n1\n", r"contains the target column 1"),
        ("index_features.txt", "0\n7\n", r"index_features\.txt names columns outside \[0, 4\)"),
        ("n_splits.txt", "0\n", r"n_splits\.txt must hold one integer ≥ 1"),
        ("n_hidden.txt", "ten\n", r"n_hidden\.txt must hold whitespace-separated integers"),
        ("data.txt", "1 2 3 4\n5 nan 7 8\n", r"data\.txt holds non-finite values"),
    ],
)
def test_malformed_files_are_named(toy, file, content, message, capsys):
    if content is None:  # a test row that is also a training row
        train = (toy / "index_train_0.txt").read_text().split()
        content = "\n".join([train[0], *(toy / file).read_text().split()[1:]]) + "\n"
    (toy / file).write_text(content)
    with pytest.raises(ValueError, match=message):
        data = load_uci(toy)
        data.split(0)
    assert main(["--data", str(toy), "--epochs", "1", "--quiet"]) == 2
    assert file in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--splits", "3"], r"--splits must lie in \[1, 2\]"),
        (["--epochs", "-1"], "--epochs must be ≥ 0"),
        (["--threads", "0"], "--threads must be ≥ 1"),
        (["--prior-prec", "0"], "--prior-prec must be > 0"),
        (["--lr", "adam=0.1"], "--lr must be METHOD=VALUE"),
        (["--lr", "ivon=fast"], "--lr ivon must be a number"),
    ],
)
def test_bad_options_are_named(toy, args, message, capsys):
    assert main(["--data", str(toy), *args]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")


def test_unknown_method_is_refused_by_the_parser(toy):
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(toy), "--methods", "adam"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------ standardization, metrics
def test_split_is_standardized_with_the_training_statistics_only(toy):
    data = load_uci(toy)
    raw = np.loadtxt(toy / "data.txt")
    train = np.loadtxt(toy / "index_train_0.txt", dtype=int)
    test = np.loadtxt(toy / "index_test_0.txt", dtype=int)
    x_tr, x_te = raw[train][:, [0, 2, 3]], raw[test][:, [0, 2, 3]]
    y_tr, y_te = raw[train, 1], raw[test, 1]
    sp = data.split(0, dtype=torch.float64)
    mu, sd = x_tr.mean(0), np.sqrt(((x_tr - x_tr.mean(0)) ** 2).mean(0))  # population s.d.
    np.testing.assert_allclose(sp.x_train.numpy(), (x_tr - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sp.x_test.numpy(), (x_te - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sp.y_mean, y_tr.mean(), rtol=1e-14)
    np.testing.assert_allclose(sp.y_std, np.sqrt(((y_tr - y_tr.mean()) ** 2).mean()), rtol=1e-14)
    np.testing.assert_allclose(sp.y_test.numpy(), (y_te - y_tr.mean()) / sp.y_std, atol=1e-12)
    np.testing.assert_array_equal(sp.y_test_raw.numpy(), y_te)
    assert sp.n_train == train.size == 48


def test_a_feature_constant_on_the_training_rows_keeps_unit_scale(toy):
    raw = np.loadtxt(toy / "data.txt")
    raw[:, 2] = 7.0
    np.savetxt(toy / "data.txt", raw)
    sp = load_uci(toy).split(0, dtype=torch.float64)
    assert torch.equal(sp.x_train[:, 1], torch.zeros(48, dtype=torch.float64))


def test_validation_split_holds_out_training_rows_only(toy):
    data = load_uci(toy)
    val = data.validation_split(0, fraction=0.25, seed=3, dtype=torch.float64)
    train, test = data.indices(0)
    assert (val.n_train, val.y_test.numel()) == (36, 12)
    held = set(np.round(val.y_test_raw.numpy(), 12))
    assert held <= set(np.round(data.y[train], 12))
    assert not held & set(np.round(data.y[test], 12))


class Zero(torch.nn.Module):
    """Predicts 0 in standardized units: the training mean in original units."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1, dtype=x.dtype)


def test_mean_predictor_gets_the_rmse_and_loglik_of_the_training_mean(toy):
    """Oracle: numpy / scipy on the raw rows, computed without the module's standardization."""
    data = load_uci(toy)
    raw = np.loadtxt(toy / "data.txt")
    y_tr = raw[np.loadtxt(toy / "index_train_1.txt", dtype=int), 1]
    y_te = raw[np.loadtxt(toy / "index_test_1.txt", dtype=int), 1]
    sp = data.split(1, dtype=torch.float64)
    noise_var = 0.37  # standardized units
    got_rmse, got_ll = evaluate(Zero(), None, sp, noise_var, samples=0)
    want_rmse = math.sqrt(np.mean((y_te - y_tr.mean()) ** 2))
    want_ll = stats.norm.logpdf(y_te, y_tr.mean(), math.sqrt(noise_var) * y_tr.std()).mean()
    assert want_rmse > 5  # original units: far from the standardized scale
    assert got_rmse == pytest.approx(want_rmse, rel=1e-12)
    assert got_ll == pytest.approx(want_ll, rel=1e-12)
    # = the standardized log-likelihood − log s_y
    std_ll = stats.norm.logpdf(sp.y_test.numpy(), 0.0, math.sqrt(noise_var)).mean()
    assert got_ll == pytest.approx(std_ll - math.log(y_tr.std()), rel=1e-12)


def test_evaluate_adds_the_spread_of_the_draws_to_the_noise(toy):
    """A linear model whose only uncertain parameter is the bias b ~ N(0, v): the predictive is
    N(ȳ, (σ² + v)s_y²) up to Monte Carlo error of the draws' spread (S = 4000, 5%)."""
    sp = load_uci(toy).split(0, dtype=torch.float64)
    model = torch.nn.Linear(3, 1).double()
    torch.nn.init.zeros_(model.weight)
    fam = __import__("expfam").DiagGaussian()
    v, noise_var = 0.5, 0.2
    prec = torch.tensor([1e12, 1e12, 1e12, 1 / v], dtype=torch.float64)
    q = ParameterPosterior(
        fam, fam.from_moments(torch.zeros(4, dtype=torch.float64), prec), model,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    _, ll = evaluate(model, q, sp, noise_var, samples=4000)
    y = sp.y_test_raw.numpy()
    for var in ((noise_var + 0.95 * v), (noise_var + 1.05 * v)):
        bound = stats.norm.logpdf(y, sp.y_mean, math.sqrt(var) * sp.y_std).mean()
        assert abs(ll - bound) < 0.05
    wrong = stats.norm.logpdf(y, sp.y_mean, math.sqrt(noise_var) * sp.y_std).mean()
    assert abs(ll - wrong) > 0.1


def test_mean_se_is_the_mean_and_the_standard_error():
    a = [3.0, 1.0, 4.0, 1.5]
    mean, se = mean_se(a)
    assert mean == pytest.approx(np.mean(a), rel=1e-15)
    assert se == pytest.approx(stats.sem(a), rel=1e-12)
    assert math.isnan(mean_se([2.0])[1])
    with pytest.raises(ValueError, match="values is empty"):
        mean_se([])


# ------------------------------------------------------------------------ the benchmark
def test_all_four_methods_run_and_the_json_summarizes_the_splits(toy, capsys):
    report = run_json(
        capsys, "--data", str(toy), "--splits", "2", "--epochs", "2", "--samples", "4"
    )
    assert [r["method"] for r in report["results"]] == list(METHODS)
    assert report["splits"] == 2 and report["dataset"] == "toy"
    assert report["config"]["epochs"] == 2 and report["config"]["n_hidden"] == 10
    for r in report["results"]:
        assert len(r["rmse_splits"]) == len(r["loglik_splits"]) == 2
        assert r["rmse"][0] == pytest.approx(np.mean(r["rmse_splits"]), rel=1e-12)
        assert r["rmse"][1] == pytest.approx(stats.sem(r["rmse_splits"]), rel=1e-12)
        assert r["loglik"][0] == pytest.approx(np.mean(r["loglik_splits"]), rel=1e-12)
        assert all(math.isfinite(v) and v > 0 for v in r["rmse_splits"])
        assert r["published_rmse"] is None and r["time_s"] > 0


def test_epochs_default_to_n_epochs_txt_and_subsets_reproduce_the_full_run(toy, capsys):
    full = run_json(capsys, "--data", str(toy), "--splits", "2", "--samples", "4")
    assert full["config"]["epochs"] == 3  # n_epochs.txt
    part = run_json(
        capsys, "--data", str(toy), "--splits", "2", "--samples", "4", "--methods", "bbb", "vogn"
    )
    assert [r["method"] for r in part["results"]] == ["bbb", "vogn"]
    by_method = {r["method"]: r for r in full["results"]}
    for r in part["results"]:  # seeds depend on the split, not on which methods run
        assert r["rmse_splits"] == by_method[r["method"]]["rmse_splits"]
        assert r["loglik_splits"] == by_method[r["method"]]["loglik_splits"]


def test_the_table_prints_published_numbers_where_they_apply(tmp_path, capsys):
    root = write_dataset(tmp_path / "bostonHousing", splits=1)
    args = ["--data", str(root), "--epochs", "1", "--samples", "2", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[3:7]}
    assert set(lines) == {"VOGN", "Vadam", "IVON", "BBB"}
    assert "3.93 ± 0.26" in lines["Vadam"] and "3.58 ± 0.21" in lines["BBB"]
    assert "—" in lines["VOGN"] and "—" in lines["IVON"]
    assert "method" in out and "published RMSE" in out and "wall time" in out
    assert main([*args, "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "| method | test RMSE | test log-lik | published RMSE | time (s) |" in md
    assert "| Vadam |" in md and "3.93 ± 0.26" in md


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_the_linear_function(tmp_path, method):
    """Far better than the training-mean predictor: the test RMSE of the mean predictor is ≈ 19
    (original units, the target's s.d. ≈ 24), the noise floor is 1.0, and 40 epochs reach
    2–3.5 (measured: IVON/VOGN ≈ 2.0, BBB ≈ 3.3, Vadam ≈ 3.5)."""
    data = load_uci(write_dataset(tmp_path / "lin", n=300, splits=1, noise=0.1, seed=2))
    sp = data.split(0)
    baseline, _ = evaluate(Zero(), None, sp, 1.0, samples=0)
    config = BenchConfig(epochs=40, n_hidden=20, samples=16)
    result = run_method(method, sp, config)
    assert result["rmse"] < 0.25 * baseline
    assert result["noise_var"] < 0.15  # standardized: the target's own variance is 1


def test_run_method_refuses_unknown_methods_and_missing_epochs(toy):
    sp = load_uci(toy).split(0)
    with pytest.raises(ValueError, match="method must be one of"):
        run_method("adam", sp, BenchConfig(epochs=1))
    with pytest.raises(ValueError, match="epochs must be an integer ≥ 0"):
        run_method("ivon", sp, BenchConfig())


def test_divergence_is_reported_and_left_out_of_the_summary(toy, capsys):
    args = ["--data", str(toy), "--methods", "ivon", "bbb", "--epochs", "3", "--samples", "2"]
    assert main([*args, "--lr", "ivon=1e30", "--quiet"]) == 1
    out = capsys.readouterr().out
    ivon = next(line for line in out.splitlines() if line.startswith("IVON "))
    assert ivon.split()[1:3] == ["diverged", "diverged"]
    assert "IVON diverged (NaN/Inf) on split(s) 0, 1" in out and "--lr ivon=" in out
    assert main([*args, "--lr", "ivon=1e30", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    ivon, bbb = report["results"]
    assert ivon["diverged_splits"] == [0, 1] and ivon["rmse"] is None
    assert ivon["rmse_splits"] == [None, None]
    assert bbb["diverged_splits"] == [] and len(bbb["rmse_splits"]) == 2


def test_one_split_has_no_standard_error(toy, capsys):
    report = run_json(capsys, "--data", str(toy), "--splits", "1", "--epochs", "1")
    assert all(r["rmse"][1] is None and r["loglik"][1] is None for r in report["results"])
    assert main(["--data", str(toy), "--splits", "1", "--epochs", "1", "--quiet"]) == 0
    assert "± —" in capsys.readouterr().out


def test_threads_are_restored(toy, capsys):
    before = torch.get_num_threads()
    run_json(capsys, "--data", str(toy), "--splits", "1", "--epochs", "1", "--threads", "2")
    assert torch.get_num_threads() == before


def test_run_method_leaves_the_global_random_state_alone(toy):
    sp = load_uci(toy).split(0)
    state = torch.random.get_rng_state()
    first = run_method("vadam", sp, BenchConfig(epochs=1, samples=2, lr={"ivon": 1.0}))
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)  # a different global state changes nothing
    assert run_method("vadam", sp, BenchConfig(epochs=1, samples=2)) == {
        **first,
        "time_s": pytest.approx(first["time_s"], abs=10.0),
    }
