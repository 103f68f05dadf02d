"""derivations: one module per row of the BLR paper's table (a sympy derivation, an independent
classical implementation, the BLR instance, and a numerical check). Rows arrive with the issue
that reproduces the table; this package imports :mod:`expfam` and :mod:`blr`, never the reverse.
"""
