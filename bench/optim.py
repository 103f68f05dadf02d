"""Optimizer-side time and memory: blr.optim.IVON vs AdamW (foreach, fused) and ivon-opt 0.1.3.

    python bench/optim.py [--repeats 20] [--json]

Same table as ``blr bench optim`` plus the ivon-opt row (ivon-opt is GPL-3 and a test/bench-only
reference: the package never imports it, this script does when it is installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blr.apps import bench

extra = {}
try:
    import ivon

    extra["ivon-opt 0.1.3"] = lambda p: ivon.IVON(p, lr=0.1, ess=50_000)
except ImportError:  # pragma: no cover
    print("ivon-opt not installed: no ivon-opt row", file=sys.stderr)

if __name__ == "__main__":
    sys.exit(bench.main(sys.argv[1:], extra=extra))
