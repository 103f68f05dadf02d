"""``python -m blr``: the same as the ``blr`` console script (:func:`blr.apps.cli.main`). An
entry point, not part of the core: nothing imports it."""

import sys

from blr.apps.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
