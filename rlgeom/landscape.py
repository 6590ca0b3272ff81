"""`python -m rlgeom.landscape`: the command line of rlgeom.tools.landscape (kept here so the documented command works)."""

import sys

from rlgeom.tools.landscape import main

if __name__ == "__main__":
    sys.exit(main())
