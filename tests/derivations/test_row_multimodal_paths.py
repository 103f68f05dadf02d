"""Row 3: the engine and the kernel paths take their derivatives from autograd and the engine, not
from the hand-coded update, so a bug in the hand-coded coupled update shows in both comparisons
against it; a bug in the kernel's coupling shows against both the hand-coded update and the
engine; and the separated-limit comparison fails when the components overlap."""

from __future__ import annotations

import importlib

import pytest

from derivations.mutations import MIN_MARGIN, run_mutation

ENGINE = "mixture BLR vs hand-coded coupled update"
KERNEL = "kernel (cpu, 32 copies × 2 components) vs hand-coded coupled update"
KERNEL_ENGINE = "kernel (cpu) vs mixture engine"
SEPARATED = "separated limit: mixture BLR vs per-component Newton-BLR, 1 step"

CASES = [
    ("hand-coded log q without log π_j", (ENGINE, KERNEL)),
    ("coupled update mean step without E_k[(log q)']", (ENGINE, KERNEL)),
    ("kernel ĝ without the coupling E_k[(log r_k)']", (KERNEL, KERNEL_ENGINE)),
    ("separated test moved to m = ±1.5 (overlapping)", (SEPARATED,)),
]


@pytest.mark.parametrize(("description", "catchers"), CASES, ids=[c[0] for c in CASES])
def test_each_path_catches_the_mutation(description, catchers):
    row = importlib.import_module("derivations.multimodal")
    (mutation,) = [m for m in row.MUTATIONS if m.description == description]
    result = run_mutation("multimodal", mutation)
    assert result.error is None, result.error
    for prefix in catchers:
        (comparison,) = [c for c in result.comparisons if c.name.startswith(prefix)]
        assert comparison.ratio >= MIN_MARGIN, (prefix, comparison)
