"""``python -m blr``: the same as the ``blr`` console script."""

import sys

from blr.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
