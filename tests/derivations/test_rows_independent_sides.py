"""Rows 2, 4, 5 and 12: the BLR and kernel paths do not share derivatives with the classical side,
so a bug on the classical side shows in every comparison against it — in particular in the
kernel's (issue #13: a Newton mutation once left "kernel vs Newton" at 4e-16) — and a 1% change
of Adam's ε shows in both the engine's and the kernel's comparison with torch.optim.Adam."""

from __future__ import annotations

import importlib

import pytest

from derivations.mutations import MIN_MARGIN, run_mutation

CASES = [
    # (row, description of a mutation in its MUTATIONS, comparisons that must each catch it)
    (
        "newton",
        "Newton: prior δ in the Hessian × 1.01",
        ("BLR (ρ = 1, delta) vs Newton", "kernel (cpu, 64 copies) vs Newton"),
    ),
    (
        "newton",
        "damped Newton: step ρ × 1.01",
        ("BLR (ρ = 0.5) vs damped Newton", "kernel (cpu, 8 copies, ρ = 0.5) vs damped Newton"),
    ),
    (
        "sgd",
        "hand-coded SGD: prior gradient δθ dropped",
        ("BLR vs hand-coded SGD", "kernel (cpu, 64 copies) vs hand-coded SGD"),
    ),
    (
        "adam",
        "torch.optim.Adam: eps × 1.01",
        ("BLR-Adam vs torch.optim.Adam", "Adam: kernel (cpu, 64 copies) vs torch.optim.Adam"),
    ),
    (
        "laplace",
        "classical: prior δ in the Hessian × 1.01",
        ("BLR (ρ = 1) S vs", "BLR (ρ = 0.5) S vs", "kernel (cpu, 64 copies, ρ = 1) vs scipy"),
    ),
]


@pytest.mark.parametrize(("key", "description", "names"), CASES, ids=[c[1] for c in CASES])
def test_a_classical_bug_is_caught_by_every_comparison_against_it(key, description, names):
    row = importlib.import_module(f"derivations.{key}")
    (mutation,) = [m for m in row.MUTATIONS if m.description == description]
    result = run_mutation(key, mutation)
    assert result.error is None, result.error
    for name in names:
        (c,) = [c for c in result.comparisons if c.name.startswith(name)]
        assert c.ratio >= MIN_MARGIN, (
            f"{c.name}: {c.value:.3g} is only {c.ratio:.3g}× the tolerance"
        )


def test_the_blr_side_never_calls_the_hand_written_derivatives(monkeypatch):
    """With Row 2's closed-form gradient and Hessian poisoned, the BLR side (engine and kernel)
    still runs: it differentiates the loss by autograd. Row 12 does not import them at all."""
    newton = importlib.import_module("derivations.newton")
    laplace = importlib.import_module("derivations.laplace")

    def poisoned(*args, **kwargs):
        raise AssertionError("the BLR side called the classical side's grad_hess")

    monkeypatch.setattr(newton, "grad_hess", poisoned)
    x, y = newton.data()
    theta0 = x.new_zeros(2)
    eye = x.new_tensor([[1.0, 0.0], [0.0, 1.0]])
    newton.blr_instance(theta0, eye, x, y, 1.0, 3)
    newton.kernel_instance(theta0[None], eye[None], x, y, 0.5, 3)
    assert "grad_hess" not in vars(laplace)
