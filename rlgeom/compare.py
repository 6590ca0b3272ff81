"""`python -m rlgeom.compare`: the command line of rlgeom.tools.compare (kept here so the documented command works)."""

import sys

from rlgeom.tools.compare import main

if __name__ == "__main__":
    sys.exit(main())
