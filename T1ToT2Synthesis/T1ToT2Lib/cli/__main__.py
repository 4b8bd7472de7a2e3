"""``python -m T1ToT2Lib.cli``: the ``t1tot2`` command line."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
