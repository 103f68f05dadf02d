"""derivations: the paper's table, one module per row (Khan & Rue 2023, Table 1, and IVON, VON,
Vadam and bSAM beyond it). Each module holds a sympy derivation of the BLR step under the row's
approximations, the classical algorithm written without :mod:`blr`, the BLR instance built from
:mod:`expfam` + :mod:`blr`, and a ``check()`` that runs both (see :mod:`derivations.table` for
the contract). ``blr table`` runs them all. This package imports :mod:`expfam`, :mod:`blr` and
sympy; nothing imports it back except the ``blr table`` subcommand, lazily.
"""

from __future__ import annotations

#: The row modules' names (= ``blr table --row`` keys), in the table's order.
ROWS: tuple[str, ...] = (
    "gradient_descent",
    "newton",
    "multimodal",
    "sgd",
    "adam",
    "dropout",
    "ste",
    "ogn",
    "vogn",
    "bayesbinn",
    "conjugate",
    "laplace",
    "em",
    "svi",
    "vmp",
    "ncvmp",
    "mixture_vi",
    "ivon",
    "von",
    "vadam",
    "bsam",
)

__all__ = ["ROWS"]
