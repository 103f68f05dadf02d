"""The ``blr`` console entry point: help and version."""

from __future__ import annotations

import subprocess
import sys

import pytest

import expfam
from blr.cli import main


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
        [sys.executable, "-m", "blr.cli", "--help"], capture_output=True, text=True, check=True
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
    assert {"adamw-foreach", "blr IVON"} <= names
    assert all(r["bytes"] > 0 and r["ms"] > 0 for r in out["optimizer_side"])


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
