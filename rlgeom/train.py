"""`python -m rlgeom.train`: the command line of rlgeom.tools.train (kept here so the documented command works)."""

import sys

from rlgeom.tools.train import main

if __name__ == "__main__":
    sys.exit(main())
