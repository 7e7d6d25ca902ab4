"""``python -m simulator``: the live Jira Cloud simulator (see :mod:`simulator.driver`)."""

import sys

from .driver import main

if __name__ == "__main__":
    sys.exit(main())
