"""The ``blr`` console entry point: help and version."""

from __future__ import annotations

import subprocess
import sys

import pytest

import expfam
from blr.apps.cli import main


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: blr" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"blr {expfam.__version__}"


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "blr.apps.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "Bayesian Learning Rule" in out.stdout


def test_bench_optim_prints_json_rows(capsys):
    import json

    assert (
        main(["bench", "optim", "--models", "cnn", "--repeats", "1", "--no-train-step", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    names = {r["optimizer"] for r in out["optimizer_side"]}
    assert {"adamw-foreach", "blr IVON", "BLROptimizer diag"} <= names
    assert all(r["bytes"] > 0 and r["ms"] > 0 for r in out["optimizer_side"])
    rows = {r["optimizer"]: r for r in out["optimizer_side"]}
    assert rows["blr IVON"]["x_ivon"] == 1.0 and rows["BLROptimizer diag"]["x_ivon"] > 0


def test_bench_optim_generic_optimizer_row_and_its_ratio_to_ivon(capsys):
    """``--optimizers`` picks rows; the generic BLROptimizer (diagonal Gaussian) is timed like
    IVON and its ratio to IVON is printed."""
    import json

    argv = ["bench", "optim", "--models", "cnn", "--repeats", "1", "--no-train-step"]
    assert main([*argv, "--optimizers", "blr IVON", "BLROptimizer diag"]) == 0
    out = capsys.readouterr().out
    assert "×IVON" in out and "BLROptimizer diag / blr IVON, optimizer side, cnn:" in out
    assert "adamw" not in out
    assert main([*argv, "--json", "--optimizers", "BLROptimizer diag"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["optimizer_side"]
    assert row["optimizer"] == "BLROptimizer diag" and row["bytes"] > 0
    assert row["x_ivon"] is None and row["x_adamw_foreach"] is None  # no reference row: no ratio
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--optimizers", "no such optimizer"])
    assert exc.value.code == 2
    assert "unknown optimizer" in capsys.readouterr().err


def test_bench_uci_help_and_a_missing_directory(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "uci", "--help"])
    assert exc.value.code == 0
    assert "--data" in capsys.readouterr().out
    assert main(["bench", "uci", "--data", str(tmp_path / "nope")]) == 2


def test_demo_smoke(capsys, tmp_path):
    import json

    argv = ["demo", "--epochs", "1", "--seeds", "2", "--hidden", "8", "--limit", "60"]
    argv += ["--quiet", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["methods"]) == {"IVON (32 draws)", "IVON (mean)", "AdamW", "SGD"}
    assert out["seeds"] == 2 and out["epochs"] == 1


def test_train_steps_take_turns_and_every_optimizer_trains():
    """The whole-step timer builds one MLP per optimizer from the same seed, times each, and
    really trains (the sampling optimizers inside ``sampled_params(train=True)``)."""
    import torch

    from blr.apps.bench import blr_diag, time_train_steps
    from blr.optim import VOGN

    made = {}

    def keep(name, make):
        def f(model):
            made[name] = (model, [p.detach().clone() for p in model.parameters()])
            return make(model)

        return f

    makers = {
        "adamw": keep("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)),
        "vogn": keep(
            "vogn",
            lambda m: VOGN(m.parameters(), lr=1e-3, ess=1000, curvature="ef", seed=0, model=m),
        ),
        "generic": keep("generic", lambda m: blr_diag(m.parameters())),
    }
    times = time_train_steps(makers, batch=8, repeats=2, warmup=1)
    assert set(times) == {"adamw", "vogn", "generic"} and all(t > 0 for t in times.values())
    w_adamw, w_vogn = made["adamw"][1], made["vogn"][1]
    assert all(torch.equal(a, b) for a, b in zip(w_adamw, w_vogn))  # the same start
    for model, start in made.values():
        assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start))
