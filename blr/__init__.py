"""blr: the Bayesian learning rule, λ ← λ − ρ ∇_μ(E_q[ℓ] − H(q)), over the families of
:mod:`expfam`.

This package holds the engine, its fused kernels and the torch.optim drop-ins; they arrive with
the issues that build them. For now it provides the ``blr`` command line.
"""

from __future__ import annotations

from expfam import __version__

__all__ = ["__version__"]
