"""``python -m T1ToT2Lib.cli``: the ``t1tot2`` command line."""

import sys

from . import main

sys.exit(main())
