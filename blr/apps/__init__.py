"""Applications above the core library: the ``blr`` command line (:mod:`blr.apps.cli`), the
calibration demo (:mod:`blr.apps.demo`), the UCI regression benchmark (:mod:`blr.apps.uci`), the
optimizer benchmarks (:mod:`blr.apps.bench`), the output of ``blr table``
(:mod:`blr.apps.table`) and what they share for printing results (:mod:`blr.apps.report`).

This package sits on top of the layers: it may import everything (:mod:`blr`, :mod:`blr.optim`,
:mod:`expfam`, and :mod:`derivations`, lazily), and it is the only part of :mod:`blr` that
imports :mod:`derivations`. Nothing in the core imports it (``tests/test_layers.py``). Its modules
load on demand: importing :mod:`blr.apps` loads none of them.

Example:
    >>> from blr.apps.report import mean_se
    >>> mean_se([2.0, 4.0])
    (3.0, 1.0)
"""
